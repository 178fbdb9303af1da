"""Soft Actor-Critic (Haarnoja et al. 2018) with a BRO critic option (Nauman et al. 2024), for
the value-based scaling studies (Rybkin et al. 2025; Fu et al. 2025): the updates-to-data
ratio ``utd`` (sigma), batch size, learning rate and critic width/depth are the sweep axes.

Reads top to bottom like CleanRL's ``sac_continuous_action.py``; what differs is that every
network is *grouped* (agents/ensemble.py): the twin critics are one module, and with
``seeds_per_process=K`` the K seeds' networks are one module too, each layer one batched
matmul. Each seed keeps its own envs, replay rows, generators and optimiser state, and
writes its own run record, so seed k of a K-seed job computes what a one-seed job computes
(bit for bit on CPU; tests/test_sac.py).

One iteration is ``steps_per_iteration`` env steps (the points where a line can be logged,
an evaluation run, a checkpoint taken, a preemption honoured). Each env step is followed by
``utd`` critic updates (fractional: 0.25 is one update every 4 env steps; the remainder is
carried), each followed by an actor and temperature update every ``actor_every`` critic
updates. Time limits bootstrap: a truncated transition stores the episode's real last
observation as ``next_obs`` and ``terminated=0``.

FLOPs per seed, by role (per sample of a batch of ``batch_size``): a critic update is a
forward and backward of ``critic`` (both twins), a ``critic_target`` forward and an
``actor`` forward for the next action; an actor update is an ``actor`` forward and backward
and a ``critic`` forward plus the backward to its action input (counted as a second
forward: no weight gradients). Acting is an ``actor`` forward per env step. The target is
``copy_of`` the critic: its forwards are compute, its parameters are not a second N. The
study's convention ``10 * N * B * sigma * D`` (N: critic parameters, D: env steps) is
logged beside the exact count as ``flops_10nbsd``. Evaluation and the diagnostics are not
training compute and are not counted.

Diagnostics logged at every evaluation (Rybkin et al.'s): ``td_error_train`` (mean squared
TD error on a replay batch), ``td_error_heldout`` (on transitions routed to a held-out
buffer, never trained on: every ``td_holdout_every``-th env step of each seed),
``td_overfitting`` (their difference), ``critic_param_norm``, and ``critical_batch_size``
(the simple gradient-noise scale B_simple of McCandlish et al. 2018 for the critic loss,
from ``gns_chunks`` batches of ``batch_size``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import partial

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from agents.buffers import ReplayBuffer
from agents.ensemble import (
    GroupedBRO,
    GroupedMLP,
    SeedOptimizerState,
    reset_parameters,
    stack_seeds,
)
from agents.evaluation import EpisodeLog, evaluate
from rl_scaling.context import RunContext, StopTraining, all_done, end_iterations
from rl_scaling.flops import flops_sac
from rl_scaling.registry import ConfigError, register_algo

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # CleanRL's and SB3's bounds on the actor's log std


@dataclass
class SACConfig:
    """SAC hyperparameters (``algo.*``); defaults: SAC on Gym MuJoCo (Haarnoja et al. 2018)."""

    name: str = "sac"
    utd: float = 1.0  # sigma: critic updates per env step (0.25: one per 4 env steps)
    batch_size: int = 256  # transitions per update, per seed
    lr: float = 3e-4  # Adam(W) learning rate of the critic (eta in the studies)
    actor_lr: float | None = None  # null: lr
    alpha_lr: float | None = None  # temperature learning rate; null: lr
    critic: str = "mlp"  # mlp | bro (residual blocks with LayerNorm, Nauman et al. 2024)
    critic_width: int = 256  # hidden units of each critic layer
    critic_depth: int = 2  # hidden layers (mlp) or residual blocks (bro)
    actor_width: int = 256
    actor_depth: int = 2  # hidden layers of the actor MLP
    gamma: float = 0.99
    tau: float = 0.005  # Polyak step of the target critic after every critic update
    buffer_size: int = 1_000_000  # replay capacity per seed (capped at an env_steps budget)
    learning_starts: int = 5000  # env steps of uniform random actions before updates begin
    actor_every: int = 1  # an actor + temperature update after every this many critic updates
    init_alpha: float = 1.0  # initial entropy temperature
    target_entropy: float | None = None  # null: -action_dim
    autotune: bool = True  # learn the temperature; false: keep init_alpha
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (critic and actor)
    reset_every: int = 0  # env steps between full resets of every network and optimiser
    reset_at: list[int] = field(default_factory=list)  # and/or at these env steps
    steps_per_iteration: int = 1000  # env steps between log/eval/checkpoint points
    checkpoint_buffer: bool = True  # replay in the checkpoint (false: resume refills it)
    td_holdout_every: int = 20  # every Nth env step goes to the held-out buffer (0: off)
    td_holdout_size: int = 5000  # capacity of the held-out buffer per seed
    gns_chunks: int = 8  # batches for the gradient-noise-scale estimate (0: off)

    def validate(self) -> None:
        checks = [
            ("utd", self.utd > 0, "must be > 0 (fractional allowed: 0.25 = one update per "
                                  "4 env steps)"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("batch_size", self.batch_size <= self.buffer_size,
             f"must be <= algo.buffer_size={self.buffer_size}"),
            ("lr", self.lr > 0, "must be > 0"),
            ("actor_lr", self.actor_lr is None or self.actor_lr > 0, "must be > 0 or null"),
            ("alpha_lr", self.alpha_lr is None or self.alpha_lr > 0, "must be > 0 or null"),
            ("critic", self.critic in ("mlp", "bro"), "must be mlp or bro"),
            ("critic_width", self.critic_width > 0, "must be > 0"),
            ("critic_depth", self.critic_depth >= (0 if self.critic == "mlp" else 1),
             "must be >= 0 (mlp) or >= 1 (bro blocks)"),
            ("actor_width", self.actor_width > 0, "must be > 0"),
            ("actor_depth", self.actor_depth >= 0, "must be >= 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("tau", 0 < self.tau <= 1, "must be in (0, 1]"),
            ("buffer_size", self.buffer_size > 0, "must be > 0"),
            ("learning_starts", self.learning_starts >= 0, "must be >= 0"),
            ("actor_every", self.actor_every >= 1, "must be >= 1"),
            ("init_alpha", self.init_alpha > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("reset_every", self.reset_every >= 0, "must be >= 0 (0: never)"),
            ("reset_at", all(s > 0 for s in self.reset_at), "must list env steps > 0"),
            ("steps_per_iteration", self.steps_per_iteration > 0, "must be > 0"),
            ("td_holdout_every", self.td_holdout_every == 0 or self.td_holdout_every >= 2,
             "must be 0 (off) or >= 2"),
            ("td_holdout_size", self.td_holdout_size > 0, "must be > 0"),
            ("gns_chunks", self.gns_chunks == 0 or self.gns_chunks >= 2, "must be 0 or >= 2"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"algo.{key}={getattr(self, key)!r} {why}")


@dataclass
class BROConfig(SACConfig):
    """``algo=bro``: SAC with the BRO critic (Nauman et al. 2024): width 512, 2 residual
    blocks with LayerNorm, AdamW with weight decay, full resets at BRO's env steps."""

    name: str = "bro"
    critic: str = "bro"
    critic_width: int = 512
    critic_depth: int = 2
    weight_decay: float = 1e-4
    reset_at: list[int] = field(
        default_factory=lambda: [15_000, 50_000, 250_000, 500_000, 750_000])


