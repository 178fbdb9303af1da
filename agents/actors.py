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
index with a new env seed; the slots it owned are refilled by its successor. Actors step their
envs and act with one thread each; the order in which their trajectories arrive depends on the
OS scheduler, so a run with actors is not reproducible draw for draw (the synchronous mode,
``num_actors=0``, is).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from agents.distributions import Categorical

log = logging.getLogger(__name__)

FREE, FULL, TAKEN = 0, 1, 2
POLL_S = 0.0005  # how long a waiting side sleeps between looks at the status flags


@dataclass
class SlotShapes:
    unroll_length: int
    envs: int  # envs per actor: the trajectories in one slot
    obs_shape: tuple[int, ...]
    obs_dtype: torch.dtype
    state_shape: tuple[int, ...]  # one core state tensor: (layers, envs, hidden)


class TrajectorySlots:
    """``num_slots`` unrolls in shared memory, each ``unroll_length`` steps of one actor's
    ``envs`` envs (the observation after the last step included, to bootstrap)."""

    def __init__(self, num_slots: int, shapes: SlotShapes) -> None:
        t, n = shapes.unroll_length, shapes.envs
        self.shapes = shapes

        def shared(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((num_slots, *shape), dtype=dtype).share_memory_()

        self.obs = shared((t + 1, n, *shapes.obs_shape), shapes.obs_dtype)
        self.first = shared((t + 1, n), torch.bool)
        self.actions = shared((t, n), torch.long)
        self.logprobs = shared((t, n))
        self.rewards = shared((t, n))
        self.dones = shared((t, n), torch.bool)
        self.h0 = shared(shapes.state_shape)
        self.c0 = shared(shapes.state_shape)
        self.version = shared((), torch.long)
        self.episode_returns = shared((t * n,), torch.float64)  # episodes that ended
        self.episode_lengths = shared((t * n,), torch.long)
        self.episodes = shared((), torch.long)
        self.status = shared((), torch.int8)
        self.owner = shared((), torch.long)

    def __len__(self) -> int:
        return int(self.status.shape[0])


def actor_loop(index: int, factory: Any, env_seed: int, model: nn.Module,
               version: torch.Tensor, slots: TrajectorySlots, stop: torch.Tensor,
               sample_seed: int) -> None:
    """One actor process: fill the slots it owns, forever, until ``stop`` is set."""
    torch.set_num_threads(1)
    shapes = slots.shapes
    t_len, n = shapes.unroll_length, shapes.envs
    envs = factory(num_envs=n, seed=env_seed)
    dist = Categorical()
    generator = torch.Generator().manual_seed(sample_seed)
    obs = torch.from_numpy(envs.reset(seed=env_seed))
    first = torch.ones(n, dtype=torch.bool)
    state = model.initial_state(n)
    mine = [s for s in range(len(slots)) if int(slots.owner[s]) == index]
    try:
        while not bool(stop):
            ready = [s for s in mine if int(slots.status[s]) == FREE]
            if not ready:
                time.sleep(POLL_S)
                continue
            s = ready[0]
            slots.h0[s].copy_(state[0])
            slots.c0[s].copy_(state[1])
            slots.version[s] = int(version)
            returns: list[np.ndarray] = []
            lengths: list[np.ndarray] = []
            for t in range(t_len):
                slots.obs[s, t].copy_(obs)
                slots.first[s, t].copy_(first)
                with torch.no_grad():
                    logits, _, state = model(obs[None], first[None], state)
                    action, logprob = dist.sample(logits[0], generator)
                next_obs, reward, terminated, truncated, info = envs.step(action.numpy())
                done = torch.from_numpy(np.logical_or(terminated, truncated))
                slots.actions[s, t].copy_(action)
                slots.logprobs[s, t].copy_(logprob)
                slots.rewards[s, t].copy_(torch.from_numpy(reward))
                slots.dones[s, t].copy_(done)
                obs, first = torch.from_numpy(next_obs), done
                returns.append(info["episode_return"])
                lengths.append(info["episode_length"])
            slots.obs[s, t_len].copy_(obs)
            slots.first[s, t_len].copy_(first)
            ended = np.concatenate(returns)
            slots.episodes[s] = len(ended)
            slots.episode_returns[s, :len(ended)] = torch.from_numpy(ended)
            slots.episode_lengths[s, :len(ended)] = torch.from_numpy(np.concatenate(lengths))
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
        self.procs: list[Any] = [None] * num_actors
        for k in range(num_actors):
            self._start(k)

    def _start(self, k: int) -> None:
        # every (re)start of actor k gets its own env and sampling seeds
        worker = self.factory.worker(k + self.num_actors * self.starts[k])
        self.starts[k] += 1
        proc = self.ctx.Process(
            target=actor_loop, name=f"impala-actor-{k}", daemon=True,
            args=(k, worker, worker.seed, self.model, self.version, self.slots, self.stop,
                  worker.seed + 1))
        proc.start()
        self.procs[k] = proc

    def check_actors(self) -> list[int]:
        """Restart every actor that died; returns their indices."""
        dead = [k for k, p in enumerate(self.procs) if not p.is_alive()]
        for k in dead:
            log.warning("IMPALA actor %d died (exit code %s); starting it again", k,
                        self.procs[k].exitcode)
            # a slot it was filling is FREE: its successor overwrites it from the start
            self.restarts += 1
            self._start(k)
        return dead

    def take(self, count: int, timeout_s: float = 600.0) -> list[int]:
        """Wait for ``count`` full slots (oldest version first) and mark them taken."""
        deadline = time.monotonic() + timeout_s
        last_check = 0.0
        while True:
            full = torch.nonzero(self.slots.status == FULL).flatten().tolist()
            if len(full) >= count:
                full.sort(key=lambda s: int(self.slots.version[s]))
                chosen = full[:count]
                for s in chosen:
                    self.slots.status[s] = TAKEN
                return chosen
            now = time.monotonic()
            if now - last_check > 0.5:
                self.check_actors()
                last_check = now
            if now > deadline:
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
        self.stop.fill_(True)
        for p in self.procs:
            if p is not None:
                p.join(timeout=10)
                if p.is_alive():
                    p.terminate()
