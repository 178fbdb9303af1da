"""Roll an expert out into a sharded on-disk dataset (``algo=collect``).

The expert is any run directory of this framework whose network acts on the run's envs (an
Atari PPO expert from ``+experiment=atari_expert``, a CartPole PPO for the CPU tests): its
``config.yaml`` says how to rebuild the network, ``checkpoints/latest.pt`` holds the weights
(:func:`load_expert`). Each iteration steps every env ``steps_per_iteration`` times with the
expert's actions (sampled from its policy; ``deterministic: true`` takes the arg max) and
keeps each env's episode in progress in memory; an episode that ends is written whole to
the dataset (``agents/shards.py``): ``obs``, ``action``, ``reward`` per step (the env's reward:
``atari_collect`` turns Atari's reward clipping off, so it is the game score), its return in
the episode table. Each finished episode goes to the held-out split ``val`` with probability
``val_fraction`` (the run's generator decides, so splits are whole trajectories), else to
``train``. At the end of every iteration the dataset is committed before the run context
checkpoints.

Resume: the checkpoint holds the dataset's committed counts; a resumed collection first rolls
the dataset back to them (anything written after the checkpoint is dropped) and starts fresh
episodes from a new env seed, so an interruption neither duplicates nor loses a trajectory
(the episodes in progress at the interruption are dropped, never written half). The budget is
``env_steps`` (every step taken, including the dropped ones); ``samples`` is what the dataset
holds.

The expert's forwards are not the study's compute (``ctx.flops`` stays 0); the log line has
the dataset's ``dataset_samples``, ``dataset_episodes``, ``val_samples`` and the expert's
``return_mean`` over the episodes that ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from agents.distributions import policy_distribution
from agents.evaluation import EpisodeLog
from agents.ppo import start_envs
from rl_scaling.checkpoint import LATEST, load_checkpoint, load_module_state
from rl_scaling.context import RunContext
from rl_scaling.registry import ConfigError, model_entry, register_algo

SPLITS = ("train", "val")


@dataclass
class CollectConfig:
    """``algo=collect``: which expert, where the dataset goes, how it is split."""

    name: str = "collect"
    expert: str = "???"  # an expert's run directory (config.yaml + checkpoints/latest.pt)
    out: str = "???"  # the dataset's root directory (created, or appended to on resume)
    val_fraction: float = 0.05  # share of whole episodes held out as the `val` split
    deterministic: bool = False  # arg-max actions instead of samples from the expert's policy
    steps_per_iteration: int = 128  # env steps per env between commits (and log lines)
    shard_samples: int = 65536  # rows per shard file
    expert_key: str = "model"  # the checkpoint object holding the expert's network

    def validate(self) -> None:
        for key in ("expert", "out"):
            if getattr(self, key) in (None, "", "???"):
                raise ConfigError(f"algo.{key} must be set (a path)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"algo.val_fraction={self.val_fraction} must be in [0, 1)")
        for key in ("steps_per_iteration", "shard_samples"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"algo.{key}={getattr(self, key)} must be >= 1")


class Expert:
    """An expert's network on a device; ``act(obs)`` gives actions for a batch of
    observations, ``config`` its run's config (``env``, ``model``)."""

    def __init__(self, network: nn.Module, config: Any, action_space: Any,
                 device: torch.device) -> None:
        self.network, self.config, self.device = network.eval(), config, device
        self.dist = policy_distribution(action_space)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, generator: torch.Generator | None = None,
            deterministic: bool = False) -> np.ndarray:
        out = self.network(torch.from_numpy(obs).to(self.device))
        params = out[0] if isinstance(out, tuple) else out
        if deterministic:
            return params.argmax(-1).cpu().numpy()
        return self.dist.sample(params, generator)[0].cpu().numpy()


def load_expert(run_dir: str | Path, spec: Any, device: torch.device | str = "cpu",
                key: str = "model") -> Expert:
    """Rebuild the network of the run in ``run_dir`` from its ``config.yaml`` (its
    ``model.*``) for the spaces of ``spec``, and load its weights from
    ``checkpoints/latest.pt`` (object ``key``). One-line errors name the missing or bad file."""
    run_dir = Path(run_dir)
    config_path, ckpt_path = run_dir / "config.yaml", run_dir / "checkpoints" / LATEST
    if not run_dir.is_dir():
        raise ConfigError(f"algo.expert={str(run_dir)!r}: no such run directory")
    for path in (config_path, ckpt_path):
        if not path.is_file():
            raise ConfigError(f"algo.expert: {path} is missing (not a finished run directory)")
    cfg = OmegaConf.load(config_path)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    entry = model_entry(model["family"])
    network = entry.build(entry.config_cls(**model), spec, "policy")
    state = load_checkpoint(ckpt_path, required=("objects",))
    if key not in state["objects"]:
        raise ConfigError(f"algo.expert_key={key!r}: {ckpt_path} holds "
                          f"{sorted(state['objects'])}")
    load_module_state(network, state["objects"][key], ckpt_path)
    return Expert(network.to(device), cfg, spec.action_space, torch.device(device))


