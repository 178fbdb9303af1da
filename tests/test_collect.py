"""Collector: nested run dirs, running/failed runs, truncated lines, Parquet cache refresh."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from analysis import collect, synthetic


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    synthetic.hilton_width_sweep(root, widths=(0.5, 1.0, 2.0), seeds=(0, 1), n_points=8)
    # A run that has just started: run.json and config but no log point yet.
    synthetic.write_run(root / "deep" / "nested" / "fresh", {"experiment": "x", "seed": 0,
                        "model": {"width": 3.0}}, [], status="running", params=10,
                        flops_per_forward=20)
    return root


def test_collects_every_run_with_flags(runs: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        table = collect.collect(runs)
    per_run = collect.run_summary(table)
    assert len(per_run) == 7  # 3 widths x 2 seeds + the fresh nested run
    status = per_run.set_index("run_id")["status"]
    assert status["model.width=2.0,seed=1"] == "running"
    assert status["model.width=0.5,seed=1"] == "failed"
    assert status["fresh"] == "running"
    # The failed run's last line was cut mid-write: skipped with a warning, flagged.
    failed = table[table["run_id"] == "model.width=0.5,seed=1"]
    assert failed["truncated"].all()
    assert failed["step"].max() == failed["n_points"].iloc[0] - 1
    assert any("malformed last line" in r.message for r in caplog.records)
    # Config flattened with dots, counters and metrics as columns.
    for col in ("model.width", "algo.lr", "env.id", "env_steps", "flops", "return_mean",
                "params.effective", "finished"):
        assert col in table.columns, col
    # A run with no log point yet is listed with one placeholder row.
    fresh = table[table["run_id"] == "fresh"]
    assert len(fresh) == 1 and fresh["step"].iloc[0] == -1 and fresh["env_steps"].isna().all()
    finished = table[table["run_id"] == "model.width=1.0,seed=0"]
    assert len(finished) == 8 and finished["finished"].all()
    assert (finished["model.width"] == 1.0).all()


def test_malformed_middle_line_and_bad_run_json(tmp_path: Path):
    run = synthetic.write_run(tmp_path / "r", {"experiment": "e", "seed": 1},
                              [{"env_steps": i, "updates": i, "samples": i, "flops": i,
                                "wall_time": i, "return_mean": i} for i in range(3)],
                              params=1, flops_per_forward=1)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    table = collect.collect(tmp_path)
    assert len(table) == 3 and table["truncated"].all()
    assert set(table["run_id"]) == {"r"}


def test_missing_or_empty_root_names_the_path(tmp_path: Path):
    with pytest.raises(collect.RunsRootError, match="nope"):
        collect.collect(tmp_path / "nope")
    with pytest.raises(collect.RunsRootError, match=str(tmp_path)):
        collect.collect(tmp_path)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Cells as Python objects with None for every missing value (pandas 2 and 3 differ in
    how a Parquet round trip stores missing strings)."""
    df = df.reset_index(drop=True).astype(object)
    return df.where(df.notna(), None)


def test_cache_refreshes_only_changed_runs(runs: Path, tmp_path: Path):
    cache = tmp_path / "cache" / "table.parquet"
    first = collect.collect(runs, cache=cache)
    assert cache.exists() and len(first.attrs["collect"]["read"]) == 7
    second = collect.collect(runs, cache=cache)
    assert second.attrs["collect"]["read"] == []
    assert len(second.attrs["collect"]["cached"]) == 7
    pd.testing.assert_frame_equal(_plain(first), _plain(second), check_dtype=False)

    # The running run logs one more point; only its mtime/size changes.
    running = runs / "procgen_width" / "model.width=2.0,seed=1"
    with open(running / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"env_steps": 2e7, "updates": 1, "samples": 1, "flops": 1e18,
                            "wall_time": 1.0, "return_mean": 9.0}) + "\n")
    # Touching a file's mtime alone (same size) also counts as a change.
    touched = runs / "procgen_width" / "model.width=1.0,seed=0" / "run.json"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = collect.collect(runs, cache=cache)
    read = {Path(p).name for p in third.attrs["collect"]["read"]}
    assert read == {"model.width=2.0,seed=1", "model.width=1.0,seed=0"}
    grown = third[third["run_id"] == "model.width=2.0,seed=1"]
    assert grown["return_mean"].iloc[-1] == 9.0
    assert len(third) == len(first) + 1

    # A run that disappears is dropped from the cached table.
    import shutil
    shutil.rmtree(runs / "deep")
    fourth = collect.collect(runs, cache=cache)
    assert len(fourth.attrs["collect"]["dropped"]) == 1
    assert "fresh" not in set(fourth["run_id"])


