"""NetHack (NLE): the vectorised env's dict observations, seeding, episode ends and score; the
NetHack encoder's crop and its FLOP split (only the pre-core MLP, core and heads are
effective); IMPALA on NetHack through the command line with 2 actors, a synchronous run that
repeats itself draw for draw, and the analysis reading a width sweep's records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nle")

from agents.nethack_net import CROP, NetHackEncoder, NetHackNet, crop_around  # noqa: E402
from envs import make_env  # noqa: E402
from rl_scaling.flops import forward_flops  # noqa: E402
from rl_scaling.observations import select, to_tensor, zeros_like_space  # noqa: E402
from tests.procs import random_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("glyphs", "chars", "colors", "blstats", "message")


def test_nethack_env_gives_dict_observations_and_repeats_itself_from_a_seed():
    env = make_env("nethack", num_envs=2, seed=5, max_episode_steps=40)
    try:
        obs = env.reset()
        assert tuple(obs) == KEYS and env.single_action_space.n == 23
        assert obs["glyphs"].shape == (2, 21, 79) and obs["glyphs"].dtype == np.int16
        assert obs["blstats"].shape == (2, 27) and obs["message"].shape == (2, 256)
        assert not np.array_equal(obs["glyphs"][0], obs["glyphs"][1])  # games seeded apart
        steps = random_steps(env, 80)
    finally:
        env.close()
    twin = make_env("nethack", num_envs=2, seed=5, max_episode_steps=40)
    try:
        again = twin.reset()
        assert all(np.array_equal(obs[k], again[k]) for k in KEYS)
        for (o1, r1, *_), (o2, r2, *_) in zip(steps, random_steps(twin, 80), strict=True):
            assert all(np.array_equal(o1[k], o2[k]) for k in KEYS)
            np.testing.assert_array_equal(r1, r2)
    finally:
        twin.close()
    # the 40-step limit cuts every game twice: a truncation, with the last observation
    ends = [(s, info) for s, (_, _, term, trunc, info) in enumerate(steps) if trunc.any()]
    assert [s for s, _ in ends] == [39, 79]
    for s, info in ends:
        assert not steps[s][2].any()  # NLE's abort is a time limit, not a game over
        assert info["final_obs"]["glyphs"].shape == (2, 21, 79)
        assert info["episode_length"].tolist() == [40, 40]
        assert (info["episode_score"] >= 0).all()
        # the return sums the rewards of the episode
        rewards = np.sum([steps[t][1] for t in range(s - 39, s + 1)], axis=0)
        np.testing.assert_allclose(info["episode_return"], rewards, rtol=1e-5, atol=1e-4)


def test_nethack_challenge_builds_unseeded_with_the_full_keyboard():
    env = make_env("nethack", num_envs=1, seed=0, env_id="NetHackChallenge-v0",
                   max_episode_steps=10)
    try:
        assert env.single_action_space.n == 121 and not env.seedable
        obs = env.reset()
        assert obs["glyphs"].shape == (1, 21, 79)
        random_steps(env, 12)
    finally:
        env.close()


def test_env_groups_join_nethack_dict_observations():
    """speed.overlap_envs's two halves of a dict-observation env are one env of their size."""
    from envs.groups import EnvGroups

    groups = EnvGroups([make_env("nethack", num_envs=1, seed=s, max_episode_steps=3)
                        for s in (0, 1)])
    try:
        obs = groups.reset(seed=4)
        assert obs["glyphs"].shape == (2, 21, 79) and obs["blstats"].shape == (2, 27)
        for _ in range(3):
            obs, _, _, truncated, info = groups.step(np.zeros(2, dtype=np.int64))
        assert truncated.all() and info["final_obs"]["message"].shape == (2, 256)
        assert info["episode_env"].tolist() == [0, 1]
    finally:
        groups.close()


@pytest.mark.parametrize("kwargs,key", [
    ({"env_id": "NetHackScor-v0"}, "env.id='NetHackScor-v0' is not an NLE task; did you mean"),
    ({"observation_keys": ["glyphs", "glyph"]}, "env.observation_keys"),
    ({"max_episode_steps": 0}, "env.max_episode_steps=0"),
])
def test_bad_nethack_config_is_one_line_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace("(", r"\(")):
        make_env("nethack", num_envs=1, seed=0, **kwargs)


# ---- the NetHack encoder and its FLOPs ------------------------------------------------------
def _space(keys=KEYS):
    env = make_env("nethack", num_envs=1, seed=0, observation_keys=keys)
    space = env.single_observation_space
    env.close()
    return space


def test_crop_is_the_cells_around_the_agent_padded_outside_the_map():
    ids = torch.arange(21 * 79).view(1, 21, 79).repeat(2, 1, 1)
    x, y = torch.tensor([40, 0]), torch.tensor([10, 0])  # inside; the top-left corner
    crop = crop_around(ids, x, y, pad=-1)
    half = CROP // 2
    assert crop.shape == (2, CROP, CROP)
    assert torch.equal(crop[0], ids[0, 10 - half:10 + half + 1, 40 - half:40 + half + 1])
    assert crop[1, half, half] == ids[1, 0, 0]  # the agent is at the centre
    assert (crop[1, :half] == -1).all() and (crop[1, :, :half] == -1).all()
    assert torch.equal(crop[1, half:, half:], ids[1, :half + 1, :half + 1])


