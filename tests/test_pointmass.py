"""The point-mass world (envs/pointmass.py): generation from a seed, disjoint and held-out task
sets, the reference policies, the VecEnv contract, the generalization metrics, bad knobs, and
PPO improving on the simplest level through the real sweep entry point."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from agents.evaluation import evaluate
from envs.pointmass import (
    AGENT_PLACE,
    IN_ZONE,
    LEVELS,
    SETS,
    PointMassEnvConfig,
    World,
    make_pointmass,
    play,
    task_keys,
)
from rl_scaling.config import register_configs
from rl_scaling.metrics import lowest_mean, task_generalization
from rl_scaling.record import RunRecord
from rl_scaling.run import run

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _tasks(world: World, set_name: str, n: int, task_seed: int = 0) -> dict[str, np.ndarray]:
    keys = task_keys(task_seed, SETS.index(set_name), np.arange(n))
    return world.generate(keys, set_name)


def test_generation_is_a_function_of_the_task_seed():
    world = World(PointMassEnvConfig(level=3))
    a, b = _tasks(world, "train", 200), _tasks(world, "train", 200)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = _tasks(world, "train", 200, task_seed=1)
    assert not np.allclose(a["obj_pos"], other["obj_pos"])
    # a task does not depend on which batch generated it
    single = world.generate(task_keys(0, 0, np.array([17])), "train")
    np.testing.assert_array_equal(single["obj_pos"][0], a["obj_pos"][17])
    np.testing.assert_array_equal(single["pred"][0], a["pred"][17])


def test_same_seed_same_trajectory_and_different_seed_differs():
    def rollout(seed: int) -> np.ndarray:
        env = make_pointmass(num_envs=16, seed=seed, level=4)
        obs = [env.reset()]
        actions = np.random.default_rng(0).integers(0, env.single_action_space.n, (60, 16))
        for a in actions:
            obs.append(env.step(a)[0])
        return np.stack(obs)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


def test_train_and_test_task_sets_are_disjoint():
    world = World(PointMassEnvConfig(level=2))
    train_keys = task_keys(0, SETS.index("train"), np.arange(5000))
    test_keys = task_keys(0, SETS.index("test"), np.arange(5000))
    assert not set(train_keys.tolist()) & set(test_keys.tolist())
    train = world.generate(train_keys[:500], "train")
    test = world.generate(test_keys[:500], "test")
    # no test layout equals a training layout
    flat = lambda t: {tuple(np.round(p, 9).ravel()) for p in t["obj_pos"]}  # noqa: E731
    assert not flat(train) & flat(test)


def test_task_keys_never_collide_across_seeds_and_sets():
    keys = np.concatenate([task_keys(seed, set_index, np.arange(20_000))
                           for seed in range(4) for set_index in range(len(SETS))])
    assert len(np.unique(keys)) == len(keys)


def test_a_training_env_never_plays_an_evaluation_task():
    test = make_pointmass(num_envs=16, seed=0, level=2, split="test", num_test_tasks=16)
    test.reset()
    test_keys = set(task_keys(0, SETS.index("test"), [i for _, i in test.task_list]).tolist())
    train = make_pointmass(num_envs=64, seed=0, level=2, num_tasks=1000)
    train.reset()
    seen = set()
    for _ in range(300):
        _, _, _, _, info = train.step(train.random_actions())
        seen |= set(task_keys(0, SETS.index("train"), train.task_index).tolist())
    assert len(seen) > 200 and not seen & test_keys


def test_held_out_objects_never_appear_in_training_worlds():
    cfg = PointMassEnvConfig(level=3)
    world = World(cfg)
    assert world.held_pairs.sum() == round(0.25 * world.num_colors * world.num_shapes)
    for name in ("train", "test"):
        t = _tasks(world, name, 2000)
        pair = t["obj_color"] * world.num_shapes + t["obj_shape"]
        assert not world.held_pairs[pair].any(), name
        # pairs are unique within a world
        assert all(len(set(row)) == len(row) for row in pair)
    ood = _tasks(world, "ood_objects", 500)
    # every OOD-object goal names an object whose pair is held out
    rows = np.arange(500)[:, None]
    arg = np.clip(ood["arg_a"], 0, world.num_objects - 1)
    pair = ood["obj_color"][rows, arg] * world.num_shapes + ood["obj_shape"][rows, arg]
    names_object = (ood["pred"] >= 0) & (ood["pred"] != IN_ZONE)
    assert (world.held_pairs[pair] & names_object).any(1).all()


@pytest.mark.parametrize("level,task_seed", [(5, 0), (5, 4), (5, 11), (3, 4), (3, 8),
                                             (4, 16)])
def test_held_out_predicate_pairs_only_in_ood_predicates(level, task_seed):
    world = World(PointMassEnvConfig(level=level, task_seed=task_seed,
                                     split="ood_predicates"))
    assert world.held_type_pairs
    assert all(not set(p) <= AGENT_PLACE for p in world.held_type_pairs)  # combinable

    def has_held_pair(pred_row: np.ndarray) -> bool:
        types = sorted(p for p in pred_row if p >= 0)
        return any(pair in world.held_type_pairs for pair in itertools.combinations(types, 2))

    for name in ("train", "test"):
        t = _tasks(world, name, 1000, task_seed=task_seed)
        assert not any(has_held_pair(r) for r in t["pred"])
    ood = _tasks(world, "ood_predicates", 300, task_seed=task_seed)
    assert all(has_held_pair(r) for r in ood["pred"])
    # every goal: distinct types, at most one saying where the agent is
    for r in _tasks(world, "train", 1000, task_seed=task_seed)["pred"]:
        types = [p for p in r if p >= 0]
        assert len(set(types)) == len(types) >= 1
        assert len(AGENT_PLACE & set(types)) <= 1


def test_space_sizes_count_what_level_1_and_level_3_hold():
    # level 1: 3 colours x 2 shapes, 2 held out -> ordered draws of 2 objects from 4 pairs;
    # goals: near(either object); 5 moves; the agent and 2 objects on a 20 x 20 grid
    s = World(PointMassEnvConfig(level=1)).space_sizes()
    assert s["object_assignments"] == 4 * 3 and s["goals_per_world"] == 2
    assert s["actions"] == 5 and s["goal_types"] == 1 and s["other_agents"] == 0
    assert s["log10_positions"] == pytest.approx(2 * 3 * np.log10(20))
    # level 3: 4 objects, 2 zones, types near / in_zone / on_zone; task_seed 0 holds out the
    # pair (in_zone, on_zone) and (near, in_zone) never combine (one place for the agent):
    # near 4 + in_zone 2 + on_zone 4 x 2 + (near, on_zone) 4 x 3 x 2 = 38 goals, 4 types
    w = World(PointMassEnvConfig(level=3))
    assert w.held_type_pairs == {(1, 2)}
    s = w.space_sizes()
    assert s["goals_per_world"] == 38 and s["goal_types"] == 4
    assert s["actions"] == 7 and s["other_agents"] == 1


def test_generated_goals_do_not_hold_at_the_start():
    world = World(PointMassEnvConfig(level=4))
    t = _tasks(world, "train", 1000)
    gaps = world.gaps(t["agent_pos"][:, 0], t["obj_pos"], t["zone_pos"], t)
    assert (gaps > 0).any(1).mean() > 0.99


@pytest.mark.parametrize("level,movement", [(1, "discrete"), (2, "discrete"),
                                            (1, "continuous"), (3, "discrete"),
                                            (4, "discrete"), (5, "discrete")])
def test_scripted_policy_solves_easy_tasks_and_beats_random(level, movement):
    env = make_pointmass(num_envs=64, seed=0, level=level, movement=movement, split="test",
                         num_test_tasks=64)
    reference, random = env.reference_score[0], env.random_score[0]
    # the evaluation set keeps tasks the reference solves, skipping (and counting) the rest
    assert (reference - random >= 0.05).all()
    assert env.skipped_tasks["test"] <= (2 if level < 3 else 24), env.skipped_tasks
    assert reference.mean() > random.mean() + 0.4
    # replaying the reference reproduces its scores up to the scripted agents' randomness
    again = make_pointmass(num_envs=64, seed=5, level=level, movement=movement,
                           split="test", num_test_tasks=64)
    assert abs(again.reference_score.mean() - reference.mean()) < 0.1


def test_vecenv_contract_auto_reset_final_obs_and_episode_info():
    env = make_pointmass(num_envs=8, seed=0, level=1, max_steps=5, shaping=0.0)
    obs = env.reset(seed=1)
    assert obs.shape == (8, *env.single_observation_space.shape) and obs.dtype == np.float32
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(8, dtype=np.int64))
    # standing still never solves a goal that did not hold at the start: all truncated
    assert truncated.all() and not terminated.any()
    assert info["final_obs"].shape == obs.shape
    assert (info["episode_length"] == 5).all() and (info["episode_score"] == 0).all()
    assert not np.array_equal(info["final_obs"], obs)  # obs is the next task's first
    with pytest.raises(ValueError, match="actions must be in"):
        env.step(np.full(8, 9))


def _one_world(**knobs):
    env = make_pointmass(num_envs=1, seed=0, shaping=0.0, max_steps=1000, **knobs)
    env.reset()
    env.agent_pos[0, 0] = [0.5, 0.5]
    env.agent_vel[:] = 0.0
    env.obj_pos[0] = [0.9, 0.1]  # park the objects away from the agent's paths below
    env.goal["pred"][0, 0], env.goal["arg_a"][0, 0] = 0, 1  # near(object 1): not reached
    return env


def test_extra_discrete_actions_do_not_move_the_agent():
    env = _one_world(level=1, num_objects=2, extra_actions=["grab", "push"])
    for action in (0, 5, 6, 7):  # noop, grab, drop, push
        env.step(np.array([action]))
        np.testing.assert_allclose(env.agent_pos[0, 0], [0.5, 0.5])
    env.step(np.array([1]))  # +x
    assert env.agent_pos[0, 0, 0] > 0.5 and env.agent_pos[0, 0, 1] == 0.5


def test_grab_carries_an_object_and_drop_leaves_it():
    env = _one_world(level=1, num_objects=2, extra_actions=["grab"])
    env.obj_pos[0, 0] = [0.6, 0.5]  # within reach (0.15)
    env.step(np.array([5]))  # grab
    assert env.held[0] == 0
    for _ in range(5):
        env.step(np.array([3]))  # +y, carrying
    np.testing.assert_allclose(env.obj_pos[0, 0], env.agent_pos[0, 0])
    assert env._obs()[0, 4] == 1.0  # "holding" in the observation
    env.step(np.array([6]))  # drop
    assert env.held[0] == -1
    env.step(np.array([2]))  # -x: the dropped object (under the agent) is nudged clear once
    left = env.obj_pos[0, 0].copy()
    for _ in range(10):
        env.step(np.array([2]))  # -x: walks away, the object stays
    np.testing.assert_allclose(env.obj_pos[0, 0], left, atol=1e-12)
    assert env.agent_pos[0, 0, 0] < left[0] - 0.1


def test_push_kicks_the_nearest_object_away_and_contact_pushes():
    env = _one_world(level=1, num_objects=2, extra_actions=["push"])
    env.obj_pos[0, 0] = [0.6, 0.5]
    env.step(np.array([5]))  # push (kick): +0.3 along x
    np.testing.assert_allclose(env.obj_pos[0, 0], [0.9, 0.5], atol=1e-9)
    # walking into an object pushes it ahead (contact distance 0.1), never through it
    env.obj_pos[0, 0] = [0.62, 0.5]
    for _ in range(3):  # (short of the wall, where an object cannot give way)
        env.step(np.array([1]))
        assert np.linalg.norm(env.obj_pos[0, 0] - env.agent_pos[0, 0]) >= 0.1 - 1e-9
    assert env.obj_pos[0, 0, 0] > 0.65


def test_continuous_grab_channel_and_walls():
    env = _one_world(level=1, num_objects=2, movement="continuous", extra_actions=["grab"])
    env.obj_pos[0, 0] = [0.55, 0.5]
    env.step(np.array([[0.0, 0.0, 1.0]], dtype=np.float32))  # grab above 0.5
    assert env.held[0] == 0
    env.step(np.array([[0.0, 0.0, -1.0]], dtype=np.float32))  # drop below -0.5
    assert env.held[0] == -1
    for _ in range(100):  # the wall stops the agent inside the arena
        env.step(np.array([[1.0, 1.0, 0.0]], dtype=np.float32))
    assert (env.agent_pos[0, 0] <= env.world.arena - 0.05 + 1e-12).all()


def test_scripted_agents_wander_and_are_observed():
    env = make_pointmass(num_envs=8, seed=0, level=3)
    env.reset()
    start = env.agent_pos[:, 1].copy()
    for _ in range(20):
        obs, *_ = env.step(np.zeros(8, dtype=np.int64))
    assert (np.linalg.norm(env.agent_pos[:, 1] - start, axis=-1) > 0.3).all()
    # the learner stood still; the other agent's relative position is in the observation
    w = env.world
    col = 5 + 3 * w.num_objects + 2 * w.num_zones
    np.testing.assert_allclose(obs[:, col:col + 2],
                               (env.agent_pos[:, 1] - env.agent_pos[:, 0]) / w.arena, atol=1e-6)


def test_success_terminates_with_a_score_that_rewards_speed():
    env = make_pointmass(num_envs=32, seed=0, level=1, shaping=0.0)
    env.reset()
    scores = []
    for _ in range(60):
        _, reward, terminated, truncated, info = env.step(env.scripted_actions())
        ended = info["episode_env"]
        succeeded = info["episode_success"]
        np.testing.assert_array_equal(succeeded, terminated[ended])
        # the sparse reward of a solved episode is its score
        np.testing.assert_allclose(reward[ended][succeeded], info["episode_score"][succeeded])
        scores += list(info["episode_score"][succeeded])
        lengths = info["episode_length"][succeeded]
        np.testing.assert_allclose(info["episode_score"][succeeded], 1 - 0.5 * lengths / 50)
    assert len(scores) >= 32


def test_shaping_rewards_progress_towards_the_goal():
    env = make_pointmass(num_envs=64, seed=0, level=1, shaping=1.0)
    env.reset()
    _, reward_scripted, *_ = env.step(env.scripted_actions())
    for _ in range(3):  # moving towards the goal object is rewarded
        _, reward_scripted, *_ = env.step(env.scripted_actions())
    assert reward_scripted.mean() > 0


def test_evaluate_reports_generalization_metrics_per_task_set():
    env = make_pointmass(num_envs=32, seed=0, level=1, split="test+ood_objects",
                         num_test_tasks=16)
    assert env.min_eval_episodes == 32
    out = evaluate(lambda obs: env.scripted_actions(), env, episodes=4)
    per_task = [k for k in out if k.startswith("task_score/")]
    assert len([k for k in per_task if k.startswith("task_score/test/")]) == 16
    assert len([k for k in per_task if k.startswith("task_score/ood_objects/")]) == 16
    # the reference policy scores about 1 on its own tasks
    assert out["eval_solved_fraction"] >= 0.8 and out["eval_ood_objects_solved_fraction"] >= 0.8
    assert 0.7 < out["eval_normalized_score"] < 1.3
    rnd = np.random.default_rng(0)
    low = evaluate(lambda obs: rnd.integers(0, 5, len(obs)), env, episodes=1)
    assert low["eval_normalized_score"] < 0.5 < out["eval_normalized_score"]
    assert low["eval_lowest_score"] <= low["eval_normalized_score"]


def test_generalization_metric_definitions():
    scores = np.array([0.1, 0.9, 0.95, 0.5, 1.2, 0.85, 0.2, 0.7, 0.81, 1.0])
    m = task_generalization(scores, threshold=0.8, percentile=20)
    assert m["solved_fraction"] == pytest.approx(0.6)
    assert m["lowest_score"] == pytest.approx(0.15)  # the lowest 2 of 10
    assert lowest_mean(scores, 5) == pytest.approx(0.1)  # at least one task
    assert m["normalized_score"] == pytest.approx(scores.mean())


def test_play_cycles_each_env_through_its_own_task():
    env = make_pointmass(num_envs=8, seed=0, level=1, split="test", num_test_tasks=8)
    env.reset()
    first = env.task_index.copy()
    play(env, "random", 2)
    np.testing.assert_array_equal(env.task_index, first)
    np.testing.assert_array_equal(first, np.arange(8))


@pytest.mark.parametrize("knobs,key", [
    ({"num_objects": 0}, "env.num_objects=0"),
    ({"num_predicates": 2, "max_conjuncts": 3}, "env.max_conjuncts=3"),
    ({"num_predicates": 9}, "env.num_predicates=9"),
    ({"num_predicates": 2, "num_zones": 0}, "env.num_zones=0"),
    ({"level": 9}, "env.level=9"),
    ({"split": "valid"}, "env.split='valid'"),
    ({"split": "ood_predicates"}, "env.split='ood_predicates'"),
    ({"movement": "teleport"}, "env.movement='teleport'"),
    ({"extra_actions": ["fly"]}, "env.extra_actions=['fly']"),
    ({"arena_size": 0.1}, "env.arena_size=0.1"),
    ({"num_colors": 1, "num_shapes": 1, "num_objects": 2}, "env.num_objects=2"),
    ({"num_tasks": 0}, "env.num_tasks=0"),
])
def test_bad_knobs_are_one_line_errors_naming_the_key(knobs, key):
    with pytest.raises(ValueError) as err:
        PointMassEnvConfig(**knobs).validate()
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


@pytest.mark.parametrize("knobs,key", [
    ({"eval": {"split": "ood_predicates"}}, "env.eval.split='ood_predicates'"),
    ({"num_test_tasks": 48, "eval": {"split": "test+ood_objects", "num_envs": 64}},
     "env.eval.num_envs=64"),
    ({"eval": {"splt": "test"}}, "env.eval.splt"),
    ({"eval": {"split": "test", "num_objects": 0}}, "env.eval.num_objects=0"),
])
def test_evaluation_env_knobs_are_checked_at_start_up(knobs, key):
    with pytest.raises(ValueError) as err:
        PointMassEnvConfig(**knobs).validate()
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
    # an eval env with more envs than tasks plays each task equally often: accepted
    PointMassEnvConfig(num_test_tasks=16, eval={"split": "test", "num_envs": 64}).validate()


def test_every_level_builds_and_steps():
    for level in LEVELS:
        for movement in ("discrete", "continuous"):
            env = make_pointmass(num_envs=4, seed=0, level=level, movement=movement)
            obs = env.reset()
            space = env.single_action_space
            for _ in range(3):
                if movement == "discrete":
                    act = np.random.default_rng(0).integers(0, space.n, 4)
                else:
                    act = np.random.default_rng(0).uniform(-1, 1, (4, *space.shape))
                obs, *_ = env.step(act)
            assert np.isfinite(obs).all() and obs.shape[1] == env.world.obs_dim


LEVEL_1_RUN = ["env=pointmass", "model=mlp", "algo.num_steps=64", "algo.num_minibatches=4",
               "algo.gamma=0.99", "algo.lr=1e-3", "algo.lr_width_rule=false", "env.num_envs=32",
               "env.num_test_tasks=32", "env.eval.num_envs=64", "budget.value=90112",
               "eval_every=45056 env_steps", "logger.progress=none", "checkpoint_every=null",
               "torch_threads=1", "seed=1"]


def _improved(rows: list[dict]) -> None:
    """Success well above the early iterations' (the very first is biased towards the
    episodes that end soonest, the successes) and above one in two."""
    success = [r["success_rate"] for r in rows if "success_rate" in r]
    early, late = np.mean(success[1:4]), np.mean(success[-3:])
    assert late > 0.5 and late > early + 0.15, success


def test_vmpo_improves_on_the_simplest_level(tmp_path: Path):
    """V-MPO (the proposal's learner) on level 1, same scale as the PPO test."""
    assert run(_cfg([*LEVEL_1_RUN, "algo=vmpo", "algo.num_epochs=3"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    _improved(rows)
    assert all(np.isfinite(r["eta"]) and r["eta"] > 0 for r in rows if "eta" in r)


def test_ppo_improves_on_the_simplest_level(tmp_path: Path):
    """A real short run through the run entry path: PPO on level 1 (about a minute on 2 CPU
    cores) gets well above the random policy's success rate, and its evaluations carry the
    generalization metrics of both held-out sets."""
    assert run(_cfg([*LEVEL_1_RUN, "algo=ppo"]), tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    _improved(rows)
    evals = [r for r in rows if "eval_solved_fraction" in r]
    assert len(evals) == 2 and "eval_ood_objects_lowest_score" in evals[-1]
    assert sum(k.startswith("task_score/test/") for k in evals[-1]) == 32
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["env_family"] == "pointmass"


def test_complexity_experiment_runs_with_short_overrides_and_the_analysis_draws_it(tmp_path):
    """The issue's "done when": the multirun of `+experiment=pointmass_complexity` with short
    overrides writes complete records declaring the study, and the analysis reads them into
    the generalization study (per size, for the test and the OOD-object sets)."""
    import subprocess
    import sys

    from analysis import pipeline

    root = Path(__file__).resolve().parents[1]
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=pointmass_complexity",
         "env.level=1,2", "model.width=0.5,1", "seed=1", "budget.value=8192",
         "eval_every=4096 env_steps", "env.num_envs=16", "env.num_test_tasks=8",
         "env.eval.num_envs=16", "algo.num_steps=32", "logger.progress=none",
         "hydra.launcher.n_jobs=2", "torch_threads=1", f"hydra.sweep.dir={runs}"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    infos = [RunRecord(p.parent).read_run_json() for p in runs.rglob("run.json")]
    assert len(infos) == 4 and {i["status"] for i in infos} == {"finished"}
    assert {i["study"]["kind"] for i in infos} == {"generalization"}
    report_dir = tmp_path / "report"
    assert pipeline.main(["--runs", str(runs), "--out", str(report_dir), "--formats", "png",
                          "--no-cache", "--n-boot", "0"]) == 0
    laws = json.loads((report_dir / "laws.json").read_text())
    assert "pointmass_complexity/generalization" in laws["studies"]
    report = (report_dir / "report.md").read_text()
    assert "data and compute to sufficient generalization, per size" in report
    assert "data and compute to sufficient generalization [ood_objects]" in report
    assert "normalised by the env" in report
