"""``python -m analysis fit LAW --csv FILE --col ROLE=COLUMN ... [--json]``: fit your own table.

Researchers often have numbers from elsewhere (a paper's table, another codebase). This
fits one law to the rows of a CSV and prints the fitted parameters with their intervals,
what it used and dropped, and its flags.

==========  ===========================  ==========================================
LAW         roles                        parameters
==========  ===========================  ==========================================
chinchilla  N, D (or C), loss            E, A, B, alpha, beta, a, b
isoflop     N, C, loss (score), D        a, b, L_exponent, L_inf  (``--offset`` fits L_inf)
power       x, y                         c, k, offset  (``--offset`` fits a constant)
utd         sigma, D                     D_min, beta, alpha
intrinsic   N, E, return (C, run)        N_c, E_c, alpha_N, alpha_E, beta
==========  ===========================  ==========================================

A role defaults to the column of the same name; a role named by ``--col`` wins over a
column merely named like a role. For ``chinchilla`` a missing ``D`` is derived from ``C``
as ``C / (k N)`` with ``--flops-per-param-sample k`` (default 6); so is ``isoflop``'s
``D_opt`` without D. Giving ``--flops-per-param-sample`` (or, for chinchilla, ``--col
C=``) while a column is merely *named* ``D`` uses C and leaves that column unused (said in
``notes``); with ``--col D=`` it is an error. ``isoflop --maximize`` profiles a score
(role ``score``: returns, success rates) and takes its maximum.

Rows: ``isoflop`` groups budgets within ``--budget-tolerance`` (relative, default 0.01)
and averages repeated ``(N, C)`` rows (``--seeds mean``, as the pipeline averages seeds;
``--seeds all`` keeps each row as a point); ``chinchilla`` keeps every row (``--seeds all``,
as the pipeline; ``--seeds mean`` averages repeated ``(N, D)`` rows). What was done is in
``notes``.

With ``--json`` one object is printed: ``{"law", "params", "ci", "n_points", "loss",
"used", "dropped", "flags", "notes"}`` (``ci`` maps a parameter to ``[low, high]``; NaN is
``null``; ``dropped`` entries are ``{"what", "reason"}``); ``isoflop`` adds
``budgets_used`` (budgets), ``budgets_dropped`` (``{"budget", "reason"}``) and
``profiles`` (one record per budget: sizes, window, optimum, best measured point, fit
quality). Errors (missing column, too few points, non-positive values, bad options, a fit
that overflows or is singular, data that cannot identify the law) print one line on
stderr and exit with status 2.

An option or role that the chosen law would ignore is an error too, not silently accepted
(:func:`check_applicable`): ``--offset`` only for power and isoflop; ``--space`` only with
``power --offset`` or isoflop (the profiles' loss space); ``--n-boot`` and ``--seed`` only
where intervals can come from a bootstrap (chinchilla, utd, intrinsic, ``power
--offset``); ``--flops-per-param-sample`` only where D is derived from C (chinchilla or
isoflop without ``--col D=``); ``--window``, ``--optimum-tolerance``,
``--budget-tolerance``, ``--maximize`` only for isoflop; ``--method`` only for
chinchilla; ``--seeds`` only for isoflop and chinchilla; the ``run`` role (the bootstrap
unit) only with a bootstrap (``--n-boot`` > 0).
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
    _json_safe,
    fit_loglog,
    fit_power_offset,
    one_blas_thread,
    one_line,
)
from analysis.isoflop import (
    CHINCHILLA_METHODS,
    PROFILE_TOL,
    PROFILE_WINDOW,
    fit_chinchilla,
    fit_isoflop,
)
from analysis.scaling import fit_intrinsic
from analysis.utd import fit_utd

ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # law: (required roles, optional roles)
    "chinchilla": (("N", "loss"), ("D", "C", "run")),
    "isoflop": (("N", "C", "loss"), ("D",)),  # with --maximize: "score" for "loss"
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


def law_roles(law: str, maximize: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(required, optional)`` roles of ``law``; ``isoflop --maximize`` profiles a
    ``score`` instead of a ``loss``."""
    required, optional = ROLES[law]
    if law == "isoflop" and maximize:
        required = tuple("score" if r == "loss" else r for r in required)
    return required, optional


