"""Tests for the decision on a death (control/recovery.py) and a recovery's timing
(control/state.py's Recovery).

Covered:
- decide() for every branch: a stopping job ignores every death (workers and PS alike);
  a worker that exited 0 is finished, one that exited non-zero or by a signal (None) is
  restarted; a process that is no PS of this job is ignored; in chain mode the head, a
  middle and the tail replica (and a chain of one) are promoted away with the role in
  the reason, a replica no longer in the chain is ignored; in checkpoint and stateless
  mode the PS is restarted; the decision always names the dead process; hybrid promotes
  while a replica holds the state and rebuilds after the last one;
- Recovery.phases with hand-made timestamps (binary-exact values, answers computed by
  hand): a complete recovery after a chaos kill; an unplanned death (killed_at None:
  detect is 0, total counts from detection); incomplete recoveries (not restored yet,
  restored but no update yet) have only the phases reached so far; negative intervals
  (clock skew between processes) are clamped to 0; `done`;
- as_event carries milestones, versions, rounded phases and extra fields (lost updates
  are the workers' measurement, not a recovery's: test_master.py).
"""

from __future__ import annotations

import pytest

from trainthrough.control.recovery import Decision, Remedy, decide
from trainthrough.control.state import Recovery

CHAIN = ["ps-1", "ps-0", "ps-2"]  # head-first
KNOWN = {"ps-0", "ps-1", "ps-2"}


def _decide(name: str, *, mode: str = "chain", exit_code: int | None = -9, stopping: bool = False,
            chain: list[str] = CHAIN, known_ps: set[str] = KNOWN) -> Decision:
    return decide(mode=mode, name=name, exit_code=exit_code, stopping=stopping, chain=chain, known_ps=known_ps)


# -- decide ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["worker-0", "ps-1", "ps-0", "stranger"])
@pytest.mark.parametrize("mode", ["chain", "checkpoint", "stateless"])
def test_a_stopping_job_ignores_every_death(name: str, mode: str) -> None:
    assert _decide(name, mode=mode, exit_code=1, stopping=True) == Decision(Remedy.IGNORE, name, "the job is stopping")


def test_worker_exit_zero_is_finished() -> None:
    assert _decide("worker-3", exit_code=0) == Decision(Remedy.FINISHED, "worker-3", "worker reached its step limit")


@pytest.mark.parametrize(("exit_code", "shown"), [(1, "1"), (-9, "-9"), (None, "None")])
@pytest.mark.parametrize("mode", ["chain", "checkpoint", "stateless"])
def test_worker_failure_restarts_the_worker(mode: str, exit_code: int | None, shown: str) -> None:
    decision = _decide("worker-1", mode=mode, exit_code=exit_code)
    assert decision == Decision(Remedy.RESTART_WORKER, "worker-1", f"worker exited with {shown}")


@pytest.mark.parametrize("mode", ["chain", "checkpoint", "stateless"])
@pytest.mark.parametrize("name", ["ps-9", "master", "chaos-0", ""])
def test_a_process_of_no_ps_of_this_job_is_ignored(mode: str, name: str) -> None:
    assert _decide(name, mode=mode) == Decision(Remedy.IGNORE, name, "not a process of this job")


@pytest.mark.parametrize(
    ("name", "role"),
    [("ps-1", "head"), ("ps-0", "middle"), ("ps-2", "tail")],
)
def test_chain_replica_death_promotes(name: str, role: str) -> None:
    assert _decide(name) == Decision(Remedy.PROMOTE, name, f"chain {role} {name} died")


def test_chain_of_one_is_a_head() -> None:
    decision = _decide("ps-0", chain=["ps-0"], known_ps={"ps-0"})
    assert decision == Decision(Remedy.PROMOTE, "ps-0", "chain head ps-0 died")


def test_chain_of_two_has_head_and_tail() -> None:
    assert _decide("ps-0", chain=["ps-0", "ps-1"]).reason == "chain head ps-0 died"
    assert _decide("ps-1", chain=["ps-0", "ps-1"]).reason == "chain tail ps-1 died"


def test_chain_replica_already_removed_is_ignored() -> None:
    decision = _decide("ps-2", chain=["ps-1", "ps-0"])
    assert decision == Decision(Remedy.IGNORE, "ps-2", "replica already removed from the chain")


@pytest.mark.parametrize("mode", ["checkpoint", "stateless"])
@pytest.mark.parametrize(("exit_code", "shown"), [(-9, "-9"), (1, "1"), (None, "None"), (0, "0")])
def test_checkpoint_and_stateless_ps_death_restarts_the_ps(mode: str, exit_code: int | None, shown: str) -> None:
    # The chain argument has no meaning outside chain mode: the PS is restarted either way.
    decision = _decide("ps-0", mode=mode, exit_code=exit_code, chain=[])
    assert decision == Decision(Remedy.RESTART_PS, "ps-0", f"{mode} PS ps-0 died (exit {shown})")


