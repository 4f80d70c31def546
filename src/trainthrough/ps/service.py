"""The gRPC face of a parameter server: maps RPCs to the mode and errors to status codes.

Used by ps/serving.py. Every failure becomes a gRPC status, never a crash: a malformed
request (bytes that do not parse, a malformed tensor, a field out of range) is
INVALID_ARGUMENT and changes nothing; a PS without state yet is UNAVAILABLE; a chain
replica that is not the head, or a stateless PS that needs the worker to rejoin first, is
FAILED_PRECONDITION with the reason in the details. INTERNAL is kept for bugs. Details are
bounded (an error that quotes a huge input must not overflow gRPC's metadata limit).

Streams that carry tensors hold a server thread while their chunks arrive. A client that
stops sending mid-stream must not starve the others: a bounded number of streams run at
once, at most half of them from one client host (the rest of the pool stays free for
Health, pulls and unary pushes; a stream beyond either limit is RESOURCE_EXHAUSTED at once,
which clients retry), and a stream that sends nothing for STREAM_IDLE_TIMEOUT is cancelled.

Who may call is checked before any handler (trainthrough.auth's Guard: the job's token,
its client certificate); the standard health service (ps/health.py) is served beside the
PS's own, and alone on a plaintext port for probes (`health_server`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import grpc

from trainthrough import wire
from trainthrough.auth import Credentials
from trainthrough.errors import (
    InvalidField, NotHead, PermanentError, RejectReason, RejoinRequired, SharedSegmentGone, TemporaryError, WireError,
)  # fmt: skip
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.ps.core import NotServing, ParameterServerCore
from trainthrough.ps.health import PSHealth
from trainthrough.ps.mode import Mode, Unsupported
from trainthrough.rpc import MESSAGE_OPTIONS
from trainthrough.tcp_channel import Kind, TcpChannelServer

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DETAILS = 1024  # characters of an error's details: far below gRPC's 8 KB metadata limit
STREAM_IDLE_TIMEOUT = 10.0  # seconds without a chunk: the sender stalled (a 4 MB chunk takes ms)
UNARY_RESERVE = 8  # server threads streams never take: Health, pulls, unary pushes


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not parse: the handler answers INVALID_ARGUMENT (a
    deserializer that raised would make gRPC answer INTERNAL)."""

    error: str


def tolerant(deserialize: Callable[[bytes], T]) -> Callable[[bytes], T | Malformed]:
    def parse(raw: bytes) -> T | Malformed:
        try:
            return deserialize(raw)
        except Exception as error:  # DecodeError, or anything a hostile encoding provokes
            return Malformed(f"{type(error).__name__}: {error}")

    parse.tolerant = True  # type: ignore[attr-defined]
    return parse


def _well_formed(item: T | Malformed, method: str) -> T:
    if isinstance(item, Malformed):
        raise WireError(f"the request does not parse as {method}'s message ({item.error})")
    return item


class StreamGuard:
    """Bounds the streams in flight and cancels those that stall (see the module doc)."""

    def __init__(self, limit: int, idle_timeout: float | None = None) -> None:
        self.limit = limit
        # One client host may hold at most half the slots (workers on one host retry).
        self.per_peer = max(2, limit // 2)
        self.idle_timeout = STREAM_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._free = threading.BoundedSemaphore(limit)
        self._per_peer: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_chunk: dict[int, tuple[grpc.ServicerContext, float]] = {}
        threading.Thread(target=self._watch, name="stream-watchdog", daemon=True).start()

    @contextmanager
    def admit(self, context: grpc.ServicerContext, method: str) -> Iterator[Callable[[Iterable[T]], Iterator[T]]]:
        """A stream's slot, for the handler's duration; yields the wrapper of its chunks."""
        peer = _peer_host(context.peer())
        with self._lock:
            if self._per_peer.get(peer, 0) >= self.per_peer:
                raise StreamsExhausted(f"{method}: {self.per_peer} streams from {peer[:64]} are in flight; retry")
            if not self._free.acquire(blocking=False):
                raise StreamsExhausted(f"{method}: {self.limit} streams are in flight; retry")
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        key = id(context)
        self._touch(key, context)

        def chunks(iterator: Iterable[T]) -> Iterator[T]:
            for chunk in iterator:
                self._touch(key, context)
                yield _well_formed(chunk, method)
            # Received whole: what the handler does next (a sync round, a rejoin window)
            # is no stall of the sender's.
            with self._lock:
                self._last_chunk.pop(key, None)

        try:
            yield chunks
        finally:
            with self._lock:
                self._last_chunk.pop(key, None)
                self._per_peer[peer] -= 1
                if not self._per_peer[peer]:
                    del self._per_peer[peer]
            self._free.release()

    def _touch(self, key: int, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._last_chunk[key] = (context, time.monotonic())

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_timeout / 4))
            now = time.monotonic()
            with self._lock:
                stalled = [c for c, last in self._last_chunk.values() if now - last > self.idle_timeout]
            for context in stalled:
                context.cancel()  # the handler's next read of the stream raises


