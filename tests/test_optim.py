"""The update rule (optim.py) against torch.optim itself: the same weights and the same
state, step for step, for every optimizer a spec can name; and building one does not
import torch._dynamo (a restarting PS would pay over a second for it before it serves)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainthrough.optim import Optimizer
from trainthrough.spec import OptimizerSpec

SPECS = [
    OptimizerSpec(name="sgd", lr=0.1),
    OptimizerSpec(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    OptimizerSpec(name="adam", lr=0.01, betas=(0.8, 0.95), weight_decay=0.001),
]


def _torch_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-m{s.momentum}-wd{s.weight_decay}")
def test_each_step_matches_torch_optim(spec: OptimizerSpec) -> None:
    generator = torch.Generator().manual_seed(4)
    start = [torch.randn(6, generator=generator), torch.randn(2, 3, generator=generator)]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [t.clone() for t in start]
    reference, optimizer = _torch_optimizer(spec, theirs), Optimizer(spec, ours)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=generator) for t in start]
        for param, grad in zip(theirs, grads):
            param.grad = grad.clone()
        reference.step()
        optimizer.step(grads)
        for mine, param in zip(ours, theirs):
            assert torch.equal(mine, param.detach())
    for index, param in enumerate(theirs):
        expected = reference.state[param]
        assert set(optimizer.state[index]) == set(expected)
        for key, value in expected.items():
            assert torch.equal(optimizer.state[index][key], value)


def test_state_loaded_from_torch_optim_continues_the_same_trajectory() -> None:
    spec = SPECS[2]
    param = torch.nn.Parameter(torch.ones(4))
    reference = _torch_optimizer(spec, [param])
    for value in (0.5, -1.0):
        param.grad = torch.full((4,), value)
        reference.step()
    mine = param.detach().clone()
    optimizer = Optimizer(spec, [mine])
    # A copy: state_dict() hands out the live tensors, which the reference goes on updating.
    optimizer.load(0, {k: v.clone() for k, v in reference.state_dict()["state"][0].items()})
    param.grad = torch.full((4,), 2.0)
    reference.step()
    optimizer.step([torch.full((4,), 2.0)])
    assert torch.equal(mine, param.detach())


def test_a_parameter_without_a_gradient_is_left_alone() -> None:
    params = [torch.zeros(2), torch.zeros(2)]
    Optimizer(OptimizerSpec(lr=1.0), params).step([None, torch.ones(2)])
    assert params[0].tolist() == [0.0, 0.0] and params[1].tolist() == [-1.0, -1.0]


def test_the_number_of_gradients_must_match() -> None:
    with pytest.raises(ValueError, match="1 gradients for 2 parameters"):
        Optimizer(OptimizerSpec(), [torch.zeros(1), torch.zeros(1)]).step([torch.zeros(1)])


def test_stepping_does_not_import_torch_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from trainthrough.optim import Optimizer\n"
        "from trainthrough.spec import OptimizerSpec\n"
        "for spec in (OptimizerSpec(momentum=0.9), OptimizerSpec(name='adam')):\n"
        "    Optimizer(spec, [torch.zeros(3)]).step([torch.ones(3)])\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