# ---------------------------------------------------------------------------------------------
# Networks (per seed; agents/ensemble.stack_seeds joins the K seeds' copies)
# ---------------------------------------------------------------------------------------------


class TwinCritic(nn.Module):
    """``members`` Q-networks of one seed as one grouped trunk: Q(obs, action).

    Inputs (B, ...) give (members, B); stacked over S seeds, inputs (S, B, ...) give
    (S, members, B).
    """

    def __init__(self, obs_dim: int, action_dim: int, width: int, depth: int,
                 kind: str = "mlp", members: int = 2) -> None:
        super().__init__()
        self.members = members
        trunk = GroupedMLP if kind == "mlp" else GroupedBRO
        self.trunk = trunk(members, obs_dim + action_dim, width, depth, 1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        single = obs.dim() == 2
        x = torch.cat([obs, action], dim=-1)
        x = x[None] if single else x
        seeds, batch, dim = x.shape
        x = x[:, None].expand(seeds, self.members, batch, dim).reshape(-1, batch, dim)
        q = self.trunk(x).view(seeds, self.members, batch)
        return q[0] if single else q

    def scaled_modules(self) -> list[nn.Module]:
        return [self.trunk]


class TanhGaussianActor(nn.Module):
    """A Gaussian over pre-tanh actions, squashed and scaled to the action bounds."""

    def __init__(self, obs_dim: int, action_dim: int, width: int, depth: int,
                 low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.trunk = GroupedMLP(1, obs_dim, width, depth, 2 * action_dim)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian: (B, A) each, or (S, B, A) stacked."""
        single = obs.dim() == 2
        out = self.trunk(obs[None] if single else obs)
        mean, log_std = out.chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return (mean[0], log_std[0]) if single else (mean, log_std)

    def sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action and its log-probability, given standard normal ``noise``."""
        mean, log_std = self(obs)
        std = log_std.exp()
        pre_tanh = mean + std * noise
        squashed = torch.tanh(pre_tanh)
        # log N(pre_tanh) - log|d action / d pre_tanh|, summed over action dims
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
                    - torch.log(self.scale * (1 - squashed.pow(2)) + 1e-6)).sum(-1)
        return squashed * self.scale + self.center, log_prob

    def act_deterministic(self, obs: Tensor) -> Tensor:
        mean, _ = self(obs)
        return torch.tanh(mean) * self.scale + self.center

    def scaled_modules(self) -> list[nn.Module]:
        return [self.trunk]


class Temperature(nn.Module):
    """The entropy temperature alpha = exp(log_alpha), one per seed."""

    matmul_free = True

    def __init__(self, init_alpha: float) -> None:
        super().__init__()
        self.init_alpha = init_alpha
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(init_alpha)))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.fill_(math.log(self.init_alpha))

    def forward(self, *_: Tensor) -> Tensor:
        return self.log_alpha.exp()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _check_spaces(ctx: RunContext) -> tuple[int, int, np.ndarray, np.ndarray]:
    obs_space, act_space = ctx.spec.observation_space, ctx.spec.action_space
    if not isinstance(act_space, gymnasium.spaces.Box):
        env_id = ctx.env_factory().config.get("id")
        raise ConfigError(f"algo=sac needs continuous (Box) actions; env {env_id!r} has "
                          f"{act_space}")
    if len(obs_space.shape) != 1:
        raise ConfigError(f"algo=sac takes flat observations; env has shape {obs_space.shape}")
    low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ConfigError("algo=sac needs bounded actions (tanh squashing); the env's are "
                          "infinite")
    return int(obs_space.shape[0]), int(act_space.shape[0]), low, high


