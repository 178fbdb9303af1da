"""Grouped networks: many small networks run as one batched matmul per layer.

A value-based study is hundreds of small runs, so SAC runs the twin critics of a seed, and the
networks of K seeds trained in one process (``seeds_per_process``), as *groups* of one module:
every weight has a leading group dimension G and a layer is one ``torch.baddbmm`` over
(G, batch, features). Group g's numbers never mix with another group's: a seed trained with
K-1 others computes exactly (bit for bit on CPU, tests/test_sac.py) what it computes alone.

- :class:`GroupedLinear`, :class:`GroupedLayerNorm`: the layers (the FLOP accountant counts
  ``matmul_flops``; layer norm is free by the usual convention).
- :class:`GroupedMLP` and :class:`GroupedBRO` (Nauman et al. 2024: a dense layer, then
  residual blocks ``x + LN(W2 relu(LN(W1 x)))``): the trunks.
- :func:`stack_seeds`: turns K per-seed modules (each built by ``ctx.network`` from its own
  run's generator, registered with its own run's FLOP accountant) into one module over all
  seeds whose parameters *own* the storage; each per-seed module's parameters become views
  into it, so ``state_dict``/``load_state_dict`` of a per-seed module read and write that
  seed's slice (and its checkpoint holds only that slice).
- :class:`SeedOptimizerState`: the same per-seed view of an optimizer over stacked weights
  (Adam and AdamW are elementwise, so a slice of their state is exactly the state the seed
  would have alone).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupedLinear(nn.Module):
    """G independent ``nn.Linear(in_features, out_features)``: (G, B, in) -> (G, B, out).

    Initialised as ``nn.Linear`` is (uniform in +-1/sqrt(in_features)), group by group.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def matmul_flops(self, args: tuple, out: Tensor) -> int:
        rows = args[0].numel() // self.in_features  # G * B
        return 2 * rows * self.in_features * self.out_features

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in={self.in_features}, out={self.out_features}"


class GroupedLayerNorm(nn.Module):
    """Layer norm over the last dim with a per-group affine: (G, B, F) -> (G, B, F)."""

    matmul_free = True  # elementwise: 0 FLOPs by the accountant's convention

    def __init__(self, groups: int, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.features, self.eps = features, eps
        self.weight = nn.Parameter(torch.ones(groups, 1, features))
        self.bias = nn.Parameter(torch.zeros(groups, 1, features))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, (self.features,), eps=self.eps),
                             self.weight)


