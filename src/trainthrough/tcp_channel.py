"""Tensors over a plain TCP stream between hosts: the data channel of a worker and a PS that
do not share memory (pods on a cluster), negotiated over gRPC, which stays the protocol,
the fallback and the carrier of everything else (Health, the chain, rejoins, progress).

Why: Python gRPC copies a message's bytes several times on each side; a socket read with
`recv_into` into a buffer allocated once, and written with `sendall` from memory the
tensor was written to once, copies none of them: 1.8-2.9x gRPC's push + pull at 10M-50M
parameters here (docs/benchmarks/ps_bench.md).

How it goes:
- A PS offers it in its Health reply (`DataChannelOffer`: a port on its host).
- A worker connects to that port on the host of the PS's gRPC address, with TLS and the
  job's certificate when the job uses TLS (the PS's must name the job, as on gRPC), and
  sends a `DataHello`: the worker it speaks for and the job's token. The PS checks both
  before it reads anything else; a refused connection is closed.
- Then each request is one frame: a fixed header (`FRAME`: magic, kind, status, the
  message's length, the data's length), a PushRequest or PullRequest, and the tensor's
  bytes. The reply is a frame of the same form, its status a gRPC status code, so that
  errors mean what they mean on gRPC (rpc.translate_status, ps/service.status_of).

What it checks, as every channel: the PS hands the request to the same handler the gRPC
server calls (dtype, shape, length, NaN, push-id dedup, the worker named by the hello); a
frame longer than the model's bytes, a message over MAX_MESSAGE_BYTES, a bad magic or a
stall mid-frame closes the connection with nothing applied. A connection that breaks
after a push was applied and before its reply arrived is retried under the same push id,
which the PS answers as a duplicate.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import struct
import tempfile
import threading
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Callable

import grpc
import torch
from google.protobuf.message import Message

from trainthrough import tls, wire
from trainthrough.auth import Credentials
from trainthrough.errors import PSUnavailable, RejectReason, TrainthroughError, WireError
from trainthrough.proto import ps_pb2
from trainthrough.rpc import translate_status

log = logging.getLogger(__name__)

MAGIC = b"TTD1"
FRAME = struct.Struct("!4sBBIQ")  # magic, kind, status (a gRPC code), message bytes, data bytes
MAX_MESSAGE_BYTES = 1 << 20  # a request's message without its tensor is far smaller
HELLO_TIMEOUT = 5.0  # seconds a new connection has to say who it is
STALL_TIMEOUT = 10.0  # seconds without a byte in the middle of a frame: the sender stalled
MAX_CONNECTIONS = 256  # at once: connections beyond are closed at once (clients fall back)
MAX_NAME = 253  # characters of the worker a hello names
MAX_REPLY_DATA_BYTES = 1 << 36  # a reply's tensor: far above any model a PS holds
OK = grpc.StatusCode.OK.value[0]


class Kind(IntEnum):
    HELLO = 1
    PUSH = 2  # a PushRequest, the gradient's bytes beside it; the reply: PushReply (+ parameters)
    PULL = 3  # a PullRequest; the reply: PullReply (+ parameters)
    REPLY = 4


REQUESTS: dict[Kind, type[Message]] = {Kind.PUSH: ps_pb2.PushRequest, Kind.PULL: ps_pb2.PullRequest}
REPLIES: dict[Kind, type[Message]] = {Kind.PUSH: ps_pb2.PushReply, Kind.PULL: ps_pb2.PullReply}
STATUS = {code.value[0]: code for code in grpc.StatusCode}


class ChannelBroken(PSUnavailable):
    """The connection closed, timed out or sent what is not a frame: nothing more is read
    from it (a request in flight may or may not have been applied: retried by push id)."""


@dataclass(frozen=True)
class Header:
    kind: Kind
    status: int
    message_bytes: int
    data_bytes: int


def _read_exactly(sock: socket.socket, target: memoryview) -> None:
    while len(target):
        received = sock.recv_into(target)
        if not received:
            raise ChannelBroken("the connection closed in the middle of a frame")
        target = target[received:]


def read_header(sock: socket.socket) -> Header | None:
    """The next frame's header; None if the peer closed the connection between frames."""
    raw = bytearray(FRAME.size)
    view = memoryview(raw)
    first = sock.recv_into(view)
    if not first:
        return None
    _read_exactly(sock, view[first:])
    magic, kind, status, message_bytes, data_bytes = FRAME.unpack(raw)
    if magic != MAGIC:
        raise WireError("data channel: not a trainthrough frame (bad magic)")
    try:
        known = Kind(kind)
    except ValueError:
        raise WireError(f"data channel: unknown frame kind {kind}") from None
    if message_bytes > MAX_MESSAGE_BYTES:
        raise WireError(f"data channel: a message of {message_bytes} bytes (at most {MAX_MESSAGE_BYTES})")
    return Header(known, status, message_bytes, data_bytes)


