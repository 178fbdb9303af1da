"""The sharded trajectory dataset: round trips across shard boundaries, appending, roll-back
to a checkpoint, one-line errors for every kind of damage, and the batch loader's stream."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agents.shards import (
    EPISODE_RECORD,
    BatchLoader,
    DatasetError,
    ShardedDataset,
    ShardWriter,
    main,
)

FIELDS = {"obs": ((3, 2), "uint8"), "action": ((), "int64"), "reward": ((), "float32")}
SHARD = 7  # small, so episodes span shard files


def episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    return {"obs": rng.integers(0, 256, (length, 3, 2), dtype=np.uint8),
            "action": rng.integers(0, 18, length),
            "reward": rng.random(length, dtype=np.float32)}


def concat(episodes: list[dict]) -> dict[str, np.ndarray]:
    return {f: np.concatenate([e[f] for e in episodes]) for f in FIELDS}


def write(writer: ShardWriter, split: str, lengths: list[int], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = [episode(rng, n) for n in lengths]
    for e in eps:
        writer.add_episode(split, e)
    return eps


def check_split(root: Path, split: str, eps: list[dict]) -> ShardedDataset:
    """The reader sees exactly ``eps``, in order, through gather, windows and episodes."""
    ds = ShardedDataset(root, split)
    want = concat(eps)
    n = len(want["action"])
    assert len(ds) == n and len(ds.shards) == -(-n // SHARD)
    rows = np.random.default_rng(0).integers(0, n, 3 * n)  # any order, repeats
    got = ds.gather(rows)
    for f in FIELDS:
        np.testing.assert_array_equal(got[f], want[f][rows])
    lengths = np.array([len(e["action"]) for e in eps])
    np.testing.assert_array_equal(ds.episodes.lengths, lengths)
    np.testing.assert_array_equal(ds.episodes.starts, np.cumsum(lengths) - lengths)
    np.testing.assert_allclose(ds.episodes.returns,
                               [e["reward"].astype(np.float64).sum() for e in eps])
    return ds


def test_round_trip_across_shards_and_splits(tmp_path):
    with ShardWriter(tmp_path / "d", FIELDS, shard_samples=SHARD, meta={"game": "Pong"}) as w:
        train = write(w, "train", [5, 9, 1, 14, 7, 3], seed=1)
        val = write(w, "val", [8, 8], seed=2)
        assert (w.samples("train"), w.episodes("train"), w.samples("val")) == (39, 6, 16)
    check_split(tmp_path / "d", "train", train)
    ds = check_split(tmp_path / "d", "val", val)
    assert ds.meta == {"game": "Pong"}
    assert ds.fields["obs"] == ((3, 2), np.dtype("uint8"))
    assert ds.gather(np.array([3]), ["action"]).keys() == {"action"}
    with pytest.raises(KeyError, match="nope"):
        ds.gather(np.array([3]), ["nope"])
    # with fewer memmaps open than shards, least recently used ones are closed and reopened
    small = ShardedDataset(tmp_path / "d", "train", max_open=2)
    rows = np.random.default_rng(1).integers(0, len(small), 50)
    np.testing.assert_array_equal(small.gather(rows)["obs"], concat(train)["obs"][rows])
    assert len(small._maps) == 2
    ds.verify()
    with pytest.raises(IndexError, match="out of range"):
        ds.gather(np.array([0, 16]))
    with pytest.raises(IndexError, match="out of range"):
        ds.gather(np.array([-1]))


def test_explicit_return_and_nan_without_reward(tmp_path):
    with ShardWriter(tmp_path, {"x": ((), "float32")}) as w:
        w.add_episode("train", {"x": np.ones(3)})
        w.add_episode("train", {"x": np.ones(2)}, episode_return=7.5)
    returns = ShardedDataset(tmp_path).episodes.returns
    assert np.isnan(returns[0]) and returns[1] == 7.5


def test_windows_span_shards_and_episodes(tmp_path):
    with ShardWriter(tmp_path, FIELDS, shard_samples=SHARD) as w:
        eps = write(w, "train", [5, 9, 1, 14, 7, 3], seed=1)
    ds = ShardedDataset(tmp_path)
    want = concat(eps)
    starts_of_episodes = set(ds.episodes.starts.tolist())
    length = 10
    starts = np.arange(len(ds) - length + 1)[::-1]
    got = ds.windows(starts, length)
    assert got["obs"].shape == (len(starts), length, 3, 2) and got["first"].dtype == bool
    for b, s in enumerate(starts):
        for f in FIELDS:
            np.testing.assert_array_equal(got[f][b], want[f][s:s + length])
        assert got["first"][b].tolist() == [r in starts_of_episodes for r in range(s, s + length)]
    with pytest.raises(IndexError):
        ds.windows(np.array([len(ds) - length + 1]), length)


@pytest.mark.parametrize("lengths", [[4, 6], [3, 4]])  # ends inside a shard / at its end
def test_reopen_appends_and_merges_meta(tmp_path, lengths):
    with ShardWriter(tmp_path, FIELDS, shard_samples=SHARD, meta={"a": 1}) as w:
        first = write(w, "train", lengths, seed=1)
    # a different shard_samples is ignored: the files are laid out by the dataset's own
    with ShardWriter(tmp_path, FIELDS, shard_samples=1000, meta={"b": 2}) as w:
        assert (w.samples("train"), w.episodes("train")) == (sum(lengths), 2)
        assert w.shard_samples == SHARD
        second = write(w, "train", [9, 2], seed=2)
    ds = check_split(tmp_path, "train", first + second)
    assert ds.meta == {"a": 1, "b": 2}
    ds.verify()


def test_uncommitted_episodes_are_invisible(tmp_path):
    w = ShardWriter(tmp_path, FIELDS, shard_samples=SHARD)
    eps = write(w, "train", [3], seed=1)
    w.commit()
    write(w, "train", [5], seed=2)
    assert w.samples("train") == 8 and w.state_dict() == {"train": {"samples": 3, "episodes": 1}}
    check_split(tmp_path, "train", eps)
    w.close()


@pytest.mark.parametrize("fields,what", [
    ({**FIELDS, "obs": ((3, 3), "uint8")}, "'obs'"),
    ({**FIELDS, "obs": ((3, 2), "float32")}, "'obs'"),
    ({k: v for k, v in FIELDS.items() if k != "reward"}, "'reward'"),
    ({**FIELDS, "extra": ((), "int8")}, "'extra'"),
])
def test_fields_mismatch_refused(tmp_path, fields, what):
    ShardWriter(tmp_path, FIELDS).close()
    with pytest.raises(DatasetError) as e:
        ShardWriter(tmp_path, fields)
    assert str(tmp_path / "index.json") in str(e.value) and what in str(e.value)


def test_bad_episodes_refused_naming_the_field(tmp_path):
    w = ShardWriter(tmp_path, FIELDS, shard_samples=SHARD)
    good = episode(np.random.default_rng(0), 4)
    with pytest.raises(DatasetError, match="'action'.*float64"):
        w.add_episode("train", {**good, "action": np.zeros(4)})
    with pytest.raises(DatasetError, match="'obs'"):
        w.add_episode("train", {**good, "obs": np.full((4, 3, 2), 300)})  # does not fit uint8
    with pytest.raises(DatasetError, match="'obs'"):
        w.add_episode("train", {**good, "obs": good["obs"][:, :2]})
    with pytest.raises(DatasetError, match="'reward'"):
        w.add_episode("train", {**good, "reward": good["reward"][:3]})
    with pytest.raises(DatasetError, match="missing"):
        w.add_episode("train", {"obs": good["obs"]})
    with pytest.raises(DatasetError, match="split"):
        w.add_episode("../x", good)
    with pytest.raises(DatasetError, match="reserved"):
        ShardWriter(tmp_path / "other", {"first": ((), "bool")})
    assert w.samples("train") == 0  # nothing half-written
    # lossless casts are fine: int64 pixels in range, float64 rewards
    w.add_episode("train", {**good, "obs": good["obs"].astype(np.int64),
                            "reward": good["reward"].astype(np.float64)})
    w.close()
    check_split(tmp_path, "train", [good])


def test_rollback_to_checkpoint_then_append(tmp_path):
    w = ShardWriter(tmp_path, FIELDS, shard_samples=SHARD)
    kept = write(w, "train", [5, 6], seed=1)  # 11 rows: shard 1 part full
    val = write(w, "val", [3], seed=2)
    w.commit()
    state = w.state_dict()
    assert state == {"train": {"samples": 11, "episodes": 2}, "val": {"samples": 3, "episodes": 1}}
    write(w, "train", [9, 12], seed=3)  # to row 32: shards 2..4
    write(w, "test", [4], seed=4)  # a split the checkpoint never saw
    w.commit()
    write(w, "train", [2], seed=5)  # uncommitted at the "crash"
    assert len(list(tmp_path.glob("train-00004.*.npy"))) == 3

    w.load_state_dict(state)
    assert (w.samples("train"), w.episodes("train"), w.samples("test")) == (11, 2, 0)
    assert w.state_dict() == state
    check_split(tmp_path, "train", kept)
    check_split(tmp_path, "val", val)
    assert sorted(p.name for p in tmp_path.glob("train-*.npy")) == sorted(
        f"train-{k:05d}.{f}.npy" for k in (0, 1) for f in FIELDS)
    assert not list(tmp_path.glob("test*"))
    with pytest.raises(DatasetError, match="test"):
        ShardedDataset(tmp_path, "test")

    more = write(w, "train", [4, 8], seed=6)
    w.close()
    ds = check_split(tmp_path, "train", kept + more)
    ds.verify()
    # a writer opened afresh (the resumed process) rolls back the same way
    w = ShardWriter(tmp_path, FIELDS)
    w.load_state_dict(state)
    w.close()
    check_split(tmp_path, "train", kept)


def test_rollback_refuses_data_the_dataset_lost(tmp_path):
    with ShardWriter(tmp_path, FIELDS, shard_samples=SHARD) as w:
        write(w, "train", [5], seed=1)
        with pytest.raises(DatasetError, match="lost data") as e:
            w.load_state_dict({"train": {"samples": 9, "episodes": 2}})
        assert str(tmp_path / "index.json") in str(e.value)
        w.commit()
        with pytest.raises(DatasetError, match="checkpoint"):  # not at an episode's end
            w.load_state_dict({"train": {"samples": 4, "episodes": 1}})


# -- damage: each a one-line DatasetError naming the file


def damaged(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A dataset damaged ``how``: (root, the path the error must name)."""
    root = tmp_path / "d"
    with ShardWriter(root, FIELDS, shard_samples=SHARD) as w:
        write(w, "train", [5, 9, 4], seed=1)  # 18 rows: shards 0, 1 full, 2 has 4 rows
    shard0, last = root / "train-00000.obs.npy", root / "train-00002.obs.npy"
    index, episodes = root / "index.json", root / "train.episodes.bin"
    if how == "missing root":
        return tmp_path / "nowhere", str(tmp_path / "nowhere")
    if how == "missing index":
        index.unlink()
        return root, str(index)
    if how == "index not json":
        index.write_text('{"format": 1, "fields": ')
        return root, str(index)
    if how == "index missing key":
        data = json.loads(index.read_text())
        del data["splits"]["train"]["shards"][1]["samples"]
        index.write_text(json.dumps(data))
        return root, str(index)
    if how in ("index says more rows", "index says more samples"):
        data = json.loads(index.read_text())
        key = data["splits"]["train"]["shards"][1] if how == "index says more rows" else \
            data["splits"]["train"]
        key["samples"] += 100
        index.write_text(json.dumps(data))
        return root, str(root / "train-00001.obs.npy" if how == "index says more rows" else index)
    if how == "missing shard":
        shard0.unlink()
        return root, str(shard0)
    if how == "garbage npy":
        shard0.write_bytes(b"\x93NUMPY garbage" * 3)
        return root, str(shard0)
    if how == "truncated header":
        shard0.write_bytes(shard0.read_bytes()[:40])
        return root, str(shard0)
    if how == "truncated data":
        shard0.write_bytes(shard0.read_bytes()[:-5])
        return root, str(shard0)
    if how == "wrong shape":
        np.save(shard0, np.zeros((SHARD, 2, 3), np.uint8))
        return root, str(shard0)
    if how == "wrong dtype":
        np.save(shard0, np.zeros((SHARD, 3, 2), np.int16))
        return root, str(shard0)
    if how == "fewer rows":
        np.save(last, np.zeros((2, 3, 2), np.uint8))
        return root, str(last)
    if how == "episodes truncated":
        episodes.write_bytes(episodes.read_bytes()[:EPISODE_RECORD.itemsize])
        return root, str(episodes)
    if how == "episodes do not tile":
        rec = np.fromfile(episodes, EPISODE_RECORD)
        rec[1]["length"] += 1
        rec.tofile(episodes)
        return root, str(episodes)
    raise AssertionError(how)


