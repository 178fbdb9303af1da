"""bench/pointmass.py runs end to end in --quick mode and its scalar baseline is the same
dynamics as the vectorised env (no timing assertions: speed targets live in bench/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pointmass", ROOT / "bench/pointmass.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_table_has_every_row_with_positive_numbers(bench, capsys):
    rows = bench.main(["--quick", "--levels", "1,3", "--worlds", "4,8"])
    out = capsys.readouterr().out
    assert [(r["level"], r["worlds"]) for r in rows] == [(1, 4), (1, 8), (3, 4), (3, 8)]
    for r in rows:
        assert r["vectorised"] > 0 and r["loop"] > 0 and r["speedup"] > 0
        if r["level"] == 1:
            assert r["scalar"] > 0 and r["scalar_speedup"] > 0
        else:
            assert r["scalar"] is None
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| level | worlds | vectorised steps/s | per-world loop steps/s")
    body = [line.split("|")[1:-1] for line in table[1:]]
    assert [(c[0].strip(), c[1].strip()) for c in body] == [
        ("1", "4"), ("1", "8"), ("3", "4"), ("3", "8")]
    for cells in body:
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0
        assert float(cells[4].strip().rstrip("x")) > 0
    assert "target 1M world-steps/s at level 1:" in out


def test_scalar_step_reproduces_the_vectorised_env(bench):
    assert bench.check_scalar(worlds=32, steps=30) > 32 * 5


def test_scalar_check_catches_different_dynamics(bench, monkeypatch):
    monkeypatch.setattr(bench, "DAMPING", bench.DAMPING + 0.01)
    with pytest.raises(AssertionError):
        bench.check_scalar(worlds=32, steps=30)


def test_bad_level_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--levels", "9", "--worlds", "4"])
