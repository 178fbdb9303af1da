"""``python -m analysis --runs DIR [--runs DIR2] --out DIR``: from run records to a report.

1. Collect every run record under the roots into the tidy table (:mod:`analysis.collect`;
   Parquet cache in the output directory, refreshed only where runs changed).
2. Split the table by ``experiment`` and detect its studies (:mod:`analysis.detect`): the
   study its runs declare in ``run.json`` (``study: {kind, axes, metric}``), else the ones
   guessed from config key names for records without a declaration. The report says, per
   study, which it was.
3. Dispatch each study to its driver (:data:`DRIVERS`): ``scaling`` and ``curves``
   (:mod:`analysis.scaling`), ``isoflop`` (:mod:`analysis.isoflop`), ``utd``
   (:mod:`analysis.utd`), ``generalization`` (:mod:`analysis.generalization`), ``horizon``
   (:mod:`analysis.horizon`). A law that
   cannot be fitted gets a one-line reason in the report, never a crash.
4. Write figures (PNG + PDF), ``report.md`` and ``laws.json`` (:mod:`analysis.report`;
   docs/analysis.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import collect, curves, detect, figures, horizon, isoflop, scaling, utd
from analysis import generalization as generalization_study
from analysis.fitting import one_blas_thread, one_line
from analysis.report import StudyResult, write_outputs
from analysis.study import Options, Study, choose_metric

log = logging.getLogger(__name__)

Driver = Callable[[StudyResult, pd.DataFrame, Study, str, Path, Options], None]
# One driver per study kind (rl_scaling.record.STUDY_KINDS).
DRIVERS: dict[str, Driver] = {
    "scaling": scaling.run_scaling,
    "curves": scaling.run_curves,
    "isoflop": isoflop.run_study,
    "utd": utd.run_study,
    "generalization": generalization_study.run_study,
    "horizon": horizon.run_study,
}
TITLES = {
    "scaling": "Model-size scaling: learning curves, compute-efficient frontier, intrinsic "
               "performance",
    "isoflop": "isoFLOP profiles and compute-optimal allocation (imitation)",
    "utd": "UTD-ratio scaling (value-based RL)",
    "generalization": "Generalization vs problem complexity",
    "curves": "Learning curves",
    "horizon": "Task horizon: scaling laws per horizon, interactions needed vs horizon",
}


def _run_notes(summary: pd.DataFrame) -> list[str]:
    """Report notes on the runs themselves: unfinished, truncated, without log points."""
    notes = []
    for status in ("running", "failed", "diverged"):
        names = summary.loc[summary["status"] == status, "run_id"].astype(str).tolist()
        if names:
            notes.append(f"{len(names)} {status} run(s), included as far as they got: "
                         + ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
    if "truncated" in summary and summary["truncated"].any():
        notes.append(f"{int(summary['truncated'].sum())} run(s) had a malformed metrics line "
                     "(skipped)")
    return notes


def run_pipeline(
    table: pd.DataFrame,
    out_dir: str | Path,
    *,
    roots: Sequence[str | Path] = (),
    metric: str | None = None,
    budget: float | None = None,
    n_boot: int = 50,
    thresholds: Sequence[float] | None = None,
    generalization: Mapping[str, Any] | None = None,
    loss_offset: bool = False,
) -> list[StudyResult]:
    """Run every study the table supports, write figures, ``report.md`` and ``laws.json``.

    ``metric`` overrides each study's declared (or default) metric. ``generalization``:
    keyword arguments of :func:`analysis.generalization.study_generalization` (``level``,
    ``criterion``, ``fraction``, ``percentile``). ``loss_offset``: the isoFLOP study fits
    ``L_opt`` as a power law plus constant (:func:`analysis.isoflop.study_isoflop`)."""
    opts = Options(n_boot=n_boot, budget=budget, thresholds=thresholds,
                   generalization=generalization, loss_offset=loss_offset)
    out = Path(out_dir)
    fig_dir = out / "figures"
    summary = collect.run_summary(table)
    run_counts = summary["status"].value_counts().to_dict() if len(summary) else {}
    notes = _run_notes(summary)
    rows = table[table["step"] >= 0].copy() if "step" in table else table.copy()
    empty = sorted(set(summary["run_id"]) - set(rows["run_id"])) if len(summary) else []
    if empty:
        notes.append(f"{len(empty)} run(s) have no log point yet: " + ", ".join(empty[:8]))
    if "experiment" not in rows:
        rows["experiment"] = "all"
    rows["experiment"] = rows["experiment"].fillna("").astype(str).replace("", "default")
    studies: list[StudyResult] = []
    used: list[str] = []
    for exp, df in rows.groupby("experiment", sort=True):
        df = df.copy()
        df["config_id"] = curves.config_id(df)
        specs = detect.detect(df)
        bc = any(s.kind == "isoflop" for s in specs)
        for spec in specs:
            kind = spec.kind
            m = choose_metric(df, metric or spec.metric, bc)
            st = StudyResult(key=f"{exp}/{kind}", study=kind, experiment=str(exp),
                             title=f"{exp}: {TITLES[kind]}",
                             source="declared" if spec.declared else "guessed")
            st.context["study"] = spec.describe()
            st.context["runs"] = int(df["run_dir"].nunique())
            st.notes.extend(spec.notes)
            studies.append(st)
            if m is None:
                wanted = metric or spec.metric
                st.skipped[kind] = (f"no metric {wanted!r} in the log points" if wanted else
                                    "no return or loss metric in the log points")
                continue
            st.context["metric"] = m
            if m not in used:
                used.append(m)
            try:
                DRIVERS[kind](st, df, spec, m, fig_dir, opts)
            except Exception as err:  # noqa: BLE001 - one study failing must not stop the rest
                st.skipped[kind] = one_line(err)
                log.warning("study %s stopped: %s", st.key, st.skipped[kind])
                log.debug("%s", traceback.format_exc())
    used_metric = ", ".join(used) if used else (metric or "none")
    write_outputs(studies, out, roots=roots, metric=used_metric, run_counts=run_counts,
                  notes=notes)
    return studies


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m analysis``."""
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Read run records, fit scaling laws, write figures, report.md and "
                    "laws.json. Subcommands: `fit` (fit a CSV), `synth` (synthetic records).")
    p.add_argument("--runs", action="append", metavar="DIR",
                   help="runs root (repeatable; default: runs); every directory with run.json "
                        "under it")
    p.add_argument("--out", default="reports/latest", metavar="DIR",
                   help="output directory (default: reports/latest, as `make analysis`)")
    p.add_argument("--metric", default=None,
                   help="performance metric of every study (default: the one each study "
                        "declares, else return_mean/eval_return for RL, val_loss for BC)")
    p.add_argument("--budget", type=float, default=None,
                   help="compute budget (FLOPs) to forecast at (default: 10x the largest)")
    p.add_argument("--threshold", type=float, action="append", default=None,
                   help="return threshold J for the UTD workflow (repeatable)")
    p.add_argument("--n-boot", type=int, default=50, help="bootstrap resamples (50)")
    p.add_argument("--gen-criterion", choices=generalization_study.GENERALIZATION_CRITERIA,
                   default="fraction",
                   help="sufficient generalization: 'fraction' (normalised score >= "
                        "--gen-level on at least --gen-fraction of the test tasks) or "
                        "'lowest' (mean of the lowest --gen-percentile %% >= --gen-level)")
    p.add_argument("--gen-level", type=float, default=0.8,
                   help="normalised test-score threshold (0.8)")
    p.add_argument("--gen-fraction", type=float, default=0.95,
                   help="fraction of test tasks that must reach it (0.95)")
    p.add_argument("--gen-percentile", type=float, default=10.0,
                   help="lowest percentile of test tasks averaged by 'lowest' (10)")
    p.add_argument("--loss-offset", action="store_true",
                   help="isoFLOP study: fit L_opt = L_inf + c C^k (power law plus constant; "
                        "needs 4 budgets) instead of L_opt = c C^k")
    p.add_argument("--formats", default="png,pdf",
                   help="figure file types, comma separated (default png,pdf)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not keep the tidy table as OUT/table.parquet")
    p.add_argument("-v", "--verbose", action="store_true", help="log each skipped fit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m analysis``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.runs = args.runs or ["runs"]  # append-action defaults would be appended to
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    try:
        table = collect.collect(args.runs, cache=None if args.no_cache else
                                out / "table.parquet")
    except collect.RunsRootError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    saved = figures.FORMATS
    figures.FORMATS = tuple(f.strip().lstrip(".") for f in args.formats.split(",")
                            if f.strip()) or saved
    try:
        with one_blas_thread():  # many tiny fits: BLAS threads only add waiting
            studies = run_pipeline(table, out, roots=args.runs, metric=args.metric,
                                   budget=args.budget, n_boot=args.n_boot,
                                   thresholds=args.threshold,
                                   generalization={"level": args.gen_level,
                                                   "criterion": args.gen_criterion,
                                                   "fraction": args.gen_fraction,
                                                   "percentile": args.gen_percentile},
                                   loss_offset=args.loss_offset)
    finally:
        figures.FORMATS = saved
    n_fits = sum(len(s.fits) for s in studies)
    n_figs = sum(1 for s in studies for f in s.figures if f.suffix == ".png")
    n_skip = sum(len(s.skipped) for s in studies)
    print(f"{len(studies)} studies, {n_fits} fitted laws, {n_figs} figures, {n_skip} not "
          f"fitted -> {out / 'report.md'}, {out / 'laws.json'}")
    return 0