@pytest.mark.parametrize("how", [
    "missing root", "missing index", "index not json", "index missing key",
    "index says more rows", "index says more samples", "missing shard",
    "garbage npy", "truncated header", "truncated data", "wrong shape", "wrong dtype",
    "fewer rows", "episodes truncated", "episodes do not tile",
])
def test_damage_is_one_line_naming_the_file(tmp_path, how):
    root, path = damaged(tmp_path, how)
    with pytest.raises(DatasetError) as e:
        ShardedDataset(root)
    message = str(e.value)
    assert path in message and "\n" not in message, message


def test_unknown_split_lists_the_splits(tmp_path):
    with ShardWriter(tmp_path, FIELDS) as w:
        write(w, "train", [3], seed=1)
        write(w, "val", [3], seed=2)
    with pytest.raises(DatasetError) as e:
        ShardedDataset(tmp_path, "test")
    message = str(e.value)
    assert str(tmp_path / "index.json") in message and "train, val" in message
    assert "\n" not in message


def test_verify_finds_a_flipped_byte(tmp_path, capsys):
    root = tmp_path / "d"
    with ShardWriter(root, FIELDS, shard_samples=SHARD) as w:
        write(w, "train", [5, 9, 4], seed=1)
    ShardedDataset(root).verify()
    assert main(["verify", str(root)]) == 0
    path = root / "train-00001.action.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # in the data, not the header: opening still succeeds
    path.write_bytes(bytes(raw))
    ds = ShardedDataset(root)
    with pytest.raises(DatasetError) as e:
        ds.verify()
    assert str(path) in str(e.value) and "crc32" in str(e.value) and "\n" not in str(e.value)
    assert main(["verify", str(root)]) == 1
    assert str(path) in capsys.readouterr().err