class _Seeds:
    """The K seeds' networks, optimisers and buffers, stacked (agents/ensemble.py)."""

    def __init__(self, cfg: SACConfig, ctxs: list[RunContext]) -> None:
        self.cfg, self.ctxs = cfg, ctxs
        ctx0 = ctxs[0]
        self.device = ctx0.device
        self.obs_dim, self.action_dim, low, high = _check_spaces(ctx0)
        self.target_entropy = (-float(self.action_dim) if cfg.target_entropy is None
                               else float(cfg.target_entropy))
        obs1 = torch.zeros(1, self.obs_dim, device=self.device)
        act1 = torch.zeros(1, self.action_dim, device=self.device)
        critics, targets, actors, temps = [], [], [], []
        for ctx in ctxs:
            critic = ctx.network("critic", TwinCritic, example=(obs1, act1),
                                 obs_dim=self.obs_dim, action_dim=self.action_dim,
                                 width=cfg.critic_width, depth=cfg.critic_depth, kind=cfg.critic)
            target = ctx.network("critic_target", lambda c=critic: copy.deepcopy(c),
                                 copy_of="critic", example=(obs1, act1))
            actor = ctx.network("actor", TanhGaussianActor, example=obs1, obs_dim=self.obs_dim,
                                action_dim=self.action_dim, width=cfg.actor_width,
                                depth=cfg.actor_depth, low=low, high=high)
            temp = ctx.network("temperature", Temperature, effective=False, example=obs1,
                               init_alpha=cfg.init_alpha)
            for net in (critic, target, actor, temp):
                net.requires_grad_(net is not target)
            critics.append(critic), targets.append(target)
            actors.append(actor), temps.append(temp)
        self.per_seed = {"critic": critics, "critic_target": targets, "actor": actors,
                         "temperature": temps}
        self.critic, self.target = stack_seeds(critics), stack_seeds(targets)
        self.actor, self.temperature = stack_seeds(actors), stack_seeds(temps)
        self.target.requires_grad_(False)
        opt = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
        # fused: one kernel for all of a module's tensors (17% faster updates on CPU). Its
        # vectorised loop rounds a seed's numbers differently when the stack holds K seeds,
        # so deterministic mode (K seeds = K one-seed runs, bit for bit) keeps the loop.
        extra = {"weight_decay": cfg.weight_decay} if cfg.weight_decay > 0 else {}
        extra["fused"] = (self.device.type in ("cpu", "cuda")
                          and not torch.are_deterministic_algorithms_enabled())
        self.critic_opt = opt(self.critic.parameters(), lr=cfg.lr, **extra)
        self.actor_opt = opt(self.actor.parameters(), lr=cfg.actor_lr or cfg.lr, **extra)
        self.alpha_opt = torch.optim.Adam(self.temperature.parameters(),
                                          lr=cfg.alpha_lr or cfg.lr,
                                          fused=extra["fused"])
        # n_critic: the study's N for 10 N B sigma D (both twins of one seed)
        self.n_critic = ctx0.networks["critic"]["params"]["total"]
        capacity = cfg.buffer_size
        if ctx0.budget_counter == "env_steps":  # never allocate rows the run cannot fill
            capacity = max(cfg.batch_size, min(capacity, int(ctx0.budget_value)))
        k = len(ctxs)
        self.replay = ReplayBuffer(k, capacity, (self.obs_dim,), self.action_dim, self.device)
        self.heldout = ReplayBuffer(k, cfg.td_holdout_size, (self.obs_dim,), self.action_dim,
                                    self.device)

    def state_of(self, k: int) -> dict[str, object]:
        """Seed k's objects for its run's checkpoint (views of the stacked state)."""
        state = {role: nets[k] for role, nets in self.per_seed.items()}
        state.update(
            critic_opt=SeedOptimizerState(self.critic_opt, k, len(self.ctxs)),
            actor_opt=SeedOptimizerState(self.actor_opt, k, len(self.ctxs)),
            alpha_opt=SeedOptimizerState(self.alpha_opt, k, len(self.ctxs)),
            heldout=self.heldout.seed_state(k))
        if self.cfg.checkpoint_buffer:
            state["replay"] = self.replay.seed_state(k)
        return state

    def active(self) -> list[RunContext]:
        """The seeds still training (a diverged seed stops; its slice computes on unused)."""
        return [ctx for ctx in self.ctxs if ctx.stopped is None]

    def alpha(self) -> Tensor:
        return self.temperature.log_alpha.detach().exp()  # (K,)

    def noise(self, shape: tuple[int, ...], gens: list[torch.Generator] | None = None
              ) -> Tensor:
        """Standard normal noise, seed k's rows from seed k's generator (its training stream,
        or ``gens[k]``): (K, *shape)."""
        gens = gens or [ctx.device_rng for ctx in self.ctxs]
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in gens])

    def reset(self) -> None:
        """Re-initialise every network from each seed's own generator; forget the optimisers'
        state (BRO's full-parameter resets)."""
        for k, ctx in enumerate(self.ctxs):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(ctx.torch_rng.get_state())
                for role in ("critic", "actor", "temperature"):
                    net = self.per_seed[role][k]
                    with torch.no_grad():
                        reset_parameters(net)
                        if isinstance(net, Temperature):
                            net.reset_parameters()
                ctx.torch_rng.set_state(torch.get_rng_state())
        with torch.no_grad():
            for t, c in zip(self.target.parameters(), self.critic.parameters(), strict=True):
                t.copy_(c)
        for opt in (self.critic_opt, self.actor_opt, self.alpha_opt):
            opt.state.clear()

    # ---- the update ------------------------------------------------------------------------
    def td_target(self, rewards: Tensor, next_obs: Tensor, terminated: Tensor,
                  gens: list[torch.Generator] | None = None) -> Tensor:
        with torch.no_grad():
            noise = self.noise((next_obs.shape[1], self.action_dim), gens)
            next_action, next_logp = self.actor.sample(next_obs, noise)
            q_next = self.target(next_obs, next_action).min(dim=1).values
            soft = q_next - self.alpha()[:, None] * next_logp
            return rewards + self.cfg.gamma * (1.0 - terminated) * soft

    def critic_losses(self, batch: tuple[Tensor, ...],
                      gens: list[torch.Generator] | None = None) -> Tensor:
        """Per-seed critic loss (K,): the twins' mean squared TD errors, summed. ``gens``:
        the generators of the next actions (default: the training streams)."""
        obs, actions, rewards, next_obs, terminated = batch
        target = self.td_target(rewards, next_obs, terminated, gens)
        q = self.critic(obs, actions)  # (K, 2, B)
        return (q - target[:, None]).pow(2).mean(dim=-1).sum(dim=1)

    def update(self, update_index: int) -> dict[str, Tensor]:
        cfg, b = self.cfg, self.cfg.batch_size
        batch = self.replay.sample(b, [ctx.device_rng for ctx in self.ctxs])
        critic_loss = self.critic_losses(batch)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # seeds do not mix: each slice gets its own gradient
        self.critic_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.parameters()),
                                 list(self.critic.parameters()), cfg.tau)
        for ctx in self.active():
            ctx.flops.add_forward_backward("critic", b)
            ctx.flops.add_forward("critic_target", b)
            ctx.flops.add_forward("actor", b)
        out = {"critic_loss": critic_loss.detach()}
        if update_index % cfg.actor_every == 0:
            obs = batch[0]
            action, logp = self.actor.sample(obs, self.noise((b, self.action_dim)))
            q_pi = self.critic(obs, action).min(dim=1).values
            alpha = self.alpha()
            actor_loss = (alpha[:, None] * logp - q_pi).mean(dim=-1)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.sum().backward(inputs=list(self.actor.parameters()))
            self.actor_opt.step()
            out.update(actor_loss=actor_loss.detach(), entropy=-logp.detach().mean(-1))
            if cfg.autotune:
                log_alpha = self.temperature.log_alpha
                alpha_loss = -(log_alpha.exp()[:, None]
                               * (logp.detach() + self.target_entropy)).mean(dim=-1)
                self.alpha_opt.zero_grad(set_to_none=True)
                alpha_loss.sum().backward()
                self.alpha_opt.step()
            for ctx in self.active():
                ctx.flops.add_forward_backward("actor", b)
                ctx.flops.add_forward("critic", b, passes=2)  # forward + backward to actions
        return out

    # ---- diagnostics (evaluation time; not training compute) ------------------------------
    def diagnostics(self) -> list[dict[str, float]]:
        cfg, k = self.cfg, len(self.ctxs)
        gens = [ctx.eval_rng for ctx in self.ctxs]
        out: list[dict[str, float]] = [{} for _ in range(k)]
        with torch.no_grad():
            train_td = self.critic_losses(self.replay.sample(cfg.batch_size, gens), gens) / 2
            norms = torch.zeros(k, device=self.device)
            for p in self.critic.parameters():
                norms += p.pow(2).reshape(k, -1).sum(-1)
            if self.heldout.size > 0:
                held_td = self.critic_losses(self.heldout.all(), gens) / 2
        for j in range(k):
            out[j]["td_error_train"] = float(train_td[j])
            out[j]["critic_param_norm"] = float(norms[j].sqrt())
            if self.heldout.size > 0:
                out[j]["td_error_heldout"] = float(held_td[j])
                out[j]["td_overfitting"] = float(held_td[j] - train_td[j])
        if cfg.gns_chunks:
            for j, b_crit in enumerate(self.critical_batch_size(gens)):
                out[j]["critical_batch_size"] = b_crit
        return out

    def critical_batch_size(self, gens: list[torch.Generator]) -> list[float]:
        """B_simple = tr(Sigma) / |G|^2 per seed from ``gns_chunks`` gradients at batch B
        (McCandlish et al. 2018, appendix A: unbiased |G|^2 and tr(Sigma) from two batch
        sizes, here B and gns_chunks * B)."""
        cfg, k, m = self.cfg, len(self.ctxs), self.cfg.gns_chunks
        params = list(self.critic.parameters())
        grads = []
        for _ in range(m):
            loss = self.critic_losses(self.replay.sample(cfg.batch_size, gens), gens).sum()
            grads.append(torch.autograd.grad(loss, params))
        small_sq = torch.zeros(k, device=self.device)  # mean over chunks of |g_i|^2
        big_sq = torch.zeros(k, device=self.device)  # |mean g_i|^2
        for i in range(len(params)):
            stacked = torch.stack([g[i] for g in grads]).reshape(m, k, -1)
            small_sq += stacked.pow(2).sum(-1).mean(0)
            big_sq += stacked.mean(0).pow(2).sum(-1)
        b_small, b_big = cfg.batch_size, cfg.batch_size * m
        g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
        return [float(trace[j] / g2[j]) if g2[j] > 0 else float("nan") for j in range(k)]


