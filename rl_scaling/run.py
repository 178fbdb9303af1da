"""A run's life: validate, seed, resume or start, train, record the outcome.

``run(cfg, run_dir)`` is called by the Hydra entry point (:mod:`rl_scaling.sweep`)
and by tests; it is the only place that turns the config into plain arguments
for ``envs.make_env``, ``agents.models.build_model`` and the algorithm.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import rl_scaling
from rl_scaling.checkpoint import LATEST, CheckpointError, load_checkpoint, load_module_state
from rl_scaling.context import RunContext, StopTraining, seed_everything
from rl_scaling.flops import FlopAccountant, forward_flops
from rl_scaling.hostmem import keep_freed_memory
from rl_scaling.logger import MetricsLogger, Progress
from rl_scaling.record import RunRecord

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption (they do not change what is learned).
RESUMABLE_KEYS = ("algo.total_steps", "logger", "device", "torch_threads", "checkpoint_interval",
                  "algo.eval_interval", "algo.eval_episodes", "keep_freed_memory")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def validate(cfg: DictConfig) -> None:
    """Cheap checks that name the bad key before anything is built or logged."""
    checks = [
        ("algo.total_steps", cfg.algo.total_steps > 0, "must be > 0"),
        ("env.num_envs", cfg.env.num_envs > 0, "must be > 0"),
        ("model.width", cfg.model.width > 0, "must be > 0"),
        ("model.depth", cfg.model.depth is None or cfg.model.depth >= 1, "must be >= 1"),
        ("checkpoint_interval", cfg.checkpoint_interval >= 0, "must be >= 0"),
        ("logger.log_interval", cfg.logger.log_interval >= 1, "must be >= 1"),
    ]
    if cfg.algo.name == "ppo":
        checks += [
            ("algo.num_steps", cfg.algo.num_steps > 0, "must be > 0"),
            ("algo.lr", cfg.algo.lr > 0, "must be > 0"),
            ("algo.gamma", 0 <= cfg.algo.gamma <= 1, "must be in [0, 1]"),
            ("algo.gae_lambda", 0 <= cfg.algo.gae_lambda <= 1, "must be in [0, 1]"),
            ("algo.num_minibatches",
             cfg.algo.num_minibatches > 0
             and (cfg.env.num_envs * cfg.algo.num_steps) % cfg.algo.num_minibatches == 0,
             "must be > 0 and divide env.num_envs * algo.num_steps"),
        ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} {why}")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device={cfg.device!r} must be auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available (use device=auto or cpu)")
    return torch.device(name)


def _flat(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _check_resumable(state: dict[str, Any], model: torch.nn.Module,
                     accountant: FlopAccountant, path: Path) -> None:
    """Raise a one-line :class:`CheckpointError` if ``state`` cannot continue this run (a
    model of another shape, or FLOPs counted for another model), using the same checks the
    loop's own loading makes later, but before anything in the record has changed."""
    load_module_state(model, state["model"], path)
    try:
        accountant.load_state_dict(state["accountant"])
    except ValueError as err:
        raise CheckpointError(f"incompatible checkpoint {path}: {err}") from err


def _config_mismatch(old: DictConfig, new: DictConfig) -> list[str]:
    a, b = _flat(old), _flat(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def _git_rev() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "rl_scaling": rl_scaling.__version__}


def _env_kwargs(env_cfg: DictConfig) -> dict[str, Any]:
    """Plain builder kwargs for the training envs, and for the held-out eval envs if any."""
    kw = OmegaConf.to_container(env_cfg, resolve=True)
    kw.pop("family")
    kw.pop("num_envs")
    name = kw.pop("id")
    if env_cfg.family == "procgen":
        for k in ("eval_num_levels", "eval_start_level", "eval_num_envs"):
            kw.pop(k)
        kw["env_id"] = name
    elif env_cfg.family == "probe":
        kw["name"] = name
    return kw


