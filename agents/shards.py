"""A sharded, memory-mapped, append-only trajectory dataset (expert rollouts for imitation).

A dataset holds named splits ("train", "val", ...) of whole episodes, stored as rows in one
global order per split; nothing is ever read into RAM as a whole, so it can grow to billions
of samples. :class:`ShardWriter` appends episodes and commits them, :class:`ShardedDataset`
reads one split (random rows, contiguous windows), :class:`BatchLoader` samples batches in
background threads.

On-disk format (everything under one directory ROOT):

``ROOT/index.json`` (format 1), the only file that says what is valid::

    {"format": 1,
     "fields": {name: {"shape": [84, 84, 4], "dtype": "uint8"}, ...},
     "shard_samples": N,
     "meta": {...},
     "splits": {split: {"samples": S, "episodes": E,
                        "shards": [{"name": "train-00000", "samples": n,
                                    "crc32": {field: int} | null}, ...]}}}

It is rewritten atomically on every commit (``index.json.tmp``, fsync, ``os.replace``), so a
reader or a crash sees either the old or the new dataset, never a mix.

``ROOT/{split}-{k:05d}.{field}.npy``: shard k of a split, one ``.npy`` per field, created by
``np.lib.format.open_memmap`` with shape ``(N, *field_shape)`` (sparse until written). Shard k
holds the split's global rows ``[k*N, k*N + n)``; only its first ``n`` rows (the index's
``samples``) are valid. Every shard but a split's last is full, and a full shard records the
crc32 of each field's valid rows (``verify`` checks them); the last, still growing, has
``crc32: null``. Episodes are contiguous in the global row order and may span shard files.

``ROOT/{split}.episodes.bin``: a headerless little-endian array of 24-byte records
``(start int64, length int64, return float64)``, one per episode in row order; only the
first E records (the index's ``episodes``) are valid, so a commit writes just the new records
at offset ``24*E`` (commit cost is O(new data), never O(dataset)). The episodes tile
``[0, S)`` exactly.

Rows written but not committed (a crash mid-collection) lie past the index's counts and are
ignored by readers, then overwritten or deleted by the next writer. One writer at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
INDEX = "index.json"
FieldSpec = tuple[tuple[int, ...], str | np.dtype]  # (shape, dtype)

# (start, length, return) per episode, in ``{split}.episodes.bin``
EPISODE_RECORD = np.dtype([("start", "<i8"), ("length", "<i8"), ("return", "<f8")])
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # a field: it is part of file names
_SPLIT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_SHARD_FILE = re.compile(r"(?P<split>[A-Za-z0-9_][A-Za-z0-9_-]*)-(?P<k>\d{5,})"
                         r"\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)\.npy\Z")
_CRC_CHUNK = 64 << 20  # bytes per zlib.crc32 call: a shard is never read into RAM at once


class DatasetError(ValueError):
    """A dataset on disk (or an input to it) is wrong; the message is one line that names the
    file (full path) and what is wrong with it."""

    def __init__(self, path: str | Path, what: str | None = None) -> None:
        self.path = str(path) if what is not None else None
        message = str(path) if what is None else f"{path}: {what}"
        super().__init__(" ".join(message.split()))  # one line, whatever `what` holds


@dataclass
class Episodes:
    """A split's episodes in row order: episode i is rows ``starts[i]:starts[i]+lengths[i]``."""

    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    returns: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.starts)


def _shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}"


def _shard_path(root: Path, shard: str, field: str) -> Path:
    return root / f"{shard}.{field}.npy"


def _episodes_path(root: Path, split: str) -> Path:
    return root / f"{split}.episodes.bin"


def _normalise_fields(fields: Mapping[str, Any], where: Path) -> dict[str, tuple]:
    """``{name: (shape, dtype)}`` with a tuple shape and a plain numeric numpy dtype."""
    if not fields:
        raise DatasetError(where, "no fields given")
    out = {}
    for name, spec in fields.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == "first":
            raise DatasetError(where, f"bad field name {name!r} (letters, digits, _; "
                                      f"'first' is reserved for windows)")
        try:
            shape, dtype = spec
            shape = tuple(int(d) for d in shape)
            dtype = np.dtype(dtype)
        except (TypeError, ValueError) as e:
            raise DatasetError(where, f"field {name!r}: bad spec {spec!r} ({e})") from e
        if dtype.kind not in "biufc" or not dtype.isnative or any(d < 1 for d in shape):
            raise DatasetError(where, f"field {name!r}: unsupported shape/dtype "
                                      f"{shape} {dtype} (plain numeric dtypes only)")
        out[name] = (shape, dtype)
    return out