def test_remedy_values() -> None:
    assert {a.value for a in Remedy} == {"restart-ps", "promote", "rebuild", "restart-worker", "finished", "ignore"}


@pytest.mark.parametrize(
    ("name", "chain", "serving", "action"),
    [
        ("ps-1", CHAIN, CHAIN, Remedy.PROMOTE),  # replicas with the state remain: a failover
        ("ps-2", ["ps-2"], ["ps-2"], Remedy.REBUILD),  # the last one: rebuilt from the workers
        # the last one with the state, a replacement still joining behind it: rebuilt too
        ("ps-2", ["ps-2", "ps-3"], ["ps-2"], Remedy.REBUILD),
        ("ps-3", ["ps-2", "ps-3"], ["ps-2"], Remedy.PROMOTE),  # a joining replacement (the master handles it)
    ],
)
def test_hybrid_promotes_while_a_replica_holds_the_state_and_rebuilds_after_the_last(name, chain, serving, action) -> None:
    decision = decide(mode="hybrid", name=name, exit_code=-9, stopping=False, chain=chain, known_ps=KNOWN | {"ps-3"}, serving=serving)
    assert (decision.action, decision.target) == (action, name)
    # chain mode never rebuilds: its last replica's loss is promoted away (the job fails)
    assert decide(mode="chain", name="ps-2", exit_code=-9, stopping=False, chain=["ps-2"], known_ps=KNOWN).action is Remedy.PROMOTE


# -- Recovery --------------------------------------------------------------------------------


def test_phases_of_a_complete_recovery_after_a_kill() -> None:
    recovery = Recovery(
        target="ps-0",
        mode="checkpoint",
        killed_at=100.0,
        detected_at=100.5,
        restarted_at=101.0,
        restored_at=102.25,
        first_update_at=102.75,
    )
    # detect = 100.5 - 100.0; restore = 102.25 - 100.5; first_update = 102.75 - 102.25;
    # total = 102.75 - 100.0
    assert recovery.phases() == {"detect": 0.5, "restore": 1.75, "first_update": 0.5, "total": 2.75}
    assert recovery.done


def test_phases_of_an_unplanned_death_count_from_detection() -> None:
    recovery = Recovery(target="ps-1", mode="chain", detected_at=200.0, restored_at=203.5, first_update_at=204.0)
    assert recovery.killed_at is None
    # detect = 0 (nothing to measure from); restore = 3.5; first_update = 0.5; total = 204 - 200
    assert recovery.phases() == {"detect": 0.0, "restore": 3.5, "first_update": 0.5, "total": 4.0}


def test_phases_of_a_recovery_not_yet_restored() -> None:
    recovery = Recovery(target="ps-0", mode="stateless", killed_at=10.0, detected_at=11.25, restarted_at=12.0)
    assert recovery.phases() == {"detect": 1.25}
    assert not recovery.done


def test_phases_of_a_recovery_restored_but_without_an_update_yet() -> None:
    recovery = Recovery(target="ps-0", mode="checkpoint", killed_at=10.0, detected_at=10.5, restored_at=13.0)
    assert recovery.phases() == {"detect": 0.5, "restore": 2.5}
    assert not recovery.done


def test_first_update_without_a_restore_mark_gives_only_total() -> None:
    recovery = Recovery(target="ps-0", mode="chain", killed_at=50.0, detected_at=50.25, first_update_at=52.0)
    assert recovery.phases() == {"detect": 0.25, "total": 2.0}
    assert recovery.done


def test_negative_intervals_are_clamped_to_zero() -> None:
    # Timestamps from different processes: detection seemingly before the kill, the first
    # update seemingly before the restore.
    recovery = Recovery(
        target="ps-0", mode="checkpoint", killed_at=100.5, detected_at=100.0, restored_at=99.0, first_update_at=98.5
    )
    assert recovery.phases() == {"detect": 0.0, "restore": 0.0, "first_update": 0.0, "total": 0.0}


def test_as_event() -> None:
    recovery = Recovery(
        target="ps-0",
        mode="checkpoint",
        killed_at=1000.0,
        detected_at=1000.1234567,
        restarted_at=1000.5,
        restored_at=1001.0,
        first_update_at=1001.25,
        version_before=57,
        version_restored=50,
        restored_from="checkpoint",
        extra={"chain_epoch": 3},
    )
    event = recovery.as_event()
    assert event["target"] == "ps-0"
    assert event["mode"] == "checkpoint"
    assert event["killed_at"] == 1000.0
    assert event["first_update_at"] == 1001.25
    assert event["version_before"] == 57 and event["version_restored"] == 50
    assert event["restored_from"] == "checkpoint"
    assert "lost_updates" not in event
    assert event["chain_epoch"] == 3
    assert event["phases"]["detect"] == 0.123457  # rounded to microseconds
    assert event["phases"]["total"] == 1.25
    assert set(event["phases"]) == {"detect", "restore", "first_update", "total"}
