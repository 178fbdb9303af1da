"""The same-run Stable-Baselines3 baseline for the SAC speed benchmark: SB3's own ``SAC``
(the installed package, not a copy) with the benchmark's settings, timed the same way as
bench/baseline_sac.py.

Settings mapped onto SB3: ``net_arch=dict(pi=[width, width], qf=[width, width])``,
``train_freq=1``, ``gradient_steps=utd``, ``learning_starts``, ``batch_size``,
``buffer_size=total_steps`` (never wraps), ``ent_coef="auto"`` (starts at 1.0, target entropy
-act_dim), ``tau=0.005``, ``gamma=0.99``, ``device="cpu"``, one learning rate ``lr`` for
actor, critics and entropy coefficient (SB3 has a single one; default 3e-4).

Where SB3 itself differs from the CleanRL-style loop (kept, because this baseline is SB3 as
users run it): one env in ``Monitor`` + ``DummyVecEnv``; timeouts handled through
``TimeLimit.truncated``/``terminal_observation`` (same bootstrapping as using
``terminations`` and the final observation); the actor, alpha and critic are updated on every
gradient step (``utd`` actor updates per env step, not one), log-std clamped to [-20, 2],
acting under ``torch.no_grad()``, targets updated with ``polyak_update``
(in-place ``mul_``/``add_``). Training starts when ``num_timesteps > learning_starts``.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor


class _TrainPhaseTimer(BaseCallback):
    """Records wall time once ``learning_starts`` env steps are done, at the end of training,
    and every finished episode's return from the Monitor info."""

    def __init__(self, learning_starts: int) -> None:
        super().__init__()
        self.learning_starts = learning_starts
        self.t_train: float | None = None
        self.t_end: float | None = None
        self.returns: list[tuple[int, float]] = []

    def _on_training_start(self) -> None:
        if self.learning_starts <= 0:
            self.t_train = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps == self.learning_starts:
            self.t_train = time.perf_counter()
        for info in self.locals["infos"]:
            if "episode" in info:
                self.returns.append((self.num_timesteps, float(info["episode"]["r"])))
        return True

    def _on_training_end(self) -> None:
        self.t_end = time.perf_counter()


def run_sb3(env_id: str, total_steps: int, *, utd: int = 1, batch_size: int = 256,
            width: int = 256, lr: float = 3e-4, learning_starts: int = 5000, seed: int = 1,
            threads: int | None = None) -> dict[str, Any]:
    """Train SB3's SAC for ``total_steps`` env steps; same return keys as
    ``bench.baseline_sac.run_cleanrl_style`` (``steps_per_s``/``train_seconds`` over the env
    steps after ``learning_starts``, ``return_mean`` of the last 10 episodes, ``returns``)."""
    if utd < 1:
        raise ValueError(f"utd must be an integer >= 1, got {utd}")
    if threads:
        torch.set_num_threads(threads)
    env = Monitor(gym.make(env_id))
    model = SAC(
        "MlpPolicy", env, learning_rate=lr, buffer_size=max(total_steps, 1),
        learning_starts=learning_starts, batch_size=batch_size, tau=0.005, gamma=0.99,
        train_freq=1, gradient_steps=utd, ent_coef="auto",
        policy_kwargs={"net_arch": {"pi": [width, width], "qf": [width, width]}},
        seed=seed, device="cpu", verbose=0,
    )
    timer = _TrainPhaseTimer(learning_starts)
    model.learn(total_timesteps=total_steps, callback=timer)
    model.get_env().close()

    train_steps = total_steps - max(learning_starts, 0)
    ok = timer.t_train is not None and timer.t_end is not None and train_steps > 0
    train_seconds = timer.t_end - timer.t_train if ok else 0.0
    last = [r for _, r in timer.returns[-10:]]
    return {
        "steps_per_s": train_steps / train_seconds if train_seconds > 0 else float("nan"),
        "train_seconds": train_seconds,
        "return_mean": float(np.mean(last)) if last else float("nan"),
        "returns": timer.returns,
    }


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description="Stable-Baselines3 SAC throughput/return baseline")
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--utd", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--learning-starts", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(run_sb3(
        args.env, args.steps, utd=args.utd, batch_size=args.batch_size, width=args.width,
        lr=args.lr, learning_starts=args.learning_starts, seed=args.seed,
        threads=args.threads or None)))
