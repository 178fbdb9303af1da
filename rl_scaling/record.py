"""The run record: the contract between training and analysis (see DESIGN.md).

This module is the one definition of the format; the trainer, the analysis collector and
the synthetic-record generator all read and write records through it.

One directory per run holds ``config.yaml``, ``run.json``, ``metrics.jsonl`` and
``checkpoints/``. Metric lines are appended and flushed as they are logged, so a
killed run loses at most its unflushed tail; on resume, lines logged after the
last checkpoint are dropped (they will be logged again), so no point is
duplicated. The cut is made on ``iteration``, a counter every line carries that grows
by one per loop iteration of every algorithm (``env_steps`` stays 0 in a dataset-only
run, so it cannot order its lines).

``run.json`` fields (:func:`new_run_info` makes one):

- ``format`` (:data:`RECORD_FORMAT`), ``id``, ``experiment``, ``status`` (:data:`STATUSES`),
  ``error``, ``seed``, ``run_dir``, ``start_time``, ``end_time``, ``resumed``;
- ``study``: the experiment's declared study, ``{kind, axes: {role: config key}, metric}``
  (:data:`STUDY_KINDS`; see :func:`check_study`), or null where the experiment declares none;
- ``algo``, ``env``, ``env_family``, ``model``, ``width``, ``depth``: what ran;
- ``networks``: per role ``{params: {total, effective}, flops_per_forward: {total,
  effective}, effective: bool}``; ``effective_roles``: the roles whose scaled parts form the
  study's N; ``params`` and ``flops_per_forward``: their sums (``effective`` over the
  effective roles, ``total`` over every role);
- ``budget`` ``{counter, value}``; at the end ``env_steps``, ``samples``, ``updates``, ``flops``;
- ``starts``: one entry per start of the run (host, pid, time, Slurm job/array/requeue ids);
- ``versions``, ``git_rev`` (the commit of the code the process imported, ``-dirty`` if
  tracked files differed), ``host``, ``device``, ``speed`` (the ``speed.*`` switches as
  resolved for the device), ``ranks`` (data-parallel processes that trained the run).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_FORMAT = 2  # 1: no study/networks/starts, curve cut by env_steps
COUNTERS = ("env_steps", "updates", "samples", "flops", "wall_time")
ORDER_COUNTER = "iteration"  # strictly increasing on every line; resume cuts the curve on it
STATUSES = ("running", "finished", "failed", "diverged")
# What an experiment's ``study:`` block may declare (analysis/ reads it instead of guessing):
#   scaling        model size varies in RL: curves, compute frontier, intrinsic performance
#   isoflop        model size x compute on a fixed dataset (imitation): isoFLOP profiles
#   utd            UTD ratio, batch size and lr vary (value-based RL): Rybkin et al.'s workflow
#   generalization problem complexity varies: compute/data to sufficient generalization
#   curves         learning curves per configuration, no law
STUDY_KINDS = ("scaling", "isoflop", "utd", "generalization", "curves", "horizon")
# Roles an axis may name; analysis looks the config key of each role up here.
STUDY_AXES = ("width", "depth", "params", "sigma", "batch_size", "lr", "complexity",
              "horizon", "seed", "task", "budget")
SLURM_VARS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
              "array_task_id": "SLURM_ARRAY_TASK_ID", "restart_count": "SLURM_RESTART_COUNT",
              "node": "SLURMD_NODENAME"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_safe(value: Any) -> Any:
    """Non-finite floats become null: strict JSON readers reject NaN/Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


class RecordError(ValueError):
    """A run record on disk that cannot be read; the message names the file."""


