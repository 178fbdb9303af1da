"""Procgen games (Cobbe et al. 2020) through the `procgen2` package's native vectorised env.

`procgen.ProcgenGym3Env` steps all envs in C++ (on its own thread pool) and already auto-resets,
with gym3 semantics: after `act`, `observe()` returns the reward of that action and `first`,
True where the returned observation starts a new episode, i.e. where an episode just ended.
This module only converts that to the `VecEnv` interface and adds episode statistics.

The last observation of an episode is never seen from Python (the C++ env resets first), so
`provides_final_obs` is False and `info["final_obs"]` never appears. Nothing is lost: procgen
reports every episode end, timeouts included, as `terminated`, so there is nothing to
bootstrap from.

The held-out evaluation envs (`env.eval`, by default `{num_envs: 64, num_levels: 0,
start_level: 100000}`) play the unbounded level distribution, held out from training whenever
training uses a bounded level set (`env.num_levels > 0`).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)  # fmt: skip

# Procgen aborts the whole process (C++ fassert) on an unsupported game/mode pair, so the
# pairs are checked here first. From procgen/src/game.cpp and procgen/env.py.
MODE_GAMES = {
    "easy": GAMES,
    "hard": GAMES,
    "extreme": ("chaser", "dodgeball", "leaper", "starpilot"),
    "memory": ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner"),
    "exploration": (
        "caveflyer",
        "climber",
        "coinrun",
        "heist",
        "jumper",
        "leaper",
        "maze",
        "ninja",
    ),
}

# Options of ProcgenGym3Env that may be passed through `**extra`.
EXTRA_OPTIONS = (
    "center_agent", "use_backgrounds", "use_monochrome_assets", "restrict_themes",
    "use_generated_assets", "paint_vel_info", "use_sequential_levels", "num_threads",
)  # fmt: skip

NUM_ACTIONS = 15  # procgen always exposes the full 15-button combo set


@dataclass
class ProcgenEnvConfig(EnvConfig):
    """`env=procgen`: one Procgen game (see `make_procgen`).

    Attributes:
        family: "procgen".
        id: the game, one of `GAMES`.
        num_envs: games stepped together for training.
        eval: overrides for the evaluation envs; by default 64 envs on held-out levels:
            `num_levels: 0` (the unbounded level distribution; `start_level` unused), held out
            whenever training uses a bounded set. A bounded held-out set is e.g.
            `{num_levels: 100, start_level: 100000}` (far from training levels 0..199).
        distribution_mode: "easy", "hard", "extreme", "memory" or "exploration" (see `MODE_GAMES`).
        num_levels: training levels start_level .. start_level + num_levels - 1 (0: unbounded).
        start_level: first training level seed.
    """

    family: str = "procgen"
    id: str = "coinrun"
    num_envs: int = 64
    eval: dict[str, Any] = field(
        default_factory=lambda: {"num_envs": 64, "num_levels": 0, "start_level": 100_000}
    )
    distribution_mode: str = "easy"
    num_levels: int = 200
    start_level: int = 0


def _import_procgen() -> Any:
    # procgen2 imports the legacy `gym` package, which prints a deprecation notice to stderr on
    # import; it is noise for us (we only use procgen's C env), so keep it out of the logs.
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import procgen
    except ImportError as err:
        raise ImportError(f"env.family=procgen needs procgen2: pip install 'rl-scaling[procgen]' "
                          f"({err})") from err
    return procgen


class ProcgenVecEnv(VecEnv):
    """`num_envs` Procgen games stepped natively in C++.

    Observations are uint8 (num_envs, 64, 64, 3); actions Discrete(15). Episodes that end by
    timeout (e.g. 1000 steps in CoinRun) are reported as `terminated`: procgen does not say
    which ends were timeouts, so `truncated` is always False (as in the standard Procgen PPO).
    `info["episode_success"]` (bool) is procgen's `prev_level_complete`: the game's win
    condition was reached in that episode (CoinRun: the coin was collected). There is no
    `info["final_obs"]`: gym3 auto-resets inside C++.
    """

    provides_final_obs = False

    def __init__(
        self,
        num_envs: int,
        seed: int,
        env_id: str,
        distribution_mode: str,
        num_levels: int,
        start_level: int,
        extra: dict[str, Any],
    ):
        self.num_envs = num_envs
        self.env_id = env_id
        self.single_observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.single_action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self._procgen = _import_procgen()
        self._kwargs = dict(num=num_envs, env_name=env_id, distribution_mode=distribution_mode)
        if distribution_mode != "exploration":  # exploration mode fixes its own single level
            self._kwargs.update(num_levels=num_levels, start_level=start_level)
        self._kwargs.update(extra)
        # reset(seed=None) after the first reset rebuilds the C env with a seed drawn from here,
        # so a run is reproducible from the builder's seed alone.
        self._seed_rng = np.random.default_rng(seed)
        self._stats = EpisodeStats(num_envs)
        self._env = None
        self._fresh = False  # True while the C env is built but not yet stepped
        self._build(seed)
        self._needs_reset = True

    def _build(self, rand_seed: int) -> None:
        self.close()
        # rand_seed seeds procgen's level sampler (which of the num_levels levels each episode
        # plays) and the in-game randomness, per env.
        self._env = self._procgen.ProcgenGym3Env(rand_seed=rand_seed, **self._kwargs)
        self._fresh = True

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._seed_rng = np.random.default_rng(check_seed(seed))  # as if built with it
            self._build(seed)
        elif not self._fresh:
            # procgen has no reset call, so a new episode everywhere means a new C env
            self._build(int(self._seed_rng.integers(0, 2**31)))
        self._stats.reset()
        self._needs_reset = False
        _, ob, _ = self._env.observe()
        return ob["rgb"]

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self.step_wait()

    native_async = True  # act() hands the step to procgen's C++ threads and returns

    def step_async(self, actions: np.ndarray) -> None:
        actions = self.checked_actions(actions)
        self._env.act(actions.astype(np.int32, copy=False))
        self._fresh = False

    def step_wait(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # observe() waits for the step, then copies rew/ob/first out of the C buffers, so
        # they are safe to keep
        reward, ob, done = self._env.observe()
        # _info holds the C info buffers as (num_envs,) arrays, refreshed by observe();
        # the public get_info() rebuilds them as a Python list of per-env dicts (slow).
        level_complete = self._env._info["prev_level_complete"].astype(bool)
        info = self._stats.update(reward, done, success=level_complete)
        return ob["rgb"], reward, done, np.zeros(self.num_envs, dtype=bool), info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._fresh, self._needs_reset = False, True  # a later reset() builds a new env


def make_procgen(
    *,
    num_envs: int,
    seed: int,
    env_id: str = "coinrun",
    distribution_mode: str = "easy",
    num_levels: int = 200,
    start_level: int = 0,
    **extra: Any,
) -> ProcgenVecEnv:
    """Build a vectorised Procgen env.

    Args:
        num_envs: number of games stepped together.
        seed: procgen `rand_seed` in [0, 2**31): seeds which levels are played and the game's
            randomness. Same seed and arguments give the same observation/reward streams for the
            same actions.
        env_id: one of the 16 procgen games, e.g. "coinrun", "starpilot", "fruitbot".
        distribution_mode: "easy", "hard", "extreme", "memory" or "exploration" (the last three
            exist only for some games; exploration mode plays one fixed level).
        num_levels: size of the level set (levels start_level..start_level+num_levels-1, each
            episode picks one at random). 0 means unbounded: each episode draws a level seed
            uniformly from [0, 2**31), the standard Procgen test distribution.
        start_level: first level seed of the set. Ignored by procgen when num_levels == 0.
        extra: other ProcgenGym3Env options: center_agent, use_backgrounds,
            use_monochrome_assets, restrict_themes, use_generated_assets, paint_vel_info,
            use_sequential_levels, num_threads (C++ worker threads, procgen default 4).
    """
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if env_id not in GAMES:
        raise ValueError(f"env_id {env_id!r} is not a procgen game; choose one of {list(GAMES)}")
    if distribution_mode not in MODE_GAMES:
        raise ValueError(
            f"distribution_mode {distribution_mode!r} is not valid; "
            f"choose one of {list(MODE_GAMES)}"
        )
    if env_id not in MODE_GAMES[distribution_mode]:
        raise ValueError(
            f"distribution_mode {distribution_mode!r} is not available for {env_id!r}; "
            f"it exists for {list(MODE_GAMES[distribution_mode])}"
        )
    for name, value in (("num_levels", num_levels), ("start_level", start_level)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0 <= value < 2**31:
            raise ValueError(f"{name} must be a non-negative integer below 2**31, got {value}")
    unknown = sorted(set(extra) - set(EXTRA_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown procgen option(s) {unknown}; valid extra options are {list(EXTRA_OPTIONS)}"
        )
    return ProcgenVecEnv(
        num_envs, seed, env_id, distribution_mode, int(num_levels), int(start_level), extra
    )


def build(cfg: ProcgenEnvConfig, *, num_envs: int, seed: int) -> ProcgenVecEnv:
    """The registry's builder: `cfg.id` is the game."""
    if cfg.id not in GAMES:  # named as the config key, not make_procgen's argument
        raise ValueError(f"id {cfg.id!r} is not a procgen game; choose one of {list(GAMES)}")
    return make_procgen(
        num_envs=num_envs,
        seed=seed,
        env_id=cfg.id,
        distribution_mode=cfg.distribution_mode,
        num_levels=cfg.num_levels,
        start_level=cfg.start_level,
    )


register_env("procgen", ProcgenEnvConfig, build)
