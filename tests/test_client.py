"""The worker's PS client alone (worker/client.py), against fake replicas: no PS, no gRPC.

Covered:
- a chain configuration in a Push or Pull reply that is newer than the one held is
  followed: its members become known (a replacement's address) and its head takes the
  next call; an older or equal epoch, and an empty configuration (another mode, a replica
  not configured yet), change nothing;
- a worker that learnt the replacement from a reply reaches it once every replica it
  started with is gone (the stranded worker of issue 12);
- idle time counts from the start of the attempt that failed: a PS that hangs for a
  whole deadline costs that deadline, not only the retries after it;
- the training loop: a sync push's wait for its round is counted (round_wait_seconds),
  apart from idle time (a failed attempt); an async push counts none.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from prometheus_client import CollectorRegistry

from trainthrough import wire
from trainthrough.errors import PSUnavailable
from trainthrough.events import EventLog
from trainthrough.metrics import create_metrics
from trainthrough.proto import ps_pb2
from trainthrough.spec import parse_job
from trainthrough.worker.client import PSClient, Pulled
from trainthrough.worker.training import Worker


def config(epoch: int, *addresses: str) -> ps_pb2.ChainConfig:
    return ps_pb2.ChainConfig(epoch=epoch, members=[ps_pb2.ChainMember(name=a, address=a) for a in addresses])


@dataclass
class FakeReplica:
    """Answers Push, Pull and Health with the configuration it holds; `down`: unreachable."""

    address: str
    chain: ps_pb2.ChainConfig = field(default_factory=ps_pb2.ChainConfig)
    down: bool = False
    calls: int = 0

    @property
    def framed(self) -> FakeReplica:
        return self

    @property
    def stub(self) -> FakeReplica:
        return self

    def call(self, fn: Callable[[Any, float], Any], timeout: float) -> Any:
        self.calls += 1
        if self.down:
            raise PSUnavailable(f"{self.address} is down")
        return fn(self, timeout)

    def push(self, request: wire.Framed, timeout: float) -> wire.Framed:
        return wire.Framed(ps_pb2.PushReply(version=1, incarnation="i", chain=self.chain))

    def pull(self, request: ps_pb2.PullRequest, timeout: float) -> wire.Framed:
        return wire.Framed(ps_pb2.PullReply(version=1, incarnation="i", chain=self.chain))

    def Health(self, request: ps_pb2.HealthRequest, timeout: float) -> ps_pb2.HealthReply:
        return ps_pb2.HealthReply(state="serving", chain=self.chain)


def client_of(*replicas: FakeReplica) -> PSClient:
    client = PSClient([r.address for r in replicas], worker="worker-0")
    for replica in replicas:
        client._pool._by_address[replica.address] = replica  # type: ignore[assignment]
    client._numel = 4  # small: unary calls, no streams
    return client


def fake(client: PSClient, replica: FakeReplica) -> None:
    client._pool._by_address[replica.address] = replica  # type: ignore[assignment]


GRADIENT = torch.zeros(4)


@pytest.mark.parametrize("call", ["push", "pull"])
def test_a_newer_configuration_in_a_reply_is_followed(call: str) -> None:
    a, b, c = FakeReplica("a", config(2, "a", "b")), FakeReplica("b"), FakeReplica("c")
    client = client_of(a, b)
    fake(client, c)
    assert client.discover() and client.epoch == 2 and client.address == "a"
    a.chain = config(3, "a", "b", "c")  # a replacement joined at the tail
    client.push_and_pull(GRADIENT, 0, 1) if call == "push" else client.pull(0)
    assert client.epoch == 3 and client._known == ["a", "b", "c"] and client.address == "a"
    a.chain = config(4, "b", "c")  # a replica holds a newer one than the worker: its head
    client.push_and_pull(GRADIENT, 0, 1) if call == "push" else client.pull(0)
    assert client.epoch == 4 and client.address == "b"


@pytest.mark.parametrize("held", [config(5, "a", "x"), config(4, "b", "x"), ps_pb2.ChainConfig()])
def test_an_older_equal_or_empty_configuration_changes_nothing(held: ps_pb2.ChainConfig) -> None:
    a = FakeReplica("a", config(5, "a", "b"))
    client = client_of(a, FakeReplica("b"))
    assert client.discover()
    a.chain = held
    client.push_and_pull(GRADIENT, 0, 1)
    client.pull(0)
    assert client.epoch == 5 and client._known == ["a", "b"] and client.address == "a"


def test_a_worker_that_learnt_the_replacement_reaches_it_once_every_first_replica_is_gone() -> None:
    a, b = FakeReplica("a", config(2, "a", "b")), FakeReplica("b", config(2, "a", "b"))
    client = client_of(a, b)
    assert client.discover()
    c = FakeReplica("c", config(3, "a", "b", "c"))
    fake(client, c)
    a.chain = config(3, "a", "b", "c")
    client.pull(0)  # learnt from a reply, while nothing failed
    a.down = b.down = True
    c.chain = config(5, "c")
    pushes = client.until_done(lambda: client.push(GRADIENT, 0, 1), threading.Event(), chain=True)
    assert pushes.version == 1 and client.address == "c" and client.epoch == 5


def test_idle_time_counts_from_the_start_of_the_attempt_that_failed() -> None:
    client = PSClient(["127.0.0.1:1"], worker="worker-0")
    attempts = []

    hung: list[float] = []

    def hung_once() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            time.sleep(0.3)  # the call's deadline runs out on a PS that does not answer
            hung.append(time.monotonic() - attempts[0])
            raise PSUnavailable("deadline exceeded")
        return "ok"

    try:
        assert client.until_done(hung_once, threading.Event(), chain=False) == "ok"
    finally:
        client.close()
    assert client.idle_seconds >= hung[0]  # the whole failed attempt, as the fake measured it


# -- the training loop's accounting (worker/training.py) ------------------------------------


class SlowRounds(PSClient):
    """A PS whose sync rounds close `round_seconds` after a push; the first `failures`
    attempts hang for `hang_seconds` and fail."""

    def __init__(self, round_seconds: float, failures: int = 0, hang_seconds: float = 0.0) -> None:
        super().__init__(["127.0.0.1:1"], worker="worker-1")
        self.round_seconds, self.failures, self.hang_seconds = round_seconds, failures, hang_seconds
        self.hung: list[float] = []  # each failed attempt's duration, as measured inside it
        self.answered: list[float] = []

    def push_and_pull(self, gradient, base_version, samples, timeout=None):  # type: ignore[override]
        started = time.monotonic()
        if self.failures:
            self.failures -= 1
            time.sleep(self.hang_seconds)
            self.hung.append(time.monotonic() - started)
            raise PSUnavailable("deadline exceeded")
        time.sleep(self.round_seconds)
        self.answered.append(time.monotonic() - started)
        self.push_id += 1
        return ps_pb2.PushReply(version=1, incarnation="i"), Pulled(1, None, "i", {}, 0)

    def report(self, *args: Any, **kwargs: Any) -> None:
        pass


def worker_with(client: PSClient, updates: str, tmp_path: Path) -> Worker:
    job = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
        "spec": {"consistency": "checkpoint", "updates": updates, "model": "mlp", "dataset": "synthetic", "workers": {"replicas": 2}},
    })  # fmt: skip
    return Worker(job, 1, client, EventLog(str(tmp_path / "events.jsonl"), source="worker-1"),
                  create_metrics(CollectorRegistry()), threading.Event())  # fmt: skip


@pytest.mark.parametrize(("updates", "counted"), [("sync", True), ("async", False)])
def test_a_sync_push_counts_its_wait_for_the_round_apart_from_idle_time(updates: str, counted: bool, tmp_path: Path) -> None:
    client = SlowRounds(round_seconds=0.2, failures=1, hang_seconds=0.3)
    worker = worker_with(client, updates, tmp_path)
    started = time.monotonic()
    try:
        worker.step()
    finally:
        client.close()
    elapsed = time.monotonic() - started
    [hung], [answered] = client.hung, client.answered
    assert client.idle_seconds >= hung  # the hung attempt: waiting for an unavailable PS
    if counted:
        # The answered attempt only: at least its own span, and less than the step's span
        # without the hung attempt (which would be in it if that were counted too).
        assert answered <= worker.stats.round_wait_seconds <= elapsed - hung
    else:
        assert worker.stats.round_wait_seconds == 0.0
