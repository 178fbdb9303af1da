"""V-trace against a hand-computed example and the n-step return it reduces to on-policy; the
LSTM core's resets; IMPALA (synchronous mode) reaching probes' known solutions, resuming its
counters, and refusing a feed-forward model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from agents.buffers import vtrace
from agents.impala import ImpalaConfig
from agents.models import build_model
from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.config import register_configs
from rl_scaling.registry import ConfigError
from rl_scaling.run import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
register_configs()


# ---- V-trace ------------------------------------------------------------------------------
def test_vtrace_matches_a_hand_computed_example():
    # T=2, B=1; rho_0 = 2 (clipped to 1 by rho_bar and c_bar), rho_1 = 0.5
    behaviour = torch.log(torch.tensor([[0.25], [0.5]]))
    target = torch.log(torch.tensor([[0.5], [0.25]]))
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [1.0]])
    bootstrap = torch.tensor([3.0])
    discounts = torch.full((2, 1), 0.9)
    vs, adv = vtrace(behaviour, target, rewards, values, bootstrap, discounts)
    # by hand: delta_1 = 0.5 (2 + 0.9*3 - 1) = 1.85; vs_1 = 1 + 1.85 = 2.85
    # delta_0 = 1 (1 + 0.9*1 - 0.5) = 1.4; vs_0 = 0.5 + 1.4 + 0.9 * c_0 (=1) * 1.85 = 3.565
    torch.testing.assert_close(vs, torch.tensor([[3.565], [2.85]]))
    # adv_0 = min(1, 2) (1 + 0.9*2.85 - 0.5) = 3.065; adv_1 = 0.5 (2 + 0.9*3 - 1) = 1.85
    torch.testing.assert_close(adv, torch.tensor([[3.065], [1.85]]))
    # clipping: with rho_bar = c_bar = 2 the first step's weight 2 counts in full
    vs2, _ = vtrace(behaviour, target, rewards, values, bootstrap, discounts,
                    rho_bar=2.0, c_bar=2.0)
    torch.testing.assert_close(vs2[0], torch.tensor([0.5 + 2 * 1.4 + 0.9 * 2 * 1.85]))


def test_vtrace_on_policy_is_the_n_step_return():
    g = torch.Generator().manual_seed(0)
    steps, batch, gamma = 7, 5, 0.95
    logp = -torch.rand(steps, batch, generator=g)
    rewards = torch.randn(steps, batch, generator=g)
    values = torch.randn(steps, batch, generator=g)
    bootstrap = torch.randn(batch, generator=g)
    done = torch.rand(steps, batch, generator=g) < 0.2
    discounts = gamma * (~done).float()
    vs, adv = vtrace(logp, logp, rewards, values, bootstrap, discounts)
    expected = torch.zeros(steps, batch)
    for b in range(batch):
        for t in range(steps):
            ret, scale = 0.0, 1.0
            for k in range(t, steps):
                ret += scale * rewards[k, b]
                scale *= discounts[k, b]
            expected[t, b] = ret + scale * bootstrap[b]
    torch.testing.assert_close(vs, expected)
    next_vs = torch.cat([expected[1:], bootstrap[None]])
    torch.testing.assert_close(adv, rewards + discounts * next_vs - values)


# ---- the recurrent core ---------------------------------------------------------------------
def test_lstm_core_resets_where_an_episode_starts():
    model = build_model("lstm", (3,), 4, width=0.125)
    torch.manual_seed(0)
    obs = torch.randn(6, 2, 3)
    first = torch.zeros(6, 2, dtype=torch.bool)
    first[3, 0] = True  # env 0 starts an episode at step 3
    logits, value, _ = model(obs, first, model.initial_state(2))
    # step by step, carrying the state, gives the same outputs
    state, outs = model.initial_state(2), []
    for t in range(6):
        out, _, state = model(obs[t:t + 1], first[t:t + 1], state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs), logits)
    # after the reset, env 0 computes what a fresh sequence from step 3 computes
    fresh, _, _ = model(obs[3:, :1], None, None)
    torch.testing.assert_close(logits[3:, :1], fresh)
    assert not torch.allclose(logits[3:, 1:], model(obs[3:, 1:], None, None)[0])
    assert value.shape == (6, 2)


# ---- IMPALA, synchronous ----------------------------------------------------------------------
PROBE = ["algo=impala", "model=lstm", "model.width=0.25", "env=probe", "algo.unroll_length=16",
         "algo.batch_size=8", "algo.lr=3e-3", "algo.gamma=0.9", "algo.ent_coef=0.0",
         "logger.progress=none", "checkpoint_every=null", "seed=0"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _model(run_dir: Path, obs_dim: int, num_actions: int):
    model = build_model("lstm", (obs_dim,), num_actions, width=0.25)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints/latest.pt")["objects"]["model"])
    return model


def test_impala_reaches_obs_action_reward_solution(tmp_path):
    assert run(_cfg([*PROBE, "env.id=obs_action_reward", "budget.value=8192"]),
               tmp_path) == "finished"
    model = _model(tmp_path, 1, 2)
    obs = torch.tensor([[[1.0], [-1.0]]])  # one step, two envs, fresh episodes
    with torch.no_grad():
        logits, value, _ = model(obs, torch.ones(1, 2, dtype=torch.bool), None)
    np.testing.assert_allclose(value[0].numpy(), [1.0, 1.0], atol=0.1)
    best = torch.softmax(logits[0], -1)[torch.arange(2), torch.tensor([1, 0])]
    assert (best > 0.9).all(), best.tolist()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == 8192 and rows[-1]["updates"] == 64
    assert rows[-1]["rho_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: policy lag 0


def test_impala_bootstraps_through_the_core_on_two_step(tmp_path):
    # two_step: obs 0 then 1, reward 0 then +1: V(0) = gamma, V(1) = 1, across a core step
    assert run(_cfg([*PROBE, "env.id=two_step", "budget.value=8192"]), tmp_path) == "finished"
    model = _model(tmp_path, 1, 1)
    obs = torch.tensor([[[0.0]], [[1.0]]])
    first = torch.tensor([[True], [False]])
    with torch.no_grad():
        _, value, _ = model(obs, first, None)
    np.testing.assert_allclose(value[:, 0].numpy(), [0.9, 1.0], atol=0.1)


def test_impala_resumes_its_counters(tmp_path):
    assert run(_cfg([*PROBE, "env.id=obs_action_reward", "budget.value=512"]),
               tmp_path) == "finished"
    assert run(_cfg([*PROBE, "env.id=obs_action_reward", "budget.value=1024"]),
               tmp_path) == "finished"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [128 * (i + 1) for i in range(8)]
    assert [r["iteration"] for r in rows] == list(range(1, 9))


def test_impala_needs_a_recurrent_model_and_ppo_a_feed_forward_one(tmp_path):
    with pytest.raises(ConfigError, match="algo=impala needs a recurrent model"):
        run(_cfg([*(o for o in PROBE if not o.startswith("model")), "model=mlp",
                  "env.id=obs_action_reward"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="algo=ppo needs a feed-forward model"):
        run(_cfg(["env=probe", "model=lstm", "logger.progress=none"]), tmp_path / "b")
    assert not (tmp_path / "a" / "run.json").exists()
    # the actors' slots could never hold one batch: refused, not a 600 s wait
    with pytest.raises(ConfigError, match=r"algo.num_actors=2 x algo.slots_per_actor=2 slots"):
        run(_cfg([*PROBE, "env.id=obs_action_reward", "algo.num_actors=2",
                  "algo.envs_per_actor=1"]), tmp_path / "c")
    with pytest.raises(ConfigError, match=r"algo.actor_inference=learner needs actor"):
        run(_cfg([*PROBE, "env.id=obs_action_reward", "algo.actor_inference=learner"]),
            tmp_path / "d")


@pytest.mark.parametrize("actors,seed", [(0, 2), (2, 1)])
def test_impala_learns_cartpole(actors, seed, tmp_path):
    """CartPole-v1 in 200k steps (~25-35 s on 2 cores), synchronous and with 2 actor
    processes: the evaluated return over 32 episodes must reach 100 (a random policy gets
    ~22). Returns are not clipped by abs_one (+1 a step), so values reach ~60 and the study's
    baseline weight of 0.5 swamps the policy gradient in the summed loss: 0.05 here. The actor
    mode is not reproducible draw for draw: at 150k steps and 16 episodes it scored 75 once in
    CI (150-280 in 8 runs outside it); at 200k steps and 32 episodes 4 runs on a machine
    with a core kept busy scored 142-250."""
    cfg = _cfg(["algo=impala", "model=lstm", "model.width=0.25", "env=gym",
                "env.id=CartPole-v1", "algo.unroll_length=20", "algo.batch_size=8",
                "algo.ent_coef=0.01", "algo.lr=0.001", "algo.baseline_coef=0.05",
                f"algo.num_actors={actors}", "budget.value=200000",
                "eval_every=200000 env_steps", "eval_episodes=32", "++env.eval.num_envs=8",
                "logger.progress=none", "checkpoint_every=null", "log_every=25000 env_steps",
                f"seed={seed}"])
    assert run(cfg, tmp_path) == "finished"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_return"] >= 100, rows[-1]


# ---- the actor-learner split ------------------------------------------------------------------
def test_actor_learner_mode_reaches_the_probe_solution(tmp_path):
    assert run(_cfg([*PROBE, "env.id=obs_action_reward", "budget.value=8192",
                     "algo.num_actors=2"]), tmp_path) == "finished"
    model = _model(tmp_path, 1, 2)
    with torch.no_grad():
        logits, value, _ = model(torch.tensor([[[1.0], [-1.0]]]),
                                 torch.ones(1, 2, dtype=torch.bool), None)
    # not reproducible draw for draw (the OS orders the actors' slots), and RMSprop at this
    # lr leaves the value a little noisy: 0.91 / 1.15 once on a loaded machine
    np.testing.assert_allclose(value[0].numpy(), [1.0, 1.0], atol=0.2)
    best = torch.softmax(logits[0], -1)[torch.arange(2), torch.tensor([1, 0])]
    assert (best > 0.9).all(), best.tolist()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == 8192 and rows[-1]["actor_restarts"] == 0
    # double-buffered actors act with weights at most a few learner steps old
    assert 0 < np.mean([r["policy_lag"] for r in rows[5:]]) <= 4


def _actor_pids(parent: int) -> list[int]:
    """The spawned actor processes of ``parent`` (not multiprocessing's resource tracker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and "spawn_main" in cmd:
            pids.append(int(proc.name))
    return pids


def _start_actor_run(args: list[str], run_dir: Path, lines: int = 5) -> tuple[
        subprocess.Popen, list[int]]:
    """``python -m rl_scaling.sweep`` with ``args`` in ``run_dir``, once it has logged
    ``lines`` lines; returns the process and its 2 actor processes."""
    cmd = [sys.executable, "-m", "rl_scaling.sweep", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not metrics.exists() or len(metrics.read_text().splitlines()) < lines:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        actors = _actor_pids(proc.pid)
        assert len(actors) == 2, actors
    except BaseException:
        proc.kill()
        raise
    return proc, actors


@pytest.mark.parametrize("inference", ["local", "learner"])
def test_a_killed_actor_is_restarted_and_the_run_finishes(inference, tmp_path):
    run_dir = tmp_path / "run"
    proc, actors = _start_actor_run(
        [*PROBE, "env.id=obs_action_reward", "algo.num_actors=2", "budget.value=12800",
         f"algo.actor_inference={inference}"], run_dir)
    try:
        os.kill(actors[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == 12800 and rows[-1]["actor_restarts"] == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert "IMPALA actor" in (run_dir / "sweep.log").read_text()  # reported, with its index


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie has exited (its parent reaps it)


@pytest.mark.parametrize("inference", ["local", "learner"])
def test_a_preempted_actor_run_checkpoints_stops_its_actors_and_resumes(inference, tmp_path):
    """SIGTERM (Slurm's preemption signal) to an actor-mode run: the learner checkpoints at
    the end of its iteration and stops its actors (they ignore the signal themselves), the
    record says ``running``, and the run resumes with its counters where they were."""
    run_dir = tmp_path / "run"
    args = [*PROBE, "env.id=obs_action_reward", "algo.num_actors=2",
            f"algo.actor_inference={inference}"]
    proc, actors = _start_actor_run([*args, "budget.value=10000000"], run_dir)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(_gone(pid) for pid in actors), "actors outlived the preempted learner"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    stopped_at = state["counters"]["iterations"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == stopped_at and rows[-1]["env_steps"] == 128 * stopped_at
    budget = 128 * (stopped_at + 3)
    assert run(_cfg([*args, f"budget.value={budget}"]), run_dir) == "finished"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, stopped_at + 4))
    assert rows[-1]["env_steps"] == budget


@pytest.mark.parametrize("inference", ["local", "learner"])
def test_actors_exit_when_their_learner_is_killed(inference, tmp_path):
    """SIGKILL to the learner (the OOM killer, Slurm after its grace period) runs no clean-up:
    its actors notice it is gone and exit instead of waiting for it forever."""
    run_dir = tmp_path / "run"
    proc, actors = _start_actor_run(
        [*PROBE, "env.id=obs_action_reward", "algo.num_actors=2",
         f"algo.actor_inference={inference}", "budget.value=10000000"], run_dir, lines=1)
    try:
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while not all(_gone(pid) for pid in actors):
            assert time.monotonic() < deadline, (
                "actors outlived their killed learner: " + ", ".join(
                    Path(f"/proc/{pid}/stat").read_text()[:60] for pid in actors
                    if not _gone(pid)))
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in actors:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_actor_that_keeps_dying_before_its_first_trajectory_fails_the_run():
    """A broken env config kills every (re)start of an actor before it fills a slot: after
    MAX_FAILED_STARTS deaths in a row the learner raises with the exit code, not a hang."""
    import gymnasium

    from agents.actors import MAX_FAILED_STARTS, ActorPool, SlotShapes
    from rl_scaling.context import EnvFactory

    model = build_model("lstm", (1,), 2, width=0.125)
    h0, _ = model.initial_state(2)
    shapes = SlotShapes(4, 2, gymnasium.spaces.Box(-1, 1, (1,)), tuple(h0.shape))
    broken = EnvFactory("probe", {"family": "probe", "id": "no_such_probe", "num_envs": 2,
                                  "eval": {}}, seed=0)
    pool = ActorPool(1, 1, shapes, broken, model, seed=0)
    try:
        with pytest.raises(RuntimeError, match=f"died {MAX_FAILED_STARTS} times in a row"):
            pool.take(1, timeout_s=120)
        assert pool.restarts == MAX_FAILED_STARTS - 1
    finally:
        pool.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("actors,inference", [(0, "local"), (2, "local"), (2, "learner")])
def test_impala_with_a_cuda_learner_reaches_the_probe_solution(actors, inference, tmp_path):
    """The learner on the GPU, acting there (synchronous), in CPU actors that read the weights
    it publishes across devices, or through its inference server on the GPU."""
    assert run(_cfg([*PROBE, "env.id=obs_action_reward", "budget.value=8192", "device=cuda",
                     f"algo.num_actors={actors}", f"algo.actor_inference={inference}"]),
               tmp_path) == "finished"
    model = _model(tmp_path, 1, 2)  # the checkpoint loads on the CPU
    with torch.no_grad():
        logits, value, _ = model(torch.tensor([[[1.0], [-1.0]]]),
                                 torch.ones(1, 2, dtype=torch.bool), None)
    best = torch.softmax(logits[0], -1)[torch.arange(2), torch.tensor([1, 0])]
    assert (best > 0.9).all(), best.tolist()
    np.testing.assert_allclose(value[0].numpy(), [1.0, 1.0], atol=0.15)


@pytest.mark.parametrize("inference", ["local", "learner"])
def test_an_actors_slot_replays_to_its_recorded_log_probabilities(inference):
    """The learner, starting from the core state a slot recorded and reading its observations
    and episode starts, computes the log-probabilities the actor acted with (same weights):
    the state hand-off is exact, across episode ends inside the unroll, whether the actors
    act with their CPU copies or the learner's inference server acts for them."""
    from agents.actors import ActorPool, SlotShapes
    from agents.distributions import Categorical
    from envs import make_env
    from rl_scaling.context import EnvFactory

    env = make_env("gym", num_envs=1, seed=0, env_id="CartPole-v1")
    space = env.single_observation_space
    env.close()
    torch.manual_seed(0)
    model = build_model("lstm", space.shape, 2, width=0.25)
    h0, _ = model.initial_state(3)
    shapes = SlotShapes(64, 3, space, tuple(h0.shape))
    factory = EnvFactory("gym", {"family": "gym", "id": "CartPole-v1", "num_envs": 3,
                                 "eval": {}}, seed=0)
    pool = ActorPool(2, 2, shapes, factory, model, seed=3,
                     inference_device=torch.device("cpu") if inference == "learner" else None)
    try:
        for _ in range(3):  # later slots start from a carried, non-zero state
            chosen = pool.take(2)
            slots = pool.slots
            for s in chosen:
                first = slots.first[s]
                assert first[1:-1].any()  # random CartPole episodes end inside 64 steps
                with torch.no_grad():
                    logits, _, _ = model(slots.obs[s], first, (slots.h0[s], slots.c0[s]))
                logp, _ = Categorical().logprob_entropy(logits[:64], slots.actions[s])
                torch.testing.assert_close(logp, slots.logprobs[s], atol=1e-5, rtol=1e-5)
            pool.release(chosen)
        if inference == "learner":
            assert pool.inference_batch() >= 3  # at least one actor's envs per call
    finally:
        pool.close()


def test_where_actors_act_may_change_on_resume_but_what_is_learned_may_not(tmp_path):
    """algo.actor_inference is IMPALA's own resumable key (register_algo(resumable=...)): a
    run started with local acting resumes with learner inference and continues its counters;
    another learning rate is refused in one line, naming the key."""
    args = [*PROBE, "env.id=obs_action_reward", "algo.num_actors=2"]
    assert run(_cfg([*args, "budget.value=512"]), tmp_path) == "finished"
    assert run(_cfg([*args, "budget.value=1024", "algo.actor_inference=learner"]),
               tmp_path) == "finished"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [128 * (i + 1) for i in range(8)]
    assert "inference_batch" not in rows[3] and "inference_batch" in rows[4]
    with pytest.raises(ConfigError, match=r"algo.lr: 0.003 -> 0.001"):
        run(_cfg([*args, "budget.value=2048", "algo.lr=1e-3"]), tmp_path)
    from rl_scaling.registry import register_algo

    with pytest.raises(TypeError, match=r"resumable keys \['no_such_key'\]"):
        register_algo("impala_test", ImpalaConfig, lambda cfg, ctx: "finished",
                      resumable=("no_such_key",))
