"""Andy Jones' five probe envs for debugging RL agents ("Debugging RL, Without the Agonizing
Pain", 2021). Each isolates one part of an actor-critic learner and has a known solution, so a
correct PPO must reach it in a few hundred updates:

name               obs             actions  reward                     length  solution
constant_value     [0.]            1        +1                         1       V = 1
obs_reward         [+1.] or [-1.]  1        obs                        1       V(obs) = obs
two_step           [0.] then [1.]  1        0, then +1                 2       V = gamma, then 1
action_reward      [0.]            2        +1 if action == 1 else -1  1       pi = 1, V = 1
obs_action_reward  [+1.] or [-1.]  2        +1 if action == (obs > 0)  1       pi = (obs > 0), V = 1
                                            else -1

Failures point at: value loss / optimiser (1), value network reading obs (2), discounting and
bootstrapping (3), policy gradient / advantage sign (4), policy conditioning on obs (5). The
rewarded action of probes 4 and 5 is action 1 (and "1 for positive obs"), not 0, so that an
untrained policy that breaks ties towards index 0 does not pass by accident.

Random observations are +1 or -1 with probability 1/2 each, drawn from a numpy Generator seeded
from the builder's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from envs.base import EpisodeStats, VecEnv, check_actions, check_num_envs, check_seed


@dataclass(frozen=True)
class Probe:
    """One probe task and its known solution.

    Attributes:
        name: registry name.
        num_actions: size of the Discrete action space.
        episode_length: steps per episode (fixed).
        random_obs: True if the observation is a random sign (+1/-1), else it is the step index
            within the episode (0., then 1. for two_step).
        reward: (obs (n, 1), actions (n,)) -> float32 (n,) reward for that step.
        expected_value: (obs (n, 1), gamma) -> (n,) the value V(obs) of the optimal policy.
        optimal_action: obs (n, 1) -> (n,) the optimal action (all 0 when there is one action).
    """

    name: str
    num_actions: int
    episode_length: int
    random_obs: bool
    reward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    expected_value: Callable[[np.ndarray, float], np.ndarray]
    optimal_action: Callable[[np.ndarray], np.ndarray]


def _ones(obs: np.ndarray, *_: Any) -> np.ndarray:
    return np.ones(len(obs), dtype=np.float32)


def _zeros_action(obs: np.ndarray) -> np.ndarray:
    return np.zeros(len(obs), dtype=np.int64)


def _signed(correct: np.ndarray) -> np.ndarray:
    return np.where(correct, 1.0, -1.0).astype(np.float32)


PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe(
            name="constant_value",
            num_actions=1,
            episode_length=1,
            random_obs=False,
            reward=_ones,
            expected_value=_ones,
            optimal_action=_zeros_action,
        ),
        Probe(
            name="obs_reward",
            num_actions=1,
            episode_length=1,
            random_obs=True,
            reward=lambda obs, actions: obs[:, 0].astype(np.float32),
            expected_value=lambda obs, gamma: obs[:, 0].astype(np.float32),
            optimal_action=_zeros_action,
        ),
        Probe(
            name="two_step",
            num_actions=1,
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
            num_actions=2,
            episode_length=1,
            random_obs=False,
            reward=lambda obs, actions: _signed(actions == 1),
            expected_value=_ones,
            optimal_action=lambda obs: np.ones(len(obs), dtype=np.int64),
        ),
        Probe(
            name="obs_action_reward",
            num_actions=2,
            episode_length=1,
            random_obs=True,
            reward=lambda obs, actions: _signed(actions == (obs[:, 0] > 0)),
            expected_value=_ones,
            optimal_action=lambda obs: (obs[:, 0] > 0).astype(np.int64),
        ),
    )
}


class ProbeVecEnv(VecEnv):
    """`num_envs` copies of one probe; observations float32 (num_envs, 1)."""

    def __init__(self, num_envs: int, seed: int, probe: Probe):
        """Args:
        num_envs: number of envs stepped together.
        seed: seeds the Generator drawing random observations.
        probe: which task (an entry of `PROBES`).
        """
        self.num_envs = num_envs
        self.probe = probe
        self.single_observation_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.single_action_space = gymnasium.spaces.Discrete(probe.num_actions)
        self._rng = np.random.default_rng(seed)
        self._stats = EpisodeStats(num_envs)
        self._t = np.zeros(num_envs, dtype=np.int64)  # step index within the current episode
        self._obs: np.ndarray | None = None

    def _observe(self) -> np.ndarray:
        if self.probe.random_obs:
            # drawn for every env each step; fine because random-obs probes last one step
            obs = self._rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.num_envs)
        else:
            obs = self._t.astype(np.float32)
        self._obs = obs[:, None]
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
        actions = check_actions(actions, self.num_envs, self.probe.num_actions)
        reward = self.probe.reward(self._obs, actions)
        terminated = self._t + 1 >= self.probe.episode_length
        info = self._stats.update(reward, terminated)
        self._t = np.where(terminated, 0, self._t + 1)
        return self._observe(), reward, terminated, np.zeros(self.num_envs, dtype=bool), info


def make_probe(*, num_envs: int, seed: int, name: str) -> ProbeVecEnv:
    """Build one of the probe envs.

    Args:
        num_envs: number of envs stepped together.
        seed: seeds the random observations (+1/-1), in [0, 2**31).
        name: one of `PROBES`: constant_value, obs_reward, two_step, action_reward,
            obs_action_reward (see the module docstring for each task and its solution).
    """
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if name not in PROBES:
        raise ValueError(f"name {name!r} is not a probe; choose one of {list(PROBES)}")
    return ProbeVecEnv(num_envs, seed, PROBES[name])
