"""FLOP accountant: per-layer counts against FlopCounterMode, effective FLOPs, bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from agents.models import build_model
from rl_scaling.flops import (
    FlopAccountant,
    flops_6nd,
    flops_8nd,
    flops_by_module,
    flops_sac,
    forward_flops,
)

PROCGEN = (64, 64, 3)
MNIST = (28, 28, 1)


def reference_flops(model: nn.Module, x: torch.Tensor, n_samples: int | None = None) -> float:
    """Per-sample FLOPs as torch's own dispatch-level counter sees them."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / (n_samples or x.shape[0])


def uint8_obs(obs_shape, batch=1):
    return torch.randint(0, 256, (batch, *obs_shape), dtype=torch.uint8)


def assert_matches_reference(model, x, n_samples=None):
    ours = forward_flops(model, x, effective=False, n_samples=n_samples)
    ref = reference_flops(model, x, n_samples)
    assert ref > 0
    assert ours == pytest.approx(ref, rel=0.01)


# --- model families against FlopCounterMode ---------------------------------------------


@pytest.mark.parametrize("width", [0.25, 1.0, 2.0])
@pytest.mark.parametrize("depth", [1, 4])
def test_impala_matches_flop_counter(width, depth):
    model = build_model("impala_cnn", PROCGEN, 15, width=width, depth=depth)
    assert_matches_reference(model, uint8_obs(PROCGEN))


@pytest.mark.parametrize("width", [0.5, 2.0])
def test_mnist_cnn_matches_flop_counter(width):
    model = build_model("mnist_cnn", MNIST, 10, width=width)
    assert_matches_reference(model, uint8_obs(MNIST, batch=2))


def test_mlp_matches_flop_counter():
    model = build_model("mlp", (8,), 4, width=2, depth=3)
    assert_matches_reference(model, torch.randn(3, 8))


@pytest.mark.parametrize(("family", "obs_shape", "width", "depth"), [
    ("impala_cnn", PROCGEN, 0.5, 1), ("impala_cnn", PROCGEN, 2.0, 4),
    ("mnist_cnn", MNIST, 0.5, None), ("mnist_cnn", MNIST, 1.0, None)])
def test_every_layer_matches_flop_counter_and_effective_is_the_scaled_layers(
        family, obs_shape, width, depth):
    """Layer by layer, not only in total; and the effective FLOPs the accountant logs are
    exactly the layers under scaled_modules() (the trunks), the heads excluded."""
    model = build_model(family, obs_shape, 10, width=width, depth=depth)
    x = uint8_obs(obs_shape, batch=2)
    ours = flops_by_module(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    ref = counter.get_flop_counts()  # keyed "<RootClass>.<qualified name>"
    root = type(model).__name__
    for name, flops in ours.items():
        assert flops == pytest.approx(sum(ref[f"{root}.{name}"].values()) / 2, rel=0.01), name
    scaled = {n for n, m in model.named_modules()
              if any(m is s or any(m is c for c in s.modules())
                     for s in model.scaled_modules())}
    assert forward_flops(model, x) == sum(f for n, f in ours.items() if n in scaled)
    assert forward_flops(model, x) < forward_flops(model, x, effective=False)


def test_impala_width1_is_61_2_mflop():
    model = build_model("impala_cnn", PROCGEN, 15)
    flops = forward_flops(model, uint8_obs(PROCGEN), effective=False)
    assert flops == pytest.approx(61.2e6, rel=0.01)
    # Heads (256 -> 15 logits + 1 value) are the only non-effective part.
    assert flops - forward_flops(model, uint8_obs(PROCGEN)) == 2 * 256 * 16


def test_per_sample_independent_of_batch():
    model = build_model("impala_cnn", PROCGEN, 15, width=0.25, depth=1)
    one = forward_flops(model, uint8_obs(PROCGEN, 1))
    assert forward_flops(model, uint8_obs(PROCGEN, 4)) == one
    assert forward_flops(model, uint8_obs(PROCGEN, 4), n_samples=1) == 4 * one


# --- recurrent and attention cores ---------------------------------------------------------


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.LSTM(16, 32, num_layers=2), torch.randn(5, 3, 16)),
        (nn.LSTM(16, 32, batch_first=True, bidirectional=True, proj_size=8), torch.randn(3, 5, 16)),
        (nn.GRU(16, 24), torch.randn(5, 3, 16)),
        (nn.RNN(16, 24), torch.randn(5, 3, 16)),
        (nn.LSTMCell(16, 32), torch.randn(3, 16)),
        (nn.GRUCell(16, 32), torch.randn(3, 16)),
    ],
    ids=["lstm", "lstm-proj-bidir", "gru", "rnn", "lstmcell", "grucell"],
)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_recurrent_matches_flop_counter(module, x):
    # oneDNN's fused CPU RNN kernel is opaque to FlopCounterMode (it would read 0);
    # without it the recurrence decomposes into the matmuls the counter sees.
    with torch.backends.mkldnn.flags(enabled=False):
        assert_matches_reference(module, x)
    if isinstance(module, nn.LSTM) and module.num_layers == 2:
        # per time step: sum over layers of 2 * 4 gates * hidden * (in + hidden)
        expected = 2 * 4 * 32 * (16 + 32) + 2 * 4 * 32 * (32 + 32)
        assert forward_flops(module, x, effective=False, n_samples=5 * 3) == expected


