"""``python -m analysis fit LAW --csv FILE --col ROLE=COLUMN ... [--json]``: fit your own table.

Researchers often have numbers from elsewhere (a paper's table, another codebase). This
fits one law to the rows of a CSV and prints the fitted parameters with their intervals.

==========  ======================  ==========================================
LAW         roles                   parameters
==========  ======================  ==========================================
chinchilla  N, D (or C), loss       E, A, B, alpha, beta, a, b
isoflop     N, C, loss              a, b, L_exponent, L_inf  (``--offset`` fits L_inf)
power       x, y                    c, k, offset  (``--offset`` fits a constant)
utd         sigma, D                D_min, beta, alpha
intrinsic   N, E, return (C, run)   N_c, E_c, alpha_N, alpha_E, beta
==========  ======================  ==========================================

A role defaults to the column of the same name. For ``chinchilla`` a missing ``D`` is
derived from ``C`` as ``C / (k N)`` with ``--flops-per-param-sample k`` (default 6). With
``--json`` one object is printed: ``{"law", "params", "ci", "n_points", "loss"}`` (``ci``
maps a parameter to ``[low, high]``; NaN is ``null``). Errors (missing column, too few
points, non-positive values, bad options, a fit that overflows or is singular) print one
line on stderr and exit with status 2.

An option or role that the chosen law would ignore is an error too, not silently accepted
(:func:`check_applicable`): ``--offset`` only for power and isoflop; ``--space`` only with
``power --offset``; ``--n-boot`` and ``--seed`` only where intervals can come from a
bootstrap (chinchilla, utd, intrinsic, ``power --offset``); ``--flops-per-param-sample``
only where D is derived from C (chinchilla without D, isoflop without D); the ``run`` role
(the bootstrap unit) only with a bootstrap (``--n-boot`` > 0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.fitting import (
    FIT_FAILURES,
    FitError,
    FitResult,
    fit_loglog,
    fit_power_offset,
    one_blas_thread,
    one_line,
)
from analysis.isoflop import fit_chinchilla, fit_isoflop
from analysis.scaling import fit_intrinsic
from analysis.utd import fit_utd

ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # law: (required roles, optional roles)
    "chinchilla": (("N", "loss"), ("D", "C", "run")),
    "isoflop": (("N", "C", "loss"), ("D",)),
    "power": (("x", "y"), ("run",)),
    "utd": (("sigma", "D"), ("run",)),
    "intrinsic": (("N", "E", "return"), ("C", "run")),
}
PARAMS: dict[str, tuple[str, ...]] = {
    "chinchilla": ("E", "A", "B", "alpha", "beta", "a", "b"),
    "isoflop": ("a", "b", "L_exponent", "L_inf"),
    "power": ("c", "k", "offset"),
    "utd": ("D_min", "beta", "alpha"),
    "intrinsic": ("N_c", "E_c", "alpha_N", "alpha_E", "beta"),
}


def parse_cols(items: Sequence[str]) -> dict[str, str]:
    """``["N=params", "loss=val"]`` -> ``{"N": "params", "loss": "val"}``."""
    out = {}
    for item in items:
        role, sep, col = item.partition("=")
        if not sep or not role or not col:
            raise FitError(f"--col expects ROLE=COLUMN, got {item!r}")
        out[role.strip()] = col.strip()
    return out


def resolve_columns(law: str, df: pd.DataFrame, cols: dict[str, str]) -> dict[str, np.ndarray]:
    """Map each role of ``law`` to a column's values; raise FitError naming what is missing."""
    required, optional = ROLES[law]
    unknown = set(cols) - set(required) - set(optional)
    if unknown:
        raise FitError(f"{law}: unknown role(s) {sorted(unknown)}; roles are "
                       f"{', '.join(required + optional)}")
    out: dict[str, np.ndarray] = {}
    for role in required + optional:
        col = cols.get(role, role if role in df.columns else None)
        if col is None:
            continue
        if col not in df.columns:
            raise FitError(f"column {col!r} (role {role}) not in the CSV; columns: "
                           f"{', '.join(map(str, df.columns))}")
        if role == "run":
            out[role] = df[col].astype(str).to_numpy()
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            bad = df[col][values.isna()].iloc[0]
            raise FitError(f"column {col!r} (role {role}): {int(values.isna().sum())} "
                           f"missing or non-numeric value(s), e.g. {bad!r}")
        out[role] = values.to_numpy(float)
    for role in required:
        if role not in out:
            raise FitError(f"{law}: no column for role {role!r}; pass --col {role}=COLUMN "
                           f"(columns: {', '.join(map(str, df.columns))})")
    return out


