"""Small shared blocks: categorical action helpers and reward normalisation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_scaling.registry import ConfigError


def sample_categorical(
    logits: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample actions from logits; return ``(actions, log_probs)``.

    Uses the Gumbel-max trick: one fused op chain, cheaper than
    ``torch.distributions.Categorical`` on the acting hot path. ``generator``: the run's
    generator on the logits' device (``ctx.device_rng``); None uses torch's global one.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    uniform = torch.rand(log_probs.shape, generator=generator, dtype=log_probs.dtype,
                         device=log_probs.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0)))
    actions = torch.argmax(log_probs + gumbel, dim=-1)
    return actions, log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def categorical_logprob_entropy(logits: torch.Tensor,
                                actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``actions`` and the entropy of each distribution."""
    log_probs = F.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy


class RunningMeanStd:
    """Running mean and variance (parallel algorithm of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = (self.var * self.count + batch_var * batch_count
              + delta**2 * self.count * batch_count / total)
        self.var = m2 / total
        self.count = total


class RewardNormalizer:
    """Scale rewards by the running std of the discounted return (gym's NormalizeReward).

    The recipe's reward normalisation: keeps value targets O(1) across games and widths.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.returns = np.zeros(num_envs, np.float64)
        self.rms = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """One step of every env: update the statistics, return the scaled rewards."""
        self.update(rewards, dones)
        return self.scale(rewards)

    def update(self, rewards: np.ndarray, dones: np.ndarray,
               envs: slice = slice(None)) -> None:
        """Add one step's ``rewards`` of the envs ``envs`` (all by default) to the running
        return statistics. Env groups stepped apart (``speed.overlap_envs``) update one group
        at a time and :meth:`scale` the step once every group is in: the same numbers as one
        update of all envs (the parallel variance combines exactly)."""
        returns = self.returns[envs]  # a view: updated in place
        returns *= self.gamma
        returns += rewards
        self.rms.update(returns)
        returns[dones] = 0.0

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """``rewards`` divided by the running std of the return, clipped, float32."""
        scaled = rewards / np.sqrt(self.rms.var + self.eps)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "mean": self.rms.mean, "var": self.rms.var,
                "count": self.rms.count}

    def load_state_dict(self, state: dict) -> None:
        returns = np.asarray(state["returns"], np.float64)
        # saved for another number of envs (a data-parallel run resumed with other ranks):
        # the running statistics carry over, the per-env returns restart (so do the envs)
        self.returns = (returns.copy() if returns.shape == self.returns.shape
                        else np.zeros_like(self.returns))
        self.rms.mean, self.rms.var, self.rms.count = state["mean"], state["var"], state["count"]


def require_feedforward(model: nn.Module, algo: str) -> None:
    """Refuse a recurrent model (``model=lstm``) in an algorithm that acts and learns on
    single observations (PPO, PPG, V-MPO); IMPALA is the recurrent learner."""
    if getattr(model, "recurrent", False):
        raise ConfigError(f"algo={algo} needs a feed-forward model; {type(model).__name__} "
                          "(model=lstm) is recurrent: train it with algo=impala")
