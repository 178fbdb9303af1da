"""Synthetic run records drawn from known scaling laws.

The analysis must be testable (and demonstrable) without training anything, so this
module writes run directories through the trainer's own record module
(:mod:`rl_scaling.record`: ``RunRecord``, ``new_run_info``; DESIGN.md, "A run record"), whose
curves follow laws with known constants. Each sweep declares its study in ``run.json``
(``study: {kind, axes, metric}``, :func:`declared_study`) unless called with
``study=False``, which writes records as the trainer did before studies were declared (the
analysis then guesses the study from config key names):

- ``hilton_width_sweep``: PPO on a Procgen-like task over IMPALA widths; the return is a
  monotone function of Hilton et al.'s intrinsic performance
  ``I^-beta = (Nc/N)^aN + (Ec/E)^aE``.
- ``bc_isoflop_sweep``: behavioural cloning over model sizes; ``val_loss`` follows
  ``L(N, D) = E + A/N^alpha + B/D^beta`` and ``eval_return`` follows a power law in loss
  (``untrained > 0`` adds the untrained-model penalty of :func:`lopsided_loss`).
- ``lopsided_isoflop_table``: an isoFLOP table (not run records) shaped like real sweeps:
  the largest, barely trained models have 10-50x the minimum loss at small budgets
  (:func:`lopsided_loss`), optional repeated seeds and per-run budgets ``6 N D`` that
  differ in the last digits.
- ``utd_sweep``: SAC-like runs on two tasks over the UTD ratio sigma, batch size B and
  learning rate eta (shared slopes, per-task intercepts);
  the data to reach a return threshold is ``D_J(sigma) = D_min + (beta_J/sigma)^alpha_J`` at
  the best (B, eta), which themselves follow ``B*(sigma)``, ``eta*(sigma)`` power laws.

- ``generalization_sweep``: runs over a problem-complexity parameter with 20 held-out test
  tasks (``test/task_<i>``); the data to reach any criterion grows as ``complexity^1.5``.

- ``trainer_like_sweep``: the trainer's default MNIST width study as the trainer wrote it
  before record format 2 (no ``study``, no ``format``): the guessing fallback's test case.

``python -m analysis synth --out DIR [--undeclared]`` writes the first four plus
``truth.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from rl_scaling.record import ORDER_COUNTER, RunRecord, check_study, new_run_info

# The constants each generator draws from; tests compare fitted values with these.
HILTON_TRUTH: dict[str, float] = {
    "alpha_N": 0.45,
    "alpha_E": 0.65,
    "N_c": 1.0e6,
    "E_c": 2.4e6,
    # Compute-optimal model size N_opt ~ C^k with k = aE / (aN + aE) when C ~ N * E.
    "k": 0.65 / (0.45 + 0.65),
    # Hilton's beta makes intrinsic performance proportional to compute on the frontier.
    "beta": 0.45 * 0.65 / (0.45 + 0.65),
    "return_max": 10.0,
    "g0": 1.5,
    "gamma": 2.0,
}

BC_TRUTH: dict[str, float] = {
    "E": 0.5,
    "A": 40.0,
    "alpha": 0.34,
    "B": 60.0,
    "beta": 0.28,
    # eval_return = R0 * val_loss^-kappa (Tuyls et al.'s return-vs-loss power law).
    "R0": 2000.0,
    "kappa": 2.0,
}

UTD_TRUTH: dict[str, float] = {
    "D_min": 1.0e5,
    "beta_J": 2.8e7,
    "alpha_J": 0.8,
    "B0": 256.0,
    "B_exp": -0.6,
    "lr0": 1.0e-3,
    "lr_exp": -0.5,
    "return_max": 8000.0,
    "J": 5000.0,
    "shape": 1.2,
}

# Tasks of the UTD sweep: the slopes (B_exp, lr_exp, alpha_J) and D_min are shared, the
# intercepts differ per task (multipliers on B0, lr0 and beta_J).
UTD_TASKS: dict[str, dict[str, float]] = {
    "HalfCheetah-v4": {"B_scale": 1.0, "lr_scale": 1.0, "beta_scale": 1.0},
    "Walker2d-v4": {"B_scale": 0.5, "lr_scale": 2.0, "beta_scale": 3.0},
}


def utd_task_truth(task: str, t: dict[str, float] = UTD_TRUTH,
                   tasks: dict[str, dict[str, float]] = UTD_TASKS) -> dict[str, float]:
    """The UTD constants of one task: shared slopes, the task's own intercepts."""
    sc = tasks[task]
    return {**t, "B0": t["B0"] * sc["B_scale"], "lr0": t["lr0"] * sc["lr_scale"],
            "beta_J": t["beta_J"] * sc["beta_scale"]}

