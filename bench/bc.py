"""Behavioural cloning: can the data loader keep the model fed? Loader samples/s against model
samples/s, in the same run, on the same machine.

For the Atari study's data (84x84x4 uint8 frames, the expert's actions) in memory-mapped
shards (``agents/shards.py``), and for each BC width given:

- **loader**: samples/s of ``BatchLoader`` alone (uniform random rows across every shard,
  gathered by its threads and handed over as tensors; nothing trains);
- **model**: samples/s of one BC training step alone (forward, cross-entropy, backward, Adam)
  of the Atari CNN (``model.hidden=0``, the study's network) on a batch already in memory;
- **loader / model**: the headroom; the goal is >= 10x for the smallest model on CPU, so the
  loader never starves a GPU either;
- **BC loop**: samples/s of the two together, the loader's threads feeding the training step
  (what ``agents/bc.py`` runs), and its share of the model-only rate.

The dataset is synthetic (random frames) unless ``--data`` names a collected one
(``algo=collect``); its size on disk is ``--samples`` x 28 KB, sparse shards of
``--shard-samples`` rows, read through the page cache like a real one.

    python bench/bc.py [--widths 0.25,1] [--batch 128] [--samples 60000] [--threads 1,2]
                       [--device cpu|cuda] [--data DIR] [--seconds 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.models import AtariCNN  # noqa: E402
from agents.shards import BatchLoader, ShardedDataset, ShardWriter  # noqa: E402

NUM_ACTIONS = 18


def synthetic_dataset(root: Path, samples: int, shard_samples: int, seed: int = 0) -> Path:
    """Random Atari-shaped episodes of 500-3000 steps into ``root`` (train split)."""
    rng = np.random.default_rng(seed)
    fields = {"obs": ((84, 84, 4), np.uint8), "action": ((), np.int64),
              "reward": ((), np.float32)}
    with ShardWriter(root, fields, shard_samples=shard_samples,
                     meta={"num_actions": NUM_ACTIONS, "synthetic": True}) as writer:
        written = 0
        while written < samples:
            n = int(min(rng.integers(500, 3000), samples - written))
            writer.add_episode("train", {
                "obs": rng.integers(0, 256, (n, 84, 84, 4), dtype=np.uint8),
                "action": rng.integers(0, NUM_ACTIONS, n),
                "reward": np.zeros(n, np.float32)})
            written += n
            writer.commit()
    return root


def loader_rate(data: ShardedDataset, batch: int, threads: int, seconds: float,
                pin: bool) -> float:
    with BatchLoader(data, batch, seed=1, fields=["obs", "action"], threads=threads,
                     prefetch=8, pin_memory=pin) as loader:
        for _ in range(3):
            next(loader)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = next(loader)
            n += b["action"].shape[0]
        return n / (time.perf_counter() - t0)


def make_step(width: float, device: torch.device):
    torch.manual_seed(0)
    model = AtariCNN((84, 84, 4), NUM_ACTIONS, width=width, hidden=0, value_head=False)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(obs: torch.Tensor, act: torch.Tensor) -> None:
        loss = F.cross_entropy(model(obs.to(device, non_blocking=True)).float(),
                               act.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    return step, params


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_rate(step, batch: int, device: torch.device, seconds: float) -> float:
    obs = torch.randint(0, 256, (batch, 84, 84, 4), dtype=torch.uint8)
    act = torch.randint(0, NUM_ACTIONS, (batch,))
    if device.type == "cuda":
        obs, act = obs.to(device), act.to(device)
    for _ in range(3):
        step(obs, act)
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(obs, act)
        n += batch
    sync(device)
    return n / (time.perf_counter() - t0)


def loop_rate(step, data: ShardedDataset, batch: int, threads: int, device: torch.device,
              seconds: float) -> float:
    with BatchLoader(data, batch, seed=2, fields=["obs", "action"], threads=threads,
                     prefetch=8, pin_memory=device.type == "cuda") as loader:
        for _ in range(3):
            b = next(loader)
            step(b["obs"], b["action"])
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = next(loader)
            step(b["obs"], b["action"])
            n += batch
        sync(device)
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="0.25,1")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=60_000)
    p.add_argument("--shard-samples", type=int, default=8192)
    p.add_argument("--threads", default="1,2", help="loader threads to measure")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="a collected dataset instead of random frames")
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--nethack", default="0.25,1",
                   help="NetHack BC widths (LSTM core) on recorded ttyrecs; '' skips it")
    p.add_argument("--nethack-batch", default="32x32", help="B x T windows per update")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    widths = [float(w) for w in args.widths.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            root = Path(args.data)
        else:
            t0 = time.perf_counter()
            root = synthetic_dataset(Path(tmp) / "data", args.samples, args.shard_samples)
            print(f"synthetic dataset: {args.samples:,} samples in "
                  f"{-(-args.samples // args.shard_samples)} shards, "
                  f"{args.samples * 84 * 84 * 4 / 2**30:.2f} GiB, written in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        data = ShardedDataset(root, "train")
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} torch "
              f"threads, batch {args.batch}\n", flush=True)
        loaders = {t: loader_rate(data, args.batch, t, args.seconds, device.type == "cuda")
                   for t in threads}
        for t, rate in loaders.items():
            print(f"loader alone, {t} thread(s): {rate:,.0f} samples/s", flush=True)
        best_threads = max(loaders, key=loaders.get)
        print("\n| width | params | model samples/s | loader samples/s | loader / model "
              "| BC loop samples/s | loop / model |")
        print("|---|---|---|---|---|---|---|")
        for width in widths:
            step, params = make_step(width, device)
            model = model_rate(step, args.batch, device, args.seconds)
            loop = loop_rate(step, data, args.batch, best_threads, device, args.seconds)
            loader = loaders[best_threads]
            print(f"| {width:g} | {params:,} | {model:,.0f} | {loader:,.0f} "
                  f"({best_threads} thr) | {loader / model:.1f}x | {loop:,.0f} | "
                  f"{loop / model:.2f} |", flush=True)
        if args.nethack:
            nethack(args, Path(tmp), device)


def nethack(args: argparse.Namespace, tmp: Path, device: torch.device) -> None:
    """The same for NetHack: nle.dataset's ttyrec reader (``agents/ttyrec.py``, games recorded
    from NLE here) against the NetHack BC model's training step (LSTM core)."""
    from agents.ttyrec import TtyrecSequences, populate, record_ttyrecs

    batch, steps = (int(x) for x in args.nethack_batch.split("x"))
    t0 = time.perf_counter()
    root = record_ttyrecs(tmp / "ttyrecs", games=2 * batch, seed=0, max_steps=2000)
    populate(root, "bench", tmp / "ttyrecs.db")
    print(f"\nNetHack: {2 * batch} games recorded from NLE (random play, up to 2,000 steps) in "
          f"{time.perf_counter() - t0:.1f} s; windows {batch} x {steps}", flush=True)

    def stream() -> TtyrecSequences:
        return TtyrecSequences(tmp / "ttyrecs.db", "bench", batch_size=batch, seq_len=steps,
                               seed=0, val_fraction=0.05, threads=2)

    data = stream()
    it = iter(data)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        n += next(it)["action"].numel()
    loader = n / (time.perf_counter() - t0)
    data.close()
    print("\n| NetHack width | params (effective) | model samples/s | loader samples/s | "
          "loader / model |")
    print("|---|---|---|---|---|")
    sample = next(iter(stream()))
    for width in [float(w) for w in args.nethack.split(",")]:
        rate, effective = nethack_model_rate(width, sample, steps, device, args.seconds)
        print(f"| {width:g} | {effective:,} | {rate:,.0f} | {loader:,.0f} | "
              f"{loader / rate:.1f}x |", flush=True)


def nethack_model_rate(width: float, sample: dict, steps: int, device: torch.device,
                       seconds: float) -> tuple[float, int]:
    """Training samples/s of the NetHack BC model (LSTM) on one batch already in memory, and
    its effective parameters."""
    from agents.nethack_net import NetHackBCNet
    from agents.ttyrec import NUM_ACTIONS

    torch.manual_seed(0)
    model = NetHackBCNet(NUM_ACTIONS, width=width, context=steps).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    keys = ("tty_chars", "tty_colors", "tty_cursor", "prev_action")
    obs = {k: sample[k].to(device) for k in keys}
    first, act = sample["first"].to(device), sample["action"].to(device)
    effective = sum(p.numel() for m in model.scaled_modules() for p in m.parameters())

    def step() -> None:
        logits, _ = model(obs, first)
        loss = F.cross_entropy(logits.reshape(-1, NUM_ACTIONS).float(), act.reshape(-1),
                               ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += act.numel()
    sync(device)
    return n / (time.perf_counter() - t0), effective


if __name__ == "__main__":
    main()
