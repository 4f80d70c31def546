"""The local driver (control/supervising.py) against a fake runtime: no processes.

Covered:
- run_end's kills count only kills that fired: a kill deferred because its target was
  down, and never fired, is not counted; one that fired is;
- the local runtime's listening ports come from below the ephemeral range, never twice;
- the schedule is spec.chaos, the kills spec.randomChaos draws and --kill, by time.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from trainthrough.names import PSStart
from trainthrough.control.supervising import Supervisor
from trainthrough.control.runtime import Death
from trainthrough.events import EventLog, read_events
from trainthrough.metrics import create_metrics
from trainthrough.spec import parse_job

NOWHERE = "127.0.0.1:1"  # refuses at once: a health read of it answers nothing, fast


class FakeRuntime:
    """Processes that are alive when named in `alive` (start adds nothing: they boot forever)."""

    credentials = None  # its PS answer anyone

    def __init__(self, alive: set[str]) -> None:
        self.alive, self.killed = set(alive), []

    def start_ps(self, name: str, *, start: PSStart = PSStart.FRESH) -> str:
        return NOWHERE

    def start_worker(self, rank: int, ps: list[str]) -> None:
        pass

    def kill(self, name: str, grace: float = 0.0) -> None:
        self.killed.append(name)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.alive.discard(name)

    def address(self, name: str) -> str:
        return NOWHERE

    def running(self) -> set[str]:
        return set(self.alive)

    def deaths(self, timeout: float) -> list[Death]:
        return []


@pytest.mark.parametrize(("alive", "fired"), [(set(), 0), ({"ps-0"}, 1)])
def test_run_end_counts_only_kills_that_fired(alive: set[str], fired: int, tmp_path: Path) -> None:
    job = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
        "spec": {"consistency": "checkpoint", "model": "mlp", "dataset": "synthetic", "chaos": [{"target": "ps-head", "at": "1s"}]},
    })  # fmt: skip
    runtime = FakeRuntime(alive)
    events = EventLog(str(tmp_path / "events.jsonl"), source="master")
    supervisor = Supervisor(job, runtime, events, create_metrics(CollectorRegistry()))
    supervisor._apply(supervisor.master.start(time.time()))
    for kill in supervisor.schedule.due(1.0):
        supervisor._inject(kill)  # ps-0 down: deferred; up: fired
    summary = supervisor._finish()
    events.close()
    assert runtime.killed == ["ps-0"] * fired
    assert summary.kills == fired
    [end] = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "run_end"]
    assert end["kills"] == fired


def test_the_local_driver_injects_the_kills_drawn_from_a_failure_rate(tmp_path: Path) -> None:
    from trainthrough.control.schedule import planned_kills
    from trainthrough.spec import ChaosKill

    job = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
        "spec": {
            "consistency": "checkpoint", "model": "mlp", "dataset": "synthetic", "stop": {"duration": "30s"},
            "randomChaos": {"meanTimeBetweenFailures": "4s", "targets": ["ps-head", "worker-0"], "seed": 11},
        },
    })  # fmt: skip
    by_hand = ChaosKill(target="worker-0", at=29.0)
    runtime = FakeRuntime({"ps-0", "worker-0"})
    events = EventLog(str(tmp_path / "events.jsonl"), source="master")
    supervisor = Supervisor(job, runtime, events, create_metrics(CollectorRegistry()), kills=[by_hand])
    planned = planned_kills(job.spec)
    assert len(planned) > 3 and {k.target for k in planned} == {"ps-head", "worker-0"}
    assert supervisor.schedule.pending == sorted([*planned, by_hand], key=lambda k: k.at)
    supervisor._apply(supervisor.master.start(time.time()))
    for kill in supervisor.schedule.due(30.0):
        supervisor._inject(kill)
    events.close()
    # The first drawn kill fires (the PS is up); the rest wait for it to recover, which a
    # fake runtime never does.
    assert planned[0].target == "ps-head"
    assert runtime.killed == ["ps-0"]
    assert supervisor.master.state.chaos_fired == 1


def test_listening_ports_are_drawn_below_the_ephemeral_range_and_never_twice() -> None:
    # A process keeps its port across restarts: one in the ephemeral range could be taken
    # meanwhile as some outgoing connection's source port, and its restart fail to bind.
    from trainthrough.runtime.local import _ephemeral_low, free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < _ephemeral_low() for p in ports)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[-1]))  # free indeed
