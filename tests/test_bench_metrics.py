"""Tests for trainthrough.bench.metrics: every metric of one benchmark run, computed on
hand-made event logs whose answers are worked out by hand (the arithmetic is in comments).

The logs have the real events' shapes (`t` in Unix seconds, `event`, `source` and the fields
that control/supervising.py, worker/training.py and ps/*.py emit); times are T + binary-exact
offsets, so differences are exact.

Covered:
- training_start: the first training_started event; no training_started is a ValueError;
- accuracy_curve: every `eval` as (seconds since t0, accuracy), time-ordered although
  written out of order, evaluations before t0 negative;
- time_to_accuracy: the first evaluation at or above the target (the target itself counts),
  clamped at 0, None when never reached;
- accuracy_at (last at or before t, inclusive) / accuracy_after (first strictly after t);
- kills: accuracy before/after around a kill, matched to its recovery by killed_at (after
  = first evaluation after the recovery's first update), a kill without a recovery (after
  = first evaluation after the kill, no phases, no lost updates), lost updates the sum of
  the workers' `ps_changed` measurements between a kill and the next, a recovery of another
  kill or of an unplanned death (killed_at null) not matched, a kill event without
  killed_at falling back on `t`;
- worker_time: two workers, one restarted: lifetimes from each worker_started to its
  worker_stopped, idle summed, idle clamped to the time alive;
- goodput (the account itself is tests/test_goodput.py): worker lives read from
  worker_started (booted_at, else its own time) and worker_stopped (idle intervals, else its
  idle seconds unplaced); sync updates: each worker's lost push costs its step;
- resource_use: CPU summed and peak memory max per role (ps vs workers), null values;
- cpu_cores: "2", "500m", "0.5", a number; bad input is a ValueError; other
  quantities that the TrainingJob spec accepts for resources.cpu;
- cost: pods x cores and GPUs x prices x wall hours;
- run_metrics end to end on one complete checkpoint-mode log (a kill, a recovery with
  phases and lost updates, evaluations before and after, worker_stopped with idle_seconds,
  idle intervals in the recovery's phases and steps, the goodput split, process_exited with cpu/memory, run_end with version); a log without run_end
  (wall time from the last event, no updates_applied); replayed gradients summed.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainthrough.bench.metrics import (
    accuracy_after,
    accuracy_at,
    accuracy_curve,
    cost,
    cpu_cores,
    goodput,
    kills,
    resource_use,
    run_metrics,
    time_to_accuracy,
    training_start,
    worker_lives,
    worker_time,
)
from trainthrough.goodput import BadputKind, WorkerLife

T = 1_700_000_000.0  # Unix seconds of training_started in every log here
MiB = 2**20


# -- event builders, with the fields the real emitters write ---------------------------------


def ev(t: float, event: str, source: str = "master", **fields: Any) -> dict[str, Any]:
    return {"t": T + t, "event": event, "source": source, **fields}


def started(t: float = 0.0) -> dict[str, Any]:
    return ev(t, "training_started", ps=["127.0.0.1:50051"])


def evaluation(t: float, accuracy: float, step: int = 0, version: int = 0, final: bool = False) -> dict[str, Any]:
    """An `eval` of worker-0 (only rank 0 evaluates); `t` is when its model snapshot was
    taken, so evaluations may be written after later events."""
    return ev(t, "eval", "worker-0", rank=0, step=step, version=version, accuracy=accuracy,
              loss=1.0 - accuracy, offline=False, final=final, samples=None if final else 2000)  # fmt: skip


def kill(t: float, process: str = "ps-0", version_before: int = 0, scheduled_at: float = 0.0) -> dict[str, Any]:
    return ev(t, "kill", target="ps-head", process=process, version_before=version_before,
              scheduled_at=scheduled_at, killed_at=T + t)  # fmt: skip


def recovery(
    killed: float | None, detected: float, restarted: float, restored: float, first_update: float,
    version_before: int = 0, version_restored: int = 0, target: str = "ps-0",
) -> dict[str, Any]:  # fmt: skip
    """A `recovery` event as Recovery.as_event() writes it (times relative to T)."""
    start = detected if killed is None else killed
    phases = {"detect": detected - start, "restore": restored - detected,
              "first_update": first_update - restored, "total": first_update - start}  # fmt: skip
    return ev(first_update + 0.25, "recovery", target=target, mode="checkpoint",
              killed_at=None if killed is None else T + killed, detected_at=T + detected,
              restarted_at=T + restarted, restored_at=T + restored, first_update_at=T + first_update,
              version_before=version_before, version_restored=version_restored,
              restored_from="checkpoint", phases=phases)  # fmt: skip


def ps_changed(t: float, rank: int, lost: int) -> dict[str, Any]:
    """A worker found a new PS state and measured `lost` of its acknowledged pushes missing."""
    return ev(t, "ps_changed", f"worker-{rank}", rank=rank, version_before=0, version_after=0,
              applied_push_id=0, lost_updates=lost)  # fmt: skip


def worker_started(t: float, rank: int) -> dict[str, Any]:
    return ev(t, "worker_started", f"worker-{rank}", rank=rank, device="cpu", ps="127.0.0.1:50051", metrics_port=0)


def worker_stopped(
    t: float, rank: int, idle: float, steps: int, intervals: list[tuple[float, float]] | None = None, dropped: int = 0
) -> dict[str, Any]:
    """`intervals`: when it waited (relative to T), as the worker writes them; None: a log
    from before they were written."""
    waits = {} if intervals is None else {"idle_intervals": [[T + a, T + b] for a, b in intervals]}
    return ev(t, "worker_stopped", f"worker-{rank}", rank=rank, idle_seconds=idle, dropped_gradients=dropped,
              steps=steps, acked_pushes=steps, duplicate_acks=0, nan_gradients=0, local_steps=0, rejoins=0, **waits)  # fmt: skip


def exited(t: float, process: str, cpu: float | None, rss: int | None, code: int | None = 0) -> dict[str, Any]:
    return ev(t, "process_exited", process=process, exit_code=code, action="stopped",
              reason="the job is stopping", cpu_seconds=cpu, max_rss_bytes=rss)  # fmt: skip


# -- training_start ---------------------------------------------------------------------------


def test_training_start_is_the_first_training_started() -> None:
    events = [ev(-5.0, "run_start"), worker_started(-3.0, 0), started(0.0), started(7.0)]
    assert training_start(events) == T


def test_training_start_without_training_started_is_an_error() -> None:
    events = [ev(-5.0, "run_start"), worker_started(-3.0, 0), evaluation(2.0, 0.5)]
    with pytest.raises(ValueError, match="never started training"):
        training_start(events)


# -- the accuracy curve and what is read from it --------------------------------------------------


def test_accuracy_curve_is_every_eval_in_time_order() -> None:
    # Evaluations written out of order (each carries the time of its model snapshot and is
    # written once evaluated), plus events that are not evaluations.
    events = [
        started(0.0),
        evaluation(4.0, 0.55),
        evaluation(2.0, 0.40),
        ev(3.0, "checkpoint_written", "ps-0", version=100, path="c", bytes=10, seconds=0.01),
        evaluation(-1.0, 0.10),  # before the first update: negative time
        evaluation(6.0, 0.62),
    ]
    assert accuracy_curve(events, T) == [(-1.0, 0.10), (2.0, 0.40), (4.0, 0.55), (6.0, 0.62)]
    # Relative to another origin: every time shifts by 2.
    assert accuracy_curve(events, T + 2.0) == [(-3.0, 0.10), (0.0, 0.40), (2.0, 0.55), (4.0, 0.62)]


CURVE = [(-1.0, 0.10), (2.0, 0.40), (4.0, 0.55), (6.0, 0.70), (8.0, 0.65), (10.0, 0.75)]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.5, 4.0),  # 0.40 < 0.5 at 2 s, 0.55 >= 0.5 at 4 s
        (0.7, 6.0),  # exactly the target counts
        (0.72, 10.0),  # 0.65 at 8 s is below; 0.75 at 10 s
        (0.05, 0.0),  # reached by an evaluation before t0 (-1 s): clamped to 0
        (0.76, None),  # never reached
    ],
)
def test_time_to_accuracy(target: float, expected: float | None) -> None:
    assert time_to_accuracy(CURVE, target) == expected


def test_time_to_accuracy_on_an_empty_curve_is_never() -> None:
    assert time_to_accuracy([], 0.1) is None


@pytest.mark.parametrize(
    ("t", "at", "after"),
    [
        (-2.0, None, 0.10),  # nothing at or before -2; the first after is at -1
        (2.0, 0.40, 0.55),  # at: inclusive (2 s itself); after: strictly later (4 s)
        (3.0, 0.40, 0.55),
        (7.0, 0.70, 0.65),  # last at or before 7 is 6 s (0.70); first after is 8 s (0.65)
        (10.0, 0.75, None),  # the last evaluation: nothing after it
    ],
)
def test_accuracy_at_and_after(t: float, at: float | None, after: float | None) -> None:
    assert accuracy_at(CURVE, t) == at
    assert accuracy_after(CURVE, t) == after


# -- kills ------------------------------------------------------------------------------------


def test_kill_with_its_recovery_reads_accuracy_around_it() -> None:
    events = [
        started(0.0),
        evaluation(2.0, 0.40),
        evaluation(6.0, 0.62),
        kill(8.0, version_before=160),
        evaluation(10.0, 0.61),  # during the outage: after the kill, before the first update
        recovery(killed=8.0, detected=8.25, restarted=28.25, restored=28.5, first_update=29.0,
                 version_before=160, version_restored=100),  # fmt: skip
        ps_changed(29.1, 0, lost=35),
        ps_changed(29.2, 1, lost=25),
        evaluation(31.0, 0.58),
        evaluation(34.0, 0.72),
    ]
    [k] = kills(events, T)
    # before: last evaluation at or before 8 s -> 0.62 (6 s);
    # after: first evaluation after the first update at 29 s -> 0.58 (31 s), not 0.61 (10 s).
    assert k == {
        "at": 8.0,
        "process": "ps-0",
        "accuracy_before": 0.62,
        "accuracy_after": 0.58,
        "recovered": True,
        "restored_from": "checkpoint",
        # detect 8.25-8 = 0.25; restore 28.5-8.25 = 20.25; first update 29-28.5 = 0.5; total 29-8 = 21
        "phases": {"detect": 0.25, "restore": 20.25, "first_update": 0.5, "total": 21.0},
        "lost_updates": 60,  # 35 + 25, as the workers measured
    }


def test_kill_without_recovery() -> None:
    events = [
        started(0.0),
        evaluation(2.0, 0.40),
        kill(5.0, version_before=80),
        evaluation(7.5, 0.45),
        evaluation(9.0, 0.50),
    ]
    [k] = kills(events, T)
    # No recovery: after is the first evaluation after the kill itself (7.5 s).
    assert k == {
        "at": 5.0,
        "process": "ps-0",
        "accuracy_before": 0.40,
        "accuracy_after": 0.45,
        "recovered": False,
        "restored_from": "",
        "phases": {},
        "lost_updates": 0,
    }


def test_each_kill_matches_only_the_recovery_of_its_own_kill_time() -> None:
    events = [
        started(0.0),
        evaluation(1.0, 0.30),
        kill(3.0, version_before=50),
        ps_changed(2.5, 0, lost=9),  # before any kill: no kill's
        # An unplanned death's recovery (killed_at null) matches no kill.
        recovery(killed=None, detected=3.5, restarted=4.0, restored=4.25, first_update=4.5,
                 version_before=50, version_restored=45),  # fmt: skip
        evaluation(5.0, 0.35),
        kill(6.0, version_before=90),
        evaluation(6.5, 0.36),
        recovery(killed=6.0, detected=6.25, restarted=7.0, restored=7.5, first_update=8.0,
                 version_before=90, version_restored=70),  # fmt: skip
        ps_changed(8.1, 0, lost=20),
        evaluation(8.5, 0.40),
    ]
    first, second = kills(events, T)
    # kill at 3 s: not recovered (the recovery above has killed_at null); before 0.30 (1 s),
    # after: first evaluation after 3 s -> 0.35 (5 s).
    assert (first["at"], first["recovered"], first["accuracy_before"], first["accuracy_after"]) == (3.0, False, 0.30, 0.35)
    assert (first["phases"], first["lost_updates"]) == ({}, 0)
    # kill at 6 s: its recovery; before 0.35 (5 s), after: first evaluation after the first
    # update at 8 s -> 0.40 (8.5 s), not 0.36 (6.5 s); lost 20, measured after it.
    assert (second["at"], second["recovered"], second["accuracy_before"], second["accuracy_after"]) == (6.0, True, 0.35, 0.40)
    assert second["lost_updates"] == 20
    assert second["phases"]["total"] == 2.0  # 8 - 6


def test_a_kill_event_without_killed_at_uses_its_time() -> None:
    k = kill(4.0)
    del k["killed_at"]
    events = [started(0.0), evaluation(3.0, 0.5), k, evaluation(4.5, 0.4)]
    [out] = kills(events, T)
    assert (out["at"], out["accuracy_before"], out["accuracy_after"]) == (4.0, 0.5, 0.4)


# -- worker time, ETTR --------------------------------------------------------------------------


def test_worker_time_sums_every_lifetime_and_idle() -> None:
    events = [
        worker_started(0.0, 0),
        worker_started(0.0, 1),
        worker_stopped(10.0, 0, idle=1.0, steps=40),  # worker-0 fails at 10 s ...
        worker_started(12.0, 0),  # ... and is restarted at 12 s
        worker_stopped(30.0, 0, idle=3.0, steps=70),
        worker_stopped(30.0, 1, idle=2.5, steps=120),
    ]
    alive, idle = worker_time(events)
    # worker-0: (10 - 0) + (30 - 12) = 28; worker-1: 30 - 0 = 30; alive 58.
    assert alive == 58.0
    # idle: 1.0 + 3.0 + 2.5 = 6.5
    assert idle == 6.5


def test_worker_idle_is_at_most_the_time_alive() -> None:
    events = [worker_started(0.0, 0), worker_stopped(4.0, 0, idle=9.0, steps=1)]
    assert worker_time(events) == (4.0, 4.0)


def test_worker_time_without_workers_is_zero() -> None:
    assert worker_time([started(0.0)]) == (0.0, 0.0)


def test_worker_lives_from_the_log() -> None:
    # worker-0 booted 2 s before its loop started (booted_at), worker-1's log has no
    # booted_at (its own start then) and no idle intervals (its idle unplaced); worker-1
    # restarted at 20 s, after training started at 0: ready at its own start.
    events = [
        worker_started(-3.0, 0) | {"booted_at": T - 5.0},
        worker_started(-1.0, 1),
        started(0.0),
        worker_stopped(10.0, 1, idle=1.5, steps=30),
        worker_started(20.0, 1),
        worker_stopped(30.0, 0, idle=2.0, steps=100, intervals=[(4.0, 5.0), (6.0, 7.0)]),
        worker_stopped(30.0, 1, idle=0.0, steps=40, intervals=[]),
        worker_stopped(40.0, 2, idle=0.0, steps=5),  # never started: no life
    ]
    assert worker_lives(events, T) == [
        WorkerLife(booted_at=T - 1.0, ready_at=T, stopped_at=T + 10.0, steps=30, unplaced_idle=1.5),
        WorkerLife(booted_at=T - 5.0, ready_at=T, stopped_at=T + 30.0, idle=((T + 4.0, T + 5.0), (T + 6.0, T + 7.0)), steps=100),
        WorkerLife(booted_at=T + 20.0, ready_at=T + 20.0, stopped_at=T + 30.0, steps=40),
    ]


def test_goodput_prices_lost_updates_and_dropped_gradients_as_redo() -> None:
    # One worker, 0 to 10 s, no startup, no wait; 100 steps in 10 s (0.1 s a step):
    # 3 lost updates (ps_changed) + 2 dropped gradients = 5 steps redone = 0.5 s.
    events = [worker_started(0.0, 0), started(0.0), ps_changed(5.0, 0, lost=3),
              worker_stopped(10.0, 0, idle=0.0, steps=100, intervals=[], dropped=2)]  # fmt: skip
    account = goodput(events, T)
    assert account.badput[BadputKind.REDO] == pytest.approx(0.5)
    assert account.ettr == pytest.approx(0.95)


def test_ettr_of_sync_updates_prices_each_lost_push_at_one_step() -> None:
    # A checkpoint-sync run with 2 workers: every update averages one gradient from each,
    # and a lost round is one lost push of each worker.
    events = [
        ev(-5.0, "run_start", job="j", mode="checkpoint", updates="sync", workers=2, ps_replicas=1,
           restart_delay=20.0, kills=["ps-head@10s"]),  # fmt: skip
        worker_started(-1.0, 0),
        worker_started(-1.0, 1),
        started(0.0),
        kill(10.0, version_before=60),
        recovery(killed=10.0, detected=10.25, restarted=30.25, restored=30.5, first_update=31.0,
                 version_before=60, version_restored=50),  # fmt: skip
        ps_changed(31.0, 0, lost=10),
        ps_changed(31.0, 1, lost=10),
        worker_stopped(59.0, 0, idle=10.0, steps=100, intervals=[(10.0, 20.0)]),
        worker_stopped(59.0, 1, idle=10.0, steps=100, intervals=[(10.0, 20.0)]),
        ev(60.0, "run_end", version=90),
    ]
    m = run_metrics(events, target=0.9, budget=60.0)
    # alive 2 x 60 = 120 from -1 s, startup 2 x 1 = 2, idle 2 x 10 = 20 (detect 0.25 and
    # waiting 9.75 each), busy 98 worker-seconds for 200 steps: 0.49 s a step.
    # 10 lost rounds = 20 lost pushes = 20 steps = 9.8 worker-seconds.
    # ETTR = (98 - 9.8) / 120 = 0.735.
    assert m["ettr"] == pytest.approx(0.735)
    assert m["goodput"]["redo"] == pytest.approx(9.8)
    assert (m["goodput"]["detect"], m["goodput"]["waiting"]) == (0.5, 19.5)


# -- resources and cost ---------------------------------------------------------------------------


def test_resource_use_per_role() -> None:
    events = [
        exited(8.0, "ps-0", cpu=6.0, rss=300 * MiB, code=-9),  # the killed PS
        exited(41.0, "worker-0", cpu=40.0, rss=500 * MiB),
        exited(41.0, "worker-1", cpu=38.5, rss=520 * MiB),
        exited(42.0, "ps-0", cpu=9.0, rss=280 * MiB),  # its restart
        exited(42.0, "ps-3", cpu=None, rss=None),  # a chain replacement without rusage
        ev(43.0, "run_end", version=10),
    ]
    assert resource_use(events) == {
        "ps": {"cpu_seconds": 15.0, "peak_memory_bytes": 300 * MiB},  # 6 + 9 + 0; max(300, 280)
        "workers": {"cpu_seconds": 78.5, "peak_memory_bytes": 520 * MiB},  # 40 + 38.5; max(500, 520)
    }


def test_resource_use_without_exits_is_zero_for_both_roles() -> None:
    zero = {"cpu_seconds": 0.0, "peak_memory_bytes": 0.0}
    assert resource_use([started(0.0)]) == {"ps": zero, "workers": zero}


@pytest.mark.parametrize(("quantity", "cores"), [("2", 2.0), ("500m", 0.5), ("0.5", 0.5), ("1500m", 1.5), (4, 4.0)])
def test_cpu_cores(quantity: str, cores: float) -> None:
    assert cpu_cores(quantity) == cores


@pytest.mark.parametrize("quantity", ["", "two", "-1", "500 m", "m"])
def test_cpu_cores_of_bad_input_is_a_value_error(quantity: str) -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        cpu_cores(quantity)


@pytest.mark.parametrize(("quantity", "cores"), [("+2", 2.0), ("2e0", 2.0), ("250000u", 0.25), ("1k", 1000.0)])
def test_cpu_cores_of_every_quantity_the_spec_accepts(quantity: str, cores: float) -> None:
    from trainthrough.spec import Resources

    assert Resources(cpu=quantity).cpu == quantity  # the spec accepts it
    assert cpu_cores(quantity) == pytest.approx(cores)


def test_cost() -> None:
    # 2 workers (2 cores, 1 GPU each) and 1 PS (0.5 cores) for 1800 s = 0.5 h,
    # at $0.04 per core-hour and $2.50 per GPU-hour:
    # workers 2 x 0.5 x (2 x 0.04 + 1 x 2.50) = 2 x 0.5 x 2.58 = 2.58
    # PS          0.5 x (0.5 x 0.04)          = 0.01
    pods = [(2.0, 1), (2.0, 1), (0.5, 0)]
    assert cost(1800.0, pods, cpu_hour=0.04, gpu_hour=2.50) == pytest.approx(2.59)


def test_cost_of_nothing_is_zero() -> None:
    assert cost(3600.0, [], cpu_hour=1.0, gpu_hour=1.0) == 0.0
    assert cost(0.0, [(4.0, 2)], cpu_hour=1.0, gpu_hour=1.0) == 0.0


# -- run_metrics -------------------------------------------------------------------------------------


def checkpoint_run() -> list[dict[str, Any]]:
    """One checkpoint-mode run: 2 workers, ps-0 killed at 8 s, restored from a checkpoint
    20 s later having lost 60 updates, then trained on past the target."""
    return [
        ev(-5.0, "run_start", job="bench-checkpoint-async-one-kill-w2-s1", mode="checkpoint", updates="async",
           workers=2, ps_replicas=1, restart_delay=20.0, kills=["ps-head@8s"]),  # fmt: skip
        ev(-4.5, "ps_started", "ps-0", address="127.0.0.1:50051", metrics_port=0, pid=100),
        ev(-4.0, "ps_ready", "ps-0", version=0, restored_from="fresh", incarnation="a"),
        worker_started(-3.0, 0),
        worker_started(-3.0, 1),
        evaluation(-1.0, 0.10),
        ev(-0.25, "first_update", "ps-0", version=1, incarnation="a"),
        started(0.0),
        evaluation(2.0, 0.40),
        evaluation(4.0, 0.55),
        ev(5.0, "checkpoint_written", "ps-0", version=100, path="checkpoints/100.pt", bytes=1000, seconds=0.01),
        evaluation(6.0, 0.62),
        kill(8.0, version_before=160, scheduled_at=8.0),
        exited(8.25, "ps-0", cpu=6.0, rss=300 * MiB, code=-9)
        | {"action": "restart-ps", "reason": "checkpoint PS ps-0 died (exit -9)"},
        ev(8.25, "failure_detected", process="ps-0", detect_seconds=0.25),
        evaluation(10.0, 0.61),
        ev(28.25, "ps_started", "ps-0", address="127.0.0.1:50051", metrics_port=0, pid=101),
        ev(28.5, "ps_ready", "ps-0", version=100, restored_from="checkpoint", incarnation="b"),
        ev(29.0, "first_update", "ps-0", version=101, incarnation="b"),
        recovery(killed=8.0, detected=8.25, restarted=28.25, restored=28.5, first_update=29.0,
                 version_before=160, version_restored=100),  # fmt: skip
        ps_changed(29.1, 0, lost=35),
        ps_changed(29.2, 1, lost=25),
        evaluation(31.0, 0.58),
        evaluation(34.0, 0.72),
        evaluation(40.0, 0.75, final=True),
        worker_stopped(41.0, 0, idle=20.0, steps=300, intervals=[(8.0, 28.0)]),
        worker_stopped(41.0, 1, idle=21.0, steps=264, intervals=[(8.0, 29.0)]),
        exited(41.5, "worker-0", cpu=40.0, rss=500 * MiB),
        exited(41.5, "worker-1", cpu=38.5, rss=520 * MiB),
        ev(41.75, "ps_stopped", "ps-0", version=400),
        exited(42.0, "ps-0", cpu=9.0, rss=280 * MiB),
        ev(42.5, "run_end", job="bench-checkpoint-async-one-kill-w2-s1", mode="checkpoint", status="succeeded",
           reason="stop.duration 42s reached", wall_seconds=42.5, steps=564, version=400, accuracy=0.75,
           kills=1, recoveries=1),  # fmt: skip
    ]


def test_run_metrics_end_to_end() -> None:
    m = run_metrics(checkpoint_run(), target=0.7, budget=36.0)
    curve = [(-1.0, 0.10), (2.0, 0.40), (4.0, 0.55), (6.0, 0.62), (10.0, 0.61), (31.0, 0.58), (34.0, 0.72), (40.0, 0.75)]
    # Worker time: both alive from -3 to 41 s: 2 x 44 = 88; idle 20 + 21 = 41.
    # Goodput: startup 2 x 3 = 6 (-3 s to the first update at 0); worker-0 waited 8-28 s,
    # worker-1 8-29 s: detect 2 x 0.25 (8-8.25), waiting 19.75 + 20 (8.25-28, 8.25-28.25:
    # the restart delay), restore 0.75 (worker-1's 28.25-29); busy 88 - 6 - 41 = 41
    # worker-seconds for 564 steps; 60 lost updates cost 60 x 41 / 564 s of redo.
    redo = 60 * 41 / 564
    assert m == {
        "wall_seconds": 42.5,  # run_end at 42.5 s
        "time_to_target": 34.0,  # 0.72 >= 0.7 at 34 s (0.62 at 6 s and 0.58 at 31 s are below)
        "final_accuracy": 0.72,  # last evaluation at or before the 36 s budget: 34 s
        "best_accuracy": 0.75,
        "kills": [
            {
                "at": 8.0,
                "process": "ps-0",
                "accuracy_before": 0.62,  # 6 s
                "accuracy_after": 0.58,  # 31 s, the first after the first update at 29 s
                "recovered": True,
                "restored_from": "checkpoint",
                "phases": {"detect": 0.25, "restore": 20.25, "first_update": 0.5, "total": 21.0},
                "lost_updates": 60,  # 35 + 25
            }
        ],
        "recovery_seconds": 21.0,  # median of the one total
        "lost_updates": 60,
        "idle_fraction": pytest.approx(41 / 88),
        "goodput": {
            "productive": pytest.approx(41 - redo),
            "startup": 6.0,
            "detect": 0.5,
            "waiting": 39.75,
            "restore": 0.75,
            "redo": pytest.approx(redo, abs=1e-6),
            "total": 88.0,
            "ettr": pytest.approx((41 - redo) / 88),
        },
        "ettr": pytest.approx((41 - redo) / 88),
        "worker_seconds": 88.0,
        "worker_idle_seconds": 41.0,
        "gradients_processed": 564,
        "updates_applied": 400,  # run_end's version
        "replayed_gradients": 0,
        "resources": {
            "ps": {"cpu_seconds": 15.0, "peak_memory_bytes": 300 * MiB},  # 6 + 9; max(300, 280)
            "workers": {"cpu_seconds": 78.5, "peak_memory_bytes": 520 * MiB},  # 40 + 38.5; max(500, 520)
        },
        "curve": curve,
    }


def test_run_metrics_of_a_run_that_never_reached_the_target() -> None:
    m = run_metrics(checkpoint_run(), target=0.8, budget=36.0)
    assert m["time_to_target"] is None
    assert m["best_accuracy"] == 0.75


def test_run_metrics_final_accuracy_is_read_at_the_budget() -> None:
    # Budget 5 s: the last evaluation at or before 5 s is 0.55 (4 s).
    assert run_metrics(checkpoint_run(), target=0.7, budget=5.0)["final_accuracy"] == 0.55


def test_run_metrics_without_run_end() -> None:
    # A run cut short: no run_end, so wall time runs to the last event and nothing says
    # how many updates were applied.
    events = [e for e in checkpoint_run() if e["event"] != "run_end"]
    m = run_metrics(events, target=0.7, budget=36.0)
    assert m["wall_seconds"] == 42.0  # the last event: ps-0 exiting at 42 s
    assert m["updates_applied"] is None


def test_run_metrics_sums_replayed_gradients() -> None:
    events = checkpoint_run() + [
        ev(28.5, "gradients_replayed", "ps-0", count=12, per_worker={"worker-0": 5, "worker-1": 7}, policy="constant"),
        ev(50.5, "gradients_replayed", "ps-0", count=3, per_worker={"worker-0": 3}, policy="constant"),
    ]
    assert run_metrics(events, target=0.7, budget=36.0)["replayed_gradients"] == 15  # 12 + 3


def test_run_metrics_without_training_started_is_an_error() -> None:
    events = [e for e in checkpoint_run() if e["event"] != "training_started"]
    with pytest.raises(ValueError, match="never started training"):
        run_metrics(events, target=0.7, budget=36.0)


def test_run_metrics_of_a_run_without_failures() -> None:
    events = [
        started(0.0),
        worker_started(-1.0, 0),
        evaluation(5.0, 0.5),
        worker_stopped(9.0, 0, idle=0.0, steps=100),
        ev(10.0, "run_end", version=100),
    ]
    m = run_metrics(events, target=0.7, budget=10.0)
    assert (m["kills"], m["recovery_seconds"], m["lost_updates"]) == ([], None, 0)
    # alive 9 - -1 = 10, nothing idle or lost: idle fraction 0; the second before the
    # first update is startup: ETTR 9 / 10.
    assert (m["worker_seconds"], m["ettr"], m["idle_fraction"]) == (10.0, 0.9, 0.0)
