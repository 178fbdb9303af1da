"""Behavioural cloning on an expert's dataset (``algo=bc``): Tuyls et al. 2024's imitation
scaling study.

Reads top to bottom: open the dataset (a sharded expert dataset written by ``algo=collect``,
``agents/shards.py``, or NetHack ttyrecs through ``nle.dataset``, ``agents/ttyrec.py``), build
the policy of the configured model family, then loop: one batch, cross-entropy on the expert's
actions, one optimiser step, hand the iteration to the run context. No environment is in the
loop: the budget is in ``samples`` or ``flops`` (``env_steps`` stay 0).

Evaluations (``eval_every``, the last iteration, and every ``snapshot_flops`` budget) compute
the loss and accuracy on a fixed set of ``val_samples`` held-out samples (``val_loss``,
``val_accuracy``: the study's metric; the held-out split is whole trajectories); where the run
has envs (``env=atari``, ``env=nethack``) they also play ``eval_episodes`` episodes with the
policy (``eval_return``; ``algo.rollouts``: at snapshots and at the end by default, as these
are the points the isoFLOP and return-vs-loss analyses read).

Policies (``model.family``):

- ``atari_cnn``: the Atari CNN, convs with 32, 64, 64 x width channels and a linear head
  (``model.hidden=0``; a dense layer of ``hidden`` x width units otherwise); all of it is the
  scaled model (effective N);
- ``mlp``: the policy MLP of ``agents/models.py`` (vector observations; the CPU stand-in
  chain on CartPole);
- ``nethack_bc``: the NetHack BC model (``agents/nethack_net.py``: tty encoders, previous
  action, an LSTM or Transformer core), trained on ``seq_len``-step windows with the core's
  state carried across consecutive batches of the same game streams.

FLOPs (role ``policy``): a forward and a backward (2x) per sample, counted exactly from the
network (convolutions by their output size; ``rl_scaling/flops.py``); the log line also has
the convention ``flops_6nd = 6 N D`` (N effective parameters, D samples) to compare with the
paper.

Determinism: the shard loader draws batch k from ``(seed, k)``, so a seed fixes the batches
and a resumed run continues the same stream; the ttyrec stream is read by ``nle.dataset``'s
threads in its own order and restarts on a resume (counters and weights continue).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.evaluation import evaluate
from agents.models import AtariCNN, MLPActorCritic
from rl_scaling.context import RunContext
from rl_scaling.registry import ConfigError, register_algo

SOURCES = ("auto", "shards", "ttyrec")
ROLLOUTS = ("snapshots", "always", "never")


@dataclass
class BCConfig:
    """Behavioural-cloning hyperparameters (``algo.*``)."""

    name: str = "bc"
    data: str = "???"  # a dataset: a shard root (algo=collect) or a ttyrec database file
    source: str = "auto"  # shards | ttyrec | auto (a directory with index.json: shards)
    dataset_name: str = "nld-aa"  # ttyrec: the dataset's name in the database
    ttyrec_dir: str | None = None  # ttyrec: a directory of ttyrecs added to the database first
    val_fraction: float = 0.05  # ttyrec: share of games held out (shards: the `val` split)
    batch_size: int = 128  # samples per update (sequences: windows per update)
    seq_len: int = 32  # steps per window of a sequence model (nethack_bc)
    optimizer: str = "adam"  # adam | adamw
    lr: float = 3e-4
    weight_decay: float = 0.0  # AdamW's decoupled decay (adam: L2 folded into the gradient)
    lr_schedule: str = "constant"  # constant | cosine (to 0 over the budget)
    warmup_updates: int = 0  # linear warm-up of the learning rate
    max_grad_norm: float = 1.0  # 0: no clipping
    val_samples: int = 8192  # held-out samples each validation reads (a fixed set)
    rollouts: str = "snapshots"  # when evaluations play episodes: snapshots | always | never
    greedy: bool = False  # rollouts take the arg max instead of sampling the policy
    verify_data: bool = False  # shards: check every full shard's crc32 first (reads it all)
    loader_threads: int = 2  # threads gathering batches ahead of the learner
    prefetch: int = 4  # batches ready ahead

    def validate(self) -> None:
        if self.data in (None, "", "???"):
            raise ConfigError("algo.data must be set: a dataset directory (algo=collect's "
                              "algo.out) or a ttyrec database file")
        checks = {"source": (self.source, SOURCES), "optimizer": (self.optimizer,
                                                                  ("adam", "adamw")),
                  "lr_schedule": (self.lr_schedule, ("constant", "cosine")),
                  "rollouts": (self.rollouts, ROLLOUTS)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"algo.{key}={value!r} must be one of {list(allowed)}")
        for key in ("batch_size", "seq_len", "val_samples", "loader_threads", "prefetch"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"algo.{key}={getattr(self, key)} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"algo.lr={self.lr} must be > 0")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.warmup_updates < 0:
            raise ConfigError("algo.weight_decay, algo.max_grad_norm and algo.warmup_updates "
                              "must be >= 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"algo.val_fraction={self.val_fraction} must be in (0, 1)")


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


class PolicyMLP(nn.Module):
    """The policy side of ``mlp`` (its trunk and policy head; no value network): vector
    observations -> logits. Every layer is the scaled model."""

    def __init__(self, obs_dim: int, num_actions: int, width: float, depth: int) -> None:
        super().__init__()
        ac = MLPActorCritic((obs_dim,), num_actions, width=width, depth=depth,
                            separate_value=False)
        self.trunk, self.head = ac.policy_trunk, ac.policy_head

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.trunk(obs.float()))


def build_policy(model: dict[str, Any], spec: Any, seq_len: int) -> nn.Module:
    """The BC policy of ``model.family`` for the dataset's spaces (see the module docstring)."""
    family = model.get("family")
    width = float(model.get("width", 1.0))
    if not isinstance(spec.action_space, gymnasium.spaces.Discrete):
        raise ConfigError(f"algo=bc clones discrete actions; the dataset's are {spec.action_space}")
    n = int(spec.action_space.n)
    if family == "atari_cnn":
        return AtariCNN(tuple(spec.observation_space.shape), n, width=width,
                        hidden=int(model.get("hidden", 0) or 0), value_head=False)
    if family == "mlp":
        shape = spec.observation_space.shape
        if len(shape) != 1:
            raise ConfigError(f"model=mlp needs vector observations; the dataset's are {shape}")
        return PolicyMLP(int(shape[0]), n, width, int(model.get("depth") or 2))
    if family == "nethack_bc":
        from agents.nethack_net import NetHackBCNet

        return NetHackBCNet(n, width=width, depth=int(model.get("depth") or 1),
                            core=str(model.get("core", "lstm")),
                            context=int(model.get("context") or seq_len),
                            aspect_ratio=model.get("aspect_ratio"), heads=model.get("heads"))
    raise ConfigError(f"algo=bc has no policy for model={family!r}; use atari_cnn, mlp or "
                      f"nethack_bc")


