"""Run record and checkpoint files: append/flush, truncation on resume, atomic writes, errors."""

import json

import pytest
import torch

from rl_scaling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rl_scaling.record import RunRecord

COUNTERS = {"updates": 0, "samples": 0, "flops": 0.0, "wall_time": 0.0}


def test_metrics_lines_carry_counters_and_are_flushed(tmp_path):
    rec = RunRecord(tmp_path)
    rec.append_metrics({"env_steps": 10, **COUNTERS, "return_mean": float("nan")})
    # visible to another reader before close: flushed per line
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert line["env_steps"] == 10 and line["return_mean"] is None  # NaN -> null (strict JSON)
    with pytest.raises(KeyError, match="flops"):
        rec.append_metrics({"env_steps": 1, "updates": 0, "samples": 0, "wall_time": 0})
    rec.close()


def test_truncate_drops_points_after_checkpoint_and_torn_line(tmp_path):
    """The cut is on ``iteration``: a dataset-only run logs env_steps 0 on every line."""
    rec = RunRecord(tmp_path)
    for it in (1, 2, 3):
        rec.append_metrics({**COUNTERS, "env_steps": 0, "samples": 64 * it, "iteration": it})
    rec.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 4, "upd')  # killed mid-write
    assert [r["iteration"] for r in rec.read_metrics()] == [1, 2, 3]
    assert rec.truncate_metrics(2) == 2
    assert [r["samples"] for r in rec.read_metrics()] == [64, 128]


def test_run_info_carries_a_checked_study_and_every_start(tmp_path):
    from rl_scaling.record import RECORD_FORMAT, check_study, new_run_info, slurm_ids

    info = new_run_info(run_id="abc", experiment="e", seed=1,
                        study={"kind": "utd", "axes": {"sigma": "algo.utd"}})
    assert info["format"] == RECORD_FORMAT
    assert info["study"] == {"kind": "utd", "axes": {"sigma": "algo.utd"}, "metric": None}
    for bad, key in (({"kind": "x"}, "study.kind"), ({"kind": "utd", "axes": {"ratio": "a"}},
                                                     "study.axes.ratio"),
                     ({"kind": "utd", "metrics": "x"}, "study.metrics")):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            check_study(bad)
    rec = RunRecord(tmp_path)
    rec.write_run_json(info)
    env = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_RESTART_COUNT": "1"}
    rec.add_start({"pid": 1, **slurm_ids(env)})
    rec.add_start({"pid": 2, **slurm_ids({})})
    starts = rec.read_run_json()["starts"]
    assert starts == [{"pid": 1, "job_id": "77", "array_job_id": "70", "array_task_id": "3",
                       "restart_count": "1"}, {"pid": 2}]


def test_run_json_status_is_validated(tmp_path):
    rec = RunRecord(tmp_path)
    rec.write_run_json({"status": "running", "id": "x"})
    assert rec.update_run_json(status="finished")["id"] == "x"
    with pytest.raises(ValueError, match="status"):
        rec.update_run_json(status="done")


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(path, {"counters": {"env_steps": 5}, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(path, required=("counters",))["counters"]["env_steps"] == 5
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind

    path.write_bytes(path.read_bytes()[:40])  # truncated file
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint .*latest\.pt"):
        load_checkpoint(path)
    torch.save({"format": 99}, path)
    with pytest.raises(CheckpointError, match="incompatible checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"model": {}})
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, required=("counters",))


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_is_live_on_a_terminal_and_plain_lines_otherwise():
    from rl_scaling.logger import Progress

    tty = _Stream(tty=True)
    bar = Progress(1000, "auto", stream=tty)
    for steps in (100, 200, 300):
        bar.update(steps, {"return_mean": 0.5})
    bar.update(1000, {"return_mean": 0.75}, final=True)
    assert bar.mode == "bar" and tty.text.count("\r") == 4 and tty.text.endswith("\n")
    assert "steps/s" in tty.text and "return 0.750" in tty.text and "ETA" in tty.text

    log = _Stream(tty=False)
    plain = Progress(1000, "auto", plain_every_s=3600, stream=log)
    for steps in (100, 200, 300):
        plain.update(steps, {"return_mean": 0.5})
    plain.update(1000, {}, final=True)
    # the first line, then nothing until the interval passes, then the final line
    assert plain.mode == "plain" and "\r" not in log.text and log.text.count("\n") == 2
    with pytest.raises(ValueError, match="logger.progress"):
        Progress(10, "fancy")


class _FakeWandbRun:
    """Records what the logger asks of a wandb run."""

    def __init__(self) -> None:
        self.metrics: list[tuple[str, str | None]] = []
        self.logged: list[dict] = []
        self.summary: dict = {}
        self.exit_code: int | None = None

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.metrics.append((name, step_metric))

    def log(self, row: dict) -> None:
        self.logged.append(row)

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


@pytest.mark.parametrize("status,exit_code", [("finished", 0), ("diverged", 1), ("failed", 1),
                                              ("running", 0)])
def test_wandb_mirror_counters_status_and_finish(tmp_path, monkeypatch, status, exit_code):
    import sys
    import types

    from rl_scaling.logger import MetricsLogger

    run = _FakeWandbRun()
    inits: list[dict] = []

    def init(**kwargs):
        inits.append(kwargs)
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = MetricsLogger(RunRecord(tmp_path), backend="wandb", wandb_kwargs={"id": "abc"},
                           step_metric="samples")
    row = {"env_steps": 64, "updates": 2, "samples": 128, "flops": 1e9, "wall_time": 1.0,
           "return_mean": None, "loss": 0.5}
    logger.log(row)
    logger.close(status)
    assert inits[0]["mode"] == "offline" and inits[0]["id"] == "abc"
    assert ("env_steps", None) in run.metrics and ("flops", None) in run.metrics
    assert ("samples", None) in run.metrics
    assert ("*", "samples") in run.metrics  # the budget counter is the default x-axis
    assert run.logged == [{k: v for k, v in row.items() if v is not None}]  # None is skipped
    assert run.summary["status"] == status and run.exit_code == exit_code
    assert RunRecord(tmp_path).read_metrics()[0]["env_steps"] == 64  # local file too



def test_progress_lines_name_the_job_have_a_rate_from_the_first_line_and_never_a_negative_eta():
    from rl_scaling.logger import Progress

    log = _Stream(tty=False)
    progress = Progress(1000, "plain", plain_every_s=0, stream=log, name="model.width=0.25",
                        start=200)
    t0 = progress._t_start
    first = progress.line(400, {"return_mean": 0.5}, now=t0 + 2.0)
    # named, a rate at the first line (200 steps in 2 s since the resumed start), an ETA
    assert first.startswith("[model.width=0.25] steps 400/1.00k"), first
    assert "100.0 steps/s" in first and "ETA 0:06" in first and "nan" not in first
    # the last iteration overshoots the budget: capped at 100%, no negative ETA
    last = progress.line(1100, {"return_mean": 0.7, "wall_time": 75.0}, final=True,
                         now=t0 + 9.0)
    assert "(100.0%)" in last and "done in 1:15" in last and "-" not in last.split("|")[-1]
    over = progress.line(1200, {}, now=t0 + 10.0)
    assert "ETA" not in over and "done in" in over
    # a FLOP budget reads in FLOP-sized units, not thousands of G
    flops = Progress(2e15, "plain", stream=log, counter="flops").line(1e15, {})
    assert flops.startswith("flops 1.00P/2.00P ( 50.0%)"), flops
