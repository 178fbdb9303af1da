"""The spine's config schema: the root of the tree, the run budget, cadence and the logger.

Algorithms, env families and model families own their own schemas and register them
(:mod:`rl_scaling.registry`); the root leaves ``algo``, ``env`` and ``model`` open, and each
group option is validated against the schema its owner registered (a misspelt or unknown
key fails with an error naming it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rl_scaling.speed import SpeedConfig

# Counters a budget or an interval may be given in (seconds only for intervals).
BUDGET_COUNTERS = ("env_steps", "samples", "updates", "flops")
INTERVAL_UNITS = ("env_steps", "samples", "updates", "seconds")


@dataclass
class BudgetConfig:
    """When a run is done: ``counter`` (env_steps | samples | updates | flops) reaches
    ``value``. Raising ``value`` and relaunching extends a finished run from its checkpoint."""

    counter: str = "env_steps"
    value: float = 65_536


@dataclass
class LoggerConfig:
    backend: str = "local"  # local | wandb (local files are always written)
    progress: str = "auto"  # auto | bar | plain | none
    project: str = "rl-scaling"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    algo: Any = MISSING
    env: Any = None  # `~env` for a run without envs (e.g. trained on a dataset)
    model: Any = None  # `~model` for an algorithm that builds its own networks
    logger: Any = MISSING
    experiment: str = "default"
    # What the experiment studies, read by analysis/ and sweeps/ instead of guessing:
    # {kind: scaling|isoflop|utd|generalization|curves, axes: {role: config key},
    #  metric: name or null}; checked by rl_scaling.record.check_study (a plain mapping
    # here, so `study={kind:curves,...}` works on the command line).
    study: Any = None
    seed: int = 1
    # A label that is part of a multirun job's directory name and nothing else: a planner
    # sets it where two runs differ only in a resumable key (an isoFLOP plan's runs of one
    # size at several budgets: `tag=C1e+15`), so each gets its own record.
    tag: str | None = None
    # Train the seeds seed .. seed+K-1 in this one process, in lock step, each into its own
    # run record (the algorithm must register train_many). Not part of a run's
    # identity: a record written with K=4 resumes with K=1 and vice versa.
    seeds_per_process: int = 1
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # How fast, never what is learned: precision, compiled learner, CUDA graphs, overlapped
    # env stepping (rl_scaling/speed.py, docs/speed.md); resumable
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    # Cadence, as "<number> <unit>" with unit env_steps | samples | updates | seconds.
    # A line/evaluation/checkpoint is written at the end of the first iteration at or past
    # each multiple; the last iteration always logs and checkpoints.
    log_every: str | None = None  # null: every iteration
    eval_every: str | None = None  # null: never (held-out split from env.eval)
    eval_episodes: int = 64
    checkpoint_every: str | None = "600 seconds"  # null: only at the end and on a signal
    # FLOP budgets at which to keep a snapshot (checkpoints/flops=<C>.pt) and log a line with
    # `snapshot_flops` (and evaluate, if eval_every is set): one run of a size then fills
    # every isoFLOP point below its budget (sweeps/isoflop.py --snapshots).
    snapshot_flops: list[float] | None = None
    # Roles whose networks form the study's N (their scaled parts are the effective FLOPs
    # and parameters); null: every role the algorithm builds as effective.
    effective_roles: list[str] | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: leave torch's default
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    keep_freed_memory: bool = True  # glibc: reuse freed host memory (rl_scaling/hostmem.py)


def register_configs() -> None:
    """Register the root schemas and every plugin's schemas with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore  # only the entry point needs Hydra

    from rl_scaling.registry import load_plugins

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    load_plugins()
