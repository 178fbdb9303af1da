"""PPG-EWMA's throughput next to PPO's on the same Procgen config, in one run.

Every algorithm goes through the real entry path (config -> run -> the trainer) on
``+experiment=procgen_width`` (CoinRun, 64 envs x 256 steps, IMPALA CNN) for the same number
of iterations; PPG's phases are shortened to ``--n-pi`` iterations so that the measured
iterations hold whole auxiliary phases (the auxiliary cost per interaction does not depend
on ``n_pi``: 6 epochs over every stored sample). Each run trains one iteration more than it
measures, because no auxiliary phase runs once the budget is spent. The table gives env
steps/s, the split into rollout and update (policy phase + auxiliary phase), training FLOPs
per env step (from the FLOP accountant, every role) and the achieved FLOP/s, with ratios
against PPO measured here.

    python bench/ppg_procgen.py [--iterations 4] [--n-pi 2] [--width 1] [--device auto]
                                [--algos ppo,ppo_ewma,ppg_ewma] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rl_scaling.config import register_configs
from rl_scaling.hostmem import keep_freed_memory
from rl_scaling.run import resolve_device, run

ROOT = Path(__file__).resolve().parents[1]


def train(algo: str, width: float, iterations: int, n_pi: int, device: str, threads: int
          ) -> dict:
    register_configs()
    overrides = ["+experiment=procgen_width", f"algo={algo}", f"model.width={width}",
                 f"device={device}", f"budget.value={(iterations + 1) * 64 * 256}",
                 "eval_every=null",
                 "checkpoint_every=null", f"torch_threads={threads}", "logger.progress=none",
                 "seed=1"]
    if algo.startswith("ppg"):
        overrides.append(f"algo.n_pi={n_pi}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run(cfg, tmp)
        total = time.perf_counter() - t
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[:iterations]
    last = rows[-1]
    steps = last["env_steps"]
    rollout = sum(r["rollout_time"] for r in rows)
    update = sum(r["update_time"] for r in rows)
    flops = sum(v for k, v in last.items() if k.startswith("flops."))
    return {"steps": steps, "sps": steps / (rollout + update), "total_s": total,
            "rollout_s": rollout, "update_s": update, "flops_per_step": flops / steps,
            "flops_per_s": flops / (rollout + update),
            "aux_phases": sum("aux_kl" in r for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=4, help="iterations of 64 x 256 steps")
    p.add_argument("--n-pi", type=int, default=2, help="PPG policy iterations per phase")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--algos", default="ppo,ppo_ewma,ppg_ewma")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args()
    if args.iterations % args.n_pi:
        p.error(f"--iterations {args.iterations} must be a multiple of --n-pi {args.n_pi}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    keep_freed_memory()
    results = {a: train(a, args.width, args.iterations, args.n_pi, args.device, args.threads)
               for a in args.algos.split(",")}
    ref = results.get("ppo") or next(iter(results.values()))
    print(f"\nProcgen CoinRun, 64 envs x 256 steps, IMPALA width {args.width}, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.iterations} iterations "
          f"(PPG phases of {args.n_pi})")
    head = (f"{'algo':<10}{'steps/s':>9}{'vs ppo':>8}{'rollout s':>11}{'update s':>10}"
            f"{'aux phases':>11}{'GFLOP/step':>12}{'vs ppo':>8}{'GFLOP/s':>9}")
    print(head)
    print("-" * len(head))
    for algo, r in results.items():
        print(f"{algo:<10}{r['sps']:>9,.1f}{r['sps'] / ref['sps']:>8.2f}{r['rollout_s']:>11.1f}"
              f"{r['update_s']:>10.1f}{r['aux_phases']:>11d}{r['flops_per_step'] / 1e9:>12.2f}"
              f"{r['flops_per_step'] / ref['flops_per_step']:>8.2f}"
              f"{r['flops_per_s'] / 1e9:>9.1f}")


if __name__ == "__main__":
    main()
