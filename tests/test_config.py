"""Every config composes; unknown keys and bad values fail naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from rl_scaling.config import register_configs
from rl_scaling.record import STUDY_KINDS
from rl_scaling.run import ConfigError, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))

register_configs()


def _compose(overrides, return_hydra_config=False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def test_default_config_is_the_mnist_study():
    cfg = _compose([])
    assert (cfg.env.family, cfg.model.family, cfg.algo.name) == ("mnist", "mnist_cnn", "ppo")
    validate(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = _compose([f"+experiment={name}"], return_hydra_config=True)
    assert cfg.experiment == name
    assert cfg.hydra.sweeper.params, f"{name} has no sweep grid"
    validate(cfg)
    # every experiment declares its study, and each axis names a key it sweeps or sets
    assert cfg.study.kind in STUDY_KINDS, f"{name} declares no study"
    swept = set(cfg.hydra.sweeper.params)
    for role, key in cfg.study.axes.items():
        assert key in swept or OmegaConf.select(cfg, key) is not None, (name, role, key)


def test_required_experiments_exist():
    assert {"procgen_width", "procgen_depth", "smoke", "mnist_width"} <= set(EXPERIMENTS)


def test_procgen_width_grid_spans_hilton_widths():
    cfg = _compose(["+experiment=procgen_width"], return_hydra_config=True)
    widths = [float(w) for w in cfg.hydra.sweeper.params["model.width"].split(",")]
    assert min(widths) == 1 / 64 and max(widths) == 8
    cfg = _compose(["+experiment=procgen_depth"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["model.depth"] == "1,2,4,8,16"


@pytest.mark.parametrize("override,key", [
    ("algo.lerning_rate=0.1", "lerning_rate"),
    ("model.widht=2", "widht"),
    ("env.num_levls=3", "num_levls"),
])
def test_unknown_key_names_the_key(override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        _compose([override])
    assert key in str(err.value) + str(err.value.__cause__)


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["model.width=wide"])
    assert "width" in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("model.width=-1", "model.width"),
    ("model.depth=0", "model.depth"),
    ("budget.value=0", "budget.value"),
    ("budget.counter=episodes", "budget.counter"),
    ("env.num_envs=0", "env.num_envs"),
    ("algo.num_minibatches=0", "algo.num_minibatches"),
    ("algo.gamma=1.5", "algo.gamma"),
    ("device=tpu", "device"),
    ("log_every=0 env_steps", "log_every"),
    ("checkpoint_every=10 iterations", "checkpoint_every"),
    ("eval_every=soon", "eval_every"),
    ("++env.eval.levels=3", "env.eval.levels"),
    ("study={kind:chinchilla}", "study.kind"),
    ("study={kind:scaling,axes:{size:model.width}}", "study.axes.size"),
    ("study={kind:scaling,axes:{width:model.widht}}", "study.axes.width"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(_compose([override]))
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_launchers_compose_and_run_dirs_ignore_resumable_keys():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(["+experiment=procgen_width", "hydra/launcher=slurm"],
                   return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.max_num_timeout > 0  # timed-out jobs requeue and resume
    cfg = _compose(["+experiment=mnist_width"], return_hydra_config=True)
    assert "LocalLauncher" in cfg.hydra.launcher._target_  # joblib's, plus GPU round-robin
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    # extending a sweep's budget must land in the same run dirs, so it resumes them
    assert {"budget.value", "checkpoint_every", "log_every", "logger"} <= excluded
    # every key a resumed run may change is out of the directory name, and nothing else
    from rl_scaling.run import RESUMABLE_KEYS

    assert {k for k in RESUMABLE_KEYS if k != "budget"} <= excluded
    assert "tag" not in excluded and "seed" not in excluded


# The experiments no other test runs, each run locally with small overrides (the catalogue's
# promise): one short single run each, through the real command line.
SMALL_RUNS = {
    "mnist_width": ["budget.value=2048"],
    "gym_utd": ["env.id=Pendulum-v1", "budget.value=1500", "algo.learning_starts=500",
                "seeds_per_process=1", "eval_every=null"],
    "dmc_utd_width": ["env.id=cartpole-swingup", "budget.value=1500",
                      "algo.learning_starts=500", "seeds_per_process=1", "eval_every=null"],
    "pointmass_objects": ["budget.value=4096", "eval_every=null"],
    "procgen_depth": ["model.depth=1", "env.num_envs=4", "env.eval.num_envs=4",
                      "algo.num_steps=32", "algo.num_minibatches=2", "budget.value=256",
                      "eval_every=null"],
}
EXTRAS = {"gym_utd": "gymnasium", "dmc_utd_width": "dm_control", "procgen_depth": "procgen"}


@pytest.mark.parametrize("name", sorted(SMALL_RUNS))
def test_experiment_runs_locally_with_small_overrides(name, tmp_path):
    import json
    import subprocess
    import sys

    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    run_dir = tmp_path / name
    out = subprocess.run(
        [sys.executable, "-m", "rl_scaling.sweep", f"+experiment={name}", *SMALL_RUNS[name],
         f"hydra.run.dir={run_dir}", "logger.progress=none", "torch_threads=1"],
        cwd=CONFIGS.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    budget = int(next(o for o in SMALL_RUNS[name] if o.startswith("budget.value=")).split("=")[1])
    assert info["status"] == "finished" and info["experiment"] == name
    assert info["env_steps"] == budget and info["flops"] > 0
