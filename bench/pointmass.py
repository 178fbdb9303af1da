"""Point-mass world stepping speed: the vectorised env against a per-world Python loop of the
same dynamics, measured in the same run on the same machine (ratios, not remembered numbers).

    python bench/pointmass.py                          # levels 1,3,5 x 1,024 and 16,384 worlds
    python bench/pointmass.py --quick                  # fewer steps (a smoke check of the bench)
    python bench/pointmass.py --levels 1 --worlds 1024,16384,65536

For each level and number of worlds W:

- **vectorised**: ``make_pointmass(num_envs=W, seed=0, level=L)`` stepped with uniformly random
  actions drawn before the clock starts, after a warm-up; world-steps/s = W x steps / seconds,
  the median of ``--repeats`` timings. Auto-resets (task generation) and observations are
  included, as in training.
- **per-world loop**: W single-world envs (``make_pointmass(num_envs=1, seed=i, level=L)``,
  one per world) stepped one after the other in a Python loop, as gymnasium's
  ``SyncVectorEnv`` would: the same dynamics by construction. Slow, so timed on fewer steps
  (``--loop-steps``, one timing).
- **scalar Python** (level 1 only): a hand-written per-world step of level 1's dynamics in plain
  floats and ``math`` (`ScalarLevel1World`: velocity update, wall clipping, contact pushing,
  the near-goal check, score and shaping reward). It builds no observation, keeps no episode
  statistics and draws a new layout with ``random`` instead of the hashed task generator, so
  it is a lower bound on a scalar env's cost. Before timing, the bench checks that it
  reproduces the vectorised env's positions, rewards and episode ends step by step
  (`check_scalar`).

The numpy step runs on one core (elementwise numpy is single-threaded).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from envs.pointmass import (  # noqa: E402
    ACCEL,
    AGENT_R,
    DAMPING,
    LEVELS,
    NEAR,
    NEAR_DIST,
    OBJECT_R,
    REDRAWS,
    PointMassEnvConfig,
    PointMassVecEnv,
    make_pointmass,
)

TARGET = 1_000_000  # world-steps/s at level 1 (the aim)
_MOVES = ((0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))


def random_actions(env: PointMassVecEnv, steps: int, seed: int) -> np.ndarray:
    """(steps, num_envs) uniformly random discrete actions, drawn before any timing."""
    n = env.single_action_space.n
    return np.random.default_rng(seed).integers(0, n, (steps, env.num_envs))


def vectorised_rate(level: int, worlds: int, steps: int, warmup: int, repeats: int) -> float:
    """Median world-steps/s of `make_pointmass(num_envs=worlds, level=level)` over `repeats`
    timings of `steps` steps each, after `warmup` steps."""
    env = make_pointmass(num_envs=worlds, seed=0, level=level)
    env.reset()
    actions = random_actions(env, warmup + steps * repeats, seed=1)
    for a in actions[:warmup]:
        env.step(a)
    rates = []
    for r in range(repeats):
        chunk = actions[warmup + r * steps:warmup + (r + 1) * steps]
        t = time.perf_counter()
        for a in chunk:
            env.step(a)
        rates.append(worlds * steps / (time.perf_counter() - t))
    return statistics.median(rates)


def single_world_envs(level: int, worlds: int) -> list[PointMassVecEnv]:
    """`worlds` one-world envs of `level`, seeds 0.., each reset (not timed)."""
    envs = [make_pointmass(num_envs=1, seed=i, level=level) for i in range(worlds)]
    for env in envs:
        env.reset()
    return envs


def per_world_rate(envs: list[PointMassVecEnv], steps: int) -> float:
    """World-steps/s of stepping the one-world `envs` one after the other, `steps` times
    (SyncVectorEnv-style), after one warm-up step of the first few."""
    actions = np.random.default_rng(2).integers(
        0, envs[0].single_action_space.n, (steps + 1, len(envs)))
    for i, env in enumerate(envs[:64]):
        env.step(actions[0, i:i + 1])
    t = time.perf_counter()
    for row in actions[1:]:
        for i, env in enumerate(envs):
            env.step(row[i:i + 1])
    return len(envs) * steps / (time.perf_counter() - t)


class ScalarLevel1World:
    """One level-1 world (`LEVELS[1]`: one agent, discrete moves, objects, goal near(X)) in
    plain Python floats, the equations of `PointMassVecEnv.step`. Builds no observation and
    draws layouts with `random` (uniform in the arena less a 0.1 margin, redrawn while the
    goal already holds), not with the hashed task generator."""

    __slots__ = ("rng", "arena", "max_steps", "shaping", "x", "y", "vx", "vy", "ox", "oy",
                 "goal", "steps", "last_phi")

    def __init__(self, seed: int) -> None:
        knobs = LEVELS[1]
        self.rng = random.Random(seed)
        self.arena = float(knobs["arena_size"])
        self.max_steps = int(knobs["max_steps"])
        self.shaping = float(PointMassEnvConfig().shaping)
        n = int(knobs["num_objects"])
        self.x = self.y = self.vx = self.vy = 0.0
        self.ox, self.oy = [0.0] * n, [0.0] * n
        self.goal = self.steps = 0
        self.last_phi = 0.0
        self.reset()

    def reset(self) -> None:
        u, lo, span = self.rng.random, 0.1, self.arena - 0.2
        for _ in range(REDRAWS):
            self.x, self.y = lo + span * u(), lo + span * u()
            for o in range(len(self.ox)):
                self.ox[o], self.oy[o] = lo + span * u(), lo + span * u()
            self.goal = self.rng.randrange(len(self.ox))
            if self.gap() > 0:
                break
        self.vx = self.vy = 0.0
        self.steps = 0
        self.last_phi = -self.gap() / self.arena

    def gap(self) -> float:
        """Distance of near(goal object) from holding (0: holds)."""
        dx, dy = self.x - self.ox[self.goal], self.y - self.oy[self.goal]
        return max(math.sqrt(dx * dx + dy * dy) - NEAR_DIST, 0.0)

    def step(self, action: int) -> tuple[float, bool, bool]:
        """One step; returns (reward, terminated, truncated) and resets on an episode end."""
        fx, fy = _MOVES[action if action < 4 else 4]
        hi = self.arena - AGENT_R
        vx, vy = DAMPING * self.vx + ACCEL * fx, DAMPING * self.vy + ACCEL * fy
        nx, ny = self.x + vx, self.y + vy
        x = AGENT_R if nx < AGENT_R else hi if nx > hi else nx
        y = AGENT_R if ny < AGENT_R else hi if ny > hi else ny
        if x != nx:  # walls stop the agent
            vx = 0.0
        if y != ny:
            vy = 0.0
        self.x, self.y, self.vx, self.vy = x, y, vx, vy
        contact, ohi = AGENT_R + OBJECT_R, self.arena - OBJECT_R
        ox, oy = self.ox, self.oy
        for o in range(len(ox)):
            dx, dy = ox[o] - x, oy[o] - y
            dist = math.sqrt(dx * dx + dy * dy)
            px, py = ox[o], oy[o]
            if dist < contact:  # pushed out of the agent's way
                ux, uy = (dx / dist, dy / dist) if dist > 1e-9 else (1.0, 0.0)
                push = contact - dist
                px, py = px + ux * push, py + uy * push
            ox[o] = OBJECT_R if px < OBJECT_R else ohi if px > ohi else px
            oy[o] = OBJECT_R if py < OBJECT_R else ohi if py > ohi else py
        self.steps += 1
        gap = self.gap()
        success = gap == 0.0
        reward = 1.0 - 0.5 * self.steps / self.max_steps if success else 0.0
        if self.shaping:
            phi = -gap / self.arena
            reward += self.shaping * (phi - self.last_phi)
            self.last_phi = phi
        truncated = not success and self.steps >= self.max_steps
        if success or truncated:
            self.reset()
        return reward, success, truncated

    def load(self, env: PointMassVecEnv, i: int) -> None:
        """Take world `i`'s state from a level-1 vectorised env."""
        self.x, self.y = (float(v) for v in env.agent_pos[i, 0])
        self.vx, self.vy = (float(v) for v in env.agent_vel[i, 0])
        self.ox = [float(v) for v in env.obj_pos[i, :, 0]]
        self.oy = [float(v) for v in env.obj_pos[i, :, 1]]
        self.goal = int(env.goal["arg_a"][i, 0])
        self.steps = int(env.steps[i])
        self.last_phi = float(env._last_phi[i])


