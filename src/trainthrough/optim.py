"""The optimizer named by a TrainingJob's `spec.optimizer`, built on torch.optim.

Used by the parameter server (the master copy of the weights) and by stateless workers
(local SGD while the PS is down), so both apply exactly the same update rule.
"""

from __future__ import annotations

from typing import Iterable

import torch

from trainthrough.spec import OptimizerSpec


def make_optimizer(spec: OptimizerSpec, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
    raise ValueError(f"optimizer.name: unknown optimizer {spec.name!r}")


def warm_up(spec: OptimizerSpec) -> None:
    """Build (and step) a throwaway optimizer once at process start: the first optimizer a
    process builds imports about a second's worth of torch modules, which must not land in
    the middle of a recovery (a PS restoring, a stateless worker going offline)."""
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    make_optimizer(spec, [param]).step()
