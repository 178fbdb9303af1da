"""The two-stage UTD workflow of Rybkin et al. 2025, stage 2: B and eta set per sigma.

Stage 1 (e.g. ``gym_utd``) sweeps sigma x B x eta; ``python -m analysis`` fits the best
batch size and learning rate per UTD ratio as power laws with one slope shared by the
tasks and an intercept per task, and writes them to ``laws.json``::

    studies["<experiment>/utd"].fits["B*(sigma)"]  = {"params": {"k": .., "c[<task>]": ..}}
    studies["<experiment>/utd"].fits["lr*(sigma)"] = {"params": {"k": .., "c[<task>]": ..}}
    # form: c[task] * sigma^k   (a study without a task axis has the one task "all")

Stage 2 reads them back: for each sigma of its grid and each task it sets

- batch size ``B = B*(sigma)``, rounded to the nearest power of two in log space
  (``--batch-round pow2``, the grid stage 1 searched) or to an integer (``int``), then
  clipped to ``[--batch-min, --batch-max]`` (a note says when);
- learning rate ``eta = eta*(sigma)``, to 3 significant digits (it names the run dir).

The keys come from the stage-2 experiment's declared ``study.axes`` (``sigma``,
``batch_size``, ``lr``, ``task``); every other axis of its grid (a critic width, seeds)
crosses the sigmas as it is, so ``dmc_utd_width`` gives sigma x width jobs with B and eta
set per sigma.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from sweeps.isoflop import _combos, fmt, job_grid, sweeper_grid
from sweeps.plan import Plan
from sweeps.probe import JobRow, Planned, PlannerError, Prober, Throughput, compose, select

B_LAW = "B*(sigma)"
LR_LAWS = ("lr*(sigma)", "eta*(sigma)")  # the pipeline writes lr*(sigma)


@dataclass
class PowerLaw:
    """``c[task] * sigma^k``, one shared slope."""

    name: str
    k: float
    c: dict[str, float]

    def __call__(self, sigma: float, task: str) -> float:
        c = self.c.get(task, self.c.get("all"))
        if c is None:
            raise KeyError(task)
        return c * sigma ** self.k


@dataclass
class UtdLaws:
    path: str
    study: str  # the key in laws.json
    experiment: str  # stage 1's experiment
    batch: PowerLaw
    lr: PowerLaw

    @property
    def tasks(self) -> list[str]:
        return sorted(set(self.batch.c) & set(self.lr.c))


def _law(path: Path, key: str, study: dict, names: tuple[str, ...]) -> PowerLaw:
    fits = study.get("fits") or {}
    name = next((n for n in names if n in fits), None)
    if name is None:
        why = next((str(r) for n, r in (study.get("skipped") or {}).items() if n in names),
                   f"fits: {', '.join(fits) or 'none'}")
        raise PlannerError(f"--laws {path}: study {key!r} has no {names[0]} fit ({why})")
    params = fits[name].get("params") or {}
    c = {m.group(1): float(v) for p, v in params.items()
         if (m := re.fullmatch(r"c\[(.*)\]", p)) and v is not None}
    if not isinstance(params.get("k"), (int, float)) or not c:
        raise PlannerError(f"--laws {path}: {key} {name} has no params k and c[<task>] "
                           f"(params: {sorted(params)})")
    return PowerLaw(name, float(params["k"]), c)


def read_utd_laws(path: str | Path, study: str | None = None) -> UtdLaws:
    """Stage 1's B*(sigma) and eta*(sigma) from a ``laws.json``; one-line PlannerError for a
    missing file, another schema, no UTD study (or several without ``study``) or no fit."""
    path = Path(path)
    if not path.is_file():
        raise PlannerError(f"--laws {path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PlannerError(f"--laws {path}: not JSON ({err})") from err
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith(
            "rl-scaling/laws/"):
        raise PlannerError(f"--laws {path}: not a laws.json (schema rl-scaling/laws/v1)")
    studies = doc.get("studies") or {}
    utd = {k: s for k, s in studies.items() if isinstance(s, dict) and s.get("study") == "utd"}
    if study is not None:
        if study not in utd:
            raise PlannerError(f"--study {study!r}: not a UTD study of {path} "
                               f"(UTD studies: {', '.join(utd) or 'none'})")
        utd = {study: utd[study]}
    if not utd:
        raise PlannerError(f"--laws {path}: no UTD study (studies: "
                           f"{', '.join(studies) or 'none'})")
    if len(utd) > 1:
        raise PlannerError(f"--laws {path}: {len(utd)} UTD studies ({', '.join(utd)}); "
                           "choose one with --study")
    key, st = next(iter(utd.items()))
    return UtdLaws(str(path), key, str(st.get("experiment", key.split("/")[0])),
                   _law(path, key, st, (B_LAW,)), _law(path, key, st, LR_LAWS))


def round_batch(b: float, how: str = "pow2") -> int:
    """B*(sigma) as a batch size: the nearest power of two in log space, or an integer."""
    if how == "pow2":
        return 2 ** round(math.log2(b))
    return max(1, round(b))


def round_lr(lr: float) -> float:
    return float(f"{lr:.3g}")


def _budget(spec: str | None, cfg) -> tuple[list[str], str, float]:
    """``--budget``: (common overrides, counter, value)."""
    if spec is None:
        return [], str(cfg.budget.counter), float(cfg.budget.value)
    counter, _, value = spec.rpartition("=")
    counter = counter or str(cfg.budget.counter)
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if counter not in ("env_steps", "flops") or not (v > 0):
        raise PlannerError(f"--budget {spec!r}: expected VALUE, env_steps=VALUE or "
                           "flops=VALUE with VALUE > 0")
    common = [f"budget.value={fmt(v)}"]
    if counter != cfg.budget.counter:
        common.insert(0, f"budget.counter={counter}")
    return common, counter, v


def plan_utd(experiment: str, laws: UtdLaws, *, sigmas: list[float] | None = None,
             tasks: list[str] | None = None, seeds: list[int] | None = None,
             grid: list[str] = (), budget: str | None = None, batch_round: str = "pow2",
             batch_min: int = 16, batch_max: int = 2048, extra: list[str] = (),
             probe: bool = True, probe_overrides: list[str] = (),
             probe_max_steps: float = 200_000, throughput: Throughput | None = None,
             echo=None) -> Planned:
    """Stage 2 of the UTD workflow on ``+experiment=NAME`` from stage 1's ``laws``."""
    if batch_min < 1 or batch_max < batch_min:
        raise PlannerError(f"--batch-min {batch_min} / --batch-max {batch_max}: need "
                           "1 <= min <= max")
    hcfg = compose(experiment, list(extra), hydra=True)
    axes = dict((hcfg.study and hcfg.study.get("axes")) or {})
    for role in ("sigma", "batch_size", "lr"):
        if role not in axes:
            raise PlannerError(f"--experiment {experiment}: declares no study.axes.{role} "
                               f"(axes: {dict(axes)}); a UTD stage 2 sets it per sigma")
    key_s, key_b, key_lr = axes["sigma"], axes["batch_size"], axes["lr"]
    key_t = axes.get("task")
    for o in extra:
        if o.split("=", 1)[0].lstrip("+~") in (key_s, key_b, key_lr):
            raise PlannerError(f"extra override {o!r}: set per sigma by the planner")
    own = sweeper_grid(hcfg)
    if sigmas is None:
        sigmas = [float(v) for v in own.get(key_s, [str(select(hcfg, key_s))])]
    notes: list[str] = []
    if key_t is None:
        task_list = [None]
    elif tasks:
        task_list = list(tasks)
        for t in task_list:
            if t not in laws.batch.c and "all" not in laws.batch.c:
                raise PlannerError(f"--task {t}: {laws.path} has no c[{t}] in {laws.batch.name}"
                                   f" (tasks: {', '.join(laws.tasks)})")
    else:
        task_list = own.get(key_t, [str(select(hcfg, key_t))])
        known = [t for t in task_list if t in laws.batch.c or "all" in laws.batch.c]
        for t in task_list:
            if t not in known:
                notes.append(f"dropped task {t}: stage 1 ({laws.study}) fitted no c[{t}]")
        if not known:
            raise PlannerError(f"--task: none of the experiment's tasks ({', '.join(task_list)})"
                               f" is in {laws.path} (tasks: {', '.join(laws.tasks)}); "
                               "give --task")
        task_list = known
    fixed = {key_s, key_b, key_lr, "seed"} | ({key_t} if key_t else set())
    other_axes, seed_list = job_grid(hcfg, experiment, fixed, seeds, list(grid))
    common_budget, counter, value = _budget(budget, hcfg)
    common = [*common_budget, *extra]
    throughput = throughput or Throughput()
    prober = Prober(experiment, probe_overrides, probe_max_steps, echo=echo) if probe else None
    k = int(hcfg.seeds_per_process)
    jobs, rows = [], []
    for task in task_list:
        for s in sigmas:
            t = task or _one(laws)
            b_fit, lr_fit = laws.batch(s, t), laws.lr(s, t)
            b = round_batch(b_fit, batch_round)
            if not batch_min <= b <= batch_max:
                clipped = min(max(b, batch_min), batch_max)
                notes.append(f"sigma={fmt(s)}{f' {task}' if task else ''}: B*={b_fit:.4g} -> "
                             f"{b} clipped to {clipped} (--batch-min/--batch-max)")
                b = clipped
            lr = round_lr(lr_fit)
            for other in _combos(other_axes):
                # tag: a stage-2 run never lands in a stage-1 run's dir of the same (sigma, B, eta)
                head = [*([f"{key_t}={task}"] if task else []), f"{key_s}={fmt(s)}",
                        f"{key_b}={b}", f"{key_lr}={fmt(lr)}", *other, "tag=stage2"]
                p = prober([*common, *head]) if prober else None
                if counter == "env_steps":
                    steps = value
                    flops = p.flops_at(steps) if p else None
                else:
                    steps = p.steps_for(value) if p else None
                    flops = p.flops_at(steps) if p else value
                for seed in seed_list:
                    job = [*head, f"seed={seed}"]
                    jobs.append(job)
                    rows.append(JobRow(job, steps, flops, k, lr, throughput.hours(
                        job, p, steps, None if flops is None else flops * k)))
    plan = Plan(experiment=experiment, jobs=jobs, common=common, notes=notes)
    header = (f"UTD stage 2 for {experiment} from {laws.path} ({laws.study}: "
              f"{laws.batch.name} = c[task] sigma^{laws.batch.k:.3g}, {laws.lr.name} = "
              f"c[task] sigma^{laws.lr.k:.3g}): {len(sigmas)} sigma(s) x {len(task_list)} "
              f"task(s) x {len(seed_list)} seed(s)"
              + (f" x {', '.join(other_axes)}" if other_axes else "")
              + f"; B = {'nearest power of two' if batch_round == 'pow2' else 'rounded'}"
                f" B*(sigma), eta = {laws.lr.name} to 3 digits; budget {counter}={fmt(value)}")
    probes = list(prober.cache.values()) if prober else []
    planned = Planned(plan, rows, header, throughput.describe(probes))
    if prober and jobs:
        check = prober.check_probe_overrides([*common, *jobs[0][:-1]])
        if check:
            plan.notes.append(check)
    plan.summary = planned.summary()
    return planned


def _one(laws: UtdLaws) -> str:
    """The stage-2 experiment has no task axis: stage 1 must have fitted one task."""
    if len(laws.batch.c) != 1:
        raise PlannerError(f"--experiment declares no study.axes.task but {laws.path} has "
                           f"intercepts for {', '.join(laws.tasks)}")
    return next(iter(laws.batch.c))