def resolve_columns(law: str, df: pd.DataFrame, cols: dict[str, str], *,
                    maximize: bool = False) -> dict[str, np.ndarray]:
    """Map each role of ``law`` to a column's values; raise FitError naming what is missing."""
    required, optional = law_roles(law, maximize)
    if law == "isoflop":
        other = "loss" if maximize else "score"
        if other in cols:
            raise FitError("isoflop: role 'loss' is minimised; with --maximize the metric "
                           "role is 'score'" if maximize else
                           "isoflop: role 'score' is maximised: add --maximize (without it "
                           "the metric role is 'loss')")
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
    notes = args.notes
    if "D" not in v:
        if "C" not in v:
            raise FitError("chinchilla: no column for role 'D' (or 'C' to derive D = C/(k N)); "
                           "pass --col D=COLUMN or --col C=COLUMN")
        if (v["N"] <= 0).any():
            raise FitError("N: non-positive value(s) where D = C/(k N) is derived")
        v["D"] = v["C"] / (args.flops_per_param_sample * v["N"])
        notes.append(f"D derived as C / (k N), k = {args.flops_per_param_sample:g}")
    N, D, y, groups = v["N"], v["D"], v["loss"], v.get("run")
    if args.seeds == "mean":
        n_rows = N.size
        frame = pd.DataFrame({"N": N, "D": D, "y": y}).groupby(["N", "D"], as_index=False).mean()
        N, D, y = (frame[c].to_numpy(float) for c in ("N", "D", "y"))
        notes.append(f"repeated (N, D) rows averaged (mean loss, --seeds mean): {n_rows} rows "
                     f"-> {N.size} points")
    elif pd.DataFrame({"N": N, "D": D}).duplicated().any():
        notes.append("repeated (N, D) rows kept as separate points (--seeds all, as the "
                     "pipeline fits every log point)")
    return fit_chinchilla(N, D, y, method=args.method, n_boot=args.n_boot, groups=groups,
                          level=args.level, seed=args.seed)