def _fit_chinchilla(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    if "D" not in v:
        if "C" not in v:
            raise FitError("chinchilla: no column for role 'D' (or 'C' to derive D = C/(k N)); "
                           "pass --col D=COLUMN or --col C=COLUMN")
        if (v["N"] <= 0).any():
            raise FitError("N: non-positive value(s) where D = C/(k N) is derived")
        v["D"] = v["C"] / (args.flops_per_param_sample * v["N"])
    return fit_chinchilla(v["N"], v["D"], v["loss"], n_boot=args.n_boot, groups=v.get("run"),
                          level=args.level, seed=args.seed)


def _fit_isoflop(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    f = fit_isoflop(v["N"], v["C"], v["loss"], D=v.get("D"), level=args.level,
                    flops_per_param_sample=args.flops_per_param_sample,
                    loss_offset=args.offset)
    if not args.offset:  # a pure power law is the plus-constant one with L_inf fixed at 0
        f.params["L_inf"] = 0.0
        f.ci["L_inf"] = (0.0, 0.0)
    return f


def _fit_power(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    if args.offset:
        return fit_power_offset(v["x"], v["y"], space=args.space, level=args.level,
                                n_boot=args.n_boot, groups=v.get("run"), seed=args.seed,
                                law="power")
    f = fit_loglog(v["x"], v["y"], level=args.level, law="power")
    f.params["offset"] = 0.0
    f.ci["offset"] = (0.0, 0.0)
    return f


def _fit_utd(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    return fit_utd(v["sigma"], v["D"], level=args.level, n_boot=args.n_boot,
                   groups=v.get("run"), seed=args.seed)


def _fit_intrinsic(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    return fit_intrinsic(v["N"], v["E"], v["return"], C=v.get("C"), groups=v.get("run"),
                         n_boot=args.n_boot, level=args.level, seed=args.seed)


FITTERS: dict[str, Callable[[dict[str, np.ndarray], argparse.Namespace], FitResult]] = {
    "chinchilla": _fit_chinchilla,
    "isoflop": _fit_isoflop,
    "power": _fit_power,
    "utd": _fit_utd,
    "intrinsic": _fit_intrinsic,
}


def fit_table(law: str, df: pd.DataFrame, cols: dict[str, str] | None = None,
              **options: Any) -> dict[str, Any]:
    """Fit ``law`` to the rows of ``df``; return the CLI's JSON object.

    ``options`` are the command-line options by their Python names (``offset``,
    ``flops_per_param_sample``, ``n_boot``, ``level``, ``seed``, ``space``); ``None`` means
    "not given" (the default applies). An option given for a law that would ignore it is a
    FitError (:func:`check_applicable`).
    """
    if law not in FITTERS:
        raise FitError(f"unknown law {law!r}; choose one of {', '.join(FITTERS)}")
    args = build_parser().parse_args([law, "--csv", "-"])
    for k, val in options.items():
        if not hasattr(args, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(args, k, val)
    given = {k for k in OPTION_DEFAULTS if getattr(args, k) is not None}
    if args.offset:
        given.add("offset")
    for k, default in OPTION_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, DEFAULT_BOOT[law] if k == "n_boot" else default)
    check_options(args)
    cols = cols or {}
    values = resolve_columns(law, df, cols)
    check_applicable(law, args, given, set(cols), set(values))
    fit = FITTERS[law](values, args)
    js = fit.to_json()
    names = PARAMS[law]
    return {
        "law": law,
        "params": {k: js["params"].get(k) for k in names},
        "ci": {k: js["ci"].get(k, [None, None]) for k in names},
        "n_points": js["n_points"],
        "loss": js["loss"],
    }


def check_options(args: argparse.Namespace) -> None:
    """Raise FitError (one line) for option values no fit can use."""
    k = args.flops_per_param_sample
    if not (math.isfinite(k) and k > 0):
        raise FitError(f"--flops-per-param-sample must be > 0, got {k:g}")
    if not 0 < args.level < 1:  # also false for NaN
        raise FitError(f"--level must be in (0, 1), got {args.level:g}")
    if args.n_boot < 0:
        raise FitError(f"--n-boot must be >= 0, got {args.n_boot}")


# bootstrap resamples where the law's intervals come from a bootstrap
DEFAULT_BOOT = {"chinchilla": 100, "isoflop": 0, "power": 0, "utd": 0, "intrinsic": 50}
# options whose parser default is None, so that "given" can be told from "defaulted"
# (n_boot's default is per law: DEFAULT_BOOT)
OPTION_DEFAULTS: dict[str, Any] = {"space": "log", "flops_per_param_sample": 6.0,
                                   "n_boot": None, "seed": 0}


def check_applicable(law: str, args: argparse.Namespace, given: set[str],
                     explicit_roles: set[str], roles: set[str]) -> None:
    """Raise FitError (one line) for an option or role that ``law`` would ignore.

    ``given``: options set by the user (not defaulted); ``explicit_roles``: roles named by
    ``--col``; ``roles``: roles that found a column."""
    power_offset = law == "power" and args.offset
    boots = law in ("chinchilla", "utd", "intrinsic") or power_offset
    if "offset" in given and law not in ("power", "isoflop"):
        raise FitError(f"--offset applies only to power and isoflop, not {law}")
    if "space" in given and not power_offset:
        raise FitError("--space applies only with --offset (power): "
                       + ("without it power is OLS on log y" if law == "power"
                          else f"{law} has no --space"))
    for opt in ("n_boot", "seed"):
        if opt in given and not boots:
            flag = "--" + opt.replace("_", "-")
            raise FitError(f"{flag} applies only with --offset (power without it is OLS on "
                           "log y with t-intervals)" if law == "power" else
                           f"{flag} does not apply to {law} (its intervals are OLS "
                           "t-intervals, no bootstrap)")
    if "flops_per_param_sample" in given and not (
            law in ("chinchilla", "isoflop") and "D" not in roles):
        raise FitError("--flops-per-param-sample applies only where D is derived from C "
                       "(chinchilla or isoflop without a D column)")
    if "C" in explicit_roles and law == "chinchilla" and "D" in roles:
        raise FitError("chinchilla: role 'C' is used only without a D column (D = C/(k N))")
    if "run" in explicit_roles and not (boots and args.n_boot > 0):
        raise FitError("role 'run' (the bootstrap unit) applies only with --offset and "
                       "--n-boot > 0" if law == "power" else
                       f"role 'run' (the bootstrap unit) applies only with --n-boot > 0 "
                       f"({law} defaults to {DEFAULT_BOOT[law]})")


def build_parser() -> argparse.ArgumentParser:
    """The ``fit`` subcommand's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m analysis fit",
        description="Fit one scaling law to a CSV and print its parameters and intervals.")
    p.add_argument("law", choices=sorted(FITTERS), help="which law to fit")
    p.add_argument("--csv", required=True, help="the table (one row per measurement)")
    p.add_argument("--col", action="append", default=[], metavar="ROLE=COLUMN",
                   help="which column plays a role (repeatable); default: same name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--offset", action="store_true",
                   help="power: fit y = offset + c x^k; isoflop: L_opt = L_inf + c C^k "
                        "(needs 4 budgets)")
    # None = not given: an option the law would ignore is an error (check_applicable)
    p.add_argument("--space", choices=("log", "linear"), default=None,
                   help="power --offset only: residuals in log y (default) or y")
    p.add_argument("--flops-per-param-sample", type=float, default=None,
                   help="k in C = k N D where D is derived from C (chinchilla and isoflop "
                        "without a D column); default 6")
    p.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap resamples (chinchilla 100, intrinsic 50; utd and "
                        "power --offset use delta-method intervals unless set; not isoflop "
                        "or power without --offset)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (0.95)")
    p.add_argument("--seed", type=int, default=None,
                   help="bootstrap seed (0), where --n-boot applies")
    return p


def _print_human(res: dict[str, Any]) -> None:
    print(f"law {res['law']}: {res['n_points']} points, loss {res['loss']:.4g}")
    for k, v in res["params"].items():
        lo, hi = res["ci"].get(k, [None, None])
        iv = "[—]" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"
        print(f"  {k:>11} = {'nan' if v is None else f'{v:.4g}':>10}  {iv}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m analysis fit``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        cols = parse_cols(args.col)
        path = Path(args.csv)
        if not path.exists():
            raise FitError(f"CSV not found: {path}")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise FitError(f"cannot read CSV {path}: {err}") from None
        with one_blas_thread():
            res = fit_table(args.law, df, cols, offset=args.offset, space=args.space,
                            flops_per_param_sample=args.flops_per_param_sample,
                            n_boot=args.n_boot, level=args.level, seed=args.seed)
    except FIT_FAILURES as err:  # FitError, and numeric failures such as an overflow
        print(f"error: {one_line(err, max_len=None)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, allow_nan=False))
    else:
        _print_human(res)
    return 0
