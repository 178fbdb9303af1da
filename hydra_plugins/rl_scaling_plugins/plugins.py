"""The ``plan`` sweeper and the ``rl_local`` / ``rl_slurm`` launchers (configs/hydra/launcher).

- ``hydra/sweeper=plan hydra.sweeper.plan=FILE``: launches the jobs a planner wrote
  (:mod:`sweeps.plan`) instead of a cartesian grid.
- ``rl_local`` (``hydra/launcher=local``): joblib worker processes on this machine, with
  ``device=cuda:K`` round-robin over the visible GPUs when there are several.
- ``rl_slurm`` (``hydra/launcher=slurm``): submitit's Slurm launcher, plus arrays split at
  the cluster's ``MaxArraySize``, ``wait=false`` to return once the jobs are submitted, a
  job that fails reported without hiding the others, and a summary line per job.
"""

# no `from __future__ import annotations`: Hydra execs this module outside sys.modules,
# where dataclasses cannot resolve string annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf reads these)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import MISSING, DictConfig, OmegaConf

from rl_scaling import launch as shared

log = logging.getLogger("rl_scaling")

try:  # optional extra: pip install -e '.[slurm]'
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover - the slurm launcher is then not offered
    BaseQueueConf = SlurmQueueConf = SlurmLauncher = None


# ---------------------------------------------------------------- the plan sweeper
@dataclass
class PlanSweeperConf:
    _target_: str = "hydra_plugins.rl_scaling_plugins.plugins.PlanSweeper"
    plan: str = MISSING  # a plan file (sweeps/plan.py)
    max_batch_size: Optional[int] = None  # noqa: UP045  jobs per launch call (null: all)
    params: Optional[Dict[str, str]] = None  # noqa: UP006,UP045  a grid: the plan replaces it


class PlanSweeper(Sweeper):
    """Launch the jobs of a plan file: each job's overrides are the command line's, then the
    plan's ``common``, then its own (a later value of a key replaces an earlier one)."""

    def __init__(self, plan: str, max_batch_size: int | None = None,
                 params: dict[str, str] | None = None) -> None:
        self.plan_path, self.max_batch_size = plan, max_batch_size
        self.params = params or {}
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from sweeps.plan import PlanError, load_plan

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        try:
            plan = load_plan(self.plan_path)
        except PlanError as err:
            raise HydraException(str(err)) from None
        experiment = self.config.get("experiment")
        if experiment != plan.experiment:
            raise HydraException(
                f"hydra.sweeper.plan={self.plan_path} is a plan for experiment "
                f"{plan.experiment!r}, but the command line selects {experiment!r} "
                f"(+experiment={plan.experiment})")
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        sweeps = [o.input_line for o in parser.parse_overrides(list(arguments))
                  if o.is_sweep_override()]
        if sweeps:
            raise HydraException(f"hydra/sweeper=plan: the plan lists the jobs; drop the "
                                 f"sweep override {sweeps[0]!r} or put it in the plan")
        if self.params:
            log.info("plan %s replaces the experiment's grid (hydra.sweeper.params: %s)",
                     self.plan_path, ", ".join(self.params))
        jobs = [shared.merge_overrides(arguments, job) for job in plan.job_overrides()]
        parser.parse_overrides(jobs[0])  # a malformed override fails before launching
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        size = self.max_batch_size or len(jobs)
        returns, start = [], 0
        for i in range(0, len(jobs), size):
            batch = jobs[i:i + size]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=start)
            start += len(batch)
            returns.append(results)
        for results in returns:
            for r in results:
                _ = r.return_value  # a failed job fails the multirun, after every launch
        return returns


# ---------------------------------------------------------------- local launcher
@dataclass
class LocalLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.rl_scaling_plugins.plugins.LocalLauncher"
    gpus: Optional[List[int]] = None  # noqa: UP006,UP045  GPUs to use; null: every visible


class LocalLauncher(JoblibLauncher):
    """joblib's launcher, with GPUs assigned round-robin and a summary line per job."""

    def __init__(self, gpus: list[int] | None = None, **joblib_kwargs: Any) -> None:
        super().__init__(**joblib_kwargs)
        self.gpus = None if gpus is None else list(gpus)

    def launch(self, job_overrides, initial_job_idx: int):
        assert self.config is not None
        jobs = shared.assign_gpus(job_overrides, shared.visible_gpus(self.gpus),
                                  str(self.config.get("device", "auto")))
        results = super().launch(jobs, initial_job_idx)
        shared.print_summaries(self.config, jobs, returned=[
            r._return_value if r.status == JobStatus.COMPLETED else None for r in results])
        return results


