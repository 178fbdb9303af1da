"""A procedurally generated 2-D point-mass world with complexity knobs (the generalization
study of Meulemans, Lindner, Dorner 2021), vectorised in numpy: thousands of worlds per
process, one array op per step for all of them.

**The world.** A square arena of side `arena_size`. The learner is agent 0, a point mass with
velocity (`vel <- 0.6 vel + 0.04 force`, `pos <- pos + vel`, walls stop it); `num_agents - 1`
other agents follow a fixed scripted policy (each heads to a random waypoint and picks a new
one on arrival). `num_objects` movable objects each have a colour and a shape (a pair unique in
its world); `num_zones` static zones have a colour each. Any agent pushes an object it touches
out of its way (contact pushing, agent radius and object radius 0.05); objects do not push
each other. Extra actions (`extra_actions`): `grab` (grab the nearest object within reach, it
then moves with the agent; and `drop`) and `push` (kick the nearest object within reach 0.3
away from the agent).

**Tasks and goals.** A task is (world layout, goal), generated from a 64-bit task key by a
counter-based hash (splitmix64), so every task is reproducible from `(task_seed, set, index)`
alone and a batch of resets is generated in one vectorised pass. A goal is a conjunction of
1..`max_conjuncts` distinct predicate types, the first `num_predicates` of `PREDICATES`:

  near(X)          the agent is within 0.12 of object X (touching it)
  in_zone(Z)       the agent is inside zone Z (radius 0.15)
  on_zone(X, Z)    object X's centre is inside zone Z (push or carry it there)
  together(X, Y)   objects X and Y are within 0.12 of each other
  away(X)          the agent is at least 0.4 * arena_size from object X

A goal has at most one of near / in_zone / away (the agent is in one place). Objects are
named in the goal by (colour, shape), zones by colour, exactly as the observation shows
them, so a policy must read the goal and find the matching object. The goal's objects are
distinct; a generated layout where the goal already holds is redrawn (up to 8 times).

**Reward.** Reaching the goal ends the episode (terminated) with the task score
`1 - 0.5 * t / max_steps` (faster is better); an episode not solved in `max_steps` is truncated
with score 0. `shaping > 0` adds the potential difference `shaping * (Phi(s') - Phi(s))`,
`Phi = -(sum of the goal's distances-to-satisfaction) / arena_size`, to every step's reward
(dense; not part of the score). `info["episode_score"]` is the score alone.

**Task sets** (`split`, "+"-joined for several, e.g. "test+ood_objects"):

  train           `num_tasks` tasks (None: a fresh task every episode), drawn at random
  test            `num_test_tasks` other tasks of the training distribution (disjoint keys)
  ood_objects     goals naming an object whose (colour, shape) pair never occurs in train or
                  test worlds (`holdout_fraction` of the pairs, at least one, are held out)
  ood_predicates  goals combining two predicate types that no train or test goal combines
                  (`holdout_fraction` of the type pairs, at least one; needs max_conjuncts >= 2)

In the evaluation sets (all but train) env `i` plays task `i`, then `i + num_envs`, ...; each
task's score is normalised between a uniformly random policy (0) and the scripted reference
policy (1), both measured on that task when the env is built (`random_episodes`,
`reference_episodes`; the gap is floored at 0.05 so a task the reference barely solves does not
blow up): `info["episode_normalized_score"]`, with `episode_task` (index in its set) and
`episode_task_set` (index in the split list). `agents.evaluation.evaluate` turns them into the
generalization metrics (fraction of tasks above `solve_threshold`, mean of the lowest
`lowest_percentile` %, per-task scores).

**Complexity knobs** (each `None` takes its value from `level`, see `LEVELS`): state space
(`arena_size`, `num_objects`, `num_zones`, `num_colors`, `num_shapes`), action space
(`movement`, `extra_actions`), game space (`num_predicates`, `max_conjuncts`), other agents
(`num_agents`). How each changes the sizes of the spaces: docs/pointmass.md.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_num_envs, check_seed
from rl_scaling.registry import register_env

PREDICATES = ("near", "in_zone", "on_zone", "together", "away")
NEAR, IN_ZONE, ON_ZONE, TOGETHER, AWAY = range(len(PREDICATES))
USES_ZONE = {IN_ZONE, ON_ZONE}
AGENT_PLACE = {NEAR, IN_ZONE, AWAY}  # say where the agent is: a goal has at most one
MOVES_OBJECT = {ON_ZONE, TOGETHER}
EXTRA_ACTIONS = ("grab", "push")
SETS = ("train", "test", "ood_objects", "ood_predicates")
MOVES = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float64)

AGENT_R = 0.05  # agent radius
OBJECT_R = 0.05  # object radius
ZONE_R = 0.15  # zone radius: inside means centre distance below it
NEAR_DIST = 0.12  # near / together: centre distance below it (touching)
FAR_FRACTION = 0.4  # away: centre distance at least this times the arena size
REACH = 0.15  # grab and push reach (centre distance)
KICK = 0.3  # how far `push` moves an object
DAMPING, ACCEL = 0.6, 0.04  # top speed ACCEL / (1 - DAMPING) = 0.1 per step
MIN_GAP = 0.05  # floor of (reference - random) in the score normalisation
REDRAWS = 8  # attempts at a layout where the goal does not already hold

# Complexity levels: each raises the state, action, game and other-agent spaces together.
LEVELS: dict[int, dict[str, Any]] = {
    1: dict(arena_size=1.0, num_objects=2, num_zones=0, num_colors=3, num_shapes=2,
            movement="discrete", extra_actions=[], num_predicates=1, max_conjuncts=1,
            num_agents=1, max_steps=50),
    2: dict(arena_size=1.5, num_objects=3, num_zones=1, num_colors=4, num_shapes=2,
            movement="discrete", extra_actions=[], num_predicates=2, max_conjuncts=1,
            num_agents=1, max_steps=75),
    3: dict(arena_size=2.0, num_objects=4, num_zones=2, num_colors=5, num_shapes=3,
            movement="discrete", extra_actions=["grab"], num_predicates=3, max_conjuncts=2,
            num_agents=2, max_steps=100),
    4: dict(arena_size=2.5, num_objects=5, num_zones=2, num_colors=6, num_shapes=3,
            movement="discrete", extra_actions=["grab", "push"], num_predicates=4,
            max_conjuncts=2, num_agents=3, max_steps=125),
    5: dict(arena_size=3.0, num_objects=6, num_zones=3, num_colors=6, num_shapes=4,
            movement="discrete", extra_actions=["grab", "push"], num_predicates=5,
            max_conjuncts=3, num_agents=4, max_steps=150),
}
KNOBS = tuple(LEVELS[1])


@dataclass
class PointMassEnvConfig(EnvConfig):
    """`env=pointmass`: the point-mass world (see the module docstring).

    Attributes:
        family: "pointmass".
        id: free label of the task family (not read).
        num_envs: worlds stepped together.
        eval: overrides for the evaluation envs (default: the test and OOD-object sets, one
            env per task).
        level: the complexity preset (1..5, `LEVELS`) every knob left null takes.
        arena_size: side of the square arena (state space).
        num_objects: movable objects, each a distinct (colour, shape) pair (state space).
        num_zones: static zones of distinct colours (state space).
        num_colors: colours objects and zones are drawn from (state space).
        num_shapes: shapes objects are drawn from (state space).
        movement: "discrete" (noop and 4 moves) or "continuous" (a 2-D force in [-1, 1]).
        extra_actions: any of "grab" (adds grab and drop) and "push".
        num_predicates: how many of `PREDICATES` (in order) goals use.
        max_conjuncts: the most predicates one goal combines.
        num_agents: agents in the world: the learner plus scripted ones.
        max_steps: episode time limit.
        split: the task set(s), "+"-joined: train, test, ood_objects, ood_predicates.
        num_tasks: size of the training set; None: a fresh task every episode.
        num_test_tasks: size of each evaluation set.
        task_seed: seeds the task universe (which tasks each set holds, which pairs are
            held out); the same for train and eval envs, unlike the run's seed.
        holdout_fraction: share of (colour, shape) pairs and of predicate-type pairs held out.
        shaping: weight of the potential-based shaping reward (0: sparse).
        solve_threshold: a task counts as solved when its normalised score reaches this.
        lowest_percentile: the generalization metric's lowest-scoring share of tasks, in %.
        random_episodes: episodes per task measuring the random policy's score.
        reference_episodes: episodes per task measuring the reference policy's score.
        episodes_per_task: episodes an evaluation plays on every task (their scores are
            averaged); an evaluation set's `num_envs` must divide its number of tasks or be a
            multiple of it.
    """

    family: str = "pointmass"
    id: str = "pointmass"
    num_envs: int = 64
    level: int = 1
    arena_size: float | None = None
    num_objects: int | None = None
    num_zones: int | None = None
    num_colors: int | None = None
    num_shapes: int | None = None
    movement: str | None = None
    extra_actions: list[str] | None = None
    num_predicates: int | None = None
    max_conjuncts: int | None = None
    num_agents: int | None = None
    max_steps: int | None = None
    split: str = "train"
    num_tasks: int | None = None
    num_test_tasks: int = 64
    task_seed: int = 0
    holdout_fraction: float = 0.25
    shaping: float = 0.5
    solve_threshold: float = 0.8
    lowest_percentile: float = 10.0
    random_episodes: int = 8
    reference_episodes: int = 2
    episodes_per_task: int = 1
    eval: dict[str, Any] = field(default_factory=lambda: {"split": "test+ood_objects",
                                                          "num_envs": 128})

    def validate(self) -> None:
        """Check the training envs' knobs and, at start-up rather than at the first
        evaluation, the evaluation envs' (this config with `env.eval` applied)."""
        World(self)  # every check lives in one place and names the key
        if not self.eval:
            return
        names = {f.name for f in fields(self)}
        unknown = sorted(set(self.eval) - names)
        if unknown:
            raise ValueError(f"env.eval.{unknown[0]} is not a pointmass knob; known: "
                             f"{sorted(names - {'family', 'eval'})}")
        merged = replace(self, **self.eval)
        try:
            world = World(merged)
        except ValueError as err:
            key = str(err).split("=", 1)[0].removeprefix("env.")
            if key in self.eval:  # name the key the user must change
                raise ValueError(f"env.eval.{str(err).removeprefix('env.')}") from None
            raise ValueError(f"{err} (in the evaluation envs, env.eval={self.eval})") from None
        tasks = len(world.sets) * merged.num_test_tasks
        if world.sets != ["train"] and tasks % merged.num_envs and merged.num_envs % tasks:
            key = "env.eval.num_envs" if "num_envs" in self.eval else "env.num_envs"
            raise ValueError(f"{key}={merged.num_envs} must divide, or be a multiple of, the "
                             f"{tasks} evaluation tasks ({len(world.sets)} set(s) x "
                             f"env.num_test_tasks={merged.num_test_tasks}), so every task is "
                             "played equally often")