def _peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:53422` -> `ipv4:10.0.0.7` (the client's host, not its port)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class StreamsExhausted(TemporaryError):
    """Every stream slot is taken; the caller retries."""



class ParameterServerServicer(ps_pb2_grpc.ParameterServerServicer):
    def __init__(self, mode: Mode, streams: StreamGuard) -> None:
        self.mode = mode
        self.streams = streams

    def _call(self, context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError:  # the stream was cancelled (stalled, or the client went away)
            _abort(context, grpc.StatusCode.CANCELLED, f"{method}: the stream was cancelled")
        except Exception as error:
            _abort(context, *status_of(error, method, self.mode.core))
        raise AssertionError("unreachable: context.abort raises")

    def _unary(self, context: grpc.ServicerContext, method: str, request, fn: Callable[[Any], T]) -> T:
        return self._call(context, method, lambda: fn(_well_formed(request, method)))

    def _stream(self, context: grpc.ServicerContext, method: str, chunks, fn: Callable[[Iterator[Any]], T]) -> T:
        def run() -> T:
            with self.streams.admit(context, method) as guarded:
                return fn(guarded(chunks))

        return self._call(context, method, run)

    def Pull(self, request, context):
        return self._unary(context, "Pull", request, self.mode.pull)  # a wire.Framed

    def Push(self, request, context):
        return self._unary(context, "Push", request, lambda r: self.mode.push_then_pull(r.message, r.data))  # a wire.Framed

    def PushStream(self, request_iterator, context):
        return self._stream(context, "PushStream", request_iterator, self.mode.push_stream)

    def PullStream(self, request, context):
        framed = self._unary(context, "PullStream", request, self.mode.pull)
        return _pull_chunks(framed)

    def Health(self, request, context):
        return self._unary(context, "Health", request, lambda _: self.mode.health())

    def ReportProgress(self, request, context):
        return self._unary(context, "ReportProgress", request, self.mode.report_progress)

    def Replicate(self, request_iterator, context):
        return self._stream(context, "Replicate", request_iterator, self.mode.replicate)

    def Reconfigure(self, request, context):
        return self._unary(context, "Reconfigure", request, self.mode.reconfigure)

    def InstallState(self, request_iterator, context):
        return self._stream(context, "InstallState", request_iterator, self.mode.install_state)

    def Rejoin(self, request, context):
        return self._unary(context, "Rejoin", request, self.mode.rejoin)

    def RejoinStream(self, request_iterator, context):
        return self._stream(context, "RejoinStream", request_iterator, self.mode.rejoin_stream)


def status_of(error: Exception, method: str, core: ParameterServerCore) -> tuple[grpc.StatusCode, str]:
    """The status a call that raised `error` answers, on every channel (gRPC here, the TCP
    data channel): a malformed request is counted as rejected, a bug is logged."""
    if isinstance(error, WireError):
        core.count_rejected(_reason(error))
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(f"{method}: {error}")
    if isinstance(error, (NotHead, RejoinRequired, SharedSegmentGone)):
        return grpc.StatusCode.FAILED_PRECONDITION, bounded(f"{type(error).__name__}: {error}")
    if isinstance(error, StreamsExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, bounded(str(error))
    if isinstance(error, (NotServing, TemporaryError)):
        return grpc.StatusCode.UNAVAILABLE, bounded(f"{method}: {error}")
    if isinstance(error, Unsupported):
        return grpc.StatusCode.UNIMPLEMENTED, bounded(str(error))
    if isinstance(error, PermanentError):
        return grpc.StatusCode.FAILED_PRECONDITION, bounded(f"{method}: {error}")
    log.exception("%s failed", method)  # a bug: report it to the caller, keep serving
    return grpc.StatusCode.INTERNAL, bounded(f"{method}: {type(error).__name__}: {error}")


def bounded(details: str) -> str:
    """At most MAX_DETAILS characters (an error that quotes a huge input stays small)."""
    if len(details) > MAX_DETAILS:
        return f"{details[: MAX_DETAILS - 40]}... ({len(details)} characters in all)"
    return details


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    context.abort(code, bounded(details))


def _pull_chunks(framed: wire.Framed) -> Iterator[wire.Framed]:
    """The reply first, then the parameters' bytes in chunks (a snapshot taken under the
    PS's lock by the pull: later updates do not tear it)."""
    itemsize = wire.itemsize(framed.message.params.dtype or "float32")
    return wire.chunk_stream(ps_pb2.PullChunk(reply=framed.message), wire.byte_chunks(framed.data, itemsize))


def _generated_handlers(servicer: ParameterServerServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers the generated code would register, to override some of them."""

    class Capture:
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, generic_handlers) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers) -> None:
            assert service == wire.SERVICE, service
            self.handlers = dict(handlers)

    capture = Capture()
    ps_pb2_grpc.add_ParameterServerServicer_to_server(servicer, capture)
    return capture.handlers


def _reason(error: WireError) -> RejectReason:
    if isinstance(error, InvalidField):
        return RejectReason.FIELD
    message = str(error)
    if "non-finite" in message:
        return RejectReason.NON_FINITE
    if ".dtype" in message:
        return RejectReason.DTYPE
    if ".shape" in message:
        return RejectReason.SHAPE
    if ".data" in message:
        return RejectReason.LENGTH
    return RejectReason.OTHER


def create_server(
    mode: Mode, address: str, max_workers: int | None = None, *, credentials: Credentials | None = None, health: PSHealth | None = None
) -> tuple[grpc.Server, int]:
    """A (not yet started) gRPC server for `mode` bound to `address`; (server, port).

    `credentials`: the job's (its token and certificates required of every caller; None:
    plaintext, anyone); `health`: the grpc.health.v1 service to serve (default: its own)."""
    # Sync pushes and pre-seed rejoins each hold a thread until their round or window
    # closes: every worker must get one, with room left for Health and the chain.
    threads = max_workers or max(32, 2 * mode.core.expected_workers + 16)
    guard = credentials.guard(mode.core.count_rejected) if credentials is not None else None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), options=MESSAGE_OPTIONS, interceptors=[guard] if guard else None
    )
    (health or PSHealth(mode)).add_to(server)
    servicer = ParameterServerServicer(mode, StreamGuard(max(1, threads - max(UNARY_RESERVE, mode.core.expected_workers + 4))))
    handlers = _generated_handlers(servicer)
    # The RPCs that carry tensors keep their bytes out of protobuf (wire.Framed, the chunk
    # (de)serializers): the same encoding, without the copies.
    handlers["Push"] = grpc.unary_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=tolerant(wire.framed_deserializer(ps_pb2.PushRequest, wire.PUSH_TENSOR_FIELD)),
        response_serializer=wire.framed_serializer(wire.PUSH_REPLY_TENSOR_FIELD),
    )
    handlers["Pull"] = grpc.unary_unary_rpc_method_handler(
        servicer.Pull,
        request_deserializer=tolerant(ps_pb2.PullRequest.FromString),
        response_serializer=wire.framed_serializer(wire.PULL_TENSOR_FIELD),
    )
    handlers["PullStream"] = grpc.unary_stream_rpc_method_handler(
        servicer.PullStream, request_deserializer=tolerant(ps_pb2.PullRequest.FromString), response_serializer=wire.serialize_chunk
    )
    for name, chunk, reply in [
        ("PushStream", ps_pb2.PushChunk, ps_pb2.PushReply),
        ("RejoinStream", ps_pb2.RejoinChunk, ps_pb2.RejoinReply),
        ("InstallState", ps_pb2.StateChunk, ps_pb2.InstallReply),
        ("Replicate", ps_pb2.ReplicateChunk, ps_pb2.ReplicateReply),
    ]:
        handlers[name] = grpc.stream_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=tolerant(wire.chunk_deserializer(chunk)), response_serializer=reply.SerializeToString
        )
    for name, handler in handlers.items():  # the generated ones (Health, Reconfigure, ...)
        if handler.request_deserializer is not None and not getattr(handler.request_deserializer, "tolerant", False):
            handlers[name] = handler._replace(request_deserializer=tolerant(handler.request_deserializer))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, handlers),))
    server.add_registered_method_handlers(wire.SERVICE, handlers)
    port = credentials.bind(server, address) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the parameter server to {address}")
    return server, port


def health_server(health: PSHealth, address: str) -> tuple[grpc.Server, int]:
    """A (not yet started) plaintext server of the health service alone, for the kubelet's
    gRPC probes (which present no certificate and no token); (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health.add_to(server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the health service to {address}")
    return server, port


def create_data_channel(
    mode: Mode, address: tuple[str, int], numel: int, *, credentials: Credentials | None = None,
    on_opened: Callable[[str], None] = lambda worker: None,
) -> TcpChannelServer:
    """The TCP data channel beside the gRPC server (tcp_channel.py), not yet started: the
    same handlers behind it, the same statuses out of it, the same credentials required.
    `numel`: the model's size (no request carries more than its float32 bytes)."""

    def handle(kind: Kind, request, data: memoryview, params_into: memoryview) -> wire.Framed:
        if kind is Kind.PUSH:
            return mode.push_then_pull(request, data, params_into=params_into)
        return mode.pull(request, params_into=params_into)

    return TcpChannelServer(
        address, handle=handle, status_of=lambda error, method: status_of(error, method, mode.core),
        max_data_bytes=numel * wire.itemsize("float32"), credentials=credentials, refused=mode.core.count_rejected,
        own_buffers=mode.keeps_gradients, on_opened=on_opened,
    )  # fmt: skip
