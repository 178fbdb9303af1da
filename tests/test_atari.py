"""env=atari (envs/atari.py): ALE's vectorised env behind the VecEnv interface."""

from __future__ import annotations

import numpy as np
import pytest

from envs.atari import AtariEnvConfig, make_atari, rom_name
from tests.procs import random_steps


def test_spellings_of_a_game_name_the_same_rom():
    for spelling in ("SpaceInvaders", "space_invaders", "ALE/SpaceInvaders-v5",
                     "SpaceInvadersNoFrameskip-v4"):
        assert rom_name(spelling) == "space_invaders"
    assert rom_name("BattleZone") == "battle_zone" and rom_name("Qbert") == "qbert"


def test_observations_are_channels_last_frame_stacks_and_seeded():
    def frames(seed: int) -> np.ndarray:
        with make_atari(num_envs=2, seed=seed, env_id="Breakout") as env:
            first = env.reset()
            assert first.shape == (2, 84, 84, 4) and first.dtype == np.uint8
            assert env.single_action_space.n == 4  # Breakout's minimal action set
            return np.stack([first] + [s[0] for s in random_steps(env, 60)])

    a, b, c = frames(1), frames(1), frames(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # a stack: each observation's last three frames are the previous one's first three
    assert np.array_equal(a[10, ..., :3], a[9, ..., 1:])


def test_clipped_rewards_for_the_learner_game_score_in_the_episode_return():
    kwargs = dict(num_envs=2, seed=0, env_id="SpaceInvaders", max_episode_frames=1200)
    with make_atari(clip_rewards=True, **kwargs) as env:
        env.reset()
        steps = random_steps(env, 300)
    rewards = np.stack([s[1] for s in steps])
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0} and rewards.sum() > 0
    ends = [s for s in steps if len(s[4]["episode_return"])]
    assert ends, "every episode is cut at 300 agent steps"
    first_end = ends[0]
    # SpaceInvaders pays 5-30 points per invader: the score is far above the clipped sum
    assert first_end[4]["episode_return"].max() > rewards[:300].sum(axis=0).max()
    with make_atari(clip_rewards=False, **kwargs) as env:
        env.reset()
        raw = np.stack([s[1] for s in random_steps(env, 300)])
    assert raw.max() >= 5 and np.array_equal(raw > 0, rewards > 0)  # same play, same seed


def test_frame_limit_truncates_with_the_final_observation():
    with make_atari(num_envs=3, seed=0, env_id="Pong", max_episode_frames=400) as env:
        env.reset()
        steps = random_steps(env, 100)  # 400 frames at frame skip 4
    obs, _, terminated, truncated, info = steps[-1]
    assert truncated.all() and not terminated.any()
    assert info["final_obs"].shape == (3, 84, 84, 4) and list(info["episode_length"]) == [100] * 3
    assert not np.array_equal(info["final_obs"], obs)  # obs is the next episode's first
    assert not any(s[3].any() for s in steps[:-1])


@pytest.mark.parametrize("field,value,match", [
    ("id", "Breakuot", "did you mean breakout"),
    ("frameskip", 0, "env.frameskip"),
    ("repeat_action_probability", 1.5, "env.repeat_action_probability"),
    ("noop_max", -1, "env.noop_max"),
])
def test_bad_config_is_one_line_naming_the_key(field, value, match):
    cfg = AtariEnvConfig(**{field: value})
    with pytest.raises(ValueError, match=match) as err:
        cfg.validate()
    assert "\n" not in str(err.value)
