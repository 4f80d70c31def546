"""Shared fixtures of the parameter-server integration tests (test_ps_service.py,
test_chain.py, test_stateless.py).

- `registry` / `metrics`: a fresh Prometheus CollectorRegistry per test (never the global one);
- `events_path`: the run's JSONL event log inside tmp_path;
- `start_ps`: builds a ParameterServerCore, the mode object around it and a started gRPC
  server on 127.0.0.1 port 0 (trainthrough.ps.service.create_server), then starts the mode,
  as ps/serving.py does; everything is stopped at teardown;
- `RunningPS.stub`, `ps_client`, `chain_master`: raw gRPC stubs, PSClients and ChainMasters,
  closed at teardown;
- an autouse guard that fails a test which leaves non-daemon threads behind;
- the Kubernetes API emulator's fixtures `kube` and `run_operator`, from kube_fixtures.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
import torch
from prometheus_client import CollectorRegistry

from trainthrough import wire
from trainthrough.auth import Credentials
from trainthrough.control.chain_master import ChainMaster
from trainthrough.events import EventLog
from trainthrough.metrics import Metrics, create_metrics
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.ps.core import ParameterServerCore
from trainthrough.ps.mode import Mode
from trainthrough.ps.service import create_server
from trainthrough.rpc import MESSAGE_OPTIONS
from trainthrough.worker.client import PSClient

pytest_plugins = ["kube_fixtures"]

TRAININGJOB = "itest"
# Background threads of the modes: stopped (or finished) before the event log closes.
MODE_THREADS = ("chain-forwarder", "rejoin-window", "checkpoint-timer")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def tensor_msg(values: torch.Tensor, dtype: str = "float32") -> ps_pb2.Tensor:
    return wire.encode(values, dtype)


@dataclass
class RunningPS:
    """One in-process parameter server: core, mode and its gRPC server."""

    name: str
    core: ParameterServerCore
    mode: Mode
    server: grpc.Server
    address: str
    events: EventLog
    _channel: grpc.Channel | None = None
    stopped: bool = False
    mode_started: bool = False
    mode_stopped: bool = False

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=MESSAGE_OPTIONS)
        return self._channel

    @property
    def stub(self) -> ps_pb2_grpc.ParameterServerStub:
        """Plain protobuf messages, as any gRPC client sends them."""
        return ps_pb2_grpc.ParameterServerStub(self.channel)

    @property
    def framed(self) -> wire.FramedCalls:
        """The tensor-carrying RPCs as trainthrough's own clients call them."""
        return wire.FramedCalls.on(self.channel)

    def start_mode(self) -> None:
        self.mode.start()
        self.mode_started = True

    def stop(self, grace: float | None = 0) -> None:
        """Stop serving (what a killed process looks like to its peers)."""
        self.server.stop(grace).wait(10)
        self.stopped = True

    def pull(self, timeout: float = 10.0) -> tuple[int, torch.Tensor]:
        reply = self.stub.Pull(ps_pb2.PullRequest(worker="test", have_version=-1), timeout=timeout)
        return reply.version, wire.decode(reply.params, what="params").clone()

    def health(self, timeout: float = 5.0) -> ps_pb2.HealthReply:
        return self.stub.Health(ps_pb2.HealthRequest(), timeout=timeout)

    def close(self) -> None:
        if self.mode_started and not self.mode_stopped:
            self.mode_stopped = True
            self.mode.stop()
        self.server.stop(0).wait(10)
        # grpc.Server never shuts down the executor it was given; its worker threads are
        # not daemons, so shut it down here (waiting for handlers still running).
        self.server._state.thread_pool.shutdown(wait=True, cancel_futures=True)
        if self._channel is not None:
            self._channel.close()


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running after its fixtures are torn down."""
    before = set(threading.enumerate())
    yield

    def leftovers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]

    if not wait_until(lambda: not leftovers(), timeout=5.0, interval=0.02):
        pytest.fail(f"test left non-daemon threads behind: {[t.name for t in leftovers()]}")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return create_metrics(registry)


@pytest.fixture
def events_path(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


def rejected(registry: CollectorRegistry, mode: str, reason: str, role: str = "standalone") -> float:
    value = registry.get_sample_value(
        "trainthrough_ps_rejected_pushes_total",
        {"trainingjob": TRAININGJOB, "mode": mode, "role": role, "reason": reason},
    )
    return value or 0.0


StartPS = Callable[..., RunningPS]


@pytest.fixture
def start_ps(metrics: Metrics, events_path: Path) -> Iterator[StartPS]:
    """start_ps(build, name=, mode=, updates=, expected_workers=, sync_timeout=, start_mode=, credentials=)

    `build(core) -> Mode` makes the mode object; the server is started before the mode, as
    in ps/serving.py. With start_mode=False the test calls `ps.start_mode()` itself.
    """
    running: list[RunningPS] = []

    def start(
        build: Callable[[ParameterServerCore], Mode],
        *,
        name: str = "ps-0",
        mode: str = "checkpoint",
        updates: str = "async",
        expected_workers: int = 1,
        sync_timeout: float = 10.0,
        start_mode: bool = True,
        credentials: Credentials | None = None,
    ) -> RunningPS:
        events = EventLog(events_path, source=name)
        core = ParameterServerCore(
            name=name,
            mode=mode,
            updates=updates,
            expected_workers=expected_workers,
            events=events,
            metrics=metrics,
            trainingjob=TRAININGJOB,
            sync_timeout=sync_timeout,
        )
        mode_obj = build(core)
        server, port = create_server(mode_obj, "127.0.0.1:0", max_workers=16, credentials=credentials)
        server.start()
        ps = RunningPS(name, core, mode_obj, server, f"127.0.0.1:{port}", events)
        running.append(ps)
        if start_mode:
            ps.start_mode()
        return ps

    before = set(threading.enumerate())
    yield start
    for ps in reversed(running):
        ps.close()

    def mode_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.name in MODE_THREADS and t.is_alive()]

    # Let the modes' own (daemon) threads finish before their event logs close. One still
    # running (a stateless window left open by a failed test) may still emit: then the
    # logs stay open rather than have it write to a closed or reused descriptor.
    if wait_until(lambda: not mode_threads(), timeout=5.0, interval=0.02):
        for ps in running:
            ps.events.close()


@pytest.fixture
def ps_client() -> Iterator[Callable[..., PSClient]]:
    """ps_client(addresses, worker, call_timeout=) -> PSClient, closed at teardown."""
    clients: list[PSClient] = []

    def make(addresses: list[str], worker: str = "worker-0", call_timeout: float = 10.0, **options) -> PSClient:
        client = PSClient(addresses, worker, call_timeout=call_timeout, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def chain_master() -> Iterator[Callable[[list[tuple[str, str]]], ChainMaster]]:
    masters: list[ChainMaster] = []

    def make(members: list[tuple[str, str]]) -> ChainMaster:
        master = ChainMaster(members)
        masters.append(master)
        return master

    yield make
    for master in masters:
        master.close()
