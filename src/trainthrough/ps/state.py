"""The parameter server's state: one flat float32 parameter vector, its optimizer,
the model version, the chain sequence number and the per-worker deduplication table.

Used by every mode (ps/core.py applies updates through it; checkpoints and chain state
transfer serialize it with `encode`/`from_buffer`, in the layout of ps/state_codec.py).
Not thread-safe: the caller holds the PS's state lock.
"""

from __future__ import annotations

import math

import torch

from trainthrough import wire
from trainthrough.errors import WireError
from trainthrough.optim import Optimizer
from trainthrough.ps import state_codec
from trainthrough.spec import OptimizerSpec


# Below this gradient magnitude, with lr <= 1 and lr x weight_decay <= 1, one step of SGD
# (with momentum) or Adam from a finite state changes no value by more than about 2^40 /
# (1 - momentum), and Adam's squared average stays near 2^80: a parameter could overflow
# float32 (2^128) only after some 2^60 such steps. Any other step is tried on a copy first.
SAFE_GRADIENT = 2.0**40


class NonFiniteUpdate(WireError):
    """The update would leave a non-finite parameter or optimizer value: it is refused."""


class ParameterState:
    """The master copy of the weights and everything needed to continue training.

    >>> state = ParameterState(torch.zeros(10), OptimizerSpec())
    >>> state.apply(torch.ones(10))
    >>> state.version
    1
    """

    def __init__(self, params: torch.Tensor, optimizer: OptimizerSpec, version: int = 0, *, copy: bool = True) -> None:
        """`copy=False` takes `params` (flat float32) itself as the master copy."""
        flat = params.detach().reshape(-1)
        self.param = torch.nn.Parameter(flat.to(torch.float32).clone() if copy else flat, requires_grad=False)
        self.optimizer_spec = optimizer
        self.optimizer = Optimizer(optimizer, [self.param])
        self.version = version
        self.seq = version  # chain: sequence number of the last applied record
        self.last_push: dict[str, int] = {}  # worker -> newest push id applied

    @property
    def numel(self) -> int:
        return self.param.numel()

    def apply(
        self, gradient: torch.Tensor, weight: float = 1.0, max_abs: float | None = None, rule: Optimizer | None = None
    ) -> None:
        """One optimizer step with `gradient` (scaled by `weight`); version += 1.
        NonFiniteUpdate, with nothing changed, if the step would leave a non-finite value.
        `max_abs`: the gradient's largest magnitude when the caller knows it (decoding
        found it), else it is measured here. `rule`: another optimizer over `self.param`
        (the stateless PS's outer one), instead of the job's."""
        rule = self.optimizer if rule is None else rule
        step = gradient if weight == 1.0 else gradient * weight
        if self._surely_finite(step, None if max_abs is None else max_abs * abs(weight), rule.spec):
            rule.step([step])
        else:
            self._step_checked(step, rule)
        self.version += 1
        self.seq += 1

    @staticmethod
    def _surely_finite(step: torch.Tensor, max_abs: float | None, spec: OptimizerSpec) -> bool:
        if spec.lr > 1.0 or spec.lr * spec.weight_decay > 1.0 or not step.numel():
            return not step.numel()
        if max_abs is None:
            low, high = (v.item() for v in torch.aminmax(step))
            max_abs = max(-low, high) if math.isfinite(low) and math.isfinite(high) else math.inf
        return max_abs <= SAFE_GRADIENT

    def _step_checked(self, step: torch.Tensor, rule: Optimizer) -> None:
        """The step on a copy of the parameters and the optimizer state; taken over only if
        every value it leaves is finite (a rare path: huge gradients or learning rates)."""
        param = self.param.detach().clone()
        trial = Optimizer(rule.spec, [param], nesterov=rule.nesterov)
        trial.load(0, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in rule.state[0].items()})
        trial.step([step])
        named = [("params", param)] + [(f"optimizer.{k}", v) for k, v in trial.state[0].items() if isinstance(v, torch.Tensor)]
        for what, tensor in named:
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteUpdate(f"gradient: the update would leave {bad} non-finite values in {what}; not applied")
        with torch.no_grad():
            self.param.copy_(param)
        live = rule.state[0]
        for key, value in trial.state[0].items():
            if isinstance(value, torch.Tensor) and isinstance(live.get(key), torch.Tensor):
                live[key].copy_(value)
            else:
                live[key] = value

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of the parameters and every optimizer state tensor."""
        named = [("params", self.param.detach())]
        return named + [(f"optimizer.{k}", v) for k, v in self.optimizer.state[0].items() if isinstance(v, torch.Tensor)]

    def is_duplicate(self, worker: str, push_id: int) -> bool:
        return push_id <= self.last_push.get(worker, -1)

    def record_pushes(self, workers: list[str], push_ids: list[int]) -> None:
        for worker, push_id in zip(workers, push_ids):
            if push_id > self.last_push.get(worker, -1):
                self.last_push[worker] = push_id

    def params_bytes(self, dtype: str = "float32") -> bytes:
        """A snapshot of the parameters as wire bytes (float32, or rounded to bfloat16)."""
        return wire.tensor_bytes(self.param.detach(), dtype)

    def encode(self) -> state_codec.EncodedState:
        """Everything to continue training, as views of the live tensors: the caller keeps
        the state unchanged (holds the order lock) until the bytes are written."""
        return state_codec.encode(self.version, self.seq, dict(self.last_push), self.param, self.optimizer.state[0])

    def to_bytes(self) -> bytes:
        return self.encode().to_bytes()

    @classmethod
    def from_buffer(cls, buffer: torch.Tensor, optimizer: OptimizerSpec) -> "ParameterState":
        """The state encoded in `buffer` (a writable uint8 tensor), which it takes over:
        the parameters and the optimizer state are views into it, not copies."""
        decoded = state_codec.decode(buffer)
        params = decoded.params
        if params.dtype != torch.float32 or params.dim() != 1:
            raise state_codec.StateFormatError(f"state: params must be a flat float32 vector, not {params.dtype} of shape {list(params.shape)}")
        for key, value in decoded.optimizer_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params.shape:
                raise state_codec.StateFormatError(f"state: optimizer tensor {key!r} has shape {list(value.shape)}, the params {list(params.shape)}")
        state = cls(params, optimizer, decoded.version, copy=False)
        state.seq = decoded.seq
        state.last_push = decoded.last_push
        # Hyperparameters come from the spec, not the payload.
        state.optimizer.load(0, decoded.optimizer_state)
        return state

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, optimizer: OptimizerSpec) -> "ParameterState":
        """As from_buffer; writable `data` is shared, read-only bytes are copied once."""
        return cls.from_buffer(state_codec.writable_buffer(data), optimizer)