def _fields_json(fields: Mapping[str, tuple]) -> dict:
    return {k: {"shape": list(s), "dtype": d.name} for k, (s, d) in fields.items()}


def _describe(spec: tuple) -> str:
    return f"{tuple(spec[0])} {np.dtype(spec[1]).name}"


def read_index(root: str | Path) -> dict:
    """Load and check ``ROOT/index.json``; fields come back as ``{name: (shape, dtype)}``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root does not exist")
    path = root / INDEX
    if not path.is_file():
        raise DatasetError(path, "missing (not a dataset root)")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(path, f"corrupt index, not valid JSON ({e})") from e
    try:
        if index["format"] != FORMAT:
            raise DatasetError(path, f"unsupported format {index['format']!r} (want {FORMAT})")
        index["fields"] = {name: (tuple(int(d) for d in f["shape"]), np.dtype(f["dtype"]))
                           for name, f in index["fields"].items()}
        if int(index["shard_samples"]) <= 0 or not isinstance(index["meta"], dict):
            raise ValueError("bad shard_samples or meta")
        for split, s in index["splits"].items():
            if not _SPLIT.match(split) or int(s["samples"]) < 1 or int(s["episodes"]) < 1:
                raise ValueError(f"bad split {split!r}: {s['samples']} samples, "
                                 f"{s['episodes']} episodes")
            for shard in s["shards"]:
                # whether the shards' rows add up is checked against the files (readers)
                if (not _SPLIT.match(shard["name"]) or int(shard["samples"]) < 1
                        or not (shard["crc32"] is None or isinstance(shard["crc32"], dict))):
                    raise ValueError(f"bad shard entry {shard!r}")
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(path, f"corrupt index, missing or malformed key "
                                 f"({type(e).__name__}: {e})") from e
    return index


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file, checked against its size."""
    if not path.is_file():
        raise DatasetError(path, "shard file is missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported npy version {version}")
            offset = f.tell()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(path, f"corrupt or truncated npy header ({e})") from e
    if fortran:
        raise DatasetError(path, "Fortran-ordered array (not written by ShardWriter)")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise DatasetError(path, f"truncated: {size} bytes, its header needs {need}")
    return tuple(shape), dtype, offset


def _check_shard_file(path: Path, spec: tuple, rows: int) -> int:
    """Check a shard file against its field and the rows the index says it holds; return the
    data offset."""
    shape, dtype, offset = _npy_header(path)
    want_shape, want_dtype = spec
    if shape[1:] != tuple(want_shape) or dtype != want_dtype or len(shape) < 1:
        raise DatasetError(path, f"shard is {shape} {dtype.name} but the index says rows of "
                                 f"{_describe(spec)}")
    if shape[0] < rows:
        raise DatasetError(path, f"shard has {shape[0]} rows but the index says {rows} are "
                                 f"valid (index disagrees with its shards)")
    return offset


