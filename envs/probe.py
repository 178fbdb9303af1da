"""Andy Jones' probe envs for debugging RL agents ("Debugging RL, Without the Agonizing Pain",
2021), plus continuous-action and time-limit probes. Each isolates one part of a learner and has
a known solution, so a correct learner must reach it in a few hundred updates:

name                   obs            actions  reward                     len  solution
constant_value         [0.]           1        +1                         1    V = 1
obs_reward             [+1.] / [-1.]  1        obs                        1    V(obs) = obs
two_step               [0.], [1.]     1        0, then +1                 2    V = gamma, then 1
action_reward          [0.]           2        +1 if action == 1 else -1  1    pi = 1, V = 1
obs_action_reward      [+1.] / [-1.]  2        +1 if action == (obs > 0)  1    pi = (obs > 0), V = 1
                                               else -1
continuous_action      [0.]           Box      1 - (a - 0.5)^2            1    a = 0.5, V = 1
continuous_obs_action  [+1.] / [-1.]  Box      1 - (a - 0.5 obs)^2        1    a = 0.5 obs, V = 1
time_limit             [t / 3]        1        +1                         3*   V = 1 / (1 - gamma)

actions: the size n of Discrete(n), or Box(-1, 1, (1,)).

Failures point at: value loss / optimiser (constant_value), value network reading obs
(obs_reward), discounting and bootstrapping (two_step), policy gradient / advantage sign
(action_reward), policy conditioning on obs (obs_action_reward), the continuous policy's mean
(continuous_action) and its conditioning on obs (continuous_obs_action), and treating a time
limit as a terminal state (time_limit). The rewarded discrete action is 1 (and "1 for positive
obs"), not 0, so that an untrained policy that breaks ties towards index 0 does not pass by
accident; the continuous optimum is 0.5 (not 0, where an untrained Gaussian's mean starts).

* time_limit never terminates: its episodes are *truncated* after 3 steps (obs 0, 1/3, 2/3),
and `info["final_obs"]` holds the observation the truncating step led to, [3/3] = [1.], while
the returned obs is already the next episode's [0.]. A learner that bootstraps from
V(final_obs) at truncations sees +1 forever and learns V = 1 / (1 - gamma); one that treats
the truncation as terminal learns 1 + gamma + gamma^2 (from [0.]) instead. ([1.] is never
stepped from, so V([1.]) is what the network generalises to; the targets at 0, 1/3 and 2/3
agree with it only when V is the same everywhere.)

Box actions are clipped to [-1, 1] before the reward is computed, so a Gaussian policy of mean
mu and standard deviation sigma (well inside the bounds) earns about 1 - (mu - a*)^2 - sigma^2.
The episodes of the other probes end by termination; their `final_obs` is [0.] (a terminal
state, whose value is 0 by definition).

Random observations are +1 or -1 with probability 1/2 each, drawn from a numpy Generator seeded
from the builder's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_actions, check_num_envs, check_seed
from rl_scaling.registry import register_env


@dataclass
class ProbeEnvConfig(EnvConfig):
    """`env=probe`: one probe task (see the module docstring).

    Attributes:
        family: "probe".
        id: the probe's name, one of `PROBES`.
        num_envs: envs stepped together.
        eval: overrides for the evaluation envs (none: probes have no held-out split).
    """

    family: str = "probe"
    id: str = "constant_value"
    num_envs: int = 8


@dataclass(frozen=True)
class Probe:
    """One probe task and its known solution.

    Attributes:
        name: registry name.
        action_space: `Discrete(n)`, or `Box(-1, 1, (1,))` for the continuous probes.
        episode_length: steps per episode (fixed).
        random_obs: True if the observation is a random sign (+1/-1), else it is the step index
            within the episode divided by `obs_horizon`.
        reward: (obs (n, 1), actions) -> float32 (n,) reward for that step; actions are
            int (n,) for Discrete probes, float (n, 1) clipped to [-1, 1] for Box probes.
        expected_value: (obs (n, 1), gamma) -> (n,) the value V(obs) of the optimal policy.
        optimal_action: obs (n, 1) -> the optimal actions: int (n,) for Discrete probes (all 0
            when there is one action), float32 (n, 1) for Box probes.
        truncates: True if episodes end by truncation (a time limit), else by termination.
        obs_horizon: divisor of the step index in non-random observations.
    """

    name: str
    action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box
    episode_length: int
    random_obs: bool
    reward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    expected_value: Callable[[np.ndarray, float], np.ndarray]
    optimal_action: Callable[[np.ndarray], np.ndarray]
    truncates: bool = False
    obs_horizon: int = 1

    @property
    def num_actions(self) -> int:
        """Size of the Discrete action space (AttributeError for a Box probe)."""
        if not isinstance(self.action_space, gymnasium.spaces.Discrete):
            raise AttributeError(f"probe {self.name!r} has Box actions: use action_space")
        return int(self.action_space.n)

    def observations(self) -> np.ndarray:
        """Every observation shown within an episode, float32 (m, 1) (e.g. for checking V)."""
        if self.random_obs:
            return np.array([[1.0], [-1.0]], dtype=np.float32)
        steps = np.arange(self.episode_length, dtype=np.float32)
        return (steps / np.float32(self.obs_horizon))[:, None]


TIME_LIMIT = 3  # steps before time_limit truncates


def _ones(obs: np.ndarray, *_: Any) -> np.ndarray:
    return np.ones(len(obs), dtype=np.float32)


def _zeros_action(obs: np.ndarray) -> np.ndarray:
    return np.zeros(len(obs), dtype=np.int64)


def _signed(correct: np.ndarray) -> np.ndarray:
    return np.where(correct, 1.0, -1.0).astype(np.float32)


def _quadratic(actions: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 - (a - target)^2: maximal (1) at a = target."""
    return (1.0 - (actions[:, 0] - target) ** 2).astype(np.float32)


