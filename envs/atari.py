"""Atari 2600 games through ALE's own vectorised env (`env=atari`), with the usual wrappers.

`ale_py.vector_env.AtariVectorEnv` steps `num_envs` emulators on C++ threads and applies the
standard DQN/PPO preprocessing itself (Mnih et al. 2015; Machado et al. 2018), so a step costs
the emulator plus a copy, not a Python wrapper stack:

- frame skip `frameskip` (4) with a max over the last two frames, grayscale, resized to
  84 x 84, a stack of the last `frame_stack` (4) frames, up to 30 no-op actions at the start
  of an episode (`noop_max`), FIRE at reset for games that need it, sticky actions with
  probability `repeat_action_probability` (ALE v5's 0.25 by default);
- observations are uint8 channels-last (84, 84, 4), as every image family here expects
  (`agents/models.py`), transposed from ALE's channels-first stack;
- rewards: the raw game score change; `clip_rewards: true` hands the learner `sign(r)`
  (the PPO/DQN recipe) while `episode_return` (what is logged and evaluated) stays the game
  score;
- `terminated`: the game ended; `truncated`: `max_episode_frames` (108,000 = 30 minutes of
  play) ran out. `info["final_obs"]` carries each finished episode's last observation.

Seeding: `reset(seed)` seeds env i's emulator with ALE's own per-env seeds derived from the
seed; the same seed and actions give the same frames (tested). `id` is a ROM name in any
spelling: `Breakout`, `breakout`, `BattleZone`, `ALE/BattleZone-v5`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

# The games of Tuyls et al. 2024's Atari imitation study.
STUDY_GAMES = ("BattleZone", "Qbert", "NameThisGame", "Phoenix", "SpaceInvaders", "BankHeist",
               "Boxing", "Breakout")


def rom_name(game: str) -> str:
    """ALE's ROM name of a game id in any usual spelling ('ALE/BattleZone-v5' -> 'battle_zone')."""
    name = str(game)
    name = re.sub(r"^ALE/", "", name)
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name)
    if name != name.lower():  # CamelCase -> snake_case
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return name.lower()


def rom_names() -> list[str]:
    from ale_py import roms

    return list(roms.get_all_rom_ids())


@dataclass
class AtariEnvConfig(EnvConfig):
    """`env=atari` (see the module docstring).

    Attributes:
        family: "atari".
        id: the game, e.g. "Breakout", "BattleZone", "SpaceInvaders" (any ROM ale-py ships).
        num_envs: emulators stepped together.
        frameskip: emulator frames per agent step (the last two max-pooled).
        frame_stack: frames in an observation (its channels).
        noop_max: up to this many no-ops at the start of an episode (0: none).
        repeat_action_probability: sticky actions (ALE v5: 0.25; 0 turns them off).
        max_episode_frames: emulator frames before an episode is truncated.
        clip_rewards: the learner sees sign(reward); episode returns stay the game score.
        full_action_space: all 18 actions instead of the game's minimal set.
        threads: C++ threads stepping the emulators (None: min(num_envs, CPUs)).
        eval: overrides for the evaluation envs (default: rewards unclipped).
    """

    family: str = "atari"
    id: str = "Breakout"
    num_envs: int = 8
    frameskip: int = 4
    frame_stack: int = 4
    noop_max: int = 30
    repeat_action_probability: float = 0.25
    max_episode_frames: int = 108_000
    clip_rewards: bool = True
    full_action_space: bool = False
    threads: int | None = None
    eval: dict[str, Any] = field(default_factory=lambda: {"clip_rewards": False})

    def validate(self) -> None:
        """One-line ValueError naming the bad key (builds nothing)."""
        names = rom_names()
        if rom_name(self.id) not in names:
            close = difflib.get_close_matches(rom_name(self.id), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"env.id={self.id!r} is not an Atari game ale-py ships{hint}")
        for key in ("frameskip", "frame_stack", "max_episode_frames"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"env.{key}={value!r} must be an integer >= 1")
        if isinstance(self.noop_max, bool) or not isinstance(self.noop_max, (int, np.integer)) \
                or self.noop_max < 0:
            raise ValueError(f"env.noop_max={self.noop_max!r} must be an integer >= 0")
        if not 0.0 <= float(self.repeat_action_probability) <= 1.0:
            raise ValueError(f"env.repeat_action_probability={self.repeat_action_probability!r} "
                             f"must be in [0, 1]")
        if self.threads is not None and (not isinstance(self.threads, (int, np.integer))
                                         or self.threads < 1):
            raise ValueError(f"env.threads={self.threads!r} must be >= 1 or null")


