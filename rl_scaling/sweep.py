"""Entry point: ``python -m rl_scaling.sweep [+experiment=NAME] [-m] [key=value ...]``.

Composes the config (validated against :mod:`rl_scaling.config` and the schemas that
algorithms, env and model families registered), then runs one job in Hydra's job directory;
with ``-m`` Hydra's launcher runs the experiment's grid. Modules named in
``RL_SCALING_PLUGINS`` (comma separated) are imported first, so an algorithm that lives
outside this repository registers itself the same way the built-in ones do.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rl_scaling.config import register_configs
from rl_scaling.registry import ConfigError

log = logging.getLogger("rl_scaling")
try:
    register_configs()
except (ConfigError, ImportError) as _err:  # a plugin that cannot be imported: one line
    print(f"error: {_err}", file=sys.stderr)
    sys.exit(2)


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs the launcher runs at once on this machine (1 unless joblib)."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if n_jobs is None or "joblib" not in str(OmegaConf.select(hydra_cfg, "launcher._target_")):
        return 1
    n_jobs = int(n_jobs)
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)


def share_cores(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """With ``torch_threads=0``, give each parallel local job an equal share of the cores.

    Torch's default of one thread per core in every job oversubscribes the CPU, and its
    spinning OpenMP threads then crawl: the smoke run measured 90 steps/s beside one other
    busy process versus 3,900 steps/s with one thread each, on 2 cores.
    """
    import torch

    jobs = parallel_jobs(hydra_cfg)
    if cfg.torch_threads == 0 and jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def seed_run_dirs(cfg: DictConfig, hydra_cfg: DictConfig) -> list[Path] | None:
    """The run dirs of a ``seeds_per_process=K`` job: the dirs K single-seed jobs of this
    multirun (``seed=s`` for s in seed..seed+K-1) would have had, so each seed's record sits
    where the same sweep with K=1 would put it (and either resumes the other). Outside a
    multirun, or with a custom ``hydra.sweep.subdir``: None (``<run dir>/seed=<s>``)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if int(cfg.seeds_per_process) == 1 or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    naming = hydra_cfg.job.config.override_dirname
    output = Path(hydra_cfg.runtime.output_dir)  # absolute; hydra.sweep.dir may be relative
    if output.name != hydra_cfg.job.override_dirname:
        return None
    parser = OverridesParser.create()
    task = [o for o in hydra_cfg.overrides.task
            if parser.parse_override(o).key_or_group != "seed"]
    dirs = [output]
    for k in range(1, int(cfg.seeds_per_process)):
        overrides = parser.parse_overrides([*task, f"seed={int(cfg.seed) + k}"])
        name = get_overrides_dirname(overrides, list(naming.exclude_keys),
                                     naming.item_sep, naming.kv_sep)
        dirs.append(output.parent / name)
    return dirs


def print_job_summary(run_dirs: list[Path], status: str) -> None:
    """One line per record this job wrote: status, progress, final metric, wall time.

    A job that returns ``running`` was stopped by a signal (preemption, time limit) and
    resumes when Slurm requeues it or the sweep is relaunched: it says so, not "finished".
    """
    from rl_scaling.runs import read_run, summary_line

    for run_dir in run_dirs:
        if not (run_dir / "run.json").exists():
            continue
        state = read_run(run_dir, query_slurm=False)
        if state.recorded == "running":
            state.status = "stopped (resumes when requeued or relaunched)"
        print(summary_line(state), file=sys.stderr, flush=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> str:
    from rl_scaling.checkpoint import CheckpointError
    from rl_scaling.distributed import from_environment
    from rl_scaling.record import RecordError
    from rl_scaling.run import ConfigError, run

    hydra_cfg = HydraConfig.get()
    share_cores(cfg, hydra_cfg)
    if parallel_jobs(hydra_cfg) > 1 and cfg.logger.progress == "auto":
        # parallel jobs share the terminal: live bars would overwrite each other's line
        cfg.logger.progress = "plain"
    try:
        dirs = seed_run_dirs(cfg, hydra_cfg)
        status = run(cfg, hydra_cfg.runtime.output_dir, dirs)
        if from_environment().is_main:  # data-parallel ranks > 0 keep no record
            print_job_summary(dirs or [Path(hydra_cfg.runtime.output_dir)], status)
        return status
    except (ConfigError, CheckpointError, RecordError, FileNotFoundError, ImportError) as err:
        # ImportError: an optional extra (procgen, wandb...) that is not installed
        # One clear line instead of a traceback; the exit code still says it failed.
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