# ---------------------------------------------------------------------------------------------
# Data sources: training batches, the fixed validation set, the spaces
# ---------------------------------------------------------------------------------------------


class ShardSource:
    """An ``algo=collect`` dataset: uniform random samples of the ``train`` split (the
    shard loader), validation on evenly spaced samples of the ``val`` split."""

    recurrent = False

    def __init__(self, cfg: BCConfig, ctx: RunContext) -> None:
        from agents.shards import BatchLoader, ShardedDataset

        self.train = ShardedDataset(cfg.data, "train")
        self.val = ShardedDataset(cfg.data, "val")
        if cfg.verify_data:  # a full read: crc32 of every full shard against the index
            self.train.verify()
            self.val.verify()
        if not len(self.train) or not len(self.val):
            empty = "train" if not len(self.train) else "val"
            raise ConfigError(f"algo.data={cfg.data!r}: the {empty} split is empty")
        shape, dtype = self.train.fields["obs"]
        num_actions = self.train.meta.get("num_actions")
        if not num_actions:
            raise ConfigError(f"algo.data: {Path(cfg.data) / 'index.json'} does not say how "
                              f"many actions the env has (meta.num_actions)")
        dtype = np.dtype(dtype)
        low, high = (0, 255) if dtype == np.uint8 else (-np.inf, np.inf)
        self.observation_space = gymnasium.spaces.Box(low, high, tuple(shape), dtype)
        self.action_space = gymnasium.spaces.Discrete(int(num_actions))
        self.loader = BatchLoader(self.train, cfg.batch_size, seed=ctx.seed,
                                  fields=["obs", "action"], prefetch=cfg.prefetch,
                                  threads=cfg.loader_threads,
                                  pin_memory=ctx.device.type == "cuda")
        count = min(cfg.val_samples, len(self.val))
        self.val_rows = np.unique(np.linspace(0, len(self.val) - 1, count).astype(np.int64))
        self.batch_size = cfg.batch_size
        self.samples_per_batch = cfg.batch_size

    def start(self, updates: int) -> None:
        """Nothing to do: the loader's state came back with the checkpoint."""

    def example(self, device: torch.device) -> Any:
        return torch.zeros((1, *self.observation_space.shape),
                           dtype=torch.from_numpy(np.zeros(0, self.observation_space.dtype)
                                                  ).dtype, device=device)

    def next_batch(self) -> dict[str, Tensor]:
        return next(self.loader)

    def val_batches(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.val_rows), self.batch_size * 4):
            rows = self.val_rows[start:start + self.batch_size * 4]
            yield {k: torch.from_numpy(v) for k, v in
                   self.val.gather(rows, ["obs", "action"]).items()}

    def close(self) -> None:
        self.loader.close()


