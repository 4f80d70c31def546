"""Tests for trainthrough.control.schedule, the fault schedule and target resolution.

Covered:
- KillSchedule.of orders kills by time (stable for equal times) without touching the
  caller's list; due(elapsed) hands out every kill at or before `elapsed` exactly once,
  in time order, and records it in `fired`; a call before any kill is due gives nothing;
  a late call hands out several at once; next_at follows the pending kills and is None
  when none is left; an empty schedule;
- resolve_target: ps-head and ps-tail follow the current chain (head-first), the same
  process when only one PS runs; ps-<i> indexes the chain order, worker-<i> the workers;
  out-of-range indexes, an empty chain and malformed targets raise UnknownTarget (a
  ValueError) whose message names the target; `random` draws any PS or worker, the same
  one for the same seed.
"""

from __future__ import annotations

import pytest

from trainthrough.control.schedule import KillSchedule, UnknownTarget, resolve_target
from trainthrough.spec import ChaosKill


def _kill(target: str, at: float) -> ChaosKill:
    return ChaosKill(target=target, at=at)


def _targets(kills: list[ChaosKill]) -> list[str]:
    return [k.target for k in kills]


# -- KillSchedule ------------------------------------------------------------------------


def test_of_orders_by_time_stably_and_copies() -> None:
    kills = [_kill("worker-0", 30.0), _kill("ps-head", 10.0), _kill("ps-tail", 30.0), _kill("ps-1", 20.0)]
    schedule = KillSchedule.of(kills)
    assert _targets(schedule.pending) == ["ps-head", "ps-1", "worker-0", "ps-tail"]
    assert _targets(kills) == ["worker-0", "ps-head", "ps-tail", "ps-1"]
    assert schedule.fired == []
    assert schedule.next_at == 10.0


def test_due_hands_out_each_kill_once_in_time_order() -> None:
    schedule = KillSchedule.of([_kill("ps-tail", 20.0), _kill("ps-head", 10.0), _kill("worker-1", 35.5)])
    assert schedule.due(0.0) == []
    assert schedule.due(9.999) == []
    assert schedule.next_at == 10.0

    assert _targets(schedule.due(10.0)) == ["ps-head"]  # exactly at its time
    assert schedule.due(10.0) == []  # never twice
    assert schedule.due(15.0) == []
    assert schedule.next_at == 20.0

    assert _targets(schedule.due(20.5)) == ["ps-tail"]
    assert schedule.next_at == 35.5
    assert _targets(schedule.due(1000.0)) == ["worker-1"]
    assert schedule.next_at is None
    assert schedule.due(2000.0) == []
    assert _targets(schedule.fired) == ["ps-head", "ps-tail", "worker-1"]
    assert schedule.pending == []


def test_a_late_call_hands_out_every_overdue_kill_in_order() -> None:
    schedule = KillSchedule.of([_kill("ps-2", 3.0), _kill("ps-0", 1.0), _kill("ps-1", 2.0), _kill("worker-0", 9.0)])
    assert _targets(schedule.due(5.0)) == ["ps-0", "ps-1", "ps-2"]
    assert _targets(schedule.pending) == ["worker-0"]
    assert schedule.next_at == 9.0


def test_kills_at_the_same_time_fire_together() -> None:
    schedule = KillSchedule.of([_kill("ps-head", 5.0), _kill("worker-0", 5.0)])
    assert _targets(schedule.due(5.0)) == ["ps-head", "worker-0"]
    assert schedule.next_at is None


def test_empty_schedule() -> None:
    schedule = KillSchedule.of([])
    assert schedule.next_at is None
    assert schedule.due(100.0) == []
    assert schedule.fired == []


# -- resolve_target ------------------------------------------------------------------------

CHAIN = ["ps-b", "ps-c", "ps-a"]  # head-first, after a failover reordered it
WORKERS = ["worker-0", "worker-1"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("ps-head", "ps-b"),
        ("ps-tail", "ps-a"),
        ("ps-0", "ps-b"),
        ("ps-1", "ps-c"),
        ("ps-2", "ps-a"),
        ("worker-0", "worker-0"),
        ("worker-1", "worker-1"),
    ],
)
def test_resolve_target(target: str, expected: str) -> None:
    assert resolve_target(target, CHAIN, WORKERS) == expected


def test_workers_are_resolved_by_position() -> None:
    # worker-1 finished and left the list: worker-1 now names the next worker.
    assert resolve_target("worker-1", CHAIN, ["worker-0", "worker-2"]) == "worker-2"


def test_head_and_tail_are_the_same_single_ps() -> None:
    assert resolve_target("ps-head", ["ps-0"], WORKERS) == "ps-0"
    assert resolve_target("ps-tail", ["ps-0"], WORKERS) == "ps-0"


@pytest.mark.parametrize(
    ("target", "ps_chain", "workers", "message"),
    [
        ("ps-3", CHAIN, WORKERS, "ps-3: only 3 ps processes are running"),
        ("ps-1", ["ps-0"], WORKERS, "ps-1: only 1 ps processes are running"),
        ("worker-2", CHAIN, WORKERS, "worker-2: only 2 worker processes are running"),
        ("worker-0", CHAIN, [], "worker-0: only 0 worker processes are running"),
        ("ps-0", [], WORKERS, "ps-0: only 0 ps processes are running"),
        ("ps-head", [], WORKERS, "ps-head: no parameter server is running"),
        ("ps-tail", [], WORKERS, "ps-tail: no parameter server is running"),
    ],
)
def test_out_of_range_targets(target: str, ps_chain: list[str], workers: list[str], message: str) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolve_target(target, ps_chain, workers)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "target",
    [
        "ps",
        "ps-",
        "ps-x",
        "ps--1",
        "ps-1.5",
        "worker",
        "worker-",
        "worker-one",
        "node-0",
        "PS-0",
        "ps-HEAD",
        "ps-head-0",
        "",
        pytest.param("ps-\u00b2", id="ps-superscript-two"),
    ],
)
def test_malformed_targets(target: str) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolve_target(target, CHAIN, WORKERS)
    assert str(info.value) == f"{target}: not ps-head, ps-tail, ps-<i>, worker-<i> or random"


def test_unknown_target_is_a_value_error() -> None:
    assert issubclass(UnknownTarget, ValueError)


def test_random_draws_any_live_process_repeatably_from_a_seed() -> None:
    import random

    chain, workers = ["ps-1", "ps-2"], ["worker-0", "worker-1"]
    draws = [resolve_target("random", chain, workers, random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same draw
    seen = {resolve_target("random", chain, workers, rng) for rng in [random.Random(7)] for _ in range(200)}
    assert seen == set(chain + workers)  # every process of the job can be hit
    with pytest.raises(UnknownTarget, match="random: no process is running"):
        resolve_target("random", [], [], random.Random(0))
