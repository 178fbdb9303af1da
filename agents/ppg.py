"""Phasic Policy Gradient (Cobbe et al. 2021) and the EWMA proximal policy (Hilton et al. 2021).

One trainer, three registered algorithms:

- ``ppo_ewma``: PPO whose proximal policy is a bias-corrected exponential moving average
  of the policy's weights. The importance weight uses the behaviour policy (which
  collected the data); clipping, or the fixed KL penalty, is taken against the EWMA
  (``agents.ppo.ppo_loss`` with ``prox_logprob``). This is what makes PPO batch
  size-invariant.
- ``ppg``: a policy phase of ``n_pi`` PPO iterations, then an auxiliary phase of
  ``n_aux_epochs`` passes over the phase's rollouts that distils the value targets into an
  auxiliary value head on the policy's features while a KL term (weight ``bc_coef``)
  keeps the policy where it was, and trains the true value head further.
- ``ppg_ewma``: both, the trainer of Hilton, Tang & Schulman 2023. After every auxiliary
  phase the EWMA restarts from the current weights.

Reads top to bottom: collect a rollout with PPO's ``collect_rollout``, compute GAE, run the
policy-phase minibatches with PPO's ``ppo_loss``, every ``n_pi`` iterations run the
auxiliary phase, hand the iteration to the run context. The batch may grow under a
schedule (``agents.batch_schedule``). The value network is the model's: shared with the
policy or separate (``model.separate_value``).

FLOPs: role ``policy`` as in PPO (acting forwards, a forward and backward per minibatch
sample per epoch), plus a forward of ``proximal`` (the EWMA copy) per policy-phase sample
per epoch, and in the auxiliary phase one forward of ``policy`` per stored sample for the
old action distribution, then a forward and backward of ``policy`` and ``aux_value`` per
sample per auxiliary epoch.

Checkpoints: an iteration ends after its auxiliary phase, so a checkpoint never falls
inside one (a preemption signal is honoured when the phase ends). Inside a policy phase the
stored rollouts go into the checkpoint (``checkpoint_aux_buffer``, default), so a resumed
run distils exactly what an uninterrupted one would; with it off the checkpoint stays small
and a resumed run says that its next auxiliary phase distils only the rollouts collected
since the resume.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from agents.batch_schedule import SCHEDULES, BatchSchedule, GradientNoiseScale
from agents.buffers import RolloutBuffer
from agents.common import RewardNormalizer, require_feedforward
from agents.distributions import PolicyDistribution, policy_distribution
from agents.evaluation import EpisodeLog, evaluate
from agents.models import layer_init
from agents.ppo import (
    PPOConfig,
    iteration_metrics,
    learning_rate,
    ppo_loss,
    rollout_buffer,
    rollout_with_advantages,
    sampling_policy,
    start_envs,
)
from rl_scaling.context import RunContext
from rl_scaling.registry import ConfigError, register_algo

log = logging.getLogger(__name__)


@dataclass
class PPGConfig(PPOConfig):
    """PPO's keys (``algo.*``) plus the proximal policy, the phases and the batch schedule.

    Defaults: PPG-EWMA on Procgen (Cobbe et al. 2021; Hilton et al. 2021): one policy epoch
    of 8 minibatches, ``n_pi`` 32, 6 auxiliary epochs with a behavioural-cloning weight of 1.
    """

    name: str = "ppg_ewma"
    num_epochs: int = 1  # policy-phase epochs (PPG's E_pi)
    proximal: str = "ewma"  # ewma | behaviour: what clipping / the KL penalty act against
    # EWMA decay per policy step; null: c / (1 + c) with c = num_epochs * num_minibatches / 2,
    # which puts the EWMA's centre of mass where PPO's proximal policy is on average over an
    # iteration (0.8 for 1 x 8 minibatches, 0.923 for 3 x 8)
    ewma_decay: float | None = None
    imp_samp_max: float = 100.0  # cap on the importance weight pi / pi_behav (EWMA only)
    # with norm_adv: normalise advantages per minibatch (as PPO) or once per batch (as the
    # PPG/PPO-EWMA reference code; a minibatch's size then does not change the scale)
    adv_norm: str = "minibatch"
    n_pi: int = 32  # policy iterations per phase
    n_aux_epochs: int = 6  # auxiliary epochs per phase; 0: no auxiliary phase (PPO)
    aux_minibatches_per_iteration: int = 16  # aux minibatches per stored iteration per epoch
    aux_lr: float = 5e-4  # Adam lr of the auxiliary phase (width rule applies as for lr)
    bc_coef: float = 1.0  # weight of KL(pi_old || pi) in the auxiliary phase
    aux_vf_coef: float = 1.0  # weight of the true value head's loss in the auxiliary phase
    checkpoint_aux_buffer: bool = True  # store the phase's rollouts in checkpoints
    batch_schedule: str = "constant"  # constant | power_law | greedy
    batch_max: int | None = None  # largest batch (default 16 x the first)
    batch_power: float = 0.5  # power_law: B = B_min (E / E_0)^p
    batch_e0: int | None = None  # power_law: E_0 (default: 32 iterations at B_min)
    batch_check_every: int = 4  # greedy: iterations between noise-scale checks
    batch_rescale: bool = True  # scale lr, Adam betas and ewma_decay with the batch

    def validate(self) -> None:
        super().validate()
        checks = [
            ("proximal", self.proximal in ("ewma", "behaviour"), "must be ewma or behaviour"),
            ("adv_norm", self.adv_norm in ("minibatch", "batch"), "must be minibatch or batch"),
            ("ewma_decay", self.ewma_decay is None or 0 <= self.ewma_decay < 1,
             "must be in [0, 1) (or null)"),
            ("imp_samp_max", self.imp_samp_max > 1, "must be > 1"),
            ("n_pi", self.n_pi >= 1, "must be >= 1"),
            ("n_aux_epochs", self.n_aux_epochs >= 0, "must be >= 0"),
            ("aux_minibatches_per_iteration", self.aux_minibatches_per_iteration >= 1,
             "must be >= 1"),
            ("aux_lr", self.aux_lr > 0, "must be > 0"),
            ("bc_coef", self.bc_coef >= 0, "must be >= 0"),
            ("batch_schedule", self.batch_schedule in SCHEDULES,
             f"must be one of {', '.join(SCHEDULES)}"),
            ("batch_power", self.batch_power >= 0, "must be >= 0"),
            ("batch_check_every", self.batch_check_every >= 1, "must be >= 1"),
            ("num_minibatches", self.batch_schedule != "greedy" or self.num_minibatches >= 2,
             "must be >= 2 for algo.batch_schedule=greedy (the noise scale compares "
             "minibatch gradients)"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)} {why}")


class EwmaModel:
    """A bias-corrected exponential moving average of ``model``'s weights, kept in ``copy``.

    After ``t`` updates, ``copy = sum_i decay^(t-i) theta_i / sum_i decay^(t-i)`` over the
    weights ``theta_0`` (at construction or the last ``reset``) .. ``theta_t``: the running
    total weight ``w <- decay w + 1`` is the bias correction (an EWMA started from
    ``theta_0`` with weight 1, not from zeros). Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, copy: nn.Module, decay: float) -> None:
        self.model, self.copy, self.decay = model, copy, float(decay)
        self.copy.requires_grad_(False)
        self.reset()

    @torch.no_grad()
    def update(self) -> None:
        total = self.decay * self.total_weight + 1.0
        keep = self.decay * self.total_weight / total
        params = list(self.model.parameters())
        averaged = list(self.copy.parameters())
        torch._foreach_mul_(averaged, keep)
        torch._foreach_add_(averaged, params, alpha=1.0 / total)
        for b, b_avg in zip(self.model.buffers(), self.copy.buffers(), strict=True):
            b_avg.copy_(b)
        self.total_weight = total

    @torch.no_grad()
    def reset(self) -> None:
        self.copy.load_state_dict(self.model.state_dict())
        self.total_weight = 1.0

    def state_dict(self) -> dict[str, float]:
        return {"total_weight": self.total_weight, "decay": self.decay}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total_weight, self.decay = float(state["total_weight"]), float(state["decay"])


