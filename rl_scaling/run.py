"""A run's life: validate, seed, resume or start, train, record the outcome.

``run(cfg, run_dir)`` is called by the Hydra entry point (:mod:`rl_scaling.sweep`) and by
tests. It looks the algorithm, env family and model family up in the registry (it names
none of them), builds the :class:`~rl_scaling.context.RunContext`, and calls the
algorithm's ``train(cfg, ctx)``. The run record is opened only when the algorithm calls
``ctx.restore(...)``: anything refused before that (a bad config value, a checkpoint of
another model) leaves the record on disk as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import rl_scaling
from rl_scaling import distributed
from rl_scaling.checkpoint import LATEST, load_checkpoint
from rl_scaling.config import BUDGET_COUNTERS
from rl_scaling.context import EnvFactory, Interval, NullLogger, RunContext, StopTraining
from rl_scaling.hostmem import keep_freed_memory
from rl_scaling.logger import MetricsLogger, Progress
from rl_scaling.record import RunRecord, check_study, new_run_info, slurm_ids
from rl_scaling.registry import ALGOS, ConfigError, algo_entry, env_entry, model_entry
from rl_scaling.speed import Speed, SpeedConfig

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption (they do not change what is learned).
RESUMABLE_KEYS = ("budget", "logger", "device", "torch_threads", "log_every", "eval_every",
                  "eval_episodes", "checkpoint_every", "keep_freed_memory",
                  "seeds_per_process", "snapshot_flops", "speed")
EVAL_SEED_OFFSET = 10_000  # eval envs are seeded apart from the training envs

__all__ = ["RESUMABLE_KEYS", "ConfigError", "run", "validate"]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _group_object(cfg: DictConfig, group: str, entry_cls: type) -> Any:
    """The group's config as its owner's dataclass; its ``validate()`` names bad keys."""
    fields = {f.name for f in dataclasses.fields(entry_cls)}
    values = {k: v for k, v in _plain(cfg[group]).items() if k in fields}
    obj = entry_cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as err:  # owners' messages name the key already
            raise ConfigError(str(err)) from err
    return obj


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Cheap checks that name the bad key before anything is built or logged. Returns the
    algorithm's config object and the registry entries."""
    algo = algo_entry(cfg.algo.name)
    env = env_entry(cfg.env.family) if cfg.get("env") is not None else None
    model = model_entry(cfg.model.family) if cfg.get("model") is not None else None
    checks = [
        ("budget.counter", cfg.budget.counter in BUDGET_COUNTERS,
         f"must be one of {list(BUDGET_COUNTERS)}"),
        ("budget.value", cfg.budget.value > 0, "must be > 0"),
        ("eval_episodes", cfg.eval_episodes > 0, "must be > 0"),
        ("seeds_per_process", cfg.seeds_per_process >= 1, "must be >= 1"),
    ]
    if env is not None:
        checks.append(("env.num_envs", cfg.env.num_envs > 0, "must be > 0"))
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} {why}")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        Interval(cfg[key], key)
    for i, budget in enumerate(cfg.get("snapshot_flops") or []):
        if not isinstance(budget, (int, float)) or not budget > 0:
            raise ConfigError(f"snapshot_flops[{i}]={budget!r} must be a FLOP count > 0")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device={cfg.device!r} must be auto, cpu, cuda or cuda:N")
    env_fields = {f.name for f in dataclasses.fields(env.config_cls)} if env else set()
    for key in (_plain(cfg.env.eval) or {}) if env else {}:
        if key not in env_fields or key in ("family", "eval"):
            raise ConfigError(f"env.eval.{key} is not a field of env family "
                              f"{cfg.env.family!r}; fields: {sorted(env_fields - {'eval'})}")
    if cfg.get("study") is not None:
        try:
            study = check_study(_plain(cfg.study))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        for role, key in study["axes"].items():
            if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise ConfigError(f"study.axes.{role}={key!r} is not a key of this config")
    speed = cfg.get("speed")
    _speed_config(speed)
    algo_cfg = _group_object(cfg, "algo", algo.config_cls)
    if env is not None:
        _group_object(cfg, "env", env.config_cls)
    if model is not None:
        _group_object(cfg, "model", model.config_cls)
    return {"algo": algo, "algo_cfg": algo_cfg, "env": env, "model": model}


