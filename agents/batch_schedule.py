"""Batch-size schedules for on-policy learners, and the gradient noise scale they read.

The batch is the rollout, ``num_envs x num_steps`` interactions per iteration; the number
of minibatches stays fixed, so the minibatch grows with it. A schedule only ever doubles
the batch (a ladder ``B_min * 2^k`` up to ``B_max``), by lengthening the rollout:

- ``constant``: ``B_min`` throughout.
- ``power_law``: ``B(E) = B_min * max(1, E / E_0)^p`` in interactions ``E``, rounded down to
  the ladder; ``E_0`` defaults to the interactions of 32 iterations at ``B_min``.
- ``greedy``: the adaptive schedule. Every ``check_every`` iterations the gradient noise
  scale ``B_noise = tr(Sigma) / |G|^2`` (McCandlish et al. 2018, the "simple" noise scale)
  is read from the last update, and the batch doubles when the minibatch is at most half
  of ``B_noise``: below the noise scale a larger batch still buys a near-proportional
  step (McCandlish et al.), so the doubling should cost few interactions. No measurement
  (or a non-positive ``|G|^2`` estimate) means no doubling.

With ``rescale`` (default) a change by a factor ``c`` also multiplies the learning rate by
``c``, raises Adam's betas and the proximal EWMA's decay to the power ``c``: our reading of
Hilton et al. 2021's rules for keeping PPO-EWMA's learning curve, per interaction, close to
unchanged by the batch size while the batch is small against ``B_noise`` (not verified
here; a longer rollout also changes where GAE is truncated).
"""

from __future__ import annotations

import math
from typing import Any

import torch

SCHEDULES = ("constant", "power_law", "greedy")


class GradientNoiseScale:
    """``B_simple = tr(Sigma) / |G|^2`` from the minibatch gradients of one update epoch.

    Within one epoch the minibatches are disjoint and cover the batch, so their mean is the
    batch gradient. With ``b`` the minibatch size and ``B`` the batch:
    ``|G|^2 ~ (B |G_B|^2 - b E|g_b|^2) / (B - b)`` and
    ``tr(Sigma) ~ (E|g_b|^2 - |G_B|^2) / (1/b - 1/B)`` (McCandlish et al. 2018, App. A),
    both smoothed by a bias-corrected EWMA over updates (``decay``) before the ratio, as
    the paper advises. The minibatch gradients are taken at successive parameters, not one
    point: an approximation that grows with the learning rate.
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.g2 = self.trace = self.weight = 0.0
        self._sum: list[torch.Tensor] | None = None
        self._sq_norms: list[torch.Tensor] = []

    def add_minibatch(self, params: list[torch.nn.Parameter]) -> None:
        """Record the current gradients (call after ``backward``, before clipping)."""
        grads = [p.grad for p in params if p.grad is not None]
        if self._sum is None:
            self._sum = [g.detach().clone() for g in grads]
        else:
            torch._foreach_add_(self._sum, grads)
        self._sq_norms.append(torch.stack(torch._foreach_norm(grads)).square().sum())

    def end_epoch(self, minibatch_size: int) -> None:
        """Fold the epoch's minibatch gradients into the smoothed estimates."""
        if self._sum is None or len(self._sq_norms) < 2:
            self._sum, self._sq_norms = None, []
            return
        m = len(self._sq_norms)
        b, big = float(minibatch_size), float(minibatch_size * m)
        small_sq = float(torch.stack(self._sq_norms).mean())
        big_sq = float(torch.stack(torch._foreach_norm(self._sum)).square().sum()) / m**2
        g2 = (big * big_sq - b * small_sq) / (big - b)
        trace = (small_sq - big_sq) / (1 / b - 1 / big)
        self.g2 = self.decay * self.g2 + (1 - self.decay) * g2
        self.trace = self.decay * self.trace + (1 - self.decay) * trace
        self.weight = self.decay * self.weight + (1 - self.decay)
        self._sum, self._sq_norms = None, []

    @property
    def value(self) -> float:
        """The smoothed ``B_simple`` (inf before any measurement or when |G|^2 <= 0)."""
        if self.weight == 0.0 or self.g2 <= 0:
            return math.inf
        return self.trace / self.g2  # the EWMA's bias correction cancels in the ratio

    def state_dict(self) -> dict[str, float]:
        return {"g2": self.g2, "trace": self.trace, "weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.g2, self.trace, self.weight = (float(state[k]) for k in ("g2", "trace", "weight"))


class BatchSchedule:
    """The rollout length per iteration under a schedule (see the module docstring).

    ``update(env_steps, iteration)`` returns the factor by which the batch changed (1 when
    it did not); ``num_steps`` is the rollout length to collect next.
    """

    def __init__(self, kind: str, *, num_envs: int, num_steps: int, batch_max: int | None = None,
                 power: float = 0.5, e0: int | None = None, check_every: int = 4,
                 noise: GradientNoiseScale | None = None, num_minibatches: int = 1) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"batch schedule {kind!r} is not one of {', '.join(SCHEDULES)}")
        self.kind, self.num_envs, self.base_steps = kind, num_envs, num_steps
        self.batch_min = num_envs * num_steps
        self.batch_max = batch_max or 16 * self.batch_min
        if self.batch_max < self.batch_min:
            raise ValueError(f"batch_max={self.batch_max} is below the first batch "
                             f"{self.batch_min} (env.num_envs x algo.num_steps)")
        self.power, self.check_every = power, max(1, check_every)
        self.e0 = e0 or 32 * self.batch_min
        self.noise = noise if noise is not None else GradientNoiseScale()
        self.num_minibatches = num_minibatches
        self.doublings = 0

    @property
    def num_steps(self) -> int:
        return self.base_steps * 2**self.doublings

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    def _max_doublings(self) -> int:
        return int(math.floor(math.log2(self.batch_max / self.batch_min) + 1e-9))

    def update(self, env_steps: int, iteration: int) -> int:
        """Move along the ladder after an iteration; return ``new batch / old batch``."""
        before = self.doublings
        if self.kind == "power_law":
            target = self.batch_min * max(1.0, env_steps / self.e0) ** self.power
            self.doublings = max(self.doublings, int(math.floor(
                math.log2(target / self.batch_min) + 1e-9)))
        elif self.kind == "greedy" and iteration % self.check_every == 0:
            minibatch = self.batch_size // self.num_minibatches
            noise = self.noise.value  # inf: not measured (yet), or |G|^2 estimated <= 0
            if math.isfinite(noise) and noise >= 2 * minibatch:
                self.doublings += 1
        self.doublings = min(self.doublings, self._max_doublings())
        return 2 ** (self.doublings - before)

    def state_dict(self) -> dict[str, Any]:
        return {"doublings": self.doublings, "noise": self.noise.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.doublings = min(int(state["doublings"]), self._max_doublings())
        self.noise.load_state_dict(state["noise"])
