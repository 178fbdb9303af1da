"""The same-run CleanRL-style baseline for the SAC speed benchmark: SAC written the way
CleanRL's single-file ``cleanrl/sac_continuous_action.py`` writes it (our code, the peer's
structure and hyperparameters), so our speed is a ratio measured on the same machine in the
same run, not a number remembered from elsewhere.

What makes it faithful to CleanRL's script:
- env: one env in ``gymnasium.vector.SyncVectorEnv`` (``num_envs=1``), each sub-env wrapped in
  ``RecordEpisodeStatistics``, as CleanRL does. Kept as a vector env, not a bare env, because
  CleanRL pays the vector wrapper's per-step cost (batched arrays, info merging) and we want
  that cost in the baseline. gymnasium 1.x resets in the *next* step by default;
  ``autoreset_mode=SAME_STEP`` restores the gymnasium 0.29 behaviour CleanRL was written for
  (the final observation arrives in ``infos["final_obs"]`` in the step that ends the episode);
- replay buffer: numpy arrays on the CPU laid out like SB3's ``ReplayBuffer`` (CleanRL uses
  its adapted copy, ``cleanrl_utils/buffers.py``): ``(buffer_size, n_envs, dim)`` float32,
  uniform ``np.random.randint`` indices plus an env index per sample, fancy indexing,
  ``dones * (1 - timeouts)`` with all-zero timeouts (``handle_timeout_termination=False``),
  then ``torch.tensor`` per array (their ``to_torch`` copies by default; ``torch.as_tensor``
  would save one small copy per array and be less faithful);
- transitions: ``terminations`` (not truncations) as the bootstrap mask; on truncation the
  stored next observation is the final observation, not the reset one;
- networks: two ``SoftQNetwork`` (Linear(obs+act, width)-ReLU-Linear(width, width)-ReLU-
  Linear(width, 1)) and two target copies; tanh-Gaussian actor with two heads, log-std
  squashed by tanh and rescaled to [-5, 2], ``torch.distributions.Normal`` with ``rsample``
  and the ``log(scale * (1 - tanh^2) + 1e-6)`` correction;
- the acting forward runs *with* autograd and ``.detach()`` afterwards (CleanRL has no
  ``torch.no_grad()`` there), out-of-place Polyak updates parameter by parameter
  (``p_t.data.copy_(tau * p.data + (1 - tau) * p_t.data)``), ``alpha = log_alpha.exp().item()``
  after every alpha step;
- hyperparameters: gamma 0.99, tau 0.005, batch 256, width 256, Adam q 1e-3 (both Q nets in one
  optimiser), actor 3e-4, alpha 1e-3 (CleanRL uses ``q_lr`` for alpha), target entropy
  -act_dim, log_alpha starts at 0, ``learning_starts`` 5000 uniform random steps, training when
  ``global_step > learning_starts``, ``policy_frequency`` 2, ``target_network_frequency`` 1.

The one addition is ``utd`` (critic updates per env step; CleanRL has exactly 1). Each critic
update samples its own batch and is followed by its Polyak update (target frequency 1 means
one target update per critic update). The actor keeps CleanRL's delayed scheme unchanged:
on env steps with ``global_step % policy_frequency == 0`` it does ``policy_frequency`` actor
(and alpha) updates on the step's last batch, i.e. one actor update per env step on average
whatever ``utd`` is (the usual high-UTD choice, e.g. REDQ/DroQ). SB3's SAC with
``gradient_steps=utd`` instead does ``utd`` actor updates per env step; see bench/sb3_sac.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MAX = 2.0
LOG_STD_MIN = -5.0


class SoftQNetwork(nn.Module):
    """Q(s, a): Linear(obs+act, width)-ReLU-Linear(width, width)-ReLU-Linear(width, 1)."""

    def __init__(self, obs_dim: int, act_dim: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Actor(nn.Module):
    """Tanh-Gaussian policy with mean and log-std heads, log-std rescaled to [-5, 2]."""

    def __init__(self, obs_dim: int, act_dim: int, width: int, low: np.ndarray,
                 high: np.ndarray) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc_mean = nn.Linear(width, act_dim)
        self.fc_logstd = nn.Linear(width, act_dim)
        self.register_buffer("action_scale",
                             torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias",
                             torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = torch.tanh(self.fc_logstd(x))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mean, log_std

    def get_action(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled action, its log-prob (shape (B, 1)) and the deterministic action."""
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t)
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        log_prob = log_prob.sum(1, keepdim=True)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean


class ReplayBuffer:
    """Numpy replay buffer on the CPU in SB3's ``ReplayBuffer`` layout (no timeout handling)."""

    def __init__(self, size: int, obs_dim: int, act_dim: int, n_envs: int = 1) -> None:
        self.size, self.n_envs, self.pos, self.full = size, n_envs, 0, False
        self.observations = np.zeros((size, n_envs, obs_dim), dtype=np.float32)
        self.next_observations = np.zeros((size, n_envs, obs_dim), dtype=np.float32)
        self.actions = np.zeros((size, n_envs, act_dim), dtype=np.float32)
        self.rewards = np.zeros((size, n_envs), dtype=np.float32)
        self.dones = np.zeros((size, n_envs), dtype=np.float32)
        self.timeouts = np.zeros((size, n_envs), dtype=np.float32)  # stays 0: no timeout handling

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray,
            reward: np.ndarray, done: np.ndarray) -> None:
        self.observations[self.pos] = np.array(obs)
        self.next_observations[self.pos] = np.array(next_obs)
        self.actions[self.pos] = np.array(action)
        self.rewards[self.pos] = np.array(reward)
        self.dones[self.pos] = np.array(done)
        self.pos += 1
        if self.pos == self.size:
            self.full, self.pos = True, 0

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(obs, actions, next_obs, dones (B, 1), rewards (B, 1)) as fresh CPU tensors."""
        upper = self.size if self.full else self.pos
        idx = np.random.randint(0, upper, size=batch_size)
        env_idx = np.random.randint(0, self.n_envs, size=(batch_size,))
        data = (self.observations[idx, env_idx, :], self.actions[idx, env_idx, :],
                self.next_observations[idx, env_idx, :],
                (self.dones[idx, env_idx] * (1 - self.timeouts[idx, env_idx])).reshape(-1, 1),
                self.rewards[idx, env_idx].reshape(-1, 1))
        return tuple(torch.tensor(a) for a in data)


def _make_env(env_id: str, seed: int) -> Any:
    def thunk() -> gym.Env:
        env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
        env.action_space.seed(seed)
        return env

    return thunk


def run_cleanrl_style(env_id: str, total_steps: int, *, utd: int = 1, batch_size: int = 256,
                      width: int = 256, lr_q: float = 1e-3, lr_actor: float = 3e-4,
                      learning_starts: int = 5000, seed: int = 1,
                      threads: int | None = None) -> dict[str, Any]:
    """Train CleanRL-style SAC for ``total_steps`` env steps.

    Returns ``steps_per_s`` and ``train_seconds`` over the env steps after the first
    ``learning_starts`` (the training phase), ``return_mean`` (mean of the last 10 finished
    episodes, nan if none) and ``returns`` as ``(env_step, episodic_return)`` pairs.
    """
    if utd < 1:
        raise ValueError(f"utd must be an integer >= 1, got {utd}")
    gamma, tau, policy_frequency, target_network_frequency = 0.99, 0.005, 2, 1
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    envs = gym.vector.SyncVectorEnv([_make_env(env_id, seed)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert isinstance(envs.single_action_space, gym.spaces.Box), "continuous actions only"
    envs.single_action_space.seed(seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    space = envs.single_action_space
    actor = Actor(obs_dim, act_dim, width, space.low, space.high)
    qf1, qf2 = SoftQNetwork(obs_dim, act_dim, width), SoftQNetwork(obs_dim, act_dim, width)
    qf1_target = SoftQNetwork(obs_dim, act_dim, width)
    qf2_target = SoftQNetwork(obs_dim, act_dim, width)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=lr_q)
    actor_optimizer = torch.optim.Adam(list(actor.parameters()), lr=lr_actor)
    target_entropy = -float(act_dim)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().item()
    a_optimizer = torch.optim.Adam([log_alpha], lr=lr_q)

    rb = ReplayBuffer(max(total_steps, 1), obs_dim, act_dim, envs.num_envs)
    returns: list[tuple[int, float]] = []
    t_train = time.perf_counter() if learning_starts <= 0 else None

    obs, _ = envs.reset(seed=seed)
    for global_step in range(total_steps):
        if global_step == learning_starts:
            t_train = time.perf_counter()
        if global_step < learning_starts:
            actions = np.array([space.sample() for _ in range(envs.num_envs)])
        else:
            actions, _, _ = actor.get_action(torch.Tensor(obs))
            actions = actions.detach().cpu().numpy()

        next_obs, rewards, terminations, truncations, infos = envs.step(actions)

        if "final_info" in infos and "episode" in infos["final_info"]:
            ep = infos["final_info"]["episode"]
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                returns.append((global_step + 1, float(ep["r"][i])))

        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations):
            if trunc:
                real_next_obs[idx] = infos["final_obs"][idx]
        rb.add(obs, real_next_obs, actions, rewards, terminations)
        obs = next_obs

        if global_step > learning_starts:
            for update in range(utd):
                b_obs, b_act, b_next_obs, b_dones, b_rew = rb.sample(batch_size)
                with torch.no_grad():
                    next_actions, next_log_pi, _ = actor.get_action(b_next_obs)
                    qf1_next = qf1_target(b_next_obs, next_actions)
                    qf2_next = qf2_target(b_next_obs, next_actions)
                    min_qf_next = torch.min(qf1_next, qf2_next) - alpha * next_log_pi
                    next_q = (b_rew.flatten()
                              + (1 - b_dones.flatten()) * gamma * min_qf_next.view(-1))
                qf1_loss = F.mse_loss(qf1(b_obs, b_act).view(-1), next_q)
                qf2_loss = F.mse_loss(qf2(b_obs, b_act).view(-1), next_q)
                qf_loss = qf1_loss + qf2_loss
                q_optimizer.zero_grad()
                qf_loss.backward()
                q_optimizer.step()

                # CleanRL's delayed actor: policy_frequency updates every policy_frequency
                # env steps, after the step's last critic update (1 per env step on average).
                if update == utd - 1 and global_step % policy_frequency == 0:
                    for _ in range(policy_frequency):
                        pi, log_pi, _ = actor.get_action(b_obs)
                        min_qf_pi = torch.min(qf1(b_obs, pi), qf2(b_obs, pi))
                        actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
                        actor_optimizer.zero_grad()
                        actor_loss.backward()
                        actor_optimizer.step()

                        with torch.no_grad():
                            _, log_pi, _ = actor.get_action(b_obs)
                        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().item()

                if global_step % target_network_frequency == 0:
                    for param, target in zip(qf1.parameters(), qf1_target.parameters(),
                                             strict=True):
                        target.data.copy_(tau * param.data + (1 - tau) * target.data)
                    for param, target in zip(qf2.parameters(), qf2_target.parameters(),
                                             strict=True):
                        target.data.copy_(tau * param.data + (1 - tau) * target.data)
    t_end = time.perf_counter()
    envs.close()

    train_steps = total_steps - max(learning_starts, 0)
    train_seconds = t_end - t_train if t_train is not None and train_steps > 0 else 0.0
    last = [r for _, r in returns[-10:]]
    return {
        "steps_per_s": train_steps / train_seconds if train_seconds > 0 else float("nan"),
        "train_seconds": train_seconds,
        "return_mean": float(np.mean(last)) if last else float("nan"),
        "returns": returns,
    }


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description="CleanRL-style SAC throughput/return baseline")
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--utd", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--lr-q", type=float, default=1e-3)
    p.add_argument("--lr-actor", type=float, default=3e-4)
    p.add_argument("--learning-starts", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(run_cleanrl_style(
        args.env, args.steps, utd=args.utd, batch_size=args.batch_size, width=args.width,
        lr_q=args.lr_q, lr_actor=args.lr_actor, learning_starts=args.learning_starts,
        seed=args.seed, threads=args.threads or None)))