class AtariVecEnv(VecEnv):
    """`num_envs` ALE emulators on C++ threads (see the module docstring)."""

    provides_final_obs = True
    native_async = True  # ALE steps on its own threads between send() and recv()

    def __init__(self, num_envs: int, seed: int, cfg: AtariEnvConfig) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.num_envs = num_envs
        self.game = rom_name(cfg.id)
        threads = cfg.threads or min(num_envs, os.cpu_count() or 1)
        self._env = AtariVectorEnv(
            self.game, num_envs, num_threads=int(threads), autoreset_mode="SameStep",
            frameskip=int(cfg.frameskip), stack_num=int(cfg.frame_stack), img_height=84,
            img_width=84, grayscale=True, maxpool=True, noop_max=int(cfg.noop_max),
            repeat_action_probability=float(cfg.repeat_action_probability),
            max_num_frames_per_episode=int(cfg.max_episode_frames),
            full_action_space=bool(cfg.full_action_space), reward_clipping=False,
            episodic_life=False)
        self.single_observation_space = gymnasium.spaces.Box(
            0, 255, (84, 84, int(cfg.frame_stack)), np.uint8)
        self.single_action_space = gymnasium.spaces.Discrete(
            int(self._env.single_action_space.n))
        self.clip_rewards = bool(cfg.clip_rewards)
        self._stats = EpisodeStats(num_envs)
        self._pending_seed: int | None = seed
        self._needs_reset = True

    @staticmethod
    def _hwc(obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs.transpose(0, 2, 3, 1))

    def reset(self, seed: int | None = None) -> np.ndarray:
        if self._env is None:
            raise RuntimeError("this env is closed")
        seed = check_seed(seed) if seed is not None else self._pending_seed
        self._pending_seed = None
        obs, _ = self._env.reset(seed=seed)
        self._stats.reset()
        self._needs_reset = False
        return self._hwc(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._env.send(self.checked_actions(actions).astype(np.int64))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, ale_info = self._env.recv()
        rewards = rewards.astype(np.float32)
        terminated, truncated = terminated.astype(bool), truncated.astype(bool)
        dones = terminated | truncated
        final = None
        if dones.any():  # ALE gives the final frames of the envs that ended, all rows
            final = np.zeros((self.num_envs, *self.single_observation_space.shape), np.uint8)
            final[dones] = self._hwc(np.asarray(ale_info["final_obs"])[dones])
        info = self._stats.update(rewards, dones, final_obs=final)
        if self.clip_rewards:
            rewards = np.sign(rewards)
        return self._hwc(obs), rewards, terminated, truncated, info

    def step(self, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self.step_wait()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
        self._needs_reset = True


def build(cfg: AtariEnvConfig, *, num_envs: int, seed: int) -> AtariVecEnv:
    """The registry's builder: errors name the `env.*` key."""
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    cfg.validate()
    return AtariVecEnv(num_envs, seed, cfg)


def make_atari(*, num_envs: int, seed: int, env_id: str = "Breakout", **kwargs: Any
               ) -> AtariVecEnv:
    """Build vectorised Atari games from keyword arguments (`AtariEnvConfig`'s fields)."""
    cfg = AtariEnvConfig(id=env_id, num_envs=num_envs, **kwargs)
    return build(cfg, num_envs=num_envs, seed=seed)


register_env("atari", AtariEnvConfig, build)