def _speed_config(node: Any) -> SpeedConfig:
    values = _plain(node) or {}
    fields = {f.name for f in dataclasses.fields(SpeedConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"speed.{unknown[0]} is not a speed switch; switches: {sorted(fields)}")
    speed = SpeedConfig(**values)
    speed.validate()
    return speed


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


def _config_mismatch(old: DictConfig, new: DictConfig) -> list[str]:
    a, b = _flat(old), _flat(new)
    entry = ALGOS.get(b.get("algo.name"))  # the algorithm's own resumable keys
    resumable = RESUMABLE_KEYS + tuple(f"algo.{k}" for k in (entry.resumable if entry else ()))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in resumable):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


@functools.cache
def _git_rev() -> str | None:
    """The commit of the code this process runs, ``-dirty`` if tracked files differed from
    it. Read once per process (when its first run starts): a worker process keeps running
    the code it imported even after the checkout moves on, and its records must say so."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if dirty else "")) or None


def _versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "rl_scaling": rl_scaling.__version__}


def _env_factories(cfg: DictConfig,
                   dist: distributed.Distributed = distributed.SINGLE) -> dict[str, EnvFactory]:
    """The train split and the held-out eval split (``env.eval`` overrides) of the envs. A
    data-parallel rank trains on its share of ``env.num_envs``, seeded apart (rank 0 keeps
    the run's seed); evaluation runs on rank 0 with the whole eval split."""
    if cfg.get("env") is None:
        return {}
    train = dict(_plain(cfg.env))
    overrides = dict(train.get("eval") or {})
    eval_cfg = {**train, **overrides}
    train_seed = int(cfg.seed)
    if dist.enabled:  # run() checked that the ranks divide num_envs
        train["num_envs"] //= dist.world_size
        train_seed = (train_seed + distributed.STREAM_SEED_STRIDE * dist.rank) % 2**31
    return {"train": EnvFactory(cfg.env.family, train, train_seed),
            "eval": EnvFactory(cfg.env.family, eval_cfg, cfg.seed + EVAL_SEED_OFFSET)}


def _model_builder(cfg: DictConfig):
    """``build(family, spec, knobs, role)`` for ``ctx.network``: the family's dataclass from the
    ``model.*`` knobs (``knobs`` override them), validated, then the family's builder."""
    base = _plain(cfg.model) if cfg.get("model") is not None else {}

    def build(family: str | None, spec, knobs: dict[str, Any], role: str):
        family = family or base.get("family")
        if not family:
            raise ConfigError("model.family is not set; choose a model (model=NAME)")
        entry = model_entry(family)
        fields = {f.name for f in dataclasses.fields(entry.config_cls)}
        values = {k: v for k, v in base.items() if k in fields} if family == base.get(
            "family") else {}
        unknown = sorted(set(knobs) - fields)
        if unknown:
            raise ConfigError(f"model ({family}): unknown knob(s) {unknown}; "
                              f"knobs: {sorted(fields - {'family'})}")
        mcfg = entry.config_cls(**{**values, **knobs, "family": family})
        try:
            if callable(getattr(mcfg, "validate", None)):
                mcfg.validate()
            return entry.build(mcfg, spec, role)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"model ({family}): {err}") from err

    return build


def _budget_reached(cfg: DictConfig, state: dict[str, Any]) -> bool:
    counters = state["counters"]
    value = (state["accountant"]["total"] if cfg.budget.counter == "flops"
             else counters.get(cfg.budget.counter, 0))
    return value >= cfg.budget.value


