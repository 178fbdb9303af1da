"""The isoFLOP planner: FLOP budgets x model sizes -> one run per feasible (budget, size).

A planned job is ``budget.counter=flops budget.value=C`` plus its size overrides: the run
context stops the run at the end of the first iteration whose effective-FLOP counter
reaches C, so the FLOP accountant itself sets every run's length. The planner predicts that
length, the interactions ``D(C)``, from a probe of each size (:mod:`sweeps.probe`: a few real
iterations, their ``flops`` vs ``env_steps``), to

- drop a (budget, size) pair whose run would be shorter than one iteration (it would spend
  up to a whole iteration more than C) or than ``--min-steps``, or longer than
  ``--max-steps``; each dropped pair is a note in the plan;
- report every job's interactions, FLOPs and estimated hours.

Snapshot mode (``--snapshots``): one run per size, to the largest feasible budget of that
size, with ``snapshot_flops=[C1, C2, ...]`` so the run saves a checkpoint and logs a line as
its counter first reaches each budget; one run then fills every isoFLOP point of its size
(for a learning-rate schedule that does not depend on the budget, as with a constant lr).
"""

from __future__ import annotations

import itertools
import math

from omegaconf import OmegaConf

from sweeps.lr_rules import job_lr
from sweeps.plan import Plan
from sweeps.probe import JobRow, Planned, PlannerError, Prober, Throughput, compose, select

SNAPSHOT_KEY = "snapshot_flops"  # root config key: FLOP budgets to snapshot at


def fmt(x: float) -> str:
    """A number as an override value: 1e+12 -> 1e12, 0.125 -> 0.125."""
    s = f"{x:.6g}"
    return s.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def study_axes(cfg) -> dict[str, str]:
    study = OmegaConf.to_container(cfg.study, resolve=True) if cfg.get("study") else {}
    return dict((study or {}).get("axes") or {})


def resolve_key(cfg, key: str, flag: str, experiment: str) -> str:
    """A config key, or a study role (``width``) naming one; else one-line PlannerError."""
    axes = study_axes(cfg)
    if key in axes:
        return axes[key]
    if select(cfg, key) == "<missing>":
        roles = ", ".join(f"{r}={k}" for r, k in axes.items()) or "none"
        raise PlannerError(f"{flag} {key}: not a key of experiment {experiment} "
                           f"(its study axes: {roles})")
    return key


def sweeper_grid(hcfg) -> dict[str, list[str]]:
    """The experiment's own grid (``hydra.sweeper.params``), values as strings."""
    params = OmegaConf.select(hcfg, "hydra.sweeper.params", default=None) or {}
    return {str(k): [v.strip() for v in str(val).split(",")] for k, val in params.items()}


def parse_kv_list(spec: str, flag: str) -> tuple[str, list[str]]:
    """``key=v1,v2`` -> (key, [v1, v2])."""
    if "=" not in spec or not spec.split("=", 1)[1].strip():
        raise PlannerError(f"{flag} {spec!r}: expected KEY=V1,V2,...")
    key, values = spec.split("=", 1)
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def job_grid(hcfg, experiment: str, fixed: set[str], seeds: list[int] | None,
             grid: list[str]) -> tuple[dict[str, list[str]], list[int]]:
    """The other axes every job is crossed with: the experiment's grid without the keys the
    planner sets, ``--grid`` replacing or adding axes; and the seeds (``--seeds``, else the
    experiment's grid, else its ``seed``)."""
    full = sweeper_grid(hcfg)
    # the seeds are read before the planner's own keys (seed among them) are dropped
    default = [int(s) for s in full.get("seed", [str(hcfg.seed)])]
    axes = {k: v for k, v in full.items() if k not in fixed and not k.startswith("budget.")}
    for spec in grid:
        key, values = parse_kv_list(spec, "--grid")
        key = resolve_key(hcfg, key, "--grid", experiment)
        if key in fixed:
            raise PlannerError(f"--grid {key}: set by the planner")
        axes[key] = values
    return axes, (list(seeds) if seeds else default)


def _combos(axes: dict[str, list[str]]) -> list[list[str]]:
    keys = list(axes)
    return [[f"{k}={v}" for k, v in zip(keys, vals, strict=True)]
            for vals in itertools.product(*(axes[k] for k in keys))]