# ------------------------------------------------------------------------ hashing (tasks)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def task_keys(task_seed: int, set_index: int, indices: np.ndarray) -> np.ndarray:
    """The 64-bit key of task `indices[i]` of set `set_index` in the universe `task_seed`."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([task_seed * 4 + set_index + 1], dtype=np.uint64) * _GOLDEN)
        return _mix(base + np.asarray(indices, dtype=np.uint64) * _GOLDEN)


def _uniform(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
    """(len(keys), n) uniforms in [0, 1), a pure function of (key, stream, column)."""
    with np.errstate(over="ignore"):
        counter = (np.arange(n, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 20)
                   + np.uint64(1)) * _GOLDEN
        x = _mix(keys[:, None] ^ _mix(counter)[None, :])
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ------------------------------------------------------------------------ knobs and the world


def _resolve(cfg: PointMassEnvConfig) -> dict[str, Any]:
    if isinstance(cfg.level, bool) or cfg.level not in LEVELS:
        raise ValueError(f"env.level={cfg.level!r} must be one of {sorted(LEVELS)}")
    return {k: (LEVELS[cfg.level][k] if getattr(cfg, k) is None else getattr(cfg, k))
            for k in KNOBS}


class World:
    """The resolved, checked knobs of one config and what follows from them: the action and
    observation layout, the held-out (colour, shape) pairs and predicate-type pairs, and the
    goal combinations each task set may draw."""

    def __init__(self, cfg: PointMassEnvConfig) -> None:
        k = _resolve(cfg)
        self.cfg = cfg

        def need(key: str, ok: bool, why: str) -> None:
            if not ok:
                value = k.get(key, getattr(cfg, key, None))
                raise ValueError(f"env.{key}={value!r} {why}")

        def integer(key: str, low: int) -> int:
            value = k[key] if key in k else getattr(cfg, key)
            need(key, not isinstance(value, bool) and isinstance(value, (int, np.integer))
                 and value >= low, f"must be an integer >= {low}")
            return int(value)

        need("arena_size", isinstance(k["arena_size"], (int, float))
             and not isinstance(k["arena_size"], bool) and k["arena_size"] >= 0.5,
             "must be a number >= 0.5 (the agent and an object must fit)")
        self.arena = float(k["arena_size"])
        self.num_objects = integer("num_objects", 1)
        self.num_zones = integer("num_zones", 0)
        self.num_colors = integer("num_colors", 1)
        self.num_shapes = integer("num_shapes", 1)
        self.num_agents = integer("num_agents", 1)
        self.max_steps = integer("max_steps", 1)
        self.num_predicates = integer("num_predicates", 1)
        self.max_conjuncts = integer("max_conjuncts", 1)
        need("movement", k["movement"] in ("discrete", "continuous"),
             "must be 'discrete' or 'continuous'")
        self.discrete = k["movement"] == "discrete"
        extra = list(k["extra_actions"] or [])
        need("extra_actions", all(a in EXTRA_ACTIONS for a in extra) and len(set(extra))
             == len(extra), f"must be distinct names from {list(EXTRA_ACTIONS)}")
        self.grab, self.push = "grab" in extra, "push" in extra
        need("num_predicates", self.num_predicates <= len(PREDICATES),
             f"must be <= {len(PREDICATES)} (the predicate types: {list(PREDICATES)})")
        self.predicates = list(range(self.num_predicates))
        combinable = len(set(self.predicates) - AGENT_PLACE) + 1
        need("max_conjuncts", self.max_conjuncts <= combinable,
             f"exceeds the {combinable} predicate types a goal of env.num_predicates="
             f"{self.num_predicates} can combine (distinct types, at most one of "
             "near / in_zone / away)")
        if USES_ZONE & set(self.predicates):
            need("num_zones", self.num_zones >= 1,
                 f"must be >= 1: env.num_predicates={self.num_predicates} includes in_zone")
        need("num_zones", self.num_zones <= self.num_colors,
             f"exceeds env.num_colors={self.num_colors}: zones have distinct colours")
        if TOGETHER in self.predicates:
            need("num_objects", self.num_objects >= 2,
                 "must be >= 2: env.num_predicates includes together")
        need("num_objects", self.num_objects >= self.max_conjuncts,
             f"must be >= env.max_conjuncts={self.max_conjuncts}: each conjunct names its "
             "own object")
        integer("num_test_tasks", 1)
        integer("random_episodes", 1)
        integer("reference_episodes", 1)
        integer("episodes_per_task", 1)
        check_seed(cfg.task_seed, "env.task_seed")
        if cfg.num_tasks is not None:
            integer("num_tasks", 1)
        for key in ("holdout_fraction", "solve_threshold", "lowest_percentile", "shaping"):
            value = getattr(cfg, key)
            need(key, isinstance(value, (int, float)) and not isinstance(value, bool)
                 and math.isfinite(value), "must be a number")
        need("holdout_fraction", 0 <= cfg.holdout_fraction < 1, "must be in [0, 1)")
        need("lowest_percentile", 0 < cfg.lowest_percentile <= 100, "must be in (0, 100]")
        need("shaping", cfg.shaping >= 0, "must be >= 0")

        # held-out (colour, shape) pairs and predicate-type pairs: fixed by task_seed
        pairs = self.num_colors * self.num_shapes
        n_hold = (max(1, round(cfg.holdout_fraction * pairs))
                  if cfg.holdout_fraction > 0 and pairs >= 2 else 0)
        rank = np.argsort(_uniform(task_keys(cfg.task_seed, 0, [0]), 1, pairs)[0])
        self.held_pairs = np.zeros(pairs, dtype=bool)
        self.held_pairs[rank[:n_hold]] = True
        need("num_objects", self.num_objects <= pairs - n_hold,
             f"exceeds the {pairs - n_hold} (colour, shape) pairs left for training worlds "
             f"(env.num_colors x env.num_shapes = {pairs}, {n_hold} held out)")
        # pairs some goal can combine (two places for the agent never occur together)
        type_pairs = [p for p in itertools.combinations(self.predicates, 2)
                      if not set(p) <= AGENT_PLACE]
        n_type_hold = (max(1, round(cfg.holdout_fraction * len(type_pairs)))
                       if cfg.holdout_fraction > 0 and type_pairs and self.max_conjuncts >= 2
                       else 0)
        order = np.argsort(_uniform(task_keys(cfg.task_seed, 0, [1]), 2,
                                    max(1, len(type_pairs)))[0])
        self.held_type_pairs = {type_pairs[i] for i in order[:n_type_hold]}

        # goal combinations: distinct types, object-naming types first (in_zone last), so
        # conjunct 0 names an object whenever the goal names any
        combos = []
        for size in range(1, self.max_conjuncts + 1):
            for c in itertools.combinations(self.predicates, size):
                if len(AGENT_PLACE & set(c)) <= 1:  # the agent is in one place
                    combos.append(tuple(sorted(c, key=lambda p: (p == IN_ZONE, p))))
        self.combos = np.full((len(combos), self.max_conjuncts), -1, dtype=np.int64)
        for i, c in enumerate(combos):
            self.combos[i, :len(c)] = c
        held = np.array([any(p in self.held_type_pairs for p in itertools.combinations(
            sorted(c), 2)) for c in combos])
        names_object = np.array([c[0] != IN_ZONE for c in combos])
        self.allowed = {"train": ~held, "test": ~held, "ood_objects": ~held & names_object,
                        "ood_predicates": held}

        self.sets = cfg.split.split("+") if isinstance(cfg.split, str) else []
        need("split", bool(self.sets) and all(s in SETS for s in self.sets)
             and len(set(self.sets)) == len(self.sets),
             f"must be one of {list(SETS)} or several '+'-joined")
        need("split", "train" not in self.sets or self.sets == ["train"],
             "'train' cannot be combined with evaluation sets")
        if "ood_objects" in self.sets:
            need("split", n_hold > 0 and self.allowed["ood_objects"].any(),
                 "includes ood_objects, which needs held-out (colour, shape) pairs "
                 "(env.holdout_fraction > 0, env.num_colors x env.num_shapes >= 2) and a "
                 "predicate naming an object")
        if "ood_predicates" in self.sets:
            need("split", self.held_type_pairs != set(),
                 "includes ood_predicates, which needs env.max_conjuncts >= 2 and "
                 "env.holdout_fraction > 0")
        for s in self.sets:
            need("split", self.allowed[s].any(), f"leaves set {s!r} no goal to draw")

        # actions and observation layout
        if self.discrete:
            self.action_space = gymnasium.spaces.Discrete(5 + 2 * self.grab + self.push)
        else:
            dims = 2 + self.grab + self.push
            self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (dims,), dtype=np.float32)
        C, S, P = self.num_colors, self.num_shapes, self.num_predicates
        self.obs_dim = (5 + self.num_objects * (3 + C + S) + self.num_zones * (2 + C)
                        + (self.num_agents - 1) * 4 + self.max_conjuncts * (2 + P + 2 * C + 2 * S))
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.obs_dim,),
                                                      dtype=np.float32)

    def space_sizes(self) -> dict[str, float]:
        """How big each space is (docs/pointmass.md explains each):

        - ``log10_positions``: arrangements of the agents, objects and zones on a grid of
          the agent's radius (0.05), ``2 (A + O + Z) log10(L / 0.05)``;
        - ``object_assignments``: ordered draws of the objects' (colour, shape) pairs from the
          training pairs times the zones' colours;
        - ``actions``: discrete actions, or continuous action dimensions;
        - ``goal_types``: the predicate-type combinations training goals draw from;
        - ``goals_per_world``: distinct goals in one world (each type combination times the
          choices of its arguments: objects for near / away / on_zone / together, zones for
          in_zone / on_zone, distinct objects across conjuncts);
        - ``other_agents``: scripted agents.
        """
        O, Z = self.num_objects, self.num_zones
        train_pairs = int((~self.held_pairs).sum())
        goals = 0
        for row in self.combos[self.allowed["train"]]:
            types = [p for p in row if p >= 0]
            object_args = sum(p != IN_ZONE for p in types)
            count = math.perm(O, object_args)  # distinct objects across conjuncts
            for p in types:
                count *= {IN_ZONE: Z, ON_ZONE: Z, TOGETHER: max(O - 1, 1)}.get(p, 1)
            goals += count
        return {
            "log10_positions": 2 * (self.num_agents + O + Z) * math.log10(self.arena / AGENT_R),
            "object_assignments": float(math.perm(train_pairs, O) * math.perm(self.num_colors, Z)),
            "actions": float(self.action_space.n if self.discrete
                             else self.action_space.shape[0]),
            "goal_types": float(self.allowed["train"].sum()),
            "goals_per_world": float(goals),
            "other_agents": float(self.num_agents - 1),
        }

    # -------------------------------------------------------------------- generation

    def generate(self, keys: np.ndarray, set_name: str) -> dict[str, np.ndarray]:
        """Layouts and goals of the tasks with these keys, drawn for set `set_name`."""
        n, O, Z, A, K = len(keys), self.num_objects, self.num_zones, self.num_agents, \
            self.max_conjuncts
        C, S = self.num_colors, self.num_shapes
        # objects' (colour, shape) pairs in role order: distinct, held-out pairs never in
        # train/test worlds; in OOD-object worlds role 0 (the goal's first object) is held out
        pair_keys = _uniform(keys, 10, C * S)
        if set_name == "ood_objects":
            pair_keys = pair_keys - 2.0 * self.held_pairs
        else:
            pair_keys = np.where(self.held_pairs, np.inf, pair_keys)
        pair = np.argsort(pair_keys, axis=1)[:, :O]
        # goal: a combination allowed in this set, sizes uniform over those present
        allowed = np.flatnonzero(self.allowed[set_name])
        sizes = (self.combos[allowed] >= 0).sum(1)
        u = _uniform(keys, 11, 2)
        present = np.unique(sizes)
        size = present[np.minimum((u[:, 0] * len(present)).astype(int), len(present) - 1)]
        combo = np.empty(n, dtype=np.int64)
        for s in present:
            rows = size == s
            choice = allowed[sizes == s]
            combo[rows] = choice[np.minimum((u[rows, 1] * len(choice)).astype(int),
                                            len(choice) - 1)]
        pred = self.combos[combo]
        j = np.arange(K)[None, :]
        arg_a_role = np.where(pred == IN_ZONE, j % max(Z, 1), j % O)
        arg_b_role = np.where(pred == TOGETHER, (j + 1) % O, j % max(Z, 1))
        # roles -> slots: shuffle the objects' and zones' order in the observation
        obj_perm = np.argsort(_uniform(keys, 12, O), axis=1)  # slot -> role
        obj_slot = np.argsort(obj_perm, axis=1)  # role -> slot
        zone_colors = np.argsort(_uniform(keys, 13, C), axis=1)[:, :Z]  # distinct colours
        goal_a = np.where(pred == IN_ZONE, arg_a_role,
                          np.take_along_axis(obj_slot, arg_a_role % O, 1))
        goal_b = np.where(pred == TOGETHER, np.take_along_axis(obj_slot, arg_b_role, 1),
                          arg_b_role)
        # shuffle the conjuncts' order (active first), so that no predicate type is tied to a
        # slot of the goal's observation: an OOD combination is new only as a combination
        order = np.argsort(np.where(pred >= 0, _uniform(keys, 14, K), 2.0), axis=1)
        tasks = {
            "obj_color": np.take_along_axis(pair // S, obj_perm, 1),
            "obj_shape": np.take_along_axis(pair % S, obj_perm, 1),
            "zone_color": zone_colors,
            "pred": np.take_along_axis(pred, order, 1),
            "arg_a": np.take_along_axis(goal_a, order, 1),
            "arg_b": np.take_along_axis(goal_b, order, 1),
        }
        # positions, redrawn where the goal already holds
        margin = 0.1
        todo = np.arange(n)
        tasks["agent_pos"] = np.zeros((n, A, 2))
        tasks["obj_pos"] = np.zeros((n, O, 2))
        tasks["zone_pos"] = np.zeros((n, Z, 2))
        for attempt in range(REDRAWS):
            u = margin + (self.arena - 2 * margin) * _uniform(keys[todo], 20 + attempt,
                                                              2 * (A + O + Z))
            m = len(todo)
            tasks["agent_pos"][todo] = u[:, :2 * A].reshape(m, A, 2)
            tasks["obj_pos"][todo] = u[:, 2 * A:2 * (A + O)].reshape(m, O, 2)
            tasks["zone_pos"][todo] = u[:, 2 * (A + O):].reshape(m, Z, 2)
            sub = {k: v[todo] for k, v in tasks.items()}
            holds = (self.gaps(sub["agent_pos"][:, 0], sub["obj_pos"], sub["zone_pos"], sub)
                     == 0).all(1)
            todo = todo[holds]
            if not len(todo):
                break
        return tasks

    def gaps(self, agent: np.ndarray, obj: np.ndarray, zone: np.ndarray,
             goal: dict[str, np.ndarray]) -> np.ndarray:
        """(n, K) distance of each conjunct from holding (0: holds; inactive slots: 0)."""
        pred, a, b = goal["pred"], goal["arg_a"], goal["arg_b"]
        rows = np.arange(len(pred))[:, None]
        O, Zn = obj.shape[1], zone.shape[1]
        me = agent[:, None, :]
        x = obj[rows, np.clip(a, 0, O - 1)]  # object arg a (near, on_zone, together, away)
        d_ax = _dist(me, x)
        gap = np.zeros(pred.shape)
        for p in self.predicates:  # only the types in use (level 1: near alone)
            where = pred == p
            if p == NEAR:
                g = d_ax - NEAR_DIST
            elif p == AWAY:
                g = FAR_FRACTION * self.arena - d_ax
            elif p == IN_ZONE:
                g = _dist(me, zone[rows, np.clip(a, 0, Zn - 1)]) - ZONE_R
            elif p == ON_ZONE:
                g = _dist(x, zone[rows, np.clip(b, 0, Zn - 1)]) - ZONE_R
            else:
                g = _dist(x, obj[rows, np.clip(b, 0, O - 1)]) - NEAR_DIST
            np.copyto(gap, g, where=where)
        return np.maximum(gap, 0.0)

    def potential(self, agent: np.ndarray, obj: np.ndarray, zone: np.ndarray,
                  goal: dict[str, np.ndarray], gaps: np.ndarray) -> np.ndarray:
        """Shaping potential: minus the goal's gaps, plus (for on_zone / together) half the
        agent's distance from the object it must move, over the arena size."""
        total = gaps.sum(1)
        if MOVES_OBJECT & set(self.predicates):
            pred, a = goal["pred"], goal["arg_a"]
            x = obj[np.arange(len(pred))[:, None], np.clip(a, 0, obj.shape[1] - 1)]
            reach = np.maximum(_dist(agent[:, None, :], x) - NEAR_DIST, 0.0)
            moves = ((pred == ON_ZONE) | (pred == TOGETHER)) & (gaps > 0)
            total = total + 0.5 * (reach * moves).sum(1)
        return -total / self.arena