def read_bytes(sock: socket.socket, count: int) -> bytes:
    buffer = bytearray(count)
    _read_exactly(sock, memoryview(buffer))
    return bytes(buffer)


def send_frame(sock: socket.socket, kind: Kind, message: bytes, data: bytes | memoryview = b"", status: int = OK) -> None:
    """One frame; the data goes from its own memory (no joined copy of header and tensor)."""
    sock.sendall(FRAME.pack(MAGIC, kind, status, len(message), len(data)) + message)
    if len(data):
        sock.sendall(data)


def ssl_context(material: tls.TlsMaterial, *, server: bool) -> ssl.SSLContext:
    """The job's certificate presented, its CA required of the peer (mutual TLS, as on gRPC)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=material.ca.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    with tempfile.TemporaryDirectory(prefix="trainthrough-tls-") as scratch:  # ssl reads keys from files only
        folder = material.write(Path(scratch) / "tls")
        context.load_cert_chain(folder / tls.CERT_FILE, folder / tls.KEY_FILE)
    return context


def _peer_names(sock: ssl.SSLSocket) -> list[str]:
    certificate = sock.getpeercert() or {}
    return [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]


# -- the PS side -------------------------------------------------------------------------------
Handler = Callable[[Kind, Message, memoryview, memoryview], wire.Framed]
StatusOf = Callable[[Exception, str], tuple[grpc.StatusCode, str]]


class TcpChannelServer:
    """A PS's data port: a thread per connection, each reading its requests into a buffer
    of its own, allocated once and reused (`own_buffers`: a fresh one per request instead,
    for a mode that keeps a gradient after its push returned: the chain's log), and
    sending its replies' parameters from a second one (written by the pull, sent, reused).

    `handle(kind, request, data, params_into)` answers a request (the mode's push_then_pull
    or pull), the parameters written into `params_into` (max_data_bytes, writable);
    `status_of(error, method)` is the status an error answers (the gRPC server's);
    `max_data_bytes` bounds a request's tensor (the model's bytes in float32);
    `on_opened(worker)`: a worker's connection was accepted (its tensors come this way)."""

    def __init__(
        self, address: tuple[str, int], *, handle: Handler, status_of: StatusOf, max_data_bytes: int,
        credentials: Credentials | None = None, refused: Callable[[RejectReason], None] = lambda reason: None,
        own_buffers: bool = False, on_opened: Callable[[str], None] = lambda worker: None,
    ) -> None:
        self._handle, self._status_of, self._max_data_bytes = handle, status_of, max_data_bytes
        self._token = credentials.token if credentials is not None else None
        self._identity = credentials.identity if credentials is not None and credentials.tls is not None else None
        self._tls = ssl_context(credentials.tls, server=True) if credentials is not None and credentials.tls is not None else None
        self._refused = refused
        self._own_buffers = own_buffers
        self._on_opened = on_opened
        self._listener = socket.create_server(address, reuse_port=False)
        self.port = self._listener.getsockname()[1]
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._workers: dict[int, str] = {}  # id(socket) -> the worker its hello named
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def offer(self) -> ps_pb2.DataChannelOffer:
        return ps_pb2.DataChannelOffer(port=self.port)

    @property
    def workers(self) -> list[str]:
        """The workers connected now (their tensors come over this channel)."""
        with self._lock:
            return sorted(self._workers.values())

    def start(self) -> None:
        threading.Thread(target=self._accept, name="data-channel", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)  # the shutdown wakes the thread blocked in accept()
        with self._lock:
            for sock in list(self._open):
                _close(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:  # closed
                return
            if self._closed.is_set() or not self._slots.acquire(blocking=False):
                _close(sock)
                continue
            threading.Thread(target=self._serve, args=(sock,), name="data-connection", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HELLO_TIMEOUT)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            with self._lock:
                self._open.add(sock)
            worker = self._hello(sock)
            if worker is not None:
                with self._lock:
                    self._workers[id(sock)] = worker
                self._on_opened(worker)
                self._requests(sock, worker)
        except (OSError, ssl.SSLError, TrainthroughError) as error:
            log.debug("data connection closed: %s", error)
        finally:
            with self._lock:
                self._open.discard(sock)
                self._workers.pop(id(sock), None)
            _close(sock)
            self._slots.release()

    def _hello(self, sock: socket.socket) -> str | None:
        """The worker this connection speaks for, or None (refused: answered and closed)."""
        header = read_header(sock)
        if header is None or header.kind is not Kind.HELLO or header.data_bytes:
            return self._refuse(sock, grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be a DataHello")
        hello = ps_pb2.DataHello()
        try:
            hello.ParseFromString(read_bytes(sock, header.message_bytes))
        except Exception:  # DecodeError, or whatever a hostile encoding provokes
            return self._refuse(sock, grpc.StatusCode.INVALID_ARGUMENT, "DataHello does not parse")
        if self._token is not None and not hmac.compare_digest(hello.token.encode(), self._token.encode()):
            self._refused(RejectReason.UNAUTHENTICATED)
            return self._refuse(sock, grpc.StatusCode.UNAUTHENTICATED, "no valid token of this job")
        if self._identity is not None and self._identity not in _peer_names(sock):  # type: ignore[arg-type]
            self._refused(RejectReason.UNAUTHENTICATED)
            return self._refuse(sock, grpc.StatusCode.UNAUTHENTICATED, f"the client certificate does not name this job ({self._identity})")
        if not hello.worker or len(hello.worker) > MAX_NAME:  # (its requests' checks say the rest)
            return self._refuse(sock, grpc.StatusCode.INVALID_ARGUMENT, "DataHello.worker: empty or too long")
        send_frame(sock, Kind.REPLY, b"")
        return hello.worker

    def _refuse(self, sock: socket.socket, code: grpc.StatusCode, details: str) -> None:
        try:
            send_frame(sock, Kind.REPLY, details.encode()[:1024], status=code.value[0])
        except OSError:
            pass
        return None

    def _requests(self, sock: socket.socket, worker: str) -> None:
        buffer: torch.Tensor | None = None  # this connection's, reused by every request
        params: torch.Tensor | None = None  # the replies' parameters, likewise
        while not self._closed.is_set():
            sock.settimeout(None)  # between requests a worker computes: as long as it likes
            header = read_header(sock)
            if header is None:
                return
            sock.settimeout(STALL_TIMEOUT)
            method = header.kind.name.capitalize()
            limit = self._max_data_bytes if header.kind is Kind.PUSH else 0
            if header.kind not in REQUESTS or header.data_bytes > limit:
                why = f"{header.data_bytes} bytes of data (at most {limit})" if header.kind in REQUESTS else "not a request"
                self._refuse(sock, grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {why}")
                return  # the rest of the frame is not read: the connection ends
            raw = read_bytes(sock, header.message_bytes)
            if self._own_buffers or buffer is None or buffer.numel() < header.data_bytes:
                buffer = torch.empty(header.data_bytes, dtype=torch.uint8)
            data = memoryview(buffer.numpy())[: header.data_bytes]
            _read_exactly(sock, data)
            if self._own_buffers:
                buffer = None
            try:
                request = REQUESTS[header.kind]()
                try:
                    request.ParseFromString(raw)
                except Exception as error:
                    raise WireError(f"the request does not parse as {method}'s message ({type(error).__name__})") from None
                if request.worker != worker:
                    raise WireError(f"worker: {request.worker[:64]!r} on a connection of {worker!r}")
                if params is None:
                    params = torch.empty(self._max_data_bytes, dtype=torch.uint8)
                framed = self._handle(header.kind, request, data, memoryview(params.numpy()))
            except Exception as error:
                code, details = self._status_of(error, method)
                send_frame(sock, Kind.REPLY, details.encode(), status=code.value[0])
                continue
            send_frame(sock, Kind.REPLY, framed.message.SerializeToString(), framed.data)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- the worker side ---------------------------------------------------------------------------
def data_address(grpc_address: str, port: int) -> tuple[str, int]:
    """The data port on the host of a PS's gRPC address (`host:port`, `[v6]:port`)."""
    host = grpc_address.rsplit(":", 1)[0]
    return host.strip("[]"), port


class TcpConnection:
    """One worker's connection to one PS's data port."""

    def __init__(self, address: str, port: int, worker: str, credentials: Credentials | None, timeout: float) -> None:
        self.address = address  # the PS's gRPC address: errors name it
        host, port = data_address(address, port)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if credentials is not None and credentials.tls is not None:
                # The PS's certificate must name the job whatever host is dialled (a pod IP).
                sock = ssl_context(credentials.tls, server=False).wrap_socket(sock, server_hostname=credentials.identity)
        except (OSError, ssl.SSLError) as error:
            raise ChannelBroken(f"{address}: cannot open its data channel on port {port}: {error}") from None
        self._sock = sock
        token = credentials.token if credentials is not None else None
        hello = ps_pb2.DataHello(worker=worker, token=token or "")
        self._exchange(Kind.HELLO, hello.SerializeToString(), b"", timeout)

    def call(self, kind: Kind, request: Message, data: bytes | memoryview, timeout: float) -> tuple[Message, memoryview]:
        """The reply to `request` (with `data` beside it) and the reply's data bytes."""
        raw, reply_data = self._exchange(kind, request.SerializeToString(), data, timeout)
        reply = REPLIES[kind]()
        try:
            reply.ParseFromString(raw)
        except Exception as error:
            self.close()
            raise ChannelBroken(f"{self.address}: a {kind.name} reply that does not parse ({type(error).__name__})") from None
        return reply, reply_data

    def _exchange(self, kind: Kind, message: bytes, data: bytes | memoryview, timeout: float) -> tuple[bytes, memoryview]:
        try:
            self._sock.settimeout(timeout)
            send_frame(self._sock, kind, message, data)
            header = read_header(self._sock)
            if header is None or header.kind is not Kind.REPLY:
                raise ChannelBroken("the PS closed the data channel")
            if header.data_bytes > MAX_REPLY_DATA_BYTES:
                raise ChannelBroken(f"a reply with {header.data_bytes} bytes of data")
            raw = read_bytes(self._sock, header.message_bytes)
            # The reply's tensor in memory of its own: the caller keeps it (the parameters).
            received = torch.empty(header.data_bytes, dtype=torch.uint8)
            reply_data = memoryview(received.numpy())
            _read_exactly(self._sock, reply_data)
        except (OSError, ssl.SSLError, WireError, ChannelBroken) as error:
            self.close()
            raise ChannelBroken(f"{self.address}: data channel: {error}") from None
        if header.status != OK:
            code = STATUS.get(header.status, grpc.StatusCode.UNKNOWN)
            raise translate_status(code, raw.decode("utf-8", "replace"), self.address)
        return raw, reply_data

    def close(self) -> None:
        _close(self._sock)


class TcpChannel:
    """A worker's data channel to the PS it calls: negotiated from the PS's Health offer
    once per PS address, again after the connection broke (the next call reconnects).
    One connection at a time: a worker talks to one PS (the head)."""

    def __init__(self, worker: str, credentials: Credentials | None) -> None:
        self.worker = worker
        self.credentials = credentials
        self._address: str | None = None
        self._connection: TcpConnection | None = None
        self._refused: set[str] = set()  # addresses whose PS offers no data channel

    def connection_for(self, address: str, health: Callable[[], ps_pb2.HealthReply], timeout: float) -> TcpConnection | None:
        if address in self._refused:
            return None
        if address != self._address or self._connection is None:
            offer = health()
            self.close()
            if not offer.HasField("data_channel"):
                self._refused.add(address)
                return None
            try:
                self._connection = TcpConnection(address, offer.data_channel.port, self.worker, self.credentials, timeout)
            except TrainthroughError as error:
                # The PS answered Health just now, so its data port is closed to this worker
                # (a NetworkPolicy, a refusal): gRPC it is, for this address.
                log.warning("%s: no data channel (%s); gRPC from now on", address, error)
                self._refused.add(address)
                return None
            self._address = address
        return self._connection

    def forget(self, address: str) -> None:
        if address == self._address:
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._address, self._connection = None, None