def test_cache_from_another_format_is_read_from_scratch(runs: Path, tmp_path: Path):
    """An index without this collector's format (an older collector wrote a bare
    {run_dir: signature}) is not trusted: every run is read again and the cache rewritten
    in the current format; a cache written now is reused."""
    cache = tmp_path / "table.parquet"
    index_path = cache.with_name(cache.name + ".index.json")
    first = collect.collect(runs, cache=cache)
    index = json.loads(index_path.read_text())
    assert index["format"] == collect.CACHE_FORMAT and len(index["runs"]) == 7
    assert first.attrs["collect"]["stale_cache"] is None
    # what an older collector left: same runs, same signatures, no format; its rows lack a
    # column this one writes
    index_path.write_text(json.dumps(index["runs"]))
    pd.read_parquet(cache).drop(columns=["n_points"]).to_parquet(cache, index=False)
    again = collect.collect(runs, cache=cache)
    assert len(again.attrs["collect"]["read"]) == 7 and again.attrs["collect"]["cached"] == []
    assert again.attrs["collect"]["stale_cache"] == 1
    assert again["n_points"].notna().all()
    assert json.loads(index_path.read_text())["format"] == collect.CACHE_FORMAT
    # a different format number (a bump) is stale too
    index_path.write_text(json.dumps({"format": collect.CACHE_FORMAT - 1,
                                      "runs": index["runs"]}))
    assert len(collect.collect(runs, cache=cache).attrs["collect"]["read"]) == 7
    reused = collect.collect(runs, cache=cache)
    assert reused.attrs["collect"]["read"] == [] and len(reused.attrs["collect"]["cached"]) == 7


def test_record_format_2_fields_become_columns(runs: Path):
    """run.json's declared study, per-role networks, budget and starts are flattened into
    usable columns; every line's ``iteration`` is a counter column (NaN where a record
    predates it); none of the study columns counts as a config key."""
    from analysis import curves
    from rl_scaling.record import RECORD_FORMAT, read_metrics_file

    table = collect.collect(runs)
    run = table[table["run_id"] == "model.width=1.0,seed=0"]
    assert (run["study.kind"] == "scaling").all()
    assert (run["study.axes.width"] == "model.width").all()
    assert (run["study.metric"] == "return_mean").all()
    assert (run["format"] == RECORD_FORMAT).all()
    assert (run["networks.model.params.effective"] == run["params.effective"]).all()
    assert (run["budget.counter"] == "env_steps").all() and (run["budget.value"] > 0).all()
    starts = json.loads(run["starts"].iloc[0])
    assert isinstance(starts, list) and starts[0]["host"] == "synthetic"
    assert run["iteration"].tolist() == list(range(1, len(run) + 1))
    assert not [c for c in curves.config_columns(table) if c.startswith(("study.", "networks."))]
    # the collector parses metrics.jsonl exactly as the record module does
    path = runs / "procgen_width" / "model.width=1.0,seed=0" / "metrics.jsonl"
    rows, skipped = read_metrics_file(path)
    assert collect.read_metrics(path) == (rows, len(skipped))
    # a record without a declaration (the fresh run) has no study
    fresh = table[table["run_id"] == "fresh"]
    assert fresh["study.kind"].isna().all() and fresh["iteration"].isna().all()
