"""``python -m sweeps isoflop|utd ...``: plan a study, print the plan, write the plan file.

    python -m sweeps isoflop --experiment mnist_width --budgets 1e12,3e12,1e13 \\
        --sizes model.width=0.125,0.25,0.5,1 [--seeds 1,2] [--snapshots] [--out FILE] \\
        [--min-steps N] [--max-steps N] [--grid KEY=V1,V2] [--probe-override KEY=V] \\
        [--throughput-from RUNS | --flops-per-second X] [-- extra overrides]
    python -m sweeps utd --experiment gym_utd --laws reports/gym_utd/laws.json \\
        --sigmas 0.5,1,2,4 [--task Pendulum-v1] [--seeds 1] [--budget 20000|flops=1e12] ...

Each prints one line per job (its overrides, lr, env steps, FLOPs, hours), the planner's
notes (what it dropped and why), a summary (runs, total FLOPs, interactions, estimated
GPU-hours and how they were estimated) and the command that launches the plan. Bad input
is one line naming the flag, key or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys

from sweeps.plan import save_plan
from sweeps.probe import Planned, PlannerError, Throughput


def _floats(flag: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected numbers "
                                             "separated by commas") from None
        if not values or any(not math.isfinite(v) or v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected positive numbers")
        return values
    return parse


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected integers") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="configs/experiment/NAME.yaml")
    p.add_argument("--seeds", type=_ints, help="seeds (default: the experiment's grid)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace or add an axis every job is crossed with (repeatable)")
    p.add_argument("--out", help="plan file to write (default: plans/<experiment>_<planner>"
                   ".yaml)")
    p.add_argument("--probe-override", action="append", default=[], metavar="KEY=V",
                   help="override for the probes only, to keep them cheap (repeatable); the "
                        "output says if it changes the FLOPs per env step")
    p.add_argument("--probe-max-steps", type=_number, default=200_000,
                   help="give up a probe that has no steady FLOPs per step by then")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--throughput-from", metavar="RUNS",
                      help="run records made on the target GPU: hours from their throughput")
    rate.add_argument("--flops-per-second", type=_number, metavar="X",
                      help="effective FLOPs/s of the target machine: hours = FLOPs / X")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sweeps", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="planner", required=True, parser_class=_Parser)
    iso = sub.add_parser("isoflop", help="FLOP budgets x model sizes -> run lengths")
    _common(iso)
    iso.add_argument("--budgets", type=_floats("--budgets"), required=True,
                     help="effective FLOPs per run, e.g. 1e12,3e12,1e13")
    iso.add_argument("--sizes", action="append", required=True, metavar="KEY=V1,V2",
                     help="size axis: a config key or study role (width); repeat to cross")
    iso.add_argument("--snapshots", action="store_true",
                     help="one run per size to its largest budget, snapshots at each budget")
    iso.add_argument("--min-steps", type=_number, default=0,
                     help="drop runs shorter than this many env steps")
    iso.add_argument("--max-steps", type=_number, default=math.inf,
                     help="drop runs longer than this many env steps")
    utd = sub.add_parser("utd", help="UTD stage 2: B and eta per sigma from stage 1's laws")
    _common(utd)
    utd.add_argument("--laws", required=True, help="stage 1's laws.json (python -m analysis)")
    utd.add_argument("--study", help="which UTD study of laws.json (its key) if several")
    utd.add_argument("--sigmas", type=_floats("--sigmas"),
                     help="UTD ratios (default: the experiment's grid)")
    utd.add_argument("--task", help="tasks, comma separated (default: the experiment's grid)")
    utd.add_argument("--budget", help="budget.value in the experiment's counter, or "
                     "COUNTER=VALUE (env_steps=1e6, flops=1e13); default: the experiment's")
    utd.add_argument("--batch-round", choices=("pow2", "int"), default="pow2",
                     help="B*(sigma) to the nearest power of two (default) or integer")
    utd.add_argument("--batch-min", type=int, default=16)
    utd.add_argument("--batch-max", type=int, default=2048)
    utd.add_argument("--no-probe", action="store_true",
                     help="do not probe: env steps only (no FLOPs or hours)")
    return p


def _si(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def render(planned: Planned, path: str) -> str:
    """The printed plan: header, one line per job, notes, summary, launch command."""
    rows, plan = planned.rows, planned.plan
    cols = [(" ".join(r.overrides), _si(r.lr),
             "-" if r.env_steps is None else f"{r.env_steps:,.0f}",
             _si(r.flops), "-" if r.hours is None else f"{r.hours:.3g}") for r in rows]
    head = ("overrides", "lr", "env steps", "FLOPs", "hours")
    width = [max(len(c[i]) for c in [head, *cols]) for i in range(5)]
    line = "  ".join([f"{{:<{width[0]}}}"] + [f"{{:>{w}}}" for w in width[1:]])
    seeds = {r.runs for r in rows}
    per = (f" (per seed; each job trains {rows[0].runs} seeds, seeds_per_process)"
           if seeds != {1} else "")
    out = [planned.header, *planned.probe_lines]
    if plan.common:
        out.append(f"every job: {' '.join(plan.common)}")
    out += [f"jobs{per}:", "  " + line.format(*head)]
    out += ["  " + line.format(*c) for c in cols]
    for note in plan.notes:
        out.append(f"note: {note}")
    s = planned.summary()
    flops = "unknown (not probed)" if s["flops"] is None else f"{s['flops']:.3g}"
    steps = "unknown" if s["env_steps"] is None else f"{s['env_steps']:,}"
    hours = "unknown" if s["gpu_hours"] is None else f"{s['gpu_hours']:.3g}"
    out += [f"summary: {s['runs']} runs in {s['jobs']} jobs, {flops} effective FLOPs, "
            f"{steps} interactions (env steps), {hours} GPU-hours",
            f"  GPU-hours: {planned.throughput}",
            f"plan: {path}", f"launch: {plan.command(path)}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = parser().parse_args(argv)

    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        throughput = Throughput(args.flops_per_second, args.throughput_from)
        if args.planner == "isoflop":
            from sweeps.isoflop import plan_isoflop

            planned = plan_isoflop(
                args.experiment, args.budgets, args.sizes, seeds=args.seeds, grid=args.grid,
                snapshots=args.snapshots, min_steps=args.min_steps, max_steps=args.max_steps,
                extra=extra, probe_overrides=args.probe_override,
                probe_max_steps=args.probe_max_steps, throughput=throughput, echo=echo)
        else:
            from sweeps.utd import plan_utd, read_utd_laws

            laws = read_utd_laws(args.laws, args.study)
            planned = plan_utd(
                args.experiment, laws, sigmas=args.sigmas,
                tasks=args.task.split(",") if args.task else None, seeds=args.seeds,
                grid=args.grid, budget=args.budget, batch_round=args.batch_round,
                batch_min=args.batch_min, batch_max=args.batch_max, extra=extra,
                probe=not args.no_probe, probe_overrides=args.probe_override,
                probe_max_steps=args.probe_max_steps, throughput=throughput, echo=echo)
    except PlannerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = args.out or f"plans/{args.experiment}_{args.planner}.yaml"
    save_plan(planned.plan, path)
    print(render(planned, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