class AuxBuffer:
    """The observations and value targets of the current policy phase (on the host)."""

    def __init__(self, keep_in_checkpoint: bool) -> None:
        self.keep_in_checkpoint = keep_in_checkpoint
        self.obs: list[torch.Tensor] = []
        self.returns: list[torch.Tensor] = []
        self.iterations = 0  # policy iterations in this phase, stored or not

    def add(self, buffer: RolloutBuffer) -> None:
        self.obs.append(buffer.obs.flatten(0, 1).cpu().clone())
        self.returns.append(buffer.returns.flatten().cpu().clone())
        self.iterations += 1

    def clear(self) -> None:
        self.obs, self.returns, self.iterations = [], [], 0

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.returns)

    def state_dict(self) -> dict[str, Any]:
        stored = self.keep_in_checkpoint
        return {"iterations": self.iterations, "obs": self.obs if stored else None,
                "returns": self.returns if stored else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterations = int(state["iterations"])
        if state["obs"] is None:
            self.obs, self.returns = [], []
            if self.iterations:
                log.warning("resumed %d iterations into a policy phase whose rollouts were not "
                            "checkpointed (algo.checkpoint_aux_buffer=false): the next "
                            "auxiliary phase distils only the rollouts collected from now",
                            self.iterations)
        else:
            self.obs, self.returns = list(state["obs"]), list(state["returns"])


def ewma_decay(cfg: PPGConfig) -> float:
    """``cfg.ewma_decay``, or by default ``c / (1 + c)`` with ``c = num_epochs *
    num_minibatches / 2``: the EWMA's centre of mass, ``decay / (1 - decay)`` optimiser
    steps back, is then PPO's mean proximal (= behaviour) policy age over an iteration."""
    if cfg.ewma_decay is not None:
        return float(cfg.ewma_decay)
    c = cfg.num_epochs * cfg.num_minibatches / 2
    return c / (1 + c)


def _check_features(model: nn.Module) -> None:
    if not all(hasattr(model, a) for a in ("features", "policy_head", "value_head",
                                             "hidden_size")):
        raise ConfigError(f"algo=ppg needs a model with features(obs), policy_head, "
                          f"value_head and hidden_size for its auxiliary value head; "
                          f"{type(model).__name__} lacks them")


def aux_phase(cfg: PPGConfig, ctx: RunContext, model: nn.Module, aux_head: nn.Module,
              optimizer: torch.optim.Optimizer, store: AuxBuffer,
              dist: PolicyDistribution) -> dict[str, float]:
    """PPG's auxiliary phase over the stored rollouts; returns its mean losses."""
    device = ctx.device
    n = store.size
    if n == 0:
        return {}
    rollouts = len(store.returns)
    # one copy of the phase's observations: each stored rollout is freed once it is copied
    obs = torch.empty((n, *store.obs[0].shape[1:]), dtype=store.obs[0].dtype)
    start = 0
    while store.obs:
        seg = store.obs.pop(0)
        obs[start:start + len(seg)] = seg
        start += len(seg)
    returns = torch.cat(store.returns)
    num_mb = cfg.aux_minibatches_per_iteration * rollouts
    chunk = max(1, n // num_mb)
    model.eval()
    with torch.inference_mode():  # the policy to stay close to: before any aux step
        old_params = torch.cat([model(o.to(device))[0] for o in obs.split(4 * chunk)])
    ctx.flops.add_forward("policy", n)
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for _epoch in range(cfg.n_aux_epochs):
        perm = torch.randperm(n, generator=ctx.torch_rng)
        for idx in perm.chunk(num_mb):
            mb_obs = obs[idx].to(device, non_blocking=True)
            target = returns[idx].to(device, non_blocking=True)
            h_pi, h_v = model.features(mb_obs)
            params = model.policy_head(h_pi)
            value = model.value_head(h_v).squeeze(-1)
            aux_value = aux_head(h_pi).squeeze(-1)
            kl = dist.kl(old_params[idx.to(device)], params).mean()  # KL(pi_old || pi)
            aux_loss = 0.5 * ((aux_value - target) ** 2).mean()
            true_loss = 0.5 * ((value - target) ** 2).mean()
            loss = aux_loss + cfg.bc_coef * kl + cfg.aux_vf_coef * true_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([*model.parameters(), *aux_head.parameters()],
                                     cfg.max_grad_norm)
            optimizer.step()
            ctx.flops.add_forward_backward("policy", len(idx))
            ctx.flops.add_forward_backward("aux_value", len(idx))
            ctx.counters.updates += 1
            ctx.counters.samples += len(idx)
            for k, v in (("aux_kl", kl), ("aux_value_loss", aux_loss),
                         ("aux_true_value_loss", true_loss)):
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
    steps = cfg.n_aux_epochs * num_mb
    return {**{k: float(v) / steps for k, v in sums.items()}, "aux_samples": n}


def _rescale(optimizers: list[torch.optim.Optimizer], ewma: EwmaModel | None, factor: float
             ) -> None:
    """Hilton et al. 2021's batch-size rules for a batch ``factor`` times larger."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] *= factor
            b1, b2 = group["betas"]
            group["betas"] = (b1**factor, b2**factor)
    if ewma is not None:
        ewma.decay **= factor


def train(cfg: PPGConfig, ctx: RunContext) -> str:
    """Train ``policy`` (and the auxiliary value head) until the budget is spent."""
    device = ctx.device
    envs = ctx.envs("train")
    num_envs = envs.num_envs
    if (num_envs * cfg.num_steps) % cfg.num_minibatches:
        raise ConfigError(f"algo.num_minibatches={cfg.num_minibatches} must divide "
                          f"env.num_envs*algo.num_steps={num_envs * cfg.num_steps}")
    model = ctx.network("policy")
    require_feedforward(model, cfg.name)
    ewma = None
    if cfg.proximal == "ewma":
        ewma = EwmaModel(model, ctx.network("proximal", copy_of="policy"), ewma_decay(cfg))
    aux_head = aux_opt = None
    if cfg.n_aux_epochs > 0:
        _check_features(model)
        hidden = model.hidden_size
        aux_head = ctx.network("aux_value", lambda: layer_init(nn.Linear(hidden, 1), std=1.0),
                               effective=False, example=torch.zeros(1, hidden, device=device))
    width, depth = ctx.model.get("width", 1.0), ctx.model.get("depth")
    base_lr = learning_rate(cfg, width, depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, eps=cfg.adam_eps)
    aux_lr = cfg.aux_lr * base_lr / cfg.lr  # the same width/depth rule
    if aux_head is not None:
        aux_opt = torch.optim.Adam([*model.parameters(), *aux_head.parameters()], lr=aux_lr,
                                   eps=cfg.adam_eps)
    reward_norm = RewardNormalizer(num_envs, cfg.gamma) if cfg.norm_reward else None
    noise = GradientNoiseScale()
    schedule = BatchSchedule(cfg.batch_schedule, num_envs=num_envs, num_steps=cfg.num_steps,
                             batch_max=cfg.batch_max, power=cfg.batch_power, e0=cfg.batch_e0,
                             check_every=cfg.batch_check_every, noise=noise,
                             num_minibatches=cfg.num_minibatches)
    store = AuxBuffer(cfg.checkpoint_aux_buffer)
    ctx.restore(model=model, optimizer=optimizer, reward_normalizer=reward_norm,
                proximal=ewma.copy if ewma else None, ewma=ewma,
                aux_head=aux_head, aux_optimizer=aux_opt, batch_schedule=schedule,
                aux_buffer=store if aux_head is not None else None)
    # the learning rates' factor from batch rescaling, where a resumed schedule left it
    lr_scale = 2.0**schedule.doublings if cfg.batch_rescale else 1.0

    dist = policy_distribution(envs.single_action_space)

    def new_buffer() -> RolloutBuffer:
        return rollout_buffer(envs, schedule.num_steps, device)

    buffer = new_buffer()

    policy = sampling_policy(model, ctx)
    next_obs, next_done = start_envs(envs, ctx)
    episodes = EpisodeLog()
    c = ctx.counters
    params = list(model.parameters())
    per_batch = cfg.norm_adv and cfg.adv_norm == "batch"
    loss_cfg = dataclasses.replace(cfg, norm_adv=False) if per_batch else cfg
    measure_noise = cfg.batch_schedule == "greedy"

    while not ctx.done:
        batch_size = schedule.batch_size
        minibatch_size = batch_size // cfg.num_minibatches
        if cfg.anneal_lr:
            left = 1.0 - ctx.budget_fraction()
            optimizer.param_groups[0]["lr"] = base_lr * lr_scale * left
            if aux_opt is not None:
                aux_opt.param_groups[0]["lr"] = aux_lr * lr_scale * left

        # ---- rollout (PPO's) ------------------------------------------------------------
        t_rollout = time.perf_counter()
        episodes.clear()
        rollout = rollout_with_advantages(model, envs, buffer, next_obs, next_done, cfg, ctx,
                                          reward_norm, episodes)
        next_obs, next_done = rollout.next_obs, rollout.next_done
        if per_batch:
            adv = buffer.advantages
            buffer.advantages = (adv - adv.mean()) / (adv.std() + 1e-8)
        t_rollout = time.perf_counter() - t_rollout

        # ---- policy phase: PPO's loss against the proximal policy -----------------------
        t_update = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        for epoch in range(cfg.num_epochs):
            for mb in buffer.minibatches(cfg.num_minibatches, generator=ctx.torch_rng):
                prox_logprob = None
                if ewma is not None:
                    with torch.no_grad():
                        prox_params, _ = ewma.copy(mb["obs"])
                        prox_logprob, _ = dist.logprob_entropy(prox_params, mb["actions"])
                    ctx.flops.add_forward("proximal", minibatch_size)
                logits, new_value = model(mb["obs"])
                loss, parts = ppo_loss(logits, new_value, mb, loss_cfg, prox_logprob,
                                       cfg.imp_samp_max, dist=dist)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if measure_noise and epoch == 0:
                    noise.add_minibatch(params)
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                if ewma is not None:
                    ewma.update()
                for k, v in parts.items():
                    sums[k] = sums[k] + v if k in sums else v
                ctx.flops.add_forward_backward("policy", minibatch_size)
                c.updates += 1
                c.samples += minibatch_size
            if measure_noise and epoch == 0:
                noise.end_epoch(minibatch_size)

        # ---- auxiliary phase every n_pi iterations --------------------------------------
        aux_metrics: dict[str, float] = {}
        if aux_head is not None:
            store.add(buffer)
            if store.iterations >= cfg.n_pi and not ctx.done:
                aux_metrics = aux_phase(cfg, ctx, model, aux_head, aux_opt, store, dist)
                store.clear()
                if ewma is not None:
                    ewma.reset()
        t_update = time.perf_counter() - t_update

        # ---- the batch for the next iteration -------------------------------------------
        factor = schedule.update(c.env_steps, c.iterations + 1)
        if factor != 1:
            if cfg.batch_rescale:
                _rescale([o for o in (optimizer, aux_opt) if o is not None], ewma, factor)
                lr_scale *= factor
            buffer = new_buffer()

        metrics = {**iteration_metrics(cfg, sums, cfg.num_epochs * cfg.num_minibatches,
                                       optimizer.param_groups[0]["lr"], rollout, batch_size,
                                       t_rollout, t_update, episodes),
                   **aux_metrics, "batch_size": batch_size}
        if measure_noise:
            metrics["noise_scale"] = noise.value if np.isfinite(noise.value) else None
        if ewma is not None:
            metrics["ewma_decay"] = ewma.decay
        ctx.end_iteration(metrics, evaluate=lambda: evaluate(policy, ctx.envs("eval"),
                                                             ctx.eval_episodes))
    return "finished"


@dataclass
class PPOEwmaConfig(PPGConfig):
    """PPO-EWMA: the Procgen PPO recipe (3 epochs x 8 minibatches) with an EWMA proximal
    policy and no auxiliary phase."""

    name: str = "ppo_ewma"
    num_epochs: int = 3
    n_aux_epochs: int = 0


@dataclass
class PPGBehaviourConfig(PPGConfig):
    """PPG as published (Cobbe et al. 2021): proximal policy = behaviour policy."""

    name: str = "ppg"
    proximal: str = "behaviour"


register_algo("ppo_ewma", PPOEwmaConfig, train)
register_algo("ppg", PPGBehaviourConfig, train)
register_algo("ppg_ewma", PPGConfig, train)
