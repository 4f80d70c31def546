"""Tests of trainthrough.model: the model registry and the flat parameter vector.

Aspects covered:
- the paper's CNN has exactly the layers of the paper (parameter count from layer shapes);
- the MLPs' parameter counts (0.1M, 1M, 50M); forward shapes [B, 10] for every registered
  model; the spec's model choices are exactly the registered names;
- build_model: same seed -> same weights, different seed -> different weights, independent
  of and not disturbing the global RNG; unknown names are a ValueError naming known ones;
- flatten_params / load_flat_params round trip, copies not aliases, dtype conversion,
  parameters stay the same objects, size mismatch errors;
- flatten_grads matches the gradients and fills missing ones with zeros.
"""

from __future__ import annotations

from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainthrough.model import (
    MODELS,
    PaperCNN,
    build_model,
    flatten_grads,
    flatten_params,
    load_flat_params,
    model_size,
    param_count,
)
from trainthrough.spec import TrainingJobSpec


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_paper_cnn_param_count_matches_the_paper_layers() -> None:
    expected = (
        conv_params(1, 16, 5)  # 416
        + conv_params(16, 32, 5)  # 12_832
        + linear_params(32 * 7 * 7, 512)  # two 2x2 pools: 28 -> 14 -> 7; 803_328
        + linear_params(512, 10)  # 5_130
    )
    assert expected == 821_706
    assert param_count(build_model("paper-cnn", 0)) == expected


def test_paper_cnn_layers() -> None:
    model = PaperCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (5, 5), (2, 2)),
        (16, 32, (5, 5), (2, 2)),
    ]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25]
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool2d)]) == 2


@pytest.mark.parametrize(
    ("name", "widths", "expected"),
    [
        ("mlp", [784, 128, 10], 101_770),
        ("mlp-1m", [784, 1024, 256, 10], 1_068_810),
        ("mlp-50m", [784, 8192, 5376, 10], 50_530_058),
    ],
)
def test_mlp_param_counts(name: str, widths: list[int], expected: int) -> None:
    assert sum(linear_params(a, b) for a, b in zip(widths, widths[1:])) == expected
    assert param_count(build_model(name, 0)) == expected


def test_the_spec_offers_exactly_the_registered_models() -> None:
    assert set(get_args(TrainingJobSpec.model_fields["model"].annotation)) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name: str) -> None:
    model = build_model(name, 0)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_weights_different_seed_different(name: str) -> None:
    a = flatten_params(build_model(name, 42))
    b = flatten_params(build_model(name, 42))
    c = flatten_params(build_model(name, 43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_build_model_neither_uses_nor_disturbs_the_global_rng() -> None:
    torch.manual_seed(1)
    a = flatten_params(build_model("mlp", 5))
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    b = flatten_params(build_model("mlp", 5))
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet") as info:
        build_model("resnet", 0)
    for name in MODELS:
        assert name in str(info.value)


def test_flatten_params_is_a_flat_float32_copy() -> None:
    model = build_model("paper-cnn", 0)
    flat = flatten_params(model)
    assert flat.dim() == 1 and flat.dtype == torch.float32 and flat.is_contiguous()
    assert flat.numel() == param_count(model)
    assert not flat.requires_grad
    first = next(model.parameters())
    before = first.detach().clone()
    flat.zero_()
    assert torch.equal(first, before)


def test_round_trip_into_another_model() -> None:
    source, target = build_model("paper-cnn", 0), build_model("paper-cnn", 1)
    params_before = [id(p) for p in target.parameters()]
    flat = flatten_params(source)
    load_flat_params(target, flat)
    assert torch.equal(flatten_params(target), flat)
    for p, q in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(p, q)
    # Same parameter objects (an optimizer holding them keeps working), not aliasing flat.
    assert [id(p) for p in target.parameters()] == params_before
    flat.add_(1.0)
    assert torch.equal(flatten_params(target), flatten_params(source))


def test_load_converts_dtype() -> None:
    model = build_model("mlp", 0)
    flat = torch.arange(param_count(model), dtype=torch.float64) / 1000
    load_flat_params(model, flat)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(flatten_params(model), flat.float())


def test_size_mismatch_names_both_sizes() -> None:
    model = build_model("mlp", 0)
    n = param_count(model)
    with pytest.raises(ValueError, match=rf"\b{n - 1}\b.*\b{n}\b"):
        load_flat_params(model, torch.zeros(n - 1))
    with pytest.raises(ValueError, match=str(n)):
        load_flat_params(model, torch.zeros(1, n))


def test_flatten_grads_matches_the_gradients() -> None:
    model = build_model("mlp", 0)
    assert torch.equal(flatten_grads(model), torch.zeros(param_count(model)))
    loss = F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = flatten_grads(model)
    assert grads.dtype == torch.float32 and grads.dim() == 1
    assert torch.equal(grads, torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert grads.abs().sum() > 0


def test_flatten_grads_zero_fills_parameters_without_gradient() -> None:
    model = build_model("mlp", 0)
    last = list(model.parameters())[-1]
    last.grad = torch.ones_like(last)
    grads = flatten_grads(model)
    assert torch.equal(grads[-last.numel() :], torch.ones(last.numel()))
    assert torch.equal(grads[: -last.numel()], torch.zeros(grads.numel() - last.numel()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_size_is_the_flat_vector_length_without_building_the_model(name: str) -> None:
    assert model_size(name) == param_count(build_model(name, seed=0))


def test_model_size_of_an_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: mlp, "):
        model_size("nope")
