"""Data-parallel training over several processes (``torch.distributed``).

A run becomes data-parallel when it is started as several ranks: by ``torchrun
--nproc_per_node K -m rl_scaling.sweep ...`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``), or as one Slurm step of K tasks (``srun``, or
``hydra/launcher=slurm`` with ``tasks_per_node=K``: ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``).
Every rank runs the same ``run()``; the spine then

- gives each rank ``env.num_envs / K`` training envs seeded apart and its own random
  streams (weights start identical: every rank builds them from the run's seed, and rank 0's
  are broadcast to make sure),
- sums ``env_steps``, ``samples`` and FLOPs over ranks at every ``end_iteration`` (``updates``
  are gradient steps, the same on every rank, and are not summed),
- takes every decision (log, evaluate, checkpoint, stop, preempted on any rank) on rank 0 and
  broadcasts it, so ranks never wait on each other at different points,
- writes one run record and one checkpoint from rank 0 (with every rank's own random streams
  and per-rank state inside), which every rank resumes from.

An algorithm that supports it (it registers ``distributed=True``) averages gradients with
:meth:`Distributed.average_gradients` after each backward, and computes batch statistics
such as advantage normalisation over the global minibatch with :meth:`Distributed.moments`.
Backends: NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from rl_scaling.registry import ConfigError


@dataclass
class Distributed:
    """This process's place among the ranks of one run (``world_size=1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "none"  # torchrun | slurm | none

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (each a no-op with one rank) ------------------------------------------
    def sum(self, values: Iterable[float]) -> list[float]:
        """Every rank's ``values`` summed elementwise (float64, one collective)."""
        values = [float(v) for v in values]
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(t)
        return t.tolist()

    def max(self, values: Iterable[float]) -> list[float]:
        values = [float(v) for v in values]
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """``[rank 0's obj, rank 1's, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's ``module``."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            tdist.broadcast(tensor.data, src=0)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every gradient by its mean over ranks: one all-reduce of one flat buffer.
        Ranks hold equal slices of the minibatch, so the mean is the gradient of the
        combined minibatch's mean loss."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) standard deviation of ``x`` over every rank's ``x``, as
        ``x.mean(), x.std()`` of the concatenation would give (detached)."""
        if not self.enabled:
            return x.mean(), x.std()
        x = x.detach()
        stats = torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()]).double()
        tdist.all_reduce(stats)
        n, s, ss = stats[0], stats[1], stats[2]
        mean = s / n
        var = (ss - n * mean * mean) / (n - 1)
        return mean.to(x.dtype), var.clamp_min(0).sqrt().to(x.dtype)


SINGLE = Distributed()


def _slurm_master() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # "node[01-04],other" -> node01 without scontrol
    match = re.match(r"([^\[,]+)(?:\[(\d+))?", nodes)
    return (match.group(1) + (match.group(2) or "")) if match else "127.0.0.1"


def from_environment(environ: dict[str, str] | None = None) -> Distributed:
    """The ranks this process belongs to: torchrun's variables, else a Slurm step of several
    tasks (``srun``; it sets ``MASTER_ADDR``/``MASTER_PORT`` from the step when they are
    unset: the first node, port 20000 + job id mod 20000), else a single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Distributed(int(env["RANK"]), int(env["WORLD_SIZE"]),
                           int(env.get("LOCAL_RANK", 0)), "torchrun")
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if tasks > 1 and "SLURM_PROCID" in env:
        if environ is None:  # set up the rendezvous the way torchrun would have
            os.environ.setdefault("MASTER_ADDR", _slurm_master())
            job = int(env.get("SLURM_JOB_ID", "0") or 0)
            os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))
        return Distributed(int(env["SLURM_PROCID"]), tasks,
                           int(env.get("SLURM_LOCALID", 0)), "slurm")
    return Distributed()


STREAM_SEED_STRIDE = 1_000_003  # seed offset between a run's independent streams (ranks,
# actor processes, env groups): seed + k * stride, modulo 2**31


def device_for(dist: Distributed, device: torch.device) -> torch.device:
    """A rank's device: on CUDA, GPU ``LOCAL_RANK`` of those this process sees (modulo
    their number: a task bound to its own GPU sees one), else ``device``."""
    if not dist.enabled or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"device={device} with {dist.world_size} data-parallel ranks would "
                          "put every rank on one GPU; use device=cuda (rank k takes GPU k)")
    return torch.device("cuda", dist.local_rank % max(1, torch.cuda.device_count()))


def init(dist: Distributed, device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); False where it was joined already
    or the run is not distributed."""
    if not dist.enabled or tdist.is_initialized():
        return False
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"distributed run (rank {dist.rank} of {dist.world_size}) "
                              f"without {key}: start it with torchrun or srun")
    # NCCL for the CUDA tensors (gradients, advantage moments), gloo for the small CPU
    # collectives of the bookkeeping (counters, decisions, checkpoint state)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend, rank=dist.rank, world_size=dist.world_size,
                             timeout=dt.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
