"""The vectorised env interface every builder in `envs/` returns, the config every env family
extends, and the shared bookkeeping.

A `VecEnv` runs `num_envs` copies of one task in lock step, gymnasium-style, with auto-reset:
when env i's episode ends at a step, `obs[i]` returned by that step is already the first
observation of its next episode; the last observation of the episode that ended is in
`info["final_obs"]` where the env can provide it (`VecEnv.provides_final_obs`). Statistics of
the episodes that ended are reported in `info` as flat arrays (see `EpisodeStats`), so the
trainer never loops over envs in Python.

An env family is one module: a config dataclass extending `EnvConfig`, a
`build(cfg, *, num_envs, seed) -> VecEnv`, and one line `register_env("<family>", Cfg, build)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

SEED_LIMIT = 2**31  # procgen's rand_seed is a C int; use the same range everywhere
# omegaconf.MISSING ("a value must be given"), spelled out so that importing envs does not
# import omegaconf; tests check the two agree.
MISSING = "???"


@dataclass
class EnvConfig:
    """Fields every env family's config has (`env.*`); a family's dataclass extends it.

    Attributes:
        family: the registered env family, e.g. "procgen", "mnist", "probe".
        id: the task within the family: a Procgen game, a probe's name; "mnist" for MNIST.
        num_envs: envs stepped together for training.
        eval: overrides applied for the held-out evaluation split: each key is a field of the
            same family config (e.g. `num_envs`, `num_levels`, `start_level` for Procgen,
            `split` for MNIST); the eval envs are built from the config with these values
            replacing the training ones. Empty: evaluate on the training distribution.
    """

    family: str = MISSING
    id: str = ""
    num_envs: int = 8
    eval: dict[str, Any] = field(default_factory=dict)


class VecEnv:
    """Base class of the vectorised envs built by `envs.make_env`.

    Attributes:
        num_envs: number of envs stepped together.
        single_observation_space: space of one env's observation (images: uint8 HWC Box,
            vectors: float32 Box).
        single_action_space: space of one env's action: `Discrete(n)` (integer actions
            0..n-1) or `Box(low, high, shape)` (float actions; the env clips them to
            [low, high], so a policy may sample from an unbounded distribution).
        provides_final_obs: True if `step` reports the last observation of every episode that
            ends (`info["final_obs"]`). False where the backend cannot (Procgen auto-resets
            inside C++); a learner must then treat a truncation like a termination.

    Arrays returned by `reset` and `step` are fresh: the env never writes into them again, so a
    rollout buffer may keep references to them.
    """

    num_envs: int
    single_observation_space: gymnasium.spaces.Box
    single_action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box
    provides_final_obs: bool = False

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
            actions: Discrete spaces: integer array (num_envs,); Box spaces: float array
                (num_envs, *action_shape), finite (clipped to the bounds by the env).

        Returns:
            obs (num_envs, *obs_shape), reward float32 (num_envs,), terminated bool (num_envs,)
            (the episode reached a terminal state: no value beyond it), truncated bool
            (num_envs,) (the episode was cut short, e.g. by a time limit: its value goes on),
            and an info dict with

            - `episode_return` (float64), `episode_length` (int64) and `episode_env` (the index
              of the env it ran in): one entry per episode that ended at this step, in env
              order (possibly empty), plus optional `episode_*` arrays of the same length.
              An env may end statistics episodes that are not ends for the learner (the MNIST
              bandit counts every step as one), so use `episode_env`, not `terminated |
              truncated`, to say which env an entry belongs to;
            - `final_obs` (k, *obs_shape): the last observation of each of the k episodes that
              ended (`terminated | truncated`), in env order, i.e. row j belongs to env
              `np.flatnonzero(terminated | truncated)[j]`; `obs` holds the next episode's
              first observation there. Present when k > 0 and `provides_final_obs`.
        """
        raise NotImplementedError

    def step_async(self, actions: np.ndarray) -> None:
        """Start a `step` with `actions`; `step_wait` returns its result. Envs that step in
        the background (Procgen's C++ threads: `native_async`) return at once, so the caller
        can compute while they step; the default keeps the actions and steps in `step_wait`
        (`envs.groups.EnvGroups` then runs it on a thread)."""
        self._async_actions = actions

    def step_wait(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The result of the `step_async` before it, as `step` returns it."""
        actions = getattr(self, "_async_actions", None)
        if actions is None:
            raise RuntimeError("step_wait() without a step_async() before it")
        self._async_actions = None
        return self.step(actions)

    native_async: bool = False  # step_async returns while the env steps on its own threads

    def close(self) -> None:
        """Free the env's resources. Calling it twice is harmless."""

    def checked_actions(self, actions: Any) -> np.ndarray:
        """The start of every `step`: refuse a step before `reset` (an env that sets
        `_needs_reset`), check `actions` against the action space, clip Box actions to their
        bounds."""
        if getattr(self, "_needs_reset", False):
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.single_action_space)
        space = self.single_action_space
        if isinstance(space, gymnasium.spaces.Box):
            actions = np.clip(actions, space.low, space.high)
        return actions

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
        self,
        rewards: np.ndarray,
        dones: np.ndarray,
        final_obs: np.ndarray | None = None,
        reference_return: float | None = None,
        **extra: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Add one step and return the info arrays of the episodes that ended with it.

        Args:
            rewards: (num_envs,) rewards of this step.
            dones: (num_envs,) bool, True where the episode ended at this step
                (terminated or truncated).
            final_obs: (num_envs, *obs_shape) the observation each env's step led to, before
                any auto-reset (only the rows where `dones` is True are read; a dict of such
                arrays for dict observations), or None.
            reference_return: the return a study calls 1000 (e.g. Rybkin et al.'s HalfCheetah
                8500); given, the episodes' returns on that 0..1000 scale are reported as
                `info["episode_normalized_return"]`.
            extra: (num_envs,) arrays of per-episode facts known at the end of an episode,
                e.g. `success=level_complete`; reported as `info["episode_<key>"]`.

        Returns:
            {"episode_return": float64 (k,), "episode_length": int64 (k,), "episode_env": the
            k env indices, "episode_<key>": (k,)} for the k envs where `dones` is True, in env
            order, and `"final_obs"`
            (k, *obs_shape) in the same order when `final_obs` is given and k > 0.
        """
        self.returns += rewards
        self.lengths += 1
        ended = np.flatnonzero(dones)
        # fancy indexing copies, so the arrays handed out are not aliased by the next update
        info = {
            "episode_return": self.returns[ended],
            "episode_length": self.lengths[ended],
            "episode_env": ended,
        }
        for key, values in extra.items():
            info[f"episode_{key}"] = np.asarray(values)[ended]
        if reference_return is not None:
            info["episode_normalized_return"] = info["episode_return"] * (
                1000.0 / reference_return)
        if final_obs is not None and len(ended):
            info["final_obs"] = obs_rows(final_obs, ended)
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return info


def concat_obs(parts: list[Any]) -> Any:
    """Observation batches (arrays, or dicts of arrays for dict spaces) joined along envs."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


