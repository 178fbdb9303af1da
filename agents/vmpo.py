"""V-MPO (Song et al. 2019, "V-MPO: On-Policy Maximum a Posteriori Policy Optimization for
Discrete and Continuous Control"), on PPO's shared blocks.

Reads top to bottom like CleanRL: collect a rollout and its advantages with PPO's
``rollout_with_advantages`` (the one rollout, the one GAE; the buffer also keeps the behaviour
policy's distribution params), then per minibatch of ``num_epochs`` x ``num_minibatches``:

- value loss ``0.5 (V - G)^2`` on every sample (G: the GAE return; lambda 1 bootstrapped at
  the rollout's end is the paper's n-step return);
- E-step: keep the top ``top_fraction`` of the minibatch's advantages A, weight them
  ``psi = softmax(A / eta)``; policy loss ``-sum psi log pi(a|s)``;
- temperature loss ``eta eps_eta + eta log mean_top exp(A / eta)`` (a logsumexp), which
  learns eta;
- M-step trust region: ``alpha (eps_alpha - sg KL) + sg(alpha) KL`` with
  KL = KL(pi_old || pi) averaged over every sample; for a Gaussian policy the same on the
  decoupled ``kl_mean`` (alpha_mu, eps_alpha_mu) and ``kl_std`` (alpha_sigma,
  eps_alpha_sigma).

pi_old is the behaviour policy that collected the rollout, read from the buffer (no extra
forward): the paper's target network, updated every T_target learner steps, is in this
on-policy loop the policy at the start of the iteration (T_target = num_epochs x
num_minibatches updates). The multipliers eta and alpha(s) are ``exp`` of free parameters,
floored at 1e-8, trained by an Adam of their own (``dual_lr``). See docs/vmpo.md.

FLOPs (role ``policy``) as PPO's: acting, bootstrap and final-observation forwards through
``rollout_with_advantages``, a forward and backward per minibatch sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from agents.common import RewardNormalizer, require_feedforward
from agents.distributions import DiagGaussian, PolicyDistribution, policy_distribution
from agents.evaluation import EpisodeLog, evaluate
from agents.ppo import (
    iteration_metrics,
    learning_rate,
    rollout_buffer,
    rollout_with_advantages,
    sampling_policy,
    start_envs,
)
from rl_scaling.context import RunContext
from rl_scaling.registry import ConfigError, register_algo


@dataclass
class VMPOConfig:
    """V-MPO hyperparameters (``algo.*``). Where each default comes from: docs/vmpo.md."""

    name: str = "vmpo"
    num_steps: int = 256  # rollout length per env; a batch is env.num_envs * num_steps
    num_epochs: int = 1  # passes over each rollout (the paper uses each sample once)
    num_minibatches: int = 8  # per epoch; must divide the batch
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # 1: returns bootstrapped at the rollout's end (n-step)
    top_fraction: float = 0.5  # share of each minibatch's advantages the E-step keeps
    eps_eta: float = 0.01  # temperature constraint epsilon_eta
    eps_alpha: float = 0.005  # KL bound, categorical policy
    eps_alpha_mu: float = 0.005  # KL bound on the Gaussian's mean
    eps_alpha_sigma: float = 5e-5  # KL bound on the Gaussian's std
    init_eta: float = 1.0
    init_alpha: float = 5.0  # categorical
    init_alpha_mu: float = 1.0  # Gaussian
    init_alpha_sigma: float = 1.0  # Gaussian
    dual_lr: float = 1e-2  # Adam lr of the log-multipliers (their own optimiser)
    vf_coef: float = 1.0  # value-loss weight (the paper sums the losses unweighted)
    lr: float = 5e-4  # Adam learning rate of the network at width 1 (and lr_base_depth)
    lr_width_rule: bool = True  # lr = lr * model.width^-1/2 (as PPO)
    lr_depth_rule: bool = False  # lr *= (model.depth / lr_base_depth)^lr_depth_exponent
    lr_depth_exponent: float = -0.5
    lr_base_depth: int = 2
    anneal_lr: bool = False  # decay the network's lr linearly to 0 (not the dual lr)
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5  # the network's global gradient-norm clip
    norm_reward: bool = True  # scale rewards by the running std of the discounted return

    def validate(self) -> None:
        checks = [
            ("num_steps", self.num_steps > 0, "must be > 0"),
            ("num_epochs", self.num_epochs > 0, "must be > 0"),
            ("num_minibatches", self.num_minibatches > 0, "must be > 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "must be in [0, 1]"),
            ("top_fraction", 0 < self.top_fraction <= 1, "must be in (0, 1]"),
            ("eps_eta", self.eps_eta > 0, "must be > 0"),
            ("eps_alpha", self.eps_alpha > 0, "must be > 0"),
            ("eps_alpha_mu", self.eps_alpha_mu > 0, "must be > 0"),
            ("eps_alpha_sigma", self.eps_alpha_sigma > 0, "must be > 0"),
            ("init_eta", self.init_eta >= Multipliers.FLOOR, "must be >= 1e-8"),
            ("init_alpha", self.init_alpha >= Multipliers.FLOOR, "must be >= 1e-8"),
            ("init_alpha_mu", self.init_alpha_mu >= Multipliers.FLOOR, "must be >= 1e-8"),
            ("init_alpha_sigma", self.init_alpha_sigma >= Multipliers.FLOOR, "must be >= 1e-8"),
            ("dual_lr", self.dual_lr > 0, "must be > 0"),
            ("vf_coef", self.vf_coef >= 0, "must be >= 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("adam_eps", self.adam_eps > 0, "must be > 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
            ("lr_base_depth", self.lr_base_depth >= 1, "must be >= 1"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)} {why}")


class Multipliers(nn.Module):
    """V-MPO's Lagrange multipliers, each ``exp`` of a free parameter floored at 1e-8.

    In log space an Adam step changes a multiplier by a fraction of itself, whatever its
    scale (eta, alpha and alpha_sigma live orders of magnitude apart), and the floor is a
    clamp of the free parameter after each step, so the gradient never dies at it (a
    ``clamp`` inside the forward would). Not a network: no FLOPs, not in N.
    """

    FLOOR = 1e-8

    def __init__(self, initial: dict[str, float]) -> None:
        super().__init__()
        self.log = nn.ParameterDict({k: nn.Parameter(torch.tensor(math.log(v)))
                                     for k, v in initial.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.log[name].exp()

    @torch.no_grad()
    def floor_(self) -> None:
        for p in self.log.values():
            p.clamp_(min=math.log(self.FLOOR))

    def values(self) -> dict[str, float]:
        """The multipliers as floats, for the log line."""
        return {k: p.detach().exp().item() for k, p in self.log.items()}


def initial_multipliers(cfg: VMPOConfig, dist: PolicyDistribution) -> dict[str, float]:
    """eta, plus alpha (categorical) or alpha_mu and alpha_sigma (Gaussian)."""
    if isinstance(dist, DiagGaussian):
        return {"eta": cfg.init_eta, "alpha_mu": cfg.init_alpha_mu,
                "alpha_sigma": cfg.init_alpha_sigma}
    return {"eta": cfg.init_eta, "alpha": cfg.init_alpha}


def top_advantages(advantages: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``ceil(fraction * B)`` largest advantages (at least one)."""
    k = max(1, math.ceil(fraction * advantages.numel() - 1e-9))
    return torch.topk(advantages, k, sorted=False).indices


