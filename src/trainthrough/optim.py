"""The update rule of a TrainingJob's `spec.optimizer`, applied by the parameter server to
its flat weight vector and by a stateless worker to its local copy while the PS is down,
so both apply exactly the same rule.

The arithmetic is torch's own: `torch.optim.sgd.sgd` and `torch.optim.adam.adam`, the
functions `torch.optim.SGD.step` and `torch.optim.Adam.step` call. What this module adds
is the per-tensor state around them. It does not build a `torch.optim.Optimizer`: the
first one a process builds imports torch._dynamo (about 800 modules, 1.3 s here, more on
busy cores), which a restarted PS would pay before it serves again. The state has
torch.optim's keys (`momentum_buffer`; `step`, `exp_avg`, `exp_avg_sq`), so checkpoints of
either kind load into both.

    >>> params = [torch.zeros(3)]
    >>> optimizer = Optimizer(OptimizerSpec(lr=0.5), params)
    >>> optimizer.step([torch.ones(3)]); params[0]
    tensor([-0.5000, -0.5000, -0.5000])
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from trainthrough.spec import OptimizerSpec


class Optimizer:
    """`spec`'s rule over `params` (updated in place); `state[i]` is tensor i's state."""

    def __init__(self, spec: OptimizerSpec, params: Iterable[torch.Tensor], *, nesterov: bool = False) -> None:
        """`nesterov`: SGD with momentum takes Nesterov steps (the stateless PS's outer
        optimizer; a job's own optimizer does not)."""
        if spec.name not in ("sgd", "adam"):
            raise ValueError(f"optimizer.name: unknown optimizer {spec.name!r}")
        self.spec = spec
        self.nesterov = nesterov and spec.name == "sgd" and spec.momentum != 0
        self.params = list(params)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    def step(self, grads: list[torch.Tensor | None] | None = None) -> None:
        """One step with `grads` (default: each parameter's `.grad`); a parameter without
        a gradient is left alone, as torch.optim does."""
        grads = [p.grad for p in self.params] if grads is None else grads
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        chosen = [(i, p, g) for i, (p, g) in enumerate(zip(self.params, grads)) if g is not None]
        if not chosen:
            return
        with torch.no_grad():
            if self.spec.name == "sgd":
                self._sgd(chosen)
            else:
                self._adam(chosen)

    def load(self, index: int, state: dict[str, Any]) -> None:
        """Take tensor `index`'s state (as `state[index]` holds it, or a torch.optim
        state_dict's per-parameter entry); tensors of the parameter's dtype are kept, not
        copied."""
        param = self.params[index]
        loaded: dict[str, Any] = {}
        for key, value in state.items():
            if key == "step":
                loaded[key] = torch.as_tensor(value, dtype=torch.float32).reshape(())
            elif isinstance(value, torch.Tensor):
                loaded[key] = value.to(dtype=param.dtype, device=param.device)
            else:
                loaded[key] = value
        self.state[index] = loaded

    def _sgd(self, chosen: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        spec = self.spec
        momentum = spec.momentum != 0
        # torch.optim.SGD keeps a momentum buffer only with momentum; sgd() creates it.
        buffers = [self.state[i].get("momentum_buffer") if momentum else None for i, _, _ in chosen]
        sgd(
            [p for _, p, _ in chosen], [g for _, _, g in chosen], buffers,
            weight_decay=spec.weight_decay, momentum=spec.momentum, lr=spec.lr,
            dampening=0.0, nesterov=self.nesterov, maximize=False,
        )  # fmt: skip
        if momentum:
            for (i, _, _), buffer in zip(chosen, buffers):
                self.state[i]["momentum_buffer"] = buffer

    def _adam(self, chosen: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        spec = self.spec
        for i, p, _ in chosen:
            if not self.state[i]:  # as torch.optim.Adam starts a parameter's state
                self.state[i] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[i] for i, _, _ in chosen]
        beta1, beta2 = spec.betas
        adam(
            [p for _, p, _ in chosen], [g for _, _, g in chosen],
            [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
            amsgrad=False, beta1=beta1, beta2=beta2, lr=spec.lr, weight_decay=spec.weight_decay,
            eps=1e-8, maximize=False,
        )  # fmt: skip
