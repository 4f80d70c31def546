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
    assert resolve_target(target, [CHAIN], WORKERS) == expected


def test_workers_are_resolved_by_position() -> None:
    # worker-1 finished and left the list: worker-1 now names the next worker.
    assert resolve_target("worker-1", [CHAIN], ["worker-0", "worker-2"]) == "worker-2"


def test_head_and_tail_are_the_same_single_ps() -> None:
    assert resolve_target("ps-head", [["ps-0"]], WORKERS) == "ps-0"
    assert resolve_target("ps-tail", [["ps-0"]], WORKERS) == "ps-0"


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
        resolve_target(target, [ps_chain], workers)
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
        resolve_target(target, [CHAIN], WORKERS)
    assert str(info.value) == f"{target}: not ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random"


def test_unknown_target_is_a_value_error() -> None:
    assert issubclass(UnknownTarget, ValueError)


def test_random_draws_any_live_process_repeatably_from_a_seed() -> None:
    import random

    chain, workers = ["ps-1", "ps-2"], ["worker-0", "worker-1"]
    draws = [resolve_target("random", [chain], workers, random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same draw
    seen = {resolve_target("random", [chain], workers, rng) for rng in [random.Random(7)] for _ in range(200)}
    assert seen == set(chain + workers)  # every process of the job can be hit
    with pytest.raises(UnknownTarget, match="random: no process is running"):
        resolve_target("random", [[]], [], random.Random(0))


# -- failures drawn from a failure rate (spec.randomChaos) ----------------------------------

from trainthrough.control.schedule import draw_kills, injects_failures, planned_kills  # noqa: E402
from trainthrough.spec import MAX_KILLS, RandomChaosSpec, SpecError, parse_job  # noqa: E402


def _spec(**spec: object):
    document = {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": spec}
    return parse_job(document).spec


RATE = RandomChaosSpec(mean_time_between_failures=60.0, targets=["ps-head", "worker-0", "worker-1"], start=5.0)


def test_a_seed_names_one_schedule_and_a_change_in_the_draw_is_caught() -> None:
    kills = draw_kills(RATE, 600.0, 7, 100)
    assert [(k.target, k.at) for k in kills] == [
        ("worker-1", 28.479), ("worker-1", 38.29), ("worker-0", 101.44), ("ps-head", 105.951), ("ps-head", 152.008),
        ("ps-head", 179.321), ("worker-1", 182.906), ("ps-head", 225.394), ("worker-0", 227.687), ("worker-0", 261.799),
        ("ps-head", 266.144), ("worker-1", 271.85), ("ps-head", 305.003), ("worker-1", 410.219), ("worker-0", 418.149),
        ("worker-1", 433.306), ("worker-1", 492.547),
    ]  # fmt: skip
    assert draw_kills(RATE, 600.0, 7, 100) == kills
    assert draw_kills(RATE, 600.0, 8, 100) != kills


def test_the_times_do_not_depend_on_the_targets() -> None:
    other = RATE.model_copy(update={"targets": ["ps-tail"]})
    assert [k.at for k in draw_kills(other, 600.0, 7, 100)] == [k.at for k in draw_kills(RATE, 600.0, 7, 100)]


def test_the_mean_gap_is_the_mtbf_and_targets_come_from_the_list() -> None:
    rate = RandomChaosSpec(mean_time_between_failures=10.0, targets=["ps-head", "worker-3", "random"])
    gaps: list[float] = []
    seen: dict[str, int] = {}
    for seed in range(50):
        kills = draw_kills(rate, None, seed, 100)
        assert len(kills) == 100  # no horizon: the bound ends the draw
        times = [0.0] + [k.at for k in kills]
        gaps += [b - a for a, b in zip(times, times[1:])]
        for k in kills:
            seen[k.target] = seen.get(k.target, 0) + 1
    mean = sum(gaps) / len(gaps)  # 5,000 exponential gaps: the standard error is 1.4% of the mean
    assert 9.5 < mean < 10.5, mean
    assert min(gaps) >= 0
    assert set(seen) == {"ps-head", "worker-3", "random"}
    assert all(1500 < n < 1830 for n in seen.values()), seen  # uniform: about 1,667 each


def test_start_until_and_max_kills_bound_the_draw() -> None:
    rate = RandomChaosSpec(mean_time_between_failures=1.0, targets=["ps-head"], start=30.0, grace_period=2.0)
    kills = draw_kills(rate, 40.0, 3, 100)
    assert kills and all(30.0 < k.at < 40.0 for k in kills)
    assert all(k.grace_period == 2.0 for k in kills)
    assert len(draw_kills(rate, None, 3, 4)) == 4
    assert draw_kills(rate, 30.0, 3, 100) == []


def test_the_spec_resolves_seed_horizon_and_bound() -> None:
    drawn = {"meanTimeBetweenFailures": "5s", "targets": ["ps-head"]}
    by_duration = planned_kills(_spec(seed=3, stop={"duration": "60s"}, randomChaos=drawn))
    assert by_duration and max(k.at for k in by_duration) < 60.0
    assert by_duration == planned_kills(_spec(stop={"duration": "60s"}, randomChaos={**drawn, "seed": 3}))
    assert by_duration != planned_kills(_spec(seed=4, stop={"duration": "60s"}, randomChaos=drawn))
    until = planned_kills(_spec(seed=3, stop={"duration": "60s"}, randomChaos={**drawn, "until": "20s"}))
    assert until == [k for k in by_duration if k.at < 20.0]
    fixed = [{"target": "worker-0", "at": i} for i in range(90)]
    unbounded = _spec(stop={"steps": 10}, chaos=fixed, randomChaos=drawn)
    assert len(planned_kills(unbounded)) == MAX_KILLS  # 90 fixed, 10 drawn
    assert len(planned_kills(_spec(stop={"steps": 10}, randomChaos={**drawn, "maxKills": 7}))) == 7


def test_planned_kills_merge_the_fixed_and_the_drawn_by_time() -> None:
    spec = _spec(
        seed=7, stop={"duration": "2m"}, chaos=[{"target": "worker-0", "at": "1m"}, {"target": "ps-head", "at": 0}],
        randomChaos={"meanTimeBetweenFailures": "20s", "targets": ["ps-tail"]},
    )  # fmt: skip
    kills = planned_kills(spec)
    assert [k.at for k in kills] == sorted(k.at for k in kills)
    assert {str(k) for k in spec.chaos} <= {str(k) for k in kills}
    assert {k.target for k in kills} == {"worker-0", "ps-head", "ps-tail"}
    assert len(kills) > 2
    schedule = KillSchedule.of(kills)
    assert schedule.due(1e9) == kills
    assert injects_failures(spec) and not injects_failures(_spec())
    assert planned_kills(_spec()) == []


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"randomChaos": {"targets": ["ps-head"]}}, "spec.randomChaos.meanTimeBetweenFailures", "required"),
        ({"randomChaos": {"meanTimeBetweenFailures": "0s", "targets": ["ps-head"]}}, "spec.randomChaos.meanTimeBetweenFailures", "must be > 0, got '0s'"),
        ({"randomChaos": {"meanTimeBetweenFailures": 5, "targets": []}}, "spec.randomChaos.targets", "list should have at least 1 item after validation, not 0, got a list"),
        ({"randomChaos": {"meanTimeBetweenFailures": 5, "targets": ["ps-head", "node-1"]}}, "spec.randomChaos.targets[1]", "must be ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random, got 'node-1'"),
        ({"randomChaos": {"meanTimeBetweenFailures": 5, "targets": ["ps-head", "worker-4"]}}, "spec.randomChaos.targets[1]", "no worker 4: workers.replicas is 1 (indexes 0..0), got 'worker-4'"),
        ({"randomChaos": {"meanTimeBetweenFailures": 5, "targets": ["ps-head"], "start": "1m", "until": "30s"}}, "spec.randomChaos.until", "must be later than start (no failure could be drawn)"),
        ({"randomChaos": {"meanTimeBetweenFailures": 5, "targets": ["ps-head"], "maxKills": 101}}, "spec.randomChaos.maxKills", "must be <= 100, got 101"),
    ],
)
def test_an_invalid_random_chaos_is_refused_at_its_path(spec: dict, path: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        _spec(**spec)
    assert {(e.path, e.message) for e in info.value.errors} == {(path, message)}
