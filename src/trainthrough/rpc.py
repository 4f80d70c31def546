"""gRPC channels to parameter servers, and gRPC errors as trainthrough's own error kinds.

Used by the PS client of workers, by chain replicas talking to their successor and by the
master (local runtime, operator). One place decides message limits and reconnect timing;
a job's credentials (trainthrough.auth: its token, its certificates) ride on every channel
made for it.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import grpc

from trainthrough.auth import Credentials
from trainthrough.errors import NotHead, PermanentError, PSUnavailable, RejoinRequired, SharedSegmentGone, TrainthroughError
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.wire import FramedCalls

T = TypeVar("T")

# Large models travel as single messages: lift gRPC's 4 MB default (protobuf caps at 2 GB).
MAX_MESSAGE_BYTES = 2**31 - 1
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# A restarted PS must be noticed in tens of milliseconds, not after gRPC's default
# reconnect backoff (1 s growing to 120 s).
CHANNEL_OPTIONS = MESSAGE_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
    ("grpc.enable_retries", 0),
]


class Connection:
    """A channel and stub to one PS address.

    >>> conn = Connection("127.0.0.1:50051", credentials)
    >>> conn.call(lambda stub, t: stub.Health(ps_pb2.HealthRequest(), timeout=t), timeout=0.5)

    `credentials`: the job's (None: a plaintext channel without a token).
    """

    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self.address = address
        self.credentials = credentials
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            self.channel = credentials.channel(address, CHANNEL_OPTIONS)
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)
        self.framed = FramedCalls.on(self.channel)  # the RPCs that carry tensors, without copies

    def call(self, fn: Callable[[ps_pb2_grpc.ParameterServerStub, float], T], timeout: float) -> T:
        try:
            return fn(self.stub, timeout)
        except grpc.RpcError as error:
            raise translate(error, self.address) from error

    def health(self, timeout: float) -> ps_pb2.HealthReply | None:
        """The PS's Health reply, or None if it does not answer within `timeout` (the
        masters and the chaos Job read it to decide; a PS that is down is an answer too)."""
        try:
            return self.call(lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=timeout)
        except TrainthroughError:
            return None

    def close(self) -> None:
        self.channel.close()


class ConnectionPool:
    """One Connection per address, reused across calls; `close()` closes them all. Every
    connection presents `credentials` (one job's: the operator keeps a pool per job), or
    what a function given instead returns when the first connection is made (the operator
    reads them from a Secret made with the job)."""

    def __init__(self, credentials: Credentials | Callable[[], Credentials] | None = None) -> None:
        self._credentials = credentials
        self._by_address: dict[str, Connection] = {}

    @property
    def credentials(self) -> Credentials | None:
        if callable(self._credentials):
            self._credentials = self._credentials()
        return self._credentials

    def get(self, address: str) -> Connection:
        if address not in self._by_address:
            self._by_address[address] = Connection(address, self.credentials)
        return self._by_address[address]

    def close(self) -> None:
        for connection in self._by_address.values():
            connection.close()
        self._by_address.clear()


def translate(error: grpc.RpcError, address: str) -> TrainthroughError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    return translate_status(code, details, address)


def translate_status(code: grpc.StatusCode, details: str, address: str) -> TrainthroughError:
    """A PS's answer `code` (with its `details`) as the error kind callers act on; the
    same on every channel (gRPC, the TCP data channel)."""
    where = f"{address}: {details}"
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("NotHead"):
        return NotHead(where)
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("RejoinRequired"):
        return RejoinRequired(where)
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("SharedSegmentGone"):
        return SharedSegmentGone(where)
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return PSUnavailable(f"{code.name} {where}")
    return PermanentError(f"{code.name} {where}")
