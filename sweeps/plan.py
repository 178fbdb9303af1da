"""A plan: the runs a study design turns into, as Hydra overrides, one list per job.

A Hydra grid (``hydra.sweeper.params``) is a cartesian product; a study's design often is
not (an isoFLOP grid drops the (budget, size) pairs that cannot fit, a UTD stage 2 sets B
and eta per sigma). A plan lists the jobs one by one and ``hydra/sweeper=plan`` launches
them through whichever launcher is selected::

    python -m rl_scaling.sweep -m +experiment=NAME hydra/sweeper=plan \\
        hydra.sweeper.plan=plans/NAME.yaml [hydra/launcher=slurm ...]

The file (YAML, ``format: rl-scaling/plan/v1``)::

    format: rl-scaling/plan/v1
    experiment: procgen_width        # the +experiment the jobs run under
    common: [budget.counter=flops]   # overrides every job gets (before its own)
    jobs:                            # one list of overrides per job
      - [model.width=0.25, budget.value=1.0e15, seed=1]
    summary: {runs: 1, flops: 1.0e15, env_steps: ..., gpu_hours: ...}  # informative
    notes: [...]                     # what the planner dropped and why

A job's run directory is named by its own overrides (``hydra.job.override_dirname``), so
relaunching a plan resumes its runs exactly as relaunching a grid does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMAT = "rl-scaling/plan/v1"


class PlanError(ValueError):
    """A plan file that cannot be read; the message names the file and the bad field."""


@dataclass
class Plan:
    experiment: str
    jobs: list[list[str]]
    common: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def job_overrides(self) -> list[list[str]]:
        """Every job's full override list: the common ones, then its own."""
        return [[*self.common, *job] for job in self.jobs]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "experiment": self.experiment, "common": list(self.common),
                "jobs": [list(j) for j in self.jobs], "summary": dict(self.summary),
                "notes": list(self.notes)}

    def command(self, path: str | os.PathLike, extra: list[str] | None = None) -> str:
        """The command line that launches this plan (saved at ``path``)."""
        parts = ["python -m rl_scaling.sweep -m", f"+experiment={self.experiment}",
                 "hydra/sweeper=plan", f"hydra.sweeper.plan={path}", *(extra or [])]
        return " ".join(parts)


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write ``plan`` as YAML (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.to_dict(), sort_keys=False, width=100))
    return path


def load_plan(path: str | os.PathLike) -> Plan:
    """Read a plan file; a missing file or a malformed field is one :class:`PlanError`."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"hydra.sweeper.plan: no plan file at {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PlanError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(doc, dict):
        raise PlanError(f"{path}: a plan is a mapping with 'experiment' and 'jobs'")
    if doc.get("format", FORMAT) != FORMAT:
        raise PlanError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    experiment = doc.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise PlanError(f"{path}: 'experiment' must name an experiment (configs/experiment)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise PlanError(f"{path}: 'jobs' must be a non-empty list of override lists")
    for i, job in enumerate(jobs):
        if not isinstance(job, list) or not all(isinstance(o, str) and "=" in o for o in job):
            raise PlanError(f"{path}: jobs[{i}] must be a list of KEY=VALUE overrides, "
                            f"got {job!r}")
    common = doc.get("common") or []
    if not isinstance(common, list) or not all(isinstance(o, str) and "=" in o for o in common):
        raise PlanError(f"{path}: 'common' must be a list of KEY=VALUE overrides")
    return Plan(experiment=experiment, jobs=[list(j) for j in jobs], common=list(common),
                summary=dict(doc.get("summary") or {}), notes=list(doc.get("notes") or []))
