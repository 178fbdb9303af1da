"""Throughput of IMPALA's actor-learner split against its synchronous mode, in one run.

For the synchronous mode and for 1, 2 and N actor processes, on the same env and network, for
each env given (NetHack with the NetHack agent, ``model=nethack``; CartPole-v1 and other
``env=gym`` ids with ``model=lstm``):

- end-to-end env steps/s of training through the real path (config -> run -> impala.train);
- the learner's own rate (learner samples/s: T x B per learner step over the step's time) and
  its share of wall time spent waiting for data (``rollout_time``: near 0 when the actors keep
  up; for the synchronous mode it is the acting itself);
- the actors' own rate (actor env steps/s: the same actors filling slots that are released at
  once, with no learner), so one can see which side starves;
- the mean policy lag.

    python bench/impala.py [--envs CartPole-v1,NetHackScore-v0] [--actors 1,2,4]
                           [--steps 60000,30720] [--unroll 80] [--batch 32] [--width 1]
                           [--device cpu|cuda] [--inference local,learner]

``--device cuda`` puts the learner on the GPU. ``--inference``: the actors act with CPU copies
of the network (``local``), or a thread of the learner acts for all of them in batches on its
device (``learner``; ``algo.actor_inference``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.actors import ActorPool, SlotShapes  # noqa: E402
from rl_scaling.context import EnvFactory, EnvSpec  # noqa: E402

CONFIGS = ROOT / "configs"


def family(env_id: str) -> tuple[str, str]:
    """(env family, model family) of an env id."""
    return ("nethack", "nethack") if env_id.startswith("NetHack") else ("gym", "lstm")


def train(args: argparse.Namespace, env_id: str, steps: int, actors: int,
          inference: str = "local") -> dict:
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        env_family, model_family = family(env_id)
        cfg = compose("config", overrides=[
            "algo=impala", f"model={model_family}", f"model.width={args.width}",
            f"env={env_family}", f"env.id={env_id}", f"algo.unroll_length={args.unroll}",
            f"algo.batch_size={args.batch}", f"algo.num_actors={actors}",
            f"budget.value={steps}", "logger.progress=none", "checkpoint_every=null",
            "eval_every=null", f"device={args.device}", f"algo.actor_inference={inference}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run(cfg, tmp)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[2:]  # leave out start-up (process spawn, first allocations)
    steps = rows[-1]["env_steps"] - rows[0]["env_steps"] + args.unroll * args.batch
    wait = sum(r["rollout_time"] for r in rows)
    learn = sum(r["update_time"] for r in rows)
    return {"sps": steps / (wait + learn), "wall_incl_startup": wall,
            "learner_sps": len(rows) * args.unroll * args.batch / learn,
            "wait_share": wait / (wait + learn),
            "policy_lag": float(np.mean([r["policy_lag"] for r in rows])),
            "inference_batch": float(np.mean([r.get("inference_batch", 0.0) for r in rows]))}


def actors_only(args: argparse.Namespace, env_id: str, actors: int, inference: str = "local",
                seconds: float = 15.0) -> float:
    """Env steps/s the actors produce when slots are released as soon as they are full."""
    import agents  # noqa: F401  (registers the model families in this process)
    from agents.models import ModelConfig
    from rl_scaling.registry import MODELS

    env_family, model_family = family(env_id)
    factory = EnvFactory(env_family, {"family": env_family, "id": env_id, "num_envs": 1,
                                      "eval": {}}, seed=0)
    env = factory(num_envs=1)
    spec = EnvSpec(env.single_observation_space, env.single_action_space)
    env.close()
    model = MODELS[model_family].build(ModelConfig(model_family, args.width), spec)
    per_actor = args.batch // actors
    h0, _ = model.initial_state(per_actor)
    shapes = SlotShapes(args.unroll, per_actor, spec.observation_space, tuple(h0.shape))
    device = torch.device(args.device) if inference == "learner" else None
    pool = ActorPool(actors, 2, shapes, factory, model, seed=0, inference_device=device)
    try:
        pool.release(pool.take(1))  # started
        t0, produced = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            chosen = pool.take(1)
            pool.release(chosen)
            produced += args.unroll * per_actor
        return produced / (time.perf_counter() - t0)
    finally:
        pool.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="CartPole-v1,NetHackScore-v0",
                   help="comma-separated env ids (NetHack* ids use env=nethack)")
    p.add_argument("--actors", default="1,2,4", help="comma-separated actor counts")
    p.add_argument("--steps", default="60000,30720",
                   help="env steps of each training run, one per env (or one for all)")
    p.add_argument("--unroll", type=int, default=80)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="cpu", help="the learner's device (cpu, cuda)")
    p.add_argument("--inference", default="local",
                   help="comma-separated algo.actor_inference modes to measure: local (the "
                        "actors act on CPU), learner (batched on the learner's device)")
    args = p.parse_args()
    env_ids = args.envs.split(",")
    steps = [int(s) for s in args.steps.split(",")]
    steps = steps * len(env_ids) if len(steps) == 1 else steps
    if len(steps) != len(env_ids):
        p.error(f"--steps: give one value, or one per env ({len(env_ids)})")
    counts = [int(a) for a in args.actors.split(",")]
    modes = args.inference.split(",")
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"CPU, {torch.get_num_threads()} torch threads")
    for env_id, env_steps in zip(env_ids, steps, strict=True):
        # each row is printed as soon as it is measured: a cut-short run keeps its rows
        print(f"\nIMPALA on {env_id} ({family(env_id)[1]} model, width {args.width}), unroll "
              f"{args.unroll} x batch {args.batch}, {env_steps:,} env steps per run, learner "
              f"on {device}\n")
        print("| mode | env steps/s | vs sync | learner samples/s | learner waiting | "
              "actor env steps/s (no learner) | envs per inference call | policy lag |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        base = None
        runs = [("sync", 0, "local")] + [
            (f"{n} actors" + ("" if modes == ["local"] else f", {mode} inference"), n, mode)
            for mode in modes for n in counts]
        for name, n, mode in runs:
            print(f"  {env_id}: {name} ...", file=sys.stderr, flush=True)
            actor = f"{actors_only(args, env_id, n, mode):,.0f}" if n else "(acting is the wait)"
            r = train(args, env_id, env_steps, n, mode)
            base = base or r["sps"]
            batch = f"{r['inference_batch']:.1f}" if r["inference_batch"] else "-"
            print(f"| {name} | {r['sps']:,.0f} | {r['sps'] / base:.2f}x | "
                  f"{r['learner_sps']:,.0f} | {100 * r['wait_share']:.0f}% | {actor} | "
                  f"{batch} | {r['policy_lag']:.1f} |", flush=True)

if __name__ == "__main__":
    main()
