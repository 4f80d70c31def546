"""The parameter server's state: one flat float32 parameter vector, its torch optimizer,
the model version, the chain sequence number and the per-worker deduplication table.

Used by every mode (ps/core.py applies updates through it; checkpoints and chain state
transfer serialize it with `to_bytes`/`from_bytes`). Not thread-safe: the caller holds
the PS's state lock.
"""

from __future__ import annotations

import io

import torch

from trainthrough import wire
from trainthrough.optim import make_optimizer
from trainthrough.spec import OptimizerSpec

FORMAT_VERSION = 1


class ParameterState:
    """The master copy of the weights and everything needed to continue training.

    >>> state = ParameterState(torch.zeros(10), OptimizerSpec())
    >>> state.apply(torch.ones(10))
    >>> state.version
    1
    """

    def __init__(self, params: torch.Tensor, optimizer: OptimizerSpec, version: int = 0) -> None:
        self.param = torch.nn.Parameter(params.detach().reshape(-1).to(torch.float32).clone(), requires_grad=False)
        self.optimizer_spec = optimizer
        self.optimizer = make_optimizer(optimizer, [self.param])
        self.version = version
        self.seq = version  # chain: sequence number of the last applied record
        self.last_push: dict[str, int] = {}  # worker -> newest push id applied

    @property
    def numel(self) -> int:
        return self.param.numel()

    def apply(self, gradient: torch.Tensor, weight: float = 1.0) -> None:
        """One optimizer step with `gradient` (scaled by `weight`); version += 1."""
        self.param.grad = gradient if weight == 1.0 else gradient * weight
        self.optimizer.step()
        self.param.grad = None
        self.version += 1
        self.seq += 1

    def is_duplicate(self, worker: str, push_id: int) -> bool:
        return push_id <= self.last_push.get(worker, -1)

    def record_pushes(self, workers: list[str], push_ids: list[int]) -> None:
        for worker, push_id in zip(workers, push_ids):
            if push_id > self.last_push.get(worker, -1):
                self.last_push[worker] = push_id

    def params_bytes(self, dtype: str = "float32") -> bytes:
        """A snapshot of the parameters as wire bytes (float32, or rounded to bfloat16)."""
        return wire.tensor_bytes(self.param.detach(), dtype)

    def to_bytes(self) -> bytes:
        """Everything to continue training, in torch's serialization format."""
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT_VERSION,
                "version": self.version,
                "seq": self.seq,
                "params": self.param.detach().clone(),
                "optimizer": self.optimizer.state_dict(),
                "last_push": dict(self.last_push),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, optimizer: OptimizerSpec) -> "ParameterState":
        blob = torch.load(io.BytesIO(data), weights_only=True)
        if blob.get("format") != FORMAT_VERSION:
            raise ValueError(f"state format {blob.get('format')!r} is not {FORMAT_VERSION}")
        state = cls(blob["params"], optimizer, version=int(blob["version"]))
        state.seq = int(blob["seq"])
        state.optimizer.load_state_dict(blob["optimizer"])
        state.last_push = {str(k): int(v) for k, v in blob["last_push"].items()}
        return state
