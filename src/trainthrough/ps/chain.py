"""Chain mode: R replicas apply the same update records in the same order, head to tail.

The master (local runtime or operator) owns the configuration (epoch + ordered members)
and pushes it with Reconfigure. The head takes workers' pushes, applies each as a record
with the next sequence number and forwards it to its successor, which does the same.

- `ack: tail`: a push is acknowledged only after the record reached the tail (forwarding
  is synchronous), so no acknowledged update is ever lost.
- `ack: head`: the head acknowledges after applying locally; a forwarder thread sends
  records downstream every `replicateEvery` updates (the paper's variant).

Any replica can bring its successor up to date ("sync"): it sends the records the
successor lacks from a bounded in-memory log, or, if the log no longer reaches back far
enough (a new, empty replica), its whole state. That one mechanism serves forwarding,
promotion after a head dies (the new head syncs the rest of the chain), a middle replica's
death (its predecessor syncs the new successor) and a replacement joining at the tail (the
old tail transfers its state to it). Duplicate pushes (retries after a failover) are
recognised by per-worker push ids that are part of the replicated state.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Callable

from trainthrough import names, wire
from trainthrough.auth import Credentials
from trainthrough.errors import NotHead, PermanentError, PSUnavailable, TemporaryError, WireError
from trainthrough.proto import ps_pb2
from trainthrough.ps import requests
from trainthrough.ps.core import NotServing, ParameterServerCore, Record
from trainthrough.ps.mode import Mode
from trainthrough.ps.state import ParameterState
from trainthrough.ps import state_codec
from trainthrough.ps.state_codec import StateFormatError
from trainthrough.rpc import Connection
from trainthrough.spec import OptimizerSpec

MAX_CHAIN = names.MAX_PS
MAX_ADDRESS = 512
REPLICATE_TIMEOUT = 30.0  # a state transfer of a large model may take seconds
SYNC_ATTEMPTS = 3


class StaleEpoch(TemporaryError):
    """A replication request from a predecessor with an older configuration."""


class FutureEpoch(TemporaryError):
    """A replication request stamped with an epoch this replica does not hold (yet): the
    master publishes tail first, so it either arrives soon or was never published."""


class NotPredecessor(PermanentError):
    """A replication request from a sender that is not this replica's predecessor in the
    configuration both claim to hold."""


class ChainReplica(Mode):
    name = "chain"
    keeps_gradients = True  # each record's gradient stays in the log until the tail has it

    def __init__(
        self,
        core: ParameterServerCore,
        *,
        ack: str,
        replicate_every: int,
        optimizer: OptimizerSpec,
        initial_state: Callable[[], ParameterState],
        join: bool,
        numel: int,
        credentials: Credentials | None = None,  # the job's, presented to the successor
    ) -> None:
        super().__init__(core)
        self.credentials = credentials
        self.numel = numel  # the model's size: what a transferred state must have
        self.ack = ack
        self.replicate_every = replicate_every
        self.optimizer = optimizer
        self.initial_state = initial_state
        self.join = join
        self.config = ps_pb2.ChainConfig(epoch=-1)
        # Records a successor may lack, oldest first. Every record holds a whole model's
        # gradient, so the log keeps only what the `ack: head` forwarder needs (its last
        # 2 x replicateEvery records, 2 at least): a successor further behind gets the state
        # instead, which costs about as much as two gradients (params + optimizer state).
        # (64 records of a 50M-parameter model held 12.8 GB.)
        self.log: deque[Record] = deque(maxlen=2 * replicate_every)
        self.successor: Connection | None = None
        self.successor_seq: int | None = None  # last seq the successor is known to have
        self._wakeup = threading.Event()
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.core.commit = self._commit
        if not self.join:
            # Initial members start identical: the same seed gives the same weights.
            self.core.install(self.initial_state(), restored_from="seed")
        if self.ack == "head":
            threading.Thread(target=self._forwarder, name="chain-forwarder", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self._wakeup.set()

    def serving_state(self) -> str:
        return "serving" if self.core.serving else "joining"

    def health(self) -> ps_pb2.HealthReply:
        reply = super().health()
        reply.chain.CopyFrom(self.config)
        return reply

    def describe(self, reply: ps_pb2.PullReply | ps_pb2.PushReply) -> None:
        reply.chain.CopyFrom(self.config)  # workers learn every new configuration

    # -- roles -------------------------------------------------------------------------
    @property
    def members(self) -> list[ps_pb2.ChainMember]:
        return list(self.config.members)

    def _index(self) -> int | None:
        for i, member in enumerate(self.config.members):
            if member.name == self.core.name:
                return i
        return None

    def is_head(self) -> bool:
        return self._index() == 0

    def _role(self) -> str:
        index = self._index()
        if index is None:
            return "removed"
        if index == 0:
            return "head"
        return "tail" if index == len(self.config.members) - 1 else "middle"

    # -- worker-facing -----------------------------------------------------------------
    def push(self, request: ps_pb2.PushRequest, data: bytes | memoryview | None = None, **payload) -> ps_pb2.PushReply:
        if not self.is_head():
            head = self.config.members[0] if self.config.members else None
            where = f"{head.name} at {head.address}" if head else "unknown"
            raise NotHead(f"{self.core.name} is not the head in epoch {self.config.epoch}; head is {where}")
        return super().push(request, data, **payload)

    # -- replication -------------------------------------------------------------------
    def _commit(self, record: Record | None) -> None:
        """After an apply (record) or before acknowledging a duplicate (None)."""
        if record is not None:
            self.log.append(record)
        if self.ack == "head" and self.is_head():
            if record is None or self.core.require_state().seq - (self.successor_seq or 0) >= self.replicate_every:
                self._wakeup.set()
            return
        self._sync_successor()

    def _forwarder(self) -> None:
        while not self._stopped.is_set():
            self._wakeup.wait(0.5)
            self._wakeup.clear()
            if self._stopped.is_set() or not self.core.serving:
                continue
            with self.core.order_lock:
                try:
                    self._sync_successor()
                except Exception as error:  # never end silently: report, retry next round
                    self.core.events.emit("chain_forward_failed", error=f"{type(error).__name__}: {error}")

    def _sync_successor(self) -> None:
        """Bring the successor up to this replica's seq; the caller holds the order lock."""
        successor = self.successor
        state = self.core.state
        if successor is None or state is None:
            return
        for _ in range(SYNC_ATTEMPTS):
            if self.successor_seq is None:
                health = successor.call(lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=2.0)
                self.successor_seq = health.applied_seq if health.state == "serving" else -1
            if self.successor_seq >= state.seq:
                return
            missing = [r for r in self.log if r.seq > self.successor_seq]
            if missing and missing[0].seq == self.successor_seq + 1:
                reply = successor.call(
                    lambda s, t: successor.framed.replicate(_record_stream(self.config.epoch, self.core.name, missing), timeout=t),
                    timeout=REPLICATE_TIMEOUT,
                )
            else:
                encoded = state.encode()  # views of the live state: unchanged while we hold the order lock

                def stream() -> Iterator[wire.Framed]:  # a fresh one for each attempt
                    header = ps_pb2.StateHeader(seq=state.seq, total_bytes=encoded.nbytes, epoch=self.config.epoch, sender=self.core.name)
                    return wire.chunk_stream(ps_pb2.StateChunk(header=header), encoded.chunks())

                reply = successor.call(lambda s, t: successor.framed.install_state(stream(), timeout=t), timeout=REPLICATE_TIMEOUT)
                self.core.events.emit("chain_state_transfer", to=successor.address, seq=state.seq, bytes=encoded.nbytes)
            self.successor_seq = reply.applied_seq
        if self.successor_seq < state.seq:
            raise PSUnavailable(f"successor {successor.address} stays behind at seq {self.successor_seq} < {state.seq}")

    # -- replication -------------------------------------------------------------------
    # The acceptance rule. A replica takes records (Replicate) and states (InstallState)
    # only
    # - stamped with the epoch of the configuration it holds: an older one comes from a
    #   predecessor that lags (it retries once it has the new configuration; a deposed
    #   head never gets one, and so stays fenced off), a newer one was not published to
    #   this replica (yet);
    # - from its predecessor in that configuration (the head takes none: it has none);
    # - records in sequence: those at or below its seq are already applied (a resend after
    #   a reconfiguration) and skipped, a gap ends the batch (the reply's applied_seq tells
    #   the sender where to resume); a state only when it is ahead of its own.
    # Everything else is refused before any of it is received, and nothing of a refused
    # request is applied.
    def accept(self, epoch: int, sender: str, what: str) -> None:
        """Raise unless `sender` may send records or a state stamped `epoch` now; the
        caller holds the order lock (the configuration does not change meanwhile)."""
        held = self.config.epoch
        if epoch < held:
            raise StaleEpoch(f"{what} from epoch {epoch}, this replica is at epoch {held}")
        if epoch > held:
            raise FutureEpoch(f"{what} from epoch {epoch}, this replica holds epoch {held}")
        index = self._index()
        if index is None or index == 0:
            raise NotPredecessor(f"{what} from {requests.shown(sender)}: {self.core.name} has no predecessor in epoch {held}")
        predecessor = self.config.members[index - 1].name
        if sender != predecessor:
            raise NotPredecessor(
                f"{what} from {requests.shown(sender)}: the predecessor of {self.core.name} in epoch {held} is {predecessor}"
            )

    def replicate(self, chunks: Iterable[wire.Framed]) -> ps_pb2.ReplicateReply:
        request, data = wire.stream_payload(chunks, "request", "Replicate")
        with self.core.order_lock:
            self.accept(request.epoch, request.sender, "Replicate")
        if self.core.state is None:
            raise NotServing(f"{self.core.name} is joining and has no state yet")
        if len(request.records) > self.log.maxlen:
            raise WireError(f"records: {len(request.records)} in one call, a predecessor sends at most {self.log.maxlen}")
        for i, message in enumerate(request.records):
            _check_record(message, f"records[{i}]")
        # Received whole before any is applied: a stream cut short applies nothing.
        numel = self.core.numel
        headers = [(message.gradient, numel, f"records[{i}].gradient") for i, message in enumerate(request.records)]
        gradients = wire.assemble(headers, data)
        with self.core.order_lock:
            self.accept(request.epoch, request.sender, "Replicate")  # again: a reconfiguration may have come meanwhile
            state = self.core.require_state()
            for message, gradient in zip(request.records, gradients):
                if message.seq <= state.seq:
                    continue
                if message.seq != state.seq + 1:
                    break
                self.core.apply_record(Record(message.seq, gradient, list(message.workers), list(message.push_ids)))
            return ps_pb2.ReplicateReply(applied_seq=state.seq)

    def install_state(self, chunks: Iterable[wire.Framed]) -> ps_pb2.InstallReply:
        header, data = wire.stream_payload(chunks, "header", "InstallState")
        with self.core.order_lock:
            self.accept(header.epoch, header.sender, "InstallState")
        requests.counter(header.seq, "header.seq")
        limit = state_codec.max_nbytes(self.numel)
        if not 0 <= header.total_bytes <= limit:
            raise WireError(f"header.total_bytes: {header.total_bytes}, a state of this model has at most {limit}")
        current = self.core.state
        if current is not None and current.seq >= header.seq:
            return ps_pb2.InstallReply(applied_seq=current.seq)
        # Received outside the order lock: records may still arrive meanwhile, re-checked below.
        buffer = wire.receive_bytes(header.total_bytes, data, "state")
        try:
            state = ParameterState.from_buffer(buffer, self.optimizer)
        except StateFormatError as error:
            raise WireError(str(error)) from error
        _check_state(state, header.seq, self.numel)
        with self.core.order_lock:
            self.accept(header.epoch, header.sender, "InstallState")
            current = self.core.state
            if current is not None and current.seq >= header.seq:
                return ps_pb2.InstallReply(applied_seq=current.seq)
            self.log.clear()
            self.core.install(state, restored_from="chain")
            self.successor_seq = None
            self._sync_successor()
            return ps_pb2.InstallReply(applied_seq=state.seq)

    def reconfigure(self, request: ps_pb2.ChainConfig) -> ps_pb2.ReconfigureReply:
        check_config(request)
        with self.core.order_lock:
            if request.epoch > self.config.epoch:
                self.config = ps_pb2.ChainConfig()
                self.config.CopyFrom(request)
                self._follow_successor()
                role = self._role()
                if role == "head" and self.core.role != "head" and self.core.state is not None:
                    # Promoted: workers measure what they lost against the state as it was.
                    self.core.started_pushes = dict(self.core.state.last_push)
                self.core.set_role(role)
                self.core.events.emit(
                    "chain_reconfigured",
                    epoch=request.epoch,
                    members=[m.name for m in request.members],
                    role=self.core.role,
                )
            if self.core.serving:
                self._sync_successor()
            state = self.core.state
            return ps_pb2.ReconfigureReply(applied_seq=state.seq if state is not None else -1)

    def _follow_successor(self) -> None:
        index = self._index()
        members = self.config.members
        address = members[index + 1].address if index is not None and index + 1 < len(members) else None
        if self.successor is not None and self.successor.address == address:
            return
        if self.successor is not None:
            self.successor.close()
        self.successor = Connection(address, self.credentials) if address else None
        self.successor_seq = None


