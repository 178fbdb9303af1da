"""What a planned job will cost, measured by the real thing: compose its config, train it for a
few iterations through :func:`rl_scaling.run.run` in a temporary directory, and read the
``flops`` and ``env_steps`` counters from the record it wrote.

The planners never re-derive an algorithm's FLOPs per env step from a formula: the FLOP
accountant that stops a ``budget.counter=flops`` run is the one that runs here, so a planned
run's length is the probe's curve ``flops(env_steps)`` read backwards.

A probe trains in segments, resuming its own record (``budget`` may change on a resume):
first one iteration (``budget.value=1``), then until the last two intervals between logged
rows spend FLOPs at the same rate (a warm-up without updates, SAC's ``learning_starts``,
spends none). ``flops(E)`` is the logged curve up to the probe's last row and a straight
line of the steady slope beyond it. The last segment's rows also give the throughput on this
machine: env steps and effective FLOPs per second of training (setup excluded).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_scaling.record import RunRecord

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# What every probe sets on top of the job's overrides: a line every iteration, no evaluation,
# no progress bar, a checkpoint only at the end of a segment (so the next one resumes).
PROBE_FIXED = ("logger.backend=local", "logger.progress=none", "log_every=null",
               "eval_every=null", "checkpoint_every=null", "budget.counter=env_steps")
STEADY_RTOL = 0.01  # two intervals whose FLOPs per env step agree within 1% are steady


class PlannerError(ValueError):
    """Bad planner input; the message is one line naming the flag, key or file."""


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def compose(experiment: str, overrides: list[str] | tuple[str, ...] = (),
            hydra: bool = False) -> DictConfig:
    """The config a job of ``+experiment=NAME`` with these overrides runs with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rl_scaling.config import register_configs

    if experiment not in experiments():
        raise PlannerError(f"--experiment {experiment!r}: no configs/experiment/{experiment}.yaml "
                           f"(experiments: {', '.join(experiments())})")
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return hydra_compose("config", overrides=[f"+experiment={experiment}", *overrides],
                                 return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlannerError(f"{experiment}: overrides {list(overrides)} do not compose: "
                           f"{first}") from err


def select(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at a dotted key, or the string ``<missing>``."""
    return OmegaConf.select(cfg, key, default="<missing>")


@dataclass
class Probe:
    """The measured cost of one job configuration (every override but the seed)."""

    overrides: tuple[str, ...]
    rows: list[tuple[float, float, float]]  # (env_steps, flops, wall_time) per logged line
    steady_from: int  # index of the first row of the steady part
    iteration: float | None  # env steps per iteration (None: probe overrides may change it)
    flops_per_step: float  # effective FLOPs per env step in the steady part
    steps_per_second: float  # env steps per second of training (one job, all its seeds)
    flops_per_second: float  # effective FLOPs per second of training (per seed)
    seeds_per_process: int
    device: str
    params: int | None  # effective parameters (run.json)
    seconds: float  # what the probe took, setup included
    probe_overrides: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def flops_at(self, steps: float) -> float:
        """Effective FLOPs spent (per seed) when the run has taken ``steps`` env steps."""
        pts = [(0.0, 0.0)] + [(e, f) for e, f, _ in self.rows]
        for (e0, f0), (e1, f1) in zip(pts, pts[1:], strict=False):
            if steps <= e1:
                return f0 + (f1 - f0) * (steps - e0) / (e1 - e0) if e1 > e0 else f1
        e_last, f_last = pts[-1]
        return f_last + self.flops_per_step * (steps - e_last)

    def steps_for(self, flops: float) -> float:
        """Env steps at which a ``budget.counter=flops budget.value=flops`` run stops: the end
        of the first iteration whose counter reaches the budget (continuous where the
        iteration is not known)."""
        for e, f, _ in self.rows:
            if f >= flops:
                return e if self.iteration else self._inverse(flops)
        e_last, f_last = self.rows[-1][:2]
        steps = (flops - f_last) / self.flops_per_step
        if self.iteration:
            steps = math.ceil(steps / self.iteration - 1e-9) * self.iteration
        return e_last + steps

    def _inverse(self, flops: float) -> float:
        pts = [(0.0, 0.0)] + [(e, f) for e, f, _ in self.rows]
        for (e0, f0), (e1, f1) in zip(pts, pts[1:], strict=False):
            if flops <= f1 and f1 > f0:
                return e0 + (e1 - e0) * (flops - f0) / (f1 - f0)
        return pts[-1][0]


def _read_rows(run_dir: Path) -> list[tuple[float, float, float]]:
    """(env_steps, flops, wall_time) of each metrics line, read through the run record."""
    return [(float(r["env_steps"]), float(r["flops"]), float(r["wall_time"]))
            for r in RunRecord(run_dir).read_metrics()]


def _steady(rows: list[tuple[float, float, float]]) -> bool:
    """The last two intervals (the origin counts as a row) spend FLOPs at one rate."""
    pts = [(0.0, 0.0)] + [r[:2] for r in rows]
    if len(pts) < 3:
        return False
    (e0, f0), (e1, f1), (e2, f2) = pts[-3:]
    if e1 <= e0 or e2 <= e1 or f1 <= f0 or f2 <= f1:
        return False
    a, b = (f1 - f0) / (e1 - e0), (f2 - f1) / (e2 - e1)
    return abs(a - b) <= STEADY_RTOL * max(a, b)


@contextlib.contextmanager
def _quiet():
    """The spine logs every start and resume at INFO; a probe is not a run the user asked for."""
    loggers = [logging.getLogger(n) for n in ("rl_scaling", "agents", "envs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_probe(experiment: str, overrides: list[str] | tuple[str, ...],
              probe_overrides: list[str] | tuple[str, ...] = (), *,
              max_steps: float = 200_000, workdir: str | Path | None = None) -> Probe:
    """Train one job configuration for a few iterations and measure its FLOPs per env step
    and its throughput. ``probe_overrides`` (e.g. fewer envs) come last; with them the
    iteration length is not the planned job's, so run lengths are not rounded to it."""
    from rl_scaling.registry import ConfigError
    from rl_scaling.run import run

    base = [*overrides, *PROBE_FIXED, *probe_overrides]
    tmp = Path(tempfile.mkdtemp(prefix="probe-", dir=workdir))
    t0 = time.monotonic()
    try:
        cfg = compose(experiment, [*base, "budget.value=1"])
        k = int(cfg.seeds_per_process)
        run_dir = tmp / "run"
        record = run_dir / f"seed={int(cfg.seed)}" if k > 1 else run_dir
        budget, segment_start = 1.0, 0
        while True:
            cfg = compose(experiment, [*base, f"budget.value={budget:g}"])
            with _quiet():
                try:
                    status = run(cfg, run_dir)
                except ConfigError as err:
                    raise PlannerError(f"probe of {list(overrides)}: {err}") from err
            rows = _read_rows(record)
            if status != "finished" or not rows:
                raise PlannerError(f"probe of {list(overrides)} ended {status!r} after "
                                   f"{rows[-1][0] if rows else 0:g} env steps")
            if rows[-1][0] <= 0:
                raise PlannerError(f"probe of {list(overrides)}: the run takes no env steps "
                                   "(trained on a dataset?); these planners count interactions")
            if _steady(rows) and len(rows) - segment_start >= 2:
                break
            last = rows[-1][0]
            iteration = last - (rows[-2][0] if len(rows) > 1 else 0.0)
            spending = len(rows) > 1 and rows[-1][1] > rows[-2][1]
            # while nothing is spent yet (a warm-up) grow geometrically, then 2 iterations
            budget = last + 2 * iteration if spending or rows[-1][1] > 0 else 2 * last + iteration
            if budget > max_steps:
                raise PlannerError(
                    f"probe of {list(overrides)}: no steady FLOPs per env step within "
                    f"{max_steps:g} env steps (--probe-max-steps)")
            segment_start = len(rows)
        (e1, f1, w1), (e2, f2, w2) = rows[-2], rows[-1]
        info = RunRecord(record).read_run_json() or {}
        params = (info.get("params") or {}).get("effective")
        return Probe(
            overrides=tuple(overrides), rows=rows, steady_from=len(rows) - 2,
            iteration=None if probe_overrides else e2 - e1,
            flops_per_step=(f2 - f1) / (e2 - e1),
            steps_per_second=(e2 - e1) / max(w2 - w1, 1e-9),
            flops_per_second=(f2 - f1) / max(w2 - w1, 1e-9),
            seeds_per_process=k, device=str(info.get("device", "?")), params=params,
            seconds=time.monotonic() - t0, probe_overrides=tuple(probe_overrides))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_PROBES: dict[tuple, Probe] = {}  # one measurement per configuration per process


class Prober:
    """Probes per job configuration, each measured once per process (seeds share one)."""

    def __init__(self, experiment: str, probe_overrides: list[str] | tuple[str, ...] = (),
                 max_steps: float = 200_000, echo=None) -> None:
        self.experiment, self.probe_overrides = experiment, tuple(probe_overrides)
        self.max_steps, self.echo = max_steps, echo
        self.cache: dict[tuple[str, ...], Probe] = {}

    def __call__(self, overrides: list[str] | tuple[str, ...]) -> Probe:
        key = tuple(o for o in overrides if not o.startswith("seed="))
        if key not in self.cache:
            known = (self.experiment, key, self.probe_overrides)
            probe = _PROBES.get(known) or run_probe(self.experiment, key, self.probe_overrides,
                                                    max_steps=self.max_steps)
            _PROBES[known] = probe
            if self.echo:
                self.echo(f"probe {' '.join(key) or '(defaults)'}: "
                          f"{probe.flops_per_step:.4g} FLOPs/env step, "
                          f"{probe.steps_per_second:,.0f} env steps/s on {probe.device} "
                          f"({probe.rows[-1][0]:,.0f} steps, {probe.seconds:.1f} s)")
            self.cache[key] = probe
        return self.cache[key]

    def check_probe_overrides(self, overrides: list[str] | tuple[str, ...]) -> str | None:
        """With probe overrides: one iteration of the real configuration ``overrides``
        against the probe's curve at the same env steps. Returns a note, or None when they
        agree within 0.5% (or nothing was spent in that iteration to compare)."""
        if not self.probe_overrides:
            return None
        probe = self(overrides)
        tmp = Path(tempfile.mkdtemp(prefix="probe-ref-"))
        try:
            cfg = compose(self.experiment, [*overrides, *PROBE_FIXED, "budget.value=1"])
            k = int(cfg.seeds_per_process)
            with _quiet():
                from rl_scaling.run import run

                run(cfg, tmp / "run")
            rows = _read_rows(tmp / "run" / f"seed={int(cfg.seed)}" if k > 1 else tmp / "run")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not rows or rows[-1][1] <= 0:
            return (f"probe overrides {list(self.probe_overrides)}: not checked (one iteration "
                    "of the real configuration spent no FLOPs)")
        e, f, _ = rows[-1]
        ratio = f / probe.flops_at(e)
        if abs(ratio - 1) <= 0.005:
            return None
        return (f"probe overrides {list(self.probe_overrides)} change the FLOPs per env step: "
                f"one real iteration of {' '.join(overrides)} spent {f:.4g} FLOPs in {e:g} "
                f"env steps, the probe predicts {probe.flops_at(e):.4g} ({ratio - 1:+.1%}); "
                "run lengths are predicted from the probe")


# ---------------------------------------------------------------- what a plan will cost
@dataclass
class JobRow:
    """One planned job as the table prints it (numbers per seed; ``runs`` seeds per job)."""

    overrides: list[str]
    env_steps: float | None
    flops: float | None
    runs: int = 1
    lr: float | None = None
    hours: float | None = None


@dataclass
class Planned:
    """A planner's answer: the plan file's content and the table that explains it."""

    plan: Any  # sweeps.plan.Plan
    rows: list[JobRow]
    header: str  # one line: what was planned
    throughput: str  # how the hours were estimated
    probe_lines: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        known = all(r.flops is not None for r in rows)
        steps = all(r.env_steps is not None for r in rows)
        hours = all(r.hours is not None for r in rows)
        return {
            "jobs": len(rows), "runs": sum(r.runs for r in rows),
            "flops": float(sum(r.flops * r.runs for r in rows)) if known else None,
            "env_steps": int(sum(r.env_steps * r.runs for r in rows)) if steps else None,
            "gpu_hours": round(sum(r.hours for r in rows), 4) if hours else None,
            "gpu_hours_estimate": self.throughput,
        }


def _records(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob("run.json")
                  if (p.parent / "metrics.jsonl").exists())


def record_throughput(run_dir: Path) -> dict[str, Any] | None:
    """Env steps/s and effective FLOPs/s of a finished or running record, measured over the
    second half of its curve (start-up and the first iterations excluded)."""
    rows = _read_rows(run_dir)
    if len(rows) < 3:
        return None
    a, b = rows[len(rows) // 2 - 1], rows[-1]
    if b[2] <= a[2] or b[0] <= a[0]:
        return None
    cfg_path = run_dir / "config.yaml"
    cfg = OmegaConf.load(cfg_path) if cfg_path.exists() else OmegaConf.create({})
    info = RunRecord(run_dir).read_run_json() or {}
    return {"dir": str(run_dir), "cfg": cfg, "device": info.get("device", "?"),
            "steps_per_second": (b[0] - a[0]) / (b[2] - a[2]),
            "flops_per_second": (b[1] - a[1]) / (b[2] - a[2])}


def _same(value: Any, wanted: str) -> bool:
    try:
        return math.isclose(float(value), float(wanted), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(value) == wanted


class Throughput:
    """Hours per job: ``probe`` (env steps/s the probe measured on this machine),
    ``flops_per_second`` (a given effective FLOPs/s), or ``records`` (run records made on
    the target GPU: env steps/s of records with the job's own overrides, else their median
    effective FLOPs/s)."""

    def __init__(self, flops_per_second: float | None = None,
                 records_from: str | Path | None = None) -> None:
        self.rate = flops_per_second
        self.records: list[dict[str, Any]] = []
        self.source = None
        if records_from is not None:
            root = Path(records_from)
            if not root.exists():
                raise PlannerError(f"--throughput-from {root}: no such directory")
            self.records = [t for d in _records(root) if (t := record_throughput(d))]
            if not self.records:
                raise PlannerError(f"--throughput-from {root}: no run record with at least "
                                   "3 logged lines under it")
            self.source = root
        self.used: set[str] = set()

    def hours(self, overrides: list[str], probe: Probe | None, env_steps: float | None,
              flops_total: float | None) -> float | None:
        if self.rate is not None:
            self.used.add("given")
            return None if flops_total is None else flops_total / self.rate / 3600
        if self.records:
            keyed = [o.split("=", 1) for o in overrides if "=" in o and not o.startswith(
                ("seed=", "budget.", "snapshot_flops="))]
            match = [r for r in self.records
                     if all(_same(OmegaConf.select(r["cfg"], k, default=None), v)
                            for k, v in keyed)]
            if match and env_steps is not None:
                self.used.add("matched")
                sps = sorted(r["steps_per_second"] for r in match)[len(match) // 2]
                return env_steps / sps / 3600
            self.used.add("median")
            fps = sorted(r["flops_per_second"] for r in self.records)[len(self.records) // 2]
            return None if flops_total is None else flops_total / fps / 3600
        if probe is None or env_steps is None:
            return None
        self.used.add("probe")
        return env_steps / probe.steps_per_second / 3600

    def describe(self, probes: list[Probe]) -> str:
        if self.rate is not None:
            return (f"total effective FLOPs / {self.rate:.3g} FLOPs/s (--flops-per-second)")
        if self.records:
            devices = sorted({str(r["device"]) for r in self.records})
            parts = []
            if "matched" in self.used:
                parts.append("env steps / the env steps/s of the records with the job's "
                             "overrides")
            if "median" in self.used:
                fps = sorted(r["flops_per_second"] for r in self.records)[len(self.records) // 2]
                parts.append(f"effective FLOPs / the records' median {fps:.3g} FLOPs/s "
                             "(no record with the job's overrides)")
            return (f"{'; '.join(parts)}; from {len(self.records)} record(s) under "
                    f"{self.source} on {', '.join(devices)}")
        devices = sorted({p.device for p in probes}) or ["?"]
        return ("env steps / the env steps/s each job's probe measured on this machine "
                f"({', '.join(devices)}); use --throughput-from RUNS (records made on the "
                "target GPU) or --flops-per-second for the target machine")