def test_info_command(tmp_path, capsys):
    with ShardWriter(tmp_path, FIELDS, shard_samples=SHARD, meta={"game": "Pong"}) as w:
        write(w, "train", [5, 9], seed=1)
        write(w, "val", [4], seed=2)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "obs (3, 2) uint8" in out and "Pong" in out


# -- the batch loader


@pytest.fixture
def dataset(tmp_path) -> ShardedDataset:
    with ShardWriter(tmp_path, FIELDS, shard_samples=SHARD) as w:
        write(w, "train", [5, 9, 1, 14, 7, 3, 11], seed=1)
    return ShardedDataset(tmp_path)


def take(loader: BatchLoader, n: int) -> list[dict]:
    return [{k: v.numpy().copy() for k, v in next(loader).items()} for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("seq_len", [None, 6])
def test_loader_stream_independent_of_threads(dataset, seq_len):
    streams = []
    for threads, prefetch in [(1, 1), (2, 3), (3, 8)]:
        with BatchLoader(dataset, 16, seed=5, seq_len=seq_len, threads=threads,
                         prefetch=prefetch) as loader:
            streams.append(take(loader, 8))
            assert loader.batches_consumed == 8
    assert_same(streams[0], streams[1])
    assert_same(streams[0], streams[2])
    # batch k's rows come from default_rng([seed, k]) alone
    rows = np.random.default_rng([5, 2]).integers(0, len(dataset) - (seq_len or 1) + 1, 16)
    want = (dataset.gather(rows) if seq_len is None else dataset.windows(rows, seq_len))
    assert_same([streams[0][2]], [want])
    if seq_len:
        assert streams[0][0]["first"].shape == (16, seq_len)


def test_loader_resumes(dataset):
    with BatchLoader(dataset, 8, seed=1, threads=2) as loader:
        stream = take(loader, 6)
        with BatchLoader(dataset, 8, seed=1, start_batch=3) as resumed:
            assert_same(take(resumed, 3), stream[3:])
        loader2 = BatchLoader(dataset, 8, seed=1)
        loader2.load_state_dict({"batch": 4})
        assert_same(take(loader2, 2), stream[4:])
        assert loader2.state_dict() == {"batch": 6}
        loader2.close()
        loader.load_state_dict({"batch": 1})  # rewinds the running loader
        assert_same(take(loader, 2), stream[1:3])
        assert loader.state_dict() == {"batch": 3}


def test_loader_reraises_producer_errors(dataset):
    calls = []

    def flaky(rows, fields=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return ShardedDataset.gather(dataset, rows, fields)

    dataset.gather = flaky
    loader = BatchLoader(dataset, 4, seed=0)
    take(loader, 2)
    for _ in range(2):  # and again: it is not swallowed the second time either
        with pytest.raises(RuntimeError, match="disk on fire"):
            next(loader)
    assert loader.batches_consumed == 2
    loader.close()


def test_loader_close_is_prompt(dataset):
    before = threading.active_count()
    loader = BatchLoader(dataset, 4, seed=0, threads=3, prefetch=2)
    next(loader)
    time.sleep(0.05)  # producers now blocked on a full prefetch queue
    start = time.perf_counter()
    loader.close()
    assert time.perf_counter() - start < 1.0
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)
