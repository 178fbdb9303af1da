"""The imitation chain end to end (Tuyls et al. 2024's study on CPU-sized stand-ins): an expert
trained in the test, its rollouts collected into a sharded dataset, behavioural cloning at
three widths with snapshots at two FLOP budgets, and the analysis reading them; an Atari chain
through the real ALE pixels; an interrupted collection resumed; bad input.

CartPole-v1 stands in for an Atari game where learning must be shown (PPO reaches a return
of ~200 in 40k steps, 7 s on 2 cores); the Atari chain runs the same commands on Pong's
pixels with the Atari CNN for a few iterations (no learning asserted there).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.shards import DatasetError, ShardedDataset
from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.record import RunRecord
from tests.procs import kill_after_a_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ("env=gym", "env.id=CartPole-v1", "model=mlp")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")


def _cmd(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "rl_scaling.sweep", *(["-m"] if multirun else []),
            "logger.progress=none", "torch_threads=1", *overrides]


def _run(*overrides: str, multirun: bool = False, timeout: float = 600
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(*overrides, multirun=multirun), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _expert(run_dir: Path, steps: int = 40960) -> Path:
    """A PPO CartPole expert (return ~200 of 500; a random policy scores ~22)."""
    _run(f"hydra.run.dir={run_dir}", "algo=ppo", *CARTPOLE, "env.num_envs=8",
         "algo.num_steps=128", "algo.gamma=0.99", "algo.num_minibatches=4",
         "algo.num_epochs=4", "algo.lr=2.5e-3", "algo.norm_reward=false",
         f"budget.value={steps}", "seed=3")
    return run_dir


def _collect_args(run_dir: Path, expert: Path, out: Path, steps: int, *extra: str
                  ) -> list[str]:
    return [f"hydra.run.dir={run_dir}", "algo=collect", *CARTPOLE, "env.num_envs=4",
            f"algo.expert={expert}", f"algo.out={out}", "algo.val_fraction=0.2",
            "algo.deterministic=true",
            "algo.steps_per_iteration=64", "algo.shard_samples=2048",
            f"budget.value={steps}", *extra]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """Expert -> dataset, shared by the chain's tests."""
    root = tmp_path_factory.mktemp("chain")
    expert = _expert(root / "expert")
    data = root / "data"
    _run(*_collect_args(root / "collect", expert, data, 24_000))
    return {"root": root, "expert": expert, "data": data, "collect": root / "collect"}


def test_collection_writes_whole_expert_episodes_with_a_held_out_split(chain):
    train, val = ShardedDataset(chain["data"], "train"), ShardedDataset(chain["data"], "val")
    assert len(train) > 10_000 and len(val) > 1_000
    for ds in (train, val):
        ep = ds.episodes
        # whole episodes tiling the split, each ending where the next starts
        assert ep.starts[0] == 0 and np.all(ep.starts[1:] == ep.starts[:-1] + ep.lengths[:-1])
        assert ep.starts[-1] + ep.lengths[-1] == len(ds)
        # CartPole pays 1 per step: an episode's return is its length, and the stored
        # rewards sum to it
        assert np.allclose(ep.returns, ep.lengths)
        rows = ds.gather(np.arange(len(ds)), ["reward"])["reward"]
        assert rows.sum() == pytest.approx(ep.returns.sum())
    # the expert's data: far above a random policy's ~22 steps per episode
    assert train.episodes.returns.mean() > 100
    assert train.meta["num_actions"] == 2
    obs = train.gather(np.arange(5), ["obs"])["obs"]
    assert obs.shape == (5, 4) and obs.dtype == np.float32
    rows = RunRecord(chain["collect"]).read_metrics()
    last = rows[-1]
    assert last["env_steps"] >= 24_000 and last["samples"] == len(train) + len(val)
    assert last["dataset_episodes"] == len(train.episodes.starts)
    assert last["return_mean"] > 100


