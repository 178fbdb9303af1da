"""The one FLOP accountant.

Conventions (as in the scaling studies): 2 FLOPs per multiply-add; only matmul-like
work is counted (conv, dense, recurrent and attention cores; no bias, activation,
pooling or normalisation), the same as ``torch.utils.flop_counter.FlopCounterMode``;
backward = 2 x forward. "Effective" FLOPs count only the modules inside
``model.scaled_modules()`` (see agents/models.py and docs/models_and_flops.md).

Per-layer counts are derived from the model itself: one dummy forward with hooks on
the modules reads the real input/output shapes, then

- conv:      2 * prod(out_spatial) * C_out * prod(k) * C_in / groups
- linear:    2 * in * out per row
- LSTM/GRU/RNN (and the *Cell variants), per time step and layer and direction:
             2 * gates * hidden * (in + hidden) (+ 2 * hidden * proj for LSTM proj_size)
- nn.MultiheadAttention: q/k/v and output projections + QK^T + AV
- F.scaled_dot_product_attention called directly by a module: QK^T + AV
- any module with a ``matmul_flops(args, out) -> int`` method (e.g. the grouped layers of
  agents/ensemble.py, which run several networks' weights in one batched matmul): that
  number, for the whole call

Algorithms then add what they really run through :class:`FlopAccountant`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode

from rl_scaling.observations import batch_size

__all__ = [
    "FlopAccountant",
    "RoleFlops",
    "flops_6nd",
    "flops_8nd",
    "flops_by_module",
    "flops_sac",
    "forward_flops",
]


# ---------------------------------------------------------------------------
# Per-module formulas (FLOPs of one call, whole batch)
# ---------------------------------------------------------------------------

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RNN = (nn.RNN, nn.LSTM, nn.GRU)
_CELL = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)
_COUNTED = (*_CONV, *_CONV_T, nn.Linear, *_RNN, *_CELL, nn.MultiheadAttention)
# Modules with parameters whose work is elementwise or a lookup: 0 FLOPs by convention.
_FREE = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.PReLU,
)


def _gates(module: nn.Module) -> int:
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return 4
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return 3
    return 1


def _conv_flops(module: nn.Module, x: Tensor, out: Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    per_position = 2 * module.out_channels * kernel * (module.in_channels // module.groups)
    # A transposed conv does its multiply-adds once per *input* position.
    positions = x if isinstance(module, _CONV_T) else out
    spatial = module.weight.dim() - 2
    return per_position * positions.numel() // positions.shape[-spatial - 1]


def _rnn_flops(module: nn.RNNBase, x: Tensor | PackedSequence) -> int:
    data = x.data if isinstance(x, PackedSequence) else x
    steps = data.numel() // module.input_size  # time steps x batch (padding included)
    gates, hidden = _gates(module), module.hidden_size
    proj = getattr(module, "proj_size", 0)
    out_size = proj if proj > 0 else hidden  # what is fed back and passed up
    directions = 2 if module.bidirectional else 1
    per_step = 0
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else out_size * directions
        layer_flops = 2 * gates * hidden * (in_size + out_size)
        if proj > 0:
            layer_flops += 2 * hidden * proj
        per_step += directions * layer_flops
    return steps * per_step


def _cell_flops(module: nn.Module, x: Tensor) -> int:
    rows = x.numel() // module.input_size
    hidden = module.hidden_size
    return rows * 2 * _gates(module) * hidden * (module.input_size + hidden)


def _mha_flops(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> int:
    names = ("query", "key", "value")
    query, key, value = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))
    embed = module.embed_dim
    # Unbatched (L, E) or batched (L, N, E) / (N, L, E): only rows matter for projections.
    q_rows = query.numel() // query.shape[-1]
    k_rows = key.numel() // key.shape[-1]
    v_rows = value.numel() // value.shape[-1]
    flops = 2 * embed * (q_rows * query.shape[-1] + k_rows * key.shape[-1])
    flops += 2 * embed * v_rows * value.shape[-1]
    flops += 2 * q_rows * embed * embed  # output projection
    # Attention core: per batch element, QK^T and AV each 2 * L * S * embed (all heads).
    batch = 1 if query.dim() == 2 else query.shape[1 if not module.batch_first else 0]
    tgt_len = q_rows // batch
    src_len = k_rows // batch + int(module.bias_k is not None) + int(module.add_zero_attn)
    flops += 2 * 2 * batch * tgt_len * src_len * embed
    return flops


def _sdpa_flops(query: Tensor, key: Tensor, value: Tensor) -> int:
    # (..., L, E) x (..., S, E)^T -> (..., L, S); (..., L, S) x (..., S, Ev) -> (..., L, Ev)
    rows = query.numel() // query.shape[-1]  # batch x heads x L
    src_len = key.shape[-2]
    return 2 * rows * src_len * (query.shape[-1] + value.shape[-1])


def _is_counted(module: nn.Module) -> bool:
    return isinstance(module, _COUNTED) or callable(getattr(module, "matmul_flops", None))


def _module_flops(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> int:
    own = getattr(module, "matmul_flops", None)
    if callable(own):
        return int(own(args, out))
    if isinstance(module, (*_CONV, *_CONV_T)):
        return _conv_flops(module, args[0], out)
    if isinstance(module, nn.Linear):
        x = args[0]
        return 2 * (x.numel() // module.in_features) * module.in_features * module.out_features
    if isinstance(module, _RNN):
        return _rnn_flops(module, args[0])
    if isinstance(module, _CELL):
        return _cell_flops(module, args[0])
    if isinstance(module, nn.MultiheadAttention):
        return _mha_flops(module, args, kwargs)
    raise AssertionError(f"no formula for {type(module).__name__}")


# ---------------------------------------------------------------------------
# Counting pass
# ---------------------------------------------------------------------------


class _SDPARecorder(TorchFunctionMode):
    """Sees F.scaled_dot_product_attention calls made by custom attention modules."""

    def __init__(self, on_call):
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            names = ("query", "key", "value")
            self.on_call(*(args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names)))
        return func(*args, **kwargs)


def _count(model: nn.Module, example_obs: Tensor) -> list[tuple[str, nn.Module, int]]:
    """One dummy forward; returns (module name, module, FLOPs) per counted call."""
    names = {m: name or "<root>" for name, m in model.named_modules()}
    records: list[tuple[str, nn.Module, int]] = []
    stack: list[nn.Module] = []

    def inside_counted() -> bool:
        # Work inside a module we count by formula (e.g. MHA's own linears/SDPA) is
        # already in that formula.
        return any(_is_counted(m) for m in stack[:-1])

    def pre_hook(module, args, kwargs):
        stack.append(module)

    def post_hook(module, args, kwargs, out):
        if _is_counted(module) and not inside_counted():
            records.append((names[module], module, _module_flops(module, args, kwargs, out)))
        stack.pop()

    def on_sdpa(query, key, value):
        if stack and not any(_is_counted(m) for m in stack):
            records.append((names[stack[-1]], stack[-1], _sdpa_flops(query, key, value)))

    uncounted = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if next(m.parameters(recurse=False), None) is not None
            and not _is_counted(m)
            and not isinstance(m, _FREE)
            and not getattr(m, "matmul_free", False)
        }
    )
    if uncounted:
        warnings.warn(
            f"forward_flops: no FLOP formula for modules with their own parameters "
            f"{uncounted}; their work is counted as 0",
            stacklevel=3,
        )

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(post_hook, with_kwargs=True))
    # eval(): no BatchNorm statistics updates from the dummy forward (restored below).
    # No fast path: the fused MHA/Transformer kernels would skip the submodule hooks.
    training = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), _SDPARecorder(on_sdpa):
            model(*example_obs) if isinstance(example_obs, tuple) else model(example_obs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, mode in training.items():
            m.training = mode
        for h in handles:
            h.remove()
    return records


def _effective_ids(model: nn.Module) -> set[int]:
    if not hasattr(model, "scaled_modules"):
        raise TypeError(
            f"{type(model).__name__} has no scaled_modules(), so effective FLOPs are "
            "undefined; pass effective=False to count every module"
        )
    return {id(m) for root in model.scaled_modules() for m in root.modules()}


def _batch(example_obs: Tensor | tuple[Tensor, ...], n_samples: int | None) -> int:
    first = example_obs[0] if isinstance(example_obs, tuple) else example_obs
    n = batch_size(first) if n_samples is None else n_samples
    if n < 1:
        raise ValueError(f"example_obs must hold at least one sample, got {n}")
    return n


def forward_flops(
    model: nn.Module,
    example_obs: Tensor,
    *,
    effective: bool = True,
    n_samples: int | None = None,
) -> int:
    """FLOPs of one forward pass per sample.

    Runs one dummy forward of ``example_obs`` (batch dim first, 1 or more samples; on
    the model's device and in the dtype the env produces; a tuple is passed as several
    arguments, e.g. a critic's ``(obs, action)``) and divides by the batch.
    ``effective=True`` counts only modules inside ``model.scaled_modules()``;
    ``effective=False`` counts every module. ``n_samples`` overrides the divisor, e.g.
    ``T * B`` for a sequence model fed a (T, B, ...) batch.

    Counting uses module hooks: call it on the eager model (before ``torch.compile``),
    and submodules must be called as ``module(x)``, not ``module.forward(x)``.
    """
    records = _count(model, example_obs)
    keep = _effective_ids(model) if effective else None
    total = sum(f for _, m, f in records if keep is None or id(m) in keep)
    return total // _batch(example_obs, n_samples)


def flops_by_module(
    model: nn.Module, example_obs: Tensor, *, n_samples: int | None = None
) -> dict[str, int]:
    """Per-sample forward FLOPs of every counted module, by qualified name (for
    debugging and docs; a module called several times is summed)."""
    out: dict[str, int] = {}
    for name, _, f in _count(model, example_obs):
        out[name] = out.get(name, 0) + f
    n = _batch(example_obs, n_samples)
    return {name: f // n for name, f in out.items()}


# ---------------------------------------------------------------------------
# Accountant
# ---------------------------------------------------------------------------


@dataclass
class RoleFlops:
    """FLOPs of one forward pass per sample of one network role, and what it has spent."""

    forward_total: int  # every counted module
    forward_effective: int  # the scaled modules only
    effective: bool  # the role is part of the study's N
    spent: float = 0.0  # total FLOPs run so far (every module), for the per-role log


class FlopAccountant:
    """Running FLOP totals, keyed by network role (``policy``, ``critic``, ...).

    Register each network once (:meth:`register`, with its per-sample forward FLOPs from
    :func:`forward_flops`), then count what the algorithm really runs: ``add_forward`` for
    every forward without a backward (acting, target networks, V-trace...) and
    ``add_forward_backward`` for learner passes (backward = 2 x forward).

    ``total`` is the run's effective training FLOPs (the ``flops`` counter): the scaled
    modules of the effective roles. ``by_role()`` is every module of every role.
    """

    def __init__(self) -> None:
        self.roles: dict[str, RoleFlops] = {}
        self.total = 0.0

    def register(self, role: str, *, forward_total: int, forward_effective: int,
                 effective: bool = True) -> None:
        if role in self.roles:
            raise ValueError(f"network role {role!r} is registered twice")
        self.roles[role] = RoleFlops(int(forward_total), int(forward_effective), effective)

    def _role(self, role: str) -> RoleFlops:
        try:
            return self.roles[role]
        except KeyError:
            raise KeyError(f"no network registered under role {role!r}; registered: "
                           f"{sorted(self.roles)}") from None

    def add_forward(self, role: str, n_samples: float, passes: int = 1) -> float:
        """Count ``passes`` forward passes of ``role`` over ``n_samples``; returns the
        effective FLOPs added."""
        r = self._role(role)
        r.spent += float(r.forward_total) * n_samples * passes
        added = float(r.forward_effective) * n_samples * passes if r.effective else 0.0
        self.total += added
        return added

    def add_forward_backward(self, role: str, n_samples: float, passes: int = 1) -> float:
        """Count ``passes`` forward+backward passes (3 x forward) of ``role``."""
        return self.add_forward(role, n_samples, 3 * passes)

    def by_role(self) -> dict[str, float]:
        """FLOPs run so far per role, every module counted."""
        return {role: r.spent for role, r in self.roles.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"total": float(self.total),
                "roles": {k: {"forward_total": r.forward_total,
                              "forward_effective": r.forward_effective,
                              "effective": r.effective, "spent": r.spent}
                          for k, r in self.roles.items()}}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` if ``state`` was counted for other networks: a resumed run
        must keep its networks, or the FLOP axis of its curve would change units part-way."""
        saved = state.get("roles")
        if not isinstance(saved, dict):
            raise ValueError("checkpoint has no per-role FLOP counts (written by an older "
                             "version); start this run in a new directory")
        if set(saved) != set(self.roles):
            raise ValueError(f"checkpoint counted FLOPs for roles {sorted(saved)} but this run "
                             f"builds {sorted(self.roles)}")
        for role, r in self.roles.items():
            s = saved[role]
            if (int(s["forward_total"]), int(s["forward_effective"]), bool(s["effective"])) != (
                    r.forward_total, r.forward_effective, r.effective):
                raise ValueError(
                    f"checkpoint was counted with {s['forward_effective']} effective FLOPs per "
                    f"forward for role {role!r} but this network has {r.forward_effective}; "
                    "was the model config changed?")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.total = float(state["total"])
        for role, s in state["roles"].items():
            self.roles[role].spent = float(s["spent"])


# ---------------------------------------------------------------------------
# The papers' own conventions (for comparison with published numbers)
# ---------------------------------------------------------------------------


def flops_6nd(n_params: float, n_samples: float) -> float:
    """6ND: supervised/BC training compute (Kaplan et al.; Tuyls et al. 2024 for BC).

    2ND forward + 4ND backward over ``n_samples`` training samples (tokens/frames).
    """
    return 6.0 * n_params * n_samples


def flops_8nd(n_params: float, n_samples: float) -> float:
    """8ND: IMPALA RL compute in Tuyls et al. 2024: an acting forward (2ND) on top of
    the learner's forward+backward (6ND) for every sample."""
    return 8.0 * n_params * n_samples


def flops_sac(n_params: float, batch_size: float, utd: float, data: float) -> float:
    """C = 10 * N * B * sigma * D (Rybkin et al. 2025): SAC/BRO training compute for a
    model of ``n_params`` at batch size B, update-to-data ratio sigma, and D env steps."""
    return 10.0 * n_params * batch_size * utd * data
