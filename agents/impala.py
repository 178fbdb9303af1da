"""IMPALA (Espeholt et al. 2018) with V-trace and a recurrent core.

Reads top to bottom: ``batch_size`` (B) trajectories of ``unroll_length`` (T) steps, acted
with the LSTM core's state carried across unrolls and reset where an episode starts, then one
learner step on the (T, B) batch (:func:`learner_step`): a forward over each whole unroll from
the state it started in (sequences are never cut into minibatches), V-trace targets
(:func:`agents.buffers.vtrace`, the one V-trace), the policy-gradient, baseline and entropy
losses, RMSprop with gradient-norm clipping.

Where the trajectories come from:

- ``num_actors=0`` (synchronous, :class:`SyncCollector`): B envs step together in this
  process with the learner's network. One process, deterministic from the seed; the policy
  lag is 0 and V-trace's importance weights are 1 up to numerics (``rho_mean``), so the
  targets are n-step returns.
- ``num_actors=N`` (:class:`ActorCollector`, :mod:`agents.actors`): N actor processes, each
  building its own envs from the run's env factory, fill trajectory slots in shared memory,
  acting with a CPU copy of the network that the learner overwrites after every step
  (``actor_inference=local``), or through a thread of the learner that acts for all of them
  on its device (``actor_inference=learner``: the actors only step envs); the learner
  takes B / ``envs_per_actor`` full slots per step and logs the policy lag (learner steps
  between acting and learning) and ``actor_restarts`` (dead actors are started again, not
  waited on). ``rollout_time`` is then the learner's wait for data: near 0 when the actors
  keep up, large when they starve it.

Defaults are the study's (Tuyls et al. 2024; TorchBeast's): unroll 80, batch 32, rho-bar =
c-bar = 1, entropy 0.001, baseline 0.5, RMSprop (lr 4.8e-4, alpha 0.99, eps 0.01), gradient
norm clip 40, gamma 0.99, rewards clipped to [-1, 1]. As in TorchBeast, the losses are sums
over the T x B batch (RMSprop's eps is tuned for gradients of that scale); the log line
reports them per sample. A time-limit truncation is treated as an episode end.

FLOPs (role ``policy``): one acting forward per env step (on the actors too), and a forward
and backward (3 forwards) over the T + 1 observations of each trajectory (the last one
bootstraps V-trace). The log also carries ``flops_8nd``, Tuyls et al.'s convention ``8 N D``
(N: the scaled parameters, D: env steps), beside that exact count.

Observations may be one array or a dict of arrays (``env=nethack`` with ``model=nethack``):
the unroll buffers, the actors' slots and the model's forward take either.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.actors import UNROLL_KEYS, ActorPool, LocalActing, SlotShapes, fill_unroll
from agents.buffers import vtrace
from agents.distributions import Categorical
from agents.evaluation import EpisodeLog, evaluate
from rl_scaling.context import RunContext
from rl_scaling.flops import flops_8nd
from rl_scaling.observations import map_obs, to_tensor, zeros_like_space
from rl_scaling.registry import ConfigError, register_algo

REWARD_CLIPS = ("abs_one", "none")
ACTOR_INFERENCE = ("local", "learner")


@dataclass
class ImpalaConfig:
    """IMPALA hyperparameters (``algo.*``); defaults are the study's."""

    name: str = "impala"
    unroll_length: int = 80  # T: env steps per trajectory
    batch_size: int = 32  # B: trajectories per learner step (synchronous mode: envs)
    gamma: float = 0.99
    rho_bar: float = 1.0  # V-trace clip of the importance weights in the fixed point
    c_bar: float = 1.0  # V-trace clip of the traces
    ent_coef: float = 0.001
    baseline_coef: float = 0.5
    lr: float = 4.8e-4  # RMSprop
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.01
    rmsprop_momentum: float = 0.0
    max_grad_norm: float = 40.0
    reward_clip: str = "abs_one"  # abs_one: clip rewards to [-1, 1] for learning | none
    anneal_lr: bool = False  # decay lr linearly to 0 over the budget (TorchBeast does)
    # 0: synchronous (one process, deterministic). N: N actor processes fill trajectory
    # slots in shared memory while the learner learns (agents/actors.py)
    num_actors: int = 0
    envs_per_actor: int = 0  # envs each actor steps (one slot's trajectories); 0: B / N
    slots_per_actor: int = 2  # slots each actor fills in turn (2: double buffering)
    # local: every actor acts with its CPU copy of the network. learner: a thread of the
    # learner acts for all actors on the learner's device (a GPU), every request waiting at
    # that moment in one forward; the actors then only step envs
    actor_inference: str = "local"

    def validate(self) -> None:
        checks = [
            ("unroll_length", self.unroll_length > 0, "must be > 0"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("rho_bar", self.rho_bar > 0, "must be > 0"),
            ("c_bar", self.c_bar > 0, "must be > 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("ent_coef", self.ent_coef >= 0, "must be >= 0"),
            ("baseline_coef", self.baseline_coef > 0, "must be > 0"),
            ("rmsprop_alpha", 0 <= self.rmsprop_alpha < 1, "must be in [0, 1)"),
            ("rmsprop_eps", self.rmsprop_eps > 0, "must be > 0"),
            ("rmsprop_momentum", self.rmsprop_momentum >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
            ("reward_clip", self.reward_clip in REWARD_CLIPS, f"must be one of {REWARD_CLIPS}"),
            ("num_actors", self.num_actors >= 0, "must be >= 0 (0: synchronous)"),
            ("envs_per_actor", self.envs_per_actor >= 0, "must be >= 0 (0: batch / actors)"),
            ("slots_per_actor", self.slots_per_actor >= 1, "must be >= 1"),
            ("actor_inference", self.actor_inference in ACTOR_INFERENCE,
             f"must be one of {ACTOR_INFERENCE}"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)!r} {why}")
        if self.actor_inference == "learner" and self.num_actors == 0:
            raise ConfigError("algo.actor_inference=learner needs actor processes "
                              "(algo.num_actors > 0); the synchronous mode acts on the "
                              "learner's device already")
        if self.num_actors > 0:
            if not self.envs_per_actor and self.num_actors > self.batch_size:
                raise ConfigError(f"algo.num_actors={self.num_actors} is more than "
                                  f"algo.batch_size={self.batch_size}: set algo.envs_per_actor")
            per_actor = self.envs_per_actor or self.batch_size // self.num_actors
            if self.batch_size % per_actor:
                raise ConfigError(
                    f"algo.batch_size={self.batch_size} must be a multiple of the envs per "
                    f"actor ({per_actor}: algo.envs_per_actor, or batch_size / num_actors)")
            slots = self.num_actors * self.slots_per_actor
            if slots * per_actor < self.batch_size:
                raise ConfigError(
                    f"algo.num_actors={self.num_actors} x algo.slots_per_actor="
                    f"{self.slots_per_actor} slots of {per_actor} envs hold fewer than "
                    f"algo.batch_size={self.batch_size} trajectories")


class RecurrentPolicy:
    """Acts with a recurrent model one step at a time, keeping a core state per env (what
    :func:`agents.evaluation.evaluate` runs): samples from pi with ``generator``."""

    recurrent = True

    def __init__(self, model: nn.Module, device: torch.device,
                 generator: torch.Generator) -> None:
        self.model, self.device, self.generator = model, device, generator
        self.acting: LocalActing | None = None
        self.first = None

    def reset(self, num_envs: int) -> None:
        self.acting = LocalActing(self.model, num_envs, self.device, self.generator)
        self.first = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def reset_where(self, done: np.ndarray) -> None:
        self.first = torch.from_numpy(np.asarray(done, bool)).to(self.device)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.acting(to_tensor(obs, self.device), self.first)
        self.first = torch.zeros_like(self.first)
        return action.cpu().numpy()


def learner_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                 batch: dict[str, Any], cfg: ImpalaConfig) -> dict[str, float]:
    """One learner step on a (T, B) batch of whole unrolls: a forward over the T + 1
    observations from the core state each unroll started in, V-trace targets against the
    behaviour log-probabilities, the summed losses, RMSprop. Returns the loss parts per
    sample, the gradient norm and the mean importance weight."""
    dist = Categorical()
    steps, batch_size = batch["actions"].shape
    model.train()
    logits, values, _ = model(batch["obs"], batch["first"], batch["state"])
    target_logprobs, entropy = dist.logprob_entropy(logits[:steps], batch["actions"])
    rewards = batch["rewards"]
    learn_rewards = rewards.clamp(-1, 1) if cfg.reward_clip == "abs_one" else rewards
    discounts = cfg.gamma * (~batch["dones"]).float()
    vs, pg_advantages = vtrace(batch["logprobs"], target_logprobs.detach(), learn_rewards,
                               values[:steps].detach(), values[steps].detach(), discounts,
                               rho_bar=cfg.rho_bar, c_bar=cfg.c_bar)
    pg_loss = -(target_logprobs * pg_advantages).sum()
    baseline_loss = 0.5 * ((vs - values[:steps]) ** 2).sum()
    entropy_sum = entropy.sum()
    loss = pg_loss + cfg.baseline_coef * baseline_loss - cfg.ent_coef * entropy_sum
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    # per-sample means of the summed losses; one device sync per step
    n = steps * batch_size
    parts = (torch.stack([loss, pg_loss, baseline_loss, entropy_sum]).detach() / n).tolist()
    return {"loss": parts[0], "policy_loss": parts[1], "baseline_loss": parts[2],
            "entropy": parts[3], "grad_norm": float(grad_norm),
            "rho_mean": float((target_logprobs.detach() - batch["logprobs"]).exp().mean())}


class SyncCollector:
    """Synchronous mode's actor: ``batch_size`` envs stepped together in the learner's
    process with the learner's network (deterministic; policy lag 0)."""

    def __init__(self, model: nn.Module, envs, cfg: ImpalaConfig, ctx: RunContext) -> None:
        self.envs = envs
        steps, n, device = cfg.unroll_length, envs.num_envs, ctx.device
        env_seed = int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng).item())
        obs = to_tensor(envs.reset(seed=env_seed), device)
        # every env starts an episode; envs restart on resume, and so does the core
        self.acting = LocalActing(model, n, device, ctx.device_rng)
        self.carry = {"obs": obs, "first": torch.ones(n, dtype=torch.bool, device=device)}
        self.buf = {
            "obs": zeros_like_space(envs.single_observation_space, (steps + 1, n), device),
            "first": torch.zeros((steps + 1, n), dtype=torch.bool, device=device),
            "actions": torch.zeros((steps, n), dtype=torch.long, device=device),
            "logprobs": torch.zeros((steps, n), device=device),
            "rewards": torch.zeros((steps, n), device=device),
            "dones": torch.zeros((steps, n), dtype=torch.bool, device=device),
        }

    def collect(self, episodes: EpisodeLog) -> dict[str, Any]:
        start = self.acting.begin_unroll()  # where the learner starts
        fill_unroll(self.acting, self.envs, self.carry, self.buf, episodes)
        return {**self.buf, "state": start, "policy_lag": 0.0}


