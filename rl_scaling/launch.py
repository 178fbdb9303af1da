"""What the project's Hydra launchers and the plan sweeper share (hydra_plugins).

Hydra only loads plugins from the ``hydra_plugins`` package, so the classes live there and
stay thin; the behaviour (which directory a job trains into, GPU assignment, Slurm array
splitting, the per-job summary) is here, where it is tested without a launcher.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("rl_scaling")


def override_key(override: str) -> str:
    """``+experiment=x`` -> ``experiment``; ``~a.b`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Concatenate override lists; a key given again replaces the earlier one in place."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged[override_key(override)] = override
    return list(merged.values())


def job_dir(config: DictConfig, overrides: Sequence[str]) -> Path | None:
    """The directory Hydra gives the job with ``overrides`` (``hydra.sweep.dir`` /
    ``override_dirname``), or None where ``hydra.sweep.subdir`` is customised."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = config.hydra
    subdir = OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir")
    if subdir != "${hydra.job.override_dirname}":
        return None
    naming = hydra_cfg.job.config.override_dirname
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    name = get_overrides_dirname(parsed, list(naming.exclude_keys), naming.item_sep,
                                 naming.kv_sep)
    return Path(str(hydra_cfg.sweep.dir)) / name


# Slurm states of a job that will run (again) after its process returned
SLURM_AGAIN = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RUNNING", "CONFIGURING",
               "COMPLETING")


def seed_siblings(run_dir: Path) -> list[Path]:
    """The other seeds' dirs of a ``seeds_per_process=K`` job whose dir names its seed
    (``...,seed=1`` -> ``...,seed=2`` .. ``seed=K``; rl_scaling.sweep.seed_run_dirs)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    k, seed = int(cfg.get("seeds_per_process") or 1), cfg.get("seed")
    parts = run_dir.name.split(",")
    if k == 1 or seed is None or f"seed={seed}" not in parts:
        return []  # one seed, or the seeds are <run_dir>/seed=<s> (found under it)
    i = parts.index(f"seed={seed}")
    return [run_dir.parent / ",".join([*parts[:i], f"seed={int(seed) + j}", *parts[i + 1:]])
            for j in range(1, k) if (run_dir.parent / ",".join(
                [*parts[:i], f"seed={int(seed) + j}", *parts[i + 1:]])).exists()]


def write_launch_files(config: DictConfig, job_overrides: Sequence[Sequence[str]],
                       slurm_jobs: Sequence[str]) -> None:
    """Write ``launch.json`` (the Slurm job id, the time) into each submitted job's dir, so
    ``rl_scaling.runs`` sees a job that is queued but has not opened its record yet, and a
    second ``resume`` does not submit it again."""
    import datetime as dt
    import json

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for overrides, job in zip(job_overrides, slurm_jobs, strict=True):
        where = job_dir(config, overrides)
        if where is None:
            continue
        where.mkdir(parents=True, exist_ok=True)
        (where / "launch.json").write_text(json.dumps({"slurm_job": job, "time": now}) + "\n")


def print_summaries(config: DictConfig, job_overrides: Sequence[Sequence[str]],
                    *, returned: Sequence[object] | None = None, query_slurm: bool = False,
                    stream=None) -> list[str]:
    """One line per job of a finished launch: status, progress, final metric, wall time.

    ``returned``: what each job returned (its run's status). A job that returned
    ``running`` stopped on a signal before its budget: with ``query_slurm`` it reads
    ``requeued`` while Slurm has the job queued or running again, else ``stopped``; never
    finished.
    """
    from rl_scaling.runs import find_runs, slurm_job_state, summary_line

    stream = stream or sys.stderr
    lines = []
    for k, overrides in enumerate(job_overrides):
        where = job_dir(config, overrides)
        name = " ".join(o for o in overrides if override_key(o) != "experiment")
        if where is None or not where.exists():
            lines.append(f"[{name}] no record (see the launcher's log)")
            continue
        states = [s for d in [where, *seed_siblings(where)]
                  for s in find_runs(d, query_slurm=query_slurm)]
        if returned is not None and returned[k] == "running":
            for s in states:
                if s.recorded != "running":
                    continue
                again = (query_slurm and s.slurm_job is not None
                         and slurm_job_state(s.slurm_job) in SLURM_AGAIN)
                s.status = "requeued" if again else "stopped"
        lines.extend(summary_line(s, where.name if s.run_dir == where else
                                  f"{where.name}/{s.run_dir.name}") for s in states)
    if lines:
        stream.write(f"multirun summary ({len(job_overrides)} jobs):\n")
        stream.write("".join(f"  {line}\n" for line in lines))
        stream.flush()
    return lines


def assign_gpus(job_overrides: Sequence[Sequence[str]], gpus: Sequence[int],
                device: str) -> list[list[str]]:
    """Round-robin ``device=cuda:K`` over ``gpus`` for jobs that choose no device themselves.

    Only when the run's device is ``auto`` or ``cuda`` and more than one GPU is given; the
    device is not part of a run's directory name, so a resumed run may land on another GPU.
    """
    jobs = [list(o) for o in job_overrides]
    if len(gpus) < 2 or device not in ("auto", "cuda"):
        return jobs
    for i, overrides in enumerate(jobs):
        if not any(override_key(o) == "device" for o in overrides):
            overrides.append(f"device=cuda:{gpus[i % len(gpus)]}")
    return jobs


def visible_gpus(configured: Sequence[int] | None) -> list[int]:
    """The GPU indices to spread jobs over: ``configured``, else every visible CUDA device."""
    if configured is not None:
        return [int(g) for g in configured]
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def slurm_max_array_size(timeout_s: float = 10.0) -> int | None:
    """The cluster's ``MaxArraySize`` (``scontrol show config``), None if it cannot say."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def array_chunks(n_jobs: int, max_array_size: int | None) -> list[range]:
    """Index ranges of at most ``max_array_size`` jobs: Slurm refuses an array whose
    indices reach MaxArraySize, and submitit numbers each array's tasks from 0."""
    size = n_jobs if not max_array_size or max_array_size <= 0 else max_array_size
    return [range(i, min(i + size, n_jobs)) for i in range(0, n_jobs, size)]


def trains_data_parallel(config: DictConfig) -> bool:
    """Whether the configured algorithm trains as data-parallel ranks (``register_algo(...,
    distributed=True)``): the Slurm launcher then gives a run one rank per GPU."""
    from rl_scaling.registry import ConfigError, algo_entry, load_plugins

    load_plugins()
    name = OmegaConf.select(config, "algo.name")
    try:
        return bool(name) and algo_entry(str(name)).distributed
    except ConfigError:  # an unknown algorithm fails in its job, with its own message
        return False
