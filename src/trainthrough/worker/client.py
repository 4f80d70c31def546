"""The worker's view of the parameter server: calls with deadlines, head discovery, and
retry loops that count the time spent waiting.

Every call has a deadline, so a dead PS is noticed in milliseconds (a refused connection)
or at most one deadline (a hung one), never after minutes of transport retries; the time
waited counts from the start of the call that failed. In chain mode the client follows
the newest chain configuration it has seen: every Pull and Push reply carries the one the
replica holds (so a replacement's address is learned while training, not only once every
replica it knew of is gone), and after a failed call it asks every known replica for
theirs and talks to the head of the newest.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, TypeVar

import torch

from trainthrough import wire
from trainthrough.auth import Credentials
from trainthrough.errors import NotHead, PSUnavailable, RejoinRequired, SharedSegmentGone, TemporaryError, TrainthroughError, WireError
from trainthrough.proto import ps_pb2
from trainthrough.rpc import Connection, ConnectionPool
from trainthrough.shared_memory import SharedChannel, WorkerSegment
from trainthrough.shared_memory import available as shared_memory_available
from trainthrough.tcp_channel import ChannelBroken, Kind, TcpChannel, TcpConnection

T = TypeVar("T")

HEALTH_TIMEOUT = 0.5
REPORT_TIMEOUT = 0.2  # a progress report during training: best effort, never a wait
BACKOFF_START = 0.01
BACKOFF_MAX = 0.2
IDLE_MERGE_GAP = 0.5  # seconds: the pause loop's rejoin attempts between its waits are waiting too


class NoReplicaAnswers(TemporaryError):
    """Hybrid: no replica of the chain this worker knows answers any more (every one is
    lost): the worker trains on offline until the chain is rebuilt."""


class Stopped(TrainthroughError):
    """The worker was asked to stop while waiting for the PS."""


STREAM_ABOVE_BYTES = 16 << 20
# A call that moves N bytes gets N / this many extra seconds on top of its timeout: a
# deadline sized for a small model would cut a large model's push short, and a stateless
# worker would take that for a dead PS (a dead one fails fast either way).
SLOWEST_TRANSFER_BYTES_PER_S = 50e6


def first_push_id() -> int:
    """Push ids only grow, across restarts of this worker too: the PS treats a push id it
    has seen as a retry, so a restarted worker must not start again from zero."""
    return time.time_ns() // 1000


class Pulled(NamedTuple):
    version: int
    params: torch.Tensor | None  # None: unchanged since the caller's version
    incarnation: str  # of the PS that answered
    applied_pushes: dict[str, int]  # newest push id per worker that the parameters hold
    started_push_id: int  # this worker's, in the state that PS started serving from


def _assemble(chunks: Iterable[wire.Framed]) -> tuple[ps_pb2.PullReply, torch.Tensor | None]:
    """A PullStream's reply and its parameters, each chunk copied into place on arrival."""
    reply, data = wire.stream_payload(chunks, "reply", "PullStream")
    if not reply.HasField("params"):
        return reply, None
    [params] = wire.assemble([(reply.params, None, "params")], data)
    return reply, params


