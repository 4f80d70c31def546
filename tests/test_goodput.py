"""Tests for trainthrough.goodput (the account) and its live export by
control/recording.RecoveryMetrics (trainthrough_job_seconds_total). Hand-made inputs whose
answers are worked out in the comments; times are binary-exact, so sums are exact.

Covered:
- worker_account: a checkpoint kill whose waits fall in each phase (detect, waiting for
  the restart, restore), the startup before the first update, a restarted worker ready at
  its own start; a chain promotion (no restart: no waiting); a stateless run that trains
  through its outage (no wait: no detect/waiting badput, only its short rejoin block and
  what it dropped); a wait after the first update (the worker's backoff: restore), in no
  recovery (waiting), before the worker could train (startup, not twice); two recoveries
  that overlap (each second counted once); overlapping waits counted once; unplaced idle;
  lost steps as redo at the run's pace, redo at most the busy time; parts summing to the
  total on random inputs; no time is no ETTR;
- JobAccount: startup until the first update, a completed recovery's phases, redo, the
  unsettled time of a recovery in progress counted in no kind; where the workers train
  offline (stateless, hybrid), their reported waits instead of the outage, as restore,
  nothing held back, at most the time trained;
- the worker's PS client times each wait (worker/client.py PSClient.idled): a wait is one
  interval in Unix seconds as long as its idle seconds; waits less than IDLE_MERGE_GAP
  apart (the pause loop's) are one interval, waits further apart two; waits before the
  first acknowledged push are not reported as waits while training;
- RecoveryMetrics: a stateless job's counter from its workers' reported waits (job
  seconds: per worker); the counter's values after a recorded recovery and lost updates, a
  recovery in progress holding its time back (counters never go down), a suspended job's
  time standing still, a finished job's time stopping at its end, and the series removed.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from trainthrough.control.messages import RecoveryDone, UpdatesLost
from trainthrough.control.recording import RecoveryMetrics
from trainthrough.control.state import Kill, MasterState, Recovery
from trainthrough.control.vocabulary import JobPhase
from trainthrough.goodput import PRODUCTIVE, BadputKind, Goodput, JobAccount, Phases, WorkerLife, worker_account
from trainthrough.metrics import create_metrics
from trainthrough.errors import PSUnavailable
from trainthrough.spec import Mode, parse_job
from trainthrough.worker.client import IDLE_MERGE_GAP, PSClient

STARTUP, DETECT, WAITING, RESTORE, REDO = BadputKind


def kinds(account: Goodput) -> dict[BadputKind, float]:
    return {k: v for k, v in account.badput.items() if v}


# -- the workers' account ------------------------------------------------------------------------


def test_a_checkpoint_kill_whose_waits_fall_in_each_phase() -> None:
    # Killed at 10, detected 10.5, restarted 12 (restart delay), first update 14.
    kill = Phases(lost_at=10.0, detected_at=10.5, restarted_at=12.0, first_update_at=14.0)
    lives = [
        # booted at -2, training from 0: 2 s startup; waited 10-14: 0.5 + 1.5 + 2.
        WorkerLife(booted_at=-2.0, ready_at=0.0, stopped_at=30.0, idle=((10.0, 14.0),), steps=100),
        # its wait began late (11) and ended late (14.25: its backoff): waiting 1, restore 2.25.
        WorkerLife(booted_at=-1.0, ready_at=0.0, stopped_at=30.0, idle=((11.0, 14.25),), steps=100),
    ]
    account = worker_account(lives, [kill], redo_steps=0)
    assert kinds(account) == {STARTUP: 3.0, DETECT: 0.5, WAITING: 2.5, RESTORE: 4.25}
    assert account.total == 63.0  # 32 + 31
    assert account.productive == 63.0 - 10.25
    assert account.ettr == pytest.approx(52.75 / 63.0)


def test_a_chain_promotion_has_no_waiting() -> None:
    # Nothing restarted: the next replica was promoted at detection; the wait is restore.
    promoted = Phases(lost_at=5.0, detected_at=5.25, restarted_at=None, first_update_at=6.0)
    life = WorkerLife(booted_at=0.0, ready_at=0.0, stopped_at=10.0, idle=((5.0, 6.0),), steps=10)
    assert kinds(worker_account([life], [promoted], redo_steps=0)) == {DETECT: 0.25, RESTORE: 0.75}


def test_a_stateless_run_that_trains_through_its_outage() -> None:
    # The same outage as a checkpoint kill, but the workers trained on: no wait in detect
    # or waiting, only a 0.25 s block in the rejoin (restore), and 4 dropped gradients
    # (of 200 steps in 39.75 busy seconds) redone.
    outage = Phases(lost_at=10.0, detected_at=10.5, restarted_at=12.0, first_update_at=14.0)
    life = WorkerLife(booted_at=0.0, ready_at=0.0, stopped_at=40.0, idle=((13.75, 14.0),), steps=200)
    account = worker_account([life], [outage], redo_steps=4)
    assert kinds(account) == {RESTORE: 0.25, REDO: pytest.approx(4 * 39.75 / 200)}
    checkpoint = worker_account([WorkerLife(0.0, 0.0, 40.0, ((10.0, 14.0),), steps=200)], [outage], redo_steps=4)
    assert account.ettr > checkpoint.ettr


def test_waits_outside_the_phases() -> None:
    recovery = Phases(lost_at=10.0, detected_at=11.0, restarted_at=12.0, first_update_at=13.0)
    life = WorkerLife(
        booted_at=0.0,
        ready_at=2.0,
        stopped_at=30.0,
        # 1-3: before it could train (startup already); 20-21: in no recovery (waiting);
        # 12.5-13.5: restore until the first update, its backoff after it (restore).
        idle=((1.0, 3.0), (20.0, 21.0), (12.5, 13.5)),
        steps=10,
    )
    assert kinds(worker_account([life], [recovery], redo_steps=0)) == {STARTUP: 2.0, WAITING: 2.0, RESTORE: 1.0}


def test_overlapping_recoveries_and_waits_count_each_second_once() -> None:
    # Two PS replicas lost at once (a chain's 4-8 and 5-7); waits 4-6 and 5-9 overlap.
    first = Phases(lost_at=4.0, detected_at=5.0, restarted_at=None, first_update_at=8.0)
    second = Phases(lost_at=5.0, detected_at=6.0, restarted_at=6.5, first_update_at=7.0)
    life = WorkerLife(booted_at=0.0, ready_at=0.0, stopped_at=10.0, idle=((5.0, 9.0), (4.0, 6.0)), steps=10)
    # 4-5 detect (first), 5-8 restore (first: the earlier recovery's phase), 8-9 restore (backoff).
    assert kinds(worker_account([life], [second, first], redo_steps=0)) == {DETECT: 1.0, RESTORE: 4.0}


def test_unplaced_idle_is_waiting() -> None:
    life = WorkerLife(booted_at=0.0, ready_at=0.0, stopped_at=10.0, steps=10, unplaced_idle=3.0)
    assert kinds(worker_account([life], [], redo_steps=0)) == {WAITING: 3.0}


def test_lost_steps_are_redo_at_the_runs_pace_and_at_most_the_busy_time() -> None:
    # 2 workers, 20 s each, 2 s startup, 4 s waiting: busy 34 s for 170 steps (0.2 s each).
    lives = [WorkerLife(-1.0, 0.0, 19.0, ((5.0, 7.0),), steps=85), WorkerLife(-1.0, 0.0, 19.0, ((5.0, 7.0),), steps=85)]
    assert worker_account(lives, [], redo_steps=10).badput[REDO] == pytest.approx(2.0)
    assert worker_account(lives, [], redo_steps=1000).badput[REDO] == pytest.approx(34.0)
    assert worker_account(lives, [], redo_steps=1000).productive == 0.0
    # No step taken: nothing to price lost work at.
    assert worker_account([WorkerLife(0.0, 0.0, 5.0)], [], redo_steps=3).badput[REDO] == 0.0


def test_no_time_has_no_ettr() -> None:
    assert worker_account([], [], redo_steps=0).ettr is None


def test_the_parts_sum_to_the_total() -> None:
    rng = random.Random(14)
    for _ in range(300):
        recoveries = []
        for _ in range(rng.randint(0, 3)):
            lost = rng.uniform(0, 50)
            detected = lost + rng.uniform(0, 2)
            restarted = rng.choice([None, detected + rng.uniform(0, 3)])
            recoveries.append(Phases(lost, detected, restarted, (restarted or detected) + rng.uniform(0, 4)))
        lives = []
        for _ in range(rng.randint(1, 3)):
            booted = rng.uniform(-5, 5)
            waits = [(a, a + rng.uniform(0, 6)) for a in (rng.uniform(-5, 60) for _ in range(rng.randint(0, 4)))]
            lives.append(WorkerLife(booted, rng.uniform(-2, 8), booted + rng.uniform(0, 60), tuple(waits), rng.randint(0, 500)))
        account = worker_account(lives, recoveries, redo_steps=rng.randint(0, 50))
        parts = account.seconds()
        assert sum(parts.values()) == pytest.approx(account.total)
        assert all(v >= 0 for v in parts.values())
        assert account.ettr is None or 0.0 <= account.ettr <= 1.0


# -- the worker's waits ----------------------------------------------------------------------------


def test_the_ps_client_times_each_wait() -> None:
    client = PSClient(["127.0.0.1:1"], worker="worker-0")
    failures = iter([2, 1])  # the PS refuses twice before it answers; later once

    def call() -> str:
        failures_left[0] -= 1
        if failures_left[0] >= 0:
            time.sleep(0.05)
            raise PSUnavailable("refused")
        return "ok"

    try:
        before = time.time()
        failures_left = [next(failures)]
        client.until_done(call, threading.Event(), chain=False)
        [(begun, ended)] = client.idle_intervals
        assert before <= begun < ended <= time.time()
        assert ended - begun == pytest.approx(client.idle_seconds, abs=1e-3)
        # A wait right after (the pause loop's next one) extends it ...
        started = time.monotonic()
        time.sleep(0.05)
        client.idled(started)
        assert len(client.idle_intervals) == 1
        # ... one after a longer break is a wait of its own.
        time.sleep(IDLE_MERGE_GAP + 0.1)
        failures_left = [next(failures)]
        client.until_done(call, threading.Event(), chain=False)
    finally:
        client.close()
    assert len(client.idle_intervals) == 2
    assert client.idle_while_training == 0.0  # no push acknowledged yet: every wait was the start-up's
    assert sum(b - a for a, b in client.idle_intervals) == pytest.approx(client.idle_seconds, abs=1e-3)


# -- the master's live account --------------------------------------------------------------------


def test_job_account_splits_the_jobs_time() -> None:
    account = JobAccount()
    # 3 s before the first update: all startup.
    assert account.at(active=3.0, trained=0.0, steps=0).seconds() == {PRODUCTIVE: 0.0, "startup": 3.0, "detect": 0.0,
                                                                      "waiting": 0.0, "restore": 0.0, "redo": 0.0}  # fmt: skip
    account.recovery(Phases(lost_at=10.0, detected_at=10.5, restarted_at=11.0, first_update_at=13.0))
    account.lost_updates = 20
    # 23 active, 20 trained: startup 3; phases 0.5 + 0.5 + 2; busy 23 - 6 = 17 for 340
    # steps (0.05 s each): redo 20 x 0.05 = 1; productive 16.
    split = account.at(active=23.0, trained=20.0, steps=340)
    assert split.seconds() == {PRODUCTIVE: 16.0, "startup": 3.0, "detect": 0.5, "waiting": 0.5, "restore": 2.0, "redo": 1.0}
    # A recovery in progress for 2 s: its time waits, counted in no kind yet.
    assert account.at(active=25.0, trained=22.0, steps=340, unsettled=2.0).total == 23.0


def test_job_account_of_workers_that_train_offline_counts_their_waits_not_the_outage() -> None:
    """Stateless: the same recovery (an outage of 3 s), but the workers trained on through
    it and waited 1.5 s each (the rejoin): that, not the outage, is its cost."""
    account = JobAccount(trains_offline=True)
    account.recovery(Phases(lost_at=10.0, detected_at=10.5, restarted_at=11.0, first_update_at=13.0))
    account.lost_updates = 20
    # 23 active, 20 trained: startup 3; restore 1.5 (the waits); busy 23 - 4.5 = 18.5 for
    # 370 steps (0.05 s each): redo 1; productive 17.5.
    split = account.at(active=23.0, trained=20.0, steps=370, idle=1.5)
    assert split.seconds() == {PRODUCTIVE: 17.5, "startup": 3.0, "detect": 0.0, "waiting": 0.0, "restore": 1.5, "redo": 1.0}
    # Nothing waits to settle (the workers' waits are known as they happen), and waits
    # cannot exceed the time trained.
    assert account.at(active=25.0, trained=22.0, steps=370, unsettled=2.0, idle=1.5).total == 25.0
    assert account.at(active=5.0, trained=1.0, steps=0, idle=30.0).badput[RESTORE] == 1.0


def job_state(**fields) -> MasterState:
    return MasterState(phase=JobPhase.RUNNING, created_at=1000.0, active_since=1000.0, training_started_at=1004.0, **fields)


def exported(registry: CollectorRegistry) -> dict[str, float]:
    labels = {"namespace": "team-a", "trainingjob": "demo", "mode": "checkpoint"}
    out = {}
    for kind in (PRODUCTIVE, *BadputKind):
        value = registry.get_sample_value("trainthrough_job_seconds_total", {**labels, "kind": kind})
        out[kind] = value
    return out


@pytest.fixture
def job():
    return parse_job(
        {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "demo", "namespace": "team-a"},
         "spec": {"consistency": "checkpoint"}}  # fmt: skip
    )


def test_the_live_metric_after_a_recorded_recovery(job) -> None:
    registry = CollectorRegistry()
    recorder = RecoveryMetrics(create_metrics(registry), job)
    assert set(exported(registry).values()) == {0.0}  # every kind exported at 0 from the start
    state = job_state()
    state.progress.steps = 100
    recorder.observe(state, now=1010.0)  # 10 s active, 6 trained: 4 startup, 6 productive
    assert exported(registry) == {PRODUCTIVE: 6.0, "startup": 4.0, "detect": 0.0, "waiting": 0.0, "restore": 0.0, "redo": 0.0}
    # Killed at 1012: its time is held back (productive stays at 6 until it settles).
    state.kills["ps-0"] = Kill(killed_at=1012.0)
    recorder.observe(state, now=1013.0)
    assert exported(registry)[PRODUCTIVE] == 8.0
    state.kills.clear()
    state.recoveries.append(Recovery(target="ps-0", mode=Mode.CHECKPOINT, killed_at=1012.0, detected_at=1012.5))
    recorder.observe(state, now=1015.0)
    assert exported(registry)[PRODUCTIVE] == 8.0
    done = Recovery(target="ps-0", mode=Mode.CHECKPOINT, killed_at=1012.0, detected_at=1012.5, restarted_at=1013.0,
                    restored_at=1015.5, first_update_at=1016.0)  # fmt: skip
    state.recoveries.clear()
    recorder.record(RecoveryDone(done.as_event(), done.phases()))
    recorder.record(UpdatesLost(count=10, total=10))
    state.progress.steps = 200
    recorder.observe(state, now=1020.0)
    # 20 active, 16 trained: startup 4, detect 0.5, waiting 0.5, restore 3; busy 12 for 200
    # steps: redo 10 x 0.06 = 0.6; productive 11.4.
    assert exported(registry) == pytest.approx(
        {PRODUCTIVE: 11.4, "startup": 4.0, "detect": 0.5, "waiting": 0.5, "restore": 3.0, "redo": 0.6}
    )
    assert registry.get_sample_value("trainthrough_recoveries_total", {"namespace": "team-a", "trainingjob": "demo", "mode": "checkpoint"}) == 1


def test_the_live_metric_of_a_stateless_job_counts_its_workers_waits() -> None:
    stateless = parse_job(
        {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "demo", "namespace": "team-a"},
         "spec": {"consistency": "stateless", "workers": {"replicas": 2}}}  # fmt: skip
    )
    registry = CollectorRegistry()
    recorder = RecoveryMetrics(create_metrics(registry), stateless)
    state = job_state()
    state.progress.steps = 100
    # A 3 s outage the two workers trained through, waiting 0.5 and 1.5 s (1 s each, as job
    # seconds): not held back while it lasts, and only the waits are badput.
    state.recoveries.append(Recovery(target="ps-0", mode=Mode.STATELESS, killed_at=1012.0, detected_at=1012.5))
    state.progress.idle_seconds = 2.0
    recorder.observe(state, now=1020.0)
    labels = {"namespace": "team-a", "trainingjob": "demo", "mode": "stateless"}
    seconds = {k: registry.get_sample_value("trainthrough_job_seconds_total", {**labels, "kind": k}) for k in (PRODUCTIVE, *BadputKind)}
    # 20 active, 16 trained: startup 4, restore 1, productive 15.
    assert seconds == {PRODUCTIVE: 15.0, "startup": 4.0, "detect": 0.0, "waiting": 0.0, "restore": 1.0, "redo": 0.0}


def test_the_live_metric_stands_still_while_suspended_and_stops_at_the_end(job) -> None:
    registry = CollectorRegistry()
    recorder = RecoveryMetrics(create_metrics(registry), job)
    state = job_state()
    recorder.observe(state, now=1010.0)
    suspended = state.model_copy(update={"phase": JobPhase.SUSPENDED, "active_seconds": 10.0, "active_since": None})
    recorder.observe(suspended, now=1100.0)
    assert sum(exported(registry).values()) == 10.0  # 4 startup + 6 productive, no more
    # It ended at 1030 (running): what comes after its end is not its time.
    recorder.observe(state.model_copy(update={"phase": JobPhase.SUCCEEDED, "stopped_at": 1030.0}), now=1500.0)
    assert exported(registry) == {PRODUCTIVE: 26.0, "startup": 4.0, "detect": 0.0, "waiting": 0.0, "restore": 0.0, "redo": 0.0}
    recorder.remove()
    assert exported(registry)[PRODUCTIVE] is None
