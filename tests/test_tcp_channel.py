"""The TCP data channel (trainthrough/tcp_channel.py): a worker and a PS on different hosts
move tensors over a plain TCP stream, negotiated over gRPC, which carries everything else.
In-process PS (real gRPC, real sockets on loopback) and PSClient; the hostile cases speak
the frame format over a raw socket.

Covered:
- a PS that offers the channel gets its pushes and sends its parameters over it (shared
  memory off, as between hosts): the same exact SGD as over gRPC, float32 and bfloat16,
  the first pull of an unknown size, push then pull in one call, a pull at the current
  version without parameters; the parameters are the worker's own;
- every check of every channel holds: a NaN gradient is refused and counted, nothing is
  applied; a retried push id is a duplicate; a request naming another worker than the
  hello's is refused;
- hostile connections change nothing and are closed: no hello first, a bad magic, a frame
  longer than the model, a message that does not parse, a sender that stalls mid-frame,
  a connection cut in the middle of a gradient (nothing applied; the retry is applied once);
- with the job's token the channel requires it (a wrong one is UNAUTHENTICATED and
  counted); with TLS the worker presents the job's certificate and the push goes through;
- a data port that stops answering sends the worker back to gRPC, where it goes on;
- the PS process (`trainthrough ps --data-port 0`) offers it and logs each worker's
  connection (`data_channel_opened`);
- a mode that keeps gradients after their push (the chain's log) gets each request in
  memory of its own; any other mode's connection reuses one buffer; each connection is
  announced once (the PS's `data_channel_opened`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import RunningPS, StartPS, rejected, wait_until
from trainthrough import auth, tcp_channel, tls, wire
from trainthrough.errors import PermanentError, PSUnavailable
from trainthrough.proto import ps_pb2
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.service import create_data_channel
from trainthrough.ps.state import ParameterState
from trainthrough.events import read_events
from trainthrough.model import model_size
from trainthrough.runtime.local import free_port
from trainthrough.spec import OptimizerSpec, dump_job, load_job
from trainthrough.tcp_channel import FRAME, MAGIC, Kind, TcpChannelServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LR = 0.25  # a power of two: -LR * small integers is exact in float32
N = 12


def checkpoint_ps(start_ps: StartPS, tmp_path: Path, credentials: auth.Credentials | None = None) -> RunningPS:
    optimizer = OptimizerSpec(name="sgd", lr=LR)

    def build(core):
        store = CheckpointStore(tmp_path / "ckpt", keep=3)
        checkpointer = PeriodicCheckpointer(core, store, every_updates=1000, every_seconds=None)
        return CheckpointMode(
            core, checkpointer=checkpointer, optimizer=optimizer,
            initial_state=lambda: ParameterState(torch.zeros(N), optimizer),
        )  # fmt: skip

    ps = start_ps(build, mode="checkpoint", credentials=credentials)
    ps.mode.data_channel = create_data_channel(ps.mode, ("127.0.0.1", 0), N, credentials=credentials)
    ps.mode.data_channel.start()
    return ps


@pytest.fixture
def tcp_ps(start_ps: StartPS, tmp_path: Path):
    ps = checkpoint_ps(start_ps, tmp_path)
    yield ps
    ps.mode.data_channel.close()


def between_hosts(ps_client, ps: RunningPS, **options):
    """A client as on another host: no shared memory."""
    return ps_client([ps.address], shared_memory=False, **options)


def transfers_over_tcp(ps: RunningPS, worker: str) -> bool:
    return worker in ps.mode.data_channel.workers


# -- a raw connection, as a hostile or broken client speaks ----------------------------------------
def connect(ps: RunningPS) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", ps.mode.data_channel.port), timeout=5)
    return sock


def frame(kind: int, message: bytes, data: bytes = b"", *, magic: bytes = MAGIC, data_bytes: int | None = None) -> bytes:
    return FRAME.pack(magic, kind, 0, len(message), len(data) if data_bytes is None else data_bytes) + message + data


def reply(sock: socket.socket) -> tuple[int, bytes, bytes] | None:
    """(status, message, data) of the next reply, None if the PS closed the connection."""
    try:
        header = tcp_channel.read_header(sock)
    except (OSError, tcp_channel.ChannelBroken):
        return None
    if header is None:
        return None
    return header.status, tcp_channel.read_bytes(sock, header.message_bytes), tcp_channel.read_bytes(sock, header.data_bytes)


def hello(sock: socket.socket, worker: str = "worker-0", token: str = "") -> int:
    sock.sendall(frame(Kind.HELLO, ps_pb2.DataHello(worker=worker, token=token).SerializeToString()))
    answered = reply(sock)
    assert answered is not None
    return answered[0]


def push_frame(worker: str, push_id: int, gradient: torch.Tensor) -> bytes:
    request = ps_pb2.PushRequest(worker=worker, push_id=push_id, base_version=0, samples=32)
    wire.fill_bytes(request.gradient, b"", [gradient.numel()])
    return frame(Kind.PUSH, request.SerializeToString(), wire.tensor_bytes(gradient))


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while True:
            if not sock.recv(1 << 16):
                return True
    except ConnectionResetError:
        return True


INVALID_ARGUMENT = 3
UNAUTHENTICATED = 16


# -- the path ------------------------------------------------------------------------------------
def test_pushes_and_pulls_go_over_the_data_channel_with_the_same_sgd(tcp_ps, ps_client) -> None:
    client = between_hosts(ps_client, tcp_ps)
    version, params, _, _, _ = client.pull(-1)  # the size is not known yet: the whole model in one frame
    assert (version, torch.equal(params, torch.zeros(N))) == (0, True)
    assert transfers_over_tcp(tcp_ps, client.worker)

    grad = torch.arange(N, dtype=torch.float32) - 3.0
    assert client.push(grad, base_version=0, samples=32).version == 1
    version, params, _, _, _ = client.pull(0)
    assert version == 1 and torch.equal(params, -LR * grad)
    assert client.pull(1).params is None  # current: no parameters

    push_id = client.push_id
    reply_, pulled = client.push_and_pull(torch.full((N,), 2.0), base_version=1, samples=32)
    assert (reply_.version, reply_.params_version, pulled.version) == (2, 2, 2)
    assert torch.equal(pulled.params, -LR * grad - LR * 2.0)
    assert torch.equal(pulled.params, tcp_ps.pull()[1])
    assert pulled.applied_pushes == {client.worker: push_id}
    kept = pulled.params.clone()
    client.push_and_pull(torch.ones(N), base_version=2, samples=32)
    assert torch.equal(pulled.params, kept)  # the worker's own memory, not a reused buffer


def test_bfloat16_over_the_data_channel_keeps_float32_master_weights(tcp_ps, ps_client) -> None:
    client = between_hosts(ps_client, tcp_ps, transfer_dtype="bfloat16")
    client.pull(-1)
    _, pulled = client.push_and_pull(torch.full((N,), 0.5), base_version=0, samples=32)
    assert transfers_over_tcp(tcp_ps, client.worker)
    assert pulled.params.dtype == torch.float32
    assert torch.equal(pulled.params, torch.full((N,), -LR * 0.5).to(torch.bfloat16).float())
    assert tcp_ps.core.state.param.dtype == torch.float32


def test_a_ps_without_a_data_channel_is_spoken_to_over_grpc(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    ps.mode.data_channel.close()
    ps.mode.data_channel = None  # offers nothing
    client = between_hosts(ps_client, ps)
    client.pull(-1)
    _, pulled = client.push_and_pull(torch.arange(N, dtype=torch.float32), base_version=0, samples=32)
    assert torch.equal(pulled.params, -LR * torch.arange(N, dtype=torch.float32))


def test_a_data_port_that_stops_answering_sends_the_worker_back_to_grpc(tcp_ps, ps_client) -> None:
    client = between_hosts(ps_client, tcp_ps)
    client.pull(-1)
    client.push(torch.ones(N), base_version=0, samples=32)
    tcp_ps.mode.data_channel.close()  # gRPC still answers, the data port no longer does
    with pytest.raises(PSUnavailable):  # the call in flight breaks (the worker's retry loop retries it)
        client.push(torch.ones(N), base_version=1, samples=32)
    assert client.push(torch.ones(N), base_version=1, samples=32).version == 2  # over gRPC
    assert torch.equal(tcp_ps.pull()[1], torch.full((N,), -2 * LR))


# -- every check of every channel -----------------------------------------------------------------
def test_a_nan_gradient_over_the_data_channel_is_refused_counted_and_not_applied(tcp_ps, ps_client, registry) -> None:
    client = between_hosts(ps_client, tcp_ps)
    client.pull(-1)
    push_id = client.push_id
    with pytest.raises(PermanentError, match="INVALID_ARGUMENT.*non-finite"):
        client.push(torch.tensor([float("nan")] * N), base_version=0, samples=32)
    assert transfers_over_tcp(tcp_ps, client.worker)  # an answer, not a broken connection
    assert rejected(registry, "checkpoint", "non_finite") == 1
    assert tcp_ps.pull()[0] == 0 and client.push_id == push_id
    client.push(torch.ones(N), base_version=0, samples=32)
    client.push_id -= 1
    assert client.push(torch.ones(N), base_version=1, samples=32).duplicate
    assert tcp_ps.pull()[0] == 1


def test_a_request_for_another_worker_than_the_hellos_is_refused(tcp_ps) -> None:
    with connect(tcp_ps) as sock:
        assert hello(sock, "worker-0") == 0
        sock.sendall(push_frame("worker-1", 1, torch.ones(N)))
        status, details, _ = reply(sock)
        assert status == INVALID_ARGUMENT and b"on a connection of 'worker-0'" in details
    assert tcp_ps.pull()[0] == 0


@pytest.mark.parametrize(
    "hostile",
    ["no hello first", "bad magic", "longer than the model", "message that does not parse", "unknown kind"],
)
def test_hostile_frames_change_nothing_and_end_the_connection_or_are_refused(tcp_ps, hostile) -> None:
    with connect(tcp_ps) as sock:
        if hostile == "no hello first":
            sock.sendall(push_frame("worker-0", 1, torch.ones(N)))
            answered = reply(sock)
            assert answered is not None and answered[0] == INVALID_ARGUMENT
            assert closed(sock)
        else:
            assert hello(sock) == 0
            if hostile == "bad magic":
                sock.sendall(frame(Kind.PUSH, b"", magic=b"HTTP"))
                assert closed(sock)
            elif hostile == "unknown kind":
                sock.sendall(frame(9, b""))
                assert closed(sock)
            elif hostile == "longer than the model":
                # Says 1 GB follows: refused before any of it is read or allocated.
                sock.sendall(frame(Kind.PUSH, b"", data_bytes=1 << 30))
                status, details, _ = reply(sock)
                assert status == INVALID_ARGUMENT and b"at most" in details
                assert closed(sock)
            else:
                sock.sendall(frame(Kind.PUSH, b"\xff\xff\xff", wire.tensor_bytes(torch.ones(N))))
                status, details, _ = reply(sock)
                assert status == INVALID_ARGUMENT and b"does not parse" in details
    assert tcp_ps.pull()[0] == 0


def test_a_stall_mid_frame_or_a_cut_connection_applies_nothing_and_the_retry_applies_once(tcp_ps, monkeypatch, ps_client) -> None:
    monkeypatch.setattr(tcp_channel, "STALL_TIMEOUT", 0.3)
    whole = push_frame("worker-0", 7, torch.ones(N))
    with connect(tcp_ps) as sock:  # stalls: half the gradient, then nothing
        assert hello(sock) == 0
        sock.sendall(whole[: len(whole) - 20])
        assert closed(sock)  # the PS gave up on it after STALL_TIMEOUT
    with connect(tcp_ps) as sock:  # cut: half the gradient, then the connection closes
        assert hello(sock) == 0
        sock.sendall(whole[: len(whole) - 20])
    time.sleep(0.1)
    assert tcp_ps.pull()[0] == 0
    # The worker retries the same push id: applied once, then answered as a duplicate.
    client = between_hosts(ps_client, tcp_ps)
    client.pull(-1)
    client.push_id = 7
    assert client.push(torch.ones(N), base_version=0, samples=32).version == 1
    client.push_id = 7
    assert client.push(torch.ones(N), base_version=0, samples=32).duplicate
    assert tcp_ps.pull()[0] == 1


# -- credentials ---------------------------------------------------------------------------------
def test_with_a_token_the_data_channel_requires_it(start_ps, ps_client, tmp_path, registry) -> None:
    credentials = auth.Credentials(tls.identity("default", "job"), auth.new_token())
    ps = checkpoint_ps(start_ps, tmp_path, credentials)
    try:
        with connect(ps) as sock:
            assert hello(sock, token="not-the-token") == UNAUTHENTICATED
            assert closed(sock)
        assert rejected(registry, "checkpoint", "unauthenticated") == 1
        client = between_hosts(ps_client, ps, credentials=credentials)
        client.pull(-1)
        assert client.push(torch.ones(N), base_version=0, samples=32).version == 1
        assert transfers_over_tcp(ps, client.worker)
    finally:
        ps.mode.data_channel.close()


def test_with_tls_the_worker_presents_the_jobs_certificate_over_the_data_channel(start_ps, ps_client, tmp_path) -> None:
    identity = tls.identity("default", "job")
    credentials = auth.Credentials(identity, auth.new_token(), tls.generate([identity]))
    ps = checkpoint_ps(start_ps, tmp_path, credentials)
    try:
        client = between_hosts(ps_client, ps, credentials=credentials)
        client.pull(-1)
        _, pulled = client.push_and_pull(torch.ones(N), base_version=0, samples=32)
        assert torch.equal(pulled.params, torch.full((N,), -LR))
        assert transfers_over_tcp(ps, client.worker)
        with connect(ps) as sock:  # plaintext to a TLS port: no handshake, no hello, nothing read
            sock.sendall(push_frame("worker-1", 1, torch.ones(N)))
            assert closed(sock)
        assert ps.core.version == 1
    finally:
        ps.mode.data_channel.close()


# -- buffers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("own_buffers", [False, True])
def test_a_mode_that_keeps_gradients_gets_each_in_memory_of_its_own(own_buffers: bool) -> None:
    kept: list[memoryview] = []
    opened: list[str] = []

    def handle(kind, request, data, params_into):
        kept.append(data)
        return wire.Framed(ps_pb2.PushReply(version=len(kept)))

    server = TcpChannelServer(
        ("127.0.0.1", 0), handle=handle, status_of=lambda error, method: (None, str(error)), max_data_bytes=4 * N,
        own_buffers=own_buffers, on_opened=opened.append,
    )  # fmt: skip
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert hello(sock) == 0
            for value in (1.0, 2.0):
                sock.sendall(push_frame("worker-0", int(value), torch.full((N,), value)))
                assert reply(sock)[0] == 0
        first = torch.frombuffer(bytearray(kept[0]), dtype=torch.float32)
        assert torch.equal(first, torch.full((N,), 1.0 if own_buffers else 2.0))
        assert opened == ["worker-0"]  # once per connection (the PS logs data_channel_opened)
    finally:
        server.close()
    assert ChainReplica.keeps_gradients and not CheckpointMode.keeps_gradients


# -- the PS process ------------------------------------------------------------------------------
def test_the_ps_process_offers_its_data_port_and_logs_each_worker_that_takes_it(tmp_path, ps_client) -> None:
    """`trainthrough ps --data-port 0` (as the local runtime starts it; pods get 50053)."""
    job = load_job(EXAMPLES / "checkpoint.yaml")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(dump_job(job)))
    credentials = auth.Credentials(auth.job_identity(job), auth.new_token())  # the example asks for a token
    (tmp_path / "token").write_text(credentials.token)
    events = tmp_path / "events.jsonl"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainthrough.cli", "ps", "--job", str(job_file), "--name", "ps-0", "--port", str(port),
         "--data-port", "0", "--events", str(events), "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--token-file", str(tmp_path / "token")],
    )  # fmt: skip
    try:
        client = ps_client([f"127.0.0.1:{port}"], shared_memory=False, credentials=credentials)
        pulled = client.until_done(lambda: client.pull(-1), threading.Event(), chain=False)
        assert pulled.params.numel() == model_size(job.spec.model)
        gradient = torch.zeros(pulled.params.numel())
        assert client.push(gradient, base_version=pulled.version, samples=32).version == pulled.version + 1
        started = [e for e in read_events(events) if e["event"] == "ps_started"]
        assert started and started[0]["data_port"] == client.health().data_channel.port > 0
        assert wait_until(lambda: any(e["event"] == "data_channel_opened" and e["worker"] == "worker-0" for e in read_events(events)))
    finally:
        process.terminate()
        assert process.wait(30) == 0
