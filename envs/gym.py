"""Gymnasium envs with flat observations (MuJoCo v5, Pendulum, CartPole, ...) behind the
`VecEnv` interface.

Meant for off-policy learners such as SAC, which step one env (or a few) per update, so the
per-step overhead matters more than parallelism: the `num_envs` envs run in-process and are
stepped in a plain Python loop. Each is gymnasium's *unwrapped* env; the time limit is counted
here instead of by gymnasium's `TimeLimit`/`OrderEnforcing`/`PassiveEnvChecker` wrappers (and
gymnasium's vector envs are not used), which keeps a step to the env's own cost plus a few
microseconds.

- Observations float32 (num_envs, obs_dim) (MuJoCo's float64 observations are cast); actions
  float (num_envs, act_dim), clipped to the action space's bounds, or integers for envs
  with `Discrete` actions (CartPole-v1, Acrobot-v1, LunarLander-v3, ...).
- `terminated`: the env says the episode reached a terminal state (e.g. Walker2d fell).
  `truncated`: the time limit (`max_episode_steps`, default the env's registered limit, e.g.
  1000 for MuJoCo, 200 for Pendulum) was reached without a termination.
- Auto-reset: `info["final_obs"]` holds the last observation of each episode that ended.
- `info["episode_normalized_return"]` = return * 1000 / reference return, when the task has a
  reference return (`REFERENCE_RETURNS`, or `env.reference_return`).

Seeding: env i is reset with seed `seed + i` on the first reset; later auto-resets continue its
stream; `reset(seed=s)` reseeds env i with `s + i`. The action and observation spaces' own
samplers are seeded the same way (the vectorised `single_action_space` with `seed`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

# Returns that map to 1000 on the normalised 0..1000 scale (Rybkin et al. 2025, "Value-based
# deep RL scales predictably"), so gym and DMC tasks can be averaged on one scale.
REFERENCE_RETURNS: dict[str, float] = {
    "HalfCheetah-v5": 8500.0,
    "Walker2d-v5": 4500.0,
    "Ant-v5": 6625.0,
    "Humanoid-v5": 6125.0,
}


@dataclass
class GymEnvConfig(EnvConfig):
    """`env=gym`: one gymnasium env with flat observations (see the module docstring).

    Attributes:
        family: "gym".
        id: a registered gymnasium id with a flat Box observation space and Box or Discrete
            actions, e.g. "Pendulum-v1", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5",
            "Humanoid-v5", "CartPole-v1".
        num_envs: envs stepped together (SAC uses 1).
        eval: overrides for the evaluation envs (none: the same task, seeded apart).
        max_episode_steps: agent steps before an episode is truncated; None: the env's
            registered limit (1000 for MuJoCo, 200 for Pendulum; no limit if it has none).
        reference_return: the return that maps to 1000 in `episode_normalized_return`;
            None: `REFERENCE_RETURNS[id]`, or no normalised return for ids not listed there.
    """

    family: str = "gym"
    id: str = "Pendulum-v1"
    num_envs: int = 1
    max_episode_steps: int | None = None
    reference_return: float | None = None

    def validate(self) -> None:
        """Raise a one-line ValueError naming the bad key (cheap: builds nothing)."""
        if self.id not in gymnasium.registry:
            close = difflib.get_close_matches(str(self.id), list(gymnasium.registry), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"env.id={self.id!r} is not a registered gymnasium env{hint}")
        steps = self.max_episode_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0
        ):
            raise ValueError(f"env.max_episode_steps={steps!r} must be > 0 or null")
        ref = self.reference_return
        if ref is not None and (
            isinstance(ref, bool) or not isinstance(ref, (int, float)) or not 0 < ref < np.inf
        ):
            raise ValueError(f"env.reference_return={ref!r} must be > 0 or null")

    def reference(self) -> float | None:
        """The reference return in use: `reference_return`, else the table's, else None."""
        if self.reference_return is not None:
            return float(self.reference_return)
        return REFERENCE_RETURNS.get(self.id)


