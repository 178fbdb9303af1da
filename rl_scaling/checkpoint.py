"""Atomic checkpoints with clear errors for corrupt or incompatible files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 2  # 1: one "model" entry; 2: named objects (ctx.restore)
LATEST = "latest.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another run shape."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temp file in the same directory and a rename.

    A kill during the write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file if it is corrupt, of another
    format version, or lacks one of the ``required`` keys.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a bad file
        raise CheckpointError(
            f"corrupt checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"incompatible checkpoint {path}: format {found!r}, expected {CHECKPOINT_FORMAT}"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"incompatible checkpoint {path}: missing {missing}")
    return state


def load_module_state(module: torch.nn.Module, state_dict: dict, path: str | os.PathLike) -> None:
    """``module.load_state_dict`` with a one-line error when shapes or keys differ."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).replace("\n", " ")[:300]
        raise CheckpointError(
            f"incompatible checkpoint {path}: model does not match ({first})"
        ) from err
