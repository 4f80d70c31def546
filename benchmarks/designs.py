"""The designs `ps_throughput.py` measures side by side, each as a server (or rank 0)
and a worker loop, run in separate processes.

- `echo`: a raw gRPC unary call that sends the gradient's bytes and gets the same number
  of bytes back (no protobuf, no tensors): the gRPC limit for push + pull.
- `tcp`: the same round trip over a plain loopback TCP socket (`sendall` of a memoryview,
  `recv_into` a preallocated buffer, a thread per worker): what this machine's TCP moves,
  the limit of any channel that crosses it.
- `trainthrough`: the product's PS (ps/core.py, ps/service.py, async updates, SGD) and its
  client (worker/client.py): push the gradient and get the new parameters back, in one
  call (a streamed model: a push, then a pull).
- `trainthrough-bf16`: the same with `workers.transferDtype: bfloat16` (half the bytes on
  the wire, float32 master weights on the PS).
- `trainthrough-unary`: the same with streaming off: every tensor in one message (by
  default tensors above 64 MB stream in chunks).
- `trainthrough-stateless`, `trainthrough-chain`: the same over gRPC with a stateless PS
  (its workers rejoin first) and with a chain of two replicas (`ack: tail`: every update
  reaches the tail before it is acknowledged): the failure-free cost of each mode.
- `trainthrough-shm`: the same PS offering shared memory (shared_memory.py), as every PS
  does on a host that has it: the worker negotiates it over gRPC and the gradient and the
  parameters move through its segment, gRPC carrying the rest.
- `trainthrough-tcp`: the same PS offering its TCP data channel (tcp_channel.py), as every
  PS pod does for workers on other hosts: the tensors move over a plain TCP stream read
  into buffers allocated once, gRPC carrying the rest.
- `trainthrough-tcp-2-shards`, `trainthrough-tcp-4-shards`: the model cut into 2 or 4
  equal parts, each served by its own PS process over the TCP data channel, every worker
  pushing and pulling all of them at once through the product's ShardedClient (worker/sharded.py).
- `torch-rpc`: the parameter-server design of PyTorch's RPC tutorial, written here (not in
  the product): workers `rpc_sync` the gradient to the PS, which applies it under a lock and
  returns the parameters. TensorPipe over TCP (`uv`) so every design crosses loopback TCP.
- `allreduce`: torch.distributed all-reduce of the gradient with gloo among the workers
  (no PS at all; needs 2 workers or more).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable

import grpc
import torch

ECHO_METHOD = "/bench.Echo/Echo"
LR = 0.01
BIG_MESSAGES = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass
class ServerStats:
    cpu_seconds: float
    peak_rss_bytes: int
    rss_bytes: int
    shared_rss_bytes: int  # of the resident bytes, those of shared memory (the workers' segments)


def server_stats() -> ServerStats:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    with open("/proc/self/status") as status:
        shmem_kb = next((int(line.split()[1]) for line in status if line.startswith("RssShmem:")), 0)
    return ServerStats(usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, rss_pages * os.sysconf("SC_PAGE_SIZE"), shmem_kb * 1024)


def prepare_process() -> None:
    """What a trainthrough PS or worker process does at start (process.py), for every design
    alike: one torch thread, large buffers kept in the heap."""
    from trainthrough.process import configure_threads, tune_allocator

    configure_threads(1)
    tune_allocator()


def serve_until_told(control: Connection, stop: Callable[[], None]) -> None:
    """Answer `stats` requests from the benchmark until it says `stop`."""
    while True:
        command = control.recv()
        if command == "stats":
            control.send(server_stats())
        elif command == "stop":
            stop()
            control.send("stopped")
            return


def start_server(target: Callable[..., None], *args) -> tuple[multiprocessing.Process, Connection, int]:
    """Run `target(*args, control)` in a fresh process; (process, control, its port). The
    servers that report their idle footprint first have it skipped here."""
    ctx = multiprocessing.get_context("spawn")
    control, end = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, end), daemon=True)
    process.start()
    first = control.recv()
    port = first if isinstance(first, int) else control.recv()
    return process, control, port


def stop_server(process: multiprocessing.Process, control: Connection) -> None:
    control.send("stop")
    control.recv()
    process.join(30)


# -- echo --------------------------------------------------------------------------------------
def echo_server(numel: int, workers: int, control: Connection) -> None:
    prepare_process()
    control.send(server_stats())  # the baseline, before anything of the model's size exists
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers + 4), options=BIG_MESSAGES)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    control.send(port)
    serve_until_told(control, lambda: server.stop(0).wait())


def tcp_server(numel: int, workers: int, control: Connection) -> None:
    prepare_process()
    control.send(server_stats())
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    nbytes = numel * 4

    def serve(connection: socket.socket) -> None:
        buffer = memoryview(bytearray(nbytes))  # one per worker, reused
        with connection:
            while _recv_exactly(connection, buffer):
                connection.sendall(buffer)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the benchmark is done
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    control.send(listener.getsockname()[1])
    serve_until_told(control, listener.close)


def _recv_exactly(connection, buffer: memoryview) -> bool:
    """Fill `buffer` from `connection`; False if the peer closed first."""
    filled = 0
    while filled < len(buffer):
        got = connection.recv_into(buffer[filled:])
        if not got:
            return False
        filled += got
    return True


def tcp_worker(port: int, numel: int) -> Callable[[], None]:
    import socket

    connection = socket.create_connection(("127.0.0.1", port))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = memoryview(torch.randn(numel).numpy().tobytes())
    back = memoryview(bytearray(len(payload)))

    def step() -> None:
        # Send and receive at once: a round trip of this size would fill both socket
        # buffers if the worker sent everything before it read (as gRPC's streams do not).
        sender = threading.Thread(target=connection.sendall, args=(payload,))
        sender.start()
        assert _recv_exactly(connection, back)
        sender.join()

    return step


def echo_worker(port: int, numel: int) -> Callable[[], None]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=BIG_MESSAGES)
    echo = channel.unary_unary(ECHO_METHOD)
    payload = torch.randn(numel).numpy().tobytes()

    def step() -> None:
        reply = echo(payload, timeout=120)
        assert len(reply) == len(payload)

    return step


# -- trainthrough --------------------------------------------------------------------------------
def ps_core(name: str, mode: str, workers: int):
    """A PS core as a PS process builds one, its event log in a scratch folder."""
    from prometheus_client import CollectorRegistry

    from trainthrough.events import EventLog
    from trainthrough.metrics import create_metrics
    from trainthrough.ps.core import ParameterServerCore

    scratch = tempfile.mkdtemp(prefix=f"bench-{mode}-")
    return ParameterServerCore(
        name=name, mode=mode, updates="async", expected_workers=workers,
        events=EventLog(os.path.join(scratch, "events.jsonl"), source=name),
        metrics=create_metrics(CollectorRegistry()), trainingjob="bench",
    )  # fmt: skip


def serve_mode(mode, control: Connection, credentials=None) -> None:
    """Serve `mode` on a free loopback port, send the port, then answer until told to stop;
    `credentials`: the job's (trainthrough.auth), required of every caller."""
    from trainthrough.ps.service import create_server

    server, port = create_server(mode, "127.0.0.1:0", credentials=credentials)
    server.start()
    mode.start()
    control.send(port)
    serve_until_told(control, lambda: (mode.stop(), server.stop(0).wait()))