class GymVecEnv(VecEnv):
    """`num_envs` unwrapped gymnasium envs stepped in a Python loop (see the module docstring).

    Attributes:
        env_id: the gymnasium id.
        max_episode_steps: the time limit in agent steps (None: no limit).
        reference_return: return mapping to 1000 in `episode_normalized_return`, or None.
    """

    provides_final_obs = True

    def __init__(
        self,
        num_envs: int,
        seed: int,
        env_id: str,
        max_episode_steps: int | None,
        reference_return: float | None,
    ):
        """Args:
        num_envs: number of envs stepped together.
        seed: env i's first reset uses seed + i.
        env_id: a registered gymnasium id (already validated).
        max_episode_steps: time limit; None: the env's registered one.
        reference_return: for the normalised return, or None.
        """
        self.num_envs = num_envs
        self.env_id = env_id
        self._envs: list[gymnasium.Env] = []
        for _ in range(num_envs):
            try:
                env = gymnasium.make(env_id, disable_env_checker=True).unwrapped
            except ImportError as err:  # e.g. mujoco missing, or a mujoco-py (v2/v3) id
                self.close()
                raise ImportError(f"env.id={env_id!r} cannot be built: {err}") from err
            self._envs.append(env)
        first = self._envs[0]
        obs_space, act_space = first.observation_space, first.action_space
        if not isinstance(act_space, (gymnasium.spaces.Box, gymnasium.spaces.Discrete)):
            self.close()
            raise ValueError(
                f"env.id={env_id!r} has {act_space} actions; the gym family "
                f"needs Box (continuous) or Discrete actions"
            )
        if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
            self.close()
            raise ValueError(
                f"env.id={env_id!r} has {obs_space} observations; the gym family needs a flat Box"
            )
        self.single_observation_space = gymnasium.spaces.Box(
            obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32
        )
        self.single_action_space = (
            gymnasium.spaces.Discrete(int(act_space.n), start=int(act_space.start))
            if isinstance(act_space, gymnasium.spaces.Discrete)
            else gymnasium.spaces.Box(act_space.low, act_space.high, dtype=act_space.dtype))
        if max_episode_steps is None:
            max_episode_steps = gymnasium.spec(env_id).max_episode_steps
        self.max_episode_steps = max_episode_steps
        self.reference_return = reference_return
        self._limit = max_episode_steps if max_episode_steps is not None else np.inf
        self._obs_dim = obs_space.shape[0]
        self._stats = EpisodeStats(num_envs)
        self._t = [0] * num_envs  # agent steps into each env's current episode
        self._pending_seed: int | None = seed  # used by the first reset()
        self._needs_reset = True
        self._seed_spaces(seed)

    def _seed_spaces(self, seed: int) -> None:
        self.single_action_space.seed(seed)
        for i, env in enumerate(self._envs):
            env.action_space.seed(seed + i)
            env.observation_space.seed(seed + i)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if not self._envs:
            raise RuntimeError("this env is closed")
        if seed is not None:
            seed = check_seed(seed)
            self._seed_spaces(seed)
        elif self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        obs = np.empty((self.num_envs, self._obs_dim), dtype=np.float32)
        for i, env in enumerate(self._envs):
            obs[i], _ = env.reset(seed=None if seed is None else seed + i)
        self._stats.reset()
        self._t = [0] * self.num_envs
        self._needs_reset = False
        return obs

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = self.checked_actions(actions)
        n = self.num_envs
        obs = np.empty((n, self._obs_dim), dtype=np.float32)
        rewards = np.empty(n, dtype=np.float64)  # the stats sum them at full precision
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final_obs = None
        t = self._t
        for i, env in enumerate(self._envs):
            o, r, term, trunc, _ = env.step(actions[i])
            rewards[i] = r
            t[i] += 1
            if term or trunc or t[i] >= self._limit:
                if final_obs is None:
                    final_obs = np.empty((n, self._obs_dim), dtype=np.float32)
                final_obs[i] = o
                terminated[i] = term
                truncated[i] = not term  # the env's own truncation or the time limit
                o, _ = env.reset()  # continues env i's random stream
                t[i] = 0
            obs[i] = o
        info = self._stats.update(rewards, terminated | truncated, final_obs=final_obs,
                                  reference_return=self.reference_return)
        return obs, rewards.astype(np.float32), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []
        self._needs_reset = True


def build(cfg: GymEnvConfig, *, num_envs: int, seed: int) -> GymVecEnv:
    """The registry's builder: `cfg.id` is the gymnasium id; errors name the `env.*` key."""
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    cfg.validate()
    steps = None if cfg.max_episode_steps is None else int(cfg.max_episode_steps)
    return GymVecEnv(num_envs, seed, cfg.id, steps, cfg.reference())


def make_gym(
    *,
    num_envs: int,
    seed: int,
    env_id: str = "Pendulum-v1",
    max_episode_steps: int | None = None,
    reference_return: float | None = None,
) -> GymVecEnv:
    """Build a vectorised gymnasium env from keyword arguments (errors name the `env.*` keys).

    Args:
        num_envs: envs stepped together.
        seed: in [0, 2**31); env i's first reset uses seed + i.
        env_id: `env.id`, a registered gymnasium id with flat Box observations and Box or
            Discrete actions.
        max_episode_steps: `env.max_episode_steps`; None: the env's registered limit.
        reference_return: `env.reference_return`; None: `REFERENCE_RETURNS.get(env_id)`.
    """
    cfg = GymEnvConfig(
        id=env_id,
        num_envs=num_envs,
        max_episode_steps=max_episode_steps,
        reference_return=reference_return,
    )
    return build(cfg, num_envs=num_envs, seed=seed)


register_env("gym", GymEnvConfig, build)