# ---------------------------------------------------------------- Slurm launcher
if SlurmQueueConf is not None:

    @dataclass
    class SlurmLauncherConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.rl_scaling_plugins.plugins.RLSlurmLauncher"
        wait: bool = True  # false: return once submitted (follow with rl_scaling.runs)
        max_array_size: Optional[int] = None  # noqa: UP045  null: the cluster's MaxArraySize
        # one data-parallel rank per GPU: tasks_per_node is raised to gpus_per_node, so a
        # run asking for a node's 4 GPUs trains on 4 ranks (rl_scaling/distributed.py)
        rank_per_gpu: bool = True

    class RLSlurmLauncher(SlurmLauncher):
        """submitit's Slurm launcher: arrays split at MaxArraySize, optional no-wait, every
        job's outcome collected (one failure does not hide the rest), a summary per job."""

        def __init__(self, wait: bool = True, max_array_size: int | None = None,
                     rank_per_gpu: bool = True, **params: Any) -> None:
            super().__init__(**params)
            self.wait, self.max_array_size = wait, max_array_size
            self.rank_per_gpu = rank_per_gpu

        def _executor(self):
            import submitit

            params = dict(self.params)
            executor = submitit.AutoExecutor(
                cluster="slurm", folder=params.pop("submitit_folder"),
                slurm_max_num_timeout=params.pop("max_num_timeout"))
            tasks = int(params.get("tasks_per_node") or 1)
            gpus = int(params.get("gpus_per_node") or 0)
            # one data-parallel rank per GPU, for algorithms that train data-parallel
            if self.rank_per_gpu and gpus > tasks and shared.trains_data_parallel(self.config):
                params["tasks_per_node"] = tasks = gpus
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(
                **{k if k in base else f"slurm_{k}": v for k, v in params.items()})
            if tasks > 1 or int(params.get("nodes") or 1) > 1:
                # a rank that fails ends the step, instead of the others waiting on it in a
                # collective until the process group's timeout
                executor.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
            return executor

        def launch(self, job_overrides, initial_job_idx: int):
            from submitit.core.utils import FailedJobError, UncompletedJobError

            assert self.config is not None
            executor = self._executor()
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            limit = self.max_array_size or shared.slurm_max_array_size()
            chunks = shared.array_chunks(len(job_overrides), limit)
            log.info("submitting %d jobs to Slurm as %d array(s) (MaxArraySize %s), "
                     "sweep dir %s", len(job_overrides), len(chunks), limit, sweep_dir)
            submitted = []
            for chunk in chunks:
                params = []
                for i in chunk:
                    idx = initial_job_idx + i
                    overrides = list(job_overrides[i])
                    log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                    params.append((overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                   Singleton.get_state()))
                submitted.extend(executor.map_array(self, *zip(*params, strict=True)))
            shared.write_launch_files(self.config, job_overrides,
                                      [j.job_id for j in submitted])
            if not self.wait:
                ids = sorted({j.job_id.split("_")[0] for j in submitted})
                print(f"submitted {len(submitted)} jobs (Slurm job(s) {', '.join(ids)}); "
                      f"follow them with: python -m rl_scaling.runs status {sweep_dir}",
                      flush=True)
                return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED,
                                  _return_value=f"submitted as Slurm job {j.job_id}",
                                  working_dir=str(sweep_dir))
                        for o, j in zip(job_overrides, submitted, strict=True)]
            results = []
            for overrides, job in zip(job_overrides, submitted, strict=True):
                try:
                    results.append(job.results()[0])
                except (FailedJobError, UncompletedJobError) as err:
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    log.error("Slurm job %s failed: %s", job.job_id, first)
                    results.append(JobReturn(overrides=list(overrides),
                                             status=JobStatus.FAILED, _return_value=err))
            shared.print_summaries(
                self.config, job_overrides, query_slurm=True,
                returned=[r._return_value if r.status == JobStatus.COMPLETED else None
                          for r in results])
            return results

    _SLURM_CONF = SlurmLauncherConf
else:  # pragma: no cover
    _SLURM_CONF = None

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="plan", node=PlanSweeperConf, provider="rl_scaling")
cs.store(group="hydra/launcher", name="rl_local", node=LocalLauncherConf, provider="rl_scaling")
if _SLURM_CONF is not None:
    cs.store(group="hydra/launcher", name="rl_slurm", node=_SLURM_CONF, provider="rl_scaling")