def check_scalar(worlds: int = 256, steps: int = 60, seed: int = 0) -> int:
    """Step `ScalarLevel1World`s loaded from a level-1 vectorised env with the same random
    actions and compare positions, rewards and episode ends until each world's first
    episode end (after which the two draw different tasks). Returns the world-steps compared.

    Raises:
        AssertionError: a world diverged (the scalar step is not the same dynamics).
    """
    env = make_pointmass(num_envs=worlds, seed=seed, level=1)
    env.reset()
    w = env.world
    assert (w.num_agents, w.num_zones, w.max_conjuncts, w.discrete, w.grab, w.push) == \
        (1, 0, 1, True, False, False) and w.predicates == [NEAR], "level 1 changed"
    scalar = [ScalarLevel1World(i) for i in range(worlds)]
    for i, s in enumerate(scalar):
        s.load(env, i)
    live = np.ones(worlds, dtype=bool)
    compared = 0
    for a in random_actions(env, steps, seed=3):
        _, reward, term, trunc, _ = env.step(a)
        for i in np.flatnonzero(live):
            r, t, tr = scalar[i].step(int(a[i]))
            where = f"world {i}, step {env.steps[i] if not (t or tr) else 'end'}"
            assert (t, tr) == (bool(term[i]), bool(trunc[i])), f"episode end differs, {where}"
            assert abs(r - float(reward[i])) <= 1e-6, f"reward {r} vs {reward[i]}, {where}"
            if t or tr:
                live[i] = False
            else:
                same = (np.allclose((scalar[i].x, scalar[i].y), env.agent_pos[i, 0],
                                    rtol=0, atol=1e-12)
                        and np.allclose(np.stack([scalar[i].ox, scalar[i].oy], 1),
                                        env.obj_pos[i], rtol=0, atol=1e-12))
                assert same, f"positions differ, {where}"
            compared += 1
    return compared


