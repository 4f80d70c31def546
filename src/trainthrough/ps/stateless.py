"""Stateless mode: the PS holds nothing that cannot be rebuilt from the workers.

A (re)started PS opens a rejoin window (ps/rejoins.py): every worker's first call is
Rejoin, carrying the base weights it last pulled and what it did while the PS was down
(buffered gradients, or with `merge: outer` its local progress). The PS seeds from the
base with the highest version, takes in the buffered work and starts serving; workers
then pull (resync). Only when no worker brought weights does it fall back to the newest
checkpoint (if `fallbackCheckpoint` is on) or to the seed's initial weights. A worker that
has not rejoined this incarnation may not push (RejoinRequired).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from trainthrough import wire
from trainthrough.errors import RejoinRequired
from trainthrough.proto import ps_pb2
from trainthrough.ps.checkpoints import PeriodicCheckpointer, restore_newest
from trainthrough.ps.core import NotServing, ParameterServerCore, Record
from trainthrough.ps.mode import Mode
from trainthrough.ps.rejoins import RejoinWindow
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec, StatelessSpec


class StatelessMode(Mode):
    name = "stateless"

    def __init__(
        self,
        core: ParameterServerCore,
        *,
        spec: StatelessSpec,
        optimizer: OptimizerSpec,
        initial_state: Callable[[], ParameterState],
        numel: int,
        fallback: PeriodicCheckpointer | None,
    ) -> None:
        super().__init__(core)
        self.spec = spec
        self.optimizer = optimizer
        self.initial_state = initial_state
        self.fallback = fallback
        self.rejoins = RejoinWindow(
            core, spec=spec, optimizer=optimizer, numel=numel, without_weights=self._without_weights, on_seeded=self._on_seeded
        )

    def start(self) -> None:
        self.core.commit = self._commit
        self.rejoins.start()

    def stop(self) -> None:
        if self.fallback is not None:
            self.fallback.stop()

    def serving_state(self) -> str:
        return "serving" if self.rejoins.seeded.is_set() else "seeding"

    def _without_weights(self) -> tuple[ParameterState, str]:
        """No worker brought weights (every one was restarted too)."""
        if self.fallback is not None:
            state = restore_newest(self.core, self.fallback.store, self.optimizer)
            if state is not None:
                return state, "fallback-checkpoint"
        return self.initial_state(), "seed"

    def _on_seeded(self) -> None:
        if self.fallback is not None:
            self.fallback.start()

    def _commit(self, record: Record | None) -> None:
        if record is not None and self.fallback is not None:
            self.fallback.after_apply(self.core.require_state().version)

    # -- worker-facing -----------------------------------------------------------------
    def push(self, request: ps_pb2.PushRequest, data: bytes | memoryview | None = None, **payload) -> ps_pb2.PushReply:
        if not self.rejoins.has_rejoined(request.worker):
            raise RejoinRequired(f"{request.worker} has not rejoined PS incarnation {self.core.incarnation}")
        return super().push(request, data, **payload)

    def pull(self, request: ps_pb2.PullRequest, **options) -> wire.Framed:
        if not self.rejoins.seeded.is_set():
            raise NotServing(f"{self.core.name} is seeding from the workers")
        return super().pull(request, **options)

    def rejoin_stream(self, chunks: Iterable[wire.Framed]) -> ps_pb2.RejoinReply:
        return self.rejoins.rejoin_stream(chunks)

    def rejoin(self, request: ps_pb2.RejoinRequest, tensors: list[torch.Tensor] | None = None) -> ps_pb2.RejoinReply:
        return self.rejoins.rejoin(request, tensors)