class SelfAttention(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, **kwargs)

    def forward(self, x):
        return self.mha(x, x, x)[0]


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, kdim=12, vdim=20, batch_first=True)

    def forward(self, x):
        key = x[:, :3, :12].contiguous()
        value = x[:, :3, :20].contiguous()
        return self.mha(x, key, value)[0]


@pytest.mark.parametrize(
    "module, x",
    [
        (SelfAttention(), torch.randn(7, 3, 32)),
        (SelfAttention(batch_first=True), torch.randn(3, 7, 32)),
        (CrossAttention(), torch.randn(3, 7, 32)),
    ],
    ids=["seq-first", "batch-first", "cross-kdim-vdim"],
)
def test_multihead_attention_matches_flop_counter(module, x):
    assert_matches_reference(module, x)


def test_transformer_fast_path_does_not_hide_layers():
    # In eval mode under no_grad, PyTorch runs a fused kernel that bypasses the
    # submodules; forward_flops must still see every layer.
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 32)
    ours = forward_flops(encoder, x, effective=False)
    assert torch.backends.mha.get_fastpath_enabled()  # restored after counting
    # The reference needs the unfused path too, and the math SDPA kernel (the CPU flash
    # kernel the encoder's attention uses is opaque to FlopCounterMode).
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            ref = reference_flops(encoder, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert ours == pytest.approx(ref, rel=0.01)


class SDPAttention(nn.Module):
    """A custom attention block calling F.scaled_dot_product_attention directly."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_scaled_dot_product_attention_matches_flop_counter():
    model, x = SDPAttention(), torch.randn(2, 6, 32)
    with sdpa_kernel(SDPBackend.MATH):  # the CPU flash kernel is opaque to the counter
        assert_matches_reference(model, x)
    per_module = flops_by_module(model, x)
    assert per_module["<root>"] == 2 * 2 * 6 * 6 * 32  # QK^T + AV, all heads, per sample


# --- effective FLOPs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, obs_shape, min_ratio",
    # The first conv is only linear in width (its input channels are the image's); it is
    # a small share of IMPALA's FLOPs but a large one of the MNIST CNN's.
    [("impala_cnn", PROCGEN, 3.5), ("mnist_cnn", MNIST, 3.0)],
)
def test_effective_flops_below_total_and_quadratic(family, obs_shape, min_ratio):
    x = uint8_obs(obs_shape)
    flops = []
    for width in (0.5, 1.0, 2.0):
        model = build_model(family, obs_shape, 10, width=width)
        effective = forward_flops(model, x)
        assert 0 < effective < forward_flops(model, x, effective=False)
        flops.append(effective)
    for small, big in zip(flops[:-1], flops[1:], strict=True):
        assert min_ratio < big / small < 4.1  # ~4x per doubling of width


def test_effective_needs_scaled_modules():
    with pytest.raises(TypeError, match="effective=False"):
        forward_flops(nn.Linear(3, 4), torch.randn(1, 3))


def test_counting_leaves_model_state_alone():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    stats = model[1].running_mean.clone()
    forward_flops(model, torch.randn(5, 4), effective=False)
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats)
    assert model[1].num_batches_tracked.item() == 0
    assert not model._forward_hooks and not model[0]._forward_pre_hooks


def test_warns_on_parameterised_module_without_formula():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.weight

    with pytest.warns(UserWarning, match="Custom"):
        forward_flops(Custom(), torch.randn(1, 4), effective=False)


# --- accountant and paper conventions ------------------------------------------------------


def _accountant(policy_effective: int = 1000) -> FlopAccountant:
    acc = FlopAccountant()
    acc.register("policy", forward_total=1200, forward_effective=policy_effective)
    acc.register("target", forward_total=500, forward_effective=400, effective=False)
    return acc


def test_accountant_arithmetic_per_role_and_state_round_trip():
    acc = _accountant()
    assert acc.add_forward("policy", 64) == 64_000
    assert acc.add_forward("policy", 64, passes=2) == 128_000
    assert acc.add_forward_backward("policy", 2048, passes=3) == 3 * 3 * 1000 * 2048
    assert acc.add_forward("target", 10) == 0.0  # not part of the study's N
    assert acc.total == 1000 * (64 + 128) + 9 * 1000 * 2048
    # per role: every module, effective or not
    assert acc.by_role() == {"policy": 1200 * (64 + 128 + 9 * 2048), "target": 500 * 10}
    with pytest.raises(KeyError, match="critic"):
        acc.add_forward("critic", 1)
    with pytest.raises(ValueError, match="twice"):
        acc.register("policy", forward_total=1, forward_effective=1)

    state = acc.state_dict()
    restored = _accountant()
    restored.load_state_dict(state)
    assert restored.total == acc.total and restored.by_role() == acc.by_role()
    assert isinstance(state["total"], float)

    with pytest.raises(ValueError, match="FLOPs per forward"):
        _accountant(policy_effective=999).load_state_dict(state)
    other = FlopAccountant()
    other.register("policy", forward_total=1200, forward_effective=1000)
    with pytest.raises(ValueError, match="roles"):
        other.load_state_dict(state)


def test_paper_conventions():
    n, d = 1e6, 2e9
    assert flops_6nd(n, d) == 6 * n * d
    assert flops_8nd(n, d) == 8 * n * d
    assert math.isclose(flops_sac(n, 256, 2, d), 10 * n * 256 * 2 * d)
