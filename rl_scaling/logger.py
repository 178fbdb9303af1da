"""Metric logging: the local run record always, wandb optionally, and a progress line.

The local ``metrics.jsonl`` is the truth; wandb mirrors it with ``env_steps`` and
``flops`` as step metrics. The progress line is live (carriage return) on a
terminal and a plain periodic line otherwise (Slurm, CI logs).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from rl_scaling.record import RunRecord

log = logging.getLogger(__name__)


def fmt_count(x: float | None) -> str:
    """A counter for people: ``2.05k``, ``25.00M``, ``3.91T`` (FLOPs reach P and E)."""
    if x is None or x != x:
        return "?"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
                        ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def fmt_duration(seconds: float | None) -> str:
    """``h:mm:ss`` or ``m:ss``; ``?`` for an unknown or infinite duration."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), -float("inf")):
        return "?"
    seconds = int(max(0.0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One progress line per run: its name, the budget counter, rate, return (or loss), ETA.

    The name (the job's overrides, e.g. ``model.width=0.25,seed=1``) tells apart the lines
    of parallel jobs that share a terminal. The rate is measured from the moment the run
    started (or resumed) until a window of recent lines exists, so the first line already
    has one; the ETA never goes below zero (the last iteration may overshoot the budget).
    """

    def __init__(self, total: float, mode: str = "auto", plain_every_s: float = 30.0,
                 stream=None, counter: str = "env_steps", name: str | None = None,
                 start: float = 0.0) -> None:
        if mode not in ("auto", "bar", "plain", "none"):
            raise ValueError(f"logger.progress must be auto|bar|plain|none, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.total, self.counter = total, counter
        self.name = name
        self.unit = "steps" if counter == "env_steps" else counter
        self.plain_every_s = plain_every_s
        self._last_plain = -float("inf")
        self._t_start = time.monotonic()
        # (time, value) of the start, then of each line: the rate's window
        self._window: list[tuple[float, float]] = [(self._t_start, float(start))]

    def line(self, value: float, metrics: dict[str, Any], final: bool = False,
             now: float | None = None) -> str:
        """The text of the line for the counter at ``value`` (``now``: monotonic seconds)."""
        now = time.monotonic() if now is None else now
        self._window.append((now, value))
        self._window = self._window[-21:]  # steps/s over the recent lines, not since start
        (t0, s0), (t1, s1) = self._window[0], self._window[-1]
        sps = (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")
        left = max(0.0, self.total - value)
        shown = {"return_mean": "return", "eval_return": "eval return", "val_loss": "val loss",
                 "loss": "loss"}
        name, ret = next(((shown[k], metrics[k]) for k in shown if metrics.get(k) is not None),
                         ("return", None))
        pct = min(100.0, 100.0 * value / max(self.total, 1))
        rate = f"{sps:7.1f} {self.unit}/s" if sps == sps else f"    ... {self.unit}/s"
        if final or left == 0:
            took = metrics.get("wall_time")  # training time summed over resumes
            when = f"done in {fmt_duration(now - self._t_start if took is None else took)}"
        else:
            when = f"ETA {fmt_duration(left / sps) if sps == sps and sps > 0 else '?'}"
        prefix = f"[{self.name}] " if self.name else ""
        return (f"{prefix}{self.unit} {fmt_count(value)}/{fmt_count(self.total)} "
                f"({pct:5.1f}%) | {rate} | {name} {ret if ret is None else f'{ret:.3f}'} "
                f"| {when}")

    def update(self, value: float, metrics: dict[str, Any], final: bool = False) -> None:
        """Show the budget counter at ``value`` after a line with ``metrics``."""
        if self.mode == "none":
            return
        now = time.monotonic()
        line = self.line(value, metrics, final, now)
        if self.mode == "bar":
            self.stream.write("\r" + line.ljust(100))
            if final:
                self.stream.write("\n")
            self.stream.flush()
        elif final or now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.stream.write(line + "\n")
            self.stream.flush()


class MetricsLogger:
    """Writes one log point to every sink. ``log`` requires the DESIGN.md counters."""

    def __init__(self, record: RunRecord, *, backend: str = "local",
                 progress: Progress | None = None,
                 wandb_kwargs: dict[str, Any] | None = None,
                 step_metric: str = "env_steps") -> None:
        """``step_metric``: wandb's default x-axis, the run's budget counter (``samples`` for a
        run trained on a dataset, whose ``env_steps`` stay 0)."""
        if backend not in ("local", "wandb"):
            raise ValueError(f"logger.backend must be 'local' or 'wandb', got {backend!r}")
        self.record = record
        self.progress = progress
        self._wandb = None
        if backend == "wandb":
            self._wandb = _init_wandb(record, wandb_kwargs or {}, step_metric)

    def log(self, row: dict[str, Any], final: bool = False) -> None:
        self.record.append_metrics(row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None})
        if self.progress is not None:
            self.progress.update(float(row[self.progress.counter]), row, final=final)

    def close(self, status: str = "finished") -> None:
        """Close the local files and, always (even when training raised), finish wandb with
        the run's status: a failed or diverged run finishes with exit code 1 there too."""
        self.record.close()
        if self._wandb is not None:
            self._wandb.summary["status"] = status
            self._wandb.finish(exit_code=1 if status in ("failed", "diverged") else 0)
            self._wandb = None


def _init_wandb(record: RunRecord, kwargs: dict[str, Any], step_metric: str = "env_steps"):
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs wandb: pip install 'rl-scaling[wandb]'") from err
    mode = os.environ.get("WANDB_MODE", "offline")  # never reach the network unless asked
    run = wandb.init(dir=str(record.run_dir), mode=mode, resume="allow", **kwargs)
    # Every counter is a step metric, so curves can be drawn against E, samples or FLOPs;
    # the budget counter is the default x-axis.
    for counter in ("env_steps", "samples", "updates", "flops", "iteration"):
        run.define_metric(counter)
    run.define_metric("*", step_metric=step_metric)
    return run