class TtyrecSource:
    """NetHack ttyrecs through ``nle.dataset`` (``agents/ttyrec.py``): (T, B) windows of game
    streams split by game into train and val, decoded ``algo.prefetch`` batches ahead on a
    thread."""

    recurrent = True
    val_rows = 256  # game streams a validation reads side by side (more games, shorter reads)

    def __init__(self, cfg: BCConfig, ctx: RunContext) -> None:
        from agents import ttyrec

        if cfg.ttyrec_dir:
            ttyrec.populate(cfg.ttyrec_dir, cfg.dataset_name, cfg.data)
        elif not Path(cfg.data).is_file():
            raise ConfigError(f"algo.data={cfg.data!r}: no ttyrec database there (set "
                              f"algo.ttyrec_dir to build it from a directory of ttyrecs)")
        self.cfg, self.seed = cfg, ctx.seed
        common = self._common()
        self.train_stream = ttyrec.TtyrecSequences(split="train", batch_size=cfg.batch_size,
                                                   **common)
        self.val_games = len(ttyrec.TtyrecSequences(split="val", batch_size=1, **common).games)
        self.loader: Prefetcher | None = None
        n = self.train_stream.num_actions
        self.action_space = gymnasium.spaces.Discrete(n)
        self.observation_space = gymnasium.spaces.Dict({
            "tty_chars": gymnasium.spaces.Box(0, 255, (24, 80), np.uint8),
            "tty_colors": gymnasium.spaces.Box(0, 31, (24, 80), np.int8),
            "tty_cursor": gymnasium.spaces.Box(0, 255, (2,), np.uint8)})
        self.samples_per_batch = cfg.batch_size * cfg.seq_len

    def _common(self) -> dict[str, Any]:
        cfg = self.cfg
        return dict(dbfile=cfg.data, name=cfg.dataset_name, val_fraction=cfg.val_fraction,
                    seq_len=cfg.seq_len, seed=self.seed, threads=cfg.loader_threads)

    def start(self, updates: int) -> None:
        """Start the training stream. A resumed run (``updates`` > 0) shuffles the games with
        another seed, so it goes on to games it has not read rather than re-reading the first
        ones (the exact position in each stream is not restored)."""
        if updates:
            self.train_stream.order_seed = int(np.random.SeedSequence(
                [self.seed, updates]).generate_state(1)[0])
        self.loader = Prefetcher(iter(self.train_stream), self.cfg.prefetch)

    def example(self, device: torch.device) -> Any:
        steps = self.cfg.seq_len
        obs = {"tty_chars": torch.zeros(steps, 1, 24, 80, dtype=torch.uint8, device=device),
               "tty_colors": torch.zeros(steps, 1, 24, 80, dtype=torch.int8, device=device),
               "tty_cursor": torch.zeros(steps, 1, 2, dtype=torch.uint8, device=device),
               "prev_action": torch.zeros(steps, 1, dtype=torch.int64, device=device)}
        return obs, torch.zeros(steps, 1, dtype=torch.bool, device=device)

    def next_batch(self) -> dict[str, Tensor]:
        assert self.loader is not None, "start() the stream first"
        return next(self.loader)

    def val_batches(self) -> Iterator[dict[str, Tensor]]:
        """The first ``val_samples`` frames of one pass over the val games, ``val_rows``
        games side by side (the same frames every time)."""
        from agents import ttyrec

        rows = max(self.cfg.batch_size, min(self.val_rows, self.val_games))
        stream = ttyrec.TtyrecSequences(split="val", batch_size=rows, loop=False,
                                        **self._common())
        seen = 0
        try:
            for batch in stream:
                yield batch
                seen += int(batch["valid"].sum())
                if seen >= self.cfg.val_samples:
                    break
        finally:
            stream.close()

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
        self.train_stream.close()


