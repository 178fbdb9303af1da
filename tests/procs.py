"""Helpers the tests share: starting ``python -m rl_scaling.sweep`` and interrupting it, and
stepping an env with random actions."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from rl_scaling.record import RunRecord


def kill_after_a_checkpoint(proc: subprocess.Popen, run_dir: Path, lines: int = 4,
                            timeout: float = 240) -> None:
    """SIGKILL ``proc`` once it has checkpointed and logged at least ``lines`` lines, at a
    moment when some of them came after its last checkpoint (the line count is not a
    multiple of 3, the tests' checkpoint cadence in lines). ``proc.stderr`` must be a pipe."""
    ckpt = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            logged = len(RunRecord(run_dir).read_metrics())
            if ckpt.exists() and logged >= lines and logged % 3 != 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.01)
        else:
            pytest.fail(f"no checkpoint within {timeout:.0f} s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def random_steps(env, steps: int, seed: int = 0) -> list[tuple]:
    """``steps`` results of ``env.step`` with uniform random actions of a ``Discrete`` env."""
    rng = np.random.default_rng(seed)
    return [env.step(rng.integers(0, env.single_action_space.n, env.num_envs))
            for _ in range(steps)]
