"""Algorithms, shared blocks and the scalable model families. Nothing here knows about Hydra.

Importing this package registers every built-in algorithm and model family with
``rl_scaling.registry`` (each module ends with its one registration line).
"""

from __future__ import annotations

from agents import (  # noqa: F401  (registration)
    bc,
    collect,
    impala,
    models,
    nethack_net,
    ppg,
    ppo,
    sac,
    vmpo,
)
