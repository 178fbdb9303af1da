"""``report.md`` and ``laws.json`` from the studies the pipeline ran.

``report.md`` is for people: per study, what it is, its figures, a table per fitted law
(estimate and 95% interval per parameter, how it was fitted) and forecasts; a law that
could not be fitted gets one line saying why. ``laws.json`` is for sweep planners: the
same fits as ``FitResult.to_json()`` under stable keys (schema in docs/analysis.md).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

LAWS_SCHEMA = "rl-scaling/laws/v1"


@dataclass
class StudyResult:
    """What one study produced: fitted laws, forecasts, figures and what was skipped.

    ``key`` is ``"<experiment>/<study>"`` (unique in laws.json); ``source`` says whether
    the study was ``"declared"`` in the runs' ``run.json`` or ``"guessed"`` from config key
    names; ``skipped`` maps a law's name to the one-line reason it was not fitted;
    ``tables`` holds small frames shown in the report (e.g. data to threshold per UTD
    ratio).
    """

    key: str
    study: str
    experiment: str
    title: str
    source: str = ""
    description: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    fits: dict[str, Any] = field(default_factory=dict)  # name -> fitting.FitResult
    forecasts: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fmt(v: Any) -> str:
    """A number in 4 significant digits; text as is; missing as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        if not math.isfinite(float(v)):
            return "—"
        return f"{float(v):.4g}"
    return str(v)


def fit_table(fit: Any) -> str:
    """Markdown table of a ``FitResult``: parameter, estimate, 95% interval."""
    level = fit.extra.get("level", 0.95) if isinstance(fit.extra, dict) else 0.95
    lines = [f"| parameter | estimate | {level:.0%} interval |", "|---|---|---|"]
    for name, value in fit.params.items():
        lo, hi = fit.ci.get(name, (None, None))
        interval = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None else "—"
        lines.append(f"| {name} | {fmt(value)} | {interval} |")
    return "\n".join(lines)


def frame_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    """Markdown table of a small frame (numbers in 4 significant digits)."""
    if df.empty:
        return "(empty)"
    shown = df.head(max_rows)
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |",
             "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows not shown)")
    return "\n".join(lines)


def fit_notes(fit: Any, max_dropped: int = 8) -> list[str]:
    """Lines under a fit's table: parameters held fixed (``extra["fixed"]``, e.g. a known
    floor), what it used, what it dropped and why, and its flags."""
    lines = []
    extra = fit.extra if isinstance(getattr(fit, "extra", None), dict) else {}
    if extra.get("fixed"):
        lines.append("- fixed (not fitted): " + ", ".join(
            f"{k} = {fmt(v)}" for k, v in extra["fixed"].items()))
    used, dropped = getattr(fit, "used", []), getattr(fit, "dropped", [])
    if used or dropped:
        lines.append(f"- used {len(used)}: " + ", ".join(fmt(u) for u in used[:20])
                     + (" ..." if len(used) > 20 else ""))
    if dropped:
        lines.append(f"- dropped {len(dropped)}:")
        for d in dropped[:max_dropped]:
            lines.append(f"  - {fmt(d.get('what'))}: {d.get('reason')}")
        if len(dropped) > max_dropped:
            lines.append(f"  - ... {len(dropped) - max_dropped} more (all in `laws.json`)")
    for message in getattr(fit, "flags", []):
        lines.append(f"- **flag:** {message}")
    return lines


def _method_line(fit: Any) -> str:
    ex = fit.extra if isinstance(fit.extra, dict) else {}
    bits = [f"law `{fit.law}`", f"{fit.n_points} points", f"loss {fmt(fit.loss)}"]
    if ex.get("method"):
        bits.append(str(ex["method"]))
    if ex.get("form"):
        bits.insert(1, f"`{ex['form']}`")
    return "; ".join(bits)