def trainthrough_server(
    numel: int, workers: int, control: Connection, credentials=None, channel: str = "grpc", mode: str = "checkpoint",
    name: str = "ps-0",
) -> None:
    """The product's PS in `mode`: checkpoint (checkpoints far apart: this measures the
    update path, not the disk), stateless (its rejoin window first), or one replica of a
    chain (`ack: tail`, configured by the benchmark once every replica is up). `channel`:
    what it offers beside gRPC (`shm`: shared memory, `tcp`: its TCP data channel)."""
    prepare_process()
    from trainthrough.ps.chain import ChainReplica
    from trainthrough.ps.checkpointing import CheckpointMode
    from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
    from trainthrough.ps.state import ParameterState
    from trainthrough.ps.stateless import StatelessMode
    from trainthrough.spec import OptimizerSpec, StatelessSpec

    control.send(server_stats())
    core = ps_core(name, mode, workers)
    optimizer = OptimizerSpec(name="sgd", lr=LR)

    def initial_state() -> ParameterState:
        return ParameterState(torch.zeros(numel), optimizer, copy=False)

    if mode == "stateless":
        served = StatelessMode(core, spec=StatelessSpec(), optimizer=optimizer, initial_state=initial_state, numel=numel, fallback=None)
    elif mode == "chain":
        served = ChainReplica(
            core, ack="tail", replicate_every=1, optimizer=optimizer, initial_state=initial_state, join=False, numel=numel
        )  # fmt: skip
    else:
        store = CheckpointStore(tempfile.mkdtemp(prefix="bench-checkpoints-"), keep=1)
        checkpointer = PeriodicCheckpointer(core, store, every_updates=10**9, every_seconds=None)
        served = CheckpointMode(core, checkpointer=checkpointer, optimizer=optimizer, initial_state=initial_state)
    if channel == "shm":
        from trainthrough.shared_memory import SharedMemoryServer

        served.shared = SharedMemoryServer(reuse_copies=not served.keeps_gradients)
    elif channel == "tcp":
        from trainthrough.ps.service import create_data_channel

        served.data_channel = create_data_channel(served, ("127.0.0.1", 0), numel, credentials=credentials)
        served.data_channel.start()
    serve_mode(served, control, credentials)