def test_nethack_net_counts_only_its_scaled_parts_as_effective():
    space = _space()
    example = zeros_like_space(space, (1, 1))
    effective, encoder = {}, {}
    for width in (0.5, 1.0, 2.0):
        model = NetHackNet(space, 23, width=width)
        total = forward_flops(model, example, effective=False, n_samples=1)
        effective[width] = forward_flops(model, example, n_samples=1)
        encoder[width] = total - effective[width]
        h, torso = model.hidden_size, model.torso.out_size
        # pre-core MLP + LSTM (4 gates: input and recurrent matmuls) + heads, 2 FLOPs a MAC
        by_hand = 2 * (torso * h + 4 * (h * h + h * h) + h * 23 + h)
        assert effective[width] == pytest.approx(by_hand, rel=0.01)
    assert len(set(encoder.values())) == 1  # the encoder is the same at every width
    assert encoder[1.0] > 10 * effective[1.0]  # and it is most of the compute at width 1


def test_nethack_net_runs_on_sequences_of_dict_observations_and_rejects_missing_keys():
    env = make_env("nethack", num_envs=3, seed=1)
    obs = to_tensor(env.reset())
    env.close()
    model = NetHackNet(env.single_observation_space, 23, width=0.25)
    seq = {k: torch.stack([v, v]) for k, v in obs.items()}  # (T=2, B=3, ...)
    logits, value, (h, c) = model(seq, torch.ones(2, 3, dtype=torch.bool), None)
    assert logits.shape == (2, 3, 23) and value.shape == (2, 3) and h.shape == (1, 3, 64)
    one, _, _ = model(select(obs, None), None, None)
    torch.testing.assert_close(one[0], logits[0])
    with pytest.raises(ValueError, match="env.observation_keys lacks"):
        NetHackEncoder(_space(("glyphs", "blstats")))


# ---- IMPALA on NetHack ------------------------------------------------------------------------
SMALL = ["algo.unroll_length=16", "algo.batch_size=8", "env.max_episode_steps=48",
         "logger.progress=none", "torch_threads=1"]


def _sweep(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "rl_scaling.sweep", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_impala_on_nethack_with_two_actors_logs_score_and_counters(tmp_path):
    run_dir = tmp_path / "nethack"
    _sweep(["+experiment=nethack_impala", *SMALL, "algo.num_actors=2", "algo.envs_per_actor=4",
            "model.width=0.25", "budget.counter=env_steps", "budget.value=1536",
            "eval_every=1536 env_steps", "eval_episodes=2", "env.eval.num_envs=2",
            f"hydra.run.dir={run_dir}"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["experiment"] == "nethack_impala"
    assert info["env_family"] == "nethack" and info["study"]["metric"] == "score_mean"
    net = info["networks"]["policy"]
    assert net["flops_per_forward"]["effective"] < net["flops_per_forward"]["total"]
    rows = _rows(run_dir)
    last = rows[-1]
    assert last["env_steps"] == 1536 and last["updates"] == 12 and last["actor_restarts"] == 0
    assert [r["env_steps"] for r in rows] == [128 * (i + 1) for i in range(12)]
    # every 48 steps each env ends an episode: scores and returns reach the log
    assert sum(r.get("episodes", 0) for r in rows) >= 8
    assert all(r["score_mean"] >= 0 for r in rows if "score_mean" in r)
    assert "eval_score" in last and "eval_return" in last
    # 8 N D beside the exact count: the exact one adds the learner's bootstrap step
    n_eff = net["params"]["effective"]
    assert last["flops_8nd"] == 8 * n_eff * 1536
    assert last["flops"] == pytest.approx(last["flops_8nd"], rel=0.1)


def test_a_nethack_width_sweep_with_actors_is_read_by_the_analysis(tmp_path):
    """The issue's command, with short overrides: a multirun of two widths, each with 2 actor
    processes, writes complete records that the analysis collects."""
    sweep_dir = tmp_path / "sweep"
    _sweep(["-m", "+experiment=nethack_impala", *SMALL, "algo.num_actors=2",
            "algo.envs_per_actor=4", "budget.counter=env_steps", "budget.value=768",
            "eval_every=null", "model.width=0.125,0.25", "seed=1",
            f"hydra.sweep.dir={sweep_dir}"])
    runs = sorted(p.parent for p in sweep_dir.rglob("run.json"))
    assert len(runs) == 2
    for run_dir in runs:
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info["env_steps"] == 768
        assert _rows(run_dir)[-1]["actor_restarts"] == 0
    from analysis import collect

    table = collect.collect(sweep_dir)
    assert sorted(table["width"].unique()) == [0.125, 0.25]
    assert {"flops", "env_steps", "score_mean", "flops_8nd"} <= set(table.columns)


def test_impala_on_nethack_synchronous_repeats_itself(tmp_path):
    """One process, from the seed: the same run again logs the same numbers (NetHack's games
    are seeded from the run's seed)."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        _sweep(["+experiment=nethack_impala", *SMALL, "algo.num_actors=0", "model.width=0.125",
                "budget.counter=env_steps", "budget.value=768", "eval_every=null",
                f"hydra.run.dir={run_dir}"])
    keep = ("loss", "policy_loss", "reward_mean", "grad_norm", "flops")
    first, second = ([{k: r[k] for k in keep} for r in _rows(d)] for d in runs)
    assert len(first) == 6 and first == second


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("inference", ["local", "learner"])
def test_impala_on_nethack_with_a_cuda_learner_and_two_actors(inference, tmp_path):
    run_dir = tmp_path / "nethack"
    _sweep(["+experiment=nethack_impala", *SMALL, "algo.num_actors=2", "algo.envs_per_actor=4",
            f"algo.actor_inference={inference}",
            "budget.counter=env_steps", "budget.value=1536", "eval_every=1536 env_steps",
            "eval_episodes=2", "env.eval.num_envs=2", "device=cuda", f"hydra.run.dir={run_dir}"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["device"].startswith("cuda")
    last = _rows(run_dir)[-1]
    assert last["env_steps"] == 1536 and "eval_score" in last
