"""Scalable actor-critic model families.

Every model maps a batch of raw observations to ``(params, value)``::

    params, value = model(obs)   # (B, P), (B,)

``params`` are the policy distribution's (``agents/distributions.py``): logits (B, n) for a
``Discrete(n)`` action space; for a ``Box`` of d dims (``mlp`` only), ``[mean, log_std]``
(B, 2d) from a :class:`GaussianHead` (a mean layer and a learned state-independent log std).
Each model names the parts being scaled with ``model.scaled_modules()``. Parameters and
FLOPs inside those parts are "effective" (what the scaling studies count); the final
policy and value heads are not, because their size is set by the task (number of actions),
not by the width/depth knobs. See docs/models_and_flops.md.

Families (built through :func:`build_model`):

- ``impala_cnn``: the IMPALA CNN of the Procgen PPO recipe (Espeholt et al. 2018;
  CleanRL ``ppo_procgen.py``), used by Hilton et al. 2023 for width/depth scaling.
- ``mnist_cnn``: the small CNN of Hilton et al. 2023's MNIST bandit, with separate
  policy and value networks.
- ``mlp``: separate tanh policy and value MLPs for vector observations; discrete or
  continuous (``Box``) actions.
- ``atari_cnn``: the Atari CNN of Mnih et al. 2015 (``env=atari``), width-scaled as in
  Tuyls et al. 2024; its ``hidden`` dense layer is a knob (``AtariModelConfig``).

Image observations arrive raw from the env as ``(B, H, W, C)`` pixels in 0..255
(uint8 preferred: 4x less rollout memory); the model converts to float, divides by
255 and moves channels first itself. Vector observations arrive as ``(B, d)`` floats.

Nothing here knows about Hydra: builders take plain arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import torch
from omegaconf import MISSING
from torch import Tensor, nn

from rl_scaling.context import count_params
from rl_scaling.observations import leaves, map_obs
from rl_scaling.registry import register_model

__all__ = [
    "AtariCNN",
    "GaussianHead",
    "ImpalaCNN",
    "MLPActorCritic",
    "MnistCNN",
    "ModelConfig",
    "build_actor_critic",
    "build_model",
    "count_params",
    "known_families",
    "lstm_with_resets",
    "scaled_channels",
]


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def scaled_channels(base: int, width: float) -> int:
    """Channels (or units) of a layer whose width-1 size is ``base``.

    ``max(1, round(base * width))``: fractional widths are allowed (Hilton et al. go
    down to 1/64) and a layer never collapses to zero channels.
    """
    return max(1, round(base * width))


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights and constant bias, as in the PPO recipes (CleanRL)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def _pixels_to_nchw(obs: Tensor) -> Tensor:
    """(B, H, W, C) raw pixels in 0..255 (any dtype) -> (B, C, H, W) float32 in [0, 1].

    The permute is a free view and the elementwise scale keeps its channels-last
    strides, which the CPU conv kernels take directly: one pass over the batch, no copy
    to NCHW. Out of place, so a float rollout buffer is never modified.
    """
    x = obs.permute(0, 3, 1, 2)
    if x.is_floating_point():
        return x.float() / 255.0
    return x * (1.0 / 255.0)  # integer pixels promote straight to float32


def _check_image_shape(family: str, obs_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(obs_shape) != 3:
        raise ValueError(
            f"model family '{family}' needs image observations of shape (H, W, C), "
            f"got obs_shape={tuple(obs_shape)}; use family 'mlp' for vector observations"
        )
    h, w, c = (int(s) for s in obs_shape)
    if c > min(h, w):
        # Raw images have far fewer channels than pixels per side; more channels than
        # rows/cols almost always means a channels-first (C, H, W) observation.
        raise ValueError(
            f"model family '{family}' expects channels-last (H, W, C) observations, "
            f"got obs_shape={tuple(obs_shape)} which looks channels-first"
        )
    return h, w, c


# ---------------------------------------------------------------------------
# impala_cnn
# ---------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the skip connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # The first relu must not be in place (``x`` is the skip input); the others act on
        # fresh conv outputs that autograd does not keep, so in place saves allocations.
        out = torch.relu_(self.conv0(torch.relu(x)))
        return self.conv1(out).add_(x)


class ConvSequence(nn.Module):
    """conv3x3 -> max-pool 3x3/2 -> ``depth`` residual blocks (one IMPALA stack)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res_blocks = nn.Sequential(*(ResidualBlock(out_channels) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_blocks(self.pool(self.conv(x)))

    @staticmethod
    def output_hw(h: int, w: int) -> tuple[int, int]:
        # max-pool k=3, s=2, p=1: out = floor((n + 2 - 3) / 2) + 1 = ceil(n / 2)
        return (h + 1) // 2, (w + 1) // 2


class ImpalaCNN(nn.Module):
    """IMPALA CNN actor-critic (Procgen PPO recipe) with width and depth knobs.

    Three stacks with ``16, 32, 32`` x width channels, each conv -> max-pool ->
    ``depth`` residual blocks; then relu, flatten, dense to ``256`` x width, relu;
    a shared trunk feeds a policy head and a value head (``separate_value=True``: the value
    head gets a trunk of its own, PPG's "dual" architecture).
    Width 1, depth 2 on 64x64x3 with 15 actions: 626,256 parameters, 61.2 MFLOP.
    """

    base_channels = (16, 32, 32)
    base_hidden = 256

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        width: float = 1.0,
        depth: int = 2,
        separate_value: bool = False,
    ):
        super().__init__()
        h0, w0, c = _check_image_shape("impala_cnn", obs_shape)
        self.obs_shape, self.num_actions = (h0, w0, c), num_actions
        self.width, self.depth = width, depth
        hidden = self.hidden_size = scaled_channels(self.base_hidden, width)

        def trunk() -> nn.Sequential:
            stacks: list[nn.Module] = []
            in_channels, h, w = c, h0, w0
            for base in self.base_channels:
                out_channels = scaled_channels(base, width)
                stacks.append(ConvSequence(in_channels, out_channels, depth))
                in_channels = out_channels
                h, w = ConvSequence.output_hw(h, w)
            return nn.Sequential(
                *stacks,
                nn.ReLU(inplace=True),  # acts on a fresh residual-block output
                nn.Flatten(),
                nn.Linear(in_channels * h * w, hidden),
                nn.ReLU(inplace=True),
            )

        self.trunk = trunk()
        self.value_trunk = trunk() if separate_value else None
        self.policy_head = layer_init(nn.Linear(hidden, num_actions), std=0.01)
        self.value_head = layer_init(nn.Linear(hidden, 1), std=1.0)

    def features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(policy features, value features)``: the inputs of the two heads (the same
        tensor when the trunk is shared)."""
        x = _pixels_to_nchw(obs)
        hidden = self.trunk(x)
        return hidden, hidden if self.value_trunk is None else self.value_trunk(x)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h_pi, h_v = self.features(obs)
        return self.policy_head(h_pi), self.value_head(h_v).squeeze(-1)

    def scaled_modules(self) -> list[nn.Module]:
        return [self.trunk] + ([self.value_trunk] if self.value_trunk is not None else [])


# ---------------------------------------------------------------------------
# atari_cnn
# ---------------------------------------------------------------------------


class AtariCNN(nn.Module):
    """The Atari CNN (Mnih et al. 2015), width-scaled as in Tuyls et al. 2024's Atari study.

    conv 8x8 stride 4 (32 x width channels) -> conv 4x4/2 (64 x width) -> conv 3x3/1
    (64 x width), ReLUs, flatten; then a dense layer of ``hidden`` x width units (512: the
    Nature DQN/PPO network) or, with ``hidden=0``, the heads straight on the conv features (the
    study's BC network: conv stack and a linear head). ``value_head=False`` builds a policy
    only (behavioural cloning); then every layer, the policy head included, scales with width
    and counts as effective (``scaled_modules``), while the actor-critic keeps the family
    convention that heads are not effective. ``forward`` returns ``(logits, value)``, or the
    logits alone without a value head.
    Width 1 on 84x84x4, hidden 512, 18 actions: 1,693,875 parameters (actor-critic).
    """

    base_channels = (32, 64, 64)
    kernels = ((8, 4), (4, 2), (3, 1))  # (kernel, stride)

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, width: float = 1.0,
                 hidden: int = 512, value_head: bool = True) -> None:
        super().__init__()
        h, w, c = _check_image_shape("atari_cnn", obs_shape)
        self.obs_shape, self.num_actions, self.width = (h, w, c), num_actions, width
        layers: list[nn.Module] = []
        in_channels = c
        for base, (kernel, stride) in zip(self.base_channels, self.kernels, strict=True):
            out_channels = scaled_channels(base, width)
            layers += [layer_init(nn.Conv2d(in_channels, out_channels, kernel, stride)),
                       nn.ReLU(inplace=True)]
            in_channels = out_channels
            h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
            if h < 1 or w < 1:
                raise ValueError(f"model family 'atari_cnn' needs images of at least 36x36, "
                                 f"got obs_shape={tuple(obs_shape)}")
        layers.append(nn.Flatten())
        features = in_channels * h * w
        if hidden:
            self.hidden_size = scaled_channels(hidden, width)
            layers += [layer_init(nn.Linear(features, self.hidden_size)), nn.ReLU(inplace=True)]
        else:
            self.hidden_size = features
        self.trunk = nn.Sequential(*layers)
        self.policy_head = layer_init(nn.Linear(self.hidden_size, num_actions), std=0.01)
        self.value_head = layer_init(nn.Linear(self.hidden_size, 1), std=1.0) \
            if value_head else None

    def features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(policy features, value features)``: one shared trunk."""
        hidden = self.trunk(_pixels_to_nchw(obs))
        return hidden, hidden

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        hidden = self.trunk(_pixels_to_nchw(obs))
        if self.value_head is None:
            return self.policy_head(hidden)
        return self.policy_head(hidden), self.value_head(hidden).squeeze(-1)

    def scaled_modules(self) -> list[nn.Module]:
        return [self.trunk] if self.value_head is not None else [self.trunk, self.policy_head]


# ---------------------------------------------------------------------------
# mnist_cnn
# ---------------------------------------------------------------------------


class MnistCNN(nn.Module):
    """Hilton et al. 2023's MNIST-bandit CNN: separate policy and value networks.

    Each network: conv5x5 (16 x width, no padding) -> relu -> max-pool 2x2 ->
    conv3x3 (32 x width) -> relu -> max-pool 2x2 -> flatten -> dense (1000 x width)
    -> relu -> head (num_actions logits, or 1 value). Input (H, W) or (H, W, 1) pixels.
    ``separate_value=False`` shares one trunk between the heads.
    """

    base_channels = (16, 32)
    base_hidden = 1000

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, width: float = 1.0,
                 separate_value: bool = True):
        super().__init__()
        if len(obs_shape) == 2:  # accept (28, 28) as well as (28, 28, 1)
            obs_shape = (*obs_shape, 1)
        h, w, c = _check_image_shape("mnist_cnn", obs_shape)
        self.obs_shape, self.num_actions, self.width = (h, w, c), num_actions, width
        self.depth = 1

        # conv5x5 (no padding) -> pool 2 -> conv3x3 (no padding) -> pool 2
        out_h, out_w = ((h - 4) // 2 - 2) // 2, ((w - 4) // 2 - 2) // 2
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"mnist_cnn needs images of at least 14x14, got obs_shape={tuple(obs_shape)}"
            )
        c1, c2 = (scaled_channels(b, width) for b in self.base_channels)
        hidden = self.hidden_size = scaled_channels(self.base_hidden, width)

        def trunk() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c, c1, kernel_size=5),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, kernel_size=3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(c2 * out_h * out_w, hidden),
                nn.ReLU(),
            )

        self.policy_trunk = trunk()
        self.value_trunk = trunk() if separate_value else None
        self.policy_head = layer_init(nn.Linear(hidden, num_actions), std=0.01)
        self.value_head = layer_init(nn.Linear(hidden, 1), std=1.0)

    def features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(policy features, value features)``: the inputs of the two heads."""
        if obs.ndim == 3:
            obs = obs.unsqueeze(-1)
        x = _pixels_to_nchw(obs)
        h_pi = self.policy_trunk(x)
        return h_pi, h_pi if self.value_trunk is None else self.value_trunk(x)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h_pi, h_v = self.features(obs)
        return self.policy_head(h_pi), self.value_head(h_v).squeeze(-1)

    def scaled_modules(self) -> list[nn.Module]:
        return [m for m in (self.policy_trunk, self.value_trunk) if m is not None]


# ---------------------------------------------------------------------------
# mlp
# ---------------------------------------------------------------------------


class GaussianHead(nn.Module):
    """A diagonal Gaussian policy head: ``(B, hidden) -> (B, 2d) = [mean, log_std]``.

    The mean is a linear layer with a small init (std 0.01, as the logit heads: the policy
    starts near mean 0); the log std is a learned state-independent parameter, init 0 (std
    1), broadcast to the batch. A head, not part of the scaled trunk.
    """

    matmul_free = True  # its own parameter (log_std) does no matmul; the mean layer is counted

    def __init__(self, hidden: int, action_dim: int) -> None:
        super().__init__()
        self.mean = layer_init(nn.Linear(hidden, action_dim), std=0.01)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, h: Tensor) -> Tensor:
        mean = self.mean(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


class MLPActorCritic(nn.Module):
    """Separate tanh policy and value MLPs: ``depth`` hidden layers of 64 x width units
    (``separate_value=False``: one MLP feeds both heads). ``continuous=True``: the policy
    head is a :class:`GaussianHead` over ``num_actions`` action dimensions."""

    base_hidden = 64

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        width: float = 1.0,
        depth: int = 2,
        separate_value: bool = True,
        continuous: bool = False,
    ):
        super().__init__()
        if len(obs_shape) != 1:
            raise ValueError(
                f"model family 'mlp' needs vector observations of shape (d,), got "
                f"obs_shape={tuple(obs_shape)}; flatten them in the env or use a CNN family"
            )
        self.obs_shape, self.num_actions = (int(obs_shape[0]),), num_actions
        self.width, self.depth = width, depth
        hidden = self.hidden_size = scaled_channels(self.base_hidden, width)

        def trunk() -> nn.Sequential:
            layers: list[nn.Module] = []
            in_features = int(obs_shape[0])
            for _ in range(depth):
                layers += [layer_init(nn.Linear(in_features, hidden)), nn.Tanh()]
                in_features = hidden
            return nn.Sequential(*layers)

        self.policy_trunk = trunk()
        self.value_trunk = trunk() if separate_value else None
        self.continuous = continuous
        self.policy_head = (GaussianHead(hidden, num_actions) if continuous
                            else layer_init(nn.Linear(hidden, num_actions), std=0.01))
        self.value_head = layer_init(nn.Linear(hidden, 1), std=1.0)

    def features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(policy features, value features)``: the inputs of the two heads."""
        x = obs.float()  # no copy when already float32
        h_pi = self.policy_trunk(x)
        return h_pi, h_pi if self.value_trunk is None else self.value_trunk(x)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h_pi, h_v = self.features(obs)
        return self.policy_head(h_pi), self.value_head(h_v).squeeze(-1)

    def scaled_modules(self) -> list[nn.Module]:
        return [m for m in (self.policy_trunk, self.value_trunk) if m is not None]


