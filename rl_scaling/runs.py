"""Run bookkeeping: ``python -m rl_scaling.runs ls|status|resume ROOT``.

A sweep of hundreds of runs needs answers without opening files: which runs finished, which
are still going (and how far), which died and where their log is, and a way to relaunch
what did not finish. Everything here is read from the run records (``run.json``,
``metrics.jsonl``) and from what Hydra wrote next to them (``.hydra/overrides.yaml``,
``.hydra/hydra.yaml``); where a run's last start came from Slurm, ``squeue``/``sacct`` say
whether its job is still queued or running, or died without writing its record (SIGKILL,
out of memory, node failure).

Statuses, as shown:

=============  ===========================================================================
finished       reached its budget
diverged       stopped itself on a non-finite loss (final: not resumed)
running        its process is alive (this host's pid, or its Slurm job is RUNNING)
queued         its Slurm job is PENDING (``requeued`` if it has started before); a job the
               Slurm launcher submitted (``launch.json``) but that has not started yet
unknown        its record says running but nothing here can check (another host without
               Slurm, or squeue/sacct not answering): not relaunched
failed         raised an error (``run.json``), or its Slurm job ended FAILED / CANCELLED /
               TIMEOUT / OUT_OF_MEMORY / NODE_FAIL while the record still says running
stopped        interrupted (preemption signal, Ctrl-C) and not requeued: resumable
not started    Hydra made its directory but the run never opened its record
=============  ===========================================================================

``resume`` relaunches every ``failed``, ``stopped`` and ``not started`` run, with its own
overrides, into its own directory, through the launcher the sweep used (or ``--launcher``):
it writes a plan (:mod:`sweeps.plan`) and runs ``rl_scaling.sweep`` with
``hydra/sweeper=plan`` (a single run is relaunched into its ``hydra.run.dir``). Running it
twice launches nothing new the second time: the runs are then running, queued (the Slurm
launcher writes ``launch.json`` into each job's directory when it submits) or finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_scaling.logger import fmt_count, fmt_duration
from rl_scaling.record import RecordError, RunRecord

RESUMABLE = ("failed", "stopped", "not started")
FINAL = ("finished", "diverged")
# Slurm job states in which the job is gone for good (sacct), and what they mean here.
SLURM_DEAD = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
              "DEADLINE", "PREEMPTED")
LAUNCH_FILE = "launch.json"  # written into a job's dir when it is submitted (rl_scaling.launch)
SHOWN_METRICS = ("return_mean", "eval_return", "eval_normalized_score", "val_loss", "loss")


@dataclass
class RunState:
    """What ``runs`` knows of one run directory."""

    run_dir: Path
    status: str  # one of the statuses in the module docstring
    recorded: str | None = None  # run.json's own status
    experiment: str | None = None
    counter: str = "env_steps"
    target: float | None = None  # the budget in its counter
    env_steps: float = 0.0
    flops: float = 0.0
    wall_time: float | None = None
    metric: tuple[str, float] | None = None
    error: str | None = None
    why: str | None = None  # how the status was decided, when not from run.json alone
    log: Path | None = None
    overrides: list[str] = field(default_factory=list)
    hydra_overrides: list[str] = field(default_factory=list)
    launcher: str | None = None
    sweep_dir: Path | None = None
    mode: str = ""  # Hydra's: MULTIRUN (a sweep's job) or RUN (a single run)
    slurm_job: str | None = None

    @property
    def progress(self) -> float | None:
        """Fraction of the budget done (0..1), from the run's own counter."""
        if not self.target:
            return None
        done = {"env_steps": self.env_steps, "flops": self.flops}.get(self.counter)
        return None if done is None else min(1.0, done / self.target)

    def target_flops(self) -> float | None:
        """The FLOPs the run will have used at its budget (extrapolated unless budgeted)."""
        if self.counter == "flops":
            return self.target
        if self.counter == "env_steps" and self.target and self.env_steps > 0:
            return self.flops / self.env_steps * self.target
        return None

    def target_env_steps(self) -> float | None:
        if self.counter == "env_steps":
            return self.target
        if self.counter == "flops" and self.target and self.flops > 0:
            return self.env_steps / self.flops * self.target
        return None