# IMPALA CNN at width 1 (DESIGN.md): 626k parameters, 61.2 MFLOP per forward; both ~width^2.
IMPALA_PARAMS = 626_000
IMPALA_FLOPS = 61.2e6
# One PPO step costs about 10 forwards (1 acting + 3 epochs x forward+backward).
PPO_FORWARDS_PER_STEP = 10


# The study each sweep declares by default (``study=True``); ``axes`` name config keys.
STUDIES: dict[str, dict[str, Any]] = {
    "hilton": {"kind": "scaling", "axes": {"width": "model.width"}, "metric": "return_mean"},
    "bc_isoflop": {"kind": "isoflop", "axes": {"width": "model.width"}, "metric": "val_loss"},
    "utd": {"kind": "utd", "axes": {"sigma": "algo.utd", "batch_size": "algo.batch_size",
                                    "lr": "algo.lr", "task": "env.id"},
            "metric": "return_mean"},
    "generalization": {"kind": "generalization", "axes": {"complexity": "env.complexity"},
                       "metric": "return_mean"},
    "horizon": {"kind": "horizon", "axes": {"width": "model.width", "horizon": "algo.gamma",
                                            "seed": "seed"}, "metric": "return_mean"},
}


def declared_study(study: Mapping[str, Any] | bool, default: str,
                   **axes: str) -> dict[str, Any] | None:
    """The ``study`` block a sweep writes: ``True`` its default (``STUDIES[default]``, with
    ``axes`` overriding roles' config keys), ``False`` none, a mapping that block."""
    if study is False:
        return None
    if study is True:
        base = STUDIES[default]
        study = {**base, "axes": {**base["axes"], **axes}}
    return check_study(dict(study))


