"""DeepMind Control Suite tasks (Tassa et al. 2018) behind the `VecEnv` interface, from state.

`num_envs` dm_control environments (`dm_control.suite.load`) run in-process and are stepped in
a Python loop, as for the gym family: off-policy learners such as SAC step one env per update.

- `env.id` is "<domain>-<task>", e.g. "cartpole-swingup", "ball_in_cup-catch",
  "humanoid_CMU-run": any of `dm_control.suite.ALL_TASKS`.
- Observations: the time step's observation dict flattened to one float32 vector (the values
  raveled and concatenated in the dict's order); observation space Box(-inf, inf).
- Actions: Box from the task's action spec (float32), clipped to its bounds.
- Action repeat: each agent step applies the action `action_repeat` times (control steps) and
  sums their rewards. Episodes last 1000 control steps in the standard tasks, i.e.
  1000 / action_repeat agent steps.
- Episodes end by the time limit: `truncated` (the time step's discount is 1). A time step with
  discount 0 before the limit is a real terminal state: `terminated`.
- Auto-reset with `info["final_obs"]`; `info["episode_normalized_return"]` = return * 1000 /
  `reference_return` (1000 by default: DMC returns are already on the 0..1000 scale).

Seeding: env i is built with `task_kwargs={"random": seed + i}`, so its first episode and every
later one follow that stream; `reset(seed=s)` rebuilds env i with `s + i`. dm_control is
imported on first use (it takes about a second), not when `envs` is imported. Nothing is
rendered or downloaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

# Named in errors as examples of valid ids (the usual DMC benchmark tasks).
EXAMPLE_TASKS = (
    "cartpole-swingup", "cheetah-run", "dog-stand", "finger-spin", "humanoid-stand",
    "quadruped-walk", "walker-walk",
)  # fmt: skip


def all_tasks() -> dict[str, tuple[str, str]]:
    """Every suite task as {"<domain>-<task>": (domain, task)} (imports dm_control)."""
    from dm_control import suite

    return {f"{domain}-{task}": (domain, task) for domain, task in suite.ALL_TASKS}


def parse_task(env_id: str) -> tuple[str, str]:
    """Split "<domain>-<task>" into (domain, task) by matching the suite's task list, so
    domains with underscores ("ball_in_cup-catch") work.

    Raises:
        ValueError: not a suite task (one line naming `env.id`, with examples).
    """
    tasks = all_tasks()
    if env_id not in tasks:
        close = difflib.get_close_matches(str(env_id), list(tasks), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"env.id={env_id!r} is not a DeepMind Control task; {hint}"
            f"e.g. {', '.join(EXAMPLE_TASKS)}"
        )
    return tasks[env_id]


@dataclass
class DMCEnvConfig(EnvConfig):
    """`env=dmc`: one DeepMind Control Suite task from state (see the module docstring).

    Attributes:
        family: "dmc".
        id: "<domain>-<task>", any of `dm_control.suite.ALL_TASKS`, e.g. "cartpole-swingup",
            "cheetah-run", "walker-walk", "ball_in_cup-catch".
        num_envs: envs stepped together (SAC uses 1).
        eval: overrides for the evaluation envs (none: the same task, seeded apart).
        action_repeat: control steps per agent step (the action is repeated and the rewards
            summed); episodes last 1000 / action_repeat agent steps.
        reference_return: the return that maps to 1000 in `episode_normalized_return`.
    """

    family: str = "dmc"
    id: str = "cartpole-swingup"
    num_envs: int = 1
    action_repeat: int = 1
    reference_return: float = 1000.0

    def validate(self) -> None:
        """Raise a one-line ValueError naming the bad key (imports dm_control, builds nothing)."""
        repeat = self.action_repeat
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ValueError(f"env.action_repeat={repeat!r} must be an integer >= 1")
        ref = self.reference_return
        if isinstance(ref, bool) or not isinstance(ref, (int, float)) or not 0 < ref < np.inf:
            raise ValueError(f"env.reference_return={ref!r} must be > 0")
        parse_task(self.id)


def _flatten(observation: dict[str, Any]) -> np.ndarray:
    """The observation dict's values, raveled and concatenated in the dict's order."""
    return np.concatenate([np.ravel(v) for v in observation.values()])


class DMCVecEnv(VecEnv):
    """`num_envs` dm_control environments stepped in a Python loop (see the module docstring).

    Attributes:
        action_repeat: control steps per agent step.
        reference_return: return mapping to 1000 in `episode_normalized_return`.
    """

    provides_final_obs = True

    def __init__(
        self,
        num_envs: int,
        seed: int,
        load: Callable[[int], Any],
        action_repeat: int,
        reference_return: float,
    ):
        """Args:
        num_envs: number of envs stepped together.
        seed: env i is built with random seed `seed + i`.
        load: seed -> a dm_env.Environment (e.g. `suite.load` of one task); called again by
            `reset(seed=...)`.
        action_repeat: control steps per agent step.
        reference_return: for the normalised return.
        """
        self.num_envs = num_envs
        self.action_repeat = action_repeat
        self.reference_return = float(reference_return)
        self._load = load
        self._envs: list[Any] = []
        self._build(seed)
        first = self._envs[0]
        spec = first.action_spec()
        low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32)
        high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32)
        self.single_action_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.single_action_space.seed(seed)
        obs_dim = sum(int(np.prod(s.shape)) for s in first.observation_spec().values())
        self._obs_dim = obs_dim
        self.single_observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (obs_dim,), dtype=np.float32
        )
        self._stats = EpisodeStats(num_envs)
        self._needs_reset = True

    def _build(self, seed: int) -> None:
        self._close_envs()
        self._envs = [self._load(seed + i) for i in range(self.num_envs)]
        self._built_seed = seed
        self._fresh = True

    def reset(self, seed: int | None = None) -> np.ndarray:
        if not self._envs:
            raise RuntimeError("this env is closed")
        if seed is not None:
            seed = check_seed(seed)
            if not (self._fresh and seed == self._built_seed):  # else: built with it, unused
                self._build(seed)
            self.single_action_space.seed(seed)
        obs = np.empty((self.num_envs, self._obs_dim), dtype=np.float32)
        for i, env in enumerate(self._envs):
            obs[i] = _flatten(env.reset().observation)
        self._stats.reset()
        self._fresh = False
        self._needs_reset = False
        return obs

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = self.checked_actions(actions)
        n = self.num_envs
        obs = np.empty((n, self._obs_dim), dtype=np.float32)
        rewards = np.zeros(n, dtype=np.float64)  # the stats sum them at full precision
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final_obs = None
        for i, env in enumerate(self._envs):
            action = actions[i]
            reward = 0.0
            for _ in range(self.action_repeat):
                time_step = env.step(action)
                reward += time_step.reward
                if time_step.last():
                    break
            rewards[i] = reward
            o = _flatten(time_step.observation)
            if time_step.last():
                if final_obs is None:
                    final_obs = np.empty((n, self._obs_dim), dtype=np.float32)
                final_obs[i] = o
                ended_terminal = time_step.discount == 0.0
                terminated[i] = ended_terminal
                truncated[i] = not ended_terminal  # the time limit
                o = _flatten(env.reset().observation)
            obs[i] = o
        info = self._stats.update(rewards, terminated | truncated, final_obs=final_obs,
                                  reference_return=self.reference_return)
        return obs, rewards.astype(np.float32), terminated, truncated, info

    def _close_envs(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []

    def close(self) -> None:
        self._close_envs()
        self._needs_reset = True


def _suite_loader(domain: str, task: str) -> Callable[[int], Any]:
    from dm_control import suite

    def load(seed: int) -> Any:
        return suite.load(domain, task, task_kwargs={"random": seed})

    return load


def build(cfg: DMCEnvConfig, *, num_envs: int, seed: int) -> DMCVecEnv:
    """The registry's builder: `cfg.id` is the "<domain>-<task>"; errors name the `env.*` key."""
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    cfg.validate()
    domain, task = parse_task(cfg.id)
    return DMCVecEnv(
        num_envs, seed, _suite_loader(domain, task), int(cfg.action_repeat), cfg.reference_return
    )


def make_dmc(
    *,
    num_envs: int,
    seed: int,
    env_id: str = "cartpole-swingup",
    action_repeat: int = 1,
    reference_return: float = 1000.0,
) -> DMCVecEnv:
    """Build a vectorised DeepMind Control task from keyword arguments (errors name the `env.*`
    keys).

    Args:
        num_envs: envs stepped together.
        seed: in [0, 2**31); env i is built with random seed seed + i.
        env_id: `env.id`, "<domain>-<task>", e.g. "cartpole-swingup", "ball_in_cup-catch".
        action_repeat: `env.action_repeat`, control steps per agent step (>= 1).
        reference_return: `env.reference_return`, the return that normalises to 1000.
    """
    cfg = DMCEnvConfig(
        id=env_id,
        num_envs=num_envs,
        action_repeat=action_repeat,
        reference_return=reference_return,
    )
    return build(cfg, num_envs=num_envs, seed=seed)


register_env("dmc", DMCEnvConfig, build)
