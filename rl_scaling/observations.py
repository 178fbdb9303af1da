"""Observations that are one array or a dict of named arrays (a game's map, status line and
message, ...), handled the same way: the few tree operations a learner needs, in one place.

An env with a ``gymnasium.spaces.Dict`` observation space returns ``{key: (num_envs, ...)}``
from ``reset``/``step``; buffers then hold ``{key: (T, B, ...)}`` and a model's forward takes
the dict. Everything here passes a plain array or tensor straight through, so code written
with these helpers runs unchanged on Box observations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch

Obs = Any  # a Tensor / ndarray, or a dict of them keyed like the observation space


def map_obs(fn: Callable[..., Any], *trees: Obs) -> Obs:
    """``fn`` applied leaf by leaf to one or more observations of the same structure."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: fn(*(tree[key] for tree in trees)) for key in first}
    return fn(*trees)


def leaves(tree: Obs) -> list[Any]:
    """The arrays of an observation, in key order (one for a plain array)."""
    return list(tree.values()) if isinstance(tree, dict) else [tree]


def to_tensor(obs: Obs, device: torch.device | str | None = None) -> Obs:
    """Numpy observation(s) as tensors on ``device`` (shares memory on the CPU)."""
    return map_obs(lambda a: torch.as_tensor(a, device=device), obs)


def space_dtype(space: gymnasium.spaces.Box) -> torch.dtype:
    """The torch dtype of a Box space's arrays."""
    return torch.from_numpy(np.zeros(0, space.dtype)).dtype


def zeros_like_space(space: gymnasium.Space, leading: tuple[int, ...],
                     device: torch.device | str | None = None, shared: bool = False) -> Obs:
    """Zero tensors shaped ``(*leading, *shape)`` for every array of ``space`` (a Box, or a
    Dict of Boxes), in the env's dtypes; ``shared``: in shared memory (for actor processes)."""
    if isinstance(space, gymnasium.spaces.Dict):
        return {key: zeros_like_space(sub, leading, device, shared)
                for key, sub in space.spaces.items()}
    if not isinstance(space, gymnasium.spaces.Box):
        raise TypeError(f"observation space must be a Box or a Dict of Boxes, got {space}")
    out = torch.zeros((*leading, *space.shape), dtype=space_dtype(space), device=device)
    return out.share_memory_() if shared else out


def batch_size(obs: Obs, dim: int = 0) -> int:
    """The size of dimension ``dim`` (shared by every array of the observation)."""
    return int(leaves(obs)[0].shape[dim])


def write(dst: Obs, index: Any, src: Obs) -> None:
    """``dst[index] = src`` for every array of the observation (in place)."""
    if isinstance(dst, dict):
        for key, value in dst.items():
            value[index] = src[key]
    else:
        dst[index] = src


def select(obs: Obs, index: Any) -> Obs:
    """``obs[index]`` for every array of the observation (views where indexing gives one)."""
    return map_obs(lambda a: a[index], obs)
