"""Throughput of PPO on Procgen with 64 envs x 256 steps: each speed switch on and off, against
the textbook single-file loop, in one run on one machine.

Prints one table per width: env-only steps/s (random actions), policy-forward-only steps/s,
then PPO training steps/s through our real entry path (config -> run -> ppo.train) for each
set of ``speed.*`` switches, with its rollout/update split and peak memory, and the same-run
baseline (bench/baseline_ppo.py: the textbook single-file Procgen PPO loop with the same
network, envs and hyperparameters). Every training measurement runs in a fresh process (its
peak resident memory is that process's own), and its rate leaves out the first
``--warmup`` iterations (allocator warm-up; compilation where ``speed.compile`` is on).

    python bench/ppo_procgen.py [--iterations 2] [--warmup 1] [--widths 1] [--env starpilot]
                                [--switches off,overlap,bf16,compile,on] [--device auto]
    python bench/ppo_procgen.py --gpu     # one command on a GPU machine: widths 0.25, 1, 4,
                                          # every switch (make bench-gpu)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.models import build_model  # noqa: E402
from envs import make_env  # noqa: E402

CONFIGS = ROOT / "configs"
# Sets of speed switches, by name (docs/speed.md). `on`: everything that pays on the device
# (compile and CUDA graphs follow `auto`: on for CUDA, off on CPU where they did not pay).
OFF = {"precision": "fp32", "compile": "false", "cuda_graphs": "false", "overlap_envs": "false"}


def _switches(**on: str) -> list[str]:
    """Overrides for every switch: off, except the ones named."""
    return [f"speed.{key}={value}" for key, value in {**OFF, **on}.items()]


SWITCHES = {
    "off": _switches(),
    "overlap": _switches(overlap_envs="true"),
    "bf16": _switches(precision="bf16"),
    "compile": _switches(compile="true"),
    "graphs": _switches(cuda_graphs="true"),
    "on": _switches(precision="bf16", compile="auto", cuda_graphs="auto", overlap_envs="true"),
}


def env_only(env_id: str, num_envs: int, steps: int) -> float:
    envs = make_env("procgen", num_envs=num_envs, seed=0, env_id=env_id)
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


def worker(args: argparse.Namespace) -> None:
    """One PPO run through the real path in this (fresh) process; prints a JSON line."""
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=procgen_width", f"env.id={args.env}", f"model.width={args.width}",
            f"device={args.device}", f"budget.value={args.iterations * 64 * 256}",
            "eval_every=null", "checkpoint_every=null", f"torch_threads={args.threads}",
            "logger.progress=none", *SWITCHES[args.worker]])
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, tmp)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    measured = rows[args.warmup:]
    steps = rows[-1]["env_steps"] - (rows[args.warmup - 1]["env_steps"] if args.warmup else 0)
    rollout = sum(r["rollout_time"] for r in measured)
    update = sum(r["update_time"] for r in measured)
    warm = sum(r["rollout_time"] + r["update_time"] for r in rows[:args.warmup])
    out = {"steps": steps, "sps": steps / (rollout + update), "rollout_s": rollout,
           "update_s": update, "warmup_s": warm,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "returns": [r.get("return_mean") for r in rows]}
    if torch.cuda.is_available() and str(args.device).startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out), flush=True)


def _subprocess(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(name: str, width: float, args: argparse.Namespace, device: str) -> dict:
    return _subprocess([__file__, "--worker", name, "--width", str(width), "--env", args.env,
                        "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                        "--device", device, "--threads", str(args.threads)])


def baseline(width: float, args: argparse.Namespace, device: str) -> dict:
    """The textbook loop in a fresh process: it must not inherit our allocator settings."""
    return _subprocess([str(Path(__file__).with_name("baseline_ppo.py")),
                        "--iterations", str(args.baseline_iterations), "--width", str(width),
                        "--device", device, "--threads", str(args.threads), "--env", args.env,
                        "--warmup", str(min(args.warmup, args.baseline_iterations - 1))])


def table(width: float, args: argparse.Namespace, device: torch.device) -> None:
    env_sps = env_only(args.env, 64, 300)
    fwd_sps = forward_only(width, 64, 40 if device.type == "cpu" else 400, device)
    results = {}
    for name in args.switches.split(","):
        print(f"  measuring {name} (width {width}) ...", file=sys.stderr, flush=True)
        results[name] = ours(name, width, args, str(device))
    base = (baseline(width, args, str(device)) if args.baseline_iterations > 0 else None)
    mem = "peak GPU MB" if device.type == "cuda" else "peak RSS MB"
    mem_key = "peak_cuda_mb" if device.type == "cuda" else "peak_rss_mb"
    print(f"\nPPO on Procgen {args.env}, 64 envs x 256 steps, IMPALA width {width}, device "
          f"{device}, torch threads {torch.get_num_threads()}, rate over "
          f"{args.iterations - args.warmup} iteration(s) after {args.warmup} warm-up")
    print(f"env only (random actions): {env_sps:,.0f} steps/s; policy forward only "
          f"(batch 64): {fwd_sps:,.0f} obs/s\n")
    print(f"| run | steps/s | vs textbook | vs `off` | rollout s | update s | rollout share "
          f"| warm-up s | {mem} | vs textbook |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = results.get("off")
    rows = [(f"ours, `{n}`", r) for n, r in results.items()]
    if base is not None:
        rows.append(("textbook loop (bench/baseline_ppo.py)", base))
    for label, r in rows:
        share = r["rollout_s"] / (r["rollout_s"] + r["update_s"])
        vs_base = f"{r['sps'] / base['sps']:.2f}x" if base else ""
        vs_off = f"{r['sps'] / ref['sps']:.2f}x" if ref else ""
        mem_ratio = (f"{r[mem_key] / base[mem_key]:.2f}" if base and mem_key in base
                     and mem_key in r else "")
        print(f"| {label} | {r['sps']:,.1f} | {vs_base} | {vs_off} | {r['rollout_s']:.1f} | "
              f"{r['update_s']:.1f} | {100 * share:.0f}% | {r.get('warmup_s', 0):.1f} | "
              f"{r.get(mem_key, float('nan')):,.0f} | {mem_ratio} |")
    for name, r in results.items():
        print(f"returns logged by `{name}`: {r['returns']}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2, help="PPO iterations of 64x256 steps")
    p.add_argument("--warmup", type=int, default=1, help="first iterations not in the rate")
    p.add_argument("--baseline-iterations", type=int, default=2,
                   help="iterations of the same-run textbook baseline (0: skip it)")
    p.add_argument("--widths", default="1", help="comma-separated IMPALA widths")
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)  # worker
    p.add_argument("--env", default="starpilot", help="procgen game")
    p.add_argument("--switches", default="off,overlap,bf16,compile,on",
                   help=f"comma-separated sets of speed switches: {list(SWITCHES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--gpu", action="store_true",
                   help="GPU mode: device cuda, widths 0.25,1,4, every switch")
    p.add_argument("--worker", choices=list(SWITCHES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return
    if args.gpu:
        args.device, args.widths = "cuda", "0.25,1,4"
        args.switches = "off,overlap,bf16,compile,graphs,on"
    from rl_scaling.run import resolve_device

    device = resolve_device(args.device)
    for width in (float(w) for w in args.widths.split(",")):
        table(width, args, device)


if __name__ == "__main__":
    main()
