"""Throughput of IMPALA's actor-learner split against its synchronous mode, in one run.

For the synchronous mode and for 1, 2 and N actor processes, on the same env and network:

- end-to-end env steps/s of training through the real path (config -> run -> impala.train);
- the learner's own rate (learner samples/s: T x B per learner step over the step's time) and
  its share of wall time spent waiting for data (``rollout_time``: near 0 when the actors keep
  up; for the synchronous mode it is the acting itself);
- the actors' own rate (actor env steps/s: the same actors filling slots that are released at
  once, with no learner), so one can see which side starves;
- the mean policy lag.

    python bench/impala.py [--env-id CartPole-v1] [--actors 1,2,4] [--steps 60000]
                           [--unroll 80] [--batch 32] [--width 1]

NetHack (the study's env) joins this table with the NLE env family; until then CartPole-v1
(``env=gym``) stands in, whose step is ~100x cheaper than NetHack's.
"""

from __future__ import annotations

import argparse
import copy
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
from agents.models import build_model  # noqa: E402
from rl_scaling.context import EnvFactory  # noqa: E402

CONFIGS = ROOT / "configs"


def train(args: argparse.Namespace, actors: int) -> dict:
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[
            "algo=impala", "model=lstm", f"model.width={args.width}", "env=gym",
            f"env.id={args.env_id}", f"algo.unroll_length={args.unroll}",
            f"algo.batch_size={args.batch}", f"algo.num_actors={actors}",
            f"budget.value={args.steps}", "logger.progress=none", "checkpoint_every=null",
            "eval_every=null"])
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
            "policy_lag": float(np.mean([r["policy_lag"] for r in rows]))}


def actors_only(args: argparse.Namespace, actors: int, seconds: float = 15.0) -> float:
    """Env steps/s the actors produce when slots are released as soon as they are full."""
    from envs import make_env  # noqa: F401  (registers the env families in this process)

    factory = EnvFactory("gym", {"family": "gym", "id": args.env_id, "num_envs": 1,
                                 "eval": {}}, seed=0)
    env = factory(num_envs=1)
    obs_shape, n_actions = env.single_observation_space.shape, env.single_action_space.n
    env.close()
    model = build_model("lstm", obs_shape, n_actions, width=args.width)
    per_actor = args.batch // actors
    h0, _ = model.initial_state(per_actor)
    shapes = SlotShapes(args.unroll, per_actor, tuple(obs_shape), torch.float32,
                        tuple(h0.shape))
    pool = ActorPool(actors, 2, shapes, factory, copy.deepcopy(model).eval(), seed=0)
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
    p.add_argument("--env-id", default="CartPole-v1")
    p.add_argument("--actors", default="1,2,4", help="comma-separated actor counts")
    p.add_argument("--steps", type=int, default=60_000, help="env steps of each training run")
    p.add_argument("--unroll", type=int, default=80)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    args = p.parse_args()
    counts = [int(a) for a in args.actors.split(",")]
    results = {"sync": train(args, 0)}
    for n in counts:
        print(f"  measuring {n} actor(s) ...", file=sys.stderr, flush=True)
        actor_sps = actors_only(args, n)
        results[f"{n} actors"] = {**train(args, n), "actor_sps": actor_sps}
    base = results["sync"]["sps"]
    print(f"\nIMPALA on {args.env_id}, LSTM width {args.width}, unroll {args.unroll} x batch "
          f"{args.batch}, {args.steps:,} env steps per run, torch threads "
          f"{torch.get_num_threads()}\n")
    print("| mode | env steps/s | vs sync | learner samples/s | learner waiting | "
          "actor env steps/s (no learner) | policy lag |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        actor = f"{r['actor_sps']:,.0f}" if "actor_sps" in r else "(acting is the wait)"
        print(f"| {name} | {r['sps']:,.0f} | {r['sps'] / base:.2f}x | "
              f"{r['learner_sps']:,.0f} | {100 * r['wait_share']:.0f}% | {actor} | "
              f"{r['policy_lag']:.1f} |")


if __name__ == "__main__":
    main()
