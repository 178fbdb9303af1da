"""Speed switches (``speed.*``): mixed precision, a compiled learner, CUDA graphs for acting,
overlapped env stepping. None changes what an algorithm computes, only how fast (bf16 and
compiled kernels round differently: learning is the same within noise, tested in
tests/test_speed.py); so they are resumable keys and not part of a run's directory name.

An algorithm reads them through ``ctx.speed`` (a :class:`Speed`, resolved for the run's
device)::

    with ctx.speed.autocast():              # bf16 autocast where speed.precision says so
        logits, value = learner(obs)        # learner = ctx.speed.compiled(model) or model
    act_model = ctx.speed.acting(model)     # CUDA-graph-captured acting forward on GPU

``auto`` means: on where it paid when measured (bench/ppo_procgen.py), off elsewhere. On the
2-core CPU, ``torch.compile`` made the width-1 update slower (826 vs 863 samples/s, 40 s to
compile), so ``compile=auto`` is on for CUDA only; bf16 autocast made it 1.6x faster on
that CPU (it has AVX512-BF16), but a CPU without bf16 units runs it slower, so
``precision=auto`` is bf16 on CUDA devices that support it and fp32 on CPU (set
``speed.precision=bf16`` on a CPU with AVX512-BF16 or AMX).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rl_scaling.registry import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class SpeedConfig:
    """``speed.*``: how fast, never what is learned."""

    # fp32 | bf16 (autocast of forwards and backwards; weights, optimizer state, losses
    # and buffers stay fp32) | auto: bf16 on a CUDA device with bf16 support, else fp32
    precision: str = "auto"
    # torch.compile the learner's forward+backward: true | false | auto (CUDA only)
    compile: Any = "auto"
    # capture the fixed-size acting forward in CUDA graphs (torch.compile's
    # reduce-overhead mode): true | false | auto (CUDA only; ignored on CPU)
    cuda_graphs: Any = "auto"
    # step one half of the training envs while the policy acts on the other half
    # (agents/ppo.collect_rollout): true | false. Same data semantics, another random
    # stream (two env groups seeded apart); docs/speed.md
    overlap_envs: bool = False

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"speed.precision={self.precision!r} must be one of "
                              f"{list(PRECISIONS)}")
        for key in ("compile", "cuda_graphs"):
            value = getattr(self, key)
            if value not in (True, False, "auto"):
                raise ConfigError(f"speed.{key}={value!r} must be true, false or auto")
        if not isinstance(self.overlap_envs, bool):
            raise ConfigError(f"speed.overlap_envs={self.overlap_envs!r} must be true or false")


def _on(value: Any, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


class Speed:
    """:class:`SpeedConfig` resolved for one device: plain booleans and a dtype."""

    def __init__(self, cfg: SpeedConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        cfg = cfg or SpeedConfig(precision="fp32", compile=False, cuda_graphs=False)
        cfg.validate()
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        self.compile = _on(cfg.compile, self.device)
        self.cuda_graphs = cuda and _on(cfg.cuda_graphs, self.device)
        self.overlap_envs = bool(cfg.overlap_envs)
        self._acting: dict[int, nn.Module] = {}

    def __repr__(self) -> str:
        return (f"Speed(precision={self.precision}, compile={self.compile}, "
                f"cuda_graphs={self.cuda_graphs}, overlap_envs={self.overlap_envs})")

    def as_dict(self) -> dict[str, Any]:
        """What the run record keeps (``run.json`` ``speed``)."""
        return {"precision": self.precision, "compile": self.compile,
                "cuda_graphs": self.cuda_graphs, "overlap_envs": self.overlap_envs}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the run's device where ``precision`` is bf16, else nothing."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def compiled(self, fn: Any) -> Any:
        """``torch.compile(fn)`` where ``compile`` is on (the learner's loss function or
        module: its forward and, through AOTAutograd, its backward), else ``fn``."""
        return torch.compile(fn, dynamic=False) if self.compile else fn

    def acting(self, model: nn.Module) -> nn.Module:
        """The module to run the fixed-size acting forward with: ``model`` itself, or on
        CUDA with ``cuda_graphs`` a reduce-overhead compiled view of it (the same
        parameters, replayed as CUDA graphs; one per input shape). Cached per model."""
        if not self.cuda_graphs:
            return model
        key = id(model)
        if key not in self._acting:
            self._acting[key] = torch.compile(model, mode="reduce-overhead", dynamic=False)
        return self._acting[key]
