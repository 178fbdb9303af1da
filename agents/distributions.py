"""The one place for policy distributions: a categorical and a diagonal-Gaussian head behind
one small interface, chosen from the env's action space by :func:`policy_distribution`.

"params" is the policy head's output tensor, what the rollout buffer stores as the behaviour
policy (``dist_params``):

- categorical: logits ``(B, n)``;
- diagonal Gaussian over ``d = prod(action_shape)`` dims: ``(B, 2d) = [mean, log_std]`` (the
  built-in models broadcast a state-independent learned ``log_std`` to the batch).

Every distribution has ``sample(params, generator) -> (actions, logprob)``,
``logprob_entropy(params, actions) -> (logprob, entropy)``, ``kl(old, new)`` (per-sample
KL(old || new)), ``action_shape`` / ``action_dtype`` (one action, for the rollout buffer) and
``param_dim`` (P, the width of params). The Gaussian adds the decoupled KLs of MPO / V-MPO
(Abdolmaleki et al. 2018; Song et al. 2019): ``kl_mean`` = KL(old || new mean with the old
std) and ``kl_std`` = KL(old || old mean with the new std), each moving one part of the policy
(their sum equals ``kl`` only where the std has not moved).

Gaussian actions are sampled unbounded; the env clips them to its Box (``VecEnv``), and the
log-probability is of the unclipped sample, so the policy gradient stays unbiased.
"""

from __future__ import annotations

import math
from typing import Protocol

import gymnasium
import torch
import torch.nn.functional as F

from agents.common import categorical_logprob_entropy, sample_categorical

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class PolicyDistribution(Protocol):
    """What an on-policy algorithm needs of its action distribution."""

    action_shape: tuple[int, ...]
    action_dtype: torch.dtype
    param_dim: int

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def logprob_entropy(self, params: torch.Tensor, actions: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor: ...


class Categorical:
    """A categorical over ``n`` actions from logits; actions are long ``(B,)``.

    Sampling is the Gumbel-max :func:`agents.common.sample_categorical` (PPO's acting hot
    path, unchanged); ``n=None`` (a distribution that only scores logits, e.g. a loss that
    was not told the action space) still works for everything but ``param_dim``.
    """

    action_shape: tuple[int, ...] = ()
    action_dtype = torch.long

    def __init__(self, n: int | None = None) -> None:
        self.n = n

    @property
    def param_dim(self) -> int:
        if self.n is None:
            raise ValueError("Categorical() without n has no known param_dim")
        return int(self.n)

    # the shared helpers themselves: no wrapper on the hot path
    sample = staticmethod(sample_categorical)
    logprob_entropy = staticmethod(categorical_logprob_entropy)

    @staticmethod
    def kl(old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
        """KL(old || new) per sample: ``sum_a p_old (log p_old - log p_new)``."""
        old_logp = F.log_softmax(old_params, dim=-1)
        new_logp = F.log_softmax(new_params, dim=-1)
        return (old_logp.exp() * (old_logp - new_logp)).sum(-1)


class DiagGaussian:
    """A diagonal Gaussian over actions of ``action_shape`` (float32); params ``(B, 2d)`` =
    ``[mean, log_std]`` with ``d = prod(action_shape)``."""

    action_dtype = torch.float32

    def __init__(self, action_shape: tuple[int, ...]) -> None:
        self.action_shape = tuple(int(s) for s in action_shape)
        self.dim = math.prod(self.action_shape)
        self.param_dim = 2 * self.dim

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)``, each ``(B, d)``."""
        return params[..., :self.dim], params[..., self.dim:]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.split(params)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=mean.device)
        actions = mean + log_std.exp() * noise
        # log N(a | mean, std) with (a - mean) / std = noise: no division
        logprob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI).sum(-1)
        return actions.reshape(-1, *self.action_shape), logprob

    def logprob_entropy(self, params: torch.Tensor, actions: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.split(params)
        z = (actions.reshape(mean.shape) - mean) * torch.exp(-log_std)
        logprob = (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)
        entropy = (0.5 + _HALF_LOG_2PI + log_std).sum(-1)
        return logprob, entropy

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
        """KL(old || new) per sample:
        ``sum log(s_new / s_old) + (s_old^2 + (mu_old - mu_new)^2) / 2 s_new^2 - 1/2``."""
        old_mean, old_log_std = self.split(old_params)
        new_mean, new_log_std = self.split(new_params)
        return (new_log_std - old_log_std
                + 0.5 * (torch.exp(2 * old_log_std) + (old_mean - new_mean).square())
                * torch.exp(-2 * new_log_std) - 0.5).sum(-1)

    def kl_mean(self, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
        """KL(N(mu_old, s_old) || N(mu_new, s_old)) = ``sum (mu_new - mu_old)^2 / 2 s_old^2``:
        only the mean moves (the std is the old one)."""
        old_mean, old_log_std = self.split(old_params)
        new_mean, _ = self.split(new_params)
        return (0.5 * (new_mean - old_mean).square() * torch.exp(-2 * old_log_std)).sum(-1)

    def kl_std(self, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
        """KL(N(mu_old, s_old) || N(mu_old, s_new)) =
        ``sum log(s_new / s_old) + s_old^2 / 2 s_new^2 - 1/2``: only the std moves."""
        _, old_log_std = self.split(old_params)
        _, new_log_std = self.split(new_params)
        return (new_log_std - old_log_std + 0.5 * torch.exp(2 * (old_log_std - new_log_std))
                - 0.5).sum(-1)


def policy_distribution(action_space: gymnasium.spaces.Space) -> Categorical | DiagGaussian:
    """The distribution of a policy acting in ``action_space``: ``Discrete(n)`` ->
    :class:`Categorical`, ``Box`` -> :class:`DiagGaussian` (sampled unbounded; the env clips)."""
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return Categorical(int(action_space.n))
    if isinstance(action_space, gymnasium.spaces.Box):
        return DiagGaussian(action_space.shape)
    raise ValueError(f"no policy distribution for action space {action_space}; "
                     f"on-policy agents support Discrete and Box")