def scalar_rate(worlds: int, steps: int) -> float:
    """World-steps/s of `worlds` `ScalarLevel1World`s stepped one after the other, `steps`
    times, with random actions converted to Python ints before the clock starts."""
    scalar = [ScalarLevel1World(i) for i in range(worlds)]
    actions = np.random.default_rng(4).integers(0, 5, (steps, worlds)).tolist()
    for s, a in zip(scalar[:64], actions[0], strict=False):
        s.step(a)
    t = time.perf_counter()
    for row in actions:
        for s, a in zip(scalar, row, strict=True):
            s.step(a)
    return worlds * steps / (time.perf_counter() - t)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the bench, print the markdown table, return its rows (one dict per level x worlds:
    level, worlds, vectorised, loop, speedup, and scalar, scalar_speedup at level 1)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps: checks the bench runs")
    p.add_argument("--levels", type=_ints, default=[1, 3, 5], help="comma-separated, e.g. 1,3")
    p.add_argument("--worlds", type=_ints, default=[1024, 16384], help="comma-separated")
    p.add_argument("--steps", type=int, default=None, help="vectorised steps per repeat (100)")
    p.add_argument("--repeats", type=int, default=None, help="vectorised timings (3)")
    p.add_argument("--loop-steps", type=int, default=None,
                   help="steps of the per-world loop (3); the scalar loop runs 10x as many")
    args = p.parse_args(argv)
    bad = [lv for lv in args.levels if lv not in LEVELS]
    if bad or not args.levels:
        p.error(f"--levels {bad or ''} must be in {sorted(LEVELS)}")
    if not args.worlds or min(args.worlds) < 1:
        p.error("--worlds must be positive integers")
    steps = args.steps or (5 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = 2 if args.quick else 10
    loop_steps = args.loop_steps or (1 if args.quick else 3)

    t0 = time.perf_counter()
    if 1 in args.levels:
        check_scalar(worlds=32 if args.quick else 256, steps=20 if args.quick else 60)
    rows = []
    for level in args.levels:
        envs = single_world_envs(level, max(args.worlds))  # the first W serve W worlds
        for worlds in args.worlds:
            vec = vectorised_rate(level, worlds, steps, warmup, repeats)
            loop = per_world_rate(envs[:worlds], loop_steps)
            row = {"level": level, "worlds": worlds, "vectorised": vec, "loop": loop,
                   "speedup": vec / loop, "scalar": None, "scalar_speedup": None}
            if level == 1:
                row["scalar"] = scalar_rate(worlds, 10 * loop_steps)
                row["scalar_speedup"] = vec / row["scalar"]
            rows.append(row)
            print(f"  level {level}, {worlds:,} worlds: {vec:,.0f} vs {loop:,.0f} world-steps/s",
                  file=sys.stderr, flush=True)
        del envs

    print(f"\nPoint-mass world-steps/s, random actions; {os.cpu_count()}-core "
          f"{platform.machine()} CPU, Python {platform.python_version()}, numpy "
          f"{np.__version__}; vectorised: median of {repeats} x {steps} steps after {warmup}; "
          f"per-world loop: {loop_steps} steps; scalar Python: {10 * loop_steps} steps\n")
    print("| level | worlds | vectorised steps/s | per-world loop steps/s | speed-up "
          "| scalar Python loop steps/s | speed-up vs scalar |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sp = "–" if r["scalar_speedup"] is None else f"{r['scalar_speedup']:.1f}x"
        print(f"| {r['level']} | {r['worlds']:,} | {_fmt(r['vectorised'])} | {_fmt(r['loop'])} "
              f"| {r['speedup']:.1f}x | {_fmt(r['scalar'])} | {sp} |")
    print("\nper-world loop: one `make_pointmass(num_envs=1)` env per world, stepped in a Python "
          "loop (SyncVectorEnv-style). scalar Python: level 1's step in plain floats, checked "
          "against the vectorised env step by step; it omits observation building, episode "
          "statistics and the hashed task generator.")
    level1 = [r for r in rows if r["level"] == 1]
    if level1:
        best = max(level1, key=lambda r: r["vectorised"])
        met = [f"{r['worlds']:,} worlds: {r['vectorised'] / 1e6:.2f}M "
               f"({'met' if r['vectorised'] >= TARGET else 'not met'})" for r in level1]
        print(f"target {TARGET / 1e6:.0f}M world-steps/s at level 1: "
              f"{'met' if best['vectorised'] >= TARGET else 'NOT met'} "
              f"(best {best['worlds']:,} worlds); " + "; ".join(met))
    print(f"bench wall time {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
