"""IMPALA's actor-learner split: actor processes fill trajectory slots in shared memory; the
learner consumes them and publishes its weights back (``algo.num_actors > 0``).

The hand-off has no locks and no queues, so an actor killed at any moment (the OOM killer, a
bug in an env) cannot leave a lock held or a half-written message behind:

- ``owner[s]`` (written by the learner only) says which actor slot ``s`` belongs to; every
  actor owns ``slots_per_actor`` slots and fills them in turn (double buffering: it fills one
  while the learner reads another).
- ``status[s]`` is ``FREE`` (the owner may fill it), ``FULL`` (written by the actor, after the
  data) or ``TAKEN`` (the learner is reading it; it sets ``FREE`` when done).
- the actors' policy is a CPU copy of the learner's network in shared memory, overwritten
  in place after every learner step, and ``version`` counts those steps: a slot records the
  version it was acted with, so the learner logs the policy lag.

A dead actor is found by the learner while it waits for slots (``Process.is_alive``), reported
(a warning and the ``actor_restarts`` counter in the log), and started again under the same
index with new env and sampling seeds; the slots it owned are refilled by its successor. An
actor that dies ``MAX_FAILED_STARTS`` times in a row before filling a slot (a broken env
config) fails the run with its exit code instead. Actors ignore the job's signals (SIGTERM,
SIGUSR1/2, SIGINT): the learner checkpoints on them and stops the actors itself. Actors step
their envs and act with one thread each; the order in which their trajectories arrive depends
on the OS scheduler, so a run with actors is not reproducible draw for draw (the synchronous
mode, ``num_actors=0``, is). The version a slot records is the one at the start of its
unroll; the weights may change during it, so ``policy_lag`` is an upper bound (V-trace is
exact regardless: it uses the log-probabilities recorded at every step).

Who runs the network (``algo.actor_inference``):

- ``local`` (default): every actor acts with its CPU copy of the network (one thread each);
  the actors' cores do both the acting forwards and the env steps.
- ``learner``: an :class:`InferenceServer` thread in the learner's process acts for all
  actors, in batches on the learner's device (a GPU) with its own copy of the network and
  its own CUDA stream, keeping the core state of every actor's env there. An actor writes one
  step's observations into an :class:`InferenceChannel` (shared memory), raises its request
  flag and waits for the sampled actions; at the first step of an unroll the server also
  records the core state into the actor's slot. The actors then only step envs: NetHack's
  encoder costs ~20 MFLOP per forward, far more on a CPU core than the env step.

The hand-off orders its writes (data, then the status flag) as plain stores into shared
memory, which x86-64 keeps in order; on a weakly ordered CPU (ARM) a fence would be needed.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from agents.distributions import Categorical
from agents.evaluation import EpisodeLog
from rl_scaling.distributed import STREAM_SEED_STRIDE
from rl_scaling.observations import map_obs, select, to_tensor, write, zeros_like_space

log = logging.getLogger(__name__)

FREE, FULL, TAKEN = 0, 1, 2
PARENT_CHECK_S = 1.0  # how often a waiting actor looks whether its learner still lives
POLL_S = 0.0005  # how long a waiting side sleeps between looks at the status flags
CHECK_S = 0.5  # how often the learner looks for dead actors
MAX_FAILED_STARTS = 3  # deaths in a row without a filled slot before the run fails
UNROLL_KEYS = ("obs", "first", "actions", "logprobs", "rewards", "dones")


def _shared(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype).share_memory_()


def _copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """``dst``'s parameters and buffers overwritten in place with ``src``'s."""
    with torch.no_grad():
        for d, s in zip(dst.state_dict().values(), src.state_dict().values(), strict=True):
            d.copy_(s)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the learner dies (SIGKILL included:
    no clean-up of the learner runs then). Elsewhere :class:`_LearnerWatch` notices within a
    second, wherever an actor waits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _LearnerWatch:
    """Tells an actor that its learner asked it to stop, or died (SIGKILL leaves daemonic
    children running): then the actor exits instead of waiting forever."""

    def __init__(self, stop: torch.Tensor, learner_pid: int) -> None:
        # the learner's pid as it passed it: the learner may have died before this actor
        # got here, and then this process's parent is already another one
        self.stop, self.parent, self.last = stop, learner_pid, 0.0

    def gone(self) -> bool:
        if time.monotonic() - self.last < PARENT_CHECK_S:
            return bool(self.stop)
        self.last = time.monotonic()
        return bool(self.stop) or os.getppid() != self.parent


class LocalActing:
    """Acts in this process with a recurrent ``model`` on ``device``, carrying the core state
    of ``num_envs`` envs: the synchronous mode, and actors with ``algo.actor_inference=local``
    (each acting with its CPU copy of the network)."""

    def __init__(self, model: nn.Module, num_envs: int, device: torch.device | str,
                 generator: torch.Generator) -> None:
        self.model, self.generator, self.dist = model, generator, Categorical()
        self.state = model.initial_state(num_envs, device)

    def begin_unroll(self, slot: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The core state the next unroll starts from (the learner starts there too)."""
        return self.state[0].clone(), self.state[1].clone()

    @torch.no_grad()
    def __call__(self, obs: Any, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and their log-probabilities for one step of every env."""
        self.model.eval()
        logits, _, self.state = self.model(select(obs, None), first[None], self.state)
        return self.dist.sample(logits[0], self.generator)


def fill_unroll(act: Any, envs, carry: dict[str, Any], out: dict[str, torch.Tensor],
                episodes: EpisodeLog) -> None:
    """Act ``T = out["actions"].shape[0]`` steps of ``envs`` with ``act`` (a
    :class:`LocalActing` or :class:`RemoteActing`), writing the unroll into ``out``
    (``obs``/``first``: T + 1 rows, the last one to bootstrap from; ``actions``, ``logprobs``,
    ``rewards``, ``dones``: T rows) and the episodes that end into ``episodes``. ``carry``
    (``obs``, ``first`` on the acting device) goes on from where the last unroll stopped and
    is updated in place. Observations may be one tensor or a dict of them (NetHack). The one
    unroll loop of both IMPALA modes (the synchronous collector and every actor process)."""
    device = carry["first"].device
    steps = out["actions"].shape[0]
    for t in range(steps):
        write(out["obs"], t, carry["obs"])
        out["first"][t] = carry["first"]
        action, logprob = act(carry["obs"], carry["first"])
        out["actions"][t], out["logprobs"][t] = action, logprob
        next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        done = torch.from_numpy(np.logical_or(terminated, truncated)).to(device)
        out["rewards"][t] = torch.from_numpy(reward)
        out["dones"][t] = done
        carry["obs"], carry["first"] = to_tensor(next_obs, device), done
        episodes.add(info)
    write(out["obs"], steps, carry["obs"])
    out["first"][steps] = carry["first"]


# ---- acting on the learner's device (algo.actor_inference=learner) -------------------------
IDLE, REQUEST, ANSWERED = 0, 1, 2
SPIN_S = 0.00005  # an actor's sleep between looks at its answer flag
SERVE_S = 0.00005  # the inference server's sleep when no actor is waiting


class InferenceChannel:
    """Shared memory between the actors and the learner's :class:`InferenceServer`: per
    actor, one step's observations of its envs, a request flag and the answer."""

    def __init__(self, num_actors: int, envs: int, observation_space: Any) -> None:
        self.envs = envs
        self.obs = zeros_like_space(observation_space, (num_actors, envs), shared=True)
        self.first = _shared((num_actors, envs), torch.bool)
        self.flag = _shared((num_actors,), torch.int8)  # IDLE / REQUEST / ANSWERED
        # the slot an actor's unroll starts in at its next request (-1: none): the server
        # writes the core state of the actor's envs there, where the learner starts
        self.unroll_slot = torch.full((num_actors,), -1, dtype=torch.long).share_memory_()
        self.action = _shared((num_actors, envs), torch.long)
        self.logprob = _shared((num_actors, envs), torch.float32)


class RemoteActing:
    """An actor's side of ``algo.actor_inference=learner``: writes its envs' observations into
    the channel, raises its flag, and waits for the actions the learner's server samples."""

    def __init__(self, channel: InferenceChannel, index: int, watch: _LearnerWatch) -> None:
        self.channel, self.index, self.watch = channel, index, watch

    def begin_unroll(self, slot: int) -> None:
        self.channel.unroll_slot[self.index] = slot  # the server records the state there
        return None

    def __call__(self, obs: Any, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, i = self.channel, self.index
        write(c.obs, i, obs)
        c.first[i] = first
        c.flag[i] = REQUEST  # last: the server reads the request only after this
        while int(c.flag[i]) != ANSWERED:
            time.sleep(SPIN_S)
            if self.watch.gone():
                raise SystemExit(0)  # the learner stopped (or died) while this actor waited
        c.flag[i] = IDLE
        return c.action[i].clone(), c.logprob[i].clone()


class InferenceServer:
    """``algo.actor_inference=learner``: a thread of the learner's process that acts for the
    actors on the learner's device (a GPU), with its own copy of the network (refreshed by
    :meth:`load` after every learner step) on its own CUDA stream, and the core state of every
    actor's envs kept there. Each call answers every request waiting at that moment in one
    forward (no minimum batch, no wait window yet: with few envs per actor the calls are
    small; bench/README.md). This takes the network off the actors' cores, which then only
    step envs."""

    def __init__(self, model: nn.Module, channel: InferenceChannel, slots: Any,
                 device: torch.device, seed: int) -> None:
        self.model = copy.deepcopy(model).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.channel, self.slots, self.device = channel, slots, device
        num_envs = channel.first.numel()
        self.state = self.model.initial_state(num_envs, device)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.dist = Categorical()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self.stream is not None:  # the copies above ran on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(device))
        self.lock = threading.Lock()
        self.batches = 0  # inference calls and the envs they acted for, since the last stats()
        self.batched_envs = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="impala-inference",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                waiting = torch.nonzero(self.channel.flag == REQUEST).flatten()
                if len(waiting) == 0:
                    time.sleep(SERVE_S)
                    continue
                self._answer(waiting)
        except BaseException as err:  # reported by the learner's next take()
            self.error = err

    @torch.no_grad()
    def _answer(self, actors: torch.Tensor) -> None:
        c, per_actor, n = self.channel, self.channel.envs, len(actors)
        rows = (actors[:, None] * per_actor + torch.arange(per_actor)).flatten()
        obs = map_obs(lambda a: a[actors].reshape(n * per_actor, *a.shape[2:]), c.obs)
        first = c.first[actors].reshape(n * per_actor)
        starts = [(j, slot) for j, slot in enumerate(c.unroll_slot[actors].tolist())
                  if slot >= 0]
        with self.lock, self._on_stream():
            rows_d = rows.to(self.device)
            h, cell = self.state[0][:, rows_d], self.state[1][:, rows_d]
            for j, slot in starts:  # the state these unrolls start from, for the learner
                part = slice(j * per_actor, (j + 1) * per_actor)
                self.slots.h0[slot].copy_(h[:, part])
                self.slots.c0[slot].copy_(cell[:, part])
            logits, _, (h, cell) = self.model(
                select(to_tensor(obs, self.device), None), first.to(self.device)[None], (h, cell))
            self.state[0][:, rows_d], self.state[1][:, rows_d] = h, cell
            action, logprob = self.dist.sample(logits[0], self.generator)
            action, logprob = action.cpu(), logprob.float().cpu()  # waits for the stream
            # answered under the lock, so that a restarted actor's reset (ActorPool._start)
            # cannot fall between a dead actor's request and its late answer
            for j, _ in starts:
                c.unroll_slot[actors[j]] = -1
            c.action[actors] = action.view(n, per_actor)
            c.logprob[actors] = logprob.view(n, per_actor)
            c.flag[actors] = ANSWERED  # last
        self.batches += 1
        self.batched_envs += n * per_actor

    def load(self, learner: nn.Module) -> None:
        """Copy the learner's weights (between two batches; ordered with the learner's own
        stream, so neither side sees a half-written update)."""
        with self.lock:
            if self.stream is not None:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with self._on_stream():
                _copy_weights(self.model, learner)
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _on_stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def reset_actor(self, index: int) -> None:
        """Forget actor ``index``'s pending request (it died; a successor starts)."""
        with self.lock:
            self.channel.flag[index] = IDLE
            self.channel.unroll_slot[index] = -1

    def stats(self) -> float:
        """Mean envs per inference call since the last call (0 if none)."""
        mean = self.batched_envs / self.batches if self.batches else 0.0
        self.batches = self.batched_envs = 0
        return mean

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)


@dataclass
class SlotShapes:
    unroll_length: int
    envs: int  # envs per actor: the trajectories in one slot
    observation_space: Any  # one env's: a Box, or a Dict of Boxes (NetHack)
    state_shape: tuple[int, ...]  # one core state tensor: (layers, envs, hidden)


class TrajectorySlots:
    """``num_slots`` unrolls in shared memory, each ``unroll_length`` steps of one actor's
    ``envs`` envs (the observation after the last step included, to bootstrap)."""

    def __init__(self, num_slots: int, shapes: SlotShapes) -> None:
        t, n = shapes.unroll_length, shapes.envs
        self.shapes = shapes

        def shared(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return _shared((num_slots, *shape), dtype)

        self.obs = zeros_like_space(shapes.observation_space, (num_slots, t + 1, n),
                                    shared=True)
        self.first = shared((t + 1, n), torch.bool)
        self.actions = shared((t, n), torch.long)
        self.logprobs = shared((t, n))
        self.rewards = shared((t, n))
        self.dones = shared((t, n), torch.bool)
        self.h0 = shared(shapes.state_shape)
        self.c0 = shared(shapes.state_shape)
        self.version = shared((), torch.long)
        # the episodes that ended in the unroll (at most one per env step)
        self.episode_return = shared((t * n,), torch.float64)
        self.episode_length = shared((t * n,), torch.float64)
        self.episode_success = shared((t * n,), torch.float64)
        self.episode_normalized_return = shared((t * n,), torch.float64)
        self.episode_score = shared((t * n,), torch.float64)
        self.episode_counts = shared((len(self.EPISODE_KEYS),), torch.long)  # entries of each
        self.status = shared((), torch.int8)
        self.owner = shared((), torch.long)
        self.filled = shared((), torch.long)  # slots filled by this slot's owner since it started

    EPISODE_KEYS = ("episode_return", "episode_length", "episode_success",
                    "episode_normalized_return", "episode_score")

    def unroll(self, s: int) -> dict[str, Any]:
        """Slot ``s``'s unroll arrays (views into shared memory), keyed as
        :func:`fill_unroll` writes them."""
        return {key: select(getattr(self, key), s) for key in UNROLL_KEYS}

    def write_episodes(self, s: int, episodes: EpisodeLog) -> None:
        parts = (episodes.returns, episodes.lengths, episodes.success, episodes.normalized,
                 episodes.score)
        for j, (key, arrays) in enumerate(zip(self.EPISODE_KEYS, parts, strict=True)):
            values = np.concatenate(arrays).astype(np.float64) if arrays else np.zeros(0)
            getattr(self, key)[s, :len(values)] = torch.from_numpy(values)
            self.episode_counts[s, j] = len(values)

    def read_episodes(self, s: int, episodes: EpisodeLog) -> None:
        info = {}
        for j, key in enumerate(self.EPISODE_KEYS):
            k = int(self.episode_counts[s, j])
            if k or j < 2:
                info[key] = getattr(self, key)[s, :k].numpy().copy()
        info["episode_length"] = info["episode_length"].astype(np.int64)
        episodes.add(info)

    def __len__(self) -> int:
        return int(self.status.shape[0])


def actor_loop(index: int, factory: Any, env_seed: int, model: nn.Module | None,
               version: torch.Tensor, slots: TrajectorySlots, stop: torch.Tensor,
               sample_seed: int, learner_pid: int,
               channel: InferenceChannel | None = None) -> None:
    """One actor process: fill the slots it owns, forever, until ``stop`` is set. Acts with
    its CPU copy ``model``, or through the learner's inference server (``channel``)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the learner decides when actors stop
    _die_with_parent()
    watch = _LearnerWatch(stop, learner_pid)
    if watch.gone():  # the learner died before the kernel was told to follow it
        return
    torch.set_num_threads(1)
    n = slots.shapes.envs
    envs = factory(num_envs=n, seed=env_seed)
    acting = (RemoteActing(channel, index, watch) if channel is not None else
              LocalActing(model, n, "cpu", torch.Generator().manual_seed(sample_seed)))
    carry = {"obs": to_tensor(envs.reset(seed=env_seed)),
             "first": torch.ones(n, dtype=torch.bool)}
    mine = [s for s in range(len(slots)) if int(slots.owner[s]) == index]
    episodes = EpisodeLog()
    try:
        while not watch.gone():
            ready = [s for s in mine if int(slots.status[s]) == FREE]
            if not ready:
                time.sleep(POLL_S)
                continue
            s = ready[0]
            start = acting.begin_unroll(s)  # the state the learner starts from
            if start is not None:  # (acting remotely, the server records it)
                slots.h0[s].copy_(start[0])
                slots.c0[s].copy_(start[1])
            slots.version[s] = int(version)
            episodes.clear()
            fill_unroll(acting, envs, carry, slots.unroll(s), episodes)
            slots.write_episodes(s, episodes)
            slots.filled[mine[0]] += 1
            slots.status[s] = FULL  # last: the learner reads the data only after this
    finally:
        envs.close()


class ActorPool:
    """``num_actors`` actor processes filling ``slots_per_actor`` slots each; the learner's
    side of the hand-off (``take`` a batch, ``release`` it, ``publish`` its weights)."""

    def __init__(self, num_actors: int, slots_per_actor: int, shapes: SlotShapes,
                 factory: Any, model: nn.Module, seed: int,
                 inference_device: torch.device | None = None) -> None:
        """``model``: the network to act with (copied). ``inference_device``: None, the
        actors act with CPU copies of it (``algo.actor_inference=local``); a device, an
        :class:`InferenceServer` on it acts for them (``algo.actor_inference=learner``)."""
        self.ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads
        self.num_actors, self.factory, self.seed = num_actors, factory, int(seed)
        self.slots = TrajectorySlots(num_actors * slots_per_actor, shapes)
        for s in range(len(self.slots)):
            self.slots.owner[s] = s % num_actors
            self.slots.status[s] = FREE
        self.channel: InferenceChannel | None = None
        self.server: InferenceServer | None = None
        self.model: nn.Module | None = None
        self.procs: list[Any] = [None] * num_actors
        if inference_device is None:
            self.model = copy.deepcopy(model).cpu().eval()  # the actors' copy, shared
            for p in [*self.model.parameters(), *self.model.buffers()]:
                p.requires_grad_(False)
            self.model.share_memory()
        else:
            self.channel = InferenceChannel(num_actors, shapes.envs, shapes.observation_space)
            self.server = InferenceServer(model, self.channel, self.slots,
                                          torch.device(inference_device), seed)
        self.version = torch.zeros((), dtype=torch.long).share_memory_()
        self.stop = torch.zeros((), dtype=torch.bool).share_memory_()
        self.restarts = 0
        self.starts = [0] * num_actors
        self.failed_starts = [0] * num_actors
        self._last_check = time.monotonic()
        try:
            for k in range(num_actors):
                self._start(k)
        except BaseException:
            self.close()
            raise

    def _start(self, k: int) -> None:
        # every (re)start of actor k gets its own env and sampling seeds, apart from the
        # run's (``seed``: a draw from the run's generator, so a resumed run draws anew)
        stream = k + 1 + self.num_actors * self.starts[k]
        env_seed = (self.seed + STREAM_SEED_STRIDE * stream) % 2**31
        self.starts[k] += 1
        self.slots.filled[self._first_slot(k)] = 0
        if self.server is not None:  # a request of the dead actor is not waited on
            self.server.reset_actor(k)
        proc = self.ctx.Process(
            target=actor_loop, name=f"impala-actor-{k}", daemon=True,
            args=(k, self.factory, env_seed, self.model, self.version, self.slots, self.stop,
                  (env_seed + 1) % 2**31, os.getpid(), self.channel))
        proc.start()
        self.procs[k] = proc

    def _first_slot(self, k: int) -> int:
        return k  # slots are dealt round-robin: actor k's first slot is slot k

    def check_actors(self) -> list[int]:
        """Restart every actor that died; returns their indices. Raises where an actor died
        ``MAX_FAILED_STARTS`` times in a row before filling a slot."""
        self._last_check = time.monotonic()
        dead = [k for k, p in enumerate(self.procs) if not p.is_alive()]
        for k in dead:
            code = self.procs[k].exitcode
            self.procs[k].join()
            produced = int(self.slots.filled[self._first_slot(k)]) > 0
            self.failed_starts[k] = 0 if produced else self.failed_starts[k] + 1
            if self.failed_starts[k] >= MAX_FAILED_STARTS:
                raise RuntimeError(
                    f"IMPALA actor {k} died {MAX_FAILED_STARTS} times in a row before "
                    f"filling a trajectory (last exit code {code}); see its error above")
            log.warning("IMPALA actor %d died (exit code %s); starting it again", k, code)
            # a slot it was filling is FREE: its successor overwrites it from the start
            self.restarts += 1
            self._start(k)
        return dead

    def take(self, count: int, timeout_s: float = 600.0) -> list[int]:
        """Wait for ``count`` full slots (oldest version first) and mark them taken."""
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() - self._last_check > CHECK_S:  # also when the rest keep up
                self.check_actors()
                if self.server is not None and self.server.error is not None:
                    raise RuntimeError("the IMPALA inference server failed") from \
                        self.server.error
            full = torch.nonzero(self.slots.status == FULL).flatten().tolist()
            if len(full) >= count:
                full.sort(key=lambda s: int(self.slots.version[s]))
                chosen = full[:count]
                for s in chosen:
                    self.slots.status[s] = TAKEN
                return chosen
            if time.monotonic() > deadline:
                raise RuntimeError(f"no trajectories from the {self.num_actors} IMPALA actors "
                                   f"for {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def release(self, chosen: list[int]) -> None:
        for s in chosen:
            self.slots.status[s] = FREE

    def publish(self, learner: nn.Module) -> None:
        """Copy the learner's weights into the actors' shared copy (or the inference
        server's), then count the version."""
        if self.server is not None:
            self.server.load(learner)
        else:
            _copy_weights(self.model, learner)
        self.version += 1

    def inference_batch(self) -> float | None:
        """Mean envs per inference call since the last call (None: the actors act)."""
        return None if self.server is None else self.server.stats()

    def close(self) -> None:
        """Stop every actor: ask, wait up to 10 s in all, then terminate and reap."""
        self.stop.fill_(True)
        deadline = time.monotonic() + 10
        for p in self.procs:
            if p is not None:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
                p.join(timeout=5)
        if self.server is not None:
            self.server.close()
