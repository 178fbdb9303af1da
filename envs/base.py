"""The vectorised env interface every builder in `envs/` returns, and the shared bookkeeping.

A `VecEnv` runs `num_envs` copies of one task in lock step, gymnasium-style, with auto-reset:
when env i's episode ends at a step, `obs[i]` returned by that step is already the first
observation of its next episode. Statistics of the episodes that ended are reported in `info`
as flat arrays (see `EpisodeStats`), so the trainer never loops over envs in Python.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

SEED_LIMIT = 2**31  # procgen's rand_seed is a C int; use the same range everywhere


class VecEnv:
    """Base class of the vectorised envs built by `envs.make_env`.

    Attributes:
        num_envs: number of envs stepped together.
        single_observation_space: space of one env's observation (images: uint8 HWC Box,
            vectors: float32 Box).
        single_action_space: space of one env's action (always `Discrete`).

    Arrays returned by `reset` and `step` are fresh: the env never writes into them again, so a
    rollout buffer may keep references to them.
    """

    num_envs: int
    single_observation_space: gymnasium.spaces.Box
    single_action_space: gymnasium.spaces.Discrete

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every env and return the observations, (num_envs, *obs_shape).

        Args:
            seed: reseed the env's random streams with this value. `None` keeps the streams
                going (the first `reset` after construction uses the builder's `seed`).
        """
        raise NotImplementedError

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply one action per env.

        Args:
            actions: integer array of shape (num_envs,).

        Returns:
            obs (num_envs, *obs_shape), reward float32 (num_envs,), terminated bool (num_envs,),
            truncated bool (num_envs,), info dict with `episode_return` (float64) and
            `episode_length` (int64): one entry per episode that ended at this step, in env
            order (possibly empty), plus optional `episode_*` arrays of the same length.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Free the env's resources. Calling it twice is harmless."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, "
            f"obs={self.single_observation_space}, actions={self.single_action_space})"
        )


class EpisodeStats:
    """Running per-env episode return and length; reports the episodes that end at a step.

    Used by every env so that `info["episode_return"]` / `info["episode_length"]` mean the same
    thing everywhere. Fully vectorised: no Python loop over envs.
    """

    def __init__(self, num_envs: int):
        """Args:
        num_envs: number of envs being tracked.
        """
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        """Forget the episodes in progress (called by `VecEnv.reset`)."""
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def update(
        self, rewards: np.ndarray, dones: np.ndarray, **extra: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Add one step and return the info arrays of the episodes that ended with it.

        Args:
            rewards: (num_envs,) rewards of this step.
            dones: (num_envs,) bool, True where the episode ended at this step
                (terminated or truncated).
            extra: (num_envs,) arrays of per-episode facts known at the end of an episode,
                e.g. `success=level_complete`; reported as `info["episode_<key>"]`.

        Returns:
            {"episode_return": float64 (k,), "episode_length": int64 (k,), "episode_<key>": (k,)}
            for the k envs where `dones` is True, in env order.
        """
        self.returns += rewards
        self.lengths += 1
        ended = np.flatnonzero(dones)
        # fancy indexing copies, so the arrays handed out are not aliased by the next update
        info = {
            "episode_return": self.returns[ended],
            "episode_length": self.lengths[ended],
        }
        for key, values in extra.items():
            info[f"episode_{key}"] = np.asarray(values)[ended]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return info


def check_num_envs(num_envs: Any) -> int:
    """Return `num_envs` as an int, or raise ValueError naming the argument."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs <= 0:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    return int(num_envs)


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return `seed` as an int in [0, 2**31), or raise ValueError naming the argument."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**31), got {seed}")
    return int(seed)


def check_actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    """Return `actions` as an integer array of shape (num_envs,), checking it is in range.

    Out-of-range actions would be silently wrapped or ignored by some backends, which hides
    policy bugs, so they raise ValueError instead.
    """
    actions = np.asarray(actions)
    if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(
            f"actions must be an integer array of shape ({num_envs},), "
            f"got dtype {actions.dtype} shape {actions.shape}"
        )
    if actions.min() < 0 or actions.max() >= num_actions:
        raise ValueError(f"actions must be in [0, {num_actions}), got {actions}")
    return actions