class FlatTorso(nn.Module):
    """(N, ...) -> (N, features): vector observations as they are."""

    def forward(self, obs: Tensor) -> Tensor:
        return obs.reshape(obs.shape[0], -1)


def lstm_with_resets(core: nn.LSTM, x: Tensor, first: Tensor, state: tuple[Tensor, Tensor]
                     ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run ``core`` over ``x`` (T, B, F) from ``state``, zeroing a row's state before each step
    where ``first`` (T, B) marks the start of an episode; ``(out (T, B, H), state)``."""
    h, c = state
    steps, batch = x.shape[:2]
    # no episode starts inside: the sequence in one call (one step, as when acting, needs no
    # look at first[1:], which would cost a device sync per step)
    if steps == 1 or not bool(first[1:].any()):
        keep = (~first[0]).to(x.dtype).view(1, batch, 1)
        return core(x, (h * keep, c * keep))
    outs = []
    for t in range(steps):  # reset the state where an episode starts, step by step
        keep = (~first[t]).to(x.dtype).view(1, batch, 1)
        o, (h, c) = core(x[t:t + 1], (h * keep, c * keep))
        outs.append(o)
    return torch.cat(outs), (h, c)


class LSTMActorCritic(nn.Module):
    """A recurrent actor-critic over sequences: torso -> pre-core MLP -> LSTM core -> policy
    and value heads (the IMPALA agent's shape; the core's hidden size is the scaled width, 256
    at width 1, and ``depth`` stacks LSTM layers).

    ``forward(obs (T, B, *obs_shape), first (T, B) bool, state) -> (logits (T, B, A), value
    (T, B), state)``: ``first[t]`` marks an observation that starts a new episode, where the
    core's state is reset to zeros before the step, so one unroll may span episode ends.
    ``state``: ``(h, c)``, each (depth, B, hidden), from :meth:`initial_state` or the
    previous call; None (and ``first=None``) starts from zeros (e.g. to count FLOPs).

    The torso maps one step's observation (a (N, ...) batch, or a dict of them) to
    ``torso_size`` features: here a flatten of vector observations; a subclass gives its own
    (the NetHack encoder, ``agents/nethack_net.py``). The torso is not scaled with the width;
    the pre-core MLP, the core and the heads are (``scaled_modules``).
    """

    recurrent = True

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, width: float = 1.0,
                 depth: int = 1, torso: nn.Module | None = None,
                 torso_size: int | None = None) -> None:
        super().__init__()
        self.hidden_size = scaled_channels(256, width)
        self.num_layers = depth
        self.torso = torso if torso is not None else FlatTorso()
        in_size = torso_size if torso is not None else math.prod(obs_shape)
        self.pre_core = nn.Sequential(layer_init(nn.Linear(in_size, self.hidden_size)),
                                      nn.ReLU())
        self.core = nn.LSTM(self.hidden_size, self.hidden_size, num_layers=depth)
        self.policy_head = layer_init(nn.Linear(self.hidden_size, num_actions), std=0.01)
        self.value_head = layer_init(nn.Linear(self.hidden_size, 1), std=1.0)

    def initial_state(self, batch: int, device: torch.device | str | None = None
                      ) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(self.num_layers, batch, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, obs: Tensor | dict[str, Tensor], first: Tensor | None = None,
                state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        one = leaves(obs)[0]
        steps, batch, device = one.shape[0], one.shape[1], one.device
        # (T, B, ...) -> (T * B, ...) for the torso, one step's observations at a time
        flat_obs = map_obs(lambda a: a.reshape(steps * batch, *a.shape[2:]), obs)
        x = self.pre_core(self.torso(flat_obs).float()).view(steps, batch, -1)
        state = state if state is not None else self.initial_state(batch, device)
        if first is None:
            first = torch.zeros(steps, batch, dtype=torch.bool, device=device)
        out, (h, c) = lstm_with_resets(self.core, x, first, state)
        flat = out.reshape(steps * batch, -1)
        return (self.policy_head(flat).view(steps, batch, -1),
                self.value_head(flat).view(steps, batch), (h, c))

    def scaled_modules(self) -> list[nn.Module]:
        return [self.pre_core, self.core, self.policy_head, self.value_head]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The scaling knobs of the built-in families (``model.*``)."""

    family: str = MISSING  # impala_cnn | mnist_cnn | mlp | lstm, or any registered family
    width: float = 1.0  # multiplier on channels/units; 1.0 = the paper's default
    depth: int | None = None  # blocks per stage / hidden layers; None: the family's default
    # a value trunk of its own (true) or one trunk for both heads (false); None: the family's
    # default (impala_cnn shares its trunk, mnist_cnn and mlp do not)
    separate_value: bool | None = None

    def validate(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) \
                or not self.width > 0 or not math.isfinite(self.width):
            raise ValueError(f"model.width must be > 0 (a number), got {self.width!r}")
        if self.depth is not None and (isinstance(self.depth, bool) or int(self.depth) != self.depth
                                       or self.depth < 1):
            raise ValueError(f"model.depth must be >= 1 (an integer), got {self.depth!r}")


@dataclass
class AtariModelConfig(ModelConfig):
    """``model=atari_cnn``: the common knobs plus the dense layer after the convs."""

    family: str = "atari_cnn"
    hidden: int = 512  # units at width 1 of the dense layer before the heads; 0: none

    def validate(self) -> None:
        super().validate()
        if self.depth not in (None, 1):
            raise ValueError(f"model.depth is not a knob of atari_cnn (three convs); leave it "
                             f"null, got {self.depth!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ValueError(f"model.hidden must be an integer >= 0, got {self.hidden!r}")


def build_atari_cnn(cfg: AtariModelConfig, spec, role: str = "policy") -> nn.Module:
    """``ctx.network`` builder of ``model=atari_cnn``: an actor-critic for a ``Discrete``
    action space (behavioural cloning builds the policy-only network itself)."""
    _check_box(spec.observation_space, "atari_cnn")
    if not isinstance(spec.action_space, gymnasium.spaces.Discrete):
        raise ValueError(f"model family 'atari_cnn' is a discrete actor-critic; the env's "
                         f"action space is {spec.action_space}")
    if getattr(cfg, "separate_value", None):
        raise ValueError("model.separate_value is not a knob of atari_cnn (one trunk)")
    cfg.validate()
    return AtariCNN(tuple(spec.observation_space.shape), int(spec.action_space.n),
                    width=float(cfg.width), hidden=int(cfg.hidden))


def _check_box(space: gymnasium.Space, family: str) -> None:
    """Refuse a Dict observation space for a family that reads one observation array."""
    if isinstance(space, gymnasium.spaces.Dict):
        raise ValueError(f"model={family} takes one observation array; this env's observations "
                         f"are a dict ({', '.join(space.spaces)}): use algo=impala with "
                         f"model=nethack")


def _separate(separate_value: bool | None, default: bool) -> dict[str, bool]:
    return {"separate_value": default if separate_value is None else bool(separate_value)}


def _discrete_only(family: str, continuous: bool) -> None:
    if continuous:
        raise ValueError(f"model family {family!r} is a discrete actor-critic; for a Box "
                         f"action space use model=mlp")


def _build_impala(obs_shape, num_actions, width, depth, separate_value=None, continuous=False):
    _discrete_only("impala_cnn", continuous)
    return ImpalaCNN(obs_shape, num_actions, width=width, depth=2 if depth is None else depth,
                     **_separate(separate_value, False))


def _build_mnist(obs_shape, num_actions, width, depth, separate_value=None, continuous=False):
    _discrete_only("mnist_cnn", continuous)
    if depth not in (None, 1):
        raise ValueError(
            f"model.depth is not a knob of mnist_cnn (fixed architecture); "
            f"leave it null or 1, got {depth}"
        )
    return MnistCNN(obs_shape, num_actions, width=width, **_separate(separate_value, True))


def _build_mlp(obs_shape, num_actions, width, depth, separate_value=None, continuous=False):
    return MLPActorCritic(obs_shape, num_actions, width=width, depth=2 if depth is None else depth,
                          continuous=continuous, **_separate(separate_value, True))


def _build_lstm(obs_shape, num_actions, width, depth, separate_value=None, continuous=False):
    _discrete_only("lstm", continuous)
    if separate_value:
        raise ValueError("model.separate_value is not a knob of lstm (one core, two heads)")
    return LSTMActorCritic(obs_shape, num_actions, width=width, depth=1 if depth is None else depth)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "impala_cnn": _build_impala,
    "mnist_cnn": _build_mnist,
    "mlp": _build_mlp,
    "lstm": _build_lstm,  # recurrent (forward over sequences): IMPALA
}


def known_families() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(
    family: str,
    obs_shape: tuple[int, ...],
    num_actions: int,
    *,
    width: float = 1.0,
    depth: int | None = None,
    separate_value: bool | None = None,
    continuous: bool = False,
) -> nn.Module:
    """Build an actor-critic of ``family`` for ``obs_shape`` (no batch dim) and a
    discrete action space of ``num_actions`` (``continuous=True``: a Gaussian policy over
    ``num_actions`` action dimensions; ``mlp`` only).

    ``width`` multiplies every scaled layer's channels/units (1.0 = the paper's
    default; fractional allowed). ``depth`` is residual blocks per stack for
    ``impala_cnn`` (default 2), hidden layers for ``mlp`` (default 2), and must be
    None or 1 for ``mnist_cnn``. ``separate_value``: a value trunk of its own (None: the
    family's default). Every family has ``features(obs) -> (policy, value features)``,
    ``policy_head``, ``value_head`` and ``hidden_size`` (PPG's auxiliary head reads them).
    """
    if family not in _REGISTRY:
        raise ValueError(f"unknown model family '{family}'; known: {', '.join(known_families())}")
    ModelConfig(family, width, depth, separate_value).validate()
    if int(num_actions) != num_actions or num_actions < 1:
        raise ValueError(f"num_actions must be a positive integer, got {num_actions!r}")
    obs_shape = tuple(int(s) for s in obs_shape)
    return _REGISTRY[family](obs_shape, int(num_actions), float(width),
                             None if depth is None else int(depth), separate_value,
                             continuous)


def build_actor_critic(cfg: ModelConfig, spec, role: str = "policy") -> nn.Module:
    """``ctx.network`` builder of the built-in families: an actor-critic for the run's
    observation space and its ``Discrete`` action space (logits) or, for ``mlp``, its ``Box``
    action space (a Gaussian head over ``prod(shape)`` dims), whatever the role."""
    _check_box(spec.observation_space, cfg.family)
    space = spec.action_space
    if isinstance(space, gymnasium.spaces.Discrete):
        num_actions, continuous = int(space.n), False
    elif isinstance(space, gymnasium.spaces.Box) and cfg.family == "mlp":
        num_actions, continuous = math.prod(space.shape), True
    else:
        raise ValueError(f"model family {cfg.family!r} is a discrete actor-critic; the env's "
                         f"action space is {space}" + ("; use model=mlp for a Box action space"
                                                       if isinstance(space, gymnasium.spaces.Box)
                                                       else ""))
    return build_model(cfg.family, tuple(spec.observation_space.shape), num_actions,
                       width=cfg.width, depth=cfg.depth,
                       separate_value=getattr(cfg, "separate_value", None),
                       continuous=continuous)


for _family in _REGISTRY:
    register_model(_family, ModelConfig, build_actor_critic)
register_model("atari_cnn", AtariModelConfig, build_atari_cnn)
