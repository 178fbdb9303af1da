"""PPO-EWMA, PPG and PPG-EWMA: the EWMA proximal policy, the decoupled loss, the batch-size
schedule and its noise scale, learning on a probe and on the MNIST bandit, resume inside a
policy phase. Runs go through the real entry path (config -> ``rl_scaling.run.run``)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from agents.batch_schedule import BatchSchedule, GradientNoiseScale
from agents.models import build_model
from agents.ppg import EwmaModel, PPGConfig, PPOEwmaConfig, ewma_decay
from agents.ppo import PPOConfig, learning_rate, ppo_loss
from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.config import register_configs
from rl_scaling.record import RunRecord
from rl_scaling.registry import ConfigError
from rl_scaling.run import run
from tests.procs import kill_after_a_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
register_configs()
# PPG-EWMA on the MNIST bandit at a laptop's scale: 8 envs x 64 steps, phases of 4 iterations
MNIST = ["algo=ppg_ewma", "algo.num_steps=64", "algo.num_minibatches=4", "algo.n_pi=4",
         "algo.aux_minibatches_per_iteration=4", "algo.gamma=0.5", "algo.gae_lambda=1.0",
         "algo.norm_reward=false", "env.num_envs=8", "model.width=0.25",
         "logger.progress=none", "checkpoint_every=null", "torch_threads=1", "seed=1"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


# ---- the EWMA proximal policy and the decoupled objective -------------------------------

def test_ewma_weights_are_the_bias_corrected_average_computed_by_hand():
    torch.manual_seed(0)
    model, copy = nn.Linear(3, 2), nn.Linear(3, 2)
    decay = 0.7
    ewma = EwmaModel(model, copy, decay)
    history = [model.weight.detach().clone()]
    for _ in range(6):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        history.append(model.weight.detach().clone())
        ewma.update()
    t = len(history) - 1
    weights = [decay ** (t - i) for i in range(t + 1)]
    by_hand = sum(w * h for w, h in zip(weights, history, strict=True)) / sum(weights)
    torch.testing.assert_close(copy.weight, by_hand, rtol=0, atol=1e-6)
    assert ewma.total_weight == pytest.approx(sum(weights))
    assert not copy.weight.requires_grad
    ewma.reset()  # after an auxiliary phase the EWMA restarts at the current weights
    torch.testing.assert_close(copy.weight, model.weight)
    assert ewma.total_weight == 1.0


def test_default_ewma_decay_matches_ppo_proximal_age():
    """Centre of mass decay / (1 - decay) = num_epochs * num_minibatches / 2 steps back."""
    assert ewma_decay(PPGConfig()) == pytest.approx(0.8)  # 1 x 8 minibatches: 4 steps
    assert ewma_decay(PPOEwmaConfig()) == pytest.approx(12 / 13)  # 3 x 8: 12 steps
    assert ewma_decay(PPOEwmaConfig(num_minibatches=4)) == pytest.approx(6 / 7)
    assert ewma_decay(PPGConfig(ewma_decay=0.5)) == 0.5
    with pytest.raises(ConfigError, match=r"^algo\.ewma_decay=1"):
        PPGConfig(ewma_decay=1.0).validate()


def _minibatch(n=64, actions=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, actions, generator=g, requires_grad=True)
    behav_logits = logits.detach() + 0.3 * torch.randn(n, actions, generator=g)
    act = torch.randint(0, actions, (n,), generator=g)
    behav_logp = torch.log_softmax(behav_logits, -1)[torch.arange(n), act]
    mb = {"actions": act, "logprobs": behav_logp, "advantages": torch.randn(n, generator=g),
          "values": torch.zeros(n), "returns": torch.randn(n, generator=g)}
    return logits, mb


def test_decoupled_loss_with_the_behaviour_policy_as_proximal_is_plain_ppo():
    logits, mb = _minibatch()
    cfg = PPOConfig()
    plain, _ = ppo_loss(logits, torch.zeros(64), mb, cfg)
    decoupled, _ = ppo_loss(logits, torch.zeros(64), mb, cfg, prox_logprob=mb["logprobs"])
    assert decoupled.item() == pytest.approx(plain.item(), rel=1e-6)
    grad_plain = torch.autograd.grad(plain, logits)[0]
    grad_dec = torch.autograd.grad(
        ppo_loss(logits, torch.zeros(64), mb, cfg, prox_logprob=mb["logprobs"])[0], logits)[0]
    torch.testing.assert_close(grad_dec, grad_plain, rtol=1e-5, atol=1e-7)


def test_decoupled_loss_clips_against_the_proximal_policy_and_penalises_kl():
    logits, mb = _minibatch(seed=1)
    n = len(mb["actions"])
    new_logp = torch.log_softmax(logits.detach(), -1)[torch.arange(n), mb["actions"]]
    prox = new_logp - 0.5  # the proximal policy is far: every ratio pi/pi_prox = e^0.5 > 1.2
    cfg = PPOConfig(clip_coef=0.2, norm_adv=False, ent_coef=0.0, vf_coef=0.0)
    _, parts = ppo_loss(logits, torch.zeros(n), mb, cfg, prox_logprob=prox)
    assert float(parts["clipfrac"]) == 1.0
    adv = mb["advantages"]
    w = (new_logp - mb["logprobs"]).exp()  # importance weight pi / pi_behav
    clipped = math.log(1.2) + prox - mb["logprobs"]
    by_hand = torch.max(-adv * w, -adv * clipped.exp()).mean()
    assert float(parts["policy_loss"]) == pytest.approx(float(by_hand), rel=1e-5)
    # the fixed KL penalty alone (clip off): kl_coef * 0.5 * E[log(pi/pi_prox)^2] on top
    kl_cfg = PPOConfig(clip_coef=0.0, kl_coef=2.0, norm_adv=False, ent_coef=0.0, vf_coef=0.0)
    _, parts = ppo_loss(logits, torch.zeros(n), mb, kl_cfg, prox_logprob=prox)
    expected = (-adv * w).mean() + 2.0 * 0.5 * 0.25
    assert float(parts["policy_loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_kl_variant_does_not_clip_the_value_loss():
    """clip_coef=0 (the fixed-KL variant) turns value clipping off too: clipping the value
    within 0 of the rollout's values would freeze the critic."""
    logits, mb = _minibatch(seed=3)
    n = len(mb["actions"])
    new_value = torch.randn(n, requires_grad=True)
    cfg = PPOConfig(clip_coef=0.0, kl_coef=1.0, clip_vloss=True)
    _, parts = ppo_loss(logits, new_value, mb, cfg, prox_logprob=mb["logprobs"])
    expected = 0.5 * ((new_value.detach() - mb["returns"]) ** 2).mean()
    assert float(parts["value_loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_importance_weight_is_capped_against_stale_data():
    logits, mb = _minibatch(seed=2)
    n = len(mb["actions"])
    new_logp = torch.log_softmax(logits.detach(), -1)[torch.arange(n), mb["actions"]]
    mb["logprobs"] = new_logp - 20.0  # weights e^20 without the cap
    cfg = PPOConfig(clip_coef=0.0, kl_coef=1.0, norm_adv=False)
    mb["advantages"] = torch.ones(n)
    _, parts = ppo_loss(logits, torch.zeros(n), mb, cfg, prox_logprob=new_logp,
                        imp_samp_max=100.0)
    assert float(parts["policy_loss"]) == pytest.approx(-100.0, rel=1e-5)


def test_clip_and_kl_both_off_is_refused():
    with pytest.raises(ConfigError, match=r"^algo\.clip_coef=0"):
        PPOConfig(clip_coef=0.0, kl_coef=0.0).validate()


# ---- learning-rate rules ----------------------------------------------------------------

def test_depth_rule_scales_lr_with_depth_and_composes_with_the_width_rule():
    cfg = PPOConfig(lr=5e-4, lr_depth_rule=True, lr_base_depth=2)
    assert learning_rate(cfg, 1.0, 2) == pytest.approx(5e-4)
    assert learning_rate(cfg, 1.0, 8) == pytest.approx(2.5e-4)  # (8/2)^-1/2
    assert learning_rate(cfg, 4.0, 8) == pytest.approx(1.25e-4)  # and width 4: x 4^-1/2
    assert learning_rate(cfg, 1.0, None) == pytest.approx(5e-4)
    off = PPOConfig(lr=5e-4, lr_depth_rule=False)
    assert learning_rate(off, 1.0, 8) == pytest.approx(5e-4)


# ---- the batch-size schedule and the gradient noise scale -------------------------------

def test_noise_scale_recovers_a_known_gradient_noise():
    """Per-sample gradients G + noise with covariance sigma^2 I in d dims: B_simple is
    d sigma^2 / |G|^2. Minibatch gradients are means of b samples."""
    rng = np.random.default_rng(0)
    d, sigma, b, m = 50, 2.0, 16, 8
    G = rng.standard_normal(d)
    truth = d * sigma**2 / float(G @ G)
    noise = GradientNoiseScale(decay=0.95)
    p = nn.Parameter(torch.zeros(d))
    for _ in range(400):
        for _ in range(m):
            sample = G + sigma * rng.standard_normal((b, d))
            p.grad = torch.as_tensor(sample.mean(0), dtype=torch.float32)
            noise.add_minibatch([p])
        noise.end_epoch(b)
    assert noise.value == pytest.approx(truth, rel=0.2)


def test_greedy_schedule_doubles_only_while_the_minibatch_is_below_the_noise_scale():
    noise = GradientNoiseScale()
    sched = BatchSchedule("greedy", num_envs=4, num_steps=16, batch_max=512, check_every=2,
                          noise=noise, num_minibatches=4)
    assert sched.batch_size == 64 and math.isinf(noise.value)
    assert sched.update(0, 2) == 1  # nothing measured yet: no doubling
    noise.g2, noise.trace, noise.weight = -1.0, 100.0, 1.0  # |G|^2 estimated <= 0: none
    assert sched.update(0, 2) == 1
    noise.g2, noise.trace, noise.weight = 1.0, 100.0, 1.0  # B_noise = 100
    assert sched.update(0, 1) == 1  # not a check iteration
    assert sched.update(0, 2) == 2 and sched.batch_size == 128  # minibatch 16 <= 50
    assert sched.update(0, 4) == 2 and sched.batch_size == 256  # minibatch 32 <= 50
    assert sched.update(0, 6) == 1 and sched.batch_size == 256  # minibatch 64 > 50: stays
    noise.trace = 1e6
    assert sched.update(0, 8) == 2 and sched.update(0, 10) == 1  # capped at batch_max 512
    assert sched.num_steps == 128
    restored = BatchSchedule("greedy", num_envs=4, num_steps=16, batch_max=512)
    restored.load_state_dict(sched.state_dict())
    assert restored.batch_size == 512 and restored.noise.value == pytest.approx(1e6)


def test_power_law_schedule_follows_interactions_on_the_doubling_ladder():
    sched = BatchSchedule("power_law", num_envs=8, num_steps=32, power=0.5, e0=10_000)
    assert sched.batch_min == 256 and sched.batch_max == 16 * 256
    assert sched.update(5_000, 1) == 1 and sched.batch_size == 256
    sched.update(40_000, 2)  # (4)^0.5 = 2x
    assert sched.batch_size == 512
    sched.update(160_000, 3)  # (16)^0.5 = 4x
    assert sched.batch_size == 1024
    sched.update(10**9, 4)  # capped
    assert sched.batch_size == 16 * 256
    with pytest.raises(ValueError, match="batch_max=100"):
        BatchSchedule("greedy", num_envs=8, num_steps=32, batch_max=100)


# ---- models: the value network shared or separate ---------------------------------------

def test_separate_value_knob_gives_the_value_head_its_own_trunk():
    shared = build_model("impala_cnn", (64, 64, 3), 15, width=0.25)
    dual = build_model("impala_cnn", (64, 64, 3), 15, width=0.25, separate_value=True)
    trunk = sum(p.numel() for p in shared.trunk.parameters())
    assert sum(p.numel() for p in dual.parameters()) == sum(
        p.numel() for p in shared.parameters()) + trunk
    obs = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    h_pi, h_v = shared.features(obs)
    assert h_pi is h_v and h_pi.shape == (2, shared.hidden_size)
    h_pi, h_v = dual.features(obs)
    assert h_pi is not h_v
    one = build_model("mnist_cnn", (28, 28, 1), 10, width=0.25, separate_value=False)
    assert one.value_trunk is None and len(one.scaled_modules()) == 1


# ---- runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["ppo_ewma", "ppg_ewma", "ppg_ewma_kl", "ppg_ewma_batchnorm"])
def test_learns_the_obs_action_probe(algo, tmp_path):
    kl = {"kl": ["algo.clip_coef=0", "algo.kl_coef=1"],
          "batchnorm": ["algo.adv_norm=batch"]}.get(algo.split("_")[-1], [])
    algo = algo.removesuffix("_kl").removesuffix("_batchnorm")
    overrides = ["env=probe", "env.id=obs_action_reward", "env.num_envs=8", "model=mlp",
                 f"algo={algo}", *kl, "budget.value=8192", "algo.num_steps=16",
                 "algo.num_minibatches=4", "algo.n_pi=4", "algo.aux_minibatches_per_iteration=2",
                 "algo.gamma=0.9", "algo.ent_coef=0.0", "algo.lr=3e-3",
                 "algo.lr_width_rule=false", "algo.norm_reward=false", "logger.progress=none",
                 "checkpoint_every=null", "seed=0"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[0]["return_mean"] < 0.5
    assert np.mean([r["return_mean"] for r in rows[-5:]]) > 0.95
    if algo == "ppg_ewma":
        aux = [r for r in rows if "aux_kl" in r]
        # one auxiliary phase every n_pi = 4 iterations, none once the budget is spent
        assert [r["iteration"] for r in aux] == list(range(4, len(rows), 4))
        info = json.loads((tmp_path / "run.json").read_text())
        assert set(info["networks"]) == {"policy", "proximal", "aux_value"}
        assert info["networks"]["proximal"]["copy_of"] == "policy"
        assert info["networks"]["aux_value"]["effective"] is False


def test_ppg_ewma_learns_the_mnist_bandit(tmp_path):
    overrides = [*MNIST, "budget.value=24576"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[0]["return_mean"] < 0.2  # chance is 0.1
    assert np.mean([r["return_mean"] for r in rows[-4:]]) > 0.5
    aux = [r for r in rows if "aux_kl" in r]
    assert aux and all(r["aux_samples"] == 4 * 8 * 64 for r in aux)
    # FLOPs: the auxiliary phases count one forward per stored sample plus a forward and
    # backward per sample per epoch, so PPG spends more than the policy phase alone
    info = json.loads((tmp_path / "run.json").read_text())
    f = info["networks"]["policy"]["flops_per_forward"]["total"]
    policy_phase = len(rows) * (512 + 8 + 512 * 3)
    aux_phase = len(aux) * (4 * 512 + 6 * 4 * 512 * 3)
    assert rows[-1]["flops.policy"] == pytest.approx((policy_phase + aux_phase) * f)


@pytest.mark.parametrize("keep", [True, False])
def test_resume_inside_a_policy_phase(keep, tmp_path):
    """Killed after a checkpoint inside a policy phase, the resumed run continues its counters
    and its curve (every iteration logged once), and its next auxiliary phase distils the
    whole phase when the rollouts were checkpointed, only the ones since the resume when not."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_scaling.sweep", *MNIST, "algo.n_pi=6",
           "budget.value=12288", "checkpoint_every=1 updates",
           f"algo.checkpoint_aux_buffer={str(keep).lower()}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    kill_after_a_checkpoint(proc, run_dir, lines=2)
    at_kill = load_checkpoint(run_dir / "checkpoints/latest.pt")
    killed_at = at_kill["counters"]["iterations"]
    # the EWMA copy and its running weight are part of the state
    assert set(at_kill["objects"]) >= {"proximal", "ewma", "aux_head", "aux_buffer"}
    assert at_kill["objects"]["ewma"]["total_weight"] > 1.0
    assert 0 < killed_at < 6  # inside the first policy phase
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = RunRecord(run_dir).read_metrics()
    assert [r["iteration"] for r in rows] == list(range(1, 25))
    assert [r["env_steps"] for r in rows] == [512 * i for i in range(1, 25)]
    first_aux = next(r for r in rows if "aux_kl" in r)
    assert first_aux["iteration"] == 6
    expected = 6 if keep else 6 - killed_at
    assert first_aux["aux_samples"] == expected * 512
    assert ("not checkpointed" in done.stdout + done.stderr) is (not keep)
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["starts"]) == 2


def test_batch_schedule_grows_the_rollout_and_rescales(tmp_path):
    overrides = [*MNIST, "algo=ppo_ewma", "budget.value=16384", "algo.batch_schedule=power_law",
                 "algo.batch_e0=1024", "algo.batch_power=1.0", "algo.batch_max=2048"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    sizes = [r["batch_size"] for r in rows]
    assert sizes[0] == 512 and max(sizes) == 2048 and sizes == sorted(sizes)
    assert sum(sizes) == rows[-1]["env_steps"]  # every iteration's rollout is counted
    first, last = rows[0], rows[-1]
    assert last["lr"] == pytest.approx(4 * first["lr"])  # lr x 4 for a 4x batch
    assert last["ewma_decay"] == pytest.approx(first["ewma_decay"] ** 4)


@pytest.mark.parametrize("algo", ["ppo", "ppo_ewma", "ppg_ewma"])
def test_mnist_experiments_keep_their_recipe_with_every_trainer(algo):
    for experiment in ("mnist_width", "mnist_horizon"):
        cfg = _cfg([f"+experiment={experiment}", f"algo={algo}"])
        assert cfg.algo.name == algo
        assert (cfg.algo.num_steps, cfg.algo.num_minibatches, cfg.algo.gae_lambda) == (512, 4, 1.0)
        assert cfg.algo.norm_reward is False


def test_same_seed_same_curve_as_before_the_policy_distributions(tmp_path):
    """PPG-EWMA's first 16 iterations (8 auxiliary phases) on a discrete probe, recorded
    before the on-policy blocks went through ``agents.distributions``, are reproduced:
    counters exactly, floats to 1e-5 (bit for bit on the development machine)."""
    pinned = json.loads((ROOT / "tests/data/ppg_pinned_curves.json").read_text())["ppg_probe"]
    overrides = ["algo=ppg_ewma", "env=probe", "env.id=obs_action_reward", "model=mlp",
                 "budget.value=2048", "algo.num_steps=16", "algo.num_minibatches=4",
                 "algo.n_pi=2", "algo.aux_minibatches_per_iteration=2", "env.num_envs=8",
                 "seed=0", "logger.progress=none", "torch_threads=1", "checkpoint_every=null"]
    assert run(_cfg(overrides), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert len(rows) == len(pinned)
    for old, new in zip(pinned, rows, strict=True):
        for key, value in old.items():
            if key in ("env_steps", "updates", "samples", "flops", "iteration"):
                assert new[key] == value, key
            else:
                assert new[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
