"""The run context's bookkeeping through the real entry path: cadence in counters (log, eval,
checkpoint on their own grids), budgets in FLOPs, evaluation on a held-out split of an env
that never ends an episode for the learner, picklable env factories, and the refusals that
keep a record intact."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from rl_scaling.config import register_configs
from rl_scaling.context import EnvFactory, Interval, RunContext
from rl_scaling.record import RunRecord
from rl_scaling.registry import ConfigError
from rl_scaling.run import run

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()
# 4 envs x 16 steps = 64 env steps per iteration
PROBE = ["env=probe", "env.id=action_reward", "env.num_envs=4", "model=mlp", "model.width=0.25",
         "algo.num_steps=16", "algo.num_epochs=1", "algo.num_minibatches=1",
         "algo.norm_reward=false", "logger.progress=none", "checkpoint_every=null",
         "torch_threads=1"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_intervals_fire_once_per_multiple_and_parse_units():
    every = Interval("128 env_steps", "log_every")
    assert (every.every, every.unit) == (128.0, "env_steps")
    fired = [v for v in range(0, 700, 64) if every.due(v)]
    assert fired == [128, 256, 384, 512, 640]
    jump = Interval("100 samples", "log_every")
    assert [jump.due(v) for v in (50, 250, 299, 300)] == [False, True, False, True]
    seconds = Interval("0.5 seconds", "checkpoint_every")
    seconds.sync(10.2)  # a resumed run: the next point after the restored wall time
    assert not seconds.due(10.4) and seconds.due(10.5)
    assert not Interval(None, "eval_every").active and not Interval("null", "x").due(1e9)
    for bad in ("10", "10 iterations", "-5 env_steps", "ten env_steps", "1 env_steps extra"):
        with pytest.raises(ConfigError, match="^log_every="):
            Interval(bad, "log_every")


def test_log_and_eval_keep_their_own_grids(tmp_path):
    """An evaluation line does not shift the log grid: lines at every 128 steps, evaluations
    at every 192 steps and at the end, nothing else."""
    overrides = [*PROBE, "budget.value=640", "log_every=128 env_steps",
                 "eval_every=192 env_steps", "eval_episodes=4"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert [r["env_steps"] for r in rows] == [128, 192, 256, 384, 512, 576, 640]
    assert [r["env_steps"] for r in rows if "eval_return" in r] == [192, 384, 576, 640]
    assert all(-1.0 <= r["eval_return"] <= 1.0 for r in rows if "eval_return" in r)


def test_budget_in_flops_stops_at_the_first_iteration_past_it(tmp_path):
    overrides = [*PROBE, "budget.counter=flops", "budget.value=1e6"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[-1]["flops"] >= 1e6 > rows[-2]["flops"]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["budget"] == {"counter": "flops", "value": 1e6}


def test_mnist_eval_on_the_test_split_ends(tmp_path):
    """The MNIST bandit never ends an episode for the learner, but every step is a finished
    statistics episode: evaluation on env.eval's test split must count them and stop."""
    overrides = ["+experiment=smoke", "eval_every=1024 env_steps", "eval_episodes=16",
                 "logger.progress=none", "torch_threads=1"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    evals = [r for r in rows if "eval_return" in r]
    assert [r["env_steps"] for r in evals] == [1024, 2048]
    assert all(0.0 <= r["eval_return"] <= 1.0 for r in evals)


def test_env_factories_pickle_and_give_workers_their_own_seeds():
    factory = EnvFactory("probe", {"family": "probe", "id": "obs_reward", "num_envs": 4,
                                   "eval": {}}, seed=3)
    clone = pickle.loads(pickle.dumps(factory))
    a, b = factory(), clone()
    np.testing.assert_array_equal(a.reset(), b.reset())  # same split, same stream
    seeds = {factory.worker(i).seed for i in range(8)} | {factory.seed}
    assert len(seeds) == 9
    with factory.worker(0)(num_envs=2) as envs:
        assert envs.num_envs == 2


def _bare_context(**kw) -> RunContext:
    return RunContext(device=torch.device("cpu"), seed=0, budget_counter="samples",
                      budget_value=10, **kw)


def test_end_iteration_before_restore_is_refused():
    """Without restore() a resumed run would cut its curve to nothing: refuse instead."""
    ctx = _bare_context()
    with pytest.raises(RuntimeError, match="ctx.restore"):
        ctx.end_iteration({"loss": 1.0})


def test_network_after_restore_is_refused():
    ctx = _bare_context()
    ctx.set_spec(None, None)
    ctx.network("a", torch.nn.Linear, example=torch.zeros(1, 3), in_features=3, out_features=2)
    ctx.restore()
    with pytest.raises(RuntimeError, match="after ctx.restore"):
        ctx.network("b", torch.nn.Linear, example=torch.zeros(1, 3), in_features=3,
                    out_features=2)


@pytest.mark.parametrize("overrides,message", [
    (["effective_roles=[critic]"], "effective_roles names ['critic']"),
    (["effective_roles=[]", "budget.counter=flops"], "budget.counter=flops"),
])
def test_refusals_before_the_record_is_opened(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(_cfg([*PROBE, *overrides]), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_second_network_role_is_not_effective_unless_declared(tmp_path):
    """effective_roles narrows N: with an empty list no FLOPs are effective, the per-role
    counter still counts every FLOP the policy ran."""
    assert run(_cfg([*PROBE, "budget.value=128", "effective_roles=[]"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["effective_roles"] == [] and info["params"]["effective"] == 0
    assert all(r["flops"] == 0 and r["flops.policy"] > 0 for r in rows)
