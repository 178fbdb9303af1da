"""The smoke sweep through ``hydra/launcher=slurm`` (hydra-submitit-launcher) on a real Slurm.

Opt-in: marked ``slurm`` and skipped unless ``sinfo`` answers within 5 s and the submitit
launcher is installed. docs/slurm.md has a single-node recipe for a test cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Small enough for a 2-core test node; the project's slurm.yaml asks for a GPU node.
SMALL = ("hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10")


def _slurm_answers() -> str | None:
    """None if Slurm is usable here, else why not."""
    if shutil.which("sinfo") is None:
        return "sinfo not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo did not answer: {err}"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    if "up" not in out.stdout.split():
        return "no Slurm partition is up"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')"
    return None


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_smoke_sweep_on_slurm(tmp_path: Path) -> None:
    why = _slurm_answers()
    if why:
        pytest.skip(why)
    partition = os.environ.get("RL_SCALING_SLURM_PARTITION")
    extra = [f"hydra.launcher.partition={partition}"] if partition else []
    sweep_dir = tmp_path / "sweep"  # the job runs on a Slurm node: tmp_path must be shared
    cmd = [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=smoke",
           "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *SMALL, *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=840, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for width in ("0.125", "0.25"):
        run_dir = sweep_dir / f"model.width={width}"
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished", info
        assert info["starts"][-1].get("job_id"), info["starts"]  # Slurm ids of every start
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 4, lines
        assert (run_dir / "checkpoints" / "latest.pt").exists()
