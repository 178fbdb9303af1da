"""SAC / BRO (agents/sac.py) and the grouped networks it is built on (agents/ensemble.py).

Learning: Pendulum above -300 within 20k env steps at UTD 1 and UTD 4. Bookkeeping: K seeds
in one process write the same curves as K one-seed runs, FLOPs per role follow the update
schedule, the replay buffer is in the checkpoint, resets give fresh parameters and optimiser
state, bad input is one line naming the key.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from agents.ensemble import GroupedLinear, SeedOptimizerState, stack_seeds
from agents.sac import TwinCritic
from rl_scaling.config import register_configs
from rl_scaling.flops import forward_flops
from rl_scaling.record import RunRecord
from rl_scaling.registry import ConfigError
from rl_scaling.run import run

register_configs()
CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
# a small, fast SAC on Pendulum (200-step episodes); tests add their own overrides
SMALL = ["algo=sac", "env=gym", "~model", "logger.progress=none", "checkpoint_every=null",
         "algo.critic_width=32", "algo.actor_width=32", "algo.batch_size=32",
         "algo.learning_starts=100", "algo.steps_per_iteration=100", "torch_threads=1",
         "eval_episodes=1", "algo.gns_chunks=2"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _curve(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"}
            for row in RunRecord(run_dir).read_metrics()]


# ---- grouped networks ------------------------------------------------------------------------


def test_grouped_linear_is_g_independent_linears_and_counts_their_flops():
    torch.manual_seed(0)
    layer = GroupedLinear(3, 5, 7)
    x = torch.randn(3, 4, 5)
    out = layer(x)
    for g in range(3):
        expected = x[g] @ layer.weight[g] + layer.bias[g]
        torch.testing.assert_close(out[g], expected)
    critic = TwinCritic(obs_dim=3, action_dim=1, width=16, depth=2)
    flops = forward_flops(critic, (torch.zeros(1, 3), torch.zeros(1, 1)), effective=False)
    assert flops == 2 * 2 * (4 * 16 + 16 * 16 + 16 * 1)  # two twins, three layers


def test_stacked_seeds_are_views_and_checkpoint_only_their_slice():
    torch.manual_seed(0)
    nets = [TwinCritic(3, 1, 8, 1) for _ in range(3)]
    before = [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]
    stacked = stack_seeds(nets)
    obs, act = torch.randn(3, 5, 3), torch.randn(3, 5, 1)
    q = stacked(obs, act)  # (seeds, twins, batch)
    for k, net in enumerate(nets):
        torch.testing.assert_close(q[k], net(obs[k], act[k]), rtol=0, atol=0)
        for key, value in net.state_dict().items():
            assert torch.equal(value, before[k][key])
            assert value.untyped_storage().nbytes() == value.numel() * 4  # a copy, not the stack
    with torch.no_grad():  # training the stack moves every seed's view
        next(stacked.parameters()).add_(1.0)
    assert not torch.equal(nets[1].state_dict()["trunk.hidden.0.weight"],
                           before[1]["trunk.hidden.0.weight"])
    nets[2].load_state_dict(before[2])  # loading a seed writes its slice of the stack
    torch.testing.assert_close(stacked(obs, act)[2], nets[2](obs[2], act[2]))


def test_seed_optimizer_state_round_trips_one_seeds_slice():
    torch.manual_seed(0)
    stacked = stack_seeds([TwinCritic(3, 1, 8, 1) for _ in range(2)])
    opt = torch.optim.Adam(stacked.parameters(), lr=1e-2)
    stacked(torch.randn(2, 4, 3), torch.randn(2, 4, 1)).sum().backward()
    opt.step()
    saved = SeedOptimizerState(opt, 1, 2).state_dict()
    fresh_stack = stack_seeds([TwinCritic(3, 1, 8, 1) for _ in range(2)])
    fresh = torch.optim.Adam(fresh_stack.parameters(), lr=1e-2)
    SeedOptimizerState(fresh, 1, 2).load_state_dict(saved)
    for p_old, p_new in zip(stacked.parameters(), fresh_stack.parameters(), strict=True):
        rows = slice(p_old.shape[0] // 2, p_old.shape[0])
        assert torch.equal(opt.state[p_old]["exp_avg"][rows], fresh.state[p_new]["exp_avg"][rows])
        assert float(fresh.state[p_new]["step"]) == 1.0


# ---- learning --------------------------------------------------------------------------------


@pytest.mark.parametrize("utd, steps", [(1, 8000), (4, 4000)])
def test_pendulum_learns_within_20k_env_steps(tmp_path, utd, steps):
    """Evaluated every 2,000 env steps on 10 held-out episodes (deterministic policy)."""
    cfg = _cfg(["algo=sac", "env=gym", "~model", "logger.progress=none", "torch_threads=2",
                f"algo.utd={utd}", f"budget.value={steps}", "algo.learning_starts=1000",
                "algo.critic_width=128", "algo.actor_width=128", "algo.batch_size=128",
                "eval_episodes=10", "eval_every='2000 env_steps'", "checkpoint_every=null",
                "seed=3"])
    assert run(cfg, tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[-1]["env_steps"] == steps <= 20_000
    assert rows[-1]["updates"] == utd * (steps - 1000)
    evals = [r["eval_return"] for r in rows if "eval_return" in r]
    assert len(evals) == steps // 2000
    assert rows[0]["return_mean"] < -800  # the random first 1,000 steps
    assert max(evals) > -300, evals


# ---- K seeds per process ---------------------------------------------------------------------


def test_four_seeds_in_one_process_write_the_curves_of_four_one_seed_runs(tmp_path):
    common = [*SMALL, "budget.value=400", "eval_every='200 env_steps'", "algo.utd=2",
              "deterministic=true"]
    k4_dirs = [tmp_path / f"k4-seed{s}" for s in range(5, 9)]
    assert run(_cfg([*common, "seed=5", "seeds_per_process=4"]), tmp_path / "x",
               seed_dirs=k4_dirs) == "finished"
    for s, k4_dir in zip(range(5, 9), k4_dirs, strict=True):
        assert run(_cfg([*common, f"seed={s}"]), tmp_path / f"k1-seed{s}") == "finished"
        one, many = _curve(tmp_path / f"k1-seed{s}"), _curve(k4_dir)
        assert len(one) == 4 and "eval_return" in one[1] and "td_overfitting" in one[-1]
        assert many == one, f"seed {s}"
        info = RunRecord(k4_dir).read_run_json()
        assert info["seed"] == s and info["status"] == "finished"
    curves = [_curve(d)[-1]["critic_loss"] for d in k4_dirs]
    assert len(set(curves)) == 4  # the seeds really are different runs


def test_seeds_per_process_needs_an_algorithm_that_trains_many(tmp_path):
    cfg = _cfg(["env=probe", "env.id=bandit", "model=mlp", "algo=ppo", "seeds_per_process=2"])
    with pytest.raises(ConfigError, match="seeds_per_process=2"):
        run(cfg, tmp_path)


# ---- FLOPs, replay in the checkpoint, resume -------------------------------------------------


def test_flops_per_role_follow_the_update_schedule(tmp_path):
    cfg = _cfg([*SMALL, "budget.value=300", "algo.utd=0.5", "algo.actor_every=2"])
    run(cfg, tmp_path)
    info = RunRecord(tmp_path).read_run_json()
    last = RunRecord(tmp_path).read_metrics()[-1]
    f = {role: n["flops_per_forward"]["effective"] for role, n in info["networks"].items()}
    updates, b = last["updates"], 32
    assert updates == math.floor(0.5 * (300 - 100))
    actor_updates = updates // 2
    acting = 300 - 100  # actor forwards once the random phase is over
    assert last["flops.critic"] == (3 * updates + 2 * actor_updates) * b * f["critic"]
    assert last["flops.critic_target"] == updates * b * f["critic_target"]
    assert last["flops.actor"] == (updates * b + 3 * actor_updates * b + acting) * f["actor"]
    assert f["critic"] == f["critic_target"]
    # the target is a copy: its parameters are not a second N
    assert info["params"]["effective"] == (info["networks"]["critic"]["params"]["effective"]
                                           + info["networks"]["actor"]["params"]["effective"])
    n_critic = info["networks"]["critic"]["params"]["total"]
    assert last["flops_10nbsd"] == pytest.approx(10 * n_critic * b * 0.5 * 300)


def test_a_resumed_run_keeps_its_replay_buffer_and_any_k_resumes_it(tmp_path):
    common = [*SMALL, "algo.utd=1"]
    dirs = [tmp_path / "s1", tmp_path / "s2"]
    run(_cfg([*common, "budget.value=300", "seed=1", "seeds_per_process=2"]), tmp_path / "x",
        seed_dirs=dirs)
    first = RunRecord(dirs[1]).read_metrics()
    assert first[-1]["replay_size"] == 300 - 300 // 20  # every 20th step is held out
    # seed 2's record, written by a two-seed job, resumes alone with a larger budget
    assert run(_cfg([*common, "budget.value=500", "seed=2"]), dirs[1]) == "finished"
    rows = RunRecord(dirs[1]).read_metrics()
    assert [r["iteration"] for r in rows] == list(range(1, 6))
    assert rows[3]["replay_size"] == 400 - 400 // 20 and rows[-1]["updates"] == 400
    assert RunRecord(dirs[1]).read_run_json()["resumed"] is True
    # without the buffer in the checkpoint, a resume starts from an empty one
    lean = tmp_path / "lean"
    run(_cfg([*common, "budget.value=300", "algo.checkpoint_buffer=false"]), lean)
    run(_cfg([*common, "budget.value=400", "algo.checkpoint_buffer=false"]), lean)
    assert RunRecord(lean).read_metrics()[-1]["replay_size"] == 100 - 100 // 20


def test_a_reset_gives_fresh_parameters_and_optimizer_state(tmp_path):
    from agents import sac
    from rl_scaling.context import RunContext, StopTraining

    cfg = sac.SACConfig(critic="bro", critic_width=16, critic_depth=1, actor_width=16,
                        batch_size=16, learning_starts=50, steps_per_iteration=50,
                        reset_at=[150])
    cfg.validate()
    seen = {}
    real_reset = sac._Seeds.reset

    def spy(self):
        seen["before"] = [p.detach().clone() for p in self.critic.parameters()]
        seen["alpha_before"] = float(self.alpha()[0])
        seen["opt_state_before"] = len(self.critic_opt.state)
        real_reset(self)
        seen["after"] = [p.detach().clone() for p in self.critic.parameters()]
        seen["target"] = [p.detach().clone() for p in self.target.parameters()]
        seen["alpha_after"] = float(self.alpha()[0])
        seen["opt_state_after"] = len(self.critic_opt.state)
        seen["env_steps"] = self.ctxs[0].counters.env_steps

    from rl_scaling.run import EnvFactory

    factory = EnvFactory("gym", {"family": "gym", "id": "Pendulum-v1", "num_envs": 1,
                                 "eval": {}}, 0)
    ctx = RunContext(device=torch.device("cpu"), seed=0, budget_counter="env_steps",
                     budget_value=200, env_factories={"train": factory, "eval": factory})
    sac._Seeds.reset = spy
    try:
        sac.train_many(cfg, [ctx])
    except StopTraining:
        pass
    finally:
        sac._Seeds.reset = real_reset
        ctx.close()
    assert seen["env_steps"] == 150
    assert seen["opt_state_before"] > 0 and seen["opt_state_after"] == 0
    assert seen["alpha_before"] != 1.0 and seen["alpha_after"] == pytest.approx(1.0)
    changed = [not torch.equal(a, b) for a, b in zip(seen["before"], seen["after"],
                                                     strict=True)]
    weights = [p for p in seen["after"] if p.dim() == 3 and p.shape[1] > 1 and p.shape[2] > 1]
    assert all(changed[i] for i, p in enumerate(seen["after"]) if p.dim() == 3
               and p.abs().sum() > 0 and not torch.all(p == 1))
    for w in weights:  # nn.Linear's init: uniform in +-1/sqrt(fan_in)
        assert float(w.abs().max()) <= 1 / math.sqrt(w.shape[1]) + 1e-6
    for t, c in zip(seen["target"], seen["after"], strict=True):
        assert torch.equal(t, c)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("algo.utd=-1", "algo.utd"),
    ("algo.batch_size=2000000", "algo.batch_size"),
    ("algo.critic=transformer", "algo.critic"),
    ("algo.td_holdout_every=1", "algo.td_holdout_every"),
])
def test_bad_sac_keys_are_one_line_errors_naming_them(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        run(_cfg([*SMALL, override]), tmp_path)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run.json").exists()


def test_unknown_dmc_task_and_discrete_actions_are_refused_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="env.id='cartpole-fly'"):
        run(_cfg([*SMALL, "env=dmc", "env.id=cartpole-fly"]), tmp_path)
    with pytest.raises(ConfigError, match="continuous"):
        run(_cfg([*SMALL, "env=probe", "env.id=bandit"]), tmp_path / "probe")
    assert not (tmp_path / "probe" / "run.json").exists()


def test_dmc_cartpole_trains_and_logs_the_normalised_return(tmp_path):
    cfg = _cfg([*SMALL, "env=dmc", "env.id=cartpole-swingup", "env.action_repeat=4",
                "budget.value=500", "eval_every='500 env_steps'"])
    assert run(cfg, tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert any("normalized_return_mean" in r for r in rows)
    last = rows[-1]
    assert 0 <= last["eval_normalized_return"] <= 1000
    # DMC's reference return is 1000: its normalised return is its raw return
    assert last["eval_normalized_return"] == pytest.approx(last["eval_return"])
    assert {"td_error_heldout", "td_overfitting", "critic_param_norm",
            "critical_batch_size"} <= set(last)


def test_a_multirun_puts_each_seed_where_a_one_seed_sweep_would(tmp_path):
    """``seeds_per_process=2`` with ``seed=3`` writes ``...,seed=3`` and ``...,seed=4``; the
    same sweep with one seed per job finds both runs finished instead of starting new ones."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "rl_scaling.sweep", "-m", "algo=sac", "env=gym", "~model",
            "budget.value=200", "algo.learning_starts=100", "algo.steps_per_iteration=100",
            "algo.critic_width=16", "algo.actor_width=16", "algo.batch_size=16",
            "logger.progress=none", "torch_threads=1", f"hydra.sweep.dir={tmp_path}"]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([*args, "seeds_per_process=2", "seed=3"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = sorted(p.parent.name for p in tmp_path.rglob("run.json"))
    assert len(records) == 2 and "seed=3," in records[0]
    assert records[1] == records[0].replace("seed=3,", "seed=4,")  # siblings, not nested
    again = subprocess.run([*args, "seed=3,4"], cwd=root, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("already finished") + again.stdout.count("already finished") == 2
    assert sorted(p.parent.name for p in tmp_path.rglob("run.json")) == records


def test_the_same_seed_gives_the_same_curve(tmp_path):
    common = [*SMALL, "budget.value=300", "eval_every='300 env_steps'", "seed=11"]
    for name in ("a", "b"):
        assert run(_cfg(common), tmp_path / name) == "finished"
    assert _curve(tmp_path / "a") == _curve(tmp_path / "b")
    other = _cfg([*SMALL, "budget.value=300", "eval_every='300 env_steps'", "seed=12"])
    run(other, tmp_path / "c")
    assert _curve(tmp_path / "c")[-1]["critic_loss"] != _curve(tmp_path / "a")[-1]["critic_loss"]


def test_dmc_utd_experiment_runs_its_grid_with_short_overrides(tmp_path):
    """``+experiment=dmc_utd`` as a multirun (two UTD ratios, two seeds per job, BRO critic
    shrunk): four complete records declaring the UTD study."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=dmc_utd",
         "env.id=cartpole-swingup", "env.action_repeat=4", "algo.utd=0.5,2",
         "algo.batch_size=16", "algo.lr=1e-3", "seeds_per_process=2", "budget.value=250",
         "algo.learning_starts=50", "algo.steps_per_iteration=50", "algo.critic_width=16",
         "algo.actor_width=16", "eval_every='250 env_steps'", "eval_episodes=1",
         "log_every='50 env_steps'", "logger.progress=none", "hydra.launcher.n_jobs=1",
         "torch_threads=1", f"hydra.sweep.dir={tmp_path}"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    infos = [RunRecord(p.parent).read_run_json() for p in tmp_path.rglob("run.json")]
    assert len(infos) == 4 and {i["status"] for i in infos} == {"finished"}
    assert {i["study"]["kind"] for i in infos} == {"utd"}
    assert sorted(i["seed"] for i in infos) == [1, 1, 2, 2]
    # the launcher's summary has a line for every seed's record, not only each job's dir
    summary = out.stderr[out.stderr.index("multirun summary (2 jobs)"):].splitlines()[1:]
    assert len([ln for ln in summary if "] finished |" in ln]) == 4, summary
    for p in tmp_path.rglob("run.json"):
        last = RunRecord(p.parent).read_metrics()[-1]
        assert last["env_steps"] == 250 and "eval_normalized_return" in last


def test_a_seed_that_diverges_stops_alone(tmp_path, monkeypatch):
    """NaN weights in seed 2 of a two-seed job: its record ends ``diverged`` with its curve
    kept, seed 1 trains to the end unaffected (the same curve as alone)."""
    from agents import sac

    real_update = sac._Seeds.update

    def poisoned(self, update_index):
        if update_index == 150:
            with torch.no_grad():
                for p in self.critic.parameters():
                    rows = p.shape[0] // len(self.ctxs)
                    p[rows:2 * rows] = float("nan")  # seed index 1 only
        return real_update(self, update_index)

    monkeypatch.setattr(sac._Seeds, "update", poisoned)
    common = [*SMALL, "budget.value=500", "deterministic=true"]
    dirs = [tmp_path / "s1", tmp_path / "s2"]
    assert run(_cfg([*common, "seed=1", "seeds_per_process=2"]), tmp_path / "x",
               seed_dirs=dirs) == "diverged"
    ok, bad = (RunRecord(d).read_run_json() for d in dirs)
    assert ok["status"] == "finished" and ok["env_steps"] == 500
    assert bad["status"] == "diverged" and "non-finite" in bad["error"]
    assert RunRecord(dirs[1]).read_metrics()[-1]["env_steps"] < 500
    monkeypatch.setattr(sac._Seeds, "update", real_update)
    run(_cfg([*common, "seed=1"]), tmp_path / "alone")
    assert _curve(dirs[0]) == _curve(tmp_path / "alone")


def test_evaluating_does_not_change_the_training_curve(tmp_path):
    """Evaluations and the critic diagnostics draw from the evaluation stream only."""
    common = [*SMALL, "budget.value=400", "algo.utd=2"]
    run(_cfg([*common, "eval_every='100 env_steps'"]), tmp_path / "eval")
    run(_cfg(common), tmp_path / "plain")
    train_keys = ("critic_loss", "actor_loss", "alpha", "return_mean", "flops")
    with_eval, without = _curve(tmp_path / "eval"), _curve(tmp_path / "plain")
    assert "td_overfitting" in with_eval[-1] and "td_overfitting" not in without[-1]
    assert [[r.get(k) for k in train_keys] for r in with_eval] == \
        [[r.get(k) for k in train_keys] for r in without]
