"""Fast tests of envs/: interface, bookkeeping, seeding, the MNIST loaders, probes, procgen."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from envs import PROBES, make_env
from envs.base import EpisodeStats, check_actions
from envs.mnist import _bilinear_matrix, load_sklearn_digits, make_mnist, read_idx
from envs.probe import make_probe

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
    with pytest.raises(ValueError, match="'atari'.*mnist.*probe.*procgen"):
        make_env("atari", num_envs=1, seed=0)


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
    check_actions(np.array([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="shape"):
        check_actions(np.array([0, 1, 1]), 2, 2)
    with pytest.raises(ValueError, match="integer"):
        check_actions(np.array([0.0, 1.0]), 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        check_actions(np.array([0, 2]), 2, 2)


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


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_spaces_and_rewards(name):
    probe = PROBES[name]
    env = make_env("probe", num_envs=8, seed=1, name=name)
    assert env.single_observation_space == gymnasium.spaces.Box(-1, 1, (1,), np.float32)
    assert env.single_action_space == gymnasium.spaces.Discrete(probe.num_actions)
    rng = np.random.default_rng(0)
    obs = env.reset()
    t = np.zeros(8, dtype=int)
    for _ in range(20):
        actions = rng.integers(0, probe.num_actions, size=8)
        next_obs, reward, terminated, truncated, info = env.step(actions)
        check_step_types(env, next_obs, reward, terminated, truncated, info)
        x = obs[:, 0]
        expected = {
            "constant_value": np.ones(8),
            "obs_reward": x,
            "two_step": (t == 1).astype(float),
            "action_reward": np.where(actions == 1, 1.0, -1.0),
            "obs_action_reward": np.where(actions == (x > 0), 1.0, -1.0),
        }[name]
        np.testing.assert_array_equal(reward, expected)
        assert set(np.unique(x)) <= ({-1.0, 1.0} if probe.random_obs else {0.0, 1.0})
        if name == "two_step":
            np.testing.assert_array_equal(x, t)  # obs is the step index
        ended = t + 1 == probe.episode_length
        np.testing.assert_array_equal(terminated, ended)
        assert not truncated.any()
        np.testing.assert_array_equal(
            info["episode_length"], np.full(ended.sum(), 2 if name == "two_step" else 1)
        )
        t = np.where(ended, 0, t + 1)
        obs = next_obs


@pytest.mark.parametrize("name", list(PROBES))
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
    with pytest.raises(ValueError, match="name 'nope'.*constant_value"):
        make_env("probe", num_envs=1, seed=0, name="nope")


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
