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

The hand-off orders its writes (data, then the status flag) as plain stores into shared
memory, which x86-64 keeps in order; on a weakly ordered CPU (ARM) a fence would be needed.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from agents.distributions import Categorical
from agents.evaluation import EpisodeLog
from rl_scaling.distributed import STREAM_SEED_STRIDE
from rl_scaling.observations import select, to_tensor, write, zeros_like_space

log = logging.getLogger(__name__)

FREE, FULL, TAKEN = 0, 1, 2
POLL_S = 0.0005  # how long a waiting side sleeps between looks at the status flags
CHECK_S = 0.5  # how often the learner looks for dead actors
MAX_FAILED_STARTS = 3  # deaths in a row without a filled slot before the run fails
UNROLL_KEYS = ("obs", "first", "actions", "logprobs", "rewards", "dones")


def fill_unroll(model: nn.Module, envs, carry: dict[str, Any], out: dict[str, torch.Tensor],
                generator: torch.Generator, episodes: EpisodeLog) -> None:
    """Act ``T = out["actions"].shape[0]`` steps of ``envs`` with a recurrent ``model``,
    writing the unroll into ``out`` (``obs``/``first``: T + 1 rows, the last one to bootstrap
    from; ``actions``, ``logprobs``, ``rewards``, ``dones``: T rows) and the episodes that end
    into ``episodes``. ``carry`` (``obs``, ``first``, ``state`` on the acting device) goes on
    from where the last unroll stopped and is updated in place. Observations may be one
    tensor or a dict of them (NetHack). The one unroll loop of both IMPALA modes (the
    synchronous collector and every actor process)."""
    dist, device = Categorical(), carry["first"].device
    steps = out["actions"].shape[0]
    model.eval()
    for t in range(steps):
        write(out["obs"], t, carry["obs"])
        out["first"][t] = carry["first"]
        with torch.no_grad():
            logits, _, carry["state"] = model(select(carry["obs"], None), carry["first"][None],
                                              carry["state"])
            action, logprob = dist.sample(logits[0], generator)
        out["actions"][t], out["logprobs"][t] = action, logprob
        next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        done = torch.from_numpy(np.logical_or(terminated, truncated)).to(device)
        out["rewards"][t] = torch.from_numpy(reward)
        out["dones"][t] = done
        carry["obs"], carry["first"] = to_tensor(next_obs, device), done
        episodes.add(info)
    write(out["obs"], steps, carry["obs"])
    out["first"][steps] = carry["first"]


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
            return torch.zeros((num_slots, *shape), dtype=dtype).share_memory_()

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


def actor_loop(index: int, factory: Any, env_seed: int, model: nn.Module,
               version: torch.Tensor, slots: TrajectorySlots, stop: torch.Tensor,
               sample_seed: int) -> None:
    """One actor process: fill the slots it owns, forever, until ``stop`` is set."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the learner decides when actors stop
    torch.set_num_threads(1)
    n = slots.shapes.envs
    envs = factory(num_envs=n, seed=env_seed)
    generator = torch.Generator().manual_seed(sample_seed)
    carry = {"obs": to_tensor(envs.reset(seed=env_seed)),
             "first": torch.ones(n, dtype=torch.bool), "state": model.initial_state(n)}
    mine = [s for s in range(len(slots)) if int(slots.owner[s]) == index]
    episodes = EpisodeLog()
    try:
        while not bool(stop):
            ready = [s for s in mine if int(slots.status[s]) == FREE]
            if not ready:
                time.sleep(POLL_S)
                continue
            s = ready[0]
            slots.h0[s].copy_(carry["state"][0])  # the state the learner starts from
            slots.c0[s].copy_(carry["state"][1])
            slots.version[s] = int(version)
            episodes.clear()
            fill_unroll(model, envs, carry, slots.unroll(s), generator, episodes)
            slots.write_episodes(s, episodes)
            slots.filled[mine[0]] += 1
            slots.status[s] = FULL  # last: the learner reads the data only after this
    finally:
        envs.close()


class ActorPool:
    """``num_actors`` actor processes filling ``slots_per_actor`` slots each; the learner's
    side of the hand-off (``take`` a batch, ``release`` it, ``publish`` its weights)."""

    def __init__(self, num_actors: int, slots_per_actor: int, shapes: SlotShapes,
                 factory: Any, model: nn.Module, seed: int) -> None:
        self.ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads
        self.num_actors, self.factory, self.seed = num_actors, factory, int(seed)
        self.slots = TrajectorySlots(num_actors * slots_per_actor, shapes)
        for s in range(len(self.slots)):
            self.slots.owner[s] = s % num_actors
            self.slots.status[s] = FREE
        self.model = model  # the actors' CPU copy, in shared memory
        for p in [*model.parameters(), *model.buffers()]:
            p.requires_grad_(False)
        model.share_memory()
        self.version = torch.zeros((), dtype=torch.long).share_memory_()
        self.stop = torch.zeros((), dtype=torch.bool).share_memory_()
        self.restarts = 0
        self.starts = [0] * num_actors
        self.failed_starts = [0] * num_actors
        self.procs: list[Any] = [None] * num_actors
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
        proc = self.ctx.Process(
            target=actor_loop, name=f"impala-actor-{k}", daemon=True,
            args=(k, self.factory, env_seed, self.model, self.version, self.slots, self.stop,
                  (env_seed + 1) % 2**31))
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
        """Copy the learner's weights into the actors' shared copy, then count the version."""
        with torch.no_grad():
            for dst, src in zip(self.model.state_dict().values(),
                                learner.state_dict().values(), strict=True):
                dst.copy_(src)
        self.version += 1

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
