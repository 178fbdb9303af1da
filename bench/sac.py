"""SAC throughput and return, ours against Stable-Baselines3 and a CleanRL-style loop, measured
in the same run on the same machine (ratios, not remembered numbers).

    python bench/sac.py                      # HalfCheetah-v5 speed + Pendulum-v1 return, CPU
    python bench/sac.py --quick              # fewer steps (a smoke check of the bench)
    python bench/sac.py --device cuda        # ours on a GPU (the peers stay on their defaults)

Tables:
1. env steps/s during training (after ``learning_starts``) at UTD 1 and UTD 8, same network
   sizes (256 x 2 critic and actor), batch 256, lr 3e-4, Polyak 0.005, auto temperature;
2. K seeds per process: aggregate env steps/s of ``seeds_per_process`` K = 1, 2, 4, 8 (ours);
3. return at equal env steps on Pendulum-v1 (UTD 1), mean of the last training episodes.

Ours runs through the real path (``rl_scaling.run.run``: run record, counters, FLOP
accounting); the held-out TD buffer and the gradient-noise diagnostics are switched off so
every implementation trains on the same data and does the same work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baseline_sac import run_cleanrl_style  # noqa: E402
from sb3_sac import run_sb3  # noqa: E402

WIDTH, BATCH, LR = 256, 256, 3e-4


def run_ours(env_id: str, total_steps: int, *, utd: float = 1, learning_starts: int = 1000,
             seed: int = 1, seeds_per_process: int = 1, device: str = "cpu",
             threads: int | None = None, actor_every: int = 1, width: int = WIDTH,
             batch_size: int = BATCH) -> dict:
    """Our SAC through ``rl_scaling.run.run``; steps/s over the env steps after
    ``learning_starts`` (from the run's own metrics lines), summed over the K seeds."""
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.record import RunRecord
    from rl_scaling.run import run

    register_configs()
    overrides = [
        "algo=sac", "env=gym", f"env.id={env_id}", "~model", "logger.progress=none",
        f"budget.value={total_steps}", f"algo.utd={utd}", f"algo.batch_size={batch_size}",
        f"algo.lr={LR}", f"algo.critic_width={width}", f"algo.actor_width={width}",
        f"algo.actor_every={actor_every}",
        f"algo.learning_starts={learning_starts}", f"algo.steps_per_iteration={learning_starts}",
        "algo.td_holdout_every=0", "algo.gns_chunks=0", "checkpoint_every=null",
        f"seed={seed}", f"seeds_per_process={seeds_per_process}", f"device={device}",
        f"torch_threads={threads or 0}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"seed{seed + k}" for k in range(seeds_per_process)]
        run(cfg, dirs[0], seed_dirs=dirs if seeds_per_process > 1 else None)
        rows = RunRecord(dirs[0]).read_metrics()
        start = next(r for r in rows if r["env_steps"] >= learning_starts)
        end = rows[-1]
        seconds = end["wall_time"] - start["wall_time"]
        returns = [r["return_mean"] for r in rows if "return_mean" in r]
    steps = (end["env_steps"] - start["env_steps"]) * seeds_per_process
    return {"steps_per_s": steps / seconds, "train_seconds": seconds,
            "return_mean": returns[-1] if returns else float("nan")}


def _table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="HalfCheetah-v5", help="speed env (HalfCheetah-v5)")
    p.add_argument("--quick", action="store_true", help="fewer steps: checks the bench runs")
    p.add_argument("--device", default="cpu", help="ours: cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--skip-return", action="store_true", help="only the speed tables")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    starts = 500 if args.quick else 1000
    train = {1: 500 if args.quick else 3000, 8: 100 if args.quick else 500}
    results: dict = {"speed": {}, "seeds": {}, "return": {}}

    for utd, n in train.items():
        total = starts + n
        impls = [("rl-scaling", run_ours), ("Stable-Baselines3", run_sb3),
                 ("CleanRL-style", run_cleanrl_style)]
        if utd > 1:  # the CleanRL-style loop keeps one actor update per env step
            impls.append(("rl-scaling actor_every=utd", run_ours))
        for name, fn in impls:
            kwargs = {"utd": utd, "learning_starts": starts, "threads": args.threads}
            if name.startswith("rl-scaling"):
                kwargs["device"] = args.device
                if name.endswith("actor_every=utd"):
                    kwargs["actor_every"] = utd
            else:
                kwargs.update(batch_size=BATCH, width=WIDTH)
                kwargs.update({"lr": LR} if name == "Stable-Baselines3"
                              else {"lr_q": LR, "lr_actor": LR})
            t0 = time.perf_counter()
            out = fn(args.env, total, **kwargs)
            results["speed"][f"{name} utd={utd}"] = out["steps_per_s"]
            print(f"{name:18s} utd={utd}: {out['steps_per_s']:8.1f} steps/s "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    n_seed = train[1] // 2
    for size in (WIDTH, 64):  # the bench's networks, and small ones (batch 64)
        for k in (1, 2, 4, 8):
            out = run_ours(args.env, starts + n_seed, utd=1, learning_starts=starts,
                           seeds_per_process=k, device=args.device, threads=args.threads,
                           width=size, batch_size=BATCH if size == WIDTH else 64)
            results["seeds"][f"{size} {k}"] = out["steps_per_s"]
            print(f"rl-scaling width {size} K={k}: {out['steps_per_s']:8.1f} aggregate "
                  "steps/s", flush=True)

    if not args.skip_return:
        steps = 3000 if args.quick else 10_000
        for name, fn in (("rl-scaling", run_ours), ("Stable-Baselines3", run_sb3),
                         ("CleanRL-style", run_cleanrl_style)):
            kwargs = {"utd": 1, "learning_starts": 1000, "threads": args.threads}
            if name != "rl-scaling":
                kwargs.update(batch_size=BATCH, width=WIDTH)
                kwargs.update({"lr": LR} if name == "Stable-Baselines3"
                              else {"lr_q": LR, "lr_actor": LR})
            out = fn("Pendulum-v1", steps, **kwargs)
            results["return"][name] = out["return_mean"]
            print(f"{name:18s} Pendulum return at {steps} steps: {out['return_mean']:.1f}",
                  flush=True)

    speed = results["speed"]
    rows = []
    for utd in train:
        ours = speed[f"rl-scaling utd={utd}"]
        # the peer with the same actor schedule: SB3 (an actor update per critic update);
        # the CleanRL-style loop (one actor update per env step) against ours with
        # actor_every=utd
        matched = speed.get(f"rl-scaling actor_every=utd utd={utd}", ours)
        rows.append([utd, f"{ours:.1f}", f"{matched:.1f}",
                     f"{speed[f'Stable-Baselines3 utd={utd}']:.1f}",
                     f"{speed[f'CleanRL-style utd={utd}']:.1f}",
                     f"{ours / speed[f'Stable-Baselines3 utd={utd}']:.2f}x",
                     f"{matched / speed[f'CleanRL-style utd={utd}']:.2f}x"])
    print(_table(f"SAC env steps/s on {args.env} ({args.device}, {torch.get_num_threads()} "
                 "threads)", ["UTD", "rl-scaling", "rl-scaling actor_every=UTD", "SB3",
                              "CleanRL-style", "vs SB3", "vs CleanRL-style (same schedule)"],
                 rows))
    scale = {name: speed[f"{name} utd=1"] / speed[f"{name} utd=8"]
             for name in ("rl-scaling", "Stable-Baselines3", "CleanRL-style")}
    scale["rl-scaling actor_every=UTD"] = (speed["rl-scaling utd=1"]
                                           / speed["rl-scaling actor_every=utd utd=8"])
    print(_table("Slowdown from UTD 1 to UTD 8 (lower scales better)", ["impl", "UTD1/UTD8"],
                 [[name, f"{v:.2f}"] for name, v in scale.items()]))
    seed_rows = []
    for key, v in results["seeds"].items():
        size, k = key.split()
        seed_rows.append([size, k, f"{v:.1f}", f"{v / results['seeds'][f'{size} 1']:.2f}x"])
    print(_table("Seeds per process (ours, UTD 1)", ["width", "K", "aggregate steps/s",
                                                     "vs K=1"], seed_rows))
    if results["return"]:
        print(_table("Pendulum-v1 return at equal env steps (UTD 1)", ["impl", "return"],
                     [[n, f"{v:.1f}"] for n, v in results["return"].items()]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
