"""The run record: the contract between training and analysis (see DESIGN.md).

One directory per run holds ``config.yaml``, ``run.json``, ``metrics.jsonl`` and
``checkpoints/``. Metric lines are appended and flushed as they are logged, so a
killed run loses at most its unflushed tail; on resume, lines logged after the
last checkpoint are dropped (they will be logged again), so no point is
duplicated.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

COUNTERS = ("env_steps", "updates", "samples", "flops", "wall_time")
STATUSES = ("running", "finished", "failed", "diverged")


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
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_metrics(self, max_env_steps: int) -> int:
        """Keep only the lines logged at or before ``max_env_steps`` (the checkpoint's).

        Returns how many lines were dropped. Called on resume: what was logged after
        the checkpoint will be logged again by the resumed run.
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
            if row.get("env_steps", 0) <= max_env_steps:
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
