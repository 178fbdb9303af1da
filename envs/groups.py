"""Env groups: one vectorised env made of several, so one group steps while the policy acts
on another (``speed.overlap_envs``, used by ``agents.ppo.collect_rollout``).

``EnvGroups`` is itself a :class:`~envs.base.VecEnv` (the envs of group 0, then group 1, ...),
so any algorithm can use it unchanged; ``step_group_async(g, actions)`` /
``step_group_wait(g)`` step one group in the background: natively where the env steps on
its own threads (Procgen: ``native_async``), else on a worker thread (numpy- and C-based envs
release the GIL for most of a step).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from envs.base import VecEnv, check_seed, concat_obs
from rl_scaling.distributed import STREAM_SEED_STRIDE  # group g: seed + g * stride


def merge_infos(infos: list[dict[str, Any]], offsets: list[int]) -> dict[str, Any]:
    """One step's info of several groups as one env's info would be: ``episode_*`` arrays
    concatenated in env order (``episode_env`` shifted by each group's first env), and
    ``final_obs`` concatenated where any group has one."""
    merged: dict[str, Any] = {}
    keys = {k for info in infos for k in info if k.startswith("episode_")}
    for key in sorted(keys):
        parts = []
        for info, offset in zip(infos, offsets, strict=True):
            n = len(info["episode_return"])
            part = info.get(key)
            if part is None:  # a key only some groups report (cannot happen for one family)
                part = np.zeros(n)
            parts.append(np.asarray(part) + offset if key == "episode_env" else part)
        merged[key] = np.concatenate(parts)
    finals = [info["final_obs"] for info in infos if "final_obs" in info]
    if finals:
        merged["final_obs"] = concat_obs(finals)
    return merged


class EnvGroups(VecEnv):
    """``groups`` (VecEnvs of one task, seeded apart) as one VecEnv of their summed size."""

    def __init__(self, groups: list[VecEnv]) -> None:
        if len(groups) < 2:
            raise ValueError(f"EnvGroups needs at least 2 groups, got {len(groups)}")
        self.groups = list(groups)
        first = self.groups[0]
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.provides_final_obs = all(g.provides_final_obs for g in self.groups)
        sizes = [g.num_envs for g in self.groups]
        self.num_envs = sum(sizes)
        self.offsets = [int(x) for x in np.cumsum([0, *sizes[:-1]])]
        self.slices = [slice(o, o + n) for o, n in zip(self.offsets, sizes, strict=True)]
        native = all(g.native_async for g in self.groups)
        self._pool = None if native else ThreadPoolExecutor(len(self.groups),
                                                            thread_name_prefix="env-group")
        self._pending: dict[int, Future | None] = {}

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            seed = check_seed(seed)
        obs = [g.reset(seed=None if seed is None else
                       (seed + k * STREAM_SEED_STRIDE) % 2**31)
               for k, g in enumerate(self.groups)]
        return concat_obs(obs)

    def step_group_async(self, group: int, actions: np.ndarray) -> None:
        """Start group ``group``'s step with its ``actions`` (its envs only)."""
        if group in self._pending:
            raise RuntimeError(f"env group {group} is already stepping")
        env = self.groups[group]
        if self._pool is None:
            env.step_async(actions)
            self._pending[group] = None
        else:
            self._pending[group] = self._pool.submit(env.step, actions)

    def step_group_wait(
        self, group: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Group ``group``'s step result, as its own ``step`` returns it (env indices in
        ``info`` are the group's own)."""
        if group not in self._pending:
            raise RuntimeError(f"env group {group} has no step in flight")
        future = self._pending.pop(group)
        return self.groups[group].step_wait() if future is None else future.result()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        for k, s in enumerate(self.slices):
            self.step_group_async(k, actions[s])
        results = [self.step_group_wait(k) for k in range(len(self.groups))]
        obs = concat_obs([r[0] for r in results])
        reward, terminated, truncated = (np.concatenate([r[i] for r in results])
                                         for i in range(1, 4))
        return obs, reward, terminated, truncated, merge_infos([r[4] for r in results],
                                                               self.offsets)

    def close(self) -> None:
        for g in self.groups:
            g.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
