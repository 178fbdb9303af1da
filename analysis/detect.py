"""Which studies one experiment's runs support: read from their declaration, else guessed.

An experiment states its study once (``study: {kind, axes, metric}`` in its config; the
trainer writes it into ``run.json``, :mod:`rl_scaling.record`). The collector flattens it
into the columns ``study.kind``, ``study.metric`` and ``study.axes.<role>`` (the config
key of each role), and :func:`detect` turns it into one :class:`~analysis.study.Study`:

- the kind is the declared one; runs of one experiment that declare different kinds get
  a one-line note and the most common kind is used (likewise differing axes or metric
  within that kind: the most common declaration);
- each role's column is the config key the declaration names (``study.axes.sigma`` ->
  e.g. ``algo.replay_ratio``); a named key that is not a column of these runs is dropped
  with a note; nothing is guessed from key names;
- the metric is the declared one (the command line's ``--metric`` overrides it).

Records without a declaration (written before record format 2, or by experiments that
declare none) are guessed from config key names as before (:func:`guess`):

- ``utd``: a config key ending in ``utd`` or ``utd_ratio`` varies (batch size from
  ``algo.batch_size``/``algo.batch``, learning rate from ``algo.lr``/``algo.learning_rate``,
  task from ``env.id``);
- ``generalization``: a config key containing ``complexity`` varies;
- ``isoflop``: no env steps (or ``algo.name == "bc"``), >= 2 model sizes and FLOPs;
- ``scaling``: otherwise, when >= 2 model sizes (``params.effective``; knob
  ``model.width``/``model.depth``);
- ``curves`` when none of these applies.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pandas as pd

from analysis import curves
from analysis.study import SIZE_KNOBS, Study, size_columns
from rl_scaling.record import STUDY_AXES, STUDY_KINDS, check_study

KIND_COLUMN = "study.kind"
METRIC_COLUMN = "study.metric"
AXES_PREFIX = "study.axes."
# Roles a study kind cannot run without.
REQUIRED_AXES = {"utd": ("sigma",), "generalization": ("complexity",)}


# --------------------------------------------------------------------------- guessing


def utd_column(df: pd.DataFrame) -> str | None:
    """The config key holding the UTD ratio, if it varies (guessed from its name)."""
    cands = [c for c in curves.config_columns(df) if re.search(r"(^|\.)(utd|utd_ratio)$", c)]
    v = curves.varying(df, cands)
    return v[0] if v else None


def complexity_column(df: pd.DataFrame) -> str | None:
    """A varying config key naming problem complexity (e.g. ``env.complexity``)."""
    v = curves.varying(df, [c for c in curves.config_columns(df) if "complexity" in c])
    return v[0] if v else None


def _first_column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in df), None)


def guess(df: pd.DataFrame) -> list[Study]:
    """The studies one experiment's rows support, guessed from config key names (records
    without a declared study; see the module docstring)."""
    studies: list[Study] = []
    size_axes = {r: c for r, c in SIZE_KNOBS.items() if c in df}
    bc = curves.data_column(df) == "samples" or (
        "algo.name" in df and df["algo.name"].astype(str).eq("bc").all())
    n_col, _, _ = size_columns(df)
    n_sizes = df[n_col].nunique() if n_col else 0
    scol = utd_column(df)
    if scol:
        axes = {"sigma": scol}
        for role, names in (("batch_size", ("algo.batch_size", "algo.batch")),
                            ("lr", ("algo.lr", "algo.learning_rate")), ("task", ("env.id",))):
            col = _first_column(df, names)
            if col is not None:
                axes[role] = col
        studies.append(Study("utd", axes))
    ccol = complexity_column(df)
    if ccol:
        studies.append(Study("generalization", {"complexity": ccol}))
    if bc and n_sizes >= 2 and "flops" in df:
        studies.append(Study("isoflop", dict(size_axes)))
    elif not studies and n_sizes >= 2:
        studies.append(Study("scaling", dict(size_axes)))
    if not studies:
        studies.append(Study("curves", dict(size_axes)))
    return studies


def detect_studies(df: pd.DataFrame) -> list[str]:
    """The kinds of the studies :func:`detect` finds (declared or guessed)."""
    return [s.kind for s in detect(df)]


# --------------------------------------------------------------------------- declared


def _cell(v: Any) -> Any:
    """A table cell as a plain value: missing (None/NaN) as None."""
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):  # an array-like cell: not missing
        pass
    return v


def _declarations(df: pd.DataFrame) -> tuple[list[dict[str, Any] | None], list[str]]:
    """One entry per run: its declared study (``check_study``'s dict) or None; and notes
    on declarations that are not valid studies (those runs count as undeclared)."""
    per_run = df.drop_duplicates("run_dir") if "run_dir" in df else df
    axis_cols = [c for c in df.columns if str(c).startswith(AXES_PREFIX)]
    out: list[dict[str, Any] | None] = []
    bad: Counter[str] = Counter()
    for _, row in per_run.iterrows():
        kind = _cell(row.get(KIND_COLUMN))
        if kind is None:
            out.append(None)
            continue
        axes = {c[len(AXES_PREFIX):]: _cell(row[c]) for c in axis_cols}
        raw = {"kind": kind, "axes": {r: k for r, k in axes.items() if k is not None},
               "metric": _cell(row.get(METRIC_COLUMN))}
        try:
            out.append(check_study(raw))
        except ValueError as err:
            bad[str(err)] += 1
            out.append(None)
    notes = [f"{n} run(s) declare an invalid study ({why}): ignored" for why, n in bad.items()]
    return out, notes


def _key(decl: dict[str, Any]) -> str:
    return json.dumps({"axes": decl["axes"], "metric": decl["metric"]}, sort_keys=True)


def declared(df: pd.DataFrame) -> Study | None:
    """The study the runs of one experiment declare, or None if none declares one.

    The most common kind wins (a note lists the others), then the most common declaration
    of that kind; the runs that declare nothing are noted. Axes whose config key is not a
    column of these runs are dropped with a note; a kind missing a required axis
    (:data:`REQUIRED_AXES`) is noted and kept (its driver reports why it cannot run).
    """
    return _declared(df)[0]


def _declared(df: pd.DataFrame) -> tuple[Study | None, list[str]]:
    """:func:`declared`, and the notes on invalid declarations when none is valid."""
    if KIND_COLUMN not in df:
        return None, []
    decls, notes = _declarations(df)
    found = [d for d in decls if d is not None]
    if not found:
        return None, notes
    kinds = Counter(d["kind"] for d in found)
    # most common first; ties broken by STUDY_KINDS order, so the choice is deterministic
    kind = max(kinds, key=lambda k: (kinds[k], -STUDY_KINDS.index(k)))
    if len(kinds) > 1:
        counts = ", ".join(f"{k}: {n}" for k, n in kinds.most_common())
        notes.append(f"runs declare different study kinds ({counts} runs); using {kind}")
    same = [d for d in found if d["kind"] == kind]
    variants = Counter(_key(d) for d in same)
    best = max(variants, key=lambda k: (variants[k], k))
    decl = next(d for d in same if _key(d) == best)
    if len(variants) > 1:
        notes.append(f"runs declaring {kind} differ in axes or metric ({len(variants)} "
                     f"variants); using the most common ({variants[best]} of {len(same)} runs)")
    undeclared = len(decls) - len(found)
    if undeclared:
        notes.append(f"{undeclared} of {len(decls)} run(s) declare no valid study; the "
                     "others' declaration is used")
    axes: dict[str, str] = {}
    # roles in STUDY_AXES order (the flattened columns come sorted by name)
    for role, key in sorted(decl["axes"].items(), key=lambda rk: STUDY_AXES.index(rk[0])):
        if key in df:
            axes[role] = key
        else:
            notes.append(f"study.axes.{role}={key} is not a config key of these runs: ignored")
    for role in REQUIRED_AXES.get(kind, ()):
        if role not in axes:
            notes.append(f"a {kind} study needs study.axes.{role}")
    return Study(kind, axes, metric=decl["metric"], declared=True, notes=notes), []


def detect(df: pd.DataFrame) -> list[Study]:
    """The studies to run on one experiment's rows: its declared study if its runs declare
    one (:func:`declared`), else the guessed ones (:func:`guess`)."""
    study, notes = _declared(df)
    if study is not None:
        return [study]
    studies = guess(df)
    for st in studies:
        st.notes.extend(notes)
    return studies
