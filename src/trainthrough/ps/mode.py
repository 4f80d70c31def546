"""What every consistency mode's parameter server answers, with the common behaviour.

The gRPC servicer (ps/service.py) calls these methods; ps/checkpointing.py, ps/chain.py and
ps/stateless.py each subclass `Mode` and override only what their mode changes. The mode
modules never import each other.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import ContextManager, Iterable

import torch

from trainthrough import wire
from trainthrough.errors import PermanentError, WireError
from trainthrough.proto import ps_pb2
from trainthrough.ps import requests
from trainthrough.ps.core import ParameterServerCore
from trainthrough.shared_memory import SharedMemoryServer
from trainthrough.tcp_channel import TcpChannelServer


class Unsupported(PermanentError):
    """The RPC has no meaning in this consistency mode."""


class Mode:
    name = "base"
    # Tensors through shared memory with workers on this host (serving.py offers it where
    # the host has it); None: gRPC only.
    shared: SharedMemoryServer | None = None
    # A TCP data port for workers on other hosts (serving.py); None: not offered.
    data_channel: TcpChannelServer | None = None
    # Whether a pushed gradient is kept after its push returned (the chain's log): then a
    # channel must not reuse the memory it received the gradient in.
    keeps_gradients = False

    def __init__(self, core: ParameterServerCore) -> None:
        self.core = core

    def start(self) -> None:
        """Load or build the initial state and begin serving (may return before serving)."""
        raise NotImplementedError

    def stop(self) -> None:
        """A graceful shutdown (SIGTERM): persist what the mode persists."""

    # -- worker-facing -----------------------------------------------------------------
    def push(
        self,
        request: ps_pb2.PushRequest,
        data: bytes | memoryview | None = None,
        *,
        gradient: tuple[torch.Tensor, float] | None = None,
    ) -> ps_pb2.PushReply:
        """Apply a push; `data`: the gradient's bytes when they travelled beside the request,
        `gradient`: the gradient already assembled from a stream, with its largest magnitude."""
        check_push(request)
        with ExitStack() as held:  # a gradient copied out of shared memory: until applied
            if gradient is None:
                if request.gradient.HasField("shared"):
                    data = held.enter_context(self._shared_bytes(request.worker, request.gradient, data, "gradient"))
                gradient = wire.decode_bounded(request.gradient, self.core.numel, what="gradient", data=data)
            started = self.core.started_pushes.get(request.worker, -1)  # before this push counts
            version, duplicate = self.core.push(request.worker, request.push_id, *gradient)
        reply = ps_pb2.PushReply(version=version, duplicate=duplicate, incarnation=self.core.incarnation, started_push_id=started)
        self.describe(reply)
        return reply

    def _shared_memory(self, what: str) -> SharedMemoryServer:
        """The PS's shared memory; WireError naming `what` where it offers none."""
        if self.shared is None:
            raise WireError(f"{what}: this PS does not move tensors through shared memory")
        return self.shared

    def _shared_bytes(self, worker: str, header: ps_pb2.Tensor, data: bytes | memoryview | None, what: str) -> ContextManager[memoryview]:
        """A private copy of the bytes a tensor names in shared memory (then checked as
        any), valid inside the block."""
        shared = self._shared_memory(f"{what}.shared")
        if header.data or (data is not None and len(data)):
            raise WireError(f"{what}: both shared and data are set")
        return shared.copy_out(worker, header, what)

    def describe(self, reply: ps_pb2.PullReply | ps_pb2.PushReply) -> None:
        """Add what this mode tells every worker in every reply (chain: its configuration)."""

    def push_then_pull(self, request: ps_pb2.PushRequest, data: bytes | memoryview, *, params_into: memoryview | None = None) -> wire.Framed:
        """A push and, when the request asks (pull_dtype), the parameters after it beside
        the reply: the pull that follows every push, in the same call. `params_into`: as
        for pull."""
        # The pull's fields are checked before the push is applied: a push is applied whole
        # with its reply, or not at all.
        if request.pull_dtype:
            wire.check_dtype(request.pull_dtype, "pull_dtype")
        elif request.HasField("pull_into"):
            raise WireError("pull_into: needs pull_dtype")
        if request.HasField("pull_into"):
            shared = self._shared_memory("pull_into")
            requests.worker(request.worker)
            shared.check_region(request.worker, request.pull_into, self.core.numel * wire.itemsize(request.pull_dtype), "pull_into")
        reply = self.push(request, data)
        if not request.pull_dtype:
            return wire.Framed(reply)
        pull = ps_pb2.PullRequest(worker=request.worker, have_version=-1, dtype=request.pull_dtype)
        if request.HasField("pull_into"):
            pull.into.CopyFrom(request.pull_into)
        pulled = self.pull(pull, params_into=params_into)
        reply.params_version = pulled.message.version
        reply.params.CopyFrom(pulled.message.params)
        reply.applied_pushes.update(pulled.message.applied_pushes)
        return wire.Framed(reply, pulled.data)

    def pull(self, request: ps_pb2.PullRequest, *, params_into: memoryview | None = None) -> wire.Framed:
        """The reply, its parameters' bytes beside it (serialized by wire.framed_serializer).
        `params_into`: writable bytes of at least the parameters' size that the caller
        sends from (a data channel's buffer, reused by each reply): the snapshot is written
        there, not into bytes of its own."""
        dtype = request.dtype or "float32"
        wire.check_dtype(dtype)  # also when the pull sends no parameters
        requests.version(request.have_version, "have_version")
        into, target = None, None
        if request.HasField("into"):
            shared = self._shared_memory("into")
            requests.worker(request.worker)  # its segment is found by its name
            into = lambda params: shared.write(request.worker, request.into, params, dtype, "into")  # noqa: E731
        elif params_into is not None:
            target = params_into[: self.core.numel * wire.itemsize(dtype)]
            into = lambda params: wire.copy_into(target, params, dtype)  # noqa: E731
        version, data, applied = self.core.pull(request.have_version, dtype, into)
        reply = ps_pb2.PullReply(
            version=version, incarnation=self.core.incarnation, applied_pushes=applied,
            started_push_id=self.core.started_pushes.get(request.worker, -1),
        )  # fmt: skip
        self.describe(reply)
        if data is None:
            return wire.Framed(reply)
        reply.params.dtype = dtype
        reply.params.shape.append(self.core.numel)
        if request.HasField("into"):
            reply.params.shared.CopyFrom(request.into)
            return wire.Framed(reply)
        return wire.Framed(reply, data if target is None else target)

    def push_stream(self, chunks: Iterable[wire.Framed]) -> ps_pb2.PushReply:
        """A push whose gradient arrives in chunks: each is checked and copied into place as
        it arrives; nothing is applied unless the whole gradient arrived intact."""
        request, data = wire.stream_payload(chunks, "request", "PushStream")
        if request.pull_dtype:
            raise WireError("pull_dtype is for Push only; pull a streamed model with PullStream")
        check_push(request)  # before any of the gradient is received
        [gradient] = wire.assemble_bounded([(request.gradient, self.core.numel, "gradient")], data)
        return self.push(request, gradient=gradient)

    def report_progress(self, request: ps_pb2.ProgressReport) -> ps_pb2.ProgressReply:
        requests.worker(request.worker)
        requests.counter(request.steps, "steps")
        requests.accuracy(request.accuracy)
        requests.loss(request.loss)
        requests.counter(request.lost_updates, "lost_updates")
        requests.seconds(request.idle_seconds, "idle_seconds")
        self.core.report_progress(request.worker, request.steps, request.accuracy, request.lost_updates, request.idle_seconds)
        return ps_pb2.ProgressReply()

    def health(self) -> ps_pb2.HealthReply:
        core = self.core
        state = core.state
        return ps_pb2.HealthReply(
            name=core.name,
            mode=self.name,
            state=self.serving_state(),
            version=core.version,
            updates_since_start=core.updates_since_start,
            started_version=core.started_version,
            restored_from=core.restored_from,
            applied_seq=state.seq if state is not None else -1,
            accuracy=core.accuracy,
            worker_steps=core.worker_steps,
            lost_updates=core.lost_updates,
            incarnation=core.incarnation,
            ready_at=core.ready_at,
            first_update_at=core.first_update_at,
            workers=core.worker_progress(),
            shared_memory=self.shared.offer() if self.shared is not None else None,
            data_channel=self.data_channel.offer() if self.data_channel is not None else None,
        )

    def serving_state(self) -> str:
        return "serving" if self.core.serving else "starting"

    # -- chain ---------------------------------------------------------------------------
    def replicate(self, chunks: Iterable[wire.Framed]) -> ps_pb2.ReplicateReply:
        raise Unsupported(f"Replicate: not a chain replica (mode {self.name})")

    def reconfigure(self, request: ps_pb2.ChainConfig) -> ps_pb2.ReconfigureReply:
        raise Unsupported(f"Reconfigure: not a chain replica (mode {self.name})")

    def install_state(self, chunks: Iterable[wire.Framed]) -> ps_pb2.InstallReply:
        raise Unsupported(f"InstallState: not a chain replica (mode {self.name})")

    # -- stateless -------------------------------------------------------------------------
    def rejoin(self, request: ps_pb2.RejoinRequest) -> ps_pb2.RejoinReply:
        raise Unsupported(f"Rejoin: not a stateless PS (mode {self.name})")

    def rejoin_stream(self, chunks: Iterable[wire.Framed]) -> ps_pb2.RejoinReply:
        raise Unsupported(f"RejoinStream: not a stateless PS (mode {self.name})")


def check_push(request: ps_pb2.PushRequest) -> None:
    """A push's fields, before its gradient is decoded or received."""
    requests.worker(request.worker)
    requests.counter(request.push_id, "push_id", low=1)
    requests.version(request.base_version, "base_version")
    requests.counter(request.samples, "samples")