def train(cfg: CollectConfig, ctx: RunContext) -> str:
    """Roll the expert out until ``budget`` env steps; see the module docstring."""
    envs = ctx.envs("train")
    expert = load_expert(cfg.expert, ctx.spec, ctx.device, cfg.expert_key)
    expert_env = OmegaConf.to_container(expert.config.get("env") or {}, resolve=True)
    if expert_env.get("id") not in (None, ctx.env_factory("train").config.get("id")):
        raise ConfigError(f"algo.expert was trained on env.id={expert_env.get('id')!r}; this "
                          f"run's env.id is {ctx.env_factory('train').config.get('id')!r}")
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    fields = {"obs": (tuple(obs_space.shape), obs_space.dtype),
              "action": (tuple(act_space.shape), np.int64 if not act_space.shape
                         else np.float32),
              "reward": ((), np.float32)}
    try:
        writer = _open_writer(cfg, ctx, fields, obs_space, act_space)
    except ValueError as err:  # DatasetError: one line naming the file
        raise ConfigError(f"algo.out: {err}") from err
    ctx.restore(writer=writer)
    obs, _ = start_envs(envs, ctx)
    obs = obs.cpu().numpy()
    num_envs = envs.num_envs
    # each env's episode in progress: lists of per-step rows
    open_eps: list[dict[str, list[np.ndarray]]] = [
        {"obs": [], "action": [], "reward": []} for _ in range(num_envs)]
    episodes = EpisodeLog()
    c = ctx.counters
    try:
        while not ctx.done:
            t0 = time.perf_counter()
            episodes.clear()
            written = {s: 0 for s in SPLITS}
            for _ in range(cfg.steps_per_iteration):
                actions = expert.act(obs, ctx.device_rng, cfg.deterministic)
                next_obs, rewards, terminated, truncated, info = envs.step(actions)
                for i in range(num_envs):
                    ep = open_eps[i]
                    ep["obs"].append(obs[i])
                    ep["action"].append(actions[i])
                    ep["reward"].append(rewards[i])
                episodes.add(info)
                # the env's own return (the game score, also where the learner's rewards are
                # clipped), by the env each episode ran in
                returns = dict(zip(info["episode_env"].tolist(), info["episode_return"],
                                   strict=True))
                for i in np.flatnonzero(terminated | truncated):
                    ep = {k: np.stack(v) for k, v in open_eps[i].items()}
                    split = "val" if ctx.np_rng.random() < cfg.val_fraction else "train"
                    writer.add_episode(split, ep, episode_return=float(
                        returns.get(int(i), ep["reward"].sum())))
                    written[split] += len(ep["reward"])
                    open_eps[i] = {"obs": [], "action": [], "reward": []}
                obs = next_obs
                c.env_steps += num_envs
            writer.commit()
            c.samples = writer.samples("train") + writer.samples("val")
            seconds = time.perf_counter() - t0
            metrics = {**episodes.metrics(),
                       "dataset_samples": writer.samples("train"),
                       "dataset_episodes": writer.episodes("train"),
                       "val_samples": writer.samples("val"),
                       "val_episodes": writer.episodes("val"),
                       "written": written["train"] + written["val"],
                       "sps": num_envs * cfg.steps_per_iteration / max(seconds, 1e-9)}
            ctx.end_iteration(metrics)
    finally:
        writer.close()
    return "finished"


def _open_writer(cfg: CollectConfig, ctx: RunContext, fields: dict[str, Any], obs_space: Any,
                 act_space: Any) -> Any:
    from agents.shards import ShardWriter

    return ShardWriter(cfg.out, fields, shard_samples=cfg.shard_samples,
                       meta={"expert": str(Path(cfg.expert).resolve()),
                             "env": ctx.env_factory("train").config,
                             "observation_space": repr(obs_space),
                             "num_actions": int(getattr(act_space, "n", 0)) or None,
                             "deterministic": cfg.deterministic})


register_algo("collect", CollectConfig, train)
