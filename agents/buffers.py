"""The one rollout buffer and the one GAE, shared by every on-policy algorithm.

Storage lives on the training device, so on a GPU neither the rollout nor the
advantage computation copies through the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    last_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    All inputs are (T, N) except ``last_value``/``last_done`` (N,). ``dones[t]`` marks
    that the observation at step t starts a new episode (the previous one ended), as
    in the Procgen PPO recipe. Returns ``(advantages, returns)``, both (T, N).
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(last_value)
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            next_nonterminal = 1.0 - last_done.to(values.dtype)
            next_value = last_value
        else:
            next_nonterminal = 1.0 - dones[t + 1].to(values.dtype)
            next_value = values[t + 1]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        last_gae = delta + gamma * gae_lambda * next_nonterminal * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


class RolloutBuffer:
    """Fixed-size (num_steps x num_envs) storage for one on-policy rollout."""

    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, device: torch.device) -> None:
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        self.obs = torch.zeros((num_steps, num_envs, *obs_shape), dtype=obs_dtype, device=device)
        self.actions = torch.zeros((num_steps, num_envs), dtype=torch.long, device=device)
        self.logprobs = torch.zeros((num_steps, num_envs), device=device)
        self.rewards = torch.zeros((num_steps, num_envs), device=device)
        self.dones = torch.zeros((num_steps, num_envs), dtype=torch.bool, device=device)
        self.values = torch.zeros((num_steps, num_envs), device=device)
        self.advantages = torch.zeros((num_steps, num_envs), device=device)
        self.returns = torch.zeros((num_steps, num_envs), device=device)

    @property
    def size(self) -> int:
        return self.num_steps * self.num_envs

    def add(self, step: int, obs: torch.Tensor, done: torch.Tensor, action: torch.Tensor,
            logprob: torch.Tensor, value: torch.Tensor, reward: torch.Tensor) -> None:
        self.obs[step].copy_(obs)
        self.dones[step].copy_(done)
        self.actions[step].copy_(action)
        self.logprobs[step].copy_(logprob)
        self.values[step].copy_(value)
        self.rewards[step].copy_(reward)

    def finish(self, last_value: torch.Tensor, last_done: torch.Tensor, gamma: float,
               gae_lambda: float) -> None:
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, self.dones, last_value, last_done, gamma, gae_lambda
        )

    def minibatches(self, num_minibatches: int,
                    generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``num_minibatches`` random disjoint minibatches of flattened samples."""
        if self.size % num_minibatches:
            raise ValueError(
                f"num_envs*num_steps={self.size} is not divisible by "
                f"num_minibatches={num_minibatches}"
            )
        mb_size = self.size // num_minibatches
        flat = {
            "obs": self.obs.flatten(0, 1),
            "actions": self.actions.flatten(),
            "logprobs": self.logprobs.flatten(),
            "values": self.values.flatten(),
            "advantages": self.advantages.flatten(),
            "returns": self.returns.flatten(),
        }
        perm = torch.randperm(self.size, generator=generator, device="cpu").to(self.device)
        for start in range(0, self.size, mb_size):
            idx = perm[start:start + mb_size]
            yield {k: v[idx] for k, v in flat.items()}
