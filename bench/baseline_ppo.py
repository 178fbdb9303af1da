"""The same-run baseline for bench/ppo_procgen.py: PPO written the way the widely used
single-file Procgen PPO scripts write it, so our speed is a ratio measured on the same
machine in the same run, not a number remembered from elsewhere.

What makes it the "textbook" loop (and what rl-scaling does differently):
- observations stored as float32 and converted per batch with ``permute(0, 3, 1, 2) / 255``
  (ours: uint8 storage, 4x less rollout memory);
- out-of-place ReLUs and ``torch.distributions.Categorical`` for sampling, log-probs and
  entropy (ours: in-place ReLUs where autograd allows, Gumbel-max sampling);
- glibc's default allocator settings (ours: freed memory kept for reuse, rl_scaling/hostmem.py);
- the same hyperparameters: 64 envs x 256 steps, 3 epochs, 8 minibatches, clip 0.2,
  GAE(0.999, 0.95), Adam 5e-4, grad clip 0.5, IMPALA CNN 16/32/32 + 256.

Only throughput is measured; the networks, envs and batch sizes match, so the learning
problem is the same. Reward normalisation is left out (negligible cost).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from envs import make_env


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(nn.functional.relu(self.conv0(nn.functional.relu(x))))


class _Stack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0, self.res1 = _Residual(out_channels), _Residual(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class TextbookAgent(nn.Module):
    def __init__(self, num_actions: int, width: float = 1.0) -> None:
        super().__init__()
        chans = [max(1, round(c * width)) for c in (16, 32, 32)]
        hidden = max(1, round(256 * width))
        self.body = nn.Sequential(
            _Stack(3, chans[0]), _Stack(chans[0], chans[1]), _Stack(chans[1], chans[2]),
            nn.Flatten(), nn.ReLU(), nn.Linear(chans[2] * 8 * 8, hidden), nn.ReLU(),
        )
        self.actor = nn.Linear(hidden, num_actions)
        self.critic = nn.Linear(hidden, 1)

    def hidden(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs.permute(0, 3, 1, 2) / 255.0)

    def act(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        h = self.hidden(obs)
        dist = Categorical(logits=self.actor(h))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(h).squeeze(-1)


def run_baseline(iterations: int, width: float = 1.0, num_envs: int = 64,
                 num_steps: int = 256, device: str = "cpu", env_id: str = "coinrun",
                 warmup: int = 0) -> dict[str, float]:
    """Train ``iterations`` PPO iterations; return steps/s and the rollout/update split of
    the iterations after the first ``warmup`` ones."""
    gamma, lam, epochs, minibatches, clip = 0.999, 0.95, 3, 8, 0.2
    envs = make_env("procgen", num_envs=num_envs, seed=0, env_id=env_id)
    agent = TextbookAgent(envs.single_action_space.n, width).to(device)
    opt = torch.optim.Adam(agent.parameters(), lr=5e-4, eps=1e-5)
    shape = (num_steps, num_envs)
    obs_buf = torch.zeros(shape + envs.single_observation_space.shape, device=device)
    act_buf = torch.zeros(shape, device=device)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(shape, device=device) for _ in range(4))
    next_obs = torch.tensor(envs.reset(), dtype=torch.float32, device=device)
    next_done = torch.zeros(num_envs, device=device)
    rollout_s = update_s = 0.0
    batch = num_envs * num_steps
    for iteration in range(iterations):
        if iteration == warmup:
            rollout_s = update_s = 0.0
        t0 = time.perf_counter()
        for step in range(num_steps):
            obs_buf[step], done_buf[step] = next_obs, next_done
            with torch.no_grad():
                action, logp, _, value = agent.act(next_obs)
            act_buf[step], logp_buf[step], val_buf[step] = action, logp, value
            obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
            rew_buf[step] = torch.tensor(reward, device=device)
            next_obs = torch.tensor(obs, dtype=torch.float32, device=device)
            next_done = torch.tensor(np.logical_or(term, trunc), dtype=torch.float32,
                                     device=device)
        with torch.no_grad():
            next_value = agent.act(next_obs)[3]
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(num_envs, device=device)
            for t in reversed(range(num_steps)):
                nonterminal = 1.0 - (next_done if t == num_steps - 1 else done_buf[t + 1])
                nxt = next_value if t == num_steps - 1 else val_buf[t + 1]
                delta = rew_buf[t] + gamma * nxt * nonterminal - val_buf[t]
                adv[t] = last = delta + gamma * lam * nonterminal * last
            ret = adv + val_buf
        t1 = time.perf_counter()
        b_obs = obs_buf.reshape((-1,) + envs.single_observation_space.shape)
        b_act, b_logp, b_adv, b_ret, b_val = (x.reshape(-1) for x in
                                              (act_buf, logp_buf, adv, ret, val_buf))
        mb = batch // minibatches
        for _ in range(epochs):
            perm = np.random.permutation(batch)
            for start in range(0, batch, mb):
                idx = perm[start:start + mb]
                _, new_logp, entropy, new_val = agent.act(b_obs[idx], b_act.long()[idx])
                ratio = (new_logp - b_logp[idx]).exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
                v_clip = b_val[idx] + (new_val - b_val[idx]).clamp(-clip, clip)
                v_loss = 0.5 * torch.max((new_val - b_ret[idx]) ** 2,
                                         (v_clip - b_ret[idx]) ** 2).mean()
                loss = pg - 0.01 * entropy.mean() + 0.5 * v_loss
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                opt.step()
        t2 = time.perf_counter()
        rollout_s += t1 - t0
        update_s += t2 - t1
    envs.close()
    steps = (iterations - warmup) * batch
    return {"steps": steps, "sps": steps / (rollout_s + update_s), "rollout_s": rollout_s,
            "update_s": update_s}


if __name__ == "__main__":  # run in its own process so it inherits none of our settings
    import argparse
    import json

    p = argparse.ArgumentParser(description="textbook PPO throughput baseline")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--env", default="coinrun")
    p.add_argument("--warmup", type=int, default=0, help="first iterations left out of the rate")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run_baseline(args.iterations, args.width, device=args.device, env_id=args.env,
                       warmup=args.warmup)
    import resource

    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