class Prefetcher:
    """Runs an iterator on a daemon thread, up to ``depth`` items ahead of ``next``; an error
    in the iterator is raised by ``next``."""

    _END = object()

    def __init__(self, iterator: Iterator[Any], depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self.thread.start()

    def _run(self, iterator: Iterator[Any]) -> None:
        try:
            for item in iterator:
                while not self.stop.is_set():
                    try:
                        self.queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.queue.put((self._END, None))
        except BaseException as err:  # handed to the consumer
            self.queue.put((self._END, err))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        item, err = self.queue.get()
        if err is not None:
            self.queue.put((item, err))  # every later next() raises it too
            raise err
        if item is self._END:
            self.queue.put((item, None))
            raise StopIteration
        return item

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5)


def open_source(cfg: BCConfig, ctx: RunContext) -> ShardSource | TtyrecSource:
    """The dataset of ``algo.data`` (``algo.source``: auto picks shards for a directory with
    ``index.json``, ttyrec otherwise)."""
    source = cfg.source
    path = Path(cfg.data)
    if source == "auto":
        if not path.exists() and not cfg.ttyrec_dir:
            raise ConfigError(f"algo.data={cfg.data!r}: no such dataset (a directory written "
                              f"by algo=collect, or a ttyrec database file)")
        source = "shards" if path.is_dir() else "ttyrec"
    try:
        return ShardSource(cfg, ctx) if source == "shards" else TtyrecSource(cfg, ctx)
    except ValueError as err:  # DatasetError, TtyrecError: one line naming the file
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"algo.data: {err}") from err


# ---------------------------------------------------------------------------------------------
# The loss, validation and rollouts
# ---------------------------------------------------------------------------------------------


def _policy_inputs(batch: dict[str, Tensor], device: torch.device, recurrent: bool
                   ) -> tuple[Any, Tensor]:
    """(policy inputs, target actions) of a batch, on the device."""
    def dev(t: Tensor) -> Tensor:
        return t.to(device, non_blocking=True)

    if not recurrent:
        return (dev(batch["obs"]),), dev(batch["action"]).long()
    obs = {k: dev(batch[k]) for k in ("tty_chars", "tty_colors", "tty_cursor", "prev_action")}
    return (obs, dev(batch["first"])), dev(batch["action"]).long()


