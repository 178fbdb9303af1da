"""V-MPO: its loss pieces against hand-computed values, the policy distributions against
torch.distributions, learning the discrete and continuous probes through the real entry path
(config -> ``rl_scaling.run.run`` -> ``agents.vmpo.train``), a resume that continues the
multipliers, and one-line config errors."""

import json
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError
from torch import distributions as D

from agents.distributions import Categorical, DiagGaussian, policy_distribution
from agents.models import build_model
from agents.vmpo import (
    Multipliers,
    VMPOConfig,
    temperature_loss,
    top_advantages,
    trust_region_loss,
    vmpo_loss,
)
from envs import PROBES
from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.config import register_configs
from rl_scaling.record import RunRecord
from rl_scaling.registry import ConfigError
from rl_scaling.run import run, validate

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()
# 8 envs x 16 steps, 4 epochs of 4 minibatches (16 updates against each pi_old), 80 iterations
PROBE = ["algo=vmpo", "env=probe", "env.num_envs=8", "model=mlp", "budget.value=10240",
         "algo.num_steps=16", "algo.num_epochs=4", "algo.num_minibatches=4", "algo.gamma=0.9",
         "algo.lr=3e-3", "algo.lr_width_rule=false", "algo.norm_reward=false",
         "algo.max_grad_norm=1.0", "logger.progress=none", "checkpoint_every=null",
         "torch_threads=1", "seed=0"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _model(run_dir: Path, probe) -> torch.nn.Module:
    """The trained model, rebuilt from the run's final checkpoint."""
    box = isinstance(probe.action_space, gymnasium.spaces.Box)
    n = math.prod(probe.action_space.shape) if box else probe.num_actions
    model = build_model("mlp", (1,), n, continuous=box)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints/latest.pt")["objects"]["model"])
    return model


# ---- the loss pieces ----------------------------------------------------------------------

def test_top_advantages_keeps_the_largest_fraction():
    adv = torch.tensor([3.0, -1.0, 2.0, 0.0, 5.0, -2.0])
    assert sorted(top_advantages(adv, 0.5).tolist()) == [0, 2, 4]
    assert sorted(top_advantages(adv, 1 / 3).tolist()) == [0, 4]
    assert top_advantages(adv, 1.0).numel() == 6
    assert top_advantages(adv, 0.01).tolist() == [4]  # never empty
    assert top_advantages(torch.arange(7.0), 0.5).numel() == 4  # ceil(3.5)


def test_temperature_loss_value_and_gradient_sign():
    adv = torch.tensor([1.0, 2.0, 3.0])
    eta = torch.tensor(2.0, requires_grad=True)
    loss = temperature_loss(eta, adv, 0.1)
    by_hand = 2.0 * 0.1 + 2.0 * math.log((math.exp(0.5) + math.exp(1.0) + math.exp(1.5)) / 3)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # d/d eta = eps + log mean exp(A/eta) - sum psi A / eta
    (grad,) = torch.autograd.grad(loss, eta)
    psi = torch.softmax(adv / 2.0, 0)
    expected = 0.1 + math.log(float(torch.exp(adv / 2.0).mean())) - float((psi * adv).sum()) / 2
    assert float(grad) == pytest.approx(expected, rel=1e-5)

    def grad_at(value: float, advantages: torch.Tensor) -> float:
        e = torch.tensor(value, requires_grad=True)
        return float(torch.autograd.grad(temperature_loss(e, advantages, 0.01), e)[0])

    spread = torch.tensor([-3.0, 0.0, 1.0, 4.0])
    # too cold (psi nearly one-hot: KL(psi || uniform) ~ log 4 > eps): eta must grow
    assert grad_at(0.05, spread) < 0
    # too hot (psi nearly uniform: KL ~ 0 < eps): eta must shrink
    assert grad_at(100.0, spread) > 0
    # equal advantages: psi is uniform whatever eta, the gradient is eps_eta exactly
    assert grad_at(0.7, torch.full((4,), 2.0)) == pytest.approx(0.01, abs=1e-5)


def test_trust_region_loss_moves_alpha_by_the_violation_and_the_policy_by_alpha():
    alpha = torch.tensor(3.0, requires_grad=True)
    kl = torch.tensor(0.02, requires_grad=True)
    loss = trust_region_loss(alpha, kl, 0.005)
    assert loss.item() == pytest.approx(3.0 * (0.005 - 0.02) + 3.0 * 0.02)
    g_alpha, g_kl = torch.autograd.grad(loss, (alpha, kl))
    assert float(g_alpha) == pytest.approx(0.005 - 0.02)  # KL too large: alpha grows
    assert float(g_kl) == pytest.approx(3.0)  # the policy is pulled back with weight alpha


def _categorical_minibatch(n=8, actions=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, actions, generator=g, requires_grad=True)
    mb = {"actions": torch.randint(0, actions, (n,), generator=g),
          "advantages": torch.randn(n, generator=g),
          "returns": torch.randn(n, generator=g),
          "dist_params": params.detach() + 0.5 * torch.randn(n, actions, generator=g)}
    return params, mb


def test_vmpo_loss_categorical_by_hand():
    params, mb = _categorical_minibatch()
    cfg = VMPOConfig(eps_eta=0.02, eps_alpha=0.01, vf_coef=0.5)
    mult = Multipliers({"eta": 0.7, "alpha": 4.0})
    value = torch.randn(8, generator=torch.Generator().manual_seed(1))
    loss, parts = vmpo_loss(params, value, mb, cfg, Categorical(3), mult)

    adv = mb["advantages"]
    top = adv.argsort(descending=True)[:4]  # the top half of 8
    logp = torch.log_softmax(params.detach(), -1)[torch.arange(8), mb["actions"]]
    w = torch.exp(adv[top] / 0.7)
    psi = w / w.sum()
    policy = -(psi * logp[top]).sum()
    temp = 0.7 * 0.02 + 0.7 * math.log(float(w.mean()))
    old = torch.log_softmax(mb["dist_params"], -1)
    kl = (old.exp() * (old - torch.log_softmax(params.detach(), -1))).sum(-1).mean()
    value_loss = 0.5 * ((value - mb["returns"]) ** 2).mean()
    expected = policy + temp + 4.0 * 0.01 + 0.5 * value_loss  # alpha terms: alpha * eps
    assert float(parts["policy_loss"]) == pytest.approx(float(policy), rel=1e-5)
    assert float(parts["temperature_loss"]) == pytest.approx(temp, rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(parts["value_loss"]) == pytest.approx(float(value_loss), rel=1e-6)
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    assert parts["loss"].item() == loss.item()
    # the network's gradient: psi-weighted log-likelihood of the top half plus alpha * KL
    loss.backward()
    ref = params.detach().clone().requires_grad_(True)
    logp_ref = torch.log_softmax(ref, -1)
    kl_ref = (old.exp() * (old - logp_ref)).sum(-1).mean()
    (-(psi * logp_ref[torch.arange(8), mb["actions"]][top]).sum() + 4.0 * kl_ref).backward()
    torch.testing.assert_close(params.grad, ref.grad, rtol=1e-5, atol=1e-7)
    # the multipliers' gradients: the temperature dual, and eps - KL for alpha (log-space)
    assert float(mult.log["alpha"].grad) == pytest.approx(4.0 * (0.01 - float(kl)), rel=1e-5)


def test_vmpo_loss_gaussian_uses_the_decoupled_kls():
    g = torch.Generator().manual_seed(0)
    dist = DiagGaussian((2,))
    params = torch.randn(16, 4, generator=g, requires_grad=True)
    mb = {"actions": torch.randn(16, 2, generator=g), "advantages": torch.randn(16, generator=g),
          "returns": torch.zeros(16),
          "dist_params": params.detach() + 0.1 * torch.randn(16, 4, generator=g)}
    cfg = VMPOConfig(eps_alpha_mu=0.01, eps_alpha_sigma=1e-4)
    mult = Multipliers({"eta": 1.0, "alpha_mu": 2.0, "alpha_sigma": 30.0})
    loss, parts = vmpo_loss(params, torch.zeros(16), mb, cfg, dist, mult)
    assert set(parts) >= {"kl_mean", "kl_std"} and "kl" not in parts
    loss.backward()
    kl_mean = float(dist.kl_mean(mb["dist_params"], params.detach()).mean())
    kl_std = float(dist.kl_std(mb["dist_params"], params.detach()).mean())
    assert float(parts["kl_mean"]) == pytest.approx(kl_mean, rel=1e-6)
    assert float(mult.log["alpha_mu"].grad) == pytest.approx(2.0 * (0.01 - kl_mean), rel=1e-5)
    assert float(mult.log["alpha_sigma"].grad) == pytest.approx(30.0 * (1e-4 - kl_std),
                                                                rel=1e-4)


def test_multipliers_stay_positive_and_are_floored():
    mult = Multipliers({"eta": 1.0, "alpha": 5.0})
    assert mult["alpha"].item() == pytest.approx(5.0)
    with torch.no_grad():
        mult.log["eta"].fill_(-100.0)
    mult.floor_()
    assert mult["eta"].item() == pytest.approx(1e-8, rel=1e-5)
    assert set(mult.values()) == {"eta", "alpha"}


# ---- the distributions against torch.distributions ----------------------------------------

def test_categorical_kl_and_logprob_match_torch():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    ref = D.kl_divergence(D.Categorical(logits=old), D.Categorical(logits=new))
    torch.testing.assert_close(Categorical(4).kl(old, new), ref, rtol=1e-5, atol=1e-6)
    actions = torch.tensor([0, 3, 1, 2, 2])
    logp, ent = Categorical(4).logprob_entropy(new, actions)
    torch.testing.assert_close(logp, D.Categorical(logits=new).log_prob(actions))
    torch.testing.assert_close(ent, D.Categorical(logits=new).entropy())


def test_gaussian_matches_torch_and_its_kl_decouples():
    g = torch.Generator().manual_seed(0)
    dist = DiagGaussian((3,))
    old, new = torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g)

    def normal(mean, log_std):
        return D.Independent(D.Normal(mean, log_std.exp()), 1)

    (mo, so), (mn, sn) = dist.split(old), dist.split(new)
    torch.testing.assert_close(dist.kl(old, new), D.kl_divergence(normal(mo, so), normal(mn, sn)))
    # kl_mean: only the mean moves (old std); kl_std: only the std moves (old mean)
    torch.testing.assert_close(dist.kl_mean(old, new),
                               D.kl_divergence(normal(mo, so), normal(mn, so)))
    torch.testing.assert_close(dist.kl_std(old, new),
                               D.kl_divergence(normal(mo, so), normal(mo, sn)))
    actions, logp = dist.sample(new, torch.Generator().manual_seed(1))
    assert actions.shape == (6, 3) and actions.dtype == torch.float32
    torch.testing.assert_close(logp, normal(mn, sn).log_prob(actions))
    logp2, ent = dist.logprob_entropy(new, actions)
    torch.testing.assert_close(logp2, logp)
    torch.testing.assert_close(ent, normal(mn, sn).entropy())


def test_policy_distribution_follows_the_action_space():
    cat = policy_distribution(gymnasium.spaces.Discrete(5))
    assert isinstance(cat, Categorical) and cat.param_dim == 5 and cat.action_shape == ()
    box = policy_distribution(gymnasium.spaces.Box(-1, 1, (2,)))
    assert isinstance(box, DiagGaussian) and box.param_dim == 4 and box.action_shape == (2,)
    with pytest.raises(ValueError, match="MultiBinary"):
        policy_distribution(gymnasium.spaces.MultiBinary(3))


# ---- learning the probes ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["action_reward", "obs_action_reward"])
def test_discrete_probe_reaches_known_solution(name, tmp_path):
    probe = PROBES[name]
    assert run(_cfg([*PROBE, f"env.id={name}"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[0]["return_mean"] < 0.5
    assert np.mean([r["return_mean"] for r in rows[-5:]]) > 0.95
    model = _model(tmp_path, probe)
    obs = probe.observations()
    with torch.no_grad():
        logits, value = model(torch.as_tensor(obs))
    best = torch.softmax(logits, -1)[torch.arange(len(obs)), probe.optimal_action(obs)]
    assert (best > 0.9).all(), f"{name}: pi(optimal action) = {best.tolist()}"
    np.testing.assert_allclose(value.numpy(), probe.expected_value(obs, 0.9), atol=0.1)
    # every line logs the multipliers, the KL and the loss parts; the total is their sum
    last = rows[-1]
    assert {"eta", "alpha", "kl", "temperature_loss", "alpha_loss", "entropy"} <= set(last)
    assert last["eta"] > 0 and last["alpha"] > 0
    # FLOPs as PPO's: per iteration 128 acting + 8 bootstrap forwards, 4 x 128 x (fwd + bwd)
    info = json.loads((tmp_path / "run.json").read_text())
    f = info["flops_per_forward"]["effective"]
    assert last["flops"] == pytest.approx(len(rows) * (128 + 8 + 4 * 128 * 3) * f)


def test_continuous_probe_reaches_known_solution(tmp_path):
    probe = PROBES["continuous_obs_action"]
    assert run(_cfg([*PROBE, "env.id=continuous_obs_action"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert rows[0]["return_mean"] < 0.5
    # 1 - (mu - a*)^2 - sigma^2: the std is still shrinking under its tight KL bound
    assert np.mean([r["return_mean"] for r in rows[-5:]]) > 0.9
    assert {"alpha_mu", "alpha_sigma", "kl_mean", "kl_std"} <= set(rows[-1])
    model = _model(tmp_path, probe)
    obs = probe.observations()
    with torch.no_grad():
        params, value = model(torch.as_tensor(obs))
    mean, log_std = params[:, :1], params[:, 1:]
    np.testing.assert_allclose(mean.numpy(), probe.optimal_action(obs), atol=0.1)
    assert (log_std.exp() < 0.4).all()  # from 1 at the start
    np.testing.assert_allclose(value.numpy(), probe.expected_value(obs, 0.9), atol=0.15)


def test_resume_continues_the_multipliers_and_their_optimiser(tmp_path):
    """A run stopped after 20 iterations and resumed with a larger budget picks up alpha
    where it was (not at its initial value) and its dual Adam's step count."""
    # alpha starts far too large (KL << eps_alpha), so it falls steadily, ~dual_lr per step
    base = [*PROBE, "env.id=action_reward", "algo.num_epochs=1", "algo.init_alpha=50",
            "algo.dual_lr=0.05"]
    assert run(_cfg([*base, "budget.value=2560"]), tmp_path) == "finished"
    saved = load_checkpoint(tmp_path / "checkpoints/latest.pt")["objects"]
    alpha_saved = math.exp(float(saved["multipliers"]["log.alpha"]))
    assert math.log(50 / alpha_saved) > 1.0  # 80 dual steps moved it far from init_alpha
    assert run(_cfg([*base, "budget.value=5120"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    assert [r["iteration"] for r in rows] == list(range(1, 41))
    assert rows[19]["alpha"] == pytest.approx(alpha_saved, rel=1e-6)
    # one iteration of 4 dual Adam steps of lr 0.05 moves log(alpha) by at most ~0.2
    assert abs(math.log(rows[20]["alpha"] / alpha_saved)) < 0.25
    state = load_checkpoint(tmp_path / "checkpoints/latest.pt")["objects"]["dual_optimizer"]
    assert all(int(s["step"]) == 40 * 4 for s in state["state"].values())


# ---- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("algo.eps_eta=0", "algo.eps_eta"),
    ("algo.eps_alpha=-1", "algo.eps_alpha"),
    ("algo.eps_alpha_sigma=0", "algo.eps_alpha_sigma"),
    ("algo.top_fraction=0", "algo.top_fraction"),
    ("algo.init_eta=0", "algo.init_eta"),
    ("algo.dual_lr=0", "algo.dual_lr"),
    ("algo.gae_lambda=2", "algo.gae_lambda"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(_cfg(["algo=vmpo", override]))
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_unknown_key_names_the_key():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        _cfg(["algo=vmpo", "algo.eps_etta=0.1"])
    assert "eps_etta" in str(err.value) + str(err.value.__cause__)


def test_cnn_family_refuses_a_box_action_space_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="use model=mlp"):
        run(_cfg([*PROBE, "env.id=continuous_action", "model=mnist_cnn"]), tmp_path)