class RetryingClient:
    """What every client of a job's parameter servers shares: the retry loop of a call
    through a PS's outage, and the time this worker spent waiting (idle). A subclass
    says how to find the head again (`discover`) and calls `acknowledged()` after each
    answered push."""

    def __init__(self) -> None:
        self.answering = True  # whether some known replica answered the latest discover()
        self.idle_seconds = 0.0
        self._idle_before_training: float | None = None  # waited before the first acknowledged push
        # When it waited (Unix seconds, [start, end]): goodput.py places each wait in the
        # recovery phase it fell in. Waits less than IDLE_MERGE_GAP apart are one.
        self.idle_intervals: list[list[float]] = []

    def discover(self) -> bool:
        raise NotImplementedError

    def acknowledged(self) -> None:
        """A push was answered: waits from here on are waits while training."""
        if self._idle_before_training is None:
            self._idle_before_training = self.idle_seconds

    @property
    def idle_while_training(self) -> float:
        """Seconds waited for a PS since the first acknowledged push (waits before it are
        the job's start-up, counted as such)."""
        if self._idle_before_training is None:
            return 0.0
        return self.idle_seconds - self._idle_before_training

    def idled(self, started: float) -> None:
        """This worker waited for the PS from `started` (time.monotonic()) until now."""
        now, wall = time.monotonic(), time.time()
        self.idle_seconds += now - started
        begun = wall - (now - started)
        if self.idle_intervals and begun - self.idle_intervals[-1][1] <= IDLE_MERGE_GAP:
            self.idle_intervals[-1][1] = wall
        else:
            self.idle_intervals.append([begun, wall])

    def until_done(self, call: Callable[[], T], stop: threading.Event, chain: bool, offline_after: float | None = None) -> T:
        """Retry `call` through temporary failures until it succeeds; counts idle time
        from the start of the first attempt that failed (a hung PS costs its whole deadline).
        `offline_after` (hybrid): raise NoReplicaAnswers once no known replica has answered
        for that long, and RejoinRequired at once (the worker trains on, or rejoins)."""
        started = None
        delay = BACKOFF_START
        answered = time.monotonic()  # the last time some replica answered
        while True:
            attempt = time.monotonic()
            try:
                result = call()
            except (PSUnavailable, NotHead, TemporaryError) as error:
                if started is None:
                    started = attempt
                if isinstance(error, RejoinRequired) and offline_after is not None:
                    self.idled(started)
                    raise
                if stop.is_set():
                    self.idled(started)
                    raise Stopped("stopped while waiting for the parameter server") from None
                if chain:
                    self.discover()
                    if self.answering:
                        answered = time.monotonic()
                    elif offline_after is not None and time.monotonic() - answered >= offline_after:
                        self.idled(started)
                        raise NoReplicaAnswers("no replica of the chain answers") from None
                stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if started is not None:
                self.idled(started)
            return result