def configure_chain(ports: list[int]) -> None:
    """What the master does once a chain's replicas are up: publish the configuration
    (head first) to each of them."""
    from trainthrough.proto import ps_pb2, ps_pb2_grpc

    members = [ps_pb2.ChainMember(name=f"ps-{i}", address=f"127.0.0.1:{port}") for i, port in enumerate(ports)]
    config = ps_pb2.ChainConfig(epoch=1, members=members)
    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ps_pb2_grpc.ParameterServerStub(channel).Reconfigure(config, timeout=30)


def trainthrough_worker(port: int, numel: int, rank: int, rejoin: bool = False, **options) -> Callable[[], None]:
    """`rejoin`: first join a stateless PS's window, as a worker does (with no weights)."""
    from trainthrough.worker.client import PSClient

    client = PSClient([f"127.0.0.1:{port}"], f"worker-{rank}", call_timeout=120, **options)
    if rejoin:
        client.rejoin(base_version=-1, base_params=None, buffered=[], timeout=120)
    return client_steps(client, numel)


def client_steps(client, numel: int) -> Callable[[], None]:
    """A training worker's step through `client` (a PSClient, or the ShardedClient of every
    shard): push a gradient, follow the parameters after it."""
    # As a worker starts: the model from the PS (streamed over gRPC, its size then known,
    # so that the steps take the channel they would in training: a shared-memory segment
    # is sized by the model).
    client.pull(-1)
    gradient = torch.randn(numel) * 1e-3
    version = [-1]

    def step() -> None:
        reply, pulled = client.push_and_pull(gradient, base_version=version[0], samples=32)  # as the worker does
        version[0], params, _, _, _ = pulled or client.pull(version[0])
        assert params is not None and params.numel() == numel and reply.version >= 1

    return step


def shard_sizes(numel: int, shards: int) -> list[int]:
    """A flat vector of one parameter cut into `shards` parts as the product cuts a model
    (trainthrough.shards: balanced by bytes)."""
    from trainthrough.shards import partition

    return [shard.numel for shard in partition([numel], shards)]


def sharded_worker(ports: list[int], numel: int, rank: int, **options) -> Callable[[], None]:
    """One worker of a sharded PS, as the product's worker is one: its ShardedClient, every
    shard's push and pull at once, the parameters assembled into one flat vector."""
    from trainthrough.shards import partition
    from trainthrough.worker.client import PSClient
    from trainthrough.worker.sharded import ShardedClient

    clients = [PSClient([f"127.0.0.1:{port}"], f"worker-{rank}", call_timeout=120, **options) for port in ports]
    return client_steps(ShardedClient(clients, partition([numel], len(ports))), numel)


# -- torch.distributed.rpc (PyTorch's parameter-server tutorial design) ----------------------------
class _TutorialPS:
    """The tutorial's PS: one parameter tensor, SGD under a lock, the new values returned."""

    def __init__(self, numel: int) -> None:
        self.params = torch.zeros(numel)
        self.lock = threading.Lock()


_PS: _TutorialPS | None = None


def _update_and_fetch(gradient: torch.Tensor) -> torch.Tensor:
    assert _PS is not None
    with _PS.lock:
        _PS.params.add_(gradient, alpha=-LR)
        return _PS.params.clone()


def _rpc_options(workers: int):
    from torch.distributed import rpc

    return rpc.TensorPipeRpcBackendOptions(num_worker_threads=max(8, workers + 4), rpc_timeout=300, _transports=["uv"])


def torch_rpc_server(numel: int, workers: int, control: Connection, rpc_port: int) -> None:
    prepare_process()
    from torch.distributed import rpc

    global _PS
    control.send(server_stats())
    _PS = _TutorialPS(numel)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(rpc_port))
    rpc.init_rpc("ps", rank=0, world_size=workers + 1, rpc_backend_options=_rpc_options(workers))
    control.send(rpc_port)
    serve_until_told(control, lambda: rpc.shutdown())


def torch_rpc_worker(rpc_port: int, numel: int, rank: int, workers: int) -> Callable[[], None]:
    from torch.distributed import rpc

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(rpc_port))
    rpc.init_rpc(f"worker-{rank}", rank=rank + 1, world_size=workers + 1, rpc_backend_options=_rpc_options(workers))
    gradient = torch.randn(numel) * 1e-3

    def step() -> None:
        params = rpc.rpc_sync("ps", _update_and_fetch, args=(gradient,))
        assert params.numel() == numel

    return step


def torch_rpc_worker_done() -> None:
    from torch.distributed import rpc

    rpc.shutdown()


# -- gloo all-reduce -------------------------------------------------------------------------------
def allreduce_worker(port: int, numel: int, rank: int, workers: int) -> Callable[[], None]:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers)
    gradient = torch.randn(numel) * 1e-3

    def step() -> None:
        buffer = gradient.clone()
        dist.all_reduce(buffer)

    return step


def allreduce_worker_done() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def now() -> float:
    return time.perf_counter()
