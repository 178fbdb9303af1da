"""Fast tests of envs/: interface, bookkeeping, seeding, the MNIST loaders, probes, procgen,
and the families' registration (config dataclasses, yaml files, train/eval builds)."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import struct
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from omegaconf import OmegaConf

from envs import PROBES, make_env
from envs.base import MISSING, EnvConfig, EpisodeStats, check_actions
from envs.mnist import _bilinear_matrix, load_sklearn_digits, make_mnist, read_idx
from envs.probe import make_probe
from rl_scaling import registry

DISCRETE = gymnasium.spaces.Discrete
BOX = gymnasium.spaces.Box

# ---------------------------------------------------------------- helpers


def rollout(env, actions: np.ndarray, seed: int | None = None):
    """Reset, then step through `actions` (T, num_envs); return stacked obs, rewards, dones."""
    obs = [env.reset(seed=seed)]
    rewards, dones, infos = [], [], []
    for a in actions:
        o, r, term, trunc, info = env.step(a)
        obs.append(o)
        rewards.append(r)
        dones.append(term | trunc)
        infos.append(info)
    return np.stack(obs), np.stack(rewards), np.stack(dones), infos


def check_step_types(env, obs, reward, terminated, truncated, info) -> None:
    n = env.num_envs
    space = env.single_observation_space
    assert obs.shape == (n, *space.shape) and obs.dtype == space.dtype
    assert reward.shape == (n,) and reward.dtype == np.float32
    assert terminated.shape == (n,) and terminated.dtype == bool
    assert truncated.shape == (n,) and truncated.dtype == bool
    k = len(info["episode_return"])
    assert info["episode_return"].dtype == np.float64 and info["episode_return"].ndim == 1
    assert info["episode_length"].dtype == np.int64 and info["episode_length"].shape == (k,)
    for key, value in info.items():
        if key.startswith("episode_"):
            assert value.shape == (k,), key


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write `array` (uint8) as an IDX file, like the MNIST distribution files."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_tiny_mnist(directory: Path, compress: bool = False) -> None:
    """10 train / 5 test 28x28 images whose pixels all equal their label, so obs reveals it."""
    for prefix, n in (("train", 10), ("t10k", 5)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.broadcast_to(labels[:, None, None], (n, 28, 28)).copy()
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)


# ---------------------------------------------------------------- registry and shared parts


def test_unknown_family_names_it_and_lists_known():
    with pytest.raises(ValueError, match="'atary'.*atari.*mnist.*probe.*procgen"):
        make_env("atary", num_envs=1, seed=0)


@pytest.mark.parametrize("num_envs", [0, -3, 2.0, True])
@pytest.mark.parametrize("family,kwargs", [("mnist", {}), ("probe", {"name": "obs_reward"})])
def test_bad_num_envs(family, kwargs, num_envs):
    with pytest.raises(ValueError, match="num_envs"):
        make_env(family, num_envs=num_envs, seed=0, **kwargs)


@pytest.mark.parametrize("seed", [-1, 2**31, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        make_probe(num_envs=1, seed=seed, name="obs_reward")


def test_episode_stats_bookkeeping():
    stats = EpisodeStats(3)
    info = stats.update(np.array([1.0, 2.0, 3.0]), np.array([False, True, False]))
    np.testing.assert_array_equal(info["episode_return"], [2.0])
    np.testing.assert_array_equal(info["episode_length"], [1])
    info = stats.update(
        np.array([1.0, 5.0, 1.0]), np.array([True, False, True]), success=np.array([1, 0, 0])
    )
    np.testing.assert_array_equal(info["episode_return"], [2.0, 4.0])
    np.testing.assert_array_equal(info["episode_length"], [2, 2])
    np.testing.assert_array_equal(info["episode_success"], [1, 0])
    assert info["episode_return"].dtype == np.float64 and info["episode_length"].dtype == np.int64
    info = stats.update(np.zeros(3), np.zeros(3, dtype=bool))
    assert info["episode_return"].shape == (0,) and info["episode_length"].shape == (0,)
    stats.reset()
    info = stats.update(np.ones(3), np.ones(3, dtype=bool))
    np.testing.assert_array_equal(info["episode_length"], [1, 1, 1])


def test_check_actions_rejects_bad_input():
    check_actions(np.array([0, 1]), 2, DISCRETE(2))
    with pytest.raises(ValueError, match="shape"):
        check_actions(np.array([0, 1, 1]), 2, DISCRETE(2))
    with pytest.raises(ValueError, match="integer"):
        check_actions(np.array([0.0, 1.0]), 2, DISCRETE(2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        check_actions(np.array([0, 2]), 2, DISCRETE(2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        check_actions(np.array([-1, 0]), 2, DISCRETE(2))


def test_check_actions_box():
    space = BOX(-1.0, 1.0, (2,), np.float32)
    ok = np.array([[0.0, 0.5], [3.0, -7.0]])  # out of bounds is fine: the env clips
    assert check_actions(ok, 2, space) is not None
    check_actions(ok.astype(np.float32), 2, space)
    bad = {
        "integer": (np.zeros((2, 2), dtype=np.int64), r"float array of shape \(2, 2\)"),
        "flat": (np.zeros(2), r"float array of shape \(2, 2\).*shape \(2,\)"),
        "few envs": (np.zeros((1, 2)), r"shape \(2, 2\)"),
        "nan": (np.array([[0.0, np.nan], [0.0, 0.0]]), "finite.*1 NaN"),
        "inf": (np.array([[np.inf, -np.inf], [0.0, 0.0]]), "finite.*2 NaN"),
    }
    for actions, match in bad.values():
        with pytest.raises(ValueError, match=match) as err:
            check_actions(actions, 2, space)
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="Discrete or Box"):
        check_actions(np.zeros(2), 2, gymnasium.spaces.MultiBinary(2))


def test_episode_stats_final_obs_in_env_order():
    stats = EpisodeStats(4)
    final = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    info = stats.update(np.ones(4), np.array([True, False, True, True]), final_obs=final)
    np.testing.assert_array_equal(info["final_obs"], final[[0, 2, 3]])
    assert len(info["final_obs"]) == len(info["episode_return"])
    final[:] = -1  # the reported rows are copies
    assert info["final_obs"].min() >= 0
    assert "final_obs" not in stats.update(np.ones(4), np.zeros(4, bool), final_obs=final)
    assert "final_obs" not in stats.update(np.ones(4), np.ones(4, bool))


@pytest.mark.parametrize(
    "family,kwargs", [("mnist", {}), ("probe", {"name": "two_step"}), ("procgen", {})]
)
def test_step_before_reset_raises(family, kwargs):
    if family == "procgen":
        pytest.importorskip("procgen")
    env = make_env(family, num_envs=2, seed=0, **kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.int64))


# ---------------------------------------------------------------- probes


def random_actions(space, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, DISCRETE):
        return rng.integers(0, space.n, size=n)
    return rng.uniform(-1.5, 1.5, size=(n, *space.shape))  # beyond the bounds on purpose


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_spaces_and_rewards(name):
    probe = PROBES[name]
    env = make_env("probe", num_envs=8, seed=1, name=name)
    assert env.single_observation_space == BOX(-1, 1, (1,), np.float32)
    assert env.single_action_space == probe.action_space
    if isinstance(probe.action_space, DISCRETE):
        assert env.single_action_space == DISCRETE(probe.num_actions)
    rng = np.random.default_rng(0)
    obs = env.reset()
    t = np.zeros(8, dtype=int)
    for _ in range(20):
        actions = random_actions(env.single_action_space, 8, rng)
        next_obs, reward, terminated, truncated, info = env.step(actions)
        check_step_types(env, next_obs, reward, terminated, truncated, info)
        x = obs[:, 0]
        a = np.clip(actions, -1, 1)[:, 0] if actions.ndim == 2 else actions
        expected = {
            "constant_value": np.ones(8),
            "obs_reward": x,
            "two_step": (t == 1).astype(float),
            "action_reward": np.where(actions == 1, 1.0, -1.0),
            "obs_action_reward": np.where(actions == (x > 0), 1.0, -1.0),
            "continuous_action": 1 - (a - 0.5) ** 2,
            "continuous_obs_action": 1 - (a - 0.5 * x) ** 2,
            "time_limit": np.ones(8),
        }[name]
        np.testing.assert_allclose(reward, expected, rtol=1e-6)
        assert ((obs >= -1) & (obs <= 1)).all()
        if probe.random_obs:
            assert set(np.unique(x)) <= {-1.0, 1.0}
        else:  # obs is the step index / obs_horizon
            np.testing.assert_array_equal(x, np.float32(t) / np.float32(probe.obs_horizon))
        ended = t + 1 == probe.episode_length
        np.testing.assert_array_equal(truncated if probe.truncates else terminated, ended)
        assert not (terminated if probe.truncates else truncated).any()
        np.testing.assert_array_equal(
            info["episode_length"], np.full(ended.sum(), probe.episode_length)
        )
        assert ("final_obs" in info) == ended.any()
        t = np.where(ended, 0, t + 1)
        obs = next_obs


@pytest.mark.parametrize("name", [n for n in PROBES if not PROBES[n].truncates])
def test_probe_optimal_policy_earns_expected_value(name):
    probe = PROBES[name]
    gamma = 1.0  # undiscounted, so the episode return equals V(first obs)
    env = make_probe(num_envs=16, seed=3, name=name)
    obs = env.reset()
    first_values, returns = [], []
    for _ in range(6):
        if name != "two_step" or obs[0, 0] == 0.0:
            first_values.append(probe.expected_value(obs, gamma))
        obs, _, _, _, info = env.step(probe.optimal_action(obs))
        returns.extend(info["episode_return"])
    np.testing.assert_allclose(np.concatenate(first_values), returns)


@pytest.mark.parametrize("name", ["continuous_action", "continuous_obs_action"])
def test_continuous_probe_optimum(name):
    probe = PROBES[name]
    assert probe.action_space == BOX(-1, 1, (1,), np.float32)
    with pytest.raises(AttributeError, match="Box"):
        _ = probe.num_actions
    grid = np.linspace(-1, 1, 201)  # includes -0.5 and 0.5
    for sign in (1.0, -1.0):
        obs = np.full((len(grid), 1), sign, dtype=np.float32)
        if name == "continuous_action":
            obs[:] = 0.0
        reward = probe.reward(obs, grid[:, None])
        best = grid[np.argmax(reward)]
        optimum = probe.optimal_action(obs[:1])
        assert optimum.shape == (1, 1) and optimum.dtype == np.float32
        assert best == pytest.approx(optimum[0, 0]) and reward.max() == pytest.approx(1.0)
        assert best == pytest.approx(0.5 if name == "continuous_action" else 0.5 * sign)
        np.testing.assert_allclose(probe.expected_value(obs[:1], 0.9), [reward.max()])
    # the env clips actions to [-1, 1] before the reward
    env = make_probe(num_envs=2, seed=0, name="continuous_action")
    env.reset()
    _, reward, *_ = env.step(np.array([[5.0], [1.0]]))
    assert reward[0] == reward[1] == pytest.approx(1 - 0.5**2)


def test_time_limit_truncates_with_final_obs():
    probe = PROBES["time_limit"]
    env = make_probe(num_envs=3, seed=0, name="time_limit")
    assert env.provides_final_obs and probe.truncates
    obs = env.reset()
    np.testing.assert_array_equal(obs, 0.0)
    seen = [obs]
    for step in range(1, 7):
        obs, reward, terminated, truncated, info = env.step(np.zeros(3, dtype=np.int64))
        np.testing.assert_array_equal(reward, 1.0)
        assert not terminated.any()
        if step % 3:
            assert not truncated.any() and "final_obs" not in info
            assert len(info["episode_return"]) == 0
            seen.append(obs)
        else:
            assert truncated.all()
            np.testing.assert_array_equal(info["final_obs"], np.ones((3, 1), np.float32))
            np.testing.assert_array_equal(obs, 0.0)  # already the next episode's first obs
            np.testing.assert_array_equal(info["episode_return"], [3.0, 3.0, 3.0])
            np.testing.assert_array_equal(info["episode_length"], [3, 3, 3])
    np.testing.assert_allclose(np.stack(seen[:3])[:, 0], probe.observations())
    np.testing.assert_allclose(probe.observations()[:, 0], [0, 1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(probe.expected_value(probe.observations(), 0.9), 10.0)


def test_terminated_and_truncated_kept_apart():
    """Terminating probes never truncate and vice versa; the two arrays are distinct."""
    for name, ends_by in (("two_step", "terminated"), ("time_limit", "truncated")):
        env = make_probe(num_envs=4, seed=0, name=name)
        env.reset()
        counts = {"terminated": 0, "truncated": 0}
        for _ in range(6):
            _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.int64))
            assert terminated is not truncated and not (terminated & truncated).any()
            counts["terminated"] += terminated.sum()
            counts["truncated"] += truncated.sum()
            ended = np.flatnonzero(terminated | truncated)
            assert len(info["episode_return"]) == len(ended)
            if len(ended):
                assert info["final_obs"].shape == (len(ended), 1)
        assert counts[ends_by] > 0 and sum(counts.values()) == counts[ends_by]


def test_final_obs_of_several_envs_in_env_order():
    """Several envs end at one step: one final_obs row each, in env order."""
    env = make_probe(num_envs=5, seed=0, name="obs_reward")
    env.reset()
    _, _, terminated, _, info = env.step(np.zeros(5, dtype=np.int64))
    assert terminated.all()
    assert info["final_obs"].shape == (5, 1) and info["final_obs"].dtype == np.float32
    np.testing.assert_array_equal(info["final_obs"], 0.0)  # a terminal state
    assert len(info["final_obs"]) == len(info["episode_return"])


def test_probe_expected_values():
    obs = np.array([[1.0], [-1.0]], dtype=np.float32)
    np.testing.assert_array_equal(PROBES["obs_reward"].expected_value(obs, 0.9), [1.0, -1.0])
    np.testing.assert_allclose(
        PROBES["two_step"].expected_value(np.array([[0.0], [1.0]]), 0.9), [0.9, 1.0]
    )
    np.testing.assert_array_equal(PROBES["obs_action_reward"].optimal_action(obs), [1, 0])


def test_probe_seeding():
    actions = np.zeros((10, 8), dtype=np.int64)
    a = rollout(make_probe(num_envs=8, seed=5, name="obs_reward"), actions)
    b = rollout(make_probe(num_envs=8, seed=5, name="obs_reward"), actions)
    c = rollout(make_probe(num_envs=8, seed=6, name="obs_reward"), actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # reset(seed) restarts the stream
    env = make_probe(num_envs=8, seed=6, name="obs_reward")
    np.testing.assert_array_equal(rollout(env, actions, seed=5)[0], a[0])


def test_unknown_probe_name():
    with pytest.raises(ValueError, match="name 'nope'.*constant_value.*time_limit"):
        make_env("probe", num_envs=1, seed=0, name="nope")


def test_probe_observations_lists_what_episodes_show():
    for probe in PROBES.values():
        shown = probe.observations()
        assert shown.dtype == np.float32 and shown.shape[1] == 1
        assert ((shown >= -1) & (shown <= 1)).all()
    np.testing.assert_array_equal(PROBES["two_step"].observations(), [[0.0], [1.0]])
    np.testing.assert_array_equal(PROBES["obs_reward"].observations(), [[1.0], [-1.0]])


def test_probe_obs_not_aliased():
    env = make_probe(num_envs=2, seed=0, name="two_step")
    first = env.reset()
    env.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(first, 0.0)


# ---------------------------------------------------------------- mnist


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    name = "x-idx3-ubyte.gz" if compress else "x-idx3-ubyte"
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_read_idx_big_endian_int(tmp_path):
    array = np.array([1, 256, -2], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + array.tobytes())
    out = read_idx(path)
    np.testing.assert_array_equal(out, [1, 256, -2])
    assert out.dtype == np.int32 and out.dtype.isnative


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_files(tmp_path, compress):
    write_tiny_mnist(tmp_path, compress)
    env = make_env("mnist", num_envs=32, seed=0, data_path=str(tmp_path))
    assert env.single_observation_space == gymnasium.spaces.Box(0, 255, (28, 28, 1), np.uint8)
    assert env.single_action_space == gymnasium.spaces.Discrete(10)
    obs = env.reset()
    for _ in range(5):
        labels = obs[:, 0, 0, 0].astype(np.int64)  # tiny images encode their label
        wrong = (labels + 1) % 10
        actions = np.where(np.arange(32) % 2 == 0, labels, wrong)
        obs, reward, terminated, truncated, info = env.step(actions)
        check_step_types(env, obs, reward, terminated, truncated, info)
        np.testing.assert_array_equal(reward, np.arange(32) % 2 == 0)
        assert not terminated.any() and not truncated.any()
        # every step is a one-step "episode" for the statistics
        np.testing.assert_array_equal(info["episode_return"], reward)
        np.testing.assert_array_equal(info["episode_length"], np.ones(32))
        assert "final_obs" not in info  # no episode ends for the learner
    test_env = make_mnist(num_envs=64, seed=0, data_path=tmp_path, split="test")
    assert set(np.unique(test_env.reset()[:, 0, 0, 0])) <= set(range(5))


def test_mnist_missing_directory_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_mnist(num_envs=1, seed=0, data_path=missing)
    write_tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        make_mnist(num_envs=1, seed=0, data_path=tmp_path, split="test")


@pytest.mark.parametrize(
    "corrupt",
    [
        b"\x08\x03\x00\x00garbage",  # bad magic
        bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + b"\x00" * 100,  # truncated data
        b"\x1f\x8b\x08\x00not really gzip",  # gzip magic, broken stream
    ],
)
def test_mnist_corrupt_file(tmp_path, corrupt):
    write_tiny_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(corrupt)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        make_mnist(num_envs=1, seed=0, data_path=tmp_path)


def test_mnist_label_count_mismatch(tmp_path):
    write_tiny_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="10 images.*3 labels"):
        make_mnist(num_envs=1, seed=0, data_path=tmp_path)


def test_mnist_bad_split():
    with pytest.raises(ValueError, match="split"):
        make_mnist(num_envs=1, seed=0, split="valid")


def test_digits_fallback_warns_and_looks_like_mnist(caplog):
    with caplog.at_level(logging.WARNING, logger="envs.mnist"):
        env = make_env("mnist", num_envs=16, seed=0)
    assert any("env.data_path" in r.getMessage() for r in caplog.records)
    obs = env.reset()
    assert obs.shape == (16, 28, 28, 1) and obs.dtype == np.uint8
    images, labels = env.images, env.labels
    assert images.max() == 255 and images.min() == 0
    test_images, test_labels = load_sklearn_digits("test")
    assert len(labels) + len(test_labels) == 1797 and len(labels) == 1437
    assert set(np.unique(labels)) == set(range(10))


def test_bilinear_upsampling_preserves_constants():
    weights = _bilinear_matrix(8, 28)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    image = np.full((8, 8), 7.0)
    np.testing.assert_allclose(weights @ image @ weights.T, 7.0)


def test_mnist_seeding():
    actions = np.zeros((5, 8), dtype=np.int64)
    a = rollout(make_mnist(num_envs=8, seed=1), actions)
    b = rollout(make_mnist(num_envs=8, seed=1), actions)
    c = rollout(make_mnist(num_envs=8, seed=2), actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(rollout(make_mnist(num_envs=8, seed=2), actions, seed=1)[0], a[0])


# ---------------------------------------------------------------- procgen


@pytest.fixture(scope="module")
def procgen():
    return pytest.importorskip("procgen")


def test_procgen_spaces_and_step(procgen):
    env = make_env("procgen", num_envs=4, seed=0, env_id="starpilot", num_levels=10)
    assert env.single_observation_space == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.single_action_space == gymnasium.spaces.Discrete(15)
    obs = env.reset()
    assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
    out = env.step(np.arange(4))
    check_step_types(env, *out)
    assert not env.provides_final_obs and "final_obs" not in out[-1]
    env.close()
    env.close()  # idempotent


def test_procgen_seeding(procgen):
    actions = np.random.default_rng(0).integers(0, 15, size=(30, 4))
    kwargs = dict(env_id="coinrun", num_levels=0)
    a = rollout(make_env("procgen", num_envs=4, seed=7, **kwargs), actions)
    b = rollout(make_env("procgen", num_envs=4, seed=7, **kwargs), actions)
    c = rollout(make_env("procgen", num_envs=4, seed=8, **kwargs), actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # reset(seed) rebuilds the levels from that seed; reset() without one moves on
    env = make_env("procgen", num_envs=4, seed=8, **kwargs)
    np.testing.assert_array_equal(env.reset(seed=7), a[0][0])
    env.step(actions[0])
    second_episode = env.reset()
    assert not np.array_equal(second_episode, a[0][0])
    # ... and from then on it is as if the env had been built with seed 7
    fresh = make_env("procgen", num_envs=4, seed=7, **kwargs)
    fresh.reset()
    fresh.step(actions[0])
    np.testing.assert_array_equal(fresh.reset(), second_episode)


def test_procgen_bad_arguments(procgen):
    with pytest.raises(ValueError, match="env_id 'pong'"):
        make_env("procgen", num_envs=1, seed=0, env_id="pong")
    with pytest.raises(ValueError, match="distribution_mode 'medium'"):
        make_env("procgen", num_envs=1, seed=0, distribution_mode="medium")
    # procgen itself would abort the process on this pair
    with pytest.raises(ValueError, match="distribution_mode 'memory'.*coinrun"):
        make_env("procgen", num_envs=1, seed=0, env_id="coinrun", distribution_mode="memory")
    with pytest.raises(ValueError, match="num_envs"):
        make_env("procgen", num_envs=0, seed=0)
    with pytest.raises(ValueError, match="num_levels"):
        make_env("procgen", num_envs=1, seed=0, num_levels=-1)
    with pytest.raises(ValueError, match="rand_seed_typo"):
        make_env("procgen", num_envs=1, seed=0, rand_seed_typo=1)


def test_procgen_coinrun_episodes(procgen):
    env = make_env("procgen", num_envs=16, seed=0, env_id="coinrun", num_levels=200)
    env.reset()
    rng = np.random.default_rng(0)
    ended = None
    first_done_step = np.full(16, -1)
    for step in range(1, 1001):
        _, reward, terminated, truncated, info = env.step(rng.integers(0, 15, size=16))
        newly = terminated & (first_done_step < 0)
        if newly.any():
            lengths = dict(zip(np.flatnonzero(terminated), info["episode_length"], strict=True))
            for i in np.flatnonzero(newly):
                assert lengths[i] == step  # first episode of env i lasted until now
            first_done_step[newly] = step
        if len(info["episode_return"]):
            ended = info
            assert set(info) >= {"episode_return", "episode_length", "episode_success"}
            assert info["episode_success"].dtype == bool
            # CoinRun pays 10 for the coin and nothing else, so success == (return > 0)
            np.testing.assert_array_equal(info["episode_success"], info["episode_return"] > 0)
        if ended is not None and step >= 200:
            break
    assert ended is not None, "no CoinRun episode ended in 1000 random steps"


# ---------------------------------------------------------------- registration and configs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "env"
FAMILIES = ("mnist", "pointmass", "probe", "procgen")


def composed_env_config(family: str) -> dict:
    """configs/env/<family>.yaml over its registered dataclass, as a plain dict (like Hydra)."""
    entry = registry.env_entry(family)
    data = OmegaConf.load(CONFIG_DIR / f"{family}.yaml")
    assert list(data.pop("defaults")) == [f"{family}_schema", "_self_"]
    merged = OmegaConf.merge(OmegaConf.structured(entry.config_cls), data)  # unknown keys fail
    return OmegaConf.to_container(merged, resolve=True)


def build_split(family: str, which: str, seed: int = 0, **changes):
    """Build a family's envs the way the spine does, for the "train" or "eval" split."""
    entry = registry.env_entry(family)
    cfg_dict = {**composed_env_config(family), **changes}
    if which == "eval":
        cfg_dict = {**cfg_dict, **cfg_dict["eval"]}
    cfg = entry.config_cls(**cfg_dict)
    return cfg, entry.build(cfg, num_envs=cfg.num_envs, seed=seed)


