"""Proximal Policy Optimisation (Schulman et al. 2017), Procgen recipe (Cobbe et al. 2020).

Reads top to bottom like CleanRL's ``ppo_procgen.py``: collect a rollout, compute GAE, run
``num_epochs`` of clipped-objective minibatch updates, then hand the iteration to the run
context (log, evaluate, checkpoint). The rollout (``collect_rollout``,
``rollout_with_advantages``), ``ppo_loss`` and the log line (``iteration_metrics``) are
functions so that PPG, the EWMA variants and V-MPO reuse them; the shared blocks (rollout
buffer + GAE, policy distributions, reward normalisation, evaluation) live in ``agents/``.
Actions are discrete (categorical) or continuous (``Box``: a diagonal Gaussian), as the env's
action space says (``agents.distributions.policy_distribution``).

FLOPs (role ``policy``): each env step costs one acting forward per env, plus one forward
per env per rollout for the bootstrap value and one per truncated episode for the value of
its final observation; each minibatch costs a forward and a backward (2x forward) per
sample. Held-out evaluation is not training compute and is not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from agents.buffers import RolloutBuffer
from agents.common import RewardNormalizer, require_feedforward
from agents.distributions import Categorical, PolicyDistribution, policy_distribution
from agents.evaluation import EpisodeLog, evaluate
from envs.groups import EnvGroups
from rl_scaling.context import RunContext
from rl_scaling.distributed import SINGLE, Distributed
from rl_scaling.registry import ConfigError, register_algo
from rl_scaling.speed import Speed

EAGER = Speed()  # fp32, nothing compiled: what a caller without a run context gets


@dataclass
class PPOConfig:
    """PPO hyperparameters (``algo.*``); defaults are the standard Procgen PPO recipe."""

    name: str = "ppo"
    num_steps: int = 256  # rollout length per env; a batch is env.num_envs * num_steps
    num_epochs: int = 3  # passes over each rollout
    num_minibatches: int = 8  # per epoch; must divide the batch
    gamma: float = 0.999  # discount
    gae_lambda: float = 0.95  # GAE lambda (1: Monte-Carlo returns bootstrapped at the end)
    clip_coef: float = 0.2  # ratio clip for the policy (and the value, with clip_vloss); 0: off
    clip_vloss: bool = True  # clip the value update around the rollout's values
    kl_coef: float = 0.0  # fixed KL penalty 0.5 E[(log pi - log pi_prox)^2]; 0: off
    ent_coef: float = 0.01  # entropy bonus
    vf_coef: float = 0.5  # value-loss weight
    lr: float = 5e-4  # Adam learning rate at width 1 (and lr_base_depth)
    lr_width_rule: bool = True  # lr = lr * model.width^-1/2 (Hilton et al. 2023)
    lr_depth_rule: bool = False  # lr *= (model.depth / lr_base_depth)^lr_depth_exponent
    lr_depth_exponent: float = -0.5
    lr_base_depth: int = 2  # the depth at which algo.lr was tuned
    anneal_lr: bool = False  # decay lr linearly to 0 over the budget
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5  # global gradient-norm clip
    norm_adv: bool = True  # normalise advantages per minibatch
    norm_reward: bool = True  # scale rewards by the running std of the discounted return

    def validate(self) -> None:
        checks = [
            ("num_steps", self.num_steps > 0, "must be > 0"),
            ("num_epochs", self.num_epochs > 0, "must be > 0"),
            ("num_minibatches", self.num_minibatches > 0, "must be > 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "must be in [0, 1]"),
            ("clip_coef", self.clip_coef >= 0, "must be >= 0 (0: no clipping)"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            ("clip_coef", self.clip_coef > 0 or self.kl_coef > 0,
             "is 0 with algo.kl_coef=0: nothing limits the policy update"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
            ("lr_base_depth", self.lr_base_depth >= 1, "must be >= 1"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)} {why}")


def learning_rate(cfg: Any, width: float, depth: int | None = None) -> float:
    """The learning rate of a model of this width and depth (``cfg``: any on-policy config
    with PPO's ``lr*`` keys: PPO's, PPG's, V-MPO's).

    ``lr_width_rule``: ``lr * width^-1/2`` (Hilton et al. 2023's rule for width scaling).
    ``lr_depth_rule``: times ``(depth / lr_base_depth)^lr_depth_exponent``, -1/2 by default:
    a residual stack of ``depth`` blocks sums ``depth`` updates into its output, so the
    step per block shrinks as depth^-1/2 to keep the output's change fixed (our reading of
    the depth rule; the exponent is a knob). ``depth=None`` (a family's default) leaves it.
    """
    lr = cfg.lr * width**-0.5 if cfg.lr_width_rule else cfg.lr
    if cfg.lr_depth_rule and depth is not None:
        lr *= (depth / cfg.lr_base_depth) ** cfg.lr_depth_exponent
    return lr


def _obs_tensor(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    # from_numpy shares memory; the copy to the device (or into the buffer) is the only copy
    return torch.from_numpy(obs).to(device, non_blocking=True)


class Rollout(NamedTuple):
    next_obs: torch.Tensor  # where the next rollout continues from
    next_done: torch.Tensor
    raw_reward_sum: float  # before normalisation and bootstrapping
    final_value_forwards: int  # forwards run on final observations of truncated episodes


def collect_rollout(model: nn.Module, envs, buffer: RolloutBuffer, next_obs: torch.Tensor,
                    next_done: torch.Tensor, *, gamma: float, generator: torch.Generator,
                    reward_norm: RewardNormalizer | None, episodes: EpisodeLog,
                    speed: Speed | None = None) -> Rollout:
    """Fill ``buffer`` with ``buffer.num_steps`` steps of every env, acting with ``model``
    (actions from the env's action space's :func:`policy_distribution`; the behaviour
    policy's params go into the buffer where it stores them).

    A truncated episode (a time limit, not a terminal state) keeps its value: where the env
    reports the final observation, ``gamma * V(final_obs)`` is added to that step's reward,
    so GAE, which cuts at every episode end, still bootstraps through the time limit. The
    caller counts the acting FLOPs (``buffer.size`` forwards, plus
    ``final_value_forwards``) and bootstraps the end of the rollout.

    ``speed`` (the run's ``ctx.speed``): the acting forward runs under its autocast and, on
    CUDA, as CUDA graphs. Where ``envs`` are :class:`~envs.groups.EnvGroups`
    (``speed.overlap_envs``), each group's step runs in the background while the policy
    acts on the next group: every env still takes one step per rollout step with an action
    of the current policy from its latest observation, so the data is the same kind as
    without groups (only the random stream differs).
    """
    device = buffer.device
    speed = speed or EAGER
    act_model = speed.acting(model)
    dist = policy_distribution(envs.single_action_space)
    grouped = isinstance(envs, EnvGroups)
    slices = envs.slices if grouped else [slice(0, envs.num_envs)]
    group_obs = [next_obs[s] for s in slices]
    group_done = [next_done[s] for s in slices]
    totals = {"raw_reward_sum": 0.0, "final_value_forwards": 0}
    model.eval()

    def start_step(group: int, actions: np.ndarray) -> None:
        if grouped:
            envs.step_group_async(group, actions)
        else:
            envs.step_async(actions)

    # one step's rewards of every group: scaled (and bootstrapped) once the last group's
    # result is in, so the reward scale is the one a step of every env at once gives
    step_reward = np.zeros(envs.num_envs, np.float64)
    step_bonus = np.zeros(envs.num_envs, np.float32)

    def finish_step(step: int, group: int) -> None:
        """The result of ``group``'s step ``step``: its reward, its next observations."""
        s = slices[group]
        result = envs.step_group_wait(group) if grouped else envs.step_wait()
        obs, reward, terminated, truncated, info = result
        done = np.logical_or(terminated, truncated)
        totals["raw_reward_sum"] += float(reward.sum())
        if reward_norm is not None:
            reward_norm.update(reward, done, s)
        step_reward[s] = reward
        step_bonus[s] = 0.0
        if "final_obs" in info and truncated.any():
            ended = np.flatnonzero(done)  # the rows of final_obs, in env order
            cut = truncated[ended] & ~terminated[ended]
            with torch.inference_mode(), speed.autocast():
                _, final_value = model(_obs_tensor(info["final_obs"][cut], device))
            step_bonus[s][ended[cut]] = gamma * final_value.float().cpu().numpy()
            totals["final_value_forwards"] += int(cut.sum())
        if group == len(slices) - 1:
            scaled = (reward_norm.scale(step_reward) if reward_norm is not None
                      else step_reward.astype(np.float32))
            buffer.rewards[step].copy_(torch.from_numpy(scaled + step_bonus))
        group_obs[group] = _obs_tensor(obs, device)
        group_done[group] = torch.from_numpy(done).to(device)
        episodes.add(info)

    for step in range(buffer.num_steps):
        for group, s in enumerate(slices):
            if step > 0:
                finish_step(step - 1, group)  # while the next group's step may still run
            with torch.inference_mode():
                with speed.autocast():
                    params, value = act_model(group_obs[group])
                action, logprob = dist.sample(params.float(), generator)
            buffer.add(step, group_obs[group], group_done[group], action, logprob, value,
                       None, params, envs=s)
            start_step(group, action.cpu().numpy())
    for group in range(len(slices)):
        finish_step(buffer.num_steps - 1, group)
    next_obs = group_obs[0] if len(slices) == 1 else torch.cat(group_obs)
    next_done = group_done[0] if len(slices) == 1 else torch.cat(group_done)
    return Rollout(next_obs, next_done, totals["raw_reward_sum"],
                   totals["final_value_forwards"])


def start_envs(envs, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Reset the training envs with a seed from the run's generator; ``(obs, done)`` on the
    device. Envs are not checkpointed (Procgen cannot be), so a resumed run starts fresh
    episodes."""
    env_seed = int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng).item())
    obs = _obs_tensor(envs.reset(seed=env_seed), ctx.device)
    return obs, torch.zeros(envs.num_envs, dtype=torch.bool, device=ctx.device)


def rollout_buffer(envs, num_steps: int, device: torch.device, *,
                   store_dist_params: bool = False) -> RolloutBuffer:
    """A :class:`RolloutBuffer` for ``num_steps`` steps of ``envs``: their observations, and
    actions of their action space's distribution; ``store_dist_params`` keeps the behaviour
    policy's params too (V-MPO's KL against it)."""
    obs_space = envs.single_observation_space
    dist = policy_distribution(envs.single_action_space)
    return RolloutBuffer(num_steps, envs.num_envs, obs_space.shape,
                         torch.from_numpy(np.zeros(0, obs_space.dtype)).dtype, device,
                         action_shape=dist.action_shape, action_dtype=dist.action_dtype,
                         dist_params=dist.param_dim if store_dist_params else 0)


def sampling_policy(model: nn.Module, ctx: RunContext) -> Callable[[np.ndarray], np.ndarray]:
    """The policy held-out evaluation runs: samples from pi, as in training, with the run's
    evaluation generator (so evaluating does not change the training curve)."""
    dist = policy_distribution(ctx.spec.action_space)

    @torch.inference_mode()
    def act(obs: np.ndarray) -> np.ndarray:
        model.eval()
        params, _ = model(_obs_tensor(obs, ctx.device))
        return dist.sample(params, ctx.eval_rng)[0].cpu().numpy()

    return act


def rollout_with_advantages(model: nn.Module, envs, buffer: RolloutBuffer,
                            next_obs: torch.Tensor, next_done: torch.Tensor, cfg: Any,
                            ctx: RunContext, reward_norm: RewardNormalizer | None,
                            episodes: EpisodeLog) -> Rollout:
    """:func:`collect_rollout`, then the bootstrap value and GAE into ``buffer``; counts the
    env steps and every acting forward (role ``policy``). ``cfg``: any on-policy config
    with ``gamma`` and ``gae_lambda``."""
    rollout = collect_rollout(model, envs, buffer, next_obs, next_done, gamma=cfg.gamma,
                              generator=ctx.device_rng, reward_norm=reward_norm,
                              episodes=episodes, speed=ctx.speed)
    ctx.flops.add_forward("policy", buffer.size + rollout.final_value_forwards)
    ctx.counters.env_steps += buffer.size
    with torch.inference_mode(), ctx.speed.autocast():
        _, last_value = model(rollout.next_obs)
    ctx.flops.add_forward("policy", buffer.num_envs)  # the bootstrap value is a real forward
    buffer.finish(last_value.float(), rollout.next_done, cfg.gamma, cfg.gae_lambda)
    return rollout


def iteration_metrics(cfg: Any, sums: dict[str, torch.Tensor], steps: int, lr: float,
                      rollout: Rollout, batch_size: int, t_rollout: float, t_update: float,
                      episodes: EpisodeLog) -> dict[str, Any]:
    """A log line of the policy update: the mean of each loss part over its ``steps``
    minibatches (one device sync), the total loss, lr, reward, timings, episodes.

    The total is the mean of a ``loss`` part where the algorithm sums one (V-MPO), else
    PPO's ``policy_loss - ent_coef * entropy + vf_coef * value_loss`` (``cfg``'s weights).
    """
    averaged = (torch.stack(list(sums.values())) / steps).tolist()
    means = dict(zip(sums, averaged, strict=True))
    if "loss" in means:
        loss = means.pop("loss")
    else:
        loss = (means["policy_loss"] - cfg.ent_coef * means["entropy"]
                + cfg.vf_coef * means["value_loss"])
    return {
        "loss": loss,
        **means, "lr": lr, "reward_mean": rollout.raw_reward_sum / batch_size,
        "rollout_time": round(t_rollout, 3), "update_time": round(t_update, 3),
        **episodes.metrics(),
    }


_CATEGORICAL = Categorical()  # ppo_loss's default: scores logits, needs no action count


def ppo_loss(logits: torch.Tensor, new_value: torch.Tensor, mb: dict[str, torch.Tensor],
             cfg: PPOConfig, prox_logprob: torch.Tensor | None = None,
             imp_samp_max: float = 100.0, dist: PolicyDistribution | None = None,
             adv_moments: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one minibatch; returns the loss and its parts (detached:
    ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clipfrac``).

    ``logits``: the policy head's params for ``dist`` (default: a categorical's logits).

    ``prox_logprob=None``: the proximal policy is the behaviour policy (plain PPO: clip the
    ratio ``pi / pi_behav``). Given (PPO-EWMA, Hilton et al. 2021), the objective is
    decoupled: the importance weight ``pi / pi_behav`` corrects for the data's policy, while
    clipping and the KL penalty act on ``r = pi / pi_prox``:
    ``max(-A pi/pi_behav, -A clip(r, 1-eps, 1+eps) pi_prox/pi_behav)``, computed in log
    space with the weight capped at ``imp_samp_max`` against stale-data blow-ups. With
    ``pi_prox = pi_behav`` both forms are the same number. ``cfg.kl_coef`` adds the fixed
    penalty ``kl_coef * 0.5 E[log(pi / pi_prox)^2]``; ``cfg.clip_coef = 0`` turns clipping off.

    ``adv_moments``: the ``(mean, std)`` to normalise advantages with, where the minibatch is
    one rank's slice of a data-parallel minibatch (:meth:`Distributed.moments`); None: this
    minibatch's own.
    """
    new_logprob, entropy = (dist or _CATEGORICAL).logprob_entropy(logits, mb["actions"])
    adv = mb["advantages"]
    if cfg.norm_adv:
        mean, std = adv_moments if adv_moments is not None else (adv.mean(), adv.std())
        adv = (adv - mean) / (std + 1e-8)
    behav_logprob = mb["logprobs"]
    if prox_logprob is None:
        log_ratio = new_logprob - behav_logprob
        ratio = log_ratio.exp()
        pg_losses = -adv * ratio
        if cfg.clip_coef > 0:
            clipped = ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
            pg_losses = torch.max(pg_losses, -adv * clipped)
    else:
        log_ratio = new_logprob - prox_logprob  # what the trust region limits
        ratio = log_ratio.exp()
        # cap the importance weight: behav_logprob >= new_logprob - log(imp_samp_max)
        behav = torch.max(behav_logprob, new_logprob.detach() - math.log(imp_samp_max))
        pg_losses = -adv * (new_logprob - behav).exp()
        if cfg.clip_coef > 0:
            clipped = log_ratio.clamp(math.log(1 - cfg.clip_coef), math.log(1 + cfg.clip_coef))
            pg_losses = torch.max(pg_losses, -adv * (clipped + prox_logprob - behav).exp())
    pg_loss = pg_losses.mean()
    if cfg.kl_coef > 0:
        pg_loss = pg_loss + cfg.kl_coef * 0.5 * (log_ratio**2).mean()
    if cfg.clip_vloss and cfg.clip_coef > 0:  # clip_coef 0 (the KL variant): no clipping
        v_clipped = mb["values"] + (new_value - mb["values"]).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((new_value - mb["returns"]) ** 2,
                                 (v_clipped - mb["returns"]) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - mb["returns"]) ** 2).mean()
    ent = entropy.mean()
    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
    with torch.no_grad():
        parts = {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(),
                 "entropy": ent.detach(), "approx_kl": ((ratio - 1) - log_ratio).mean(),
                 "clipfrac": ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
                 if cfg.clip_coef > 0 else torch.zeros((), device=ratio.device)}
    return loss, parts


def learner_loss(model: nn.Module, cfg: PPOConfig, dist: PolicyDistribution,
                 speed: Speed = EAGER) -> Callable[..., tuple[torch.Tensor, dict]]:
    """``loss_fn(mb, adv_moments) -> (loss, parts)``: the learner's forward under the run's
    autocast and :func:`ppo_loss`, compiled as one graph (forward and backward) where
    ``speed.compile`` is on."""

    def loss_fn(mb: dict[str, torch.Tensor], adv_moments=None):
        with speed.autocast():
            logits, new_value = model(mb["obs"])
        # the loss in fp32: bf16 logits would round the log-ratio PPO clips
        return ppo_loss(logits.float(), new_value.float(), mb, cfg, dist=dist,
                        adv_moments=adv_moments)

    return speed.compiled(loss_fn)


def minibatch_step(loss_fn: Callable[..., tuple[torch.Tensor, dict]], model: nn.Module,
                   optimizer: torch.optim.Optimizer, mb: dict[str, torch.Tensor],
                   cfg: PPOConfig, ranks: Distributed = SINGLE) -> dict[str, torch.Tensor]:
    """One gradient step on minibatch ``mb`` (this rank's slice of it, where ``ranks`` is
    data-parallel: advantages normalised over the whole minibatch, gradients averaged over
    ranks, so every rank takes the step the combined minibatch gives). Returns the loss
    parts (detached)."""
    moments = ranks.moments(mb["advantages"]) if ranks.enabled and cfg.norm_adv else None
    loss, parts = loss_fn(mb, moments)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ranks.average_gradients(model.parameters())
    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return parts


def train(cfg: PPOConfig, ctx: RunContext) -> str:
    """Train the ``policy`` network on the training envs until the budget is spent."""
    device = ctx.device
    envs = ctx.envs("train")
    num_envs = envs.num_envs
    batch_size = num_envs * cfg.num_steps
    if batch_size % cfg.num_minibatches:
        raise ConfigError(f"algo.num_minibatches={cfg.num_minibatches} must divide "
                          f"env.num_envs*algo.num_steps={batch_size}")
    minibatch_size = batch_size // cfg.num_minibatches
    model = ctx.network("policy")
    require_feedforward(model, "ppo")
    base_lr = learning_rate(cfg, ctx.model.get("width", 1.0), ctx.model.get("depth"))
    optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, eps=cfg.adam_eps)
    reward_norm = RewardNormalizer(num_envs, cfg.gamma) if cfg.norm_reward else None
    dist = policy_distribution(envs.single_action_space)
    buffer = rollout_buffer(envs, cfg.num_steps, device)
    ctx.restore(model=model, optimizer=optimizer, reward_normalizer=reward_norm)
    policy = sampling_policy(model, ctx)
    next_obs, next_done = start_envs(envs, ctx)
    episodes = EpisodeLog()
    c = ctx.counters
    ranks = ctx.dist  # data-parallel: each rank holds num_envs / ranks envs of the batch
    loss_fn = learner_loss(model, cfg, dist, ctx.speed)

    while not ctx.done:
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = base_lr * (1.0 - ctx.budget_fraction())

        # ---- rollout and GAE ------------------------------------------------------------
        t_rollout = time.perf_counter()
        episodes.clear()
        rollout = rollout_with_advantages(model, envs, buffer, next_obs, next_done, cfg, ctx,
                                          reward_norm, episodes)
        next_obs, next_done = rollout.next_obs, rollout.next_done
        t_rollout = time.perf_counter() - t_rollout

        # ---- update ---------------------------------------------------------------------
        t_update = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        for _epoch in range(cfg.num_epochs):
            for mb in buffer.minibatches(cfg.num_minibatches, generator=ctx.torch_rng):
                parts = minibatch_step(loss_fn, model, optimizer, mb, cfg, ranks)
                for k, v in parts.items():
                    sums[k] = sums[k] + v if k in sums else v
                ctx.flops.add_forward_backward("policy", minibatch_size)
                c.updates += 1
                c.samples += minibatch_size
        t_update = time.perf_counter() - t_update

        # ---- log, evaluate, checkpoint (the run context's cadence) ----------------------
        if ranks.enabled:  # every rank's episodes and rewards; the losses are rank 0's
            episodes = episodes.gathered(ranks)
            reward_sum, = ranks.sum([rollout.raw_reward_sum])
            rollout = rollout._replace(raw_reward_sum=reward_sum)
        metrics = iteration_metrics(cfg, sums, cfg.num_epochs * cfg.num_minibatches,
                                    optimizer.param_groups[0]["lr"], rollout,
                                    batch_size * ranks.world_size, t_rollout, t_update,
                                    episodes)
        ctx.end_iteration(metrics, evaluate=lambda: evaluate(policy, ctx.envs("eval"),
                                                             ctx.eval_episodes))
    return "finished"


register_algo("ppo", PPOConfig, train, distributed=True)