class ActorCollector:
    """The actor-learner mode's side of the learner: takes ``batch_size / envs_per_actor``
    full slots from the :class:`agents.actors.ActorPool`, publishes weights after each
    step."""

    def __init__(self, model: nn.Module, cfg: ImpalaConfig, ctx: RunContext) -> None:
        self.per_actor = cfg.envs_per_actor or cfg.batch_size // cfg.num_actors
        self.device = ctx.device
        h0, _ = model.initial_state(self.per_actor)
        shapes = SlotShapes(cfg.unroll_length, self.per_actor, ctx.spec.observation_space,
                            tuple(h0.shape))
        seed = int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng).item())
        self.pool = ActorPool(cfg.num_actors, cfg.slots_per_actor, shapes,
                              ctx.env_factory("train"), model, seed,
                              inference_device=(ctx.device if cfg.actor_inference == "learner"
                                                else None))
        self.slots_per_batch = cfg.batch_size // self.per_actor
        self.learner = model

    def collect(self, episodes: EpisodeLog) -> dict[str, Any]:
        slots = self.pool.slots
        chosen = self.pool.take(self.slots_per_batch)
        version = int(self.pool.version)
        unrolls = [slots.unroll(s) for s in chosen]
        batch: dict[str, Any] = {
            key: map_obs(lambda *parts: torch.cat(parts, dim=1).to(self.device),
                         *(u[key] for u in unrolls))
            for key in UNROLL_KEYS}
        batch["state"] = tuple(torch.cat([getattr(slots, key)[s] for s in chosen],
                                         dim=1).to(self.device) for key in ("h0", "c0"))
        lag = [version - int(slots.version[s]) for s in chosen]
        for s in chosen:
            slots.read_episodes(s, episodes)
        self.pool.release(chosen)  # copied out: the actors may refill them
        return {**batch, "policy_lag": float(np.mean(lag))}

    def after_step(self) -> None:
        self.pool.publish(self.learner)

    def close(self) -> None:
        self.pool.close()