def _set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted config key (``algo.replay_ratio``) in a nested config."""
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def write_run(
    run_dir: str | Path,
    config: dict[str, Any],
    metrics: Iterable[dict[str, Any]],
    *,
    status: str = "finished",
    params: int,
    flops_per_forward: int,
    truncate_last: bool = False,
    study: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
) -> Path:
    """Write one run record (``config.yaml``, ``run.json``, ``metrics.jsonl``) to ``run_dir``
    through :class:`rl_scaling.record.RunRecord`, as the trainer does.

    Every metrics line must carry the record's counters (``env_steps``, ``updates``,
    ``samples``, ``flops``, ``wall_time``); ``iteration`` (1, 2, ...) is added where a line
    lacks it. ``study`` is the declared study (written into ``run.json`` and the config,
    as a resolved config carries it); ``None`` declares none. ``budget``: ``{counter,
    value}`` of ``run.json``. ``truncate_last`` cuts the last metrics line in half, as a run
    killed mid-write leaves it. One network role, ``model``, holds all the parameters.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir)
    if study is not None and "study" not in config:
        config = {**config, "study": dict(study)}
    record.write_config(yaml.safe_dump(config, sort_keys=False))
    record.metrics_path.unlink(missing_ok=True)  # a fresh record, never appended to
    record.metrics_path.touch()
    try:
        for i, m in enumerate(metrics, 1):
            row = dict(m)
            row.setdefault(ORDER_COUNTER, i)
            record.append_metrics(row)
    finally:
        record.close()
    if truncate_last:
        lines = record.metrics_path.read_text().splitlines()
        if lines:
            lines[-1] = lines[-1][: len(lines[-1]) // 2]
            record.metrics_path.write_text("".join(line + "\n" for line in lines))
    sizes = {"params": {"total": int(params * 1.05), "effective": int(params)},
             "flops_per_forward": {"total": int(flops_per_forward * 1.02),
                                   "effective": int(flops_per_forward)}}
    info = new_run_info(
        run_id=run_dir.name,
        experiment=config.get("experiment", ""),
        seed=config.get("seed", 0),
        status=status,
        study=dict(study) if study is not None else None,
        algo=config.get("algo", {}).get("name", ""),
        env=config.get("env", {}).get("id", ""),
        model=config.get("model", {}).get("family", ""),
        networks={"model": {**sizes, "effective": True}},
        effective_roles=["model"],
        **sizes,
        **({"budget": dict(budget)} if budget is not None else {}),
        versions={"python": "3.11", "rl_scaling": "synthetic"},
        git_rev=None,
        start_time="2025-01-01T00:00:00",
        end_time=None if status == "running" else "2025-01-02T00:00:00",
        starts=[{"host": "synthetic", "pid": 0, "time": "2025-01-01T00:00:00"}],
        run_dir=str(run_dir),
    )
    record.write_run_json(info)
    return run_dir


def _log_grid(total: float, n_points: int) -> np.ndarray:
    """Evenly spaced log points, as a trainer logging every k updates produces."""
    return np.linspace(total / n_points, total, n_points)


def hilton_intrinsic(N: np.ndarray, E: np.ndarray, t: dict[str, float] = HILTON_TRUTH):
    """``I^-beta = (Nc/N)^aN + (Ec/E)^aE`` (returned as the right-hand side, ``g``)."""
    return (t["N_c"] / N) ** t["alpha_N"] + (t["E_c"] / E) ** t["alpha_E"]


def hilton_return(N, E, t: dict[str, float] = HILTON_TRUTH):
    """Mean return as a decreasing logistic function of ``g = I^-beta``."""
    g = hilton_intrinsic(np.asarray(N, float), np.asarray(E, float), t)
    return t["return_max"] / (1.0 + (g / t["g0"]) ** t["gamma"])


def hilton_width_sweep(
    out: str | Path,
    *,
    widths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    seeds: Sequence[int] = (0, 1, 2),
    total_steps: int = 25_000_000,
    n_points: int = 64,
    noise: float = 0.15,
    experiment: str = "procgen_width",
    rng: int | np.random.Generator = 0,
    running: bool = True,
    failed: bool = True,
    study: Mapping[str, Any] | bool = True,
    env_id: str = "coinrun",
    success: bool = False,
) -> dict[str, float]:
    """Write a PPO width sweep whose returns follow Hilton's law; return the truth.

    ``env_id`` names the game (run directories gain ``env.id=...`` when it is not CoinRun);
    ``success`` also logs a success rate, ``return / return_max`` clipped to (0, 1), and its
    ``fail_to_success`` ratio.

    With ``running``/``failed`` the largest width's last seed is still running (stops at
    60% of training) and the smallest width's last seed failed at 30% with a truncated
    final line, as a real sweep looks mid-flight. ``study``: see :func:`declared_study`
    (default: kind ``scaling``, axes ``{width: model.width}``).
    """
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    declared = declared_study(study, "hilton")
    for w in widths:
        n_params = round(IMPALA_PARAMS * w**2)
        fpf = round(IMPALA_FLOPS * w**2)
        for s in seeds:
            status, frac, trunc = "finished", 1.0, False
            if running and w == max(widths) and s == seeds[-1] and len(seeds) > 1:
                status, frac = "running", 0.6
            if failed and w == min(widths) and s == seeds[-1] and len(seeds) > 1:
                status, frac, trunc = "failed", 0.3, True
            E = _log_grid(total_steps, n_points)
            E = E[E <= frac * total_steps + 1]
            # Per-seed offsets plus per-point noise: seeds differ by more than log noise.
            ret = hilton_return(n_params, E) * (1 + 0.03 * rng.standard_normal())
            ret = ret + noise * rng.standard_normal(E.size)
            metrics = []
            for i, (e, r) in enumerate(zip(E, ret, strict=True)):
                row = {
                    "env_steps": int(e),
                    "updates": int(e // 2048) * 3,
                    "samples": int(e) * 3,
                    "flops": float(PPO_FORWARDS_PER_STEP * fpf * e),
                    "wall_time": float(e / 146.0 / w**2),
                    "return_mean": float(r),
                    "loss": float(0.5 / (1 + i)),
                }
                if i % 4 == 3:  # held-out levels are evaluated less often
                    row["eval_return"] = float(0.85 * r)
                if success:
                    rate = float(np.clip(r / HILTON_TRUTH["return_max"], 0.01, 0.99))
                    row.update(success_rate=rate, fail_to_success=(1 - rate) / rate)
                metrics.append(row)
            config = {
                "experiment": experiment,
                "seed": int(s),
                # The trainer applies lr = lr * width^-1/2 itself (algo.lr_width_rule).
                "algo": {"name": "ppo", "total_steps": total_steps, "lr": 5e-4,
                         "lr_width_rule": True, "num_epochs": 3},
                "env": {"family": "procgen", "id": env_id, "num_envs": 64},
                "model": {"family": "impala_cnn", "width": float(w), "depth": 2},
                "logger": {"wandb": False, "log_every": total_steps // n_points},
            }
            game = "" if env_id == "coinrun" else f"env.id={env_id},"
            write_run(out / f"{game}model.width={w},seed={s}", config, metrics, status=status,
                      params=n_params, flops_per_forward=fpf, truncate_last=trunc,
                      study=declared, budget={"counter": "env_steps", "value": total_steps})
    return dict(HILTON_TRUTH)


def horizon_sweep(
    out: str | Path,
    *,
    horizons: Sequence[float] = (1, 4, 16),
    widths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    seeds: Sequence[int] = (0, 1),
    h0: float = 4.0,
    total_steps: int = 100_000_000,
    n_points: int = 48,
    noise: float = 0.1,
    experiment: str = "mnist_horizon",
    rng: int | np.random.Generator = 0,
) -> dict[str, float]:
    """Write a width x horizon sweep (the horizon as ``algo.gamma = 1 - 1/h``) whose returns
    follow Hilton's law with the same exponents at every horizon and an interaction scale
    affine in the horizon, ``E_c(h) = E_c (1 + h / h0)``; return the truth (``h0``, the
    exponents). The interactions to any return level then grow as ``1 + h / h0`` for a
    model large enough not to limit it."""
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    declared = declared_study(True, "horizon")
    for h in horizons:
        t = {**HILTON_TRUTH, "E_c": HILTON_TRUTH["E_c"] * (1 + h / h0)}
        for w in widths:
            n_params = round(IMPALA_PARAMS * w**2)
            fpf = round(IMPALA_FLOPS * w**2)
            for s in seeds:
                E = _log_grid(total_steps, n_points)
                ret = hilton_return(n_params, E, t) * (1 + 0.02 * rng.standard_normal())
                ret = ret + noise * rng.standard_normal(E.size)
                metrics = [{"env_steps": int(e), "updates": int(e // 2048) * 3,
                            "samples": int(e) * 3,
                            "flops": float(PPO_FORWARDS_PER_STEP * fpf * e),
                            "wall_time": float(e / 1e4), "return_mean": float(r),
                            "loss": 0.1} for e, r in zip(E, ret, strict=True)]
                config = {"experiment": experiment, "seed": int(s),
                          "algo": {"name": "ppo_ewma", "gamma": 1.0 - 1.0 / h,
                                   "gae_lambda": 1.0},
                          "env": {"family": "mnist", "id": "mnist", "num_envs": 4},
                          "model": {"family": "mnist_cnn", "width": float(w)}}
                write_run(out / f"algo.gamma={1 - 1 / h:g},model.width={w},seed={s}", config,
                          metrics, params=n_params, flops_per_forward=fpf, study=declared,
                          budget={"counter": "env_steps", "value": total_steps})
    return {"h0": h0, "alpha_N": HILTON_TRUTH["alpha_N"], "alpha_E": HILTON_TRUTH["alpha_E"],
            "k": HILTON_TRUTH["k"]}


def bc_loss(N, D, t: dict[str, float] = BC_TRUTH):
    """``L(N, D) = E + A/N^alpha + B/D^beta``."""
    return t["E"] + t["A"] / np.asarray(N, float) ** t["alpha"] + t["B"] / np.asarray(
        D, float) ** t["beta"]


#: Untrained-model penalty of :func:`lopsided_loss`: a model that has seen fewer than about
#: ``warm N`` samples is still near its initial loss ``U0 (N / N0)^u_exp`` (larger nets start
#: higher), as in real imitation sweeps where the largest models at the smallest budgets
#: have losses of 9-63 next to a best of about 1.2.
LOPSIDED: dict[str, float] = {"U0": 5.0, "N0": 1.0e7, "u_exp": 0.5, "warm": 0.1}


def lopsided_loss(N, D, t: dict[str, float] = BC_TRUTH,
                  u: dict[str, float] = LOPSIDED) -> np.ndarray:
    """``bc_loss(N, D) + U0 (N/N0)^u_exp exp(-D / (warm N))``: the Chinchilla-style surface
    plus a penalty that vanishes once a model has seen ``>> warm N`` samples."""
    N = np.asarray(N, float)
    D = np.asarray(D, float)
    return bc_loss(N, D, t) + u["U0"] * (N / u["N0"]) ** u["u_exp"] * np.exp(
        -D / (u["warm"] * N))


def lopsided_optimum(C: Any, *, t: dict[str, float] = BC_TRUTH,
                     u: dict[str, float] = LOPSIDED,
                     k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """True ``(N_opt, L_opt)`` of :func:`lopsided_loss` at budgets ``C = k N D`` (brute
    force over a fine log grid of N)."""
    grid = np.geomspace(1e2, 1e13, 40_000)
    C = np.atleast_1d(np.asarray(C, float))
    n_opt, l_opt = np.empty(C.size), np.empty(C.size)
    for i, c in enumerate(C):
        loss = lopsided_loss(grid, c / (k * grid), t, u)
        j = int(np.argmin(loss))
        n_opt[i], l_opt[i] = grid[j], loss[j]
    return n_opt, l_opt


def lopsided_isoflop_table(
    *,
    sizes: Sequence[float] = tuple(np.geomspace(1e5, 1e9, 9)),
    budgets: Sequence[float] = tuple(np.geomspace(1e15, 1e19, 5)),
    seeds: int = 1,
    noise: float = 0.01,
    batch: int | None = None,
    rng: int | np.random.Generator = 0,
    t: dict[str, float] = BC_TRUTH,
    u: dict[str, float] = LOPSIDED,
) -> pd.DataFrame:
    """An isoFLOP table ``N, C, D, loss, seed`` (one row per size, budget and seed) from
    :func:`lopsided_loss` with multiplicative log-normal ``noise``, ``D = C / (6 N)``.

    ``batch``: D is rounded to whole batches of that many samples and C recomputed per row
    as ``6 N D`` (budgets then differ in the 3rd-5th digit, as when a table's budget column
    is computed per run). ``u = {**LOPSIDED, "U0": 0}`` gives the plain surface.
    """
    rng = np.random.default_rng(rng)
    rows = []
    for c in budgets:
        for n in sizes:
            d = c / (6 * n)
            if batch:
                d = batch * max(1, round(d / batch))
            for s in range(seeds):
                loss = float(lopsided_loss(n, d, t, u)) * math.exp(noise * rng.standard_normal())
                rows.append({"N": float(n), "C": float(6 * n * d) if batch else float(c),
                             "D": float(d), "loss": loss, "seed": s})
    return pd.DataFrame(rows)


def bc_isoflop_sweep(
    out: str | Path,
    *,
    widths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    seeds: Sequence[int] = (0,),
    max_flops: float = 2e16,
    n_points: int = 48,
    noise: float = 0.01,
    experiment: str = "atari_bc_isoflop",
    rng: int | np.random.Generator = 1,
    study: Mapping[str, Any] | bool = True,
    untrained: float = 0.0,
) -> dict[str, float]:
    """Write BC runs whose ``val_loss`` follows the Chinchilla-style surface; return the truth.

    ``untrained``: the ``U0`` of :func:`lopsided_loss` (0, the default, is the plain
    surface): large models that have seen few samples stay near their initial loss, so the
    isoFLOP profiles are lopsided as in real sweeps.

    Each model size trains up to ``max_flops`` (6 N D) and logs at log-spaced sample counts,
    so one run fills every isoFLOP budget for its size (DESIGN.md's FLOP snapshots).
    ``study``: see :func:`declared_study` (default: kind ``isoflop``, axes
    ``{width: model.width}``, metric ``val_loss``).
    """
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    declared = declared_study(study, "bc_isoflop")
    for w in widths:
        n_params = round(250_000 * w**2)
        d_max = max_flops / (6 * n_params)
        for s in seeds:
            D = np.geomspace(d_max / 1e4, d_max, n_points)
            clean = (lopsided_loss(n_params, D, u={**LOPSIDED, "U0": untrained}) if untrained
                     else bc_loss(n_params, D))
            L = clean * np.exp(noise * rng.standard_normal(D.size))
            metrics = []
            for i, (d, loss) in enumerate(zip(D, L, strict=True)):
                row = {
                    "env_steps": 0,
                    "updates": int(d // 256),
                    "samples": int(d),
                    "flops": float(6 * n_params * d),
                    "wall_time": float(d / 5e4),
                    "loss": float(loss * 1.02),
                    "val_loss": float(loss),
                }
                if i % 3 == 2:
                    ret = BC_TRUTH["R0"] * loss ** -BC_TRUTH["kappa"]
                    row["eval_return"] = float(ret * np.exp(0.03 * rng.standard_normal()))
                metrics.append(row)
            config = {
                "experiment": experiment,
                "seed": int(s),
                "algo": {"name": "bc", "batch_size": 256, "lr": 3e-4,
                         "total_samples": int(d_max)},
                "env": {"family": "atari", "id": "Pong", "dataset": "expert"},
                "model": {"family": "nature_cnn", "width": float(w), "depth": 3},
                "logger": {"wandb": False},
            }
            write_run(out / f"model.width={w},seed={s}", config, metrics,
                      params=n_params, flops_per_forward=2 * n_params, study=declared,
                      budget={"counter": "samples", "value": int(d_max)})
    return dict(BC_TRUTH)


def utd_best_data(sigma, t: dict[str, float] = UTD_TRUTH) -> np.ndarray:
    """``D_J*(sigma) = D_min + (beta_J / sigma)^alpha_J``: data to reach J at the best (B, eta)."""
    return t["D_min"] + (t["beta_J"] / np.asarray(sigma, float)) ** t["alpha_J"]


def utd_data_to_threshold(sigma, batch, lr, t: dict[str, float] = UTD_TRUTH):
    """Data to reach J: ``D_J*(sigma)`` times a penalty for (B, eta) off their optima."""
    sigma, batch, lr = (np.asarray(v, float) for v in (sigma, batch, lr))
    d_best = utd_best_data(sigma, t)
    b_star = t["B0"] * sigma ** t["B_exp"]
    lr_star = t["lr0"] * sigma ** t["lr_exp"]
    penalty = 1 + 0.15 * np.log2(batch / b_star) ** 2 + 0.15 * np.log2(lr / lr_star) ** 2
    return d_best * penalty


def utd_sweep(
    out: str | Path,
    *,
    sigmas: Sequence[float] = (1, 2, 4, 8),
    batches: Sequence[int] = (64, 128, 256, 512),
    lrs: Sequence[float] = (2.5e-4, 5e-4, 1e-3, 2e-3),
    seeds: Sequence[int] = (0, 1),
    n_points: int = 40,
    noise: float = 0.03,
    experiment: str = "mujoco_utd",
    tasks: Sequence[str] = tuple(UTD_TASKS),
    rng: int | np.random.Generator = 2,
    study: Mapping[str, Any] | bool = True,
    utd_key: str = "algo.utd",
) -> dict[str, Any]:
    """Write SAC-like runs over (task, sigma, B, eta) following Rybkin et al.'s laws; return
    the truth (``UTD_TRUTH`` plus ``tasks``: each task's ``B0``, ``lr0``, ``beta_J``).

    Every task (``env.id``) shares the slopes and ``D_min`` and has its own intercepts
    (``UTD_TASKS``). Returns rise as ``R_max (1 - exp(-(D/tau)^p))`` with tau set so that
    the curve crosses ``J`` exactly at ``utd_data_to_threshold``; ``flops = 10 N B sigma D``
    (SAC convention). The UTD ratio is the config key ``utd_key``; ``study``: see
    :func:`declared_study` (default: kind ``utd``, axes ``{sigma: utd_key, batch_size:
    algo.batch_size, lr: algo.lr, task: env.id}``).
    """
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    declared = declared_study(study, "utd", sigma=utd_key)
    t = UTD_TRUTH
    n_params = 140_000
    truth: dict[str, Any] = dict(UTD_TRUTH)
    truth["tasks"] = {}
    for task, sigma, batch, lr in itertools.product(tasks, sigmas, batches, lrs):
        tt = utd_task_truth(task)
        truth["tasks"][task] = {k: tt[k] for k in ("B0", "lr0", "beta_J")}
        d_j = float(utd_data_to_threshold(sigma, batch, lr, tt))
        tau = d_j / (-math.log(1 - t["J"] / t["return_max"])) ** (1 / t["shape"])
        total = int(4 * d_j)
        for s in seeds:
            D = _log_grid(total, n_points)
            ret = t["return_max"] * (1 - np.exp(-((D / tau) ** t["shape"])))
            ret = ret * (1 + noise * rng.standard_normal(D.size))
            metrics = [
                {
                    "env_steps": int(d),
                    "updates": int(d * sigma),
                    "samples": int(d * sigma * batch),
                    "flops": float(10 * n_params * batch * sigma * d),
                    "wall_time": float(d * sigma / 300.0),
                    "return_mean": float(r),
                }
                for d, r in zip(D, ret, strict=True)
            ]
            config = {
                "experiment": experiment,
                "seed": int(s),
                "algo": {"name": "sac", "batch_size": int(batch), "lr": float(lr),
                         "total_steps": total},
                "env": {"family": "mujoco", "id": task},
                "model": {"family": "mlp", "width": 1.0, "depth": 2},
                "logger": {"wandb": False},
            }
            _set_key(config, utd_key, float(sigma))
            name = (f"env.id={task},{utd_key}={sigma},algo.batch_size={batch},"
                    f"algo.lr={lr},seed={s}")
            write_run(out / name, config, metrics, params=n_params,
                      flops_per_forward=2 * n_params, study=declared,
                      budget={"counter": "env_steps", "value": total})
    return truth


GEN_TRUTH: dict[str, float] = {"tau0": 1.0e4, "gamma": 1.5, "n_test_tasks": 20}


def generalization_sweep(
    out: str | Path,
    *,
    complexities: Sequence[float] = (1, 2, 4, 8),
    seeds: Sequence[int] = (0, 1),
    n_test_tasks: int = 20,
    n_points: int = 60,
    noise: float = 0.01,
    experiment: str = "pointmass_gen",
    rng: int | np.random.Generator = 4,
    study: Mapping[str, Any] | bool = True,
    complexity_key: str = "env.complexity",
    widths: Sequence[float] | None = None,
    normalised: bool = False,
    ood_slowdown: float | None = None,
) -> dict[str, float]:
    """Write runs over a problem-complexity parameter with per-test-task scores.

    Held-out test task ``i`` (metric ``test/task_<i>``) has a difficulty ``d_i`` (log-normal,
    the same at every complexity); its score is ``1 - exp(-E / (tau0 k^gamma d_i))``, so the
    data to reach any criterion built from the task scores (e.g. >= J on 95% of the tasks)
    is ``D ∝ k^gamma`` exactly. Runs last ``8 tau0 k^gamma max(d)`` steps so that every
    task saturates (its best seen score is ~1). Returns ``GEN_TRUTH`` plus the difficulties.
    The complexity is the config key ``complexity_key``; ``study``: see
    :func:`declared_study` (default: kind ``generalization``, axes ``{complexity:
    complexity_key}``, plus ``width: model.width`` with ``widths``).

    ``widths``: a model-size axis too. Width ``w`` learns ``w^0.5`` times faster in data
    (``tau`` times ``w^-0.5``) and costs ``w`` times the FLOPs per step, so the fewest data at
    a complexity come from the widest model and the least compute (``∝ w^0.5``) from the
    narrowest; both still grow as ``k^gamma``. ``normalised``: log the scores as the env's
    normalised per-task metrics ``task_score/test/<i>`` (as the point-mass world does)
    instead of ``test/task_<i>``. ``ood_slowdown`` (with ``normalised``): also an
    ``ood_objects`` set, the same tasks learnt that many times slower.
    """
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    axes = {"complexity": complexity_key}
    if widths is not None:
        axes["width"] = "model.width"
    declared = declared_study(study, "generalization", **axes)
    t = GEN_TRUTH
    diff = np.exp(0.4 * rng.standard_normal(n_test_tasks))
    column = "task_score/test/{}" if normalised else "test/task_{}"
    for k, w in itertools.product(complexities, widths or [None]):
        speed = 1.0 if w is None else w**0.5
        tau = t["tau0"] * k ** t["gamma"] * diff / speed
        E = np.geomspace(0.02, 8.0, n_points) * tau.max()
        per_step = 1e6 * k * (1.0 if w is None else w)
        for s in seeds:
            score = 1 - np.exp(-E[:, None] / tau[None, :])
            score = np.clip(score + noise * rng.standard_normal(score.shape), 0, None)
            metrics = []
            for e, row in zip(E, score, strict=True):
                m = {"env_steps": float(e), "updates": float(e / 8), "samples": float(e),
                     "flops": float(per_step * e), "wall_time": float(e / 1e4),
                     "return_mean": float(row.mean()), "eval_return": float(row.mean())}
                m.update({column.format(i): float(v) for i, v in enumerate(row)})
                if normalised and ood_slowdown:
                    ood = 1 - np.exp(-e / (tau * ood_slowdown))
                    m.update({f"task_score/ood_objects/{i}": float(v)
                              for i, v in enumerate(ood)})
                metrics.append(m)
            config = {"experiment": experiment, "seed": int(s),
                      "algo": {"name": "ppo"}, "env": {"family": "pointmass"},
                      "model": {"family": "mlp", "width": 1.0 if w is None else float(w)}}
            _set_key(config, complexity_key, k)
            name = f"{complexity_key}={k}" + ("" if w is None else f",model.width={w}")
            write_run(out / f"{name},seed={s}", config, metrics,
                      params=10_000, flops_per_forward=20_000, study=declared)
    return {**t, "n_test_tasks": n_test_tasks, "difficulties": diff.tolist()}


def trainer_like_sweep(
    out: str | Path,
    *,
    widths: Sequence[float] = (0.0625, 0.125, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (1, 2),
    total_steps: int = 65_536,
    steps_per_iter: int = 8192,
    noise: float = 0.02,
    experiment: str = "mnist_width",
    rng: int | np.random.Generator = 3,
) -> dict[str, float]:
    """Write a width sweep shaped exactly like the trainer's MNIST default study.

    ``run.json`` carries the trainer's fields (``id`` a hex string, ``width``, ``depth``,
    ``total_steps``, ``env_family``, ``params``/``flops_per_forward`` dicts); the config is
    the resolved Hydra tree; ``metrics.jsonl`` has one line per PPO iteration with
    ``iteration``, ``return_mean`` (accuracy rising from ~0.1 towards ~0.9, faster and
    higher for wider nets), ``loss`` and the timing fields. The largest width's last seed
    is still running, so the sweep looks like one mid-flight. The records are format 1 (no
    ``study``): the analysis guesses their study (``scaling``, from ``model.width``).
    Returns the generating law's constants (accuracy = 0.1 + 0.85 (1 - exp(-E / tau_w))
    with tau_w = tau0 w^-0.3).
    """
    rng = np.random.default_rng(rng)
    out = Path(out) / experiment
    tau0, ceiling = 12_000.0, 0.85
    for w in widths:
        n_params = round(1_250_000 * w**2 + 6_000 * w)
        fpf = round(2.4e6 * w**2 + 1.1e5 * w)
        tau = tau0 * w**-0.3
        for s in seeds:
            running = w == max(widths) and s == seeds[-1] and len(seeds) > 1
            steps = np.arange(steps_per_iter, total_steps + 1, steps_per_iter)
            if running:
                steps = steps[: max(2, steps.size // 2)]
            metrics = []
            for i, e in enumerate(steps, 1):
                acc = 0.1 + ceiling * min(1.0, w**0.05) * (1 - math.exp(-e / tau))
                acc = float(np.clip(acc + noise * rng.standard_normal(), 0, 1))
                metrics.append({
                    "env_steps": int(e), "updates": int(24 * i), "samples": int(3 * e),
                    "flops": float(PPO_FORWARDS_PER_STEP * fpf * e), "wall_time": 9.5 * i,
                    "iteration": i, "return_mean": acc, "episode_length": 1.0,
                    "episodes": int(steps_per_iter), "loss": float(0.2 / i),
                    "rollout_time": 1.2, "update_time": 8.1,
                })
            config = {
                "experiment": experiment, "seed": int(s), "device": "auto",
                "torch_threads": 1, "checkpoint_interval": 10, "deterministic": False,
                "algo": {"name": "ppo", "total_steps": total_steps, "num_steps": 512,
                         "lr": 5e-4, "lr_width_rule": True, "gamma": 0.9},
                "env": {"family": "mnist", "id": "mnist", "num_envs": 16},
                "model": {"family": "mnist_cnn", "width": float(w), "depth": 1},
                "logger": {"name": "local", "wandb": False},
            }
            run_dir = write_run(out / f"model.width={w},seed={s}", config, metrics,
                                status="running" if running else "finished",
                                params=n_params, flops_per_forward=fpf)
            # what the trainer wrote before record format 2: no format, study, networks,
            # effective roles or starts
            record = RunRecord(run_dir)
            info = record.read_run_json() or {}
            for key in ("format", "study", "networks", "effective_roles", "starts"):
                info.pop(key, None)
            info.update(id=f"{abs(hash((w, s))) % 16**12:012x}", width=float(w), depth=1,
                        env_family="mnist", total_steps=total_steps, device="cpu",
                        resumed=False)
            record.write_run_json(info)
    return {"tau0": tau0, "tau_exp": -0.3, "ceiling": ceiling}


def synth_all(out: str | Path, *, small: bool = False,
              declare: bool = True) -> dict[str, dict[str, Any]]:
    """Write all four synthetic studies under ``out`` plus ``truth.json``; return the truth.

    ``small`` writes fewer seeds, widths and log points (fast tests). ``declare=False``
    writes the same records without a ``study`` block (the analysis then guesses each
    study; it must find the same ones).
    """
    out = Path(out)
    if small:
        truth = {
            "procgen_width": hilton_width_sweep(out, seeds=(0, 1), n_points=32,
                                                study=declare),
            "atari_bc_isoflop": bc_isoflop_sweep(out, n_points=32, study=declare),
            "mujoco_utd": utd_sweep(out, sigmas=(1, 2, 4, 8), batches=(32, 64, 128, 256),
                                    lrs=(5e-4, 1e-3, 2e-3), seeds=(0,), n_points=24,
                                    study=declare),
            "pointmass_gen": generalization_sweep(out, seeds=(0,), n_points=40,
                                                  study=declare),
        }
    else:
        truth = {
            "procgen_width": hilton_width_sweep(out, study=declare),
            "atari_bc_isoflop": bc_isoflop_sweep(out, study=declare),
            "mujoco_utd": utd_sweep(out, study=declare),
            "pointmass_gen": generalization_sweep(out, study=declare),
        }
    with open(out / "truth.json", "w") as f:
        json.dump(truth, f, indent=2)
    return truth


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis synth --out DIR [--small] [--undeclared]``: write synthetic run
    records."""
    parser = argparse.ArgumentParser(prog="python -m analysis synth", description=main.__doc__)
    parser.add_argument("--out", required=True, help="runs root to write into")
    parser.add_argument("--small", action="store_true", help="fewer seeds and log points")
    parser.add_argument("--undeclared", action="store_true",
                        help="write no study block in run.json (the analysis guesses it)")
    args = parser.parse_args(argv)
    synth_all(args.out, small=args.small, declare=not args.undeclared)
    print(f"wrote synthetic run records under {args.out}")
    return 0
