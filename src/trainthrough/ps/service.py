"""The gRPC face of a parameter server: maps RPCs to the mode and errors to status codes.

Used by ps/serving.py. Every failure becomes a gRPC status, never a crash: a malformed push
is INVALID_ARGUMENT and leaves the parameters untouched; a PS without state yet is
UNAVAILABLE; a chain replica that is not the head, or a stateless PS that needs the worker
to rejoin first, is FAILED_PRECONDITION with the reason in the details.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Callable, Iterator, TypeVar

import grpc

from trainthrough import wire
from trainthrough.errors import InvalidField, NotHead, PermanentError, RejoinRequired, TemporaryError, WireError
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.ps.core import NotServing
from trainthrough.ps.mode import Mode, Unsupported
from trainthrough.rpc import MESSAGE_OPTIONS

log = logging.getLogger(__name__)

T = TypeVar("T")



class ParameterServerServicer(ps_pb2_grpc.ParameterServerServicer):
    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def _call(self, context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except WireError as error:
            self.mode.core.count_rejected(_reason(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {error}")
        except (NotHead, RejoinRequired) as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(error).__name__}: {error}")
        except (NotServing, TemporaryError) as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: {error}")
        except Unsupported as error:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, str(error))
        except PermanentError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{method}: {error}")
        except Exception as error:  # a bug: report it to the caller, keep serving
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method}: {type(error).__name__}: {error}")
        raise AssertionError("unreachable: context.abort raises")

    def Pull(self, request, context):
        return self._call(context, "Pull", lambda: self.mode.pull(request))  # a wire.Framed

    def Push(self, request: wire.Framed, context):
        return self._call(context, "Push", lambda: self.mode.push_then_pull(request.message, request.data))  # a wire.Framed

    def PushStream(self, request_iterator, context):
        return self._call(context, "PushStream", lambda: self.mode.push_stream(request_iterator))

    def PullStream(self, request, context):
        framed = self._call(context, "PullStream", lambda: self.mode.pull(request))
        return _pull_chunks(framed)

    def Health(self, request, context):
        return self._call(context, "Health", self.mode.health)

    def ReportProgress(self, request, context):
        return self._call(context, "ReportProgress", lambda: self.mode.report_progress(request))

    def Replicate(self, request_iterator, context):
        return self._call(context, "Replicate", lambda: self.mode.replicate(request_iterator))

    def Reconfigure(self, request, context):
        return self._call(context, "Reconfigure", lambda: self.mode.reconfigure(request))

    def InstallState(self, request_iterator, context):
        return self._call(context, "InstallState", lambda: self.mode.install_state(request_iterator))

    def Rejoin(self, request, context):
        return self._call(context, "Rejoin", lambda: self.mode.rejoin(request))

    def RejoinStream(self, request_iterator, context):
        return self._call(context, "RejoinStream", lambda: self.mode.rejoin_stream(request_iterator))


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


def _reason(error: WireError) -> str:
    # Bounded label values for the rejected-pushes metric.
    if isinstance(error, InvalidField):
        return "field"
    message = str(error)
    if "non-finite" in message:
        return "non_finite"
    if ".dtype" in message:
        return "dtype"
    if ".shape" in message:
        return "shape"
    if ".data" in message:
        return "length"
    return "other"


def create_server(mode: Mode, address: str, max_workers: int | None = None) -> tuple[grpc.Server, int]:
    """A (not yet started) gRPC server for `mode` bound to `address`; (server, port)."""
    # Sync pushes and pre-seed rejoins each hold a thread until their round or window
    # closes: every worker must get one, with room left for Health and the chain.
    threads = max_workers or max(32, 2 * mode.core.expected_workers + 16)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=MESSAGE_OPTIONS)
    servicer = ParameterServerServicer(mode)
    handlers = _generated_handlers(servicer)
    # The RPCs that carry tensors keep their bytes out of protobuf (wire.Framed, the chunk
    # (de)serializers): the same encoding, without the copies.
    handlers["Push"] = grpc.unary_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=wire.framed_deserializer(ps_pb2.PushRequest, wire.PUSH_TENSOR_FIELD),
        response_serializer=wire.framed_serializer(wire.PUSH_REPLY_TENSOR_FIELD),
    )
    handlers["Pull"] = grpc.unary_unary_rpc_method_handler(
        servicer.Pull,
        request_deserializer=ps_pb2.PullRequest.FromString,
        response_serializer=wire.framed_serializer(wire.PULL_TENSOR_FIELD),
    )
    handlers["PullStream"] = grpc.unary_stream_rpc_method_handler(
        servicer.PullStream, request_deserializer=ps_pb2.PullRequest.FromString, response_serializer=wire.serialize_chunk
    )
    for name, chunk, reply in [
        ("PushStream", ps_pb2.PushChunk, ps_pb2.PushReply),
        ("RejoinStream", ps_pb2.RejoinChunk, ps_pb2.RejoinReply),
        ("InstallState", ps_pb2.StateChunk, ps_pb2.InstallReply),
        ("Replicate", ps_pb2.ReplicateChunk, ps_pb2.ReplicateReply),
    ]:
        handlers[name] = grpc.stream_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=wire.chunk_deserializer(chunk), response_serializer=reply.SerializeToString
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, handlers),))
    server.add_registered_method_handlers(wire.SERVICE, handlers)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the parameter server to {address}")
    return server, port