def cross_entropy(logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy over the targets that are actions (``-1``: a keypress that is no
    action, ignored), the number of correct arg-max predictions, and the number of targets."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    actions = actions.reshape(-1)
    valid = actions >= 0
    count = valid.sum()
    # a sum over the valid targets, not the mean F.cross_entropy takes, which is NaN when a
    # batch has none (a window of keypresses that are no actions)
    loss = F.cross_entropy(logits, actions, ignore_index=-1, reduction="sum") / count.clamp(min=1)
    correct = ((logits.argmax(-1) == actions) & valid).sum()
    return loss, correct, count


@torch.inference_mode()
def validate(policy: nn.Module, source: ShardSource | TtyrecSource, device: torch.device
             ) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy per held-out target) and ``val_accuracy``."""
    was_training = policy.training
    policy.eval()
    total, correct, count = 0.0, 0, 0
    state = None
    for batch in source.val_batches():
        inputs, actions = _policy_inputs(batch, device, source.recurrent)
        if source.recurrent:
            logits, state = policy(*inputs, state)
        else:
            logits = policy(*inputs)
        loss, right, n = cross_entropy(logits, actions)
        if int(n):
            total += float(loss) * int(n)
            correct += int(right)
            count += int(n)
    policy.train(was_training)
    if not count:
        return {}
    return {"val_loss": total / count, "val_accuracy": correct / count}


class FeedForwardActor:
    """The BC policy playing a vectorised env: samples (or the arg max of) its logits."""

    recurrent = False

    def __init__(self, policy: nn.Module, device: torch.device, generator: torch.Generator,
                 greedy: bool) -> None:
        self.policy, self.device, self.generator, self.greedy = policy, device, generator, greedy

    @torch.inference_mode()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        logits = self.policy(torch.from_numpy(obs).to(self.device)).float()
        return _choose(logits, self.generator, self.greedy)


class RecurrentActor:
    """The NetHack BC policy playing ``env=nethack`` (tty observations), one step at a time:
    it keeps the core's state and feeds its own previous action."""

    recurrent = True

    def __init__(self, policy: nn.Module, device: torch.device, generator: torch.Generator,
                 greedy: bool, num_actions: int) -> None:
        self.policy, self.device, self.generator, self.greedy = policy, device, generator, greedy
        self.none_action = num_actions  # "no previous action": the start of a game

    def reset(self, num_envs: int) -> None:
        self.state = self.policy.initial_state(num_envs, self.device)
        self.prev = torch.full((num_envs,), self.none_action, dtype=torch.int64,
                               device=self.device)
        self.first = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def reset_where(self, done: np.ndarray) -> None:
        done_t = torch.from_numpy(np.asarray(done, dtype=bool)).to(self.device)
        self.prev = torch.where(done_t, torch.full_like(self.prev, self.none_action), self.prev)
        self.first = done_t

    @torch.inference_mode()
    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        step = {k: torch.from_numpy(obs[k]).to(self.device)[None]
                for k in ("tty_chars", "tty_colors", "tty_cursor")}
        step["prev_action"] = self.prev[None]
        logits, self.state = self.policy(step, self.first[None], self.state)
        actions = _choose(logits[0].float(), self.generator, self.greedy)
        self.prev = torch.from_numpy(actions).to(self.device)
        self.first = torch.zeros_like(self.first)
        return actions


def _choose(logits: Tensor, generator: torch.Generator, greedy: bool) -> np.ndarray:
    if greedy:
        return logits.argmax(-1).cpu().numpy()
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _game(family: Any, env_id: Any) -> str:
    """An env id in one spelling (Atari's ROM name: 'ALE/Breakout-v5' is 'breakout')."""
    if family == "atari":
        from envs.atari import rom_name

        return rom_name(env_id)
    return str(env_id)


def check_eval_envs(ctx: RunContext, source: ShardSource | TtyrecSource) -> None:
    """The envs the policy plays must be the dataset's: the same game (where the dataset says
    which) and the same actions; one line naming env.id otherwise."""
    config = ctx.env_factory("eval").config
    meta_env = getattr(getattr(source, "train", None), "meta", {}).get("env") or {}
    if meta_env.get("id") is not None and (
            meta_env.get("family") != config.get("family")
            or _game(meta_env.get("family"), meta_env["id"])
            != _game(config.get("family"), config.get("id"))):
        raise ConfigError(f"env.id={config.get('id')!r}: the dataset was collected on "
                          f"{meta_env.get('family')} {meta_env['id']!r}; its policy plays that "
                          f"env (set env.id), or set algo.rollouts=never")
    actions = ctx.envs("eval").single_action_space
    if getattr(actions, "n", None) != source.action_space.n:
        raise ConfigError(f"env.id={config.get('id')!r} has {actions} actions; the dataset "
                          f"has Discrete({source.action_space.n})")