def temperature_loss(eta: torch.Tensor, top_adv: torch.Tensor, eps_eta: float) -> torch.Tensor:
    """``eta eps_eta + eta log mean exp(A / eta)`` over the kept advantages (the dual of the
    E-step; its minimum over eta sets psi's sharpness so KL(psi || uniform) ~ eps_eta)."""
    log_mean_exp = torch.logsumexp(top_adv / eta, dim=0) - math.log(top_adv.numel())
    return eta * eps_eta + eta * log_mean_exp


def trust_region_loss(alpha: torch.Tensor, kl: torch.Tensor, eps_alpha: float) -> torch.Tensor:
    """``alpha (eps_alpha - sg KL) + sg(alpha) KL``: alpha grows while KL > eps_alpha, and
    the policy is pulled back towards pi_old with weight alpha."""
    return alpha * (eps_alpha - kl.detach()) + alpha.detach() * kl


def vmpo_loss(params: torch.Tensor, new_value: torch.Tensor, mb: dict[str, torch.Tensor],
              cfg: VMPOConfig, dist: PolicyDistribution, multipliers: Multipliers
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The V-MPO objective on one minibatch (``mb`` from the rollout buffer, with
    ``dist_params`` of the behaviour policy); returns the total loss and its parts (detached:
    ``loss``, ``policy_loss``, ``value_loss``, ``temperature_loss``, ``alpha_loss``,
    ``entropy`` and ``kl``, or ``kl_mean`` and ``kl_std`` for a Gaussian)."""
    logprob, entropy = dist.logprob_entropy(params, mb["actions"])
    adv = mb["advantages"]

    # E-step: psi over the top advantages; eta is learned by its own (dual) loss
    eta = multipliers["eta"]
    top = top_advantages(adv, cfg.top_fraction)
    psi = torch.softmax(adv[top] / eta.detach(), dim=0)
    policy_loss = -(psi * logprob[top]).sum()
    eta_loss = temperature_loss(eta, adv[top], cfg.eps_eta)

    # M-step trust region against the behaviour policy, on every sample
    old = mb["dist_params"]
    if isinstance(dist, DiagGaussian):
        kl_mean, kl_std = dist.kl_mean(old, params).mean(), dist.kl_std(old, params).mean()
        alpha_loss = (trust_region_loss(multipliers["alpha_mu"], kl_mean, cfg.eps_alpha_mu)
                      + trust_region_loss(multipliers["alpha_sigma"], kl_std,
                                          cfg.eps_alpha_sigma))
        kls = {"kl_mean": kl_mean.detach(), "kl_std": kl_std.detach()}
    else:
        kl = dist.kl(old, params).mean()
        alpha_loss = trust_region_loss(multipliers["alpha"], kl, cfg.eps_alpha)
        kls = {"kl": kl.detach()}

    value_loss = 0.5 * ((new_value - mb["returns"]) ** 2).mean()
    loss = policy_loss + eta_loss + alpha_loss + cfg.vf_coef * value_loss
    parts = {"loss": loss.detach(), "policy_loss": policy_loss.detach(),
             "value_loss": value_loss.detach(), "temperature_loss": eta_loss.detach(),
             "alpha_loss": alpha_loss.detach(), "entropy": entropy.mean().detach(), **kls}
    return loss, parts


def train(cfg: VMPOConfig, ctx: RunContext) -> str:
    """Train the ``policy`` network (and the multipliers) until the budget is spent."""
    device = ctx.device
    envs = ctx.envs("train")
    num_envs = envs.num_envs
    batch_size = num_envs * cfg.num_steps
    if batch_size % cfg.num_minibatches:
        raise ConfigError(f"algo.num_minibatches={cfg.num_minibatches} must divide "
                          f"env.num_envs*algo.num_steps={batch_size}")
    minibatch_size = batch_size // cfg.num_minibatches
    dist = policy_distribution(envs.single_action_space)
    model = ctx.network("policy")
    require_feedforward(model, "vmpo")
    base_lr = learning_rate(cfg, ctx.model.get("width", 1.0), ctx.model.get("depth"))
    optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, eps=cfg.adam_eps)
    # the multipliers' own Adam: the width rule, gradient clipping and lr annealing are the
    # network's and would distort them (see docs/vmpo.md)
    multipliers = Multipliers(initial_multipliers(cfg, dist)).to(device)
    dual_optimizer = torch.optim.Adam(multipliers.parameters(), lr=cfg.dual_lr)
    reward_norm = RewardNormalizer(num_envs, cfg.gamma) if cfg.norm_reward else None
    buffer = rollout_buffer(envs, cfg.num_steps, device, store_dist_params=True)
    ctx.restore(model=model, optimizer=optimizer, multipliers=multipliers,
                dual_optimizer=dual_optimizer, reward_normalizer=reward_norm)
    policy = sampling_policy(model, ctx)
    next_obs, next_done = start_envs(envs, ctx)
    episodes = EpisodeLog()
    c = ctx.counters

    while not ctx.done:
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = base_lr * (1.0 - ctx.budget_fraction())

        # ---- rollout and advantages (PPO's; pi_old's params stored) ---------------------
        t_rollout = time.perf_counter()
        episodes.clear()
        rollout = rollout_with_advantages(model, envs, buffer, next_obs, next_done, cfg, ctx,
                                          reward_norm, episodes)
        next_obs, next_done = rollout.next_obs, rollout.next_done
        t_rollout = time.perf_counter() - t_rollout

        # ---- update: network and multipliers from one backward --------------------------
        t_update = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        for _epoch in range(cfg.num_epochs):
            for mb in buffer.minibatches(cfg.num_minibatches, generator=ctx.torch_rng):
                params, new_value = model(mb["obs"])
                loss, parts = vmpo_loss(params, new_value, mb, cfg, dist, multipliers)
                optimizer.zero_grad(set_to_none=True)
                dual_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                dual_optimizer.step()
                multipliers.floor_()
                for k, v in parts.items():
                    sums[k] = sums[k] + v if k in sums else v
                ctx.flops.add_forward_backward("policy", minibatch_size)
                c.updates += 1
                c.samples += minibatch_size
        t_update = time.perf_counter() - t_update

        # ---- log, evaluate, checkpoint (the run context's cadence) ----------------------
        metrics = {**iteration_metrics(cfg, sums, cfg.num_epochs * cfg.num_minibatches,
                                       optimizer.param_groups[0]["lr"], rollout, batch_size,
                                       t_rollout, t_update, episodes),
                   **multipliers.values()}
        ctx.end_iteration(metrics, evaluate=lambda: evaluate(policy, ctx.envs("eval"),
                                                             ctx.eval_episodes))
    return "finished"


register_algo("vmpo", VMPOConfig, train)
