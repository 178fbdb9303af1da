"""Read run records into one tidy table (one row per run per log point).

A directory is a run iff it holds ``run.json`` (DESIGN.md, "A run record"); runs may sit
at any depth under a runs root. Each row carries

- the run's identity from ``run.json``: ``run_id``, ``run_dir``, ``experiment``,
  ``status``, ``seed``, ``algo``, ``env``, ``model``, ``params.total``,
  ``params.effective``, ``flops_per_forward.total``, ``flops_per_forward.effective``,
  ``git_rev``, ``start_time``, ``end_time``, ``versions.*``;
- bookkeeping: ``root`` (the runs root it was found under), ``step`` (log point index,
  -1 for a run with no log point yet, which still gets one row so it is listed),
  ``n_points``, ``finished`` (status is ``finished``), ``truncated`` (a malformed line was
  skipped, typically the last line of a killed run);
- the log point itself: the counters ``env_steps``, ``updates``, ``samples``, ``flops``,
  ``wall_time`` and ``iteration`` (NaN where a record lacks one; ``iteration`` is new in
  record format 2) and whichever metrics the line has (``return_mean``, ``eval_return``,
  ``val_loss``, ...);
- the rest of ``run.json`` flattened the same way: the declared study as ``study.kind``,
  ``study.metric`` and ``study.axes.<role>`` (the config key of each role; all missing for
  a record without a declaration), ``networks.<role>.params.total`` ..., ``budget.counter``,
  ``budget.value``, ``format``, and ``starts`` as a JSON string;
- the resolved config, flattened with dots (``model.width``, ``algo.lr``, ``env.id``).
  Lists become JSON strings so every cell is a scalar. Where a config key repeats a
  ``run.json`` field (``seed``, ``experiment``) the ``run.json`` value wins.

``collect(roots, cache=path)`` keeps the table as Parquet beside an index of
(size, mtime) per run file and re-reads only the runs whose files changed. The index
carries the cache format (:data:`CACHE_FORMAT`); a cache written in another format (by an
older collector, whose rows may lack columns or mean other things) is read from scratch.

The record format itself (counters, how ``metrics.jsonl`` is parsed) is defined once, in
:mod:`rl_scaling.record`; this module only turns records into rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rl_scaling.record import COUNTERS, ORDER_COUNTER, RunRecord, read_metrics_file

log = logging.getLogger(__name__)

RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl")
# Every row has these columns (NaN where a record lacks one): the record's counters and the
# per-line order counter (absent from records written before record format 2).
ROW_COUNTERS = (*COUNTERS, ORDER_COUNTER)
# Format of the Parquet cache and its index. Bump it whenever read_run's rows change (new or
# renamed columns, other units): a cache in another format is ignored and rebuilt, since
# reusing its rows would silently mix old and new rows. 1: index was a bare {run_dir: sig};
# 2: format-1 records; 3: record format 2 (study.*, networks.*, budget.*, starts, iteration).
CACHE_FORMAT = 3
# Directories inside a run or a sweep that never hold other runs; skipping them keeps the
# walk fast on roots full of checkpoints and wandb caches.
_SKIP_DIRS = {"checkpoints", "wandb", ".hydra", "__pycache__", ".git"}


class RunsRootError(Exception):
    """A runs root is missing or holds no run record; the message names the path."""


def find_run_dirs(roots: str | Path | Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Return ``(root, run_dir)`` for every directory holding ``run.json`` under ``roots``.

    Raises ``RunsRootError`` naming the path when a root does not exist or when no root
    holds any run record.
    """
    if isinstance(roots, str | Path):
        roots = [roots]
    found: list[tuple[Path, Path]] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise RunsRootError(f"runs root does not exist or is not a directory: {root}")
        for dirpath, dirnames, filenames in os.walk(root):
            if "run.json" in filenames:
                found.append((root, Path(dirpath)))
                dirnames[:] = []  # a run never nests another run
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    if not found:
        names = ", ".join(str(r) for r in roots)
        raise RunsRootError(f"no run records (directories with run.json) under: {names}")
    return sorted(found, key=lambda rr: str(rr[1]))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dots; lists and tuples become JSON strings (scalar cells)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Parse ``metrics.jsonl`` (:func:`rl_scaling.record.read_metrics_file`); return the log
    points and how many lines were skipped.

    A malformed line (the last one of a killed run is often cut mid-write) is skipped with
    a warning rather than failing the whole analysis.
    """
    path = Path(path)
    rows, skipped = read_metrics_file(path)
    if skipped:
        n_lines = len(path.read_text(encoding="utf-8", errors="replace").splitlines())
        for lineno in skipped:
            where = "last line" if lineno == n_lines else f"line {lineno}"
            log.warning("skipping malformed %s of %s", where, path)
    return rows, len(skipped)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        log.warning("no config.yaml in %s; config columns will be missing", path.parent)
        return {}
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as err:
        log.warning("unreadable config.yaml in %s (%s)", path.parent, err)
        return {}
    return cfg if isinstance(cfg, dict) else {}


def read_run(run_dir: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read one run directory into its rows of the tidy table (see the module docstring).

    Returns an empty frame (with a warning) when ``run.json`` itself is unreadable.
    """
    run_dir = Path(run_dir)
    try:
        record = RunRecord(run_dir).read_run_json()
        if not isinstance(record, dict):
            raise ValueError("run.json is not an object")
    except (OSError, ValueError) as err:  # RecordError (corrupt JSON) is a ValueError
        log.warning("skipping run %s: unreadable run.json (%s)", run_dir, err)
        return pd.DataFrame()
    meta = flatten(record)
    meta.pop("run_dir", None)  # where the trainer wrote it; may differ from where it is now
    meta["run_id"] = str(meta.pop("id", run_dir.name))
    meta["run_dir"] = str(run_dir.resolve())
    meta["root"] = str(Path(root).resolve()) if root is not None else ""
    meta["status"] = str(meta.get("status") or "unknown")
    meta["finished"] = meta["status"] == "finished"

    config = flatten(_read_yaml(run_dir / "config.yaml"))
    points, skipped = read_metrics(run_dir / "metrics.jsonl")
    meta["truncated"] = skipped > 0
    meta["n_points"] = len(points)

    if points:
        frame = pd.DataFrame.from_records(points)
        for col in frame.columns:
            # The trainer writes NaN as null; a metric that is null on every line so far
            # must still be a float column, not an object one.
            if frame[col].dtype == object and all(
                    v is None or isinstance(v, int | float) for v in frame[col]):
                frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
        frame.insert(0, "step", range(len(points)))
    else:
        # One placeholder row so a run with no log point yet is still listed and counted.
        frame = pd.DataFrame({"step": [-1]})
    for name in ROW_COUNTERS:
        if name not in frame:
            frame[name] = float("nan")
    extra = {k: v for k, v in {**config, **meta}.items() if k not in frame.columns}
    const = pd.DataFrame({k: [v] * len(frame) for k, v in extra.items()}, index=frame.index)
    return pd.concat([const, frame], axis=1)


