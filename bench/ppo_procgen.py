"""Throughput of PPO on Procgen with 64 envs: where the time goes.

Prints one table: env-only steps/s (random actions), policy-forward-only steps/s,
full PPO training steps/s (our real entry path: config -> run -> ppo.train) and
its split into rollout vs update. Ratios are against baselines measured in this same
run: (a) the textbook single-file PPO loop (bench/baseline_ppo.py: same network, envs
and hyperparameters, written the way the widely used Procgen PPO script writes it),
(b) the FLOP ceiling (1 acting forward + 3 epochs x forward+backward = 10 forwards per
step, at the measured forward rate). The reference script's own number on the 2-core
development CPU (about 140 steps/s; issue 2) is printed for comparison.

    python bench/ppo_procgen.py [--iterations 2] [--baseline-iterations 2] [--width 1]
                                [--device auto] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from agents.models import build_model
from envs import make_env
from rl_scaling.config import register_configs
from rl_scaling.hostmem import keep_freed_memory
from rl_scaling.run import resolve_device, run

REFERENCE_SPS = 140.0  # single-file Procgen PPO, 2-core dev CPU, 3 x 49,152 steps (124..146)
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def env_only(num_envs: int, steps: int) -> float:
    envs = make_env("procgen", num_envs=num_envs, seed=0, env_id="coinrun")
    envs.reset()
    n = envs.single_action_space.n
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(steps):
        envs.step(rng.integers(0, n, num_envs))
    dt = time.perf_counter() - t
    envs.close()
    return steps * num_envs / dt


def forward_only(width: float, num_envs: int, steps: int, device: torch.device) -> float:
    model = build_model("impala_cnn", (64, 64, 3), 15, width=width, depth=2).to(device).eval()
    obs = torch.randint(0, 255, (num_envs, 64, 64, 3), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(3):
            model(obs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model(obs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps * num_envs / (time.perf_counter() - t)


def ppo_train(width: float, iterations: int, device: str, threads: int) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=procgen_width", f"model.width={width}", f"device={device}",
            f"budget.value={iterations * 64 * 256}", "eval_every=null",
            "checkpoint_every=null", f"torch_threads={threads}", "logger.progress=plain",
        ])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run(cfg, tmp)
        total = time.perf_counter() - t
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    steps = rows[-1]["env_steps"]
    rollout = sum(r["rollout_time"] for r in rows)
    update = sum(r["update_time"] for r in rows)
    return {"steps": steps, "sps": steps / (rollout + update), "sps_incl_setup": steps / total,
            "rollout_s": rollout, "update_s": update}


def baseline(iterations: int, width: float, device: str, threads: int) -> dict:
    """The textbook loop in a fresh process: it must not inherit our allocator settings."""
    script = Path(__file__).with_name("baseline_ppo.py")
    out = subprocess.run([sys.executable, str(script), "--iterations", str(iterations),
                          "--width", str(width), "--device", device, "--threads", str(threads)],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2, help="PPO iterations of 64x256 steps")
    p.add_argument("--baseline-iterations", type=int, default=2,
                   help="iterations of the same-run textbook baseline (0: skip it)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    keep_freed_memory()  # as every training run does (config keep_freed_memory=true)

    env_sps = env_only(64, 300)
    fwd_sps = forward_only(args.width, 64, 40 if device.type == "cpu" else 400, device)
    ceiling = fwd_sps / 10.0
    ppo = ppo_train(args.width, args.iterations, args.device, args.threads)
    base = (baseline(args.baseline_iterations, args.width, str(device), args.threads)
            if args.baseline_iterations > 0 else None)
    share = ppo["rollout_s"] / (ppo["rollout_s"] + ppo["update_s"])
    print(f"\nPPO on Procgen CoinRun, 64 envs, IMPALA width {args.width}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'measure':<38}{'steps/s':>12}{'ratio':>12}")
    print("-" * 62)
    print(f"{'env only (random actions)':<38}{env_sps:>12,.0f}{'':>12}")
    print(f"{'policy forward only (batch 64)':<38}{fwd_sps:>12,.0f}{'':>12}")
    print(f"{'FLOP ceiling (forward rate / 10)':<38}{ceiling:>12,.1f}{1.0:>12.2f}")
    print(f"{'PPO training, this run':<38}{ppo['sps']:>12,.1f}{ppo['sps'] / ceiling:>12.2f}")
    print(f"{'  incl. set-up and checkpoint':<38}{ppo['sps_incl_setup']:>12,.1f}")
    if base is not None:
        print(f"{'textbook PPO baseline, this run':<38}{base['sps']:>12,.1f}"
              f"{base['sps'] / ceiling:>12.2f}")
    print(f"{'reference script, 2-core dev CPU':<38}{REFERENCE_SPS:>12,.1f}"
          f"{REFERENCE_SPS / ceiling:>12.2f}")
    if base is not None:
        print(f"\nspeed-up over the same-run baseline: {ppo['sps'] / base['sps']:.2f}x "
              f"(baseline split: rollout {base['rollout_s']:.1f} s, "
              f"update {base['update_s']:.1f} s)")
    print(f"speed-up over the reference script's 2-core number: "
          f"{ppo['sps'] / REFERENCE_SPS:.2f}x (meaningful on the 2-core development CPU only)")
    print(f"time split over {ppo['steps']:,} steps: rollout {ppo['rollout_s']:.1f} s "
          f"({100 * share:.0f}%), update {ppo['update_s']:.1f} s ({100 * (1 - share):.0f}%)")


if __name__ == "__main__":
    main()