def _discounted_forever(obs: np.ndarray, gamma: float) -> np.ndarray:
    return np.full(len(obs), 1.0 / (1.0 - np.float64(gamma)), dtype=np.float32)


UNIT_BOX = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe(
            name="constant_value",
            action_space=gymnasium.spaces.Discrete(1),
            episode_length=1,
            random_obs=False,
            reward=_ones,
            expected_value=_ones,
            optimal_action=_zeros_action,
        ),
        Probe(
            name="obs_reward",
            action_space=gymnasium.spaces.Discrete(1),
            episode_length=1,
            random_obs=True,
            reward=lambda obs, actions: obs[:, 0].astype(np.float32),
            expected_value=lambda obs, gamma: obs[:, 0].astype(np.float32),
            optimal_action=_zeros_action,
        ),
        Probe(
            name="two_step",
            action_space=gymnasium.spaces.Discrete(1),
            episode_length=2,
            random_obs=False,
            # obs is the step index: no reward on the first step, +1 on the second
            reward=lambda obs, actions: (obs[:, 0] == 1.0).astype(np.float32),
            expected_value=lambda obs, gamma: np.where(obs[:, 0] == 1.0, 1.0, gamma).astype(
                np.float32
            ),
            optimal_action=_zeros_action,
        ),
        Probe(
            name="action_reward",
            action_space=gymnasium.spaces.Discrete(2),
            episode_length=1,
            random_obs=False,
            reward=lambda obs, actions: _signed(actions == 1),
            expected_value=_ones,
            optimal_action=lambda obs: np.ones(len(obs), dtype=np.int64),
        ),
        Probe(
            name="obs_action_reward",
            action_space=gymnasium.spaces.Discrete(2),
            episode_length=1,
            random_obs=True,
            reward=lambda obs, actions: _signed(actions == (obs[:, 0] > 0)),
            expected_value=_ones,
            optimal_action=lambda obs: (obs[:, 0] > 0).astype(np.int64),
        ),
        Probe(
            name="continuous_action",
            action_space=UNIT_BOX,
            episode_length=1,
            random_obs=False,
            reward=lambda obs, actions: _quadratic(actions, 0.5),
            expected_value=_ones,
            optimal_action=lambda obs: np.full((len(obs), 1), 0.5, dtype=np.float32),
        ),
        Probe(
            name="continuous_obs_action",
            action_space=UNIT_BOX,
            episode_length=1,
            random_obs=True,
            reward=lambda obs, actions: _quadratic(actions, 0.5 * obs[:, 0]),
            expected_value=_ones,
            optimal_action=lambda obs: (0.5 * obs).astype(np.float32),
        ),
        Probe(
            name="time_limit",
            action_space=gymnasium.spaces.Discrete(1),
            episode_length=TIME_LIMIT,
            random_obs=False,
            reward=_ones,
            expected_value=_discounted_forever,  # bootstrapping from final_obs; gamma < 1
            optimal_action=_zeros_action,
            truncates=True,
            obs_horizon=TIME_LIMIT,
        ),
    )
}