class _SeedRun:
    """One seed's record, config and checkpoint, read before anything is trained."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.record = RunRecord(run_dir)
        self.ckpt_path = self.record.checkpoint_dir / LATEST
        self.info = self.record.read_run_json()
        if self.info is not None and self.record.config_path.exists():
            diffs = _config_mismatch(OmegaConf.load(self.record.config_path), cfg)
            if diffs:
                raise ConfigError(f"{self.record.run_dir} holds a run with another config "
                                  f"({'; '.join(diffs)}); choose another hydra.run.dir")
        self.resume_state = None
        if self.ckpt_path.exists():
            self.resume_state = load_checkpoint(
                self.ckpt_path, required=("counters", "objects", "accountant", "rng"))
        self.status_before = (self.info or {}).get("status")
        finished = (self.status_before == "finished" and self.resume_state is not None
                    and _budget_reached(cfg, self.resume_state))
        # A diverged run is final even if it diverged before its first checkpoint: training
        # it again would erase the curve it diverged on.
        self.final = self.status_before == "diverged" or finished
        self.opened: dict[str, Any] = {}
        self.ctx: RunContext | None = None

    @property
    def position(self) -> dict[str, Any]:
        return dict((self.resume_state or {}).get("counters") or {"iterations": 0})


def seed_dirs_default(run_dir: str | os.PathLike, seeds: list[int]) -> list[Path]:
    """Where the seeds of a ``seeds_per_process`` job go outside a multirun:
    ``<run_dir>/seed=<s>``."""
    return [Path(run_dir) / f"seed={s}" for s in seeds]


def run(cfg: DictConfig, run_dir: str | os.PathLike,
        seed_dirs: list[str | os.PathLike] | None = None) -> str:
    """Train one run into ``run_dir``, resuming it if it holds a checkpoint. Returns the status.

    With ``seeds_per_process=K > 1`` the job trains the seeds ``seed .. seed+K-1`` in lock step
    (the algorithm's ``train_many``), each into its own record in ``seed_dirs`` (default
    ``<run_dir>/seed=<s>``; the sweep passes the directories K single-seed jobs would have
    used). Returns ``finished`` when every seed finished, else the first other status.
    """
    from rl_scaling.registry import load_plugins

    load_plugins()
    entries = validate(cfg)
    dist = distributed.from_environment()
    if dist.enabled:
        if not entries["algo"].distributed:
            raise ConfigError(f"algo {cfg.algo.name!r} does not train data-parallel; this run "
                              f"was started as {dist.world_size} ranks ({dist.source})")
        if int(cfg.seeds_per_process) != 1:
            raise ConfigError(f"seeds_per_process={cfg.seeds_per_process} with "
                              f"{dist.world_size} data-parallel ranks; use one or the other")
        if cfg.get("env") is not None and cfg.env.num_envs % dist.world_size:
            raise ConfigError(f"env.num_envs={cfg.env.num_envs} must be divisible by the "
                              f"{dist.world_size} data-parallel ranks")
    device = distributed.device_for(dist, resolve_device(cfg.device))
    joined = distributed.init(dist, device)
    try:
        if dist.enabled:  # every rank reads and resumes rank 0's run dir
            main_dir = dist.broadcast_object(str(Path(run_dir).resolve()))
            if not dist.is_main:
                _drop_stray_hydra_dir(Path(run_dir), Path(main_dir))
            run_dir = main_dir
        return _run(cfg, run_dir, seed_dirs, entries, dist, device)
    finally:
        if joined:
            distributed.shutdown()


def _drop_stray_hydra_dir(own: Path, main: Path) -> None:
    """A rank > 0 started by torchrun composed its own timestamped Hydra dir: it holds only
    Hydra's files (the run is recorded in rank 0's), so remove it."""
    own = own.resolve()
    if own == main or not own.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in own.iterdir()):
        shutil.rmtree(own, ignore_errors=True)


def _run(cfg: DictConfig, run_dir: str | os.PathLike, seed_dirs: list[str | os.PathLike] | None,
         entries: dict[str, Any], dist: distributed.Distributed, device: torch.device) -> str:
    n_seeds = int(cfg.seeds_per_process)
    seeds = [int(cfg.seed) + k for k in range(n_seeds)]
    if n_seeds > 1 and entries["algo"].train_many is None:
        raise ConfigError(f"seeds_per_process={n_seeds}: algo {cfg.algo.name!r} trains one "
                          "seed per process (it registers no train_many)")
    if n_seeds == 1:
        dirs = [Path(run_dir)]
    else:
        dirs = [Path(d) for d in (seed_dirs or seed_dirs_default(run_dir, seeds))]
        if len(dirs) != n_seeds or len(set(dirs)) != n_seeds:
            raise ConfigError(f"seeds_per_process={n_seeds} needs {n_seeds} distinct run dirs, "
                              f"got {[str(d) for d in dirs]}")
    runs = []
    for seed, path in zip(seeds, dirs, strict=True):
        seed_cfg = cfg.copy()
        seed_cfg.seed = seed
        runs.append(_SeedRun(seed_cfg, path))

    if all(r.final for r in runs):
        for r in runs:
            log.info("%s already %s; nothing to do", r.record.run_dir, r.status_before)
        return _summary([r.status_before for r in runs])
    if n_seeds > 1:
        # lock step: every seed must stand at the same point of training
        where = {str(r.record.run_dir): (r.final, r.position.get("iterations", 0)) for r in runs}
        if len(set(where.values())) > 1:
            raise ConfigError(
                f"seeds_per_process={n_seeds}: its run dirs are at different points "
                f"(final, iteration) {where}; resume them with seeds_per_process=1")

    if cfg.keep_freed_memory:
        keep_freed_memory()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    elif dist.enabled and device.type == "cpu":  # ranks on one host share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    speed = Speed(_speed_config(cfg.get("speed")), device)

    # Slurm signals a job before it kills it: SIGTERM on preemption or scancel, and
    # submitit asks for SIGUSR2 shortly before the time limit. Each one makes the loop
    # checkpoint at the end of the iteration it is in; then the handler that was there
    # before ours (submitit's, which requeues the job) gets the signal after all.
    preempt: dict[str, Any] = {"flag": False, "signal": None}

    def on_signal(signum, _frame):
        log.warning("signal %d: checkpointing at the end of this iteration", signum)
        preempt["flag"], preempt["signal"] = True, signum

    old_handlers: dict[int, Any] = {}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    def opener(r: _SeedRun):
        run_id = (r.info or {}).get("id") or uuid.uuid4().hex[:12]
        r.run_id = run_id
        seed_cfg, record, info = r.cfg, r.record, r.info

        def begin(ctx: RunContext) -> MetricsLogger:
            """Open the record: called by ``ctx.restore`` once the checkpoint fits."""
            if r.resume_state is not None:
                log.info("resuming %s from %s (iteration %d, env_steps=%d)", record.run_dir,
                         r.ckpt_path, ctx.counters.iterations, ctx.counters.env_steps)
                record.truncate_metrics(ctx.counters.iterations)
            else:
                record.truncate_metrics(-1)  # killed before its first checkpoint: afresh
            record.write_config(OmegaConf.to_yaml(seed_cfg, resolve=True))
            new = new_run_info(
                run_id=run_id, experiment=seed_cfg.experiment, seed=seed_cfg.seed,
                study=_plain(seed_cfg.study) if seed_cfg.get("study") is not None else None,
                error=None, algo=seed_cfg.algo.name, env=OmegaConf.select(seed_cfg, "env.id"),
                env_family=OmegaConf.select(seed_cfg, "env.family"),
                model=OmegaConf.select(seed_cfg, "model.family"),
                width=OmegaConf.select(seed_cfg, "model.width"),
                depth=OmegaConf.select(seed_cfg, "model.depth"),
                **ctx.networks_info(),
                budget={"counter": seed_cfg.budget.counter, "value": seed_cfg.budget.value},
                device=str(device), speed=speed.as_dict(), ranks=dist.world_size,
                versions=_versions(), git_rev=_git_rev(),
                host=socket.gethostname(),
                start_time=(info or {}).get("start_time") or now, end_time=None,
                resumed=r.resume_state is not None, run_dir=str(record.run_dir.resolve()),
                starts=(info or {}).get("starts", []),
            )
            record.write_run_json(new)
            r.opened["record"] = True  # from here on, how the run ends goes into run.json
            record.add_start({"time": now, "host": socket.gethostname(), "pid": os.getpid(),
                              "iteration": ctx.counters.iterations, **slurm_ids()})
            r.opened["logger"] = logger = MetricsLogger(
                record, backend=seed_cfg.logger.backend,
                progress=Progress(seed_cfg.budget.value, seed_cfg.logger.progress,
                                  counter=seed_cfg.budget.counter,
                                  name=record.run_dir.name,
                                  start=float(ctx.flops.total
                                              if seed_cfg.budget.counter == "flops" else
                                              getattr(ctx.counters, seed_cfg.budget.counter))),
                wandb_kwargs={"project": seed_cfg.logger.project,
                              "entity": seed_cfg.logger.entity,
                              "group": seed_cfg.logger.group,
                              "tags": list(seed_cfg.logger.tags),
                              "id": run_id, "name": record.run_dir.name,
                              "config": OmegaConf.to_container(seed_cfg, resolve=True)},
                step_metric=seed_cfg.budget.counter,
            )
            install_signal_handlers()
            return logger

        def follow(ctx: RunContext) -> Any:
            """A data-parallel rank > 0: rank 0 keeps the record; this one only listens."""
            install_signal_handlers()
            return NullLogger()

        return begin if dist.is_main else follow

    def install_signal_handlers() -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            if sig in old_handlers:
                continue
            try:
                old_handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread (e.g. a joblib worker thread)
                pass

    for r in runs:
        r.ctx = RunContext(
            device=device, seed=r.cfg.seed, budget_counter=cfg.budget.counter,
            budget_value=cfg.budget.value, env_factories=_env_factories(r.cfg, dist),
            model=_plain(cfg.model) if cfg.get("model") is not None else {},
            build_model=_model_builder(cfg),
            effective_roles=(list(cfg.effective_roles) if cfg.effective_roles is not None
                             else None),
            log_every=cfg.log_every, eval_every=cfg.eval_every,
            eval_episodes=cfg.eval_episodes, checkpoint_every=cfg.checkpoint_every,
            checkpoint_path=r.ckpt_path, resume_state=r.resume_state, begin=opener(r),
            preempted=lambda: preempt["flag"],
            snapshot_flops=(list(cfg.snapshot_flops) if cfg.get("snapshot_flops") else None),
            speed=speed, dist=dist,
        )
    ctxs = [r.ctx for r in runs]
    statuses, error = ["failed"] * n_seeds, None
    try:
        if n_seeds == 1:
            statuses = [entries["algo"].train(entries["algo_cfg"], ctxs[0])]
        else:
            entries["algo"].train_many(entries["algo_cfg"], ctxs)
            statuses = ["finished"] * n_seeds
    except StopTraining as stop:
        statuses, error = [stop.status] * n_seeds, stop.reason
        for r in runs:
            log.warning("%s: %s", r.record.run_dir, stop.reason)
    except (KeyboardInterrupt, SystemExit) as err:
        # interrupted, not broken: it resumes from its last checkpoint when started again
        statuses, error = ["running"] * n_seeds, f"interrupted ({type(err).__name__}: {err})"
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        for k, r in enumerate(runs):
            ctx = r.ctx
            status, why = statuses[k], error
            if ctx.stopped is not None:  # this seed stopped on its own (e.g. diverged)
                status, why = ctx.stopped.status, ctx.stopped.reason
                statuses[k] = status
            ctx.close()
            if "logger" in r.opened:
                r.opened["logger"].close(status)
            if "record" in r.opened:  # the record was opened: say how the run ended
                r.record.update_run_json(
                    status=status, error=None if status == "finished" else why,
                    end_time=None if status == "running"
                    else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    env_steps=ctx.counters.env_steps, samples=ctx.counters.samples,
                    updates=ctx.counters.updates, flops=float(ctx.flops.total),
                    **ctx.networks_info(),
                )
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        # process-wide: the next run in this process (a worker's next job) sets its own
        torch.use_deterministic_algorithms(was_deterministic)
    chained = old_handlers.get(preempt["signal"])
    if "running" in statuses and callable(chained):
        chained(preempt["signal"], None)  # e.g. submitit: requeue this job, then exit
    return _summary(statuses)


def _summary(statuses: list[str]) -> str:
    return next((s for s in statuses if s != "finished"), "finished")