def build_envs(cfg: DictConfig, seed: int):
    """Training envs and (for Procgen) held-out test-level envs."""
    from envs import make_env

    kw = _env_kwargs(cfg.env)
    envs = make_env(cfg.env.family, num_envs=cfg.env.num_envs, seed=seed, **kw)
    eval_envs = None
    if cfg.env.family == "procgen" and cfg.algo.get("eval_interval", 0) > 0:
        eval_kw = dict(kw, num_levels=cfg.env.eval_num_levels, start_level=cfg.env.eval_start_level)
        eval_envs = make_env("procgen", num_envs=cfg.env.eval_num_envs, seed=seed + 10_000,
                             **eval_kw)
    return envs, eval_envs


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> str:
    """Train one run into ``run_dir``, resuming it if it holds a checkpoint. Returns the status."""
    from agents import ALGOS
    from agents.models import build_model, count_params

    validate(cfg)
    if cfg.algo.name not in ALGOS:
        raise ConfigError(f"algo.name={cfg.algo.name!r} is unknown; known: {sorted(ALGOS)}")
    record = RunRecord(run_dir)
    ckpt_path = record.checkpoint_dir / LATEST
    info = record.read_run_json()

    if info is not None and record.config_path.exists():
        diffs = _config_mismatch(OmegaConf.load(record.config_path), cfg)
        if diffs:
            raise ConfigError(f"{record.run_dir} holds a run with another config "
                              f"({'; '.join(diffs)}); choose another hydra.run.dir")
    resume_state = None
    if ckpt_path.exists():
        resume_state = load_checkpoint(ckpt_path,
                                       required=("counters", "model", "accountant", "rng"))
    status_before = (info or {}).get("status")
    # A diverged run is final even if it diverged before its first checkpoint: training
    # it again would erase the curve it diverged on.
    finished = (status_before == "finished" and resume_state is not None
                and resume_state["counters"]["env_steps"] >= cfg.algo.total_steps)
    if status_before == "diverged" or finished:
        log.info("%s already %s; nothing to do", record.run_dir, status_before)
        return status_before

    if cfg.keep_freed_memory:
        keep_freed_memory()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    try:  # builders raise ValueError naming their argument; say which config group it was
        envs, eval_envs = build_envs(cfg, cfg.seed)
    except ValueError as err:
        raise ConfigError(f"env ({cfg.env.family}): {err}") from err
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    try:
        model = build_model(cfg.model.family, tuple(obs_space.shape), int(act_space.n),
                            width=cfg.model.width, depth=cfg.model.depth).to(device)
    except ValueError as err:
        envs.close()
        raise ConfigError(f"model ({cfg.model.family}): {err}") from err
    example = torch.zeros((1, *obs_space.shape), dtype=torch.from_numpy(obs_space.sample()).dtype,
                          device=device)
    flops = {"total": forward_flops(model, example, effective=False),
             "effective": forward_flops(model, example, effective=True)}
    accountant = FlopAccountant(forward_flops=flops["effective"])
    if resume_state is not None:
        # Check the checkpoint against this model before anything in the record changes.
        try:
            _check_resumable(resume_state, model, accountant, ckpt_path)
        except CheckpointError:
            envs.close()
            if eval_envs is not None:
                eval_envs.close()
            raise

    if resume_state is not None:
        log.info("resuming %s from %s (env_steps=%d)", record.run_dir, ckpt_path,
                 resume_state["counters"]["env_steps"])
        record.truncate_metrics(resume_state["counters"]["env_steps"])
    else:
        record.truncate_metrics(-1)  # killed before its first checkpoint: start the curve afresh
    record.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info = {
        "id": (info or {}).get("id") or uuid.uuid4().hex[:12],
        "experiment": cfg.experiment, "status": "running", "seed": cfg.seed,
        "algo": cfg.algo.name, "env": cfg.env.id, "env_family": cfg.env.family,
        "model": cfg.model.family, "width": cfg.model.width, "depth": cfg.model.depth,
        "params": count_params(model), "flops_per_forward": flops,
        "total_steps": cfg.algo.total_steps, "device": str(device),
        "versions": _versions(), "git_rev": _git_rev(), "host": socket.gethostname(),
        "start_time": (info or {}).get("start_time") or now, "end_time": None,
        "resumed": resume_state is not None, "run_dir": str(record.run_dir.resolve()),
    }
    record.write_run_json(info)

    # Slurm signals a job before it kills it: SIGTERM on preemption or scancel, and
    # submitit asks for SIGUSR2 shortly before the time limit. Each one makes the loop
    # checkpoint at the end of the iteration it is in; then the handler that was there
    # before ours (submitit's, which requeues the job) gets the signal after all.
    preempt: dict[str, Any] = {"flag": False, "signal": None}

    def on_signal(signum, _frame):
        log.warning("signal %d: checkpointing at the end of this iteration", signum)
        preempt["flag"], preempt["signal"] = True, signum

    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (e.g. a joblib worker thread)
            pass

    logger = MetricsLogger(
        record, backend=cfg.logger.backend,
        progress=Progress(cfg.algo.total_steps, cfg.logger.progress),
        wandb_kwargs={"project": cfg.logger.project, "entity": cfg.logger.entity,
                      "group": cfg.logger.group, "tags": list(cfg.logger.tags), "id": info["id"],
                      "name": record.run_dir.name,
                      "config": OmegaConf.to_container(cfg, resolve=True)},
    )
    ctx = RunContext(logger=logger, accountant=accountant, device=device,
                     checkpoint_path=ckpt_path, checkpoint_interval=cfg.checkpoint_interval,
                     log_interval=cfg.logger.log_interval,
                     width=cfg.model.width, resume_state=resume_state,
                     preempted=lambda: preempt["flag"])
    status, error = "failed", None
    try:
        algo_cfg = OmegaConf.to_object(cfg.algo)
        status = ALGOS[cfg.algo.name](algo_cfg, envs, model, ctx, eval_envs=eval_envs)
    except StopTraining as stop:
        status, error = stop.status, stop.reason
        log.warning("%s: %s", record.run_dir, stop.reason)
    except (KeyboardInterrupt, SystemExit) as err:
        # interrupted, not broken: it resumes from its last checkpoint when started again
        status, error = "running", f"interrupted ({type(err).__name__}: {err})"
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        logger.close(status)
        record.update_run_json(
            status=status, error=error,
            end_time=None if status == "running"
            else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            env_steps=ctx.counters.env_steps, flops=float(accountant.total),
        )
        envs.close()
        if eval_envs is not None:
            eval_envs.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    chained = old_handlers.get(preempt["signal"])
    if status == "running" and callable(chained):
        chained(preempt["signal"], None)  # e.g. submitit: requeue this job, then exit
    return status