def test_bc_sweep_learns_snapshots_and_feeds_the_isoflop_analysis(chain, tmp_path):
    """BC at three widths to a FLOP budget, snapshots at two smaller budgets: validation loss
    far below chance (ln 2), returns well above a random policy's, snapshot checkpoints and
    lines at the budgets, and the analysis reading the sweep as an isoFLOP study."""
    sweep = tmp_path / "bc"
    budgets = (2e8, 5e8)
    _run("algo=bc", *CARTPOLE, f"algo.data={chain['data']}", "algo.batch_size=64",
         "algo.lr=3e-3", "algo.val_samples=2048", "algo.loader_threads=1",
         "budget.counter=flops", "budget.value=1e9", f"snapshot_flops=[{budgets[0]},"
         f"{budgets[1]}]", "eval_every=2048 samples", "log_every=2048 samples",
         "eval_episodes=8", "+env.eval.num_envs=4",
         "study={kind:isoflop,axes:{width:model.width},metric:val_loss}",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=w${model.width}",
         "model.width=0.5,1,2", multirun=True)
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 3
    n_eff = []
    for run in runs:
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "finished" and info["algo"] == "bc"
        n_eff.append(info["params"]["effective"])
        rows = RunRecord(run).read_metrics()
        assert all(r["env_steps"] == 0 for r in rows)
        val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
        # chance is ln 2 = 0.693; the deterministic expert's actions can be learned
        assert val[-1] < 0.4 and val[-1] < val[0], val
        snaps = [r for r in rows if "snapshot_flops" in r]
        assert [r["snapshot_flops"] for r in snaps] == list(budgets)
        for r, budget in zip(snaps, budgets, strict=True):
            assert budget <= r["flops"] < budget * 1.1  # the first iteration past it
            # random play scores ~22 (an 8-episode mean above 50 is out of its reach)
            assert "val_loss" in r and r["eval_return"] > 50
            ckpt = load_checkpoint(run / "checkpoints" / f"flops={budget:.6g}.pt")
            assert ckpt["counters"]["samples"] == r["samples"]
        last = rows[-1]
        assert last["eval_return"] > 150
        # rollouts only where the analyses read them (algo.rollouts=snapshots): snapshots, end
        played = [r["samples"] for r in rows if "eval_return" in r]
        assert played == [r["samples"] for r in snaps] + [last["samples"]]
        assert len(val) > len(played)
        # 6ND beside the exact count: the MLP's FLOPs per sample are ~6N (+ biases, tanh)
        assert last["flops_6nd"] == pytest.approx(6 * n_eff[-1] * last["samples"])
        assert 0.8 < last["flops"] / last["flops_6nd"] < 1.3
    assert len(set(n_eff)) == 3

    from analysis import pipeline

    out = tmp_path / "report"
    results = pipeline.main(["--runs", str(sweep), "--out", str(out), "--n-boot", "5"])
    assert results == 0 or results is None
    table = __import__("pandas").read_parquet(out / "table.parquet")
    assert set(table["study.kind"].dropna()) == {"isoflop"}
    assert table["snapshot_flops"].notna().sum() == 6
    report = (out / "report.md").read_text()
    assert "isoFLOP" in report
    # the isoFLOP figure and the return-vs-loss law from the snapshot lines' returns
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"default_isoflop_isoflop_profiles.png",
            "default_isoflop_eval_return_vs_val_loss.png"} <= figures


def test_interrupted_collection_resumes_without_lost_or_duplicated_episodes(chain, tmp_path):
    """SIGKILL a collection after a checkpoint, relaunch: the dataset rolls back to what the
    checkpoint committed and grows from there; every episode is stored once (no two equal),
    the ones committed before the kill are still there, and the counters continue."""
    out, run_dir = tmp_path / "data", tmp_path / "collect"
    args = _cmd(*_collect_args(run_dir, chain["expert"], out, 40_000,
                               "checkpoint_every=512 env_steps"))
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill_after_a_checkpoint(proc, run_dir, lines=14)
    at_kill = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    committed = at_kill["objects"]["writer"]
    assert committed["train"]["episodes"] > 0
    kept = {}
    for split in ("train", "val"):
        n = committed.get(split, {}).get("samples", 0)
        kept[split] = ShardedDataset(out, split).gather(np.arange(n), ["obs"])["obs"] if n \
            else np.zeros((0, 4), np.float32)

    proc2 = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] is True
    rows = RunRecord(run_dir).read_metrics()
    iterations = [r["iteration"] for r in rows]
    assert iterations == sorted(set(iterations))
    for split in ("train", "val"):
        ds = ShardedDataset(out, split)
        n = len(kept[split])
        assert np.array_equal(ds.gather(np.arange(n), ["obs"])["obs"], kept[split])
        ep = ds.episodes
        assert np.all(ep.starts[1:] == ep.starts[:-1] + ep.lengths[:-1])
        firsts = ds.gather(ep.starts, ["obs"])["obs"]
        # CartPole's random start states: equal first observations = a duplicated episode
        assert len(np.unique(firsts, axis=0)) == len(firsts)
    assert rows[-1]["samples"] == sum(len(ShardedDataset(out, s)) for s in ("train", "val"))


