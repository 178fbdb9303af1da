"""Algorithms and scalable model families. Nothing here knows about Hydra."""

from __future__ import annotations

from typing import Any


def _ppo(*args: Any, **kwargs: Any) -> str:
    from agents.ppo import train

    return train(*args, **kwargs)


# name -> train(cfg, envs, model, ctx, eval_envs=None) -> final status
ALGOS = {"ppo": _ppo}