# ------------------------------------------------------------------------ the vectorised env


class PointMassVecEnv(VecEnv):
    """`num_envs` point-mass worlds stepped together (see the module docstring)."""

    provides_final_obs = True

    def __init__(self, cfg: PointMassEnvConfig, num_envs: int, seed: int,
                 references: bool = True) -> None:
        self.world = w = World(cfg)
        self.cfg = cfg
        self.num_envs = n = check_num_envs(num_envs)
        self.seed = check_seed(seed)
        self.single_action_space = w.action_space
        self.single_observation_space = w.observation_space
        self.solve_threshold = float(cfg.solve_threshold)
        self.lowest_percentile = float(cfg.lowest_percentile)
        self.evaluation = w.sets != ["train"]
        self.task_sets = list(w.sets)
        # the tasks each env plays: evaluation sets list every (set, index) once
        self.skipped_tasks: dict[str, int] = {}
        if self.evaluation:
            self.task_list = [(si, i) for si in range(len(w.sets))
                              for i in range(cfg.num_test_tasks)]
            if references:  # the tasks the reference solves, normalised
                (self.task_list, self.random_score, self.reference_score,
                 self.skipped_tasks) = select_evaluation_tasks(cfg)
            self.min_eval_episodes = len(self.task_list) * cfg.episodes_per_task
            if len(self.task_list) % n and n % len(self.task_list):
                raise ValueError(
                    f"env.num_envs={n} must divide, or be a multiple of, the "
                    f"{len(self.task_list)} evaluation tasks ({len(w.sets)} set(s) x "
                    f"env.num_test_tasks={cfg.num_test_tasks}) so that every task is played "
                    "equally often")
        self._rng = np.random.default_rng(self.seed)
        O, Z, A, K = w.num_objects, w.num_zones, w.num_agents, w.max_conjuncts
        self.agent_pos = np.zeros((n, A, 2))
        self.agent_vel = np.zeros((n, A, 2))
        self.waypoint = np.zeros((n, A, 2))
        self.obj_pos = np.zeros((n, O, 2))
        self.zone_pos = np.zeros((n, Z, 2))
        self.obj_color = np.zeros((n, O), dtype=np.int64)
        self.obj_shape = np.zeros((n, O), dtype=np.int64)
        self.zone_color = np.zeros((n, Z), dtype=np.int64)
        self.goal = {k: np.full((n, K), -1, dtype=np.int64) for k in ("pred", "arg_a", "arg_b")}
        self.held = np.full(n, -1, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.task_set = np.zeros(n, dtype=np.int64)
        self.task_index = np.zeros(n, dtype=np.int64)
        self.episode_count = np.zeros(n, dtype=np.int64)
        self._stats = EpisodeStats(n)
        self.static_obs = np.zeros((n, w.obs_dim - self._dynamic_dim()))
        self._last_gaps = np.zeros((n, K))
        self._last_phi = np.zeros(n)
        self._needs_reset = True
        if not (self.evaluation and references):
            self.reference_score = self.random_score = None
        self.task_pos = np.zeros(n, dtype=np.int64)  # position in its evaluation set
        self._table: dict[str, np.ndarray] | None = None  # generated tasks (see _start)
        self._table_pos = 0

    # -------------------------------------------------------------------- tasks

    def _start(self, envs: np.ndarray) -> None:
        """Start a new episode (a new task) in `envs`."""
        w, cfg = self.world, self.cfg
        if not len(envs):
            return
        if self.evaluation:
            # every evaluation task is generated once, in task_list order
            if self._table is None:
                self._table = self._generate_list(self.task_list)
            take = (envs + self.episode_count[envs] * self.num_envs) % len(self.task_list)
        else:
            # training tasks are generated ahead in chunks: one vectorised pass serves many
            # resets (a reset of a few worlds would cost numpy's per-call overhead each step)
            if self._table is None or self._table_pos + len(envs) > len(self._table["set"]):
                chunk = max(4 * self.num_envs, 1024, len(envs))
                high = cfg.num_tasks if cfg.num_tasks is not None else 2**62
                index = self._rng.integers(0, high, chunk)
                self._table = self._generate_list([(0, int(i)) for i in index])
                self._table_pos = 0
            take = np.arange(self._table_pos, self._table_pos + len(envs))
            self._table_pos += len(envs)
        t = {k: v[take] for k, v in self._table.items()}
        self.task_set[envs], self.task_index[envs] = t["set"], t["index"]
        self.task_pos[envs] = t["pos"]
        self.agent_pos[envs] = t["agent_pos"]
        self.obj_pos[envs], self.zone_pos[envs] = t["obj_pos"], t["zone_pos"]
        self.obj_color[envs], self.obj_shape[envs] = t["obj_color"], t["obj_shape"]
        self.zone_color[envs] = t["zone_color"]
        for k in self.goal:
            self.goal[k][envs] = t[k]
        self.agent_vel[envs] = 0.0
        self.waypoint[envs] = self._rng.uniform(0.1, w.arena - 0.1, (len(envs), w.num_agents, 2))
        self.held[envs] = -1
        self.steps[envs] = 0
        self._static(envs)
        # the goal's gaps and the shaping potential, kept from one step to the next
        goal = {k: v[envs] for k, v in self.goal.items()}
        gaps = w.gaps(self.agent_pos[envs, 0], self.obj_pos[envs], self.zone_pos[envs], goal)
        self._last_gaps[envs] = gaps
        self._last_phi[envs] = w.potential(self.agent_pos[envs, 0], self.obj_pos[envs],
                                           self.zone_pos[envs], goal, gaps)

    def _dynamic_dim(self) -> int:
        w = self.world
        return (5 + 3 * w.num_objects + 2 * w.num_zones + 4 * (w.num_agents - 1)
                + w.max_conjuncts)

    def _generate_list(self, tasks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The tasks `(set index, task index)` as arrays, in this order."""
        sets = np.array([t[0] for t in tasks], dtype=np.int64)
        index = np.array([t[1] for t in tasks], dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for si in np.unique(sets):
            rows = np.flatnonzero(sets == si)
            name = self.world.sets[si]
            part = self.world.generate(task_keys(self.cfg.task_seed, SETS.index(name),
                                                 index[rows]), name)
            for k, v in part.items():
                if k not in out:
                    out[k] = np.zeros((len(tasks), *v.shape[1:]), dtype=v.dtype)
                out[k][rows] = v
        out["set"], out["index"] = sets, index
        # position of each task within its set, in list order (the normalisation's row)
        out["pos"] = np.zeros(len(tasks), dtype=np.int64)
        for si in np.unique(sets):
            rows = sets == si
            out["pos"][rows] = np.arange(rows.sum())
        return out

    def _gaps(self) -> np.ndarray:
        return self.world.gaps(self.agent_pos[:, 0], self.obj_pos, self.zone_pos, self.goal)

    def _potential(self, gaps: np.ndarray) -> np.ndarray:
        return self.world.potential(self.agent_pos[:, 0], self.obj_pos, self.zone_pos,
                                    self.goal, gaps)

    # -------------------------------------------------------------------- observations

    def _static(self, rows: np.ndarray) -> None:
        """The observation's per-episode part of `rows`: the objects' colours and shapes, the
        zones' colours and the goal (computed once per episode, not per step)."""
        w = self.world
        m, O, Z, K = len(rows), w.num_objects, w.num_zones, w.max_conjuncts
        C, S, P = w.num_colors, w.num_shapes, w.num_predicates
        colors, shapes = self.obj_color[rows], self.obj_shape[rows]
        zone_colors = self.zone_color[rows]
        objects = np.zeros((m, O, C + S))
        _one_hot_into(objects[:, :, :C], colors)
        _one_hot_into(objects[:, :, C:], shapes)
        zones = np.zeros((m, Z, C))
        _one_hot_into(zones, zone_colors)
        # the goal: per conjunct active, type, arg a's (colour, shape), arg b's
        pred, a, b = (self.goal[k][rows] for k in ("pred", "arg_a", "arg_b"))
        goal = np.zeros((m, K, 1 + P + 2 * C + 2 * S))
        active = pred >= 0
        goal[:, :, 0] = active
        _one_hot_into(goal[:, :, 1:1 + P], pred, active)
        r = np.arange(m)[:, None]
        a_obj = active & (pred != IN_ZONE)
        zc_a = zone_colors[r, np.clip(a, 0, Z - 1)] if Z else np.zeros_like(a)
        _one_hot_into(goal[:, :, 1 + P:1 + P + C],
                      np.where(a_obj, colors[r, np.clip(a, 0, O - 1)], zc_a), active)
        _one_hot_into(goal[:, :, 1 + P + C:1 + P + C + S], shapes[r, np.clip(a, 0, O - 1)],
                      a_obj)
        b_obj, b_zone = pred == TOGETHER, pred == ON_ZONE
        zc_b = zone_colors[r, np.clip(b, 0, Z - 1)] if Z else np.zeros_like(b)
        off = 1 + P + C + S
        _one_hot_into(goal[:, :, off:off + C],
                      np.where(b_obj, colors[r, np.clip(b, 0, O - 1)], zc_b), b_obj | b_zone)
        _one_hot_into(goal[:, :, off + C:], shapes[r, np.clip(b, 0, O - 1)], b_obj)
        self.static_obs[rows] = np.concatenate(
            [objects.reshape(m, -1), zones.reshape(m, -1), goal.reshape(m, -1)], axis=1)

    def _obs(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Observations of `rows` (None: every env), float32 (rows, obs_dim): first what
        changes every step (positions relative to the agent over the arena size, velocities,
        what is held, which conjuncts hold now), then the per-episode part (`_static`)."""
        w = self.world
        L = w.arena
        pos, vel, held = self.agent_pos, self.agent_vel, self.held
        obj, zone, gaps, static = self.obj_pos, self.zone_pos, self._last_gaps, self.static_obs
        if rows is not None:
            pos, vel, held, obj, zone, gaps, static = (
                v[rows] for v in (pos, vel, held, obj, zone, gaps, static))
        m = len(pos)
        me = pos[:, 0]
        parts = [2 * me / L - 1, vel[:, 0] * 10, (held >= 0)[:, None],
                 ((obj - me[:, None]) / L).reshape(m, -1),
                 np.arange(w.num_objects)[None] == held[:, None],
                 ((zone - me[:, None]) / L).reshape(m, -1)]
        if w.num_agents > 1:
            parts += [((pos[:, 1:] - me[:, None]) / L).reshape(m, -1),
                      (vel[:, 1:] * 10).reshape(m, -1)]
        pred = self.goal["pred"] if rows is None else self.goal["pred"][rows]
        parts += [(gaps == 0) & (pred >= 0), static]
        return np.concatenate(parts, axis=1, dtype=np.float32)

    # -------------------------------------------------------------------- the step

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(check_seed(seed))
        self.episode_count[:] = 0
        if not self.evaluation:
            self._table = None  # tasks drawn ahead come from the (re)seeded stream
        self._start(np.arange(self.num_envs))
        self._stats.reset()
        self._needs_reset = False
        return self._obs()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        actions = self.checked_actions(actions)
        w = self.world
        n, L = self.num_envs, w.arena
        rows = np.arange(n)

        # the learner's force and extra actions
        if w.discrete:
            force = MOVES[np.where(actions < 5, actions, 0)]  # extra actions do not move
            grab = w.grab & (actions == 5)
            drop = w.grab & (actions == 6)
            kick = w.push & (actions == 5 + 2 * w.grab)
        else:
            force = actions[:, :2].astype(np.float64)
            extra = actions[:, 2:]
            grab = w.grab & (extra[:, 0] > 0.5) if w.grab else np.zeros(n, bool)
            drop = w.grab & (extra[:, 0] < -0.5) if w.grab else np.zeros(n, bool)
            kick = (extra[:, int(w.grab)] > 0.5) if w.push else np.zeros(n, bool)
        forces = np.zeros_like(self.agent_vel)
        forces[:, 0] = force
        if w.num_agents > 1:  # scripted agents head to their waypoints
            to_wp = self.waypoint[:, 1:] - self.agent_pos[:, 1:]
            dist = np.linalg.norm(to_wp, axis=-1, keepdims=True)
            forces[:, 1:] = to_wp / np.maximum(dist, 1e-9)
            arrived = dist[..., 0] < 0.05
            if arrived.any():
                self.waypoint[:, 1:][arrived] = self._rng.uniform(0.1, L - 0.1,
                                                                  (int(arrived.sum()), 2))
        self.agent_vel = DAMPING * self.agent_vel + ACCEL * forces
        new = self.agent_pos + self.agent_vel
        clipped = np.clip(new, AGENT_R, L - AGENT_R)
        self.agent_vel[clipped != new] = 0.0  # walls stop the agent
        self.agent_pos = clipped

        # objects: carried, then pushed by contact, then grabbed / dropped / kicked
        holding = self.held >= 0
        if holding.any():
            self.obj_pos[rows[holding], self.held[holding]] = self.agent_pos[holding, 0]
        free = np.arange(w.num_objects)[None] != self.held[:, None]  # (n, O)
        contact = AGENT_R + OBJECT_R
        for agent in range(w.num_agents):
            d = self.obj_pos - self.agent_pos[:, agent:agent + 1]
            dist = np.linalg.norm(d, axis=-1, keepdims=True)
            overlap = (dist[..., 0] < contact) & free
            if overlap.any():
                direction = np.where(dist > 1e-9, d / np.maximum(dist, 1e-9), [1.0, 0.0])
                push = direction * (contact - dist)
                self.obj_pos += np.where(overlap[..., None], push, 0.0)
        if (grab | drop | kick).any():
            d = self.obj_pos - self.agent_pos[:, :1]
            dist = np.linalg.norm(d, axis=-1)
            nearest = np.argmin(np.where(free, dist, np.inf), axis=1)
            in_reach = dist[rows, nearest] < REACH
            self.held[drop] = -1
            take = grab & ~holding & in_reach
            self.held[take] = nearest[take]
            kicked = kick & in_reach & (nearest != self.held)
            if kicked.any():
                k_rows = rows[kicked]
                dk = d[k_rows, nearest[kicked]]
                dk = dk / np.maximum(np.linalg.norm(dk, axis=-1, keepdims=True), 1e-9)
                self.obj_pos[k_rows, nearest[kicked]] += KICK * dk
        np.clip(self.obj_pos, OBJECT_R, L - OBJECT_R, out=self.obj_pos)

        # goal, reward, episode ends
        self.steps += 1
        gaps = self._last_gaps = self._gaps()
        success = (gaps == 0).all(1)
        score = np.where(success, 1.0 - 0.5 * self.steps / w.max_steps, 0.0)
        reward = score.copy()
        if self.cfg.shaping:
            phi = self._potential(gaps)
            reward += self.cfg.shaping * (phi - self._last_phi)
            self._last_phi = phi
        terminated = success
        truncated = ~success & (self.steps >= w.max_steps)
        done = terminated | truncated
        extra = {"success": success, "score": score}
        if self.evaluation:
            extra.update(task=self.task_index.copy(), task_set=self.task_set.copy())
            if self.reference_score is not None:
                ref = self.reference_score[self.task_set, self.task_pos]
                rnd = self.random_score[self.task_set, self.task_pos]
                extra["normalized_score"] = (score - rnd) / np.maximum(ref - rnd, MIN_GAP)
        info = self._stats.update(reward.astype(np.float32), done, **extra)
        if done.any():
            ended = np.flatnonzero(done)
            info["final_obs"] = self._obs(ended)
            self.episode_count[ended] += 1
            self._start(ended)
        return (self._obs(), reward.astype(np.float32), terminated, truncated, info)

    # -------------------------------------------------------------------- reference policies

    def scripted_actions(self) -> np.ndarray:
        """The reference policy's actions for the current state (it reads the true state, not
        the observation): work on the first conjunct that does not hold; go to an object or
        zone, carry an object (grab) or push it from behind towards its destination."""
        w = self.world
        n, L, O = self.num_envs, w.arena, w.num_objects
        rows = np.arange(n)
        me = self.agent_pos[:, 0]
        gaps = self._gaps()
        # the first conjunct that does not hold, object-moving ones before the agent's place
        # (moving an object first, then going where the goal wants the agent, keeps both)
        places = np.isin(self.goal["pred"], list(AGENT_PLACE))
        rank = np.where(gaps > 0, places * w.max_conjuncts + np.arange(w.max_conjuncts), 99)
        todo = np.argmin(rank, axis=1)
        pred = self.goal["pred"][rows, todo]
        a = self.goal["arg_a"][rows, todo]
        b = self.goal["arg_b"][rows, todo]
        x = self.obj_pos[rows, np.clip(a, 0, O - 1)]
        zones = self.zone_pos if w.num_zones else np.zeros((n, 1, 2))
        za = zones[rows, np.clip(a, 0, zones.shape[1] - 1)]
        dest = np.where((pred == TOGETHER)[:, None], self.obj_pos[rows, np.clip(b, 0, O - 1)],
                        zones[rows, np.clip(b, 0, zones.shape[1] - 1)])
        corners = np.array([[AGENT_R, AGENT_R], [AGENT_R, L - AGENT_R], [L - AGENT_R, AGENT_R],
                            [L - AGENT_R, L - AGENT_R]])
        far_corner = corners[np.argmax(np.linalg.norm(corners[None] - x[:, None], axis=-1), 1)]
        moving = (pred == ON_ZONE) | (pred == TOGETHER)
        # pushing: stand behind the object on the line to its destination, then walk on
        line = dest - x
        line /= np.maximum(np.linalg.norm(line, axis=-1, keepdims=True), 1e-9)
        behind = x - line * (AGENT_R + OBJECT_R + 0.02)
        off_line = np.linalg.norm(me - behind, axis=-1) > 0.04
        side = np.stack([-line[:, 1], line[:, 0]], 1)
        side *= np.sign(np.sum((me - x) * side, 1, keepdims=True) + 1e-12)
        # detour around the object when it is between the agent and the point behind it
        blocked = np.sum((me - x) * line, 1) > -0.02
        approach = np.where(blocked[:, None] & (np.linalg.norm(me - x, axis=-1) < 0.2)[:, None],
                            x + side * 0.15 - line * 0.05, behind)
        push_target = np.where(off_line[:, None], approach, dest + line * 0.02)
        carrying = w.grab & (self.held == a) & moving
        target = np.select(
            [c[:, None] for c in (pred == NEAR, pred == IN_ZONE, pred == AWAY,
                                  moving & carrying, moving & np.bool_(w.grab))],
            [x, za, far_corner, dest, x], default=push_target)
        direction = target - me
        grab = np.bool_(w.grab) & moving & (self.held < 0) & \
            (np.linalg.norm(me - x, axis=-1) < REACH)
        drop = np.bool_(w.grab) & (self.held >= 0) & ~carrying
        dist = np.linalg.norm(direction, axis=-1)
        if w.discrete:
            # brake near the target: the point mass drifts on its velocity
            want = direction - 2.0 * self.agent_vel[:, 0]
            act = 1 + np.argmax(want @ MOVES[1:].T, axis=1)
            act = np.where(dist < 0.03, 0, act)
            act = np.where(grab, 5, np.where(drop, 6, act))
            return act.astype(np.int64)
        want = direction * 10 - 2.0 * self.agent_vel[:, 0] * 10
        force = np.clip(want, -1.0, 1.0)
        extra = []
        if w.grab:
            extra.append(np.where(grab, 1.0, np.where(drop, -1.0, 0.0)))
        if w.push:
            extra.append(np.zeros(n))
        return np.concatenate([force, np.stack(extra, 1) if extra else np.zeros((n, 0))],
                              1).astype(np.float32)

    def random_actions(self) -> np.ndarray:
        """Uniformly random actions (the normalisation's lower anchor)."""
        space = self.single_action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            return self._rng.integers(0, space.n, self.num_envs)
        return self._rng.uniform(-1.0, 1.0, (self.num_envs, *space.shape)).astype(np.float32)


def _dist(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Euclidean distance over the last axis (of size 2)."""
    d = p - q
    return np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)


def _one_hot_into(out: np.ndarray, index: np.ndarray, mask: np.ndarray | None = None) -> None:
    """out[..., index] = 1 where mask (out is (..., k), zero-filled)."""
    k = out.shape[-1]
    hot = np.arange(k) == np.clip(index, 0, k - 1)[..., None]
    if mask is not None:
        hot &= mask[..., None]
    out[hot] = 1.0


def play(env: PointMassVecEnv, policy: str, episodes: int) -> np.ndarray:
    """Mean score per env over its next `episodes` episodes under the "scripted" or "random"
    policy (the env cycles its tasks, so env i's episodes are tasks i, i + num_envs, ...)."""
    total = np.zeros(env.num_envs)
    count = np.zeros(env.num_envs, dtype=np.int64)
    env.reset()
    while (count < episodes).any():
        act = env.scripted_actions() if policy == "scripted" else env.random_actions()
        _, _, _, _, info = env.step(act)
        ended = info["episode_env"]
        keep = count[ended] < episodes
        total[ended[keep]] += info["episode_score"][keep]
        count[ended[keep]] += 1
    return total / episodes


def measure_scores(cfg: PointMassEnvConfig, set_name: str, indices: list[int],
                   policy: str, episodes: int, seed: int) -> np.ndarray:
    """Mean score of the tasks `indices` of set `set_name` under the "random" or "scripted"
    policy: one world per task, replaying its own task `episodes` times."""
    env = PointMassVecEnv(replace(cfg, split=set_name, num_test_tasks=len(indices)),
                          len(indices), seed=seed, references=False)
    env.task_list = [(0, int(i)) for i in indices]
    return play(env, policy, episodes)


def select_evaluation_tasks(
    cfg: PointMassEnvConfig,
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, dict[str, int]]:
    """The evaluation tasks and their normalisation: per set, the first `num_test_tasks`
    task indices whose reference score beats the random one by at least `MIN_GAP` (a task
    the reference cannot solve would pin the criteria at 0 whatever the learner does; such
    tasks are skipped, up to 4 x num_test_tasks candidates, and counted). Returns
    `(task_list, random (sets, T), reference (sets, T), skipped per set)`."""
    sets, T = cfg.split.split("+"), cfg.num_test_tasks
    task_list: list[tuple[int, int]] = []
    random = np.zeros((len(sets), T))
    reference = np.zeros((len(sets), T))
    skipped: dict[str, int] = {}
    for si, name in enumerate(sets):
        kept: list[tuple[int, float, float]] = []
        rejected: list[tuple[int, float, float]] = []
        start = 0
        while len(kept) < T and start < 4 * T:
            batch = list(range(start, start + T))
            rnd = measure_scores(cfg, name, batch, "random", cfg.random_episodes, seed=1 + si)
            ref = measure_scores(cfg, name, batch, "scripted", cfg.reference_episodes,
                                 seed=8 + si)
            for i, a, b in zip(batch, rnd, ref, strict=True):
                (kept if b - a >= MIN_GAP else rejected).append((i, a, b))
            start += T
        if len(kept) >= T:
            chosen = kept[:T]
        else:  # too few solvable tasks: fill with the best of the rest (gap floored)
            rejected.sort(key=lambda r: r[1] - r[2])
            chosen = sorted(kept + rejected[:T - len(kept)])
        last = chosen[-1][0]
        picked = {c[0] for c in chosen}
        skipped[name] = sum(1 for r in rejected if r[0] < last and r[0] not in picked)
        for pos, (i, a, b) in enumerate(chosen):
            task_list.append((si, i))
            random[si, pos], reference[si, pos] = a, b
    return task_list, random, reference, skipped


def make_pointmass(*, num_envs: int, seed: int, **knobs: Any) -> PointMassVecEnv:
    """Build the point-mass world from plain keyword arguments (the fields of
    `PointMassEnvConfig`, e.g. `level=2, split="test"`).

    Raises:
        ValueError: a bad knob (the message names the `env.` key).
    """
    names = {f.name for f in fields(PointMassEnvConfig)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise ValueError(f"unknown pointmass argument(s) {unknown}; known: {sorted(names)}")
    return PointMassVecEnv(PointMassEnvConfig(**knobs), num_envs, seed)


def build(cfg: PointMassEnvConfig, *, num_envs: int, seed: int) -> PointMassVecEnv:
    """The registry's builder."""
    return PointMassVecEnv(cfg, num_envs, seed)


register_env("pointmass", PointMassEnvConfig, build)