def _crc32(rows: np.ndarray) -> int:
    """crc32 of a C-contiguous array's bytes, a chunk at a time (a memmap stays on disk)."""
    step = max(1, _CRC_CHUNK // max(1, rows[:1].nbytes))
    crc = 0
    for a in range(0, len(rows), step):
        crc = zlib.crc32(np.ascontiguousarray(rows[a:a + step]), crc)
    return crc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_episodes(path: Path, count: int) -> np.ndarray:
    size = path.stat().st_size if path.is_file() else -1
    if size < count * EPISODE_RECORD.itemsize:
        what = "missing" if size < 0 else f"{size // EPISODE_RECORD.itemsize} episodes"
        raise DatasetError(path, f"episodes file has {what} but the index says {count}")
    return np.fromfile(path, dtype=EPISODE_RECORD, count=count)


# --------------------------------------------------------------------------------- writer


class _SplitState:
    """A split as the writer sees it: committed counts, plus rows and episodes since."""

    def __init__(self, samples: int = 0, episodes: int = 0,
                 crcs: dict[int, dict[str, int]] | None = None) -> None:
        self.committed_samples = self.samples = samples
        self.committed_episodes = episodes
        self.pending: list[tuple[int, int, float]] = []  # (start, length, return)
        self.crcs = crcs or {}  # full shard k -> {field: crc32}

    @property
    def episodes(self) -> int:
        return self.committed_episodes + len(self.pending)


class ShardWriter:
    """Appends episodes to a dataset's splits; :meth:`commit` makes them visible and durable.

    A new ``root`` is created; an existing one (with ``index.json``) is opened for appending,
    its ``fields`` must equal ``fields``, ``meta`` updates its meta, and its own
    ``shard_samples`` is kept (the files are laid out by it). Rows and episodes files a crash
    left past the index are dropped on open.
    """

    def __init__(self, root: str | Path, fields: Mapping[str, FieldSpec], *,
                 shard_samples: int = 65536, meta: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX
        self.fields = _normalise_fields(fields, self.index_path)
        self._splits: dict[str, _SplitState] = {}
        self._maps: dict[tuple[str, int, str], np.memmap] = {}
        self._closed = False
        if self.index_path.exists():
            index = read_index(self.root)
            self._check_fields(index["fields"])
            self.shard_samples = int(index["shard_samples"])
            self.meta = {**index["meta"], **(meta or {})}
            for split, s in index["splits"].items():
                self._splits[split] = self._split_from_index(split, s)
        else:
            if int(shard_samples) <= 0:
                raise DatasetError(self.index_path, f"shard_samples must be > 0, "
                                                    f"got {shard_samples}")
            self.root.mkdir(parents=True, exist_ok=True)
            self.shard_samples = int(shard_samples)
            self.meta = dict(meta or {})
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise DatasetError(self.index_path, f"meta is not JSON-serialisable ({e})") from e
        self._drop_files_past_index()
        self._write_index()

    # -- opening

    def _check_fields(self, on_disk: Mapping[str, tuple]) -> None:
        for name in sorted(set(on_disk) | set(self.fields)):
            if name not in self.fields:
                raise DatasetError(self.index_path, f"field {name!r} is in the dataset but "
                                                    f"not in the fields given")
            if name not in on_disk:
                raise DatasetError(self.index_path, f"field {name!r} was given but the "
                                                    f"dataset has no such field")
            if tuple(on_disk[name][0]) != self.fields[name][0] or \
                    on_disk[name][1] != self.fields[name][1]:
                raise DatasetError(self.index_path, f"field {name!r} is "
                                   f"{_describe(on_disk[name])} in the dataset but "
                                   f"{_describe(self.fields[name])} was given")

    def _split_from_index(self, split: str, s: Mapping) -> _SplitState:
        n, samples = self.shard_samples, int(s["samples"])
        crcs = {}
        for k, shard in enumerate(s["shards"]):
            # the writer's layout: shard k is rows [k*n, (k+1)*n), all full but the last
            want = min(n, samples - k * n)
            if shard["name"] != _shard_name(split, k) or int(shard["samples"]) != want:
                raise DatasetError(self.index_path, f"split {split!r}: shard {k} is "
                                   f"{shard['name']} with {shard['samples']} samples, "
                                   f"expected {_shard_name(split, k)} with {want}")
            if shard["crc32"] is not None:
                crcs[k] = {f: int(c) for f, c in shard["crc32"].items()}
        episodes = int(s["episodes"])
        path = _episodes_path(self.root, split)
        size = path.stat().st_size if path.is_file() else 0
        if size < episodes * EPISODE_RECORD.itemsize:
            raise DatasetError(path, f"episodes file holds {size // EPISODE_RECORD.itemsize} "
                                     f"episodes but the index says {episodes}")
        return _SplitState(samples, episodes, crcs)

    def _num_shards(self, samples: int) -> int:
        return -(-samples // self.shard_samples)

    def _drop_files_past_index(self) -> None:
        """Delete shard files of ours that no committed shard owns (a crash's leftovers, or
        rolled-back data), and the episodes files of splits that are gone."""
        committed = {s: self._num_shards(st.committed_samples)
                     for s, st in self._splits.items() if st.committed_samples}
        for path in self.root.iterdir():
            m = _SHARD_FILE.match(path.name)
            if m and m["field"] in self.fields and \
                    int(m["k"]) >= committed.get(m["split"], 0):
                path.unlink()
            elif path.name.endswith(".episodes.bin") and \
                    path.name[:-len(".episodes.bin")] not in committed:
                path.unlink()

    # -- appending

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"ShardWriter({self.root}) is closed")

    def _cast(self, episode: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Every field, shape (T, *shape), cast to its dtype without losing information."""
        where = self.index_path
        extra = sorted(set(episode) - set(self.fields))
        missing = sorted(set(self.fields) - set(episode))
        if extra or missing:
            raise DatasetError(where, f"episode fields disagree with the dataset: missing "
                                      f"{missing}, unknown {extra}")
        out, length = {}, None
        for name, (shape, dtype) in self.fields.items():
            arr = np.asarray(episode[name])
            if arr.ndim != 1 + len(shape) or arr.shape[1:] != shape:
                raise DatasetError(where, f"field {name!r}: shape {arr.shape}, expected "
                                          f"(T, {', '.join(map(str, shape))})")
            if length is None:
                length = arr.shape[0]
            if arr.shape[0] != length or length < 1:
                raise DatasetError(where, f"field {name!r} has {arr.shape[0]} steps, expected "
                                          f"the same T >= 1 for every field (T={length})")
            if not np.can_cast(arr.dtype, dtype, "same_kind"):
                # integers of another width are fine when every value fits (int64 pixels)
                ok = (arr.dtype.kind in "iub" and dtype.kind in "iu"
                      and arr.min() >= np.iinfo(dtype).min and arr.max() <= np.iinfo(dtype).max)
                if not ok:
                    raise DatasetError(where, f"field {name!r}: cannot store {arr.dtype} as "
                                              f"{dtype} without losing information")
            out[name] = arr.astype(dtype, copy=False)
        return out, int(length)

    def _memmap(self, split: str, k: int, field: str) -> np.memmap:
        key = (split, k, field)
        mm = self._maps.get(key)
        if mm is None:
            shape, dtype = self.fields[field]
            path = _shard_path(self.root, _shard_name(split, k), field)
            st = self._splits[split]
            if k * self.shard_samples < st.committed_samples:
                # a committed, not yet full shard: append to it in place
                rows = st.committed_samples - k * self.shard_samples
                _check_shard_file(path, self.fields[field], rows)
                mm = np.load(path, mmap_mode="r+")
            else:
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                               shape=(self.shard_samples, *shape))
            self._maps[key] = mm
        return mm

    def add_episode(self, split: str, episode: Mapping[str, np.ndarray], *,
                    episode_return: float | None = None) -> None:
        """Append one whole episode (every field, arrays (T, *shape)) at the end of ``split``.

        ``episode_return=None``: the sum of a ``reward`` field if there is one, else nan.
        Neither visible to readers nor durable until :meth:`commit`.
        """
        self._check_open()
        if not isinstance(split, str) or not _SPLIT.match(split):
            raise DatasetError(self.index_path, f"bad split name {split!r} "
                                                f"(letters, digits, _ and -)")
        data, length = self._cast(episode)
        if episode_return is None:
            episode_return = (float(np.sum(data["reward"], dtype=np.float64))
                              if "reward" in data else float("nan"))
        st = self._splits.setdefault(split, _SplitState())
        start, n = st.samples, self.shard_samples
        pos = start
        while pos < start + length:
            k, lo = divmod(pos, n)
            m = min(n - lo, start + length - pos)
            for name, arr in data.items():
                self._memmap(split, k, name)[lo:lo + m] = arr[pos - start:pos - start + m]
            pos += m
        # counted only once every row is written: a failed write leaves the split as it was
        st.samples += length
        st.pending.append((start, length, float(episode_return)))

    # -- committing

    def commit(self) -> None:
        """Flush the new rows and episodes, record crc32s of shards that became full, then
        atomically rewrite ``index.json``."""
        self._check_open()
        dirty = any(st.pending for st in self._splits.values())
        for mm in self._maps.values():
            mm.flush()
        for split, st in self._splits.items():
            for k in range(st.committed_samples // self.shard_samples,
                           st.samples // self.shard_samples):
                if k not in st.crcs:
                    st.crcs[k] = {f: _crc32(self._memmap(split, k, f)) for f in self.fields}
            if st.pending:
                self._append_episodes(split, st)
            st.committed_samples = st.samples
            st.committed_episodes += len(st.pending)
            st.pending = []
        # a full shard is never written again: let its pages go
        for key in [key for key in self._maps
                    if (key[1] + 1) * self.shard_samples <= self._splits[key[0]].samples]:
            del self._maps[key]
        if dirty:
            self._write_index()

    def _append_episodes(self, split: str, st: _SplitState) -> None:
        records = np.array(st.pending, dtype=EPISODE_RECORD)
        path = _episodes_path(self.root, split)
        with open(path, "r+b" if path.exists() else "wb") as f:
            # write at the committed end, not the file's end: records past it are a crash's
            f.seek(st.committed_episodes * EPISODE_RECORD.itemsize)
            f.write(records.tobytes())
            f.truncate()
            f.flush()
            os.fsync(f.fileno())

    def _index(self) -> dict:
        splits = {}
        for split, st in sorted(self._splits.items()):
            s, n = st.committed_samples, self.shard_samples
            if s == 0:
                continue
            shards = [{"name": _shard_name(split, k), "samples": min(n, s - k * n),
                       "crc32": st.crcs.get(k) if (k + 1) * n <= s else None}
                      for k in range(self._num_shards(s))]
            splits[split] = {"samples": s, "episodes": st.committed_episodes, "shards": shards}
        return {"format": FORMAT, "fields": _fields_json(self.fields),
                "shard_samples": self.shard_samples, "meta": self.meta, "splits": splits}

    def _write_index(self) -> None:
        tmp = self.root / (INDEX + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self._index(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.index_path)
        _fsync_dir(self.root)  # makes the rename itself durable

    # -- counts and checkpoints

    def splits(self) -> list[str]:
        return sorted(self._splits)

    def samples(self, split: str) -> int:
        """Rows in ``split``, uncommitted ones included."""
        st = self._splits.get(split)
        return st.samples if st else 0

    def episodes(self, split: str) -> int:
        """Episodes in ``split``, uncommitted ones included."""
        st = self._splits.get(split)
        return st.episodes if st else 0

    def state_dict(self) -> dict:
        """The committed counts per split, ``{split: {"samples": S, "episodes": E}}``: what
        a collector's checkpoint stores. A split the writer never saw has no key."""
        return {split: {"samples": st.committed_samples, "episodes": st.committed_episodes}
                for split, st in sorted(self._splits.items())}

    def load_state_dict(self, state: Mapping) -> None:
        """Roll back to exactly the counts of ``state`` (an interrupted collection resuming
        from its checkpoint): rows, episodes, shard files and splits written since are
        dropped, uncommitted ones too, then the result is committed."""
        self._check_open()
        try:
            want = {str(s): (int(c["samples"]), int(c["episodes"])) for s, c in state.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DatasetError(self.index_path, f"bad writer state ({e!r})") from e
        for split, (samples, episodes) in want.items():
            st = self._splits.get(split, _SplitState())
            if samples > st.committed_samples or episodes > st.committed_episodes:
                raise DatasetError(self.index_path, f"split {split!r}: the checkpoint says "
                                   f"{samples} samples in {episodes} episodes but the dataset "
                                   f"has only {st.committed_samples} in "
                                   f"{st.committed_episodes} (it lost data)")
            if samples < 0 or episodes < 0 or (episodes == 0) != (samples == 0):
                raise DatasetError(self.index_path, f"split {split!r}: bad checkpoint counts "
                                   f"{samples} samples, {episodes} episodes")
            if episodes:
                path = _episodes_path(self.root, split)
                if not path.is_file() or path.stat().st_size < episodes * EPISODE_RECORD.itemsize:
                    raise DatasetError(path, f"episodes file holds fewer than the "
                                             f"checkpoint's {episodes} episodes")
                last = np.fromfile(path, EPISODE_RECORD, count=1,
                                   offset=(episodes - 1) * EPISODE_RECORD.itemsize)[0]
                if int(last["start"] + last["length"]) != samples:
                    raise DatasetError(self.index_path, f"split {split!r}: {episodes} episodes "
                                       f"end at row {int(last['start'] + last['length'])}, "
                                       f"not at the checkpoint's {samples} samples")
        self._maps.clear()
        for split in list(self._splits):
            samples, episodes = want.get(split, (0, 0))
            if samples == 0:
                del self._splits[split]
                continue
            self._splits[split] = _SplitState(
                samples, episodes, {k: c for k, c in self._splits[split].crcs.items()
                                    if (k + 1) * self.shard_samples <= samples})
        # the index first, then the files: a crash in between leaves only orphans, which the
        # next writer drops or overwrites
        self._write_index()
        for split, st in self._splits.items():
            with open(_episodes_path(self.root, split), "r+b") as f:
                f.truncate(st.committed_episodes * EPISODE_RECORD.itemsize)
        self._drop_files_past_index()

    def close(self) -> None:
        """Commit, then release every memmap; idempotent."""
        if self._closed:
            return
        self.commit()
        self._maps.clear()
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------- reader


def _max_open_maps() -> int:
    """How many shard memmaps a reader keeps open: each holds a file descriptor, so stay
    well under the process's limit (a large dataset has more shard files than that)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return int(max(16, min(soft // 4, 16384)))


class ShardedDataset:
    """One split of a dataset, read through memmaps: ``gather`` random rows, ``windows`` of
    contiguous rows. Checked on open (one-line :class:`DatasetError` naming the bad file);
    :meth:`verify` also checks every full shard's crc32. Safe to share between threads.

    ``max_open``: shard memmaps kept open at once (least recently used are closed; by default
    a quarter of the file-descriptor limit).
    """

    def __init__(self, root: str | Path, split: str = "train", *,
                 max_open: int | None = None) -> None:
        self.root, self.split = Path(root), split
        index = read_index(self.root)
        if split not in index["splits"]:
            known = ", ".join(sorted(index["splits"])) or "none"
            raise DatasetError(self.root / INDEX, f"no split {split!r} (splits: {known})")
        self.fields: dict[str, FieldSpec] = index["fields"]
        self.meta: dict = index["meta"]
        self.shard_samples = int(index["shard_samples"])
        s = index["splits"][split]
        self.shards: list[dict] = s["shards"]
        self._len = int(s["samples"])
        counts = np.array([int(sh["samples"]) for sh in self.shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._data_offset: dict[tuple[int, str], int] = {}
        for i, shard in enumerate(self.shards):
            for field, spec in self.fields.items():
                path = _shard_path(self.root, shard["name"], field)
                self._data_offset[i, field] = _check_shard_file(path, spec, int(counts[i]))
        if self._offsets[-1] != self._len:
            raise DatasetError(self.root / INDEX, f"corrupt index: split {split!r} says "
                               f"{self._len} samples, its shards {int(self._offsets[-1])}")
        self.episodes = self._load_episodes(int(s["episodes"]))
        self._max_open = max_open or _max_open_maps()
        self._maps: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _load_episodes(self, count: int) -> Episodes:
        path = _episodes_path(self.root, self.split)
        rec = _read_episodes(path, count)
        starts, lengths = rec["start"].astype(np.int64), rec["length"].astype(np.int64)
        ends = starts + lengths
        if count == 0 or starts[0] != 0 or ends[-1] != self._len or (lengths < 1).any() \
                or (starts[1:] != ends[:-1]).any():
            raise DatasetError(path, f"the {count} episodes do not tile rows "
                                     f"[0, {self._len}) exactly")
        return Episodes(starts, lengths, rec["return"].astype(np.float64))

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        # memmaps and the lock stay behind (a worker process reopens what it reads)
        state = self.__dict__.copy()
        state["_maps"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _map(self, shard: int, field: str) -> np.ndarray:
        key = (shard, field)
        with self._lock:
            arr = self._maps.get(key)
            if arr is not None:
                self._maps.move_to_end(key)
                return arr
        shape, dtype = self.fields[field]
        path = _shard_path(self.root, self.shards[shard]["name"], field)
        rows = int(self._offsets[shard + 1] - self._offsets[shard])
        # only the valid rows are mapped; a plain ndarray view indexes faster than np.memmap
        arr = np.memmap(path, dtype=dtype, mode="r", offset=self._data_offset[key],
                        shape=(rows, *shape)).view(np.ndarray)
        with self._lock:
            self._maps[key] = arr
            while len(self._maps) > self._max_open:
                # dropping the reference is enough: a thread still reading keeps it alive
                self._maps.popitem(last=False)
        return arr

    def _field_names(self, fields: Sequence[str] | None) -> list[str]:
        names = list(self.fields) if fields is None else list(fields)
        for name in names:
            if name not in self.fields:
                raise KeyError(f"no field {name!r} in {self.root} (fields: "
                               f"{', '.join(self.fields)})")
        return names

    def gather(self, rows: np.ndarray, fields: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
        """Rows ``rows`` (global row indices of this split, any order, repeats allowed) of
        each field, as arrays ``(len(rows), *shape)`` in the order asked."""
        names = self._field_names(fields)
        idx = np.asarray(rows)
        if idx.size and idx.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, got {idx.dtype}")
        idx = idx.reshape(-1).astype(np.int64, copy=False)
        out = {f: np.empty((idx.size, *self.fields[f][0]), self.fields[f][1]) for f in names}
        if idx.size == 0:
            return out
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self._len:
            raise IndexError(f"row {lo if lo < 0 else hi} out of range [0, {self._len}) of "
                             f"split {self.split!r} of {self.root}")
        # rows sorted, so each shard is one slice of them and is read in file order
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        shard = np.searchsorted(self._offsets, srt, side="right") - 1
        cuts = [0, *(np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist(), idx.size]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            s = int(shard[a])
            local, dest = srt[a:b] - self._offsets[s], order[a:b]
            for f in names:
                out[f][dest] = self._map(s, f)[local]
        return out

    def windows(self, starts: np.ndarray, length: int, fields: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
        """``(B, length, ...)`` arrays of rows ``starts[b] .. starts[b]+length-1`` (they may
        span shards and episodes), plus ``first`` (B, length): the row begins an episode."""
        starts = np.asarray(starts).reshape(-1).astype(np.int64, copy=False)
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        if starts.size and (starts.min() < 0 or starts.max() + length > self._len):
            raise IndexError(f"window starts must lie in [0, {self._len - length}] for length "
                             f"{length} in split {self.split!r} of {self.root}")
        rows = starts[:, None] + np.arange(length, dtype=np.int64)
        out = {f: a.reshape(*rows.shape, *a.shape[1:])
               for f, a in self.gather(rows, fields).items()}
        ep = self.episodes.starts
        at = np.searchsorted(ep, rows).clip(max=len(ep) - 1)
        out["first"] = ep[at] == rows
        return out

    def verify(self) -> None:
        """Recompute each full shard's crc32 against the index (reads the whole split)."""
        for i, shard in enumerate(self.shards):
            if shard["crc32"] is None:
                continue
            for field in self.fields:
                path = _shard_path(self.root, shard["name"], field)
                want = shard["crc32"].get(field)
                got = _crc32(self._map(i, field))
                if want is None or int(want) != got:
                    raise DatasetError(path, f"crc32 mismatch: index says {want}, the data "
                                             f"gives {got} (corrupt shard)")

    def close(self) -> None:
        with self._lock:
            self._maps.clear()

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------- loader


@dataclass
class _Sampler:
    """Makes batch k from (seed, k) alone; kept apart from the loader so that producer threads
    do not keep a forgotten loader alive."""

    dataset: ShardedDataset
    batch_size: int
    seed: int
    fields: list[str]
    seq_len: int | None
    pin_memory: bool

    def indices(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, k])
        high = len(self.dataset) - (self.seq_len or 1) + 1
        return rng.integers(0, high, size=self.batch_size, dtype=np.int64)

    def __call__(self, k: int) -> dict[str, torch.Tensor]:
        idx = self.indices(k)
        if self.seq_len is None:
            arrays = self.dataset.gather(idx, self.fields)
        else:
            arrays = self.dataset.windows(idx, self.seq_len, self.fields)
        batch = {f: torch.from_numpy(a) for f, a in arrays.items()}
        if self.pin_memory:
            batch = {f: t.pin_memory() for f, t in batch.items()}
        return batch


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Run:
    """One generation of producer threads (a ``load_state_dict`` starts a new one)."""

    def __init__(self, first: int) -> None:
        self.cond = threading.Condition()
        self.stop = False
        self.claim = first  # next batch a producer takes
        self.next = first  # next batch the consumer takes
        self.ready: dict[int, Any] = {}
        self.threads: list[threading.Thread] = []


def _produce(run: _Run, make: Callable[[int], Any], prefetch: int) -> None:
    while True:
        with run.cond:
            while not run.stop and run.claim >= run.next + prefetch:
                run.cond.wait()
            if run.stop:
                return
            k = run.claim
            run.claim += 1
        try:
            item = make(k)
        except BaseException as e:  # handed to the consumer, who re-raises it
            item = _Failure(e)
        with run.cond:
            if run.stop:
                return
            run.ready[k] = item
            run.cond.notify_all()
        if isinstance(item, _Failure):
            return


class BatchLoader:
    """Background thread(s) that sample batches from a ShardedDataset and hand them over as
    torch tensors.

    ``seq_len=None``: a batch is ``batch_size`` rows drawn uniformly with replacement. ``seq_len
    L``: ``batch_size`` windows of L contiguous rows (start uniform in ``[0, len - L]``), plus
    ``first``. Batch k's indices come from ``np.random.default_rng([seed, k])`` only, and
    batches are delivered in order k, k+1, ..., so the stream does not depend on ``threads``
    or ``prefetch`` and resumes exactly from ``start_batch`` / :meth:`load_state_dict`. A
    producer's exception is re-raised by ``next``.
    """

    def __init__(self, dataset: ShardedDataset, batch_size: int, *, seed: int,
                 fields: Sequence[str] | None = None, seq_len: int | None = None,
                 prefetch: int = 4, threads: int = 1, pin_memory: bool = False,
                 start_batch: int = 0) -> None:
        if batch_size < 1 or prefetch < 1 or threads < 1 or start_batch < 0:
            raise ValueError(f"need batch_size, prefetch, threads >= 1 and start_batch >= 0, "
                             f"got {batch_size}, {prefetch}, {threads}, {start_batch}")
        if seq_len is not None and not 1 <= seq_len <= len(dataset):
            raise ValueError(f"seq_len {seq_len} does not fit split {dataset.split!r} of "
                             f"{len(dataset)} rows")
        if len(dataset) == 0:
            raise ValueError(f"split {dataset.split!r} of {dataset.root} is empty")
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("BatchLoader: pin_memory without a CUDA device; not pinning",
                          stacklevel=2)
            pin_memory = False
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.seq_len, self.prefetch, self.threads = seq_len, prefetch, threads
        self.fields = dataset._field_names(fields)
        self._sampler = _Sampler(dataset, batch_size, seed, self.fields, seq_len, pin_memory)
        self.batches_consumed = start_batch
        self._run: _Run | None = None
        self._start(start_batch)

    def _start(self, first: int) -> None:
        self._stop_run()
        run = _Run(first)
        for i in range(self.threads):
            t = threading.Thread(target=_produce, args=(run, self._sampler, self.prefetch),
                                 name=f"BatchLoader-{i}", daemon=True)
            run.threads.append(t)
        self._run = run
        for t in run.threads:
            t.start()

    def _stop_run(self, timeout: float = 5.0) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        with run.cond:
            run.stop = True
            run.ready.clear()
            run.cond.notify_all()
        for t in run.threads:
            if t is not threading.current_thread():
                t.join(timeout)  # a producer finishes at most the batch it is gathering

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch k, made synchronously (the same tensors the threads deliver as batch k)."""
        return self._sampler(k)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        run = self._run
        if run is None:
            raise RuntimeError("BatchLoader is closed")
        with run.cond:
            while run.next not in run.ready:
                if not run.cond.wait(timeout=1.0) and \
                        not any(t.is_alive() for t in run.threads) and run.next not in run.ready:
                    raise RuntimeError("BatchLoader: every producer thread has stopped")
                if run.stop:
                    raise RuntimeError("BatchLoader is closed")
            item = run.ready[run.next]
            if isinstance(item, _Failure):
                raise item.error  # stays there: every later call raises it too
            del run.ready[run.next]
            run.next += 1
            run.cond.notify_all()
        self.batches_consumed += 1
        return item

    def state_dict(self) -> dict:
        return {"batch": self.batches_consumed}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from batch ``state["batch"]`` (the producers restart there)."""
        self.batches_consumed = int(state["batch"])
        self._start(self.batches_consumed)

    def close(self) -> None:
        """Stop the producer threads (promptly: they are told to, and are daemons anyway)."""
        self._stop_run()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._stop_run(timeout=0.0)
        except Exception:  # interpreter teardown: nothing to report to
            pass


# --------------------------------------------------------------------------------- CLI


def _info(root: Path) -> None:
    index = read_index(root)
    print(f"{root}  format {index['format']}, shard_samples {index['shard_samples']}")
    print("fields: " + ", ".join(f"{k} {_describe(v)}" for k, v in index["fields"].items()))
    if index["meta"]:
        print(f"meta: {json.dumps(index['meta'])}")
    print(f"{'split':<12}{'samples':>14}{'episodes':>10}{'shards':>8}{'mean return':>14}")
    for split in sorted(index["splits"]):
        ds = ShardedDataset(root, split)
        ret = ds.episodes.returns
        mean = float(np.nanmean(ret)) if np.isfinite(ret).any() else float("nan")
        print(f"{split:<12}{len(ds):>14}{len(ds.episodes):>10}{len(ds.shards):>8}{mean:>14.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.shards", description=__doc__
                                     .split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    verify = sub.add_parser("verify", help="check a dataset deeply (crc32 of every full shard)")
    verify.add_argument("root", type=Path)
    verify.add_argument("--split", default=None, help="one split (default: all)")
    info = sub.add_parser("info", help="splits, samples, episodes, mean return, fields")
    info.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "info":
            _info(args.root)
        else:
            splits = [args.split] if args.split else sorted(read_index(args.root)["splits"])
            for split in splits:
                ShardedDataset(args.root, split).verify()
                print(f"{split}: ok")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
