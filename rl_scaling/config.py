"""Structured config schema.

Every config group option in ``configs/`` starts from one of these dataclasses
(``defaults: [<name>_schema, _self_]``), so Hydra validates types and a misspelt
or unknown key fails with an error naming it. Builders in ``agents/`` and
``envs/`` never see these classes: :mod:`rl_scaling.run` turns them into plain
keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class PPOConfig:
    """PPO hyperparameters; defaults are the standard Procgen PPO recipe."""

    name: str = "ppo"
    total_steps: int = 25_000_000  # environment interactions E for the whole run
    num_steps: int = 256  # rollout length per env
    num_epochs: int = 3
    num_minibatches: int = 8
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    lr: float = 5e-4  # base learning rate at width 1
    lr_width_rule: bool = True  # lr = lr * width^-1/2 (Hilton et al. 2023)
    anneal_lr: bool = False
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    norm_reward: bool = True
    eval_interval: int = 0  # iterations between held-out evaluations (0: never)
    eval_episodes: int = 64


@dataclass
class ProcgenEnvConfig:
    family: str = "procgen"
    id: str = "coinrun"
    num_envs: int = 64
    distribution_mode: str = "easy"  # easy | hard
    num_levels: int = 200  # training levels (0: unbounded)
    start_level: int = 0
    # Held-out evaluation levels [eval_start_level, eval_start_level + eval_num_levels).
    # 0: the unbounded level distribution (eval_start_level unused), which is held out only
    # when training uses a bounded set (env.num_levels > 0).
    eval_num_levels: int = 0
    eval_start_level: int = 100_000  # far from training levels 0..num_levels-1
    eval_num_envs: int = 64


@dataclass
class MnistEnvConfig:
    family: str = "mnist"
    id: str = "mnist"
    num_envs: int = 64
    data_path: str | None = None  # directory with the MNIST IDX files; None: sklearn digits


@dataclass
class ProbeEnvConfig:
    family: str = "probe"
    id: str = "constant_value"
    num_envs: int = 8


@dataclass
class ModelConfig:
    family: str = "impala_cnn"  # impala_cnn | mnist_cnn | mlp
    width: float = 1.0  # multiplier on channels/units; 1.0 = the paper's default
    depth: int | None = None  # blocks per stage / hidden layers; None: the family's default


@dataclass
class LoggerConfig:
    backend: str = "local"  # local | wandb (local files are always written)
    progress: str = "auto"  # auto | bar | plain | none
    log_interval: int = 1  # iterations between metric lines
    project: str = "rl-scaling"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    algo: Any = MISSING
    env: Any = MISSING
    model: Any = MISSING
    logger: Any = MISSING
    experiment: str = "default"
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: leave torch's default
    checkpoint_interval: int = 10  # iterations between checkpoints (0: only at the end)
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    keep_freed_memory: bool = True  # glibc: reuse freed host memory (rl_scaling/hostmem.py)


def register_configs() -> None:
    """Register the schemas Hydra validates every config file against."""
    from hydra.core.config_store import ConfigStore  # only the entry point needs Hydra

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="algo", name="ppo_schema", node=PPOConfig)
    cs.store(group="env", name="procgen_schema", node=ProcgenEnvConfig)
    cs.store(group="env", name="mnist_schema", node=MnistEnvConfig)
    cs.store(group="env", name="probe_schema", node=ProbeEnvConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