# ------------------------------------------------------------------ reading records
def _last_metrics_line(path: Path, tail_bytes: int = 1 << 16) -> dict[str, Any] | None:
    """The last complete line of ``metrics.jsonl``, read from its tail (files grow large)."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - tail_bytes))
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return row
    return None


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        return None


def _hydra_facts(run_dir: Path) -> dict[str, Any]:
    """Overrides, launcher choice, hydra overrides, mode and sweep dir Hydra saved for this
    job. ``hydra.yaml`` keeps interpolations (``runs/${experiment}``) unresolved, so the
    sweep dir is taken from the job's resolved ``output_dir`` where it can be."""
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml") or []
    hydra_doc = (_yaml(run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    runtime = hydra_doc.get("runtime") or {}
    choices = runtime.get("choices") or {}
    sweep = hydra_doc.get("sweep") or {}
    sweep_dir = None
    if runtime.get("output_dir") and str(sweep.get("subdir", "")).count("/") == 0:
        sweep_dir = Path(runtime["output_dir"]).parent  # <sweep dir>/<one-level subdir>
    elif sweep.get("dir") and "${" not in str(sweep["dir"]):
        sweep_dir = Path(sweep["dir"])
        if not sweep_dir.is_absolute() and runtime.get("cwd"):
            sweep_dir = Path(runtime["cwd"]) / sweep_dir
    return {"overrides": [str(o) for o in overrides],
            "hydra_overrides": [str(o) for o in
                                ((hydra_doc.get("overrides") or {}).get("hydra") or [])],
            "launcher": choices.get("hydra/launcher"), "sweep_dir": sweep_dir,
            "mode": str(hydra_doc.get("mode") or ""),
            "job_name": (hydra_doc.get("job") or {}).get("name") or "sweep"}


def _launch_file(run_dir: Path) -> dict[str, Any] | None:
    """``launch.json``: what the Slurm launcher wrote when it submitted this job."""
    try:
        return json.loads((run_dir / LAUNCH_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _slurm_query(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def slurm_job_state(job: str) -> str | None:
    """The Slurm state of ``job`` (``RUNNING``, ``PENDING``, ``FAILED``...), ``UNKNOWN`` when
    squeue and sacct answered but do not know it, None when neither could be asked."""
    state = _slurm_query(["squeue", "-h", "-j", job, "-o", "%T"])
    if state:
        return state.splitlines()[0].strip()
    acct = _slurm_query(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"])
    if acct:
        return acct.splitlines()[-1].split()[0].strip()  # "CANCELLED by 0" -> CANCELLED
    return "UNKNOWN" if acct is not None else None


def _slurm_job_of(start: dict[str, Any]) -> str | None:
    if start.get("array_job_id") and start.get("array_task_id") is not None:
        return f"{start['array_job_id']}_{start['array_task_id']}"
    return start.get("job_id")


def _find_log(run_dir: Path, facts: dict[str, Any], slurm_job: str | None) -> Path | None:
    """Slurm's stderr for the run's last job (submitit's folder), else Hydra's job log."""
    if slurm_job and facts.get("sweep_dir"):
        base = Path(facts["sweep_dir"]) / ".submitit"
        if base.is_dir():
            hits = sorted(base.glob(f"{slurm_job}/*_log.err")) or sorted(
                base.glob(f"*/{slurm_job}_*_log.err"))
            if hits:
                return hits[-1]
    local = run_dir / f"{facts.get('job_name') or 'sweep'}.log"
    return local if local.exists() else None


def read_run(run_dir: str | os.PathLike, *, query_slurm: bool = True) -> RunState:
    """The state of one run directory (see the module docstring for the statuses)."""
    run_dir = Path(run_dir)
    facts = _hydra_facts(run_dir)
    try:
        info = RunRecord(run_dir).read_run_json()
    except RecordError as err:
        return RunState(run_dir, "failed", error=str(err), **_state_facts(facts))
    launched = _launch_file(run_dir)
    if info is None:
        state = RunState(run_dir, "not started", why="no run.json", **_state_facts(facts))
        if launched and launched.get("slurm_job"):
            state.slurm_job = launched["slurm_job"]
            if query_slurm:
                state.status, state.why = _submitted_status(launched["slurm_job"])
        state.log = _find_log(run_dir, facts, state.slurm_job)
        return state
    last = _last_metrics_line(run_dir / "metrics.jsonl") or {}
    budget = info.get("budget") or {}
    starts = info.get("starts") or []
    slurm_job = _slurm_job_of(starts[-1]) if starts else None
    if (launched and launched.get("slurm_job") and starts
            and str(launched.get("time", "")) > str(starts[-1].get("time", ""))):
        slurm_job = launched["slurm_job"]  # resubmitted since its last start
    metric_name = ((info.get("study") or {}).get("metric")
                   or next((m for m in SHOWN_METRICS if last.get(m) is not None), None))
    metric = ((metric_name, float(last[metric_name]))
              if metric_name and isinstance(last.get(metric_name), (int, float)) else None)
    state = RunState(
        run_dir, info.get("status", "running"), recorded=info.get("status"),
        experiment=info.get("experiment"), counter=budget.get("counter", "env_steps"),
        target=budget.get("value"),
        env_steps=float(last.get("env_steps", info.get("env_steps") or 0)),
        flops=float(last.get("flops", info.get("flops") or 0)),
        wall_time=last.get("wall_time"), metric=metric, error=info.get("error"),
        slurm_job=slurm_job, **_state_facts(facts))
    state.log = _find_log(run_dir, facts, slurm_job)
    if state.recorded == "running":
        state.status, state.why = _live_status(info, starts, slurm_job, query_slurm)
    elif state.recorded == "failed" and slurm_job and query_slurm and launched \
            and slurm_job == launched.get("slurm_job"):
        waiting = _submitted_status(slurm_job)  # resubmitted: queued or running again?
        if waiting[0] in ("queued", "running"):
            state.status, state.why = waiting
    return state


def _submitted_status(job: str) -> tuple[str, str | None]:
    """A job submitted (``launch.json``) that has not opened or reopened its record yet."""
    state = slurm_job_state(job)
    if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"):
        return "queued", f"Slurm job {job} {state}"
    if state in ("RUNNING", "COMPLETING", "SUSPENDED"):
        return "running", f"Slurm job {job} {state} (starting)"
    if state is None:
        return "unknown", f"Slurm job {job}: squeue/sacct cannot be asked from here"
    return "not started", f"Slurm job {job} ended {state} before the run opened its record"


def _state_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: facts[k] for k in ("overrides", "hydra_overrides", "launcher", "sweep_dir",
                                  "mode")}


def _live_status(info: dict[str, Any], starts: list[dict[str, Any]], slurm_job: str | None,
                 query_slurm: bool) -> tuple[str, str | None]:
    """A record that says ``running``: is its process alive, queued again, or dead?"""
    last = starts[-1] if starts else {}
    here = last.get("host") == socket.gethostname() and last.get("pid")
    if here and _pid_alive(int(last["pid"])):
        return "running", f"pid {last['pid']} alive"
    if slurm_job and query_slurm:
        state = slurm_job_state(slurm_job)
        if state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
            return "running", f"Slurm job {slurm_job} {state}"
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
            return "requeued", f"Slurm job {slurm_job} {state} (started before)"
        if state in SLURM_DEAD:
            return "failed", f"Slurm job {slurm_job} ended {state}"
        if state is None:
            return "unknown", f"Slurm job {slurm_job}: squeue/sacct cannot be asked from here"
        # COMPLETED (or forgotten) while the record says running: stopped by a signal
        return "stopped", f"Slurm job {slurm_job} ended {state} before the budget"
    if here:
        return ("stopped" if info.get("error") else "failed"), \
            f"pid {last['pid']} is gone without writing its end"
    return "unknown", f"started on {last.get('host')} (cannot check from here)"


def find_runs(root: str | os.PathLike, *, query_slurm: bool = True) -> list[RunState]:
    """Every run under ``root``: directories with a ``run.json`` or a Hydra job dir."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs: no such directory {root}")
    dirs: set[Path] = set()
    for marker in ("run.json", ".hydra/overrides.yaml"):
        for path in root.rglob(marker):
            run_dir = path.parent if marker == "run.json" else path.parent.parent
            if ".submitit" not in run_dir.parts and ".resume" not in run_dir.parts:
                dirs.add(run_dir)
    return [read_run(d, query_slurm=query_slurm) for d in sorted(dirs)]


# ------------------------------------------------------------------ formatting
def name_of(state: RunState, root: Path | None = None) -> str:
    if root is not None:
        try:
            rel = state.run_dir.resolve().relative_to(root.resolve())
            return str(rel) if str(rel) != "." else state.run_dir.name
        except ValueError:
            pass
    return state.run_dir.name


def summary_line(state: RunState, name: str | None = None) -> str:
    """``[name] status | steps a/b | FLOPs c/d | metric v | wall t``: one line per run."""
    pct = state.progress
    parts = [f"[{name or state.run_dir.name}] {state.status}"
             + (f" ({100 * pct:.0f}%)" if pct is not None and state.status != "finished" else ""),
             f"steps {fmt_count(state.env_steps)}/{fmt_count(state.target_env_steps())}",
             f"FLOPs {fmt_count(state.flops)}/{fmt_count(state.target_flops())}"]
    if state.metric is not None:
        parts.append(f"{state.metric[0]} {state.metric[1]:.4g}")
    parts.append(f"wall {fmt_duration(state.wall_time)}")
    return " | ".join(parts)


def detail_lines(state: RunState) -> list[str]:
    """Why a run is not finished: its error, how the status was decided, its log."""
    out = []
    if state.why:
        out.append(f"    why: {state.why}")
    if state.error and state.status != "finished":
        out.append(f"    error: {state.error}")
    if state.log is not None and state.status in ("failed", "stopped", "not started"):
        out.append(f"    log: {state.log}")
    return out


# ------------------------------------------------------------------ resume
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_command(states: list[RunState], *, root: Path, launcher: str | None = None,
                   extra: list[str] | None = None, write: bool = True,
                   ) -> tuple[list[list[str]], list[str]]:
    """The ``rl_scaling.sweep`` command lines that relaunch ``states``, and notes on what is
    not relaunched. A multirun job is relaunched into its own directory through a plan file
    written under ``<sweep dir>/.resume/`` (not written when ``write`` is false), one command
    per sweep dir, launcher and experiment; a single run (``hydra.mode=RUN``) with
    ``hydra.run.dir`` set to its directory. ``extra`` overrides go to every job."""
    from rl_scaling.launch import merge_overrides
    from sweeps.plan import Plan, save_plan

    notes: list[str] = []
    groups: dict[tuple, list[RunState]] = {}
    singles: list[list[str]] = []
    for s in states:
        if not s.overrides and not (s.run_dir / ".hydra").is_dir():
            # seeds_per_process: seed dirs 2..K are written by the job of seed 1's dir
            notes.append(f"not relaunched: {s.run_dir} has no .hydra/ (a seeds_per_process "
                         "seed dir: it resumes with its job's dir, the one of its first seed)")
            continue
        # device=cuda:K was assigned by the local launcher; the relaunch assigns again
        own = [o for o in s.overrides if not (_key(o) == "device" and "cuda:" in o)]
        experiment = next((o.split("=", 1)[1] for o in own if _key(o) == "experiment"),
                          s.experiment)
        hydra_over = tuple(o for o in s.hydra_overrides
                           if _key(o) not in ("hydra.mode", "hydra.sweep.dir", "hydra.run.dir",
                                              "hydra/sweeper")
                           and not _key(o).startswith("hydra.sweeper")
                           and not (launcher and (_key(o) == "hydra/launcher"
                                                  or _key(o).startswith("hydra.launcher."))))
        if s.mode == "RUN":
            singles.append([sys.executable, "-m", "rl_scaling.sweep",
                            *merge_overrides(own, extra or []), *hydra_over,
                            f"hydra.run.dir={s.run_dir.resolve()}"])
            continue
        if not experiment:
            notes.append(f"not relaunched: {s.run_dir} names no experiment")
            continue
        sweep_dir = s.sweep_dir or s.run_dir.parent
        groups.setdefault((experiment, str(sweep_dir.resolve()), s.launcher, hydra_over),
                          []).append(s)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    commands = []
    for i, ((experiment, sweep_dir, used_launcher, hydra_over), group) in enumerate(
            sorted(groups.items(), key=lambda kv: kv[0][1])):
        jobs = [merge_overrides([o for o in s.overrides if _key(o) != "experiment"
                                 and not (_key(o) == "device" and "cuda:" in o)], extra or [])
                for s in group]
        plan = Plan(experiment=experiment, jobs=jobs,
                    summary={"runs": len(jobs), "resumed_from": str(root)},
                    notes=[f"runs resume: {s.status} {s.run_dir}" for s in group])
        path = Path(sweep_dir) / ".resume" / f"plan-{stamp}-{i}.yaml"
        if write:
            save_plan(plan, path)
        cmd = [sys.executable, "-m", "rl_scaling.sweep", "-m", f"+experiment={experiment}",
               "hydra/sweeper=plan", f"hydra.sweeper.plan={path}",
               f"hydra.sweep.dir={sweep_dir}", *hydra_over]
        chosen = launcher or used_launcher
        if chosen and not any(_key(o) == "hydra/launcher" for o in hydra_over):
            cmd.append(f"hydra/launcher={chosen}")
        commands.append(cmd)
    return commands + singles, notes


# ------------------------------------------------------------------ command line
def _print_table(states: list[RunState], root: Path, only_unfinished: bool) -> None:
    for s in states:
        if only_unfinished and s.status == "finished":
            continue
        print(summary_line(s, name_of(s, root)))
        if only_unfinished:
            for line in detail_lines(s):
                print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rl_scaling.runs",
        description="Run bookkeeping for a sweep directory: list, check and resume runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ls", "every run, one line each"),
                       ("status", "counts by status, then every unfinished run with why"),
                       ("resume", "relaunch failed, stopped and never-started runs")):
        p = sub.add_parser(name, help=text)
        p.add_argument("root", help="a sweep directory (or any folder above run records)")
        p.add_argument("--no-slurm", action="store_true",
                       help="do not ask squeue/sacct about Slurm jobs")
        if name == "resume":
            p.add_argument("--dry-run", action="store_true",
                           help="print the commands instead of running them")
            p.add_argument("--launcher", default=None,
                           help="launch through this hydra/launcher (default: the sweep's)")
            p.add_argument("extra", nargs="*", help="more overrides for the relaunch")
    args, unknown = parser.parse_known_args(argv)
    if unknown and (args.command != "resume"
                    or any(u.startswith("-") or "=" not in u for u in unknown)):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:  # KEY=VALUE overrides given after the flags
        args.extra = [*args.extra, *unknown]
    root = Path(args.root)
    try:
        states = find_runs(root, query_slurm=not args.no_slurm)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not states:
        print(f"error: runs: no run records under {root}", file=sys.stderr)
        return 2
    if args.command == "ls":
        _print_table(states, root, only_unfinished=False)
        return 0
    counts = Counter(s.status for s in states)
    if args.command == "status":
        print(f"{len(states)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
        _print_table(states, root, only_unfinished=True)
        return 0
    todo = [s for s in states if s.status in RESUMABLE]
    if not todo:
        print(f"nothing to resume: {len(states)} runs, "
              + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
        return 0
    commands, notes = resume_command(todo, root=root, launcher=args.launcher,
                                     extra=args.extra, write=not args.dry_run)
    print(f"resuming {len(todo)} of {len(states)} runs:")
    for s in todo:
        print(f"  {s.status}: {name_of(s, root)}")
    for note in notes:
        print(f"  {note}")
    rc = 0
    for cmd in commands:
        print("$ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = max(rc, subprocess.run(cmd, env=dict(os.environ)).returncode)
    return rc


if __name__ == "__main__":
    sys.exit(main())