def test_bc_bad_input_is_one_line(chain, tmp_path):
    """A missing dataset path, a missing shard file, an index that disagrees with its
    shards: one line naming the file, exit status 2, and no run record is started."""
    import shutil

    def bc(data: Path, run: str) -> subprocess.CompletedProcess:
        return subprocess.run(_cmd(f"hydra.run.dir={tmp_path / run}", "algo=bc", *CARTPOLE,
                                   f"algo.data={data}", "budget.counter=samples",
                                   "budget.value=1000"),
                              cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=120)

    missing = bc(tmp_path / "nowhere", "a")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr.strip().splitlines()[-1]

    broken = tmp_path / "broken"
    shutil.copytree(chain["data"], broken)
    shard = sorted(broken.glob("train-*.obs.npy"))[0]
    shard.unlink()
    proc = bc(broken, "b")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert shard.name in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b" / "metrics.jsonl").exists()

    lying = tmp_path / "lying"
    shutil.copytree(chain["data"], lying)
    index = json.loads((lying / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["samples"] += 10**6
    (lying / "index.json").write_text(json.dumps(index))
    proc = bc(lying, "c")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train-00000" in proc.stderr.strip().splitlines()[-1]
    with pytest.raises(DatasetError):
        ShardedDataset(lying, "train")

    # the policy would play another game than the dataset's
    other = subprocess.run(_cmd(f"hydra.run.dir={tmp_path / 'd'}", "algo=bc", "env=gym",
                                "env.id=Acrobot-v1", "model=mlp", f"algo.data={chain['data']}",
                                "budget.counter=samples", "budget.value=1000"),
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    last = other.stderr.strip().splitlines()[-1]
    assert "env.id='Acrobot-v1'" in last and "CartPole-v1" in last


def test_a_batch_without_action_targets_has_zero_loss_not_nan():
    """Windows of keypresses that are no actions (target -1) must not end a run as diverged."""
    import torch

    from agents.bc import cross_entropy

    logits = torch.randn(4, 3, 5, requires_grad=True)
    loss, correct, count = cross_entropy(logits, torch.full((4, 3), -1))
    assert float(loss.detach()) == 0.0 and int(count) == 0 and int(correct) == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    actions = torch.tensor([[0, -1, 2]] * 4)
    loss, _, count = cross_entropy(logits, actions)
    flat = logits.reshape(-1, 5)[actions.reshape(-1) >= 0]
    expected = torch.nn.functional.cross_entropy(flat, actions[actions >= 0])
    assert int(count) == 8 and torch.allclose(loss, expected)


def test_prefetcher_hands_over_in_order_and_raises_the_iterators_error():
    from agents.bc import Prefetcher

    def items():
        yield from range(5)
        raise RuntimeError("shard went away")

    fetched = Prefetcher(items(), depth=2)
    assert [next(fetched) for _ in range(5)] == list(range(5))
    for _ in range(2):  # and again on every later call
        with pytest.raises(RuntimeError, match="shard went away"):
            next(fetched)
    fetched.close()
    endless = Prefetcher(iter(int, 1), depth=2)  # a producer blocked on a full queue
    next(endless)
    endless.close()
    assert not endless.thread.is_alive()


def test_atari_chain_on_pixels(tmp_path):
    """The same chain on ALE's pixels with the study's configs (short): a PPO Atari expert
    (Nature CNN) for two iterations, its rollouts collected as 84x84x4 frames, BC with the
    Atari CNN to a FLOP budget with a snapshot, the policy playing the game at the end."""
    game = ("env.id=Pong", "env.max_episode_frames=1000")  # 250-step episodes
    expert, data = tmp_path / "expert", tmp_path / "data"
    _run("+experiment=atari_expert", *game, "budget.value=2048", "eval_every=null",
         f"hydra.run.dir={expert}")
    _run("+experiment=atari_collect", *game, "env.num_envs=4", f"algo.expert={expert}",
         f"algo.out={data}", "algo.val_fraction=0.25", "algo.steps_per_iteration=64",
         "algo.shard_samples=1024", "budget.value=3000", f"hydra.run.dir={tmp_path / 'c'}")
    train = ShardedDataset(data, "train")
    assert train.fields["obs"] == ((84, 84, 4), np.dtype(np.uint8))
    val = ShardedDataset(data, "val")
    # 4 envs x 768 steps: 3 whole 250-step episodes each; the 18 steps in progress are not kept
    assert len(train.episodes) + len(val.episodes) == 12
    assert len(train) + len(val) == 3000 and set(train.episodes.lengths) == {250}
    assert train.meta["num_actions"] == 6 and train.meta["env"]["clip_rewards"] is False
    run = tmp_path / "bc"
    _run("+experiment=atari_bc_isoflop", *game, f"algo.data={data}", "budget.value=2e11",
         "snapshot_flops=[1e11]", "algo.batch_size=32", "eval_every=1024 samples",
         "eval_episodes=2", "env.eval.num_envs=2", "model.width=0.25", f"hydra.run.dir={run}")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["model"] == "atari_cnn"
    # conv 8x8/4, 4x4/2, 3x3/1 with 8, 16, 16 channels and a linear head: every parameter
    assert info["params"]["effective"] == info["params"]["total"] == (
        (8 * 4 * 64 + 8) + (16 * 8 * 16 + 16) + (16 * 16 * 9 + 16) + (16 * 7 * 7 * 6 + 6))
    rows = RunRecord(run).read_metrics()
    snap = [r for r in rows if "snapshot_flops" in r]
    assert len(snap) == 1 and "eval_return" in snap[0] and "val_loss" in snap[0]
    # plumbing, not learning (the CartPole chain shows that): a two-iteration expert acts
    # almost uniformly, so its clone's validation loss stays near chance, ln 6 = 1.79
    assert "eval_return" in rows[-1] and abs(rows[-1]["val_loss"] - math.log(6)) < 0.1
    assert (run / "checkpoints" / "flops=1e+11.pt").exists()


@pytest.mark.parametrize("core", ["lstm", "transformer"])
def test_nethack_chain_on_recorded_ttyrecs(tmp_path, core):
    """Real ttyrecs recorded from NLE (a player that moves north 80% of the time, else
    presses a random key), put into an nle.dataset database by the run itself
    (algo.ttyrec_dir), BC with the NetHack model for 40 steps: the validation loss on held-out
    games falls far below chance, and the policy plays NetHackChallenge-v0 from tty
    observations."""
    from agents.ttyrec import ACTIONS, record_ttyrecs

    rng = np.random.default_rng(0)
    north = ACTIONS.index(ord("k"))

    def player(obs: dict) -> int:
        return north if rng.random() < 0.8 else int(rng.integers(len(ACTIONS)))

    ttyrecs = record_ttyrecs(tmp_path / "ttyrecs", games=6, seed=1, max_steps=150,
                             policy=player)
    run = tmp_path / "bc"
    _run("+experiment=nethack_bc_isoflop", f"algo.data={tmp_path / 'ttyrecs.db'}",
         f"algo.ttyrec_dir={ttyrecs}", "algo.dataset_name=test", "algo.val_fraction=0.3",
         "algo.batch_size=2", "algo.seq_len=16", "algo.lr=3e-3", "budget.counter=samples",
         "budget.value=1280", "snapshot_flops=null", "eval_every=640 samples",
         "eval_episodes=2", "env.eval.num_envs=2", "env.max_episode_steps=50",
         "algo.val_samples=256", "model.width=0.25", f"model.core={core}",
         "algo.rollouts=always", f"hydra.run.dir={run}")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["model"] == "nethack_bc"
    rows = RunRecord(run).read_metrics()
    assert rows[-1]["samples"] == 1280 and rows[-1]["updates"] == 40  # 2 x 16 per update
    evals = [r for r in rows if "val_loss" in r]
    assert len(evals) == 2 and all("eval_return" in r for r in evals)
    # 121 actions: ln 121 = 4.80 is an untrained policy's loss; the player's own entropy ~2
    assert evals[-1]["val_loss"] < 3.0 and evals[-1]["val_accuracy"] > 0.5
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_loader_vs_model_bench_runs(capsys):
    """bench/bc.py end to end on tiny sizes (its numbers are the bench's business, not a
    test's): the Atari table and the NetHack table are printed with every column filled."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bc as bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    bench.main(["--widths", "0.25", "--samples", "3000", "--shard-samples", "1024",
                "--threads", "1", "--seconds", "0.2", "--batch", "32", "--nethack", "0.25",
                "--nethack-batch", "2x8"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 0.25 |")]
    assert len(rows) == 2, out
    assert all("x |" in row for row in rows)


def test_bc_resumed_run_continues_the_same_batches_and_counters(chain, tmp_path):
    """A BC run extended by a relaunch with a larger budget (a resume from its checkpoint)
    continues its counters and reads the loader's stream from where it stopped: its training
    losses are those of one uninterrupted run, number for number."""
    common = ("algo=bc", *CARTPOLE, f"algo.data={chain['data']}", "algo.batch_size=64",
              "algo.val_samples=512", "algo.loader_threads=2", "budget.counter=samples",
              "log_every=1024 samples", "eval_every=4096 samples", "eval_episodes=2",
              "algo.rollouts=never")
    split, whole = tmp_path / "split", tmp_path / "whole"
    _run(*common, "budget.value=6144", f"hydra.run.dir={split}")
    _run(*common, "budget.value=12288", f"hydra.run.dir={split}")
    _run(*common, "budget.value=12288", f"hydra.run.dir={whole}")
    resumed, uninterrupted = RunRecord(split).read_metrics(), RunRecord(whole).read_metrics()
    assert json.loads((split / "run.json").read_text())["resumed"] is True
    assert [r["samples"] for r in resumed] == [1024 * (i + 1) for i in range(12)]
    assert [r["updates"] for r in resumed] == [16 * (i + 1) for i in range(12)]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]
    assert [r["flops"] for r in resumed] == [r["flops"] for r in uninterrupted]
