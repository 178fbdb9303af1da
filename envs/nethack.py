"""NetHack through the NetHack Learning Environment (Küttler et al. 2020; ``nle`` 1.3) behind
the `VecEnv` interface, with dict observations.

- Tasks: any NLE id; `NetHackScore-v0` (the default: reward = in-game score change, -0.01 for
  a step that does not advance the game clock, 23 actions, 5000-step episodes) or
  `NetHackChallenge-v0` (the NeurIPS 2021 challenge: the full 121-key keyboard, a random
  character, menus not skipped, episodes up to 10^6 steps).
- Observations: a dict of the NLE arrays named by `env.observation_keys` (default `glyphs`,
  `chars`, `colors` (21, 79), `blstats` (27,) int64, `message` (256,) uint8: what the
  NetHack encoder in `agents/nethack_net.py` reads), each (num_envs, ...) in NLE's dtypes.
  The arrays are copied out of NLE, which reuses its buffers.
- `terminated`: the game ended (death, ascension). `truncated`: the step limit
  (`max_episode_steps`, NLE's `StepStatus.ABORTED`) or Challenge's no-progress timeout.
- `info["episode_score"]`: the highest in-game score (bottom-line `score`) the episode showed
  (where `blstats` is observed); `episode_return` is the task's reward sum (Score: the score
  less the frozen-step penalties).
- Auto-reset: `info["final_obs"]` holds the last observation of each ended episode (a dict).

Seeding: env i draws the core and display seeds of each of its games from a generator seeded
with `(seed, i)` at the first reset (and with `(s, i)` on `reset(seed=s)`): every game
differs, and a run is reproducible (NLE alone would seed only the first game).
`NetHackChallenge-v0` forbids seeding (by design of the challenge): its games are random
whatever the seed. The envs are stepped in a Python loop in this process; IMPALA's actors
(`algo.num_actors`) are how NetHack runs in parallel.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

DEFAULT_KEYS = ("glyphs", "chars", "colors", "blstats", "message")
UNSEEDABLE = ("NetHackChallenge-v0",)  # NLE raises on any seed call for these


def _nle():
    # NLE logs "Not saving any NLE data." at INFO for every game it builds
    logging.getLogger("nle.env.base").setLevel(logging.WARNING)
    try:
        import nle  # noqa: F401  (registers the NetHack ids with gymnasium)
        from nle import nethack
    except ImportError as err:
        raise ImportError(
            f"env=nethack needs the NetHack Learning Environment: pip install "
            f"'rl-scaling[nethack]' (nle==1.3.0); {err}") from err
    return nethack


def nethack_ids() -> list[str]:
    _nle()
    return sorted(k for k in gymnasium.registry if k.startswith("NetHack"))


@dataclass
class NetHackEnvConfig(EnvConfig):
    """`env=nethack`: one NLE task (see the module docstring).

    Attributes:
        family: "nethack".
        id: an NLE id: "NetHackScore-v0" (default) or "NetHackChallenge-v0", or another
            NetHack task ("NetHackStaircase-v0", "NetHackGold-v0", ...).
        num_envs: envs stepped together (IMPALA: the synchronous mode's batch; actors build
            `algo.envs_per_actor` each).
        eval: overrides for the evaluation envs (default 8 envs of the same task, seeded
            apart).
        observation_keys: the NLE arrays in the observation dict.
        max_episode_steps: steps before an episode is cut (truncated); None: the task's
            (5000 for Score, 10^6 for Challenge).
        character: NLE's character string, e.g. "mon-hum-neu-mal", "@" (random); None: the
            task's (Score: a neutral human monk; Challenge: random).
    """

    family: str = "nethack"
    id: str = "NetHackScore-v0"
    num_envs: int = 32
    observation_keys: list[str] = field(default_factory=lambda: list(DEFAULT_KEYS))
    max_episode_steps: int | None = None
    character: str | None = None
    eval: dict[str, Any] = field(default_factory=lambda: {"num_envs": 8})

    def validate(self) -> None:
        """Raise a one-line ValueError naming the bad key (imports nle, builds nothing)."""
        nethack = _nle()
        ids = nethack_ids()
        if self.id not in ids:
            close = difflib.get_close_matches(str(self.id), ids, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {ids}"
            raise ValueError(f"env.id={self.id!r} is not an NLE task{hint}")
        keys = list(self.observation_keys)
        known = [k for k in nethack.OBSERVATION_DESC if k not in ("program_state", "internal")]
        bad = [k for k in keys if k not in known]
        if not keys or bad or len(set(keys)) != len(keys):
            raise ValueError(f"env.observation_keys={keys!r}: give distinct NLE keys from "
                             f"{known}" + (f" ({bad} unknown)" if bad else ""))
        steps = self.max_episode_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0
        ):
            raise ValueError(f"env.max_episode_steps={steps!r} must be > 0 or null")
        if self.character is not None and not str(self.character):
            raise ValueError("env.character must be an NLE character string or null")


class NetHackVecEnv(VecEnv):
    """`num_envs` NLE games stepped in a Python loop (see the module docstring)."""

    provides_final_obs = True

    def __init__(self, num_envs: int, seed: int, cfg: NetHackEnvConfig) -> None:
        nethack = _nle()
        from gymnasium.envs.registration import load_env_creator

        self.num_envs = num_envs
        self.env_id = cfg.id
        self.keys = tuple(cfg.observation_keys)
        kwargs: dict[str, Any] = {"observation_keys": self.keys}
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = int(cfg.max_episode_steps)
        if cfg.character is not None:
            kwargs["character"] = str(cfg.character)
        spec = gymnasium.spec(cfg.id)
        creator = load_env_creator(spec.entry_point)
        self._envs: list[Any] = []
        try:
            for _ in range(num_envs):
                self._envs.append(creator(**{**spec.kwargs, **kwargs}))
        except BaseException:
            self.close()
            raise
        first = self._envs[0]
        self.single_observation_space = gymnasium.spaces.Dict(
            {k: first.observation_space[k] for k in self.keys})
        self.single_action_space = gymnasium.spaces.Discrete(int(first.action_space.n))
        self.seedable = cfg.id not in UNSEEDABLE
        self._aborted = int(first.StepStatus.ABORTED)
        self._score_index = nethack.NLE_BL_SCORE
        self._stats = EpisodeStats(num_envs)
        self._score = np.zeros(num_envs, dtype=np.float64)
        self._pending_seed: int | None = seed
        self._game_seeds: list[np.random.Generator] = []
        self._needs_reset = True

    def _new_game(self, i: int) -> dict[str, np.ndarray]:
        env = self._envs[i]
        if self.seedable:
            core, disp = self._game_seeds[i].integers(0, 2**63 - 1, size=2)
            env.seed(core=int(core), disp=int(disp), reseed=False)
        obs, _ = env.reset()
        return obs

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        space = self.single_observation_space
        return {k: np.empty((n, *space[k].shape), dtype=space[k].dtype) for k in self.keys}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if not self._envs:
            raise RuntimeError("this env is closed")
        seed = check_seed(seed) if seed is not None else self._pending_seed
        self._pending_seed = None
        obs = self._empty(self.num_envs)
        if seed is not None:
            self._game_seeds = [np.random.default_rng((seed, i)) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            o = self._new_game(i)
            for k in self.keys:
                obs[k][i] = o[k]
        self._stats.reset()
        self._score[:] = 0.0
        self._needs_reset = False
        return obs

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = self.checked_actions(actions)
        n = self.num_envs
        obs = self._empty(n)
        rewards = np.empty(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final_obs: dict[str, np.ndarray] | None = None
        score = self._score
        for i, env in enumerate(self._envs):
            o, r, done, trunc, info = env.step(int(actions[i]))
            rewards[i] = r
            if "blstats" in o:  # the bottom line still shows the score the game ended on
                score[i] = max(score[i], float(o["blstats"][self._score_index]))
            if done or trunc:
                if final_obs is None:
                    final_obs = self._empty(n)
                for k in self.keys:
                    final_obs[k][i] = o[k]
                # NLE quits an aborted game itself (done=True): that is a time limit
                aborted = trunc or int(info.get("end_status", 0)) == self._aborted
                truncated[i] = aborted
                terminated[i] = not aborted
                o = self._new_game(i)
            for k in self.keys:
                obs[k][i] = o[k]
        dones = terminated | truncated
        extra = {"score": score.copy()} if "blstats" in self.keys else {}
        info = self._stats.update(rewards, dones, final_obs=final_obs, **extra)
        score[dones] = 0.0
        return obs, rewards.astype(np.float32), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []
        self._needs_reset = True


def build(cfg: NetHackEnvConfig, *, num_envs: int, seed: int) -> NetHackVecEnv:
    """The registry's builder: errors name the `env.*` key."""
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    cfg.validate()
    return NetHackVecEnv(num_envs, seed, cfg)


def make_nethack(*, num_envs: int, seed: int, env_id: str = "NetHackScore-v0",
                 observation_keys: tuple[str, ...] | list[str] = DEFAULT_KEYS,
                 max_episode_steps: int | None = None,
                 character: str | None = None) -> NetHackVecEnv:
    """Build vectorised NetHack games from keyword arguments (errors name the `env.*` keys)."""
    cfg = NetHackEnvConfig(id=env_id, num_envs=num_envs,
                           observation_keys=list(observation_keys),
                           max_episode_steps=max_episode_steps, character=character)
    return build(cfg, num_envs=num_envs, seed=seed)


register_env("nethack", NetHackEnvConfig, build)