def render_report(
    studies: Sequence[StudyResult],
    *,
    out_dir: str | Path,
    roots: Sequence[str | Path],
    metric: str,
    run_counts: Mapping[str, int],
    notes: Sequence[str] = (),
) -> str:
    """The text of ``report.md`` (figures linked relative to ``out_dir``)."""
    out_dir = Path(out_dir)
    total = sum(run_counts.values())
    status = ", ".join(f"{n} {s}" for s, n in sorted(run_counts.items()))
    lines = [
        "# Scaling analysis report",
        "",
        f"- runs roots: {', '.join(f'`{r}`' for r in roots)}",
        f"- runs: {total} ({status})",
        f"- performance metric: `{metric}`",
        f"- generated: {dt.datetime.now().isoformat(timespec='seconds')}",
        "- intervals are 95% unless a table says otherwise; fitted values and intervals are"
        " also in `laws.json`.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    if not studies:
        lines += ["", "No study could be run on these runs (see the notes above)."]
    for st in studies:
        lines += ["", f"## {st.title}", ""]
        if st.description:
            lines += [st.description, ""]
        for k, v in st.context.items():
            lines.append(f"- {k}: {fmt(v) if not isinstance(v, str) else v}")
        lines += st.notes and [""] + [f"- {n}" for n in st.notes] or []
        for fig in st.figures:
            if fig.suffix == ".png":
                rel = os.path.relpath(fig, out_dir)
                lines += ["", f"![{fig.stem}]({rel})"]
        for name, fit in st.fits.items():
            lines += ["", f"### {name}", "", _method_line(fit), "", fit_table(fit)]
            notes = fit_notes(fit)
            if notes:
                lines += ["", *notes]
        if st.forecasts:
            lines += ["", "### Forecasts", "", "| quantity | at | estimate | interval |",
                      "|---|---|---|---|"]
            for name, fc in st.forecasts.items():
                interval = f"[{fmt(fc.get('low'))}, {fmt(fc.get('high'))}]"
                lines.append(f"| {name} | {fc.get('at', '')} | {fmt(fc.get('value'))} | "
                             f"{interval} |")
        for name, df in st.tables.items():
            lines += ["", f"### {name}", "", frame_table(df)]
        if st.skipped:
            lines += [""]
            lines += [f"- not fitted: {name}: {why}" for name, why in st.skipped.items()]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """Plain JSON: FitResults through their own ``to_json``, NaN as null."""
    if hasattr(obj, "to_json") and not isinstance(obj, pd.DataFrame):
        return obj.to_json()
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return _json_safe(obj.to_dict(orient="records"))
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def laws_payload(
    studies: Sequence[StudyResult],
    *,
    roots: Sequence[str | Path],
    metric: str,
    run_counts: Mapping[str, int],
) -> dict[str, Any]:
    """The ``laws.json`` document (schema ``rl-scaling/laws/v1``, see docs/analysis.md)."""
    return _json_safe({
        "schema": LAWS_SCHEMA,
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "roots": [str(Path(r).resolve()) for r in roots],
        "metric": metric,
        "runs": dict(run_counts),
        "studies": {
            st.key: {
                "study": st.study,
                "source": st.source,
                "experiment": st.experiment,
                "context": st.context,
                "fits": st.fits,
                "forecasts": st.forecasts,
                "skipped": st.skipped,
                "figures": [p.name for p in st.figures if p.suffix == ".png"],
            }
            for st in studies
        },
    })


def write_outputs(
    studies: Sequence[StudyResult],
    out_dir: str | Path,
    *,
    roots: Sequence[str | Path],
    metric: str,
    run_counts: Mapping[str, int],
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``laws.json`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    report.write_text(render_report(studies, out_dir=out_dir, roots=roots, metric=metric,
                                    run_counts=run_counts, notes=notes))
    laws = out_dir / "laws.json"
    payload = laws_payload(studies, roots=roots, metric=metric, run_counts=run_counts)
    laws.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return report, laws