def plan_isoflop(experiment: str, budgets: list[float], sizes: list[str], *,
                 seeds: list[int] | None = None, grid: list[str] = (),
                 snapshots: bool = False, min_steps: float = 0, max_steps: float = math.inf,
                 extra: list[str] = (), probe_overrides: list[str] = (),
                 probe_max_steps: float = 200_000, throughput: Throughput | None = None,
                 echo=None) -> Planned:
    """Plan an isoFLOP grid of ``+experiment=NAME``: ``sizes`` are ``KEY=V1,V2`` specs (keys
    or study roles; several specs are crossed), ``budgets`` effective FLOPs per run."""
    if not budgets or any(not (b > 0) for b in budgets):
        raise PlannerError(f"--budgets {budgets}: give positive FLOP budgets")
    if not sizes:
        raise PlannerError("--sizes: give at least one KEY=V1,V2,... (e.g. model.width=0.25,1)")
    for o in extra:
        if o.lstrip("+~").startswith(("budget.", SNAPSHOT_KEY)):
            raise PlannerError(f"extra override {o!r}: the isoFLOP planner sets the budget")
    hcfg = compose(experiment, list(extra), hydra=True)
    size_axes: dict[str, list[str]] = {}
    for spec in sizes:
        key, values = parse_kv_list(spec, "--sizes")
        size_axes[resolve_key(hcfg, key, "--sizes", experiment)] = values
    axes, seed_list = job_grid(hcfg, experiment, set(size_axes) | {"seed"}, seeds,
                               list(grid))
    budgets = sorted(float(b) for b in budgets)
    throughput = throughput or Throughput()
    prober = Prober(experiment, probe_overrides, probe_max_steps, echo=echo)
    k = int(hcfg.seeds_per_process)
    jobs, rows, notes = [], [], []
    lr_cache: dict[tuple[str, ...], float | None] = {}
    for size in _combos(size_axes):
        for other in _combos(axes):
            key = [*extra, *size, *other]
            probe = prober(key)
            if tuple(key) not in lr_cache:
                lr_cache[tuple(key)] = job_lr(compose(experiment, key))[0]
            feasible = []
            for c in budgets:
                d = probe.steps_for(c)
                d_exact = probe._inverse(c) if c <= probe.rows[-1][1] else (
                    probe.rows[-1][0] + (c - probe.rows[-1][1]) / probe.flops_per_step)
                why = None
                if probe.iteration and d_exact < probe.iteration:
                    why = (f"{d_exact:,.0f} env steps < one iteration "
                           f"({probe.iteration:,.0f})")
                elif d_exact < min_steps:
                    why = f"{d_exact:,.0f} env steps < --min-steps {min_steps:,.0f}"
                elif d > max_steps:
                    why = f"{d:,.0f} env steps > --max-steps {max_steps:,.0f}"
                if why:
                    notes.append(f"dropped {' '.join([*size, *other])} at C={fmt(c)}: {why}")
                else:
                    feasible.append((c, d))
            if not feasible:
                continue
            todo = [feasible[-1]] if snapshots else feasible
            for c, d in todo:
                for seed in seed_list:
                    job = [*size, *other, f"budget.value={fmt(c)}"]
                    if not snapshots:  # budget.* is no part of a run dir's name; tag is
                        job.append(f"tag=C{fmt(c)}")
                    else:  # tag: not the experiment's ordinary grid run of this size
                        job.append(f"{SNAPSHOT_KEY}=[{','.join(fmt(b) for b, _ in feasible)}]")
                        job.append("tag=snapshots")
                    job.append(f"seed={seed}")
                    flops = probe.flops_at(d)
                    jobs.append(job)
                    rows.append(JobRow(job, d, flops, k, lr_cache[tuple(key)],
                                       throughput.hours(job, probe, d, flops * k)))
    if not jobs:
        raise PlannerError("--budgets/--sizes: every (budget, size) pair is infeasible: "
                           + "; ".join(notes[:3]))
    plan = Plan(experiment=experiment, jobs=jobs, common=["budget.counter=flops", *extra],
                notes=notes)
    mode = "snapshot runs" if snapshots else "runs"
    header = (f"isoFLOP plan for {experiment}: {len(budgets)} budget(s) x "
              f"{math.prod(len(v) for v in size_axes.values())} size(s) "
              f"({', '.join(size_axes)}) x {len(seed_list)} seed(s)"
              + (f" x {', '.join(axes)}" if axes else "")
              + f", {mode} to budget.counter=flops")
    probes = list(prober.cache.values())
    planned = Planned(plan, rows, header, throughput.describe(probes))
    check = prober.check_probe_overrides([*extra, *next(iter(_combos(size_axes))),
                                          *next(iter(_combos(axes)))])
    if check:
        plan.notes.append(check)
    plan.summary = planned.summary()
    return planned