class GroupedMLP(nn.Module):
    """``depth`` hidden layers of ``width`` with ReLU, then a linear output, per group."""

    def __init__(self, groups: int, in_features: int, width: int, depth: int,
                 out_features: int) -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.hidden = nn.ModuleList(GroupedLinear(groups, a, b)
                                    for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = GroupedLinear(groups, sizes[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)


class GroupedBRO(nn.Module):
    """The BRO trunk (Nauman et al. 2024): ``relu(LN(W0 x))``, then ``blocks`` residual
    blocks ``x + LN(W2 relu(LN(W1 x)))`` of ``width``, then a linear output, per group."""

    def __init__(self, groups: int, in_features: int, width: int, blocks: int,
                 out_features: int) -> None:
        super().__init__()
        self.inp = GroupedLinear(groups, in_features, width)
        self.inp_norm = GroupedLayerNorm(groups, width)
        self.blocks = nn.ModuleList(
            nn.ModuleList([GroupedLinear(groups, width, width), GroupedLayerNorm(groups, width),
                           GroupedLinear(groups, width, width), GroupedLayerNorm(groups, width)])
            for _ in range(blocks))
        self.out = GroupedLinear(groups, width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.inp_norm(self.inp(x)))
        for lin1, norm1, lin2, norm2 in self.blocks:
            x = x + norm2(lin2(F.relu(norm1(lin1(x)))))
        return self.out(x)


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every grouped layer of ``module`` in place (from torch's global
    generator: call it inside ``torch.random.fork_rng`` with the run's state loaded)."""
    for m in module.modules():
        if isinstance(m, (GroupedLinear, GroupedLayerNorm)):
            m.reset_parameters()


def _set_param(root: nn.Module, name: str, value: nn.Parameter) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    setattr(owner, leaf, value)


def _clone_state(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    # a per-seed parameter is a view into the stacked one: save its slice, not the storage
    for key, value in state.items():
        if key.startswith(prefix) and isinstance(value, Tensor):
            state[key] = value.clone()


def stack_seeds(modules: Sequence[nn.Module]) -> nn.Module:
    """One module over the seeds of ``modules`` (same class and shapes, grouped layers whose
    group dim is seed-major); the per-seed modules' parameters become views into it.

    Every parameter must have the group dim first (``GroupedLinear``, ``GroupedLayerNorm``,
    or any parameter whose dim 0 counts groups). The stacked module gets ``seeds = K``.
    """
    if not modules:
        raise ValueError("stack_seeds needs at least one module")
    stacked = copy.deepcopy(modules[0])
    per_seed = [dict(m.named_parameters()) for m in modules]
    for name, _ in list(stacked.named_parameters()):
        parts = [p[name] for p in per_seed]
        whole = nn.Parameter(torch.cat([p.detach() for p in parts], dim=0))
        _set_param(stacked, name, whole)
        size = parts[0].shape[0]
        for k, part in enumerate(parts):
            part.data = whole.data[k * size:(k + 1) * size]
    for m in stacked.modules():
        if isinstance(m, GroupedLinear | GroupedLayerNorm) and hasattr(m, "groups"):
            m.groups = m.weight.shape[0]
    for m in modules:
        if not getattr(m, "_seed_view", False):
            m.register_state_dict_post_hook(_clone_state)
            m._seed_view = True
    stacked.seeds = len(modules) * getattr(modules[0], "seeds", 1)
    return stacked


class SeedOptimizerState:
    """The state of one seed inside an optimizer over stacked parameters, as an object with
    ``state_dict``/``load_state_dict`` for that seed's checkpoint.

    Tensors of the optimizer state whose dim 0 is the parameter's group dim are sliced to
    the seed's rows; scalars (Adam's ``step``) are shared by the seeds (they update in lock
    step). The format is the same for K = 1, so a record resumes with any K.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, seed_index: int, seeds: int) -> None:
        self.optimizer, self.seed_index, self.seeds = optimizer, seed_index, seeds

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _rows(self, param: Tensor) -> slice:
        size = param.shape[0] // self.seeds
        return slice(self.seed_index * size, (self.seed_index + 1) * size)

    def state_dict(self) -> dict[str, Any]:
        out = []
        for p in self._params():
            state = self.optimizer.state.get(p, {})
            out.append({k: (v[self._rows(p)].clone()
                            if isinstance(v, Tensor) and v.dim() > 0 and v.shape == p.shape
                            else (v.clone() if isinstance(v, Tensor) else v))
                        for k, v in state.items()})
        return {"state": out, "lr": [g["lr"] for g in self.optimizer.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self._params()
        if len(state["state"]) != len(params):
            raise ValueError(f"optimizer state for {len(state['state'])} tensors, "
                             f"this optimizer has {len(params)}")
        for p, saved in zip(params, state["state"], strict=True):
            mine = self.optimizer.state[p]
            for key, value in saved.items():
                if isinstance(value, Tensor) and value.dim() > 0:
                    if key not in mine:
                        mine[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    rows = mine[key][self._rows(p)]
                    if rows.shape != value.shape:
                        raise ValueError(f"optimizer state {key}: shape {tuple(value.shape)} "
                                         f"!= {tuple(rows.shape)}")
                    rows.copy_(value)
                else:  # shared scalar (e.g. Adam's step): every seed saved the same value
                    mine[key] = value.clone() if isinstance(value, Tensor) else value