def test_missing_matches_omegaconf():
    import omegaconf

    assert MISSING == omegaconf.MISSING
    assert OmegaConf.is_missing(OmegaConf.structured(EnvConfig), "family")


def test_importing_envs_registers_families_without_torch():
    code = "import sys, envs; from rl_scaling import registry; "
    code += "assert 'torch' not in sys.modules, 'torch'; print(sorted(registry.ENVS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == str(sorted([*FAMILIES, "atari", "dmc", "gym", "nethack"]))


@pytest.mark.parametrize("family", [*FAMILIES, "nethack", "atari"])
def test_family_config_round_trips_and_matches_its_yaml(family):
    entry = registry.env_entry(family)
    cls = entry.config_cls
    assert issubclass(cls, EnvConfig) and entry.family == family
    for f in dataclasses.fields(cls):  # every field documented in the class docstring
        assert f"{f.name}:" in cls.__doc__, f"{cls.__name__}.{f.name} is not documented"
    node = OmegaConf.structured(cls)
    assert OmegaConf.to_object(node) == cls()
    assert cls().family == family
    # the yaml file sets exactly the dataclass defaults (the dataclass is the one source)
    assert composed_env_config(family) == dataclasses.asdict(cls())
    for key in cls().eval:  # eval keys are fields of the same config
        assert key in {f.name for f in dataclasses.fields(cls)} - {"eval", "family"}


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_builds_through_registry(family, split, caplog):
    if family == "procgen":
        pytest.importorskip("procgen")
    few = {"num_envs": 2}
    changes = dict(few)
    if family in ("procgen", "pointmass"):  # keep the eval envs small too
        changes["eval"] = {**composed_env_config(family)["eval"], **few}
    cfg, env = build_split(family, split, **changes)
    with env:
        assert env.num_envs == 2
        obs = env.reset()
        assert obs.shape == (2, *env.single_observation_space.shape)
        space = env.single_action_space
        actions = random_actions(space, 2, np.random.default_rng(0))
        check_step_types(env, *env.step(actions))
        if family == "procgen":
            expected = (0, 100_000) if split == "eval" else (200, 0)
            assert (cfg.num_levels, cfg.start_level) == expected
            assert env._kwargs["num_levels"] == expected[0]
        if family == "mnist":
            assert cfg.split == ("test" if split == "eval" else "train")
            assert len(env.labels) == (360 if split == "eval" else 1437)
        if family == "probe":
            assert env.probe.name == cfg.id == "constant_value"
        if family == "pointmass":
            assert env.task_sets == (["test", "ood_objects"] if split == "eval" else ["train"])


@pytest.mark.parametrize("family", ["probe", "procgen"])
def test_registry_build_names_the_config_key(family):
    entry = registry.env_entry(family)
    with pytest.raises(ValueError, match="^id 'nope'"):
        entry.build(entry.config_cls(id="nope"), num_envs=1, seed=0)


@pytest.mark.parametrize(
    "family,changes",
    [
        ("probe", {"id": "obs_action_reward"}),
        ("probe", {"id": "continuous_obs_action"}),
        ("mnist", {}),
        ("mnist", {"split": "test"}),
    ],
)
def test_registry_builds_are_reproducible(family, changes):
    def stream(seed):
        _, env = build_split(family, "train", seed=seed, num_envs=4, **changes)
        rng = np.random.default_rng(0)
        actions = np.stack([random_actions(env.single_action_space, 4, rng) for _ in range(8)])
        return rollout(env, actions)

    a, b, c = stream(3), stream(3), stream(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