def check_study(study: Any, where: str = "study") -> dict[str, Any] | None:
    """Return a declared study as a plain dict, or raise ``ValueError`` naming the bad key.

    ``{kind: one of STUDY_KINDS, axes: {role: config key}, metric: str | None}``; ``None``
    (no declaration) stays ``None``. Roles must be in :data:`STUDY_AXES`.
    """
    if study is None:
        return None
    if not isinstance(study, dict):
        raise ValueError(f"{where} must be a mapping {{kind, axes, metric}}, got {study!r}")
    unknown = sorted(set(study) - {"kind", "axes", "metric"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a study key (kind, axes, metric)")
    kind = study.get("kind")
    if kind not in STUDY_KINDS:
        raise ValueError(f"{where}.kind={kind!r} must be one of {list(STUDY_KINDS)}")
    axes = study.get("axes") or {}
    if not isinstance(axes, dict):
        raise ValueError(f"{where}.axes must map roles to config keys, got {axes!r}")
    for role, key in axes.items():
        if role not in STUDY_AXES:
            raise ValueError(f"{where}.axes.{role} is not a known role; known: {list(STUDY_AXES)}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}.axes.{role}={key!r} must be a config key such as "
                             "'model.width'")
    metric = study.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"{where}.metric={metric!r} must be a metric name or null")
    return {"kind": kind, "axes": dict(axes), "metric": metric}


def slurm_ids(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The Slurm job, array-task and requeue ids of this process (empty outside Slurm)."""
    environ = os.environ if environ is None else environ
    return {k: environ[v] for k, v in SLURM_VARS.items() if environ.get(v)}


def new_run_info(*, run_id: str, experiment: str, seed: int, status: str = "running",
                 study: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A ``run.json`` object with the required fields first; ``fields`` adds the rest
    (see the module docstring for their names)."""
    if status not in STATUSES:
        raise ValueError(f"run.json status must be one of {STATUSES}, got {status!r}")
    return {"format": RECORD_FORMAT, "id": run_id, "experiment": experiment,
            "study": check_study(study), "status": status, "seed": seed, **fields}


def read_metrics_file(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse a ``metrics.jsonl``: the log points and the line numbers that were skipped.

    A malformed line (the last one of a killed run is often cut mid-write) is skipped,
    never fatal; callers decide whether to warn.
    """
    path = Path(path)
    if not path.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            skipped.append(lineno)
    return rows, skipped


class RunRecord:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / "config.yaml"
        self.run_json_path = self.run_dir / "run.json"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._metrics_file = None

    # run.json -----------------------------------------------------------------
    def read_run_json(self) -> dict[str, Any] | None:
        if not self.run_json_path.exists():
            return None
        try:
            return json.loads(self.run_json_path.read_text())
        except json.JSONDecodeError as err:
            raise RecordError(f"corrupt run record {self.run_json_path}: {err}") from err

    def write_run_json(self, info: dict[str, Any]) -> None:
        status = info.get("status")
        if status not in STATUSES:
            raise ValueError(f"run.json status must be one of {STATUSES}, got {status!r}")
        atomic_write_text(self.run_json_path, json.dumps(info, indent=2, default=str) + "\n")

    def update_run_json(self, **fields: Any) -> dict[str, Any]:
        info = self.read_run_json() or {}
        info.update(fields)
        self.write_run_json(info)
        return info

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.config_path, yaml_text)

    # metrics.jsonl --------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete metric lines; a truncated last line (killed mid-write) is skipped."""
        return read_metrics_file(self.metrics_path)[0]

    def add_start(self, start: dict[str, Any]) -> None:
        """Append one start (host, pid, time, Slurm ids) to ``run.json``'s ``starts``."""
        info = self.read_run_json() or {}
        info["starts"] = [*info.get("starts", []), start]
        self.write_run_json(info)

    def truncate_metrics(self, max_value: float, counter: str = ORDER_COUNTER) -> int:
        """Keep only the lines whose ``counter`` is at most ``max_value`` (the checkpoint's).

        Returns how many lines were dropped. Called on resume: what was logged after
        the checkpoint will be logged again by the resumed run. ``counter`` must grow
        strictly from line to line (``iteration`` does for every algorithm).
        """
        if not self.metrics_path.exists():
            return 0
        lines = self.metrics_path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get(counter, 0) <= max_value:
                kept.append(line)
        atomic_write_text(self.metrics_path, "".join(k + "\n" for k in kept))
        return len(lines) - len(kept)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one log point and flush it to the OS. Every line carries the counters."""
        missing = [c for c in COUNTERS if c not in row]
        if missing:
            raise KeyError(f"metrics line lacks counters {missing}")
        if self._metrics_file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = open(self.metrics_path, "a", buffering=1)  # noqa: SIM115
        clean = {k: _json_safe(v) for k, v in row.items()}
        self._metrics_file.write(json.dumps(clean) + "\n")
        self._metrics_file.flush()

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
