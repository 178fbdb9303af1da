"""Model families: shapes, gradients, parameter counts, scaling knobs, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from agents.models import build_model, count_params, known_families, scaled_channels

PROCGEN = (64, 64, 3)
MNIST = (28, 28, 1)

# (family, obs_shape, num_actions, kwargs) small enough to run in milliseconds
CASES = [
    ("impala_cnn", PROCGEN, 15, {"width": 0.25, "depth": 1}),
    ("impala_cnn", (32, 48, 3), 5, {}),
    ("mnist_cnn", MNIST, 10, {"width": 0.5}),
    ("mlp", (8,), 4, {"depth": 3}),
]


def _obs(obs_shape: tuple[int, ...], batch: int) -> torch.Tensor:
    if len(obs_shape) == 1:
        return torch.randn(batch, *obs_shape)
    return torch.randint(0, 256, (batch, *obs_shape), dtype=torch.uint8)


@pytest.mark.parametrize("family, obs_shape, num_actions, kwargs", CASES)
def test_output_shapes_and_gradients(family, obs_shape, num_actions, kwargs):
    torch.manual_seed(0)
    model = build_model(family, obs_shape, num_actions, **kwargs)
    logits, value = model(_obs(obs_shape, batch=3))
    assert logits.shape == (3, num_actions) and value.shape == (3,)
    assert logits.dtype == value.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()

    (logits.logsumexp(-1).sum() + value.square().sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "weight" in n)


def test_image_obs_any_dtype_scaled_same_and_not_mutated():
    model = build_model("impala_cnn", PROCGEN, 15, width=0.25, depth=1)
    obs = _obs(PROCGEN, batch=2)
    as_float = obs.float()
    before = as_float.clone()
    with torch.no_grad():
        a, va = model(obs)
        b, vb = model(as_float)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(va, vb)
    assert torch.equal(as_float, before), "the model must not modify the caller's buffer"


def test_mnist_accepts_obs_without_channel_axis():
    model = build_model("mnist_cnn", (28, 28), 10, width=0.25)
    logits, value = model(_obs((28, 28), batch=2))
    assert logits.shape == (2, 10) and value.shape == (2,)


def test_impala_width1_matches_procgen_recipe():
    model = build_model("impala_cnn", PROCGEN, 15)  # width 1, depth 2 (default)
    params = count_params(model)
    assert math.isclose(params["total"], 626e3, rel_tol=0.01)
    assert params["total"] == 626_256  # CleanRL ppo_procgen's agent, exactly
    heads = sum(
        p.numel() for head in (model.policy_head, model.value_head) for p in head.parameters()
    )
    assert params["effective"] == params["total"] - heads


@pytest.mark.parametrize("family, obs_shape", [("impala_cnn", PROCGEN), ("mnist_cnn", MNIST)])
def test_effective_params_grow_quadratically_in_width(family, obs_shape):
    counts = [count_params(build_model(family, obs_shape, 10, width=w)) for w in (0.5, 1, 2)]
    for small, big in zip(counts[:-1], counts[1:], strict=True):
        assert small["effective"] < small["total"]
        assert 3.5 < big["effective"] / small["effective"] < 4.1


def test_depth_adds_residual_blocks():
    shallow = count_params(build_model("impala_cnn", PROCGEN, 15, depth=1))["effective"]
    deep = count_params(build_model("impala_cnn", PROCGEN, 15, depth=4))["effective"]
    # Each extra block per stack adds 2 convs: 2 * (16*16 + 32*32 + 32*32) * 9 weights + biases.
    per_depth = 2 * 9 * (16 * 16 + 2 * 32 * 32) + 2 * (16 + 32 + 32)
    assert deep - shallow == 3 * per_depth


@pytest.mark.parametrize("width", [1 / 64, 1 / 32, 0.01])
def test_tiny_widths_never_zero_channels(width):
    for family, obs_shape in [("impala_cnn", PROCGEN), ("mnist_cnn", MNIST), ("mlp", (4,))]:
        model = build_model(family, obs_shape, 3, width=width)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                assert m.out_channels >= 1
            if isinstance(m, nn.Linear):
                assert m.out_features >= 1
        logits, _ = model(_obs(obs_shape, batch=1))
        assert logits.shape == (1, 3)


def test_scaled_channels():
    assert scaled_channels(16, 1.0) == 16
    assert scaled_channels(16, 0.5) == 8
    assert scaled_channels(32, 1 / 3) == 11
    assert scaled_channels(16, 1 / 64) == 1
    assert scaled_channels(256, 8) == 2048


def test_unknown_family_lists_known():
    with pytest.raises(ValueError, match="resnet9000") as err:
        build_model("resnet9000", PROCGEN, 15)
    for name in known_families():
        assert name in str(err.value)


@pytest.mark.parametrize("width", [0, -1, -0.5, float("nan")])
def test_bad_width(width):
    with pytest.raises(ValueError, match="model.width must be > 0"):
        build_model("impala_cnn", PROCGEN, 15, width=width)


@pytest.mark.parametrize("family, obs_shape", [("impala_cnn", PROCGEN), ("mlp", (4,))])
@pytest.mark.parametrize("depth", [0, -2])
def test_bad_depth(family, obs_shape, depth):
    with pytest.raises(ValueError, match="model.depth must be >= 1"):
        build_model(family, obs_shape, 3, depth=depth)


def test_mnist_depth_is_not_a_knob():
    build_model("mnist_cnn", MNIST, 10, depth=1)
    with pytest.raises(ValueError, match="model.depth"):
        build_model("mnist_cnn", MNIST, 10, depth=2)


@pytest.mark.parametrize(
    "family, obs_shape, match",
    [
        ("impala_cnn", (8,), "image observations"),
        ("mnist_cnn", (8,), "image observations"),
        ("impala_cnn", (3, 64, 64), "channels-first"),
        ("mnist_cnn", (8, 8, 1), "at least 14x14"),
        ("mlp", PROCGEN, "vector observations"),
    ],
)
def test_incompatible_obs_shape(family, obs_shape, match):
    with pytest.raises(ValueError, match=match):
        build_model(family, obs_shape, 4)


def test_count_params_without_scaled_modules_counts_everything():
    # a network that names no scaled parts (e.g. an algorithm's own) is scaled as a whole
    assert count_params(nn.Linear(3, 4)) == {"total": 16, "effective": 16}


def test_mlp_gaussian_head_outputs_mean_and_log_std_outside_the_scaled_trunk():
    """A Box action space of d dims: params (B, 2d) = [mean, log_std], the mean near 0 and
    the learned state-independent log std 0 at init; the head is not effective, so the
    effective parameters and FLOPs equal the discrete model's."""
    from rl_scaling.flops import forward_flops

    torch.manual_seed(0)
    model = build_model("mlp", (5,), 3, width=0.5, continuous=True)
    params, value = model(torch.randn(4, 5))
    assert params.shape == (4, 6) and value.shape == (4,)
    assert params[:, :3].abs().max() < 0.1 and (params[:, 3:] == 0).all()
    params.sum().backward()
    assert model.policy_head.log_std.grad is not None
    discrete = build_model("mlp", (5,), 3, width=0.5)
    assert count_params(model)["effective"] == count_params(discrete)["effective"]
    assert count_params(model)["total"] == count_params(discrete)["total"] + 3  # log_std
    x = torch.randn(2, 5)
    assert forward_flops(model, x) == forward_flops(discrete, x)
    assert forward_flops(model, x, effective=False) == forward_flops(discrete, x, effective=False)


@pytest.mark.parametrize("family, obs_shape", [("impala_cnn", PROCGEN), ("mnist_cnn", MNIST)])
def test_cnn_families_are_discrete_only(family, obs_shape):
    with pytest.raises(ValueError, match="discrete actor-critic.*model=mlp"):
        build_model(family, obs_shape, 2, continuous=True)