def _signature(run_dir: Path) -> list[list[int] | None]:
    """(size, mtime_ns) of each run file: the cache key that says a run changed."""
    sig: list[list[int] | None] = []
    for name in RUN_FILES:
        try:
            st = (run_dir / name).stat()
            sig.append([st.st_size, st.st_mtime_ns])
        except OSError:
            sig.append(None)
    return sig


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Identity first, then counters, metrics, and the dotted config columns."""
    first = ["run_id", "experiment", "status", "seed", "algo", "env", "model", "step",
             *ROW_COUNTERS]
    first = [c for c in first if c in df.columns]
    rest = [c for c in df.columns if c not in first]
    undotted = [c for c in rest if "." not in c]
    dotted = sorted(c for c in rest if "." in c)
    return df[first + undotted + dotted]


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Make object columns that mix types (e.g. a config value int in one run, str in
    another) strings, since Parquet needs one type per column."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1 and not kinds <= {int, float, bool}:
                df[col] = df[col].map(lambda v: v if v is None or v != v else str(v))
            elif kinds and kinds <= {int, float} and len(kinds) > 1:
                df[col] = pd.to_numeric(df[col])
    return df


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["run_id", "run_dir", "status", "step", *ROW_COUNTERS])
    return pd.concat(frames, ignore_index=True, sort=False)


def collect(
    roots: str | Path | Sequence[str | Path],
    cache: str | Path | None = None,
) -> pd.DataFrame:
    """Read every run record under ``roots`` into the tidy table.

    With ``cache`` (a ``.parquet`` path) the table is stored there with an index of file
    sizes and mtimes per run (``<cache>.index.json``: ``{"format": CACHE_FORMAT, "runs":
    {run_dir: signature}}``); later calls re-read only runs whose files changed, drop runs
    that disappeared and add new ones. A cache whose index has another ``format`` (or none:
    an older collector's) is not used: every run is read afresh and the cache rewritten.
    ``df.attrs["collect"]`` says which runs were ``read`` afresh, taken from the ``cached``
    table, or ``dropped``, and ``stale_cache`` the format of a cache that was discarded.
    Raises ``RunsRootError`` when a root is missing or nothing is found.
    """
    found = find_run_dirs(roots)
    signatures = {str(d.resolve()): _signature(d) for _, d in found}

    cached: pd.DataFrame | None = None
    index: dict[str, Any] = {}
    cache_path = Path(cache) if cache is not None else None
    index_path = cache_path.with_name(cache_path.name + ".index.json") if cache_path else None
    stale: Any = None
    if cache_path is not None and cache_path.exists() and index_path.exists():
        try:
            with open(index_path) as f:
                raw = json.load(f)
            fmt = raw.get("format") if isinstance(raw, dict) else None
            if fmt != CACHE_FORMAT:
                # an older (or newer) collector's table: its rows cannot be trusted
                stale = fmt if fmt is not None else 1
                log.warning("cache %s has format %s, not %s: reading every run afresh",
                            cache_path, stale, CACHE_FORMAT)
            elif not isinstance(raw.get("runs"), dict):
                raise ValueError("index has no 'runs' mapping")
            else:
                index = raw["runs"]
                cached = pd.read_parquet(cache_path)
        except (OSError, ValueError) as err:  # a corrupt cache is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s (%s)", cache_path, err)
            cached, index = None, {}

    keep: list[str] = []
    frames: list[pd.DataFrame] = []
    read: list[str] = []
    for root, run_dir in found:
        key = str(run_dir.resolve())
        if cached is not None and index.get(key) == signatures[key]:
            keep.append(key)
        else:
            frames.append(read_run(run_dir, root))
            read.append(key)
    dropped = sorted(set(index) - set(signatures)) if cached is not None else []
    if cached is not None and keep:
        frames.insert(0, cached[cached["run_dir"].isin(keep)])
    table = _order_columns(_concat(frames))
    table = table.sort_values(["run_dir", "step"], kind="stable").reset_index(drop=True)

    if cache_path is not None and (read or dropped or cached is None):
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        table = _parquet_safe(table)
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, cache_path)  # never leave a half-written cache behind
        with open(index_path, "w") as f:
            json.dump({"format": CACHE_FORMAT, "runs": signatures}, f)
    table.attrs["collect"] = {"read": read, "cached": keep, "dropped": dropped,
                              "stale_cache": stale}
    return table


def run_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: identity, status, flags, log points and the last counters."""
    if table.empty:
        return pd.DataFrame()
    last = table.sort_values("step").groupby("run_dir", sort=True).tail(1)
    cols = [c for c in ("run_id", "experiment", "status", "seed", "finished", "truncated",
                        "n_points", "env_steps", "samples", "flops", "run_dir")
            if c in last.columns]
    return last[cols].reset_index(drop=True)