def _reset_points(cfg: SACConfig, before: int, after: int) -> bool:
    """True if a reset falls in the env steps (before, after]."""
    if any(before < s <= after for s in cfg.reset_at):
        return True
    return cfg.reset_every > 0 and after // cfg.reset_every > before // cfg.reset_every


def _stop_non_finite(ctxs: list[RunContext], actions: Tensor, update: int) -> Tensor:
    """Stop the seeds whose actions are not finite (their weights diverged) before their
    envs see them; they act with zeros from then on, unrecorded."""
    bad = ~torch.isfinite(actions).flatten(1).all(dim=1)
    if not bool(bad.any()):
        return actions
    for j in torch.nonzero(bad).flatten().tolist():
        if ctxs[j].stopped is None:
            ctxs[j].stopped = StopTraining("diverged", f"non-finite action at update {update}")
    return torch.where(bad[:, None, None], torch.zeros_like(actions), actions)


def train_many(cfg: SACConfig, ctxs: list[RunContext]) -> None:
    """Train ``len(ctxs)`` seeds in lock step, each into its own run record."""
    seeds = _Seeds(cfg, ctxs)
    k, device = len(ctxs), seeds.device
    envs = [ctx.envs("train") for ctx in ctxs]
    num_envs = envs[0].num_envs
    for j, ctx in enumerate(ctxs):
        ctx.restore(**seeds.state_of(j))
    c0 = ctxs[0].counters
    # the group's clock: every seed starts at the same point (the spine checks), and a seed
    # that stopped (diverged) keeps its own counters where it stopped
    steps, updates = c0.env_steps, c0.updates
    # Updates owed are a function of the counters (a fractional utd carries its remainder,
    # across resumes too), counted from an anchor: the end of the random phase, or, for a
    # resume whose checkpoint has no replay, learning_starts steps after the resume.
    anchor_steps, anchor_updates = cfg.learning_starts, 0
    if ctxs[0].resumed and not cfg.checkpoint_buffer:
        anchor_steps, anchor_updates = steps + cfg.learning_starts, updates
    obs = np.stack([e.reset(seed=int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng)))
                    for e, ctx in zip(envs, ctxs, strict=True)])
    logs = [EpisodeLog() for _ in range(k)]
    last: dict[str, Tensor] = {}
    low = torch.as_tensor(envs[0].single_action_space.low, device=device)
    high = torch.as_tensor(envs[0].single_action_space.high, device=device)
    updates_per_step = cfg.utd
    holdout = cfg.td_holdout_every

    while not all_done(ctxs):
        for _ in range(max(1, cfg.steps_per_iteration // num_envs)):
            if all_done(ctxs):
                break
            step0 = steps
            if step0 < cfg.learning_starts:
                u = torch.stack([torch.rand((num_envs, seeds.action_dim),
                                            generator=ctx.device_rng, device=device)
                                 for ctx in ctxs])
                actions = low + u * (high - low)
            else:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                    actions, _ = seeds.actor.sample(
                        obs_t, seeds.noise((num_envs, seeds.action_dim)))
                for ctx in seeds.active():
                    ctx.flops.add_forward("actor", num_envs)
                actions = _stop_non_finite(ctxs, actions, updates)
            actions_np = actions.cpu().numpy()
            next_obs = np.empty_like(obs)
            real_next = np.empty_like(obs)
            rewards = np.empty((k, num_envs), np.float32)
            terminated = np.empty((k, num_envs), np.float32)
            for j, env in enumerate(envs):
                o, r, term, trunc, info = env.step(actions_np[j])
                next_obs[j], rewards[j], terminated[j] = o, r, term
                real_next[j] = o
                ended = np.flatnonzero(term | trunc)
                if ended.size and "final_obs" in info:
                    real_next[j, ended] = info["final_obs"]
                elif ended.size:  # no final observation: treat the end as terminal
                    terminated[j, ended] = 1.0
                logs[j].add(info)
            to_holdout = holdout and (step0 // num_envs) % holdout == holdout - 1
            buffer = seeds.heldout if to_holdout else seeds.replay
            buffer.add(torch.as_tensor(obs), actions, torch.as_tensor(rewards),
                       torch.as_tensor(real_next), torch.as_tensor(terminated))
            obs = next_obs
            steps += num_envs
            for ctx in seeds.active():
                ctx.counters.env_steps += num_envs
            step1 = steps
            if _reset_points(cfg, step0, step1):
                seeds.reset()
            if step1 <= anchor_steps or seeds.replay.size < cfg.batch_size:
                continue
            owed = int(math.floor(updates_per_step * (step1 - anchor_steps))
                       - (updates - anchor_updates))
            for _ in range(owed):
                updates += 1
                last = seeds.update(updates)
                for ctx in seeds.active():
                    ctx.counters.updates += 1
                    ctx.counters.samples += cfg.batch_size

        diagnostics: dict[str, list[dict[str, float]]] = {}  # once per evaluation, all seeds
        end_iterations(
            ctxs,
            [partial(_metrics, cfg, seeds, ctx, logs[j], j, last) for j, ctx in enumerate(ctxs)],
            [partial(_evaluate, seeds, ctx, j, diagnostics) for j, ctx in enumerate(ctxs)])


def _metrics(cfg: SACConfig, seeds: _Seeds, ctx: RunContext, log: EpisodeLog, j: int,
             last: dict[str, Tensor]) -> dict[str, float]:
    """Seed j's log line: its last update's losses, temperature, the study's FLOPs
    convention and the training episodes that ended since the last line."""
    out = {key: float(v[j]) for key, v in last.items()}
    out["alpha"] = float(seeds.alpha()[j])
    out["replay_size"] = seeds.replay.size
    out["flops_10nbsd"] = flops_sac(seeds.n_critic, cfg.batch_size, cfg.utd,
                                    ctx.counters.env_steps)
    out.update(log.metrics())
    log.clear()
    return out


def _evaluate(seeds: _Seeds, ctx: RunContext, j: int,
              diagnostics: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Seed j's deterministic policy on its eval envs, plus the critic diagnostics (computed
    for all seeds at once, the first time a seed asks in this evaluation)."""
    if "all" not in diagnostics and seeds.replay.size >= seeds.cfg.batch_size:
        diagnostics["all"] = seeds.diagnostics()
    actor = seeds.per_seed["actor"][j]

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=seeds.device)
            return actor.act_deterministic(x).cpu().numpy()

    out = evaluate(policy, ctx.envs("eval"), ctx.eval_episodes)
    out.update(diagnostics.get("all", [{}] * len(seeds.ctxs))[j])
    return out


def train(cfg: SACConfig, ctx: RunContext) -> str:
    """One seed: the same code path as K seeds with K = 1."""
    train_many(cfg, [ctx])
    return "finished"


register_algo("sac", SACConfig, train, train_many=train_many)
register_algo("bro", BROConfig, train, train_many=train_many)
