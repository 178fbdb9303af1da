"""What a training loop needs from the run around it: counters, logging, checkpoints.

Algorithms receive a :class:`RunContext` and never touch Hydra, paths or files.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_scaling.checkpoint import save_checkpoint
from rl_scaling.flops import FlopAccountant
from rl_scaling.logger import MetricsLogger


@dataclass
class Counters:
    """The counters every metric line carries (plus the loop's own iteration count)."""

    env_steps: int = 0  # environment interactions E
    updates: int = 0  # gradient steps
    samples: int = 0  # learner samples processed (summed over epochs)
    iterations: int = 0  # rollout+update cycles completed
    wall_time: float = 0.0  # seconds of training, summed over resumes


class StopTraining(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a loop to stop early; ``status`` says how the run ends."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class RunContext:
    logger: MetricsLogger
    accountant: FlopAccountant
    device: torch.device
    checkpoint_path: Path
    checkpoint_interval: int  # iterations; 0: only at the end
    log_interval: int = 1  # iterations between metric lines (the last one is always logged)
    width: float = 1.0
    resume_state: dict[str, Any] | None = None
    counters: Counters = field(default_factory=Counters)
    preempted: Callable[[], bool] = lambda: False
    _t0: float = field(default_factory=time.monotonic)
    _wall_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.resume_state is not None:
            self.counters = Counters(**self.resume_state["counters"])
            self.accountant.load_state_dict(self.resume_state["accountant"])
            self._wall_offset = self.counters.wall_time
            restore_rng(self.resume_state["rng"])

    def wall_time(self) -> float:
        return self._wall_offset + time.monotonic() - self._t0

    def log(self, metrics: dict[str, Any], final: bool = False) -> dict[str, Any]:
        c = self.counters
        c.wall_time = self.wall_time()
        row = {"env_steps": c.env_steps, "updates": c.updates, "samples": c.samples,
               "flops": float(self.accountant.total), "wall_time": round(c.wall_time, 3),
               "iteration": c.iterations, **metrics}
        self.logger.log(row, final=final)
        return row

    def log_due(self) -> bool:
        return self.counters.iterations % self.log_interval == 0

    def checkpoint_due(self) -> bool:
        every = self.checkpoint_interval
        return (every > 0 and self.counters.iterations % every == 0) or self.preempted()

    def save(self, state: dict[str, Any]) -> None:
        """Checkpoint the loop's ``state`` together with counters, FLOPs and RNG streams."""
        self.counters.wall_time = self.wall_time()
        save_checkpoint(self.checkpoint_path, {
            **state,
            "counters": asdict(self.counters),
            "accountant": self.accountant.state_dict(),
            "rng": capture_rng(),
        })


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
