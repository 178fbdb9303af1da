"""IMPALA (Espeholt et al. 2018) with V-trace and a recurrent core: synchronous mode.

Reads top to bottom: ``batch_size`` envs step together for ``unroll_length`` steps with the
current policy (the LSTM core's state carried across unrolls and reset where an episode
starts), then one learner step on the (T, B) batch: a forward over the whole unroll from the
state it started in (sequences are never cut into minibatches), V-trace targets
(:func:`agents.buffers.vtrace`, the one V-trace), the policy-gradient, baseline and entropy
losses, RMSprop with gradient-norm clipping. In this mode the behaviour policy is the
learner's policy of one step before at most: the policy lag is 0 and V-trace's importance
weights are 1 up to the acting/learning numerics (logged as ``rho_mean``), so the targets
are n-step returns. One process, deterministic from the seed.

Defaults are the study's (Tuyls et al. 2024; TorchBeast's): unroll 80, batch 32, rho-bar =
c-bar = 1, entropy 0.001, baseline 0.5, RMSprop (lr 4.8e-4, alpha 0.99, eps 0.01), gradient
norm clip 40, gamma 0.99, rewards clipped to [-1, 1]. As in TorchBeast, the losses are sums
over the T x B batch (RMSprop's eps is tuned for gradients of that scale); the log line
reports them per sample. A time-limit truncation is treated as an episode end.

FLOPs (role ``policy``): one acting forward per env step, and a forward and backward (3
forwards) over the T + 1 observations of each trajectory (the last one bootstraps V-trace).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents.buffers import vtrace
from agents.distributions import Categorical
from agents.evaluation import EpisodeLog, evaluate
from rl_scaling.context import RunContext
from rl_scaling.registry import ConfigError, register_algo

REWARD_CLIPS = ("abs_one", "none")


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

    def validate(self) -> None:
        checks = [
            ("unroll_length", self.unroll_length > 0, "must be > 0"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("rho_bar", self.rho_bar > 0, "must be > 0"),
            ("c_bar", self.c_bar > 0, "must be > 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
            ("reward_clip", self.reward_clip in REWARD_CLIPS, f"must be one of {REWARD_CLIPS}"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)!r} {why}")


class RecurrentPolicy:
    """Acts with a recurrent model one step at a time, keeping a core state per env (what
    :func:`agents.evaluation.evaluate` runs): samples from pi with ``generator``."""

    def __init__(self, model: nn.Module, device: torch.device,
                 generator: torch.Generator) -> None:
        self.model, self.device, self.generator = model, device, generator
        self.dist = Categorical()
        self.state = None
        self.first = None

    def reset(self, num_envs: int) -> None:
        self.state = self.model.initial_state(num_envs, self.device)
        self.first = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def reset_where(self, done: np.ndarray) -> None:
        self.first = torch.from_numpy(np.asarray(done, bool)).to(self.device)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.model.eval()
        x = torch.from_numpy(obs).to(self.device)
        logits, _, self.state = self.model(x[None], self.first[None], self.state)
        self.first = torch.zeros_like(self.first)
        return self.dist.sample(logits[0], self.generator)[0].cpu().numpy()


def train(cfg: ImpalaConfig, ctx: RunContext) -> str:
    """Train the ``policy`` network (a recurrent model) until the budget is spent."""
    device = ctx.device
    T, B = cfg.unroll_length, cfg.batch_size  # noqa: N806 (the paper's symbols)
    envs = ctx.envs("train", num_envs=B)
    space = ctx.spec.observation_space
    example = torch.zeros((1, 1, *space.shape),
                          dtype=torch.from_numpy(np.zeros(0, space.dtype)).dtype, device=device)
    model = ctx.network("policy", example=example)
    if not getattr(model, "recurrent", False):
        raise ConfigError(f"algo=impala needs a recurrent model (model=lstm); "
                          f"{type(model).__name__} is feed-forward")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_alpha,
                                    eps=cfg.rmsprop_eps, momentum=cfg.rmsprop_momentum)
    ctx.restore(model=model, optimizer=optimizer)
    dist = Categorical()
    eval_policy = RecurrentPolicy(model, device, ctx.eval_rng)

    env_seed = int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng).item())
    obs = torch.from_numpy(envs.reset(seed=env_seed)).to(device)
    first = torch.ones(B, dtype=torch.bool, device=device)  # every env starts an episode
    state = model.initial_state(B, device)  # envs restart on resume, and so does the core
    obs_buf = torch.zeros((T + 1, B, *space.shape), dtype=obs.dtype, device=device)
    first_buf = torch.zeros((T + 1, B), dtype=torch.bool, device=device)
    actions = torch.zeros((T, B), dtype=torch.long, device=device)
    behaviour_logprobs = torch.zeros((T, B), device=device)
    rewards = torch.zeros((T, B), device=device)
    dones = torch.zeros((T, B), dtype=torch.bool, device=device)
    episodes = EpisodeLog()
    c = ctx.counters

    while not ctx.done:
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.lr * (1.0 - ctx.budget_fraction())

        # ---- unroll: T steps of B envs, the core's state carried along ---------------------
        t_rollout = time.perf_counter()
        episodes.clear()
        start_state = tuple(s.clone() for s in state)  # where the learner's forward starts
        model.eval()
        raw_reward_sum = 0.0
        for t in range(T):
            obs_buf[t], first_buf[t] = obs, first
            with torch.no_grad():
                logits, _, state = model(obs[None], first[None], state)
                action, logprob = dist.sample(logits[0], ctx.device_rng)
            actions[t], behaviour_logprobs[t] = action, logprob
            next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            done = np.logical_or(terminated, truncated)
            raw_reward_sum += float(reward.sum())
            rewards[t] = torch.from_numpy(reward).to(device)
            dones[t] = torch.from_numpy(done).to(device)
            obs = torch.from_numpy(next_obs).to(device)
            first = dones[t].clone()
            episodes.add(info)
        obs_buf[T], first_buf[T] = obs, first
        ctx.flops.add_forward("policy", T * B)
        c.env_steps += T * B
        t_rollout = time.perf_counter() - t_rollout

        # ---- learner: V-trace over the whole unroll ------------------------------------------
        t_update = time.perf_counter()
        model.train()
        logits, values, _ = model(obs_buf, first_buf, start_state)
        target_logprobs, entropy = dist.logprob_entropy(logits[:T], actions)
        learn_rewards = rewards.clamp(-1, 1) if cfg.reward_clip == "abs_one" else rewards
        discounts = cfg.gamma * (~dones).float()
        vs, pg_advantages = vtrace(behaviour_logprobs, target_logprobs.detach(), learn_rewards,
                                   values[:T].detach(), values[T].detach(), discounts,
                                   rho_bar=cfg.rho_bar, c_bar=cfg.c_bar)
        pg_loss = -(target_logprobs * pg_advantages).sum()
        baseline_loss = 0.5 * ((vs - values[:T]) ** 2).sum()
        entropy_sum = entropy.sum()
        loss = pg_loss + cfg.baseline_coef * baseline_loss - cfg.ent_coef * entropy_sum
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        ctx.flops.add_forward_backward("policy", (T + 1) * B)
        c.updates += 1
        c.samples += T * B
        t_update = time.perf_counter() - t_update

        # per-sample means of the summed losses; one device sync per iteration
        losses = (torch.stack([loss, pg_loss, baseline_loss, entropy_sum]).detach()
                  / (T * B)).tolist()
        metrics = {"loss": losses[0], "policy_loss": losses[1], "baseline_loss": losses[2],
                   "entropy": losses[3], "grad_norm": float(grad_norm),
                   "rho_mean": float((target_logprobs.detach() - behaviour_logprobs)
                                     .exp().mean()),
                   "policy_lag": 0, "lr": optimizer.param_groups[0]["lr"],
                   "reward_mean": raw_reward_sum / (T * B),
                   "rollout_time": round(t_rollout, 3), "update_time": round(t_update, 3),
                   **episodes.metrics()}
        ctx.end_iteration(metrics, evaluate=lambda: evaluate(eval_policy, ctx.envs("eval"),
                                                             ctx.eval_episodes))
    return "finished"


register_algo("impala", ImpalaConfig, train)
