"""The Procgen experiments run all three of Hilton et al.'s games (CoinRun, StarPilot,
FruitBot) with PPO or PPG-EWMA; the analysis fits each game on its own and reads the
fail-to-success ratio beside intrinsic performance."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from agents.evaluation import EpisodeLog, fail_to_success
from analysis import pipeline
from analysis.synthetic import hilton_width_sweep
from rl_scaling.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", ["procgen_width", "procgen_depth"])
@pytest.mark.parametrize("algo", ["ppo", "ppo_ewma", "ppg_ewma"])
def test_procgen_experiments_sweep_three_games_with_each_trainer(experiment, algo):
    cfg = _compose([f"+experiment={experiment}", f"algo={algo}"])
    params = cfg.hydra.sweeper.params
    assert params["env.id"].split(",") == ["coinrun", "starpilot", "fruitbot"]
    assert params["env.distribution_mode"].split(",") == ["easy", "hard"]
    assert cfg.study.axes.task == "env.id"
    assert cfg.algo.name == algo
    assert cfg.algo.lr_depth_rule is (experiment == "procgen_depth")


def test_task_labels_add_the_distribution_mode_where_it_varies():
    import pandas as pd

    from analysis.scaling import task_labels

    df = pd.DataFrame({"env.id": ["coinrun", "coinrun", "starpilot", "starpilot"],
                       "env.distribution_mode": ["easy", "hard", "easy", "hard"]})
    assert task_labels(df, "env.id").tolist() == ["coinrun/easy", "coinrun/hard",
                                                  "starpilot/easy", "starpilot/hard"]
    one_mode = df.assign(**{"env.distribution_mode": "easy"})
    assert task_labels(one_mode, "env.id").tolist() == ["coinrun", "coinrun", "starpilot",
                                                        "starpilot"]
    assert task_labels(df[df["env.id"] == "coinrun"].assign(
        **{"env.distribution_mode": "easy"}), "env.id") is None  # one task: no split


def test_fail_to_success_is_logged_where_the_env_reports_success():
    log = EpisodeLog()
    log.add({"episode_return": [10.0, 0.0, 10.0, 10.0], "episode_length": [5, 9, 4, 6],
             "episode_success": [True, False, True, True]})
    m = log.metrics()
    assert m["success_rate"] == 0.75 and m["fail_to_success"] == pytest.approx(1 / 3)
    assert fail_to_success(0.0) is None


def test_analysis_fits_each_game_and_the_fail_to_success_ratio(tmp_path):
    runs = tmp_path / "runs"
    for game in ("coinrun", "starpilot"):
        hilton_width_sweep(runs, seeds=(0, 1), n_points=32, running=False, failed=False,
                           env_id=game, success=game == "coinrun",
                           study={"kind": "scaling", "axes": {"width": "model.width",
                                                              "task": "env.id"}})
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png"]) == 0
    st = json.loads((out / "laws.json").read_text())["studies"]["procgen_width/scaling"]
    assert st["context"]["tasks"] == "coinrun, starpilot"
    for game in ("coinrun", "starpilot"):
        fit = st["fits"][f"{game}: intrinsic performance (Hilton et al.)"]
        assert 0.3 < fit["params"]["alpha_N"] < 0.6, game
    ratio = st["fits"]["coinrun: fail_to_success vs intrinsic performance"]
    assert ratio["params"]["k"] < 0  # more intrinsic performance, fewer failures per success
    assert "starpilot: fail_to_success vs intrinsic performance" not in st["fits"]
    assert any(f.endswith("_fail_to_success_vs_intrinsic.png") for f in st["figures"])


def test_procgen_width_with_ppg_ewma_runs_as_a_multirun(tmp_path):
    pytest.importorskip("procgen")
    sweep = tmp_path / "runs"
    cmd = [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=procgen_width",
           "algo=ppg_ewma", "model.width=0.125", "env.id=starpilot,fruitbot",
           "env.distribution_mode=easy", "seed=1",
           "env.num_envs=4", "env.eval.num_envs=4", "algo.num_steps=32",
           "algo.num_minibatches=2", "algo.n_pi=2", "algo.aux_minibatches_per_iteration=2",
           "budget.value=640", "eval_every=null", "logger.progress=none", "torch_threads=1",
           f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    infos = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert sorted(i["env"] for i in infos) == ["fruitbot", "starpilot"]
    for info in infos:
        assert info["status"] == "finished" and info["algo"] == "ppg_ewma"
        assert set(info["networks"]) == {"policy", "proximal", "aux_value"}
        lines = [json.loads(x) for x in (Path(info["run_dir"]) / "metrics.jsonl").open()]
        assert lines[-1]["env_steps"] == 640 and any("aux_kl" in x for x in lines)