def _record_stream(epoch: int, sender: str, records: list[Record]) -> Iterator[wire.Framed]:
    """A Replicate call's chunks: the request with each record's gradient header, then the
    gradients' bytes (views of the logged tensors) in order. A fresh one for each attempt."""
    request = ps_pb2.ReplicateRequest(epoch=epoch, sender=sender)
    for record in records:
        message = request.records.add(seq=record.seq, workers=record.workers, push_ids=record.push_ids)
        wire.fill_bytes(message.gradient, b"", list(record.gradient.shape))
    chunks = (data for record in records for data in wire.tensor_chunks(record.gradient))
    return wire.chunk_stream(ps_pb2.ReplicateChunk(request=request), chunks)


def _check_record(message: ps_pb2.UpdateRecord, what: str) -> None:
    requests.counter(message.seq, f"{what}.seq", low=1)
    if len(message.workers) != len(message.push_ids):
        raise WireError(f"{what}: {len(message.workers)} workers but {len(message.push_ids)} push ids")
    requests.push_table(dict(zip(message.workers, message.push_ids)), f"{what}.push_ids")


def _check_state(state: ParameterState, seq: int, numel: int) -> None:
    """A transferred state must be one this chain can continue from: the model's size, the
    header's seq, counters in range, finite values."""
    if state.numel != numel:
        raise WireError(f"state: {state.numel} parameters, the model has {numel}")
    if state.seq != seq:
        raise WireError(f"state: the header says seq {seq}, the state has seq {state.seq}")
    requests.counter(state.version, "state.version")
    requests.push_table(state.last_push, "state.last_push")
    for what, tensor in state.tensors():
        wire.check_finite(tensor, f"state.{what}")


def check_config(config: ps_pb2.ChainConfig) -> None:
    """A configuration the master can have published: an epoch in range, 1 to 16 distinct
    PS names, each with an address."""
    requests.counter(config.epoch, "epoch")
    if not 1 <= len(config.members) <= MAX_CHAIN:
        raise WireError(f"members: {len(config.members)}, a chain has 1 to {MAX_CHAIN}")
    seen: set[str] = set()
    for i, member in enumerate(config.members):
        if not names.is_ps(member.name) or member.name in seen:
            raise WireError(f"members[{i}].name: {requests.shown(member.name)} is not a distinct PS name (ps-<i>)")
        if not 0 < len(member.address) <= MAX_ADDRESS:
            raise WireError(f"members[{i}].address: must be 1 to {MAX_ADDRESS} characters")
        seen.add(member.name)