def learning_rate(cfg: BCConfig, updates: int, fraction: float) -> float:
    """The learning rate at ``updates`` done and ``fraction`` of the budget spent."""
    lr = cfg.lr
    if cfg.warmup_updates and updates < cfg.warmup_updates:
        lr *= (updates + 1) / cfg.warmup_updates
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))
    return lr


def train(cfg: BCConfig, ctx: RunContext) -> str:
    """Clone the expert until the budget (``samples`` or ``flops``) is spent."""
    source = open_source(cfg, ctx)
    try:
        return _train(cfg, ctx, source)
    finally:
        source.close()


def _train(cfg: BCConfig, ctx: RunContext, source: ShardSource | TtyrecSource) -> str:
    device = ctx.device
    ctx.set_spec(source.observation_space, source.action_space)
    policy = ctx.network("policy", lambda: build_policy(ctx.model, ctx.spec, cfg.seq_len),
                         example=source.example(device))
    if source.recurrent != bool(getattr(policy, "recurrent", False)):
        raise ConfigError(f"model={ctx.model.get('family')} "
                          f"{'is' if not source.recurrent else 'is not'} a sequence model; "
                          f"the dataset is {'ttyrec sequences' if source.recurrent else 'samples'}"
                          f": use model=nethack_bc for ttyrecs, atari_cnn or mlp for shards")
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = getattr(source, "loader", None)
    try:
        eval_envs = ctx.env_factory("eval") is not None
    except ConfigError:  # a run without envs (`~env`): validation only
        eval_envs = False
    if eval_envs and cfg.rollouts != "never":
        check_eval_envs(ctx, source)
    ctx.restore(policy=policy, optimizer=optimizer,
                loader=loader if hasattr(loader, "state_dict") else None)
    source.start(ctx.counters.updates)
    n_effective = ctx.networks["policy"]["params"]["effective"]
    actor = (RecurrentActor(policy, device, ctx.eval_rng, cfg.greedy, source.action_space.n)
             if source.recurrent else FeedForwardActor(policy, device, ctx.eval_rng, cfg.greedy))
    c = ctx.counters
    state = None
    policy.train()
    t_last, samples_last = time.perf_counter(), c.samples

    def evaluation() -> dict[str, Any]:
        out: dict[str, Any] = validate(policy, source, device)
        play = cfg.rollouts == "always" or (
            cfg.rollouts == "snapshots" and ctx.eval_occasion & {"snapshot", "last"})
        if eval_envs and play:
            policy.eval()
            out.update(evaluate(actor, ctx.envs("eval"), ctx.eval_episodes))
            policy.train()
        return out

    while not ctx.done:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, c.updates, ctx.budget_fraction())
        batch = source.next_batch()
        inputs, actions = _policy_inputs(batch, device, source.recurrent)
        with ctx.speed.autocast():
            if source.recurrent:
                logits, state = policy(*inputs, state)
                # the state carries into the next window of the same streams, not its gradient
                state = _detach(state)
            else:
                logits = policy(*inputs)
        loss, correct, targets = cross_entropy(logits, actions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                     if cfg.max_grad_norm > 0 else None)
        optimizer.step()
        ctx.flops.add_forward_backward("policy", source.samples_per_batch)
        c.updates += 1
        c.samples += source.samples_per_batch

        step_loss = loss.detach()

        def metrics(loss: Tensor = step_loss, correct: Tensor = correct,
                    targets: Tensor = targets, grad_norm: Tensor | None = grad_norm
                    ) -> dict[str, Any]:
            nonlocal t_last, samples_last
            now = time.perf_counter()
            rate = (c.samples - samples_last) / max(now - t_last, 1e-9)
            t_last, samples_last = now, c.samples
            out = {"loss": float(loss), "accuracy": float(correct) / max(int(targets), 1),
                   "lr": optimizer.param_groups[0]["lr"],
                   "flops_6nd": 6.0 * n_effective * c.samples, "samples_per_second": rate}
            if grad_norm is not None:
                out["grad_norm"] = float(grad_norm)
            return out

        ctx.end_iteration(metrics, evaluate=evaluation)
    return "finished"


def _detach(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(s) for s in state)
    if isinstance(state, dict):
        return {k: _detach(v) for k, v in state.items()}
    return state


register_algo("bc", BCConfig, train)