class ProbeVecEnv(VecEnv):
    """`num_envs` copies of one probe; observations float32 (num_envs, 1).

    Box actions are clipped to the action space's bounds before the reward is computed.
    """

    provides_final_obs = True

    def __init__(self, num_envs: int, seed: int, probe: Probe):
        """Args:
        num_envs: number of envs stepped together.
        seed: seeds the Generator drawing random observations.
        probe: which task (an entry of `PROBES`).
        """
        self.num_envs = num_envs
        self.probe = probe
        self.single_observation_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.single_action_space = probe.action_space
        self._box = isinstance(probe.action_space, gymnasium.spaces.Box)
        self._rng = np.random.default_rng(seed)
        self._stats = EpisodeStats(num_envs)
        self._t = np.zeros(num_envs, dtype=np.int64)  # step index within the current episode
        self._obs: np.ndarray | None = None

    def _step_obs(self, t: np.ndarray) -> np.ndarray:
        """Observation (n, 1) of non-random probes at step index `t` (n,)."""
        return (t.astype(np.float32) / np.float32(self.probe.obs_horizon))[:, None]

    def _observe(self) -> np.ndarray:
        if self.probe.random_obs:
            # drawn for every env each step; fine because random-obs probes last one step
            obs = self._rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.num_envs)
            self._obs = obs[:, None]
        else:
            self._obs = self._step_obs(self._t)
        return self._obs.copy()  # callers own what they get; self._obs stays for the reward

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(check_seed(seed))
        self._stats.reset()
        self._t[:] = 0
        return self._observe()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        space = self.single_action_space
        actions = check_actions(actions, self.num_envs, space)
        if self._box:
            actions = np.clip(actions, space.low, space.high)
        reward = self.probe.reward(self._obs, actions)
        ended = self._t + 1 >= self.probe.episode_length
        never = np.zeros(self.num_envs, dtype=bool)
        terminated, truncated = (never, ended) if self.probe.truncates else (ended, never)
        final_obs = None
        if ended.any():
            # truncated: the observation the last step led to (step index episode_length);
            # terminated: the terminal state, observed as [0.]
            final_obs = (
                self._step_obs(self._t + 1)
                if self.probe.truncates
                else np.zeros((self.num_envs, 1), dtype=np.float32)
            )
        info = self._stats.update(reward, ended, final_obs=final_obs)
        self._t = np.where(ended, 0, self._t + 1)
        return self._observe(), reward, terminated, truncated, info


def make_probe(*, num_envs: int, seed: int, name: str) -> ProbeVecEnv:
    """Build one of the probe envs.

    Args:
        num_envs: number of envs stepped together.
        seed: seeds the random observations (+1/-1), in [0, 2**31).
        name: one of `PROBES` (see the module docstring for each task and its solution).
    """
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if name not in PROBES:
        raise ValueError(f"name {name!r} is not a probe; choose one of {list(PROBES)}")
    return ProbeVecEnv(num_envs, seed, PROBES[name])


def build(cfg: ProbeEnvConfig, *, num_envs: int, seed: int) -> ProbeVecEnv:
    """The registry's builder: `cfg.id` names the probe."""
    if cfg.id not in PROBES:  # named as the config key, not make_probe's argument
        raise ValueError(f"id {cfg.id!r} is not a probe; choose one of {list(PROBES)}")
    return make_probe(num_envs=num_envs, seed=seed, name=cfg.id)


register_env("probe", ProbeEnvConfig, build)