class PSClient(RetryingClient):
    """
    >>> client = PSClient(["127.0.0.1:50051"], worker="worker-0")
    >>> pulled = client.pull(-1)   # pulled.version, pulled.params, ...
    """

    def __init__(
        self,
        addresses: list[str],
        worker: str,
        *,
        call_timeout: float = 5.0,
        transfer_dtype: str = "float32",
        stream_above_bytes: int = STREAM_ABOVE_BYTES,
        credentials: Credentials | None = None,  # the job's (token, certificates), on every call
        shared_memory: bool = True,  # take a PS's offer of shared memory (same host)
        tcp_channel: bool = True,  # take a PS's offer of a TCP data channel (another host)
    ) -> None:
        if not addresses:
            raise ValueError("PSClient needs at least one PS address")
        super().__init__()
        self.worker = worker
        self.transfer_dtype = transfer_dtype  # of pushed gradients and pulled parameters
        # Tensors larger than this travel in chunks (PushStream, PullStream).
        self.stream_above_bytes = stream_above_bytes
        self._numel: int | None = None  # the model's size, learnt from the first pull
        # The fastest channel the PS offers that this worker reaches carries the tensors:
        # shared memory, then the TCP data channel, then gRPC (which carries all the rest).
        self._shared = SharedChannel() if shared_memory and shared_memory_available() else None
        self._tcp = TcpChannel(worker, credentials) if tcp_channel else None
        self.call_timeout = call_timeout
        self._pool = ConnectionPool(credentials)
        self._known = list(dict.fromkeys(addresses))
        self._head = self._connection(self._known[0])
        self.epoch = -1
        self.push_id = first_push_id()

    def _connection(self, address: str) -> Connection:
        return self._pool.get(address)

    @property
    def address(self) -> str:
        return self._head.address

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
        if self._tcp is not None:
            self._tcp.close()
        self._pool.close()

    def _segment(self, head: Connection, numel: int, timeout: float) -> WorkerSegment | None:
        """The shared-memory segment for a call to `head` moving `numel` elements, or None
        (gRPC) where the PS offers none that this worker can reach. The offer is read
        within the call's own deadline (a busy PS may take longer than a Health check's)."""
        if self._shared is None or numel != self._numel:
            return None
        nbytes = numel * wire.itemsize(self.transfer_dtype)
        return self._shared.segment_for(head.address, nbytes, lambda: self.health(timeout))  # head is self._head

    def _over_shared_memory(self, head: Connection, numel: int, timeout: float, call: Callable[[WorkerSegment], T]) -> T | None:
        """`call` through the segment for `head`, or None where there is none. A PS that
        restarted no longer has the segment's name: negotiate again, once."""
        for _ in range(2):
            segment = self._segment(head, numel, timeout)
            if segment is None:
                return None
            try:
                return call(segment)
            except SharedSegmentGone:  # nothing was applied: the PS refused before reading
                assert self._shared is not None
                self._shared.forget(head.address)
        return None

    def _over_tcp(self, head: Connection, timeout: float, call: Callable[[TcpConnection], T]) -> T | None:
        """`call` over the data channel to `head`, or None where it offers none that this
        worker reaches. Same-host workers take shared memory first (`_over_shared_memory`)."""
        if self._tcp is None:
            return None
        connection = self._tcp.connection_for(head.address, lambda: self.health(timeout), timeout)
        if connection is None:
            return None
        try:
            return call(connection)
        except ChannelBroken:  # the next call connects again (to a restarted PS, say)
            self._tcp.forget(head.address)
            raise

    # -- discovery ---------------------------------------------------------------------
    def discover(self) -> bool:
        """Point at the head of the newest chain configuration any replica knows."""
        best: ps_pb2.ChainConfig | None = None
        self.answering = False
        for address in list(self._known):
            try:
                health = self._connection(address).call(
                    lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=HEALTH_TIMEOUT
                )
            except TrainthroughError:
                continue
            self.answering = True
            config = health.chain
            if config.members and (best is None or config.epoch > best.epoch):
                best = config
        if best is None or best.epoch < self.epoch:
            return False
        self._use(best)
        return True

    def adopt(self, config: ps_pb2.ChainConfig) -> bool:
        """Follow `config` (a reply's) if it is newer than the configuration held; a
        replica that holds none (another mode, or a chain replica not configured yet)
        sends an empty one."""
        if not config.members or config.epoch <= self.epoch:
            return False
        self._use(config)
        return True

    def _use(self, config: ps_pb2.ChainConfig) -> None:
        for member in config.members:
            if member.address not in self._known:
                self._known.append(member.address)
        self.epoch = config.epoch
        self._head = self._connection(config.members[0].address)

    # -- calls -------------------------------------------------------------------------
    def push(self, gradient: torch.Tensor, base_version: int, samples: int, timeout: float | None = None) -> ps_pb2.PushReply:
        return self._push(gradient, base_version, samples, timeout, pull=False)[0]

    def push_and_pull(
        self, gradient: torch.Tensor, base_version: int, samples: int, timeout: float | None = None
    ) -> tuple[ps_pb2.PushReply, Pulled | None]:
        """A push and the parameters after it, in one call; None instead of the parameters
        when the model streams (then the caller pulls: retrying this call after a
        successful push would push the gradient again under the next push id)."""
        return self._push(gradient, base_version, samples, timeout, pull=True)

    def _push(
        self, gradient: torch.Tensor, base_version: int, samples: int, timeout: float | None, *, pull: bool
    ) -> tuple[ps_pb2.PushReply, Pulled | None]:
        request = ps_pb2.PushRequest(worker=self.worker, push_id=self.push_id, base_version=base_version, samples=samples)
        head, pulled = self._head, None
        timeout = self._deadline(timeout, gradient.numel() + ((self._numel or 0) if pull else 0))
        routed = self._over_shared_memory(
            head, gradient.numel(), timeout, lambda segment: self._push_shared(head, segment, request, gradient, pull, timeout)
        )  # fmt: skip
        if routed is None:
            routed = self._over_tcp(head, timeout, lambda connection: self._push_tcp(connection, request, gradient, pull, timeout))
        if routed is not None:
            reply, pulled = routed
        elif self._streams(gradient.numel()) or (pull and self._streams(self._numel)):
            wire.fill_bytes(request.gradient, b"", list(gradient.shape), self.transfer_dtype)

            def stream() -> Iterator[wire.Framed]:  # a fresh one for each attempt
                return wire.chunk_stream(ps_pb2.PushChunk(request=request), wire.tensor_chunks(gradient, self.transfer_dtype))

            reply = head.call(lambda s, t: head.framed.push_stream(stream(), timeout=t), timeout=timeout)
        else:
            if pull:
                request.pull_dtype = self.transfer_dtype
            framed_request = wire.frame(request, wire.PUSH_TENSOR_FIELD, gradient, self.transfer_dtype)
            framed = head.call(lambda s, t: head.framed.push(framed_request, timeout=t), timeout=timeout)
            reply = framed.message
            if pull:
                params = reply.params if reply.HasField("params") else None
                pulled = self._pulled(reply.params_version, params, framed.data, reply)
        self.push_id += 1
        self.acknowledged()
        self.adopt(reply.chain)
        return reply, pulled

    def _push_shared(
        self, head: Connection, segment: WorkerSegment, request: ps_pb2.PushRequest, gradient: torch.Tensor, pull: bool, timeout: float
    ) -> tuple[ps_pb2.PushReply, Pulled | None]:
        """The push with its gradient (and the parameters after it) in the segment."""
        shared = ps_pb2.PushRequest()
        shared.CopyFrom(request)
        segment.write_gradient(shared.gradient, gradient, self.transfer_dtype)
        if pull:
            shared.pull_dtype = self.transfer_dtype
            shared.pull_into.CopyFrom(segment.params)
        framed = head.call(lambda s, t: head.framed.push(wire.Framed(shared), timeout=t), timeout=timeout)
        reply = framed.message
        if not pull:
            return reply, None
        return reply, self._pulled(reply.params_version, reply.params if reply.HasField("params") else None, framed.data, reply, segment)

    def _push_tcp(
        self, connection: TcpConnection, request: ps_pb2.PushRequest, gradient: torch.Tensor, pull: bool, timeout: float
    ) -> tuple[ps_pb2.PushReply, Pulled | None]:
        """The push with its gradient (and the parameters after it) over the data channel."""
        framed = ps_pb2.PushRequest()
        framed.CopyFrom(request)
        wire.fill_bytes(framed.gradient, b"", list(gradient.shape), self.transfer_dtype)
        if pull:
            framed.pull_dtype = self.transfer_dtype
        reply, data = connection.call(Kind.PUSH, framed, wire.tensor_view(gradient, self.transfer_dtype), timeout)
        if not pull:
            return reply, None
        return reply, self._pulled(reply.params_version, reply.params if reply.HasField("params") else None, data, reply)

    def _deadline(self, timeout: float | None, elements: int) -> float:
        """The caller's timeout (else the default) plus the time to move `elements` at the
        slowest rate expected (SLOWEST_TRANSFER_BYTES_PER_S)."""
        return (timeout or self.call_timeout) + elements * wire.itemsize(self.transfer_dtype) / SLOWEST_TRANSFER_BYTES_PER_S

    def _streams(self, numel: int | None, dtype: str | None = None) -> bool:
        """Whether `numel` elements travel in chunks; an unknown size (the first pull) does:
        a large model must not arrive as one message of its whole size."""
        return numel is None or numel * wire.itemsize(dtype or self.transfer_dtype) > self.stream_above_bytes

    def pull(self, have_version: int, timeout: float | None = None) -> Pulled:
        request = ps_pb2.PullRequest(worker=self.worker, have_version=have_version, dtype=self.transfer_dtype)
        head, timeout = self._head, self._deadline(timeout, self._numel or 0)
        routed = self._over_shared_memory(head, self._numel or 0, timeout, lambda segment: self._pull_shared(head, segment, request, timeout))
        if routed is None:
            routed = self._over_tcp(head, timeout, lambda connection: self._pull_tcp(connection, request, timeout))
        if routed is not None:
            pulled, reply = routed
        elif self._streams(self._numel):
            reply, params = head.call(lambda s, t: _assemble(head.framed.pull_stream(request, timeout=t)), timeout=timeout)
            pulled = self._learn_size(reply.version, params, reply)
        else:
            framed = head.call(lambda s, t: head.framed.pull(request, timeout=t), timeout=timeout)
            reply = framed.message
            params = reply.params if reply.HasField("params") else None
            pulled = self._pulled(reply.version, params, framed.data, reply)
        self.adopt(reply.chain)
        return pulled

    def _pull_shared(self, head: Connection, segment: WorkerSegment, request: ps_pb2.PullRequest, timeout: float) -> tuple[Pulled, ps_pb2.PullReply]:
        shared = ps_pb2.PullRequest()
        shared.CopyFrom(request)
        shared.into.CopyFrom(segment.params)
        framed = head.call(lambda s, t: head.framed.pull(shared, timeout=t), timeout=timeout)
        reply = framed.message
        params = reply.params if reply.HasField("params") else None
        return self._pulled(reply.version, params, framed.data, reply, segment), reply

    def _pull_tcp(self, connection: TcpConnection, request: ps_pb2.PullRequest, timeout: float) -> tuple[Pulled, ps_pb2.PullReply]:
        reply, data = connection.call(Kind.PULL, request, b"", timeout)
        return self._pulled(reply.version, reply.params if reply.HasField("params") else None, data, reply), reply

    def _pulled(
        self, version: int, header: ps_pb2.Tensor | None, data: bytes | memoryview, reply: ps_pb2.PullReply | ps_pb2.PushReply,
        segment: WorkerSegment | None = None,
    ) -> Pulled:
        """`segment`: where the parameters are when the header says they are in shared memory."""
        if header is None:
            params = None
        elif header.HasField("shared"):
            if segment is None:
                raise WireError("params.shared: parameters in shared memory that this worker did not ask for")
            params = segment.read_params(header)
        else:
            params = wire.decode(header, what="params", data=data)
        return self._learn_size(version, params, reply)

    def _learn_size(self, version: int, params: torch.Tensor | None, reply: ps_pb2.PullReply | ps_pb2.PushReply) -> Pulled:
        """`reply`: the message the parameters came with (its incarnation and push ids)."""
        if params is not None:
            self._numel = params.numel()
        return Pulled(version, params, reply.incarnation, dict(reply.applied_pushes), reply.started_push_id)

    def health(self, timeout: float = HEALTH_TIMEOUT) -> ps_pb2.HealthReply:
        return self._head.call(lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=timeout)

    def announce_rejoin(self) -> ps_pb2.RejoinReply:
        """Tell a (re)starting stateless PS this worker is about to rejoin; the reply says
        which buffered entries it already replayed (`replayed_seq`)."""
        announce = ps_pb2.RejoinRequest(worker=self.worker, announce=True)
        return self._head.call(lambda s, t: s.Rejoin(announce, timeout=t), timeout=HEALTH_TIMEOUT)

    def rejoin(
        self, base_version: int, base_params: torch.Tensor | None, buffered: list, timeout: float,
        base_applied: Mapping[str, int] | None = None,
    ) -> ps_pb2.RejoinReply:
        """`base_applied`: the pushes `base_params` hold (their pull's applied_pushes)."""
        request = ps_pb2.RejoinRequest(
            worker=self.worker, base_version=base_version, push_id=self.push_id, base_applied_pushes=base_applied or {}
        )
        # (message, tensor) for base params first, then each buffered gradient: the order
        # the PS reads them in (also from a stream).
        slots = [(request.base_params, base_params)] if base_params is not None else []
        for entry in buffered:
            message = request.buffered.add(
                seq=entry.seq, base_version=entry.base_version, count=entry.count, push_id=entry.push_id,
                progress=entry.progress, samples=entry.samples,
            )  # fmt: skip
            slots.append((message.gradient, entry.gradient))
        if self._streams(sum(tensor.numel() for _, tensor in slots), "float32"):
            # Every tensor in chunks: a rejoin of many large gradients stays far from
            # protobuf's 2 GB message limit.
            for message, tensor in slots:
                wire.fill_bytes(message, b"", list(tensor.shape))

            def stream() -> Iterator[wire.Framed]:  # a fresh one for each attempt
                chunks = (data for _, tensor in slots for data in wire.tensor_chunks(tensor))
                return wire.chunk_stream(ps_pb2.RejoinChunk(request=request), chunks)

            head = self._head
            return head.call(lambda s, t: head.framed.rejoin_stream(stream(), timeout=t), timeout=timeout)
        for message, tensor in slots:
            wire.fill(message, tensor)
        return self._head.call(lambda s, t: s.Rejoin(request, timeout=t), timeout=timeout)

    def report(
        self, steps: int, accuracy: float = -1.0, loss: float = -1.0, lost_updates: int = 0, timeout: float = REPORT_TIMEOUT,
        idle_seconds: float | None = None,
    ) -> None:
        """Best effort: progress is advisory, training never waits for it (the last report,
        after training, may wait longer: `timeout`). `idle_seconds`: the worker's waits, if
        not this client's own (a sharded worker waits in its ShardedClient)."""
        report = ps_pb2.ProgressReport(
            worker=self.worker, steps=steps, accuracy=accuracy, loss=loss, lost_updates=lost_updates,
            idle_seconds=self.idle_while_training if idle_seconds is None else idle_seconds,
        )  # fmt: skip
        try:
            self._head.call(lambda s, t: s.ReportProgress(report, timeout=t), timeout=timeout)
        except TrainthroughError:
            pass