def train(cfg: ImpalaConfig, ctx: RunContext) -> str:
    """Train the ``policy`` network (a recurrent model) until the budget is spent."""
    device = ctx.device
    T, B = cfg.unroll_length, cfg.batch_size  # noqa: N806 (the paper's symbols)
    envs = ctx.envs("train", num_envs=B) if cfg.num_actors == 0 else None
    example = zeros_like_space(ctx.spec.observation_space, (1, 1), device)
    model = ctx.network("policy", example=example)
    params_effective = ctx.networks["policy"]["params"]["effective"]
    if not getattr(model, "recurrent", False):
        raise ConfigError(f"algo=impala needs a recurrent model (model=lstm); "
                          f"{type(model).__name__} is feed-forward")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_alpha,
                                    eps=cfg.rmsprop_eps, momentum=cfg.rmsprop_momentum)
    ctx.restore(model=model, optimizer=optimizer)
    eval_policy = RecurrentPolicy(model, device, ctx.eval_rng)
    threads = torch.get_num_threads()
    if cfg.num_actors > 0 and device.type == "cpu":
        # the learner takes the cores the actors leave: sharing them halved its rate on 2
        # cores (bench/impala.py)
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - cfg.num_actors)))
    collector = (SyncCollector(model, envs, cfg, ctx) if cfg.num_actors == 0
                 else ActorCollector(model, cfg, ctx))
    episodes = EpisodeLog()
    c = ctx.counters
    try:
        while not ctx.done:
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.lr * (1.0 - ctx.budget_fraction())

            # ---- T steps of B envs (here, or from the actors' slots) ---------------------
            t_rollout = time.perf_counter()
            episodes.clear()
            batch = collector.collect(episodes)
            ctx.flops.add_forward("policy", T * B)  # the acting forwards behind the batch
            c.env_steps += T * B
            t_rollout = time.perf_counter() - t_rollout

            # ---- learner: V-trace over whole unrolls -------------------------------------
            t_update = time.perf_counter()
            parts = learner_step(model, optimizer, batch, cfg)
            if cfg.num_actors > 0:
                collector.after_step()
            ctx.flops.add_forward_backward("policy", (T + 1) * B)
            c.updates += 1
            c.samples += T * B
            t_update = time.perf_counter() - t_update

            metrics = {**parts, "policy_lag": batch["policy_lag"],
                       "lr": optimizer.param_groups[0]["lr"],
                       "reward_mean": float(batch["rewards"].mean()),
                       # the learner's wait for data / its own time: which side starves
                       "rollout_time": round(t_rollout, 3), "update_time": round(t_update, 3),
                       # the RL convention of Tuyls et al. beside the exact count (flops)
                       "flops_8nd": flops_8nd(params_effective, c.env_steps),
                       **episodes.metrics()}
            if cfg.num_actors > 0:
                metrics["actor_restarts"] = collector.pool.restarts
                batch_envs = collector.pool.inference_batch()
                if batch_envs is not None:  # envs per call of the learner-side inference
                    metrics["inference_batch"] = round(batch_envs, 2)
            ctx.end_iteration(metrics, evaluate=lambda: evaluate(
                eval_policy, ctx.envs("eval"), ctx.eval_episodes))
    finally:
        if cfg.num_actors > 0:
            collector.close()
        torch.set_num_threads(threads)
    return "finished"


# where the acting forward runs is not what is learned: a resumed run may change it
register_algo("impala", ImpalaConfig, train, resumable=("actor_inference",))
