"""Hybrid mode: a chain of replicas (ps/chain.py) that its workers can also rejoin
(ps/rejoins.py), so that losing every replica costs no more than a stateless outage.

While some replica lives, it is a chain: instant failover, no acknowledged update lost
(`ack: tail`). When the last one is lost the workers train on, as stateless workers do,
and the master starts a replica again with `--rebuild` (names.PSStart.REBUILD): it opens a
rejoin window, seeds from the workers' base weights with the highest version, takes in
what they buffered (or their local progress, `stateless.merge: outer`) and serves as the
head; replacements then join at its tail by state transfer, as after any promotion.

A replica that was not rebuilt takes a rejoin too (a worker that went offline while the
chain was, after all, still there), on the head only: its buffered work goes onto the
live model and down the chain like any update.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from trainthrough import wire
from trainthrough.errors import NotHead, RejoinRequired
from trainthrough.proto import ps_pb2
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.core import NotServing, ParameterServerCore
from trainthrough.ps.rejoins import RejoinWindow
from trainthrough.spec import StatelessSpec


class HybridReplica(ChainReplica):
    name = "hybrid"

    def __init__(self, core: ParameterServerCore, *, rebuild: bool, stateless: StatelessSpec, join: bool = False, **chain: Any) -> None:
        """`chain`: ChainReplica's settings; `rebuild`: this replica starts empty, as a
        joining one does, and seeds from the rejoin window instead of a transfer."""
        super().__init__(core, join=join or rebuild, **chain)
        self.rebuild = rebuild
        initial_state = self.initial_state
        self.rejoins = RejoinWindow(
            core, spec=stateless, optimizer=self.optimizer, numel=self.numel,
            without_weights=lambda: (initial_state(), "seed"), open=rebuild,
        )  # fmt: skip

    def start(self) -> None:
        super().start()
        self.rejoins.start()

    def serving_state(self) -> str:
        if self.rebuild and not self.rejoins.seeded.is_set():
            return "seeding"
        return super().serving_state()

    # -- worker-facing -----------------------------------------------------------------
    def push(self, request: ps_pb2.PushRequest, data: bytes | memoryview | None = None, **payload) -> ps_pb2.PushReply:
        if self.rebuild and not self.rejoins.has_rejoined(request.worker):
            raise RejoinRequired(f"{request.worker} has not rejoined the rebuilt chain (PS incarnation {self.core.incarnation})")
        return super().push(request, data, **payload)

    def pull(self, request: ps_pb2.PullRequest, **options) -> wire.Framed:
        if not self.rejoins.seeded.is_set():
            raise NotServing(f"{self.core.name} is rebuilding the chain from the workers")
        return super().pull(request, **options)

    def rejoin_stream(self, chunks: Iterable[wire.Framed]) -> ps_pb2.RejoinReply:
        self._check_head()
        return self.rejoins.rejoin_stream(chunks)

    def rejoin(self, request: ps_pb2.RejoinRequest, tensors: list[torch.Tensor] | None = None) -> ps_pb2.RejoinReply:
        self._check_head()
        return self.rejoins.rejoin(request, tensors)

    def _check_head(self) -> None:
        """Buffered work goes onto the live model only at the head (from where it flows
        down the chain); a rebuilding replica takes rejoins before its configuration came."""
        if self.rejoins.seeded.is_set() and not self.is_head():
            head = self.config.members[0] if self.config.members else None
            where = f"{head.name} at {head.address}" if head else "unknown"
            raise NotHead(f"{self.core.name} is not the head in epoch {self.config.epoch}; head is {where}")