def obs_rows(obs: Any, rows: np.ndarray) -> Any:
    """The observations of env ``rows`` (a copy), for arrays or dicts of arrays."""
    if isinstance(obs, dict):
        return {key: value[rows] for key, value in obs.items()}
    return obs[rows]


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


def check_actions(
    actions: Any, num_envs: int, space: gymnasium.spaces.Discrete | gymnasium.spaces.Box
) -> np.ndarray:
    """Return `actions` as an array, checking it fits `num_envs` copies of `space`.

    Discrete(n): an integer array (num_envs,) with values in [start, start + n). Out-of-range
    actions would be silently wrapped or ignored by some backends, which hides policy bugs, so
    they raise ValueError instead.
    Box: a float array (num_envs, *space.shape) of finite values. Values outside the bounds
    are allowed (a Gaussian policy samples them); the env clips them to [low, high].

    Raises:
        ValueError: wrong shape, dtype or values (one line).
        TypeError: `space` is neither Discrete nor Box.
    """
    actions = np.asarray(actions)
    if isinstance(space, gymnasium.spaces.Discrete):
        if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"actions must be an integer array of shape ({num_envs},), "
                f"got dtype {actions.dtype} shape {actions.shape}"
            )
        low, high = int(space.start), int(space.start + space.n)
        if actions.min() < low or actions.max() >= high:
            raise ValueError(
                f"actions must be in [{low}, {high}), got values from {actions.min()} "
                f"to {actions.max()}"
            )
        return actions
    if isinstance(space, gymnasium.spaces.Box):
        shape = (num_envs, *space.shape)
        if actions.shape != shape or not np.issubdtype(actions.dtype, np.floating):
            raise ValueError(
                f"actions must be a float array of shape {shape}, "
                f"got dtype {actions.dtype} shape {actions.shape}"
            )
        finite = np.isfinite(actions)
        if not finite.all():
            raise ValueError(
                f"actions must be finite, got {actions.size - finite.sum()} NaN or infinite "
                f"value(s)"
            )
        return actions
    raise TypeError(f"action space must be Discrete or Box, got {space}")
