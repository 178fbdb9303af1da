"""Environment families behind one vectorised, gymnasium-style interface (`envs.base.VecEnv`).

    env = make_env("procgen", num_envs=64, seed=0, env_id="coinrun")
    obs = env.reset()
    obs, reward, terminated, truncated, info = env.step(actions)

Importing this package registers every built-in family with `rl_scaling.registry`
(`register_env(family, <Family>EnvConfig, build)` at the end of each module), which is how the
spine builds the train and eval envs from `env.*`. `make_env` calls the same builders with plain
keyword arguments, for tests and notebooks; nothing here needs Hydra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envs.atari import AtariEnvConfig, make_atari
from envs.base import EnvConfig, EpisodeStats, VecEnv
from envs.dmc import DMCEnvConfig, make_dmc
from envs.gym import REFERENCE_RETURNS, GymEnvConfig, make_gym
from envs.mnist import MnistEnvConfig, make_mnist
from envs.nethack import NetHackEnvConfig, make_nethack
from envs.pointmass import PointMassEnvConfig, make_pointmass
from envs.probe import PROBES, ProbeEnvConfig, make_probe
from envs.procgen import ProcgenEnvConfig, make_procgen

ENV_BUILDERS: dict[str, Callable[..., VecEnv]] = {
    "procgen": make_procgen,
    "mnist": make_mnist,
    "probe": make_probe,
    "gym": make_gym,
    "dmc": make_dmc,
    "pointmass": make_pointmass,
    "nethack": make_nethack,
    "atari": make_atari,
}


def make_env(family: str, *, num_envs: int, seed: int, **kwargs: Any) -> VecEnv:
    """Build a vectorised env of one family from plain keyword arguments.

    Args:
        family: "procgen", "mnist", "probe", "gym", "dmc", "pointmass", "nethack" or "atari".
        num_envs: number of envs stepped together (> 0).
        seed: seeds everything random in the env, in [0, 2**31).
        kwargs: the family's own arguments (see `make_procgen`, `make_mnist`, `make_probe`,
            `make_gym`, `make_dmc`, `make_pointmass`, `make_nethack`, `make_atari`).

    Raises:
        ValueError: unknown family or a bad argument (the message names it).
    """
    if family not in ENV_BUILDERS:
        raise ValueError(f"unknown env family {family!r}; known families: {sorted(ENV_BUILDERS)}")
    return ENV_BUILDERS[family](num_envs=num_envs, seed=seed, **kwargs)


__all__ = [
    "ENV_BUILDERS",
    "PROBES",
    "REFERENCE_RETURNS",
    "DMCEnvConfig",
    "EnvConfig",
    "EpisodeStats",
    "GymEnvConfig",
    "MnistEnvConfig",
    "NetHackEnvConfig",
    "PointMassEnvConfig",
    "ProbeEnvConfig",
    "ProcgenEnvConfig",
    "VecEnv",
    "make_dmc",
    "make_env",
    "make_gym",
    "make_mnist",
    "make_nethack",
    "make_atari",
    "AtariEnvConfig",
    "make_pointmass",
    "make_probe",
    "make_procgen",
]