def _fit_isoflop(v: dict[str, np.ndarray], args: argparse.Namespace) -> FitResult:
    y = v["score"] if args.maximize else v["loss"]
    if "D" not in v:
        args.notes.append(f"D_opt = C / (k N_opt), k = {args.flops_per_param_sample:g}")
    f = fit_isoflop(v["N"], v["C"], y, D=v.get("D"), level=args.level,
                    flops_per_param_sample=args.flops_per_param_sample,
                    loss_offset=args.offset, window=args.window or None,
                    tol=args.optimum_tolerance, space=args.space, maximize=args.maximize,
                    budget_rtol=args.budget_tolerance, seeds=args.seeds)
    args.notes.extend(f.extra.get("notes", []))
    args.notes.append(f"profiles: {f.extra['method'].split('; OLS')[0]}")
    if not args.offset:  # a pure power law is the plus-constant one with L_inf fixed at 0
        f.params["L_inf"] = 0.0
        f.ci["L_inf"] = (0.0, 0.0)
        f.extra["fixed"] = {"L_inf": 0.0}
        args.notes.append("L_inf fixed at 0 (a pure power law; --offset fits it)")
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
    ``flops_per_param_sample``, ``n_boot``, ``level``, ``seed``, ``space``, ``window``,
    ``optimum_tolerance``, ``budget_tolerance``, ``maximize``, ``seeds``, ``method``;
    ``window=0`` is ``--window all``); ``None`` means "not given" (the default applies).
    An option given for a law that would ignore it is a FitError (:func:`check_applicable`).
    """
    if law not in FITTERS:
        raise FitError(f"unknown law {law!r}; choose one of {', '.join(FITTERS)}")
    args = build_parser().parse_args([law, "--csv", "-"])
    for k, val in options.items():
        if not hasattr(args, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(args, k, val)
    given = {k for k in OPTION_DEFAULTS if getattr(args, k) is not None}
    given |= {k for k in ("offset", "maximize") if getattr(args, k)}
    for k, default in OPTION_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, law_default(law, k, default))
    check_options(args)
    cols = cols or {}
    values = resolve_columns(law, df, cols, maximize=bool(args.maximize))
    check_applicable(law, args, given, set(cols), set(values))
    args.notes = []
    values = _explicit_roles_win(law, values, given, set(cols), args.notes)
    fit = FITTERS[law](values, args)
    js = fit.to_json()
    names = PARAMS[law]
    out = {
        "law": law,
        "params": {k: js["params"].get(k) for k in names},
        "ci": {k: js["ci"].get(k, [None, None]) for k in names},
        "n_points": js["n_points"],
        "loss": js["loss"],
        "used": js["used"],
        "dropped": js["dropped"],
        "flags": js["flags"],
        "notes": list(args.notes),
    }
    if law == "isoflop":
        par = fit.extra["parabolas"]
        out["budgets_used"] = js["used"]
        out["budgets_dropped"] = [{"budget": b, "reason": f"{p['code']}: {p['why']}"}
                                  for b, p in par.items() if not p["ok"]]
        keys = ("ok", "code", "n", "n_window", "N_lo", "N_hi", "N_opt", "L_opt",
                "N_measured", "L_measured", "gap", "rms", "r2")
        out["profiles"] = _json_safe([{"budget": b, **{k: p[k] for k in keys}}
                                      for b, p in par.items()])
    return out


def _explicit_roles_win(law: str, values: dict[str, np.ndarray], given: set[str],
                        explicit: set[str], notes: list[str]) -> dict[str, np.ndarray]:
    """Drop a ``D`` found only by its column name where the user asked to derive D from
    C (``--flops-per-param-sample``, or chinchilla's ``--col C=``): what is named wins
    over what is inferred."""
    if "D" in values and "D" not in explicit and (
            "flops_per_param_sample" in given or (law == "chinchilla" and "C" in explicit)):
        why = ("--flops-per-param-sample" if "flops_per_param_sample" in given
               else "--col C=")
        notes.append(f"column 'D' not used: D derived from C ({why}); --col D=D would use it")
        values = {k: v for k, v in values.items() if k != "D"}
    return values


def check_options(args: argparse.Namespace) -> None:
    """Raise FitError (one line) for option values no fit can use."""
    k = args.flops_per_param_sample
    if not (math.isfinite(k) and k > 0):
        raise FitError(f"--flops-per-param-sample must be > 0, got {k:g}")
    if not 0 < args.level < 1:  # also false for NaN
        raise FitError(f"--level must be in (0, 1), got {args.level:g}")
    if args.n_boot < 0:
        raise FitError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.window < 0:
        raise FitError(f"--window must be >= 1 (sizes on each side of the best) or all (0), "
                       f"got {args.window}")
    if not args.optimum_tolerance >= 0:
        raise FitError(f"--optimum-tolerance must be >= 0, got {args.optimum_tolerance:g}")
    if not args.budget_tolerance >= 0:
        raise FitError(f"--budget-tolerance must be >= 0, got {args.budget_tolerance:g}")


# bootstrap resamples where the law's intervals come from a bootstrap
DEFAULT_BOOT = {"chinchilla": 100, "isoflop": 0, "power": 0, "utd": 0, "intrinsic": 50}
# repeated rows: averaged for isoflop's profiles, kept for chinchilla (as the pipeline does)
DEFAULT_SEEDS = {"isoflop": "mean", "chinchilla": "all"}
# options whose parser default is None, so that "given" can be told from "defaulted"
# (n_boot's and seeds' defaults are per law: DEFAULT_BOOT, DEFAULT_SEEDS)
OPTION_DEFAULTS: dict[str, Any] = {"space": "log", "flops_per_param_sample": 6.0,
                                   "n_boot": None, "seed": 0, "window": PROFILE_WINDOW,
                                   "optimum_tolerance": PROFILE_TOL,
                                   "budget_tolerance": 0.01, "seeds": None,
                                   "method": CHINCHILLA_METHODS[0]}
# options only some laws use (others: check_applicable's own rules)
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "window": ("isoflop",), "optimum_tolerance": ("isoflop",),
    "budget_tolerance": ("isoflop",), "maximize": ("isoflop",),
    "seeds": ("isoflop", "chinchilla"), "method": ("chinchilla",)}


def law_default(law: str, option: str, default: Any) -> Any:
    """An option's default for ``law`` (``n_boot`` and ``seeds`` differ per law)."""
    if option == "n_boot":
        return DEFAULT_BOOT[law]
    if option == "seeds":
        return DEFAULT_SEEDS.get(law, "all")
    return default


def check_applicable(law: str, args: argparse.Namespace, given: set[str],
                     explicit_roles: set[str], roles: set[str]) -> None:
    """Raise FitError (one line) for an option or role that ``law`` would ignore.

    ``given``: options set by the user (not defaulted); ``explicit_roles``: roles named by
    ``--col``; ``roles``: roles that found a column (by ``--col`` or by name)."""
    power_offset = law == "power" and args.offset
    boots = law in ("chinchilla", "utd", "intrinsic") or power_offset
    if "offset" in given and law not in ("power", "isoflop"):
        raise FitError(f"--offset applies only to power and isoflop, not {law}")
    if "space" in given and not (power_offset or law == "isoflop"):
        raise FitError("--space applies only with --offset (power): "
                       + ("without it power is OLS on log y" if law == "power"
                          else f"{law} has no --space") + "; or to isoflop's profiles")
    for opt, laws in ONLY_FOR.items():
        if opt in given and law not in laws:
            raise FitError(f"--{opt.replace('_', '-')} applies only to "
                           f"{' and '.join(laws)}, not {law}")
    for opt in ("n_boot", "seed"):
        if opt in given and not boots:
            flag = "--" + opt.replace("_", "-")
            raise FitError(f"{flag} applies only with --offset (power without it is OLS on "
                           "log y with t-intervals)" if law == "power" else
                           f"{flag} does not apply to {law} (its intervals are OLS "
                           "t-intervals, no bootstrap)")
    if "flops_per_param_sample" in given:
        if law not in ("chinchilla", "isoflop"):
            raise FitError("--flops-per-param-sample applies only where D is derived from C "
                           "(chinchilla or isoflop without a D column)")
        if "D" in explicit_roles:
            raise FitError("--flops-per-param-sample applies only where D is derived from C, "
                           "and --col D= gives D: drop one of them")
        if law == "chinchilla" and "C" not in roles:
            raise FitError("chinchilla: --flops-per-param-sample derives D = C/(k N), but "
                           "there is no column for role 'C'; pass --col C=COLUMN")
    if "C" in explicit_roles and law == "chinchilla" and "D" in explicit_roles:
        raise FitError("chinchilla: role 'C' is used only without a D column (D = C/(k N)); "
                       "--col D= and --col C= both given")
    if "run" in explicit_roles and not (boots and args.n_boot > 0):
        raise FitError("role 'run' (the bootstrap unit) applies only with --offset and "
                       "--n-boot > 0" if law == "power" else
                       f"role 'run' (the bootstrap unit) applies only with --n-boot > 0 "
                       f"({law} defaults to {DEFAULT_BOOT[law]})")
    if "run" in roles and law == "chinchilla" and args.seeds == "mean" and args.n_boot > 0:
        raise FitError("chinchilla: --seeds mean averages rows, so the 'run' role (the "
                       "bootstrap unit) has no rows left to group; use --seeds all")


def _window(text: str) -> int:
    """``--window``: a whole number of sizes on each side of the best, or ``all`` (0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'all', got {text!r}") from None


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
                   help="power --offset: residuals in log y (default) or y; isoflop: "
                        "parabolas in log loss (default) or loss")
    p.add_argument("--flops-per-param-sample", type=float, default=None,
                   help="k in C = k N D where D is derived from C (chinchilla and isoflop "
                        "without --col D=); default 6")
    p.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap resamples (chinchilla 100, intrinsic 50; utd and "
                        "power --offset use delta-method intervals unless set; not isoflop "
                        "or power without --offset)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (0.95)")
    p.add_argument("--seed", type=int, default=None,
                   help="bootstrap seed (0), where --n-boot applies")
    p.add_argument("--maximize", action="store_true",
                   help="isoflop: profile a score (role 'score': return, success) and take "
                        "its maximum instead of a loss's minimum")
    p.add_argument("--window", type=_window, default=None, metavar="K|all",
                   help=f"isoflop: fit each budget's parabola on the best size and up to K "
                        f"sizes on each side (default {PROFILE_WINDOW}), or all (0) sizes")
    p.add_argument("--optimum-tolerance", type=float, default=None,
                   help=f"isoflop: drop a budget whose parabola optimum passes the best "
                        f"measured value by more than this (log loss; default {PROFILE_TOL:g})")
    p.add_argument("--budget-tolerance", type=float, default=None,
                   help="isoflop: budgets within this relative tolerance are one budget "
                        "(default 0.01; 0: exact)")
    p.add_argument("--seeds", choices=("mean", "all"), default=None,
                   help="repeated rows: average them (isoflop default, as the pipeline) or "
                        "keep each as a point (chinchilla default)")
    p.add_argument("--method", choices=CHINCHILLA_METHODS, default=None,
                   help="chinchilla: variable projection (default) or the 4500-start grid")
    return p


def _print_human(res: dict[str, Any]) -> None:
    print(f"law {res['law']}: {res['n_points']} points, loss {res['loss']:.4g}")
    for k, v in res["params"].items():
        lo, hi = res["ci"].get(k, [None, None])
        iv = "[—]" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"
        if any(n.startswith(f"{k} fixed at ") for n in res.get("notes", [])):
            iv = "[fixed]"
        print(f"  {k:>11} = {'nan' if v is None else f'{v:.4g}':>10}  {iv}")
    used, dropped = res.get("used", []), res.get("dropped", [])
    what = "budgets" if res["law"] == "isoflop" else "sizes"
    if used or dropped:
        shown = ", ".join(f"{u:.4g}" if isinstance(u, float) else str(u) for u in used[:12])
        print(f"used {len(used)} {what}: {shown}{' ...' if len(used) > 12 else ''}")
    for d in dropped[:8]:
        w = d.get("what")
        print(f"dropped {w:.4g}: {d.get('reason')}" if isinstance(w, float)
              else f"dropped {w}: {d.get('reason')}")
    if len(dropped) > 8:
        print(f"dropped ... {len(dropped) - 8} more (--json lists them all)")
    for f in res.get("flags", []):
        print(f"flag: {f}")
    for n in res.get("notes", []):
        print(f"note: {n}")


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
                            n_boot=args.n_boot, level=args.level, seed=args.seed,
                            maximize=args.maximize, window=args.window,
                            optimum_tolerance=args.optimum_tolerance,
                            budget_tolerance=args.budget_tolerance, seeds=args.seeds,
                            method=args.method)
    except FIT_FAILURES as err:  # FitError, and numeric failures such as an overflow
        print(f"error: {one_line(err, max_len=None)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, allow_nan=False))
    else:
        _print_human(res)
    return 0
