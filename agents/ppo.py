"""Proximal Policy Optimisation (Schulman et al. 2017), Procgen recipe (Cobbe et al. 2020).

Reads top to bottom like CleanRL's ``ppo_procgen.py``: collect a rollout, compute
GAE, run ``num_epochs`` of clipped-objective minibatch updates, log, checkpoint.
The shared blocks (rollout buffer + GAE, categorical helpers, reward
normalisation, FLOP accountant, run record) live elsewhere and are reused.

FLOPs: each env step costs one acting forward per env, plus one forward per env per
rollout for the bootstrap value; each minibatch costs a forward and a backward
(2x forward) per sample. Held-out evaluation is not training compute and is not counted.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn

from agents.buffers import RolloutBuffer
from agents.common import RewardNormalizer, categorical_logprob_entropy, sample_categorical
from envs.base import VecEnv
from rl_scaling.checkpoint import load_module_state
from rl_scaling.config import PPOConfig
from rl_scaling.context import RunContext, StopTraining


def learning_rate(cfg: PPOConfig, width: float) -> float:
    """lr = base_lr * width^-1/2 when ``lr_width_rule`` (Hilton et al. 2023), else base_lr."""
    return cfg.lr * width**-0.5 if cfg.lr_width_rule else cfg.lr


def _obs_tensor(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    # from_numpy shares memory; the copy to the device (or into the buffer) is the only copy
    return torch.from_numpy(obs).to(device, non_blocking=True)


@torch.inference_mode()
def evaluate(model: nn.Module, envs: VecEnv, episodes: int,
             device: torch.device) -> dict[str, float]:
    """Mean return (and success rate, if the env reports one) over at least ``episodes``
    episodes: the first ``ceil(episodes / num_envs)`` of every env. Taking the first episodes
    to end across all envs instead would over-sample short episodes (e.g. early deaths)."""
    per_env = math.ceil(episodes / envs.num_envs)
    returns: list[list[float]] = [[] for _ in range(envs.num_envs)]
    successes: list[list[float]] = [[] for _ in range(envs.num_envs)]
    obs = envs.reset()
    while min(len(r) for r in returns) < per_env:
        logits, _ = model(_obs_tensor(obs, device))
        actions, _ = sample_categorical(logits)
        obs, _, terminated, truncated, info = envs.step(actions.cpu().numpy())
        ended = np.flatnonzero(np.logical_or(terminated, truncated))  # info is in env order
        success = info.get("episode_success")
        for j, env_index in enumerate(ended):
            if len(returns[env_index]) < per_env:
                returns[env_index].append(float(info["episode_return"][j]))
                if success is not None:
                    successes[env_index].append(float(success[j]))
    out = {"eval_return": float(np.mean([x for r in returns for x in r]))}
    if any(successes):
        out["eval_success"] = float(np.mean([x for s in successes for x in s]))
    return out


def train(cfg: PPOConfig, envs: VecEnv, model: nn.Module, ctx: RunContext,
          eval_envs: VecEnv | None = None) -> str:
    """Train ``model`` on ``envs`` for ``cfg.total_steps`` interactions; return the final status."""
    device = ctx.device
    num_envs = envs.num_envs
    batch_size = num_envs * cfg.num_steps
    if batch_size % cfg.num_minibatches:
        raise ValueError(f"algo.num_minibatches={cfg.num_minibatches} must divide "
                         f"env.num_envs*algo.num_steps={batch_size}")
    minibatch_size = batch_size // cfg.num_minibatches
    num_iterations = math.ceil(cfg.total_steps / batch_size)
    base_lr = learning_rate(cfg, ctx.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, eps=cfg.adam_eps)
    reward_norm = RewardNormalizer(num_envs, cfg.gamma) if cfg.norm_reward else None

    obs_space = envs.single_observation_space
    buffer = RolloutBuffer(cfg.num_steps, num_envs, obs_space.shape,
                           torch.from_numpy(np.zeros(0, obs_space.dtype)).dtype, device)

    if ctx.resume_state is not None:
        load_module_state(model, ctx.resume_state["model"], ctx.checkpoint_path)
        optimizer.load_state_dict(ctx.resume_state["optimizer"])
        if reward_norm is not None:
            reward_norm.load_state_dict(ctx.resume_state["reward_normalizer"])

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "reward_normalizer": reward_norm.state_dict() if reward_norm else None}

    # Envs are not checkpointed (Procgen cannot be), so a resumed run starts fresh episodes.
    next_obs = _obs_tensor(envs.reset(seed=int(torch.randint(0, 2**31 - 1, ()).item())), device)
    next_done = torch.zeros(num_envs, dtype=torch.bool, device=device)
    c = ctx.counters

    while c.iterations < num_iterations:
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = base_lr * (1.0 - c.iterations / num_iterations)

        # ---- rollout --------------------------------------------------------------
        t_rollout = time.perf_counter()
        ep_returns, ep_lengths, ep_success = [], [], []
        raw_reward_sum = 0.0
        model.eval()
        for step in range(cfg.num_steps):
            with torch.inference_mode():
                logits, value = model(next_obs)
                action, logprob = sample_categorical(logits)
            obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            done = np.logical_or(terminated, truncated)
            raw_reward_sum += float(reward.sum())
            if reward_norm is not None:
                reward = reward_norm(reward, done)
            buffer.add(step, next_obs, next_done, action, logprob, value,
                       torch.from_numpy(reward).to(device))
            next_obs = _obs_tensor(obs, device)
            next_done = torch.from_numpy(done).to(device)
            ep_returns.append(info["episode_return"])
            ep_lengths.append(info["episode_length"])
            if "episode_success" in info:
                ep_success.append(info["episode_success"])
        ctx.accountant.add_forward(batch_size)
        c.env_steps += batch_size
        with torch.inference_mode():
            _, last_value = model(next_obs)
        ctx.accountant.add_forward(num_envs)  # the bootstrap value is a real forward too
        buffer.finish(last_value, next_done, cfg.gamma, cfg.gae_lambda)
        t_rollout = time.perf_counter() - t_rollout

        # ---- update -----------------------------------------------------------------
        t_update = time.perf_counter()
        model.train()
        stats = torch.zeros(5, device=device)  # pg, v, entropy, approx_kl, clipfrac sums
        for _epoch in range(cfg.num_epochs):
            for mb in buffer.minibatches(cfg.num_minibatches):
                logits, new_value = model(mb["obs"])
                new_logprob, entropy = categorical_logprob_entropy(logits, mb["actions"])
                log_ratio = new_logprob - mb["logprobs"]
                ratio = log_ratio.exp()
                adv = mb["advantages"]
                if cfg.norm_adv:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
                ).mean()
                if cfg.clip_vloss:
                    v_clipped = mb["values"] + (new_value - mb["values"]).clamp(
                        -cfg.clip_coef, cfg.clip_coef)
                    v_loss = 0.5 * torch.max((new_value - mb["returns"]) ** 2,
                                             (v_clipped - mb["returns"]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((new_value - mb["returns"]) ** 2).mean()
                ent = entropy.mean()
                loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
                    stats += torch.stack([pg_loss.detach(), v_loss.detach(), ent.detach(),
                                          approx_kl, clipfrac])
                ctx.accountant.add_forward_backward(minibatch_size)
                c.updates += 1
                c.samples += minibatch_size
        c.iterations += 1
        t_update = time.perf_counter() - t_update

        # ---- log, evaluate, checkpoint ---------------------------------------------------
        n_mb = cfg.num_epochs * cfg.num_minibatches
        pg, vl, en, kl, cf = (stats / n_mb).tolist()  # one device sync per iteration
        finite = all(math.isfinite(x) for x in (pg, vl, en))
        returns = np.concatenate(ep_returns)
        metrics = {
            "loss": pg - cfg.ent_coef * en + cfg.vf_coef * vl, "policy_loss": pg,
            "value_loss": vl, "entropy": en, "approx_kl": kl, "clipfrac": cf,
            "lr": optimizer.param_groups[0]["lr"], "reward_mean": raw_reward_sum / batch_size,
            "rollout_time": round(t_rollout, 3), "update_time": round(t_update, 3),
        }
        if returns.size:
            metrics["return_mean"] = float(returns.mean())
            metrics["episode_length"] = float(np.concatenate(ep_lengths).mean())
            metrics["episodes"] = int(returns.size)
        if ep_success:
            succ = np.concatenate(ep_success)
            if succ.size:
                metrics["success_rate"] = float(succ.mean())
        last = c.iterations == num_iterations
        evaluated = eval_envs is not None and cfg.eval_interval > 0 and (
            c.iterations % cfg.eval_interval == 0 or last)
        if evaluated:
            model.eval()
            metrics.update(evaluate(model, eval_envs, cfg.eval_episodes, device))
        if not finite:
            ctx.log(metrics, final=True)
            raise StopTraining("diverged", f"non-finite loss at update {c.updates}")
        if last or evaluated or ctx.log_due():
            ctx.log(metrics, final=last)
        if last or ctx.checkpoint_due():
            ctx.save(state())
        if ctx.preempted() and not last:
            raise StopTraining("running", "preempted: checkpoint saved, resume from this run dir")
    return "finished"
