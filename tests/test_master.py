"""The recovery master alone (control/master.py): a fake clock, no processes, no sleeps.

Each test is a list of steps, an observation or a tick at a time, and the actions the
master answers with. Covered, for every mode:
- start-up: PS first, the chain published once every replica answers, workers once the
  PS is ready, the job's clock from the first applied update; a PS dying during start-up
  is started again; start-up's deadline;
- checkpoint and stateless: a killed PS is restarted after the restart delay as a due time
  (a tick before it does nothing), its restore and first update timed from the PS's own
  clock;
- chain: a dead head, middle or tail is removed (epoch + 1, published), the recovery's
  first update is a version above the new head's; a replacement starts after the delay and
  joins at the tail once it answers; one lost before joining is replaced; losing every
  replica fails the job (ChainLost); with ack: tail the tail's version counts;
- a second failure during a recovery extends it (one outage, two deaths);
- lost updates are the workers' measurement (HealthReply.lost_updates of the head): each
  growth is one UpdatesLost with its count, the total is in the state; a replica that is
  not the head, and a report that did not grow, change nothing;
- restart limits: process failures beyond spec.runPolicy.backoffLimit fail the job
  (BackoffLimitExceeded), disruptions (kills, deleted pods) do not count;
- workers: exit 0 is finished (all finished: StepsDone), a failure is restarted, a
  change of spec.workers.replicas starts or stops workers;
- a kill waits while its target is down, being killed, recovering or being restarted;
- stuck workers: a worker whose reported steps do not change for the deadline while the
  head serves (one that never reports to the head: stranded) is recorded (WorkerStuck),
  ended and started again with the current chain, counted against the restart limit; the
  clock runs only while the head serves; a restart is no kill;
- liveness: a PS whose Health calls fail without a break for the deadline is recorded
  (ParameterServerUnresponsive) and killed; its restart is due only after its exit; an
  answer resets the clock; a PS that has not answered since it started is not judged;
  every chain member is watched, and a hung middle replica is removed as a dead one;
- the end: a death before the stop was decided, observed after it, is a failure (its
  recovery incomplete; a chain replica leaves the final configuration), a process the
  end stopped is not; a replacement that had not joined is reported and is no member;
- stop: duration, target accuracy only between recoveries, after minDuration and once
  every kill of spec.chaos fired;
- the state written to a status and read back resumes a recovery where it stood.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainthrough.names import PSStart
from trainthrough.control.messages import (
    Action,
    Disrupted,
    Exited,
    Finish,
    Health,
    Published,
    PublishChain,
    Record,
    RecoveryDone,
    Start,
    Stop,
    Terminate,
    Unanswered,
    UpdatesLost,
    WorkerReport,
)
from trainthrough.control.master import FINAL_PROGRESS_WAIT, Master
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import EventName, JobPhase, Reason, RecoveryStage
from trainthrough.spec import parse_job

T0 = 1_000.0


def job(consistency: str = "checkpoint", **spec: Any):
    base: dict[str, Any] = {"consistency": consistency, "model": "mlp", "dataset": "synthetic", "workers": {"replicas": 2}}
    if consistency in ("chain", "hybrid"):
        base["parameterServer"] = {"replicas": 3}
    base.update(spec)
    return parse_job({"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": base})


def health(process: str, version: int = 10, *, state: str = "serving", started: int = 0, since: int = 0,
           ready_at: float = 0.0, first_update_at: float = 0.0, accuracy: float = -1.0, restored_from: str = "",
           lost: int = 0) -> Health:  # fmt: skip
    report = WorkerReport("worker-0", steps=version, accuracy=accuracy, lost_updates=lost, evaluation=1)
    return Health(process, state, version, started, since, restored_from, ready_at, first_update_at, (report,))


def kinds(actions: list[Action]) -> list[Any]:
    """Actions in a comparable short form."""
    out: list[Any] = []
    for a in actions:
        if isinstance(a, Start):
            out.append(("start", a.process, a.start is PSStart.JOIN) if not a.process.startswith("worker-") else ("start", a.process, a.ps[0] if len(a.ps) == 1 else a.ps))
        elif isinstance(a, Stop):
            out.append(("stop", a.process))
        elif isinstance(a, Terminate):
            out.append(("terminate", a.process, a.grace))
        elif isinstance(a, PublishChain):
            out.append(("publish", a.epoch, a.members))
        elif isinstance(a, Record):
            out.append(a.event)
        elif isinstance(a, RecoveryDone):
            out.append(("done", a.recovery["target"]))
        elif isinstance(a, Finish):
            out.append(("finish", a.phase, a.reason))
    return out


def running(master: Master, now: float = T0) -> Master:
    """`master` started, every PS answering, workers started, training under way."""
    master.start(now)
    for p in list(master.state.ps):
        for action in master.observe(health(p, 0), now):
            if isinstance(action, PublishChain):  # chain: once every replica answered
                master.observe(Published(action.epoch, shard=action.shard), now)
    master.observe(health(master.chain_order()[0], 0), now)  # starts the workers
    master.observe(health(master.chain_order()[0], 1), now)  # the first update
    assert master.state.phase is JobPhase.RUNNING
    return master


# -- start-up ----------------------------------------------------------------------------------


def test_start_up_chain_publishes_once_every_replica_answers_then_starts_workers() -> None:
    m = Master(job("chain"))
    assert kinds(m.start(T0)) == [EventName.RUN_START, ("start", "ps-0", False), ("start", "ps-1", False), ("start", "ps-2", False)]
    assert m.watched() == ["ps-0", "ps-1", "ps-2"]
    assert kinds(m.observe(health("ps-0", 0), T0)) == []
    assert kinds(m.observe(health("ps-1", 0), T0)) == []
    assert kinds(m.observe(health("ps-2", 0), T0)) == [("publish", 1, ("ps-0", "ps-1", "ps-2"))]
    assert kinds(m.observe(Published(1, ("ps-1",)), T0)) == []  # one did not take it: retried
    assert kinds(m.tick(T0 + 0.5)) == []
    assert kinds(m.tick(T0 + 1.0)) == [("publish", 1, ("ps-0", "ps-1", "ps-2"))]
    m.observe(Published(1), T0 + 1.0)
    started = kinds(m.observe(health("ps-0", 0), T0 + 1.1))
    assert started == [("start", "worker-0", ("ps-0", "ps-1", "ps-2")), ("start", "worker-1", ("ps-0", "ps-1", "ps-2"))]
    assert m.state.phase is JobPhase.STARTING
    assert kinds(m.observe(health("ps-0", 3), T0 + 2.0)) == [EventName.TRAINING_STARTED]
    assert m.state.phase is JobPhase.RUNNING and m.state.training_started_at == T0 + 2.0
    assert m.elapsed(T0 + 5.0) == 3.0


def test_a_ps_that_dies_during_start_up_is_started_again_and_counted() -> None:
    m = Master(job("checkpoint"))
    m.start(T0)
    actions = m.observe(Exited("ps-0", 1, T0 + 1), T0 + 1)
    assert kinds(actions) == [EventName.PROCESS_EXITED, ("start", "ps-0", False)]
    assert m.state.failures == 1 and m.state.recoveries == []


def test_a_chain_replica_restarted_during_start_up_gets_the_configuration_again() -> None:
    m = Master(job("chain"))
    m.start(T0)
    for p in ("ps-0", "ps-1", "ps-2"):
        for action in m.observe(health(p, 0), T0):
            if isinstance(action, PublishChain):
                m.observe(Published(action.epoch), T0)
    assert m.state.chains and m.state.chains[0].published_epoch == 1
    assert kinds(m.observe(Exited("ps-1", 1, T0 + 1), T0 + 1))[-1] == ("start", "ps-1", False)
    assert kinds(m.tick(T0 + 2)) == []  # not before it answers
    assert kinds(m.observe(health("ps-1", 0), T0 + 3)) == [("publish", 1, ("ps-0", "ps-1", "ps-2"))]


def test_start_up_has_a_deadline() -> None:
    m = Master(job("stateless"), startup_timeout=60)
    m.start(T0)
    assert kinds(m.tick(T0 + 59)) == []
    assert kinds(m.tick(T0 + 61)) == [("finish", JobPhase.FAILED, Reason.STARTUP_TIMEOUT), ("stop", "ps-0")]
    assert kinds(m.tick(T0 + 62)) == []
    assert m.state.phase is JobPhase.FAILED and m.state.reason is Reason.STARTUP_TIMEOUT


# -- checkpoint and stateless: restart after a due time ------------------------------------------


@pytest.mark.parametrize("mode", ["checkpoint", "stateless"])
def test_a_killed_ps_is_restarted_when_its_delay_is_due_and_timed_from_its_own_clock(mode: str) -> None:
    m = running(Master(job(mode, parameterServer={"restartDelay": "5s"})))
    m.observe(health("ps-0", 120), T0 + 9)
    assert m.kill_blocker("ps-0", live=True) is None
    assert kinds(m.observe(Disrupted("ps-0", T0 + 10, target="ps-head", scheduled_at=10.0), T0 + 10)) == [EventName.KILL]
    assert m.kill_blocker("ps-0", live=True) == "ps-0 is being killed"
    actions = m.observe(Exited("ps-0", -9, T0 + 10.02), T0 + 10.02)
    assert kinds(actions) == [EventName.PROCESS_EXITED, EventName.FAILURE_DETECTED]
    assert m.state.failures == 0  # a kill is a disruption, no failure
    [recovery] = m.state.recoveries
    assert (recovery.stage, recovery.due_at, recovery.version_before) == (RecoveryStage.AWAITING_RESTART, T0 + 15.02, 120)
    assert m.kill_blocker("ps-0", live=False) == "ps-0 is down"
    assert kinds(m.tick(T0 + 15.0)) == []  # not due yet: the delay is a due time, not a sleep
    assert kinds(m.tick(T0 + 15.03)) == [("start", "ps-0", False)]
    assert m.kill_blocker("ps-0", live=True) == "ps-0 is still recovering"
    assert kinds(m.observe(health("ps-0", 100, state="starting"), T0 + 16)) == []
    assert kinds(m.observe(health("ps-0", 100, started=100, ready_at=T0 + 17.5, restored_from="checkpoint"), T0 + 18)) == []
    done = m.observe(health("ps-0", 101, started=100, since=1, ready_at=T0 + 17.5, first_update_at=T0 + 17.75), T0 + 18.1)
    assert kinds(done) == [("done", "ps-0"), EventName.RECOVERY]
    phases = done[0].phases
    assert phases == pytest.approx({"detect": 0.02, "restore": 7.48, "first_update": 0.25, "total": 7.75})
    assert m.state.completed.count == 1
    assert m.state.recoveries == [] and m.kill_blocker("ps-0", live=True) is None


def test_a_second_failure_during_a_recovery_extends_the_same_outage() -> None:
    m = running(Master(job("checkpoint", parameterServer={"restartDelay": "2s"})))
    m.observe(Exited("ps-0", 1, T0 + 10), T0 + 10)
    m.tick(T0 + 12)  # restarted
    m.observe(Exited("ps-0", 1, T0 + 13), T0 + 13)  # dies again before its first update
    [recovery] = m.state.recoveries
    assert (recovery.deaths, recovery.stage, recovery.due_at, recovery.restarted_at) == (2, RecoveryStage.AWAITING_RESTART, T0 + 15, None)
    assert recovery.detected_at == T0 + 10  # the outage counts from the first loss
    assert m.state.failures == 2
    assert kinds(m.tick(T0 + 15)) == [("start", "ps-0", False)]


# -- chain ------------------------------------------------------------------------------------------


def test_a_dead_chain_head_is_promoted_away_and_a_replacement_joins_at_the_tail() -> None:
    m = running(Master(job("chain", parameterServer={"replicas": 3, "restartDelay": "3s"})))
    m.observe(health("ps-0", 50), T0 + 4)
    m.observe(health("ps-2", 48), T0 + 4)  # ack: tail: the tail's version is acknowledged
    m.observe(Disrupted("ps-0", T0 + 5), T0 + 5)
    actions = m.observe(Exited("ps-0", -9, T0 + 5.01), T0 + 5.01)
    assert kinds(actions) == [EventName.PROCESS_EXITED, EventName.FAILURE_DETECTED, ("publish", 2, ("ps-1", "ps-2")), EventName.CHAIN_PROMOTED]
    m.observe(Published(2), T0 + 5.01)
    assert m.chain_order() == ["ps-1", "ps-2"] and m.state.recoveries[0].version_before == 48
    assert kinds(m.observe(health("ps-1", 49), T0 + 5.02)) == []  # the promoted head's version
    assert kinds(m.observe(health("ps-1", 49), T0 + 5.03)) == []
    done = m.observe(health("ps-1", 50), T0 + 5.05)
    assert kinds(done) == [("done", "ps-0"), EventName.RECOVERY]
    assert done[0].phases == pytest.approx({"detect": 0.01, "restore": 0.0, "first_update": 0.04, "total": 0.05})
    assert kinds(m.tick(T0 + 7)) == []
    assert kinds(m.tick(T0 + 8.02)) == [("start", "ps-3", True)]
    assert m.state.ps == ["ps-0", "ps-1", "ps-2", "ps-3"]
    assert kinds(m.observe(health("ps-3", 0, state="joining"), T0 + 9)) == [("publish", 3, ("ps-1", "ps-2", "ps-3"))]
    assert m.chain_order() == ["ps-1", "ps-2", "ps-3"] and m.state.recovering  # it has no state yet
    joined = m.observe(health("ps-3", 52), T0 + 9.5)  # the old tail sent its state: it serves
    assert kinds(joined) == [EventName.REPLICA_JOINED]
    assert joined[0].fields["seconds"] == pytest.approx(1.48) and joined[0].fields["epoch"] == 3
    assert not m.state.recovering


@pytest.mark.parametrize(("dead", "left"), [("ps-1", ("ps-0", "ps-2")), ("ps-2", ("ps-0", "ps-1"))])
def test_a_dead_middle_or_tail_replica_is_removed(dead: str, left: tuple[str, ...]) -> None:
    m = running(Master(job("chain")))
    actions = m.observe(Exited(dead, -9, T0 + 5, disrupted=True), T0 + 5)
    assert ("publish", 2, left) in kinds(actions)
    assert m.chain_order() == list(left) and len(m.state.replacements) == 1


def test_a_replacement_lost_after_it_was_added_but_before_it_served_leaves_the_chain() -> None:
    m = running(Master(job("chain")))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    m.tick(T0 + 5)
    m.observe(health("ps-3", 0, state="joining"), T0 + 6)
    assert m.chain_order() == ["ps-1", "ps-2", "ps-3"]
    actions = m.observe(Exited("ps-3", -9, T0 + 7, disrupted=True), T0 + 7)
    assert kinds(actions) == [EventName.REPLICA_JOIN_FAILED, EventName.PROCESS_EXITED, ("publish", 4, ("ps-1", "ps-2"))]
    assert kinds(m.tick(T0 + 7)) == [("start", "ps-4", True)]


def test_a_replacement_lost_before_it_joined_is_replaced() -> None:
    m = running(Master(job("chain")))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    m.observe(Published(2), T0 + 5)
    m.tick(T0 + 5)
    assert m.state.replacements[0].name == "ps-3"
    actions = m.observe(Exited("ps-3", 1, T0 + 6), T0 + 6)
    assert kinds(actions)[:2] == [EventName.REPLICA_JOIN_FAILED, EventName.PROCESS_EXITED]
    assert kinds(m.tick(T0 + 6)) == [("start", "ps-4", True)]


def test_losing_every_chain_replica_fails_the_job() -> None:
    m = running(Master(job("chain", parameterServer={"replicas": 2})))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    actions = m.observe(Exited("ps-1", -9, T0 + 5.5, disrupted=True), T0 + 5.5)
    assert ("finish", JobPhase.FAILED, Reason.CHAIN_LOST) in kinds(actions)
    assert m.state.phase is JobPhase.FAILED and "ps-1 was the last" in m.state.message


def test_hybrid_rebuilds_a_lost_chain_from_the_workers_and_grows_it_back() -> None:
    m = running(Master(job("hybrid", parameterServer={"replicas": 3, "restartDelay": "4s"})))
    m.observe(health("ps-0", 50), T0 + 4)
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)  # promoted away, as in chain mode
    m.observe(Exited("ps-1", -9, T0 + 5.3, disrupted=True), T0 + 5.3)
    assert m.chain_order() == ["ps-2"] and len(m.state.replacements) == 2
    # The last replica with the state: not the job's end, a rebuild.
    actions = m.observe(Exited("ps-2", -9, T0 + 5.6, disrupted=True), T0 + 5.6)
    assert kinds(actions) == [EventName.PROCESS_EXITED, EventName.FAILURE_DETECTED, EventName.CHAIN_REBUILDING]
    assert m.state.phase is JobPhase.RUNNING and m.chain_order() == ["ps-2"] and m.state.chains[0].epoch == 4
    rebuild = next(r for r in m.state.recoveries if r.target == "ps-2")
    assert (rebuild.stage, rebuild.due_at, rebuild.restart) == (RecoveryStage.AWAITING_RESTART, T0 + 9.6, PSStart.REBUILD)
    # The replacements of ps-0 and ps-1 come due before the rebuilt head: they start, but
    # are not added (no replica has a state to send them) while the chain is rebuilt.
    started = m.tick(T0 + 9.35)  # (and the configuration is tried again: ps-2 is still down)
    assert [k for k in kinds(started) if k[0] == "start"] == [("start", "ps-3", True), ("start", "ps-4", True)]
    m.observe(Published(4, ("ps-2",)), T0 + 9.35)  # it did not take it
    assert kinds(m.observe(health("ps-3", 0, state="joining"), T0 + 9.4)) == []
    assert m.chain_order() == ["ps-2"]
    [start] = [a for a in m.tick(T0 + 9.6) if isinstance(a, Start)]
    assert (start.process, start.start) == ("ps-2", PSStart.REBUILD)  # same name, same address: the workers know it
    # Its first answer (still seeding from the workers' rejoins) gets it the configuration at once.
    assert kinds(m.observe(health("ps-2", 0, state="seeding"), T0 + 10)) == [("publish", 4, ("ps-2",))]
    m.observe(Published(4), T0 + 10)
    seeded = health("ps-2", 330, started=330, ready_at=T0 + 11, restored_from="workers")
    # (the promotions' recoveries, which no update followed before the chain was lost, end now)
    assert [k for k in kinds(m.observe(seeded, T0 + 11)) if k[0] == "done"] == [("done", "ps-0"), ("done", "ps-1")]
    assert rebuild.stage is RecoveryStage.AWAITING_FIRST_UPDATE and rebuild.restored_from == "workers"
    # Serving again: the replacements join at its tail, one after the other.
    assert kinds(m.observe(health("ps-3", 0, state="joining"), T0 + 11.1)) == [("publish", 5, ("ps-2", "ps-3"))]
    assert kinds(m.observe(health("ps-4", 0, state="joining"), T0 + 11.2)) == [("publish", 6, ("ps-2", "ps-3", "ps-4"))]
    done = m.observe(health("ps-2", 332, started=330, since=2, ready_at=T0 + 11, first_update_at=T0 + 11.5), T0 + 11.6)
    assert ("done", "ps-2") in kinds(done)
    [finished] = [a for a in done if isinstance(a, RecoveryDone)]
    assert finished.phases == pytest.approx({"detect": 0.0, "restore": 5.4, "first_update": 0.5, "total": 5.9})


def test_a_hybrid_replica_lost_while_the_chain_is_rebuilt_extends_the_rebuild() -> None:
    m = running(Master(job("hybrid", parameterServer={"replicas": 2, "restartDelay": "1s"})))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    m.observe(Exited("ps-1", -9, T0 + 5.5, disrupted=True), T0 + 5.5)
    m.tick(T0 + 6.5)  # ps-1 rebuilding
    actions = m.observe(Exited("ps-1", 1, T0 + 7), T0 + 7)  # dies before it served
    assert EventName.CHAIN_REBUILDING in kinds(actions)
    rebuild = next(r for r in m.state.recoveries if r.target == "ps-1")
    assert (rebuild.deaths, rebuild.restart, rebuild.due_at) == (2, PSStart.REBUILD, T0 + 8)
    assert m.state.phase is JobPhase.RUNNING


# -- restart limits ---------------------------------------------------------------------------------


def test_failures_beyond_the_backoff_limit_fail_the_job_and_disruptions_do_not_count() -> None:
    m = running(Master(job("checkpoint", runPolicy={"backoffLimit": 2})))
    for i in range(5):  # five kills: disruptions
        m.observe(Disrupted("ps-0", T0 + 10 * i + 1), T0 + 10 * i + 1)
        m.observe(Exited("ps-0", -9, T0 + 10 * i + 1), T0 + 10 * i + 1)
        m.tick(T0 + 10 * i + 1)
    assert m.state.failures == 0 and m.state.phase is JobPhase.RUNNING
    m.observe(Exited("ps-0", 1, T0 + 60), T0 + 60)
    m.tick(T0 + 60)
    m.observe(Exited("ps-0", 1, T0 + 61), T0 + 61)
    m.tick(T0 + 61)
    assert m.state.phase is JobPhase.RUNNING  # two failures: at the limit
    actions = m.observe(Exited("ps-0", 1, T0 + 62), T0 + 62)
    assert ("finish", JobPhase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED) in kinds(actions)
    assert ("stop", "worker-0") in kinds(actions) and ("start", "ps-0", False) not in kinds(m.tick(T0 + 70))


# -- workers ----------------------------------------------------------------------------------------


def test_workers_finish_fail_and_scale() -> None:
    m = running(Master(job("checkpoint", workers={"replicas": 3})))
    assert kinds(m.observe(Exited("worker-1", 1, T0 + 3), T0 + 3)) == [EventName.PROCESS_EXITED, ("start", "worker-1", ("ps-0",))]
    assert m.state.failures == 1
    assert kinds(m.observe(Exited("worker-2", 0, T0 + 4), T0 + 4)) == [EventName.PROCESS_EXITED]
    assert m.state.finished_workers == ["worker-2"]
    bigger = Master(job("checkpoint", workers={"replicas": 4}), MasterState.load(m.state.dump()))
    assert kinds(bigger.tick(T0 + 5)) == [("start", "worker-3", ("ps-0",))]  # worker-2 finished: not again
    smaller = Master(job("checkpoint", workers={"replicas": 1}), MasterState.load(bigger.state.dump()))
    assert kinds(smaller.tick(T0 + 6)) == [("stop", "worker-1"), ("stop", "worker-3")]
    actions = smaller.observe(Exited("worker-1", 0, T0 + 7), T0 + 7)
    assert [a.fields["action"] for a in actions if isinstance(a, Record)] == ["ignore"]


def finished(actions: list[Action]) -> bool:
    return any(isinstance(a, Finish) for a in actions)


def test_every_worker_finished_ends_the_job_at_the_heads_next_read_with_their_last_progress() -> None:
    m = running(Master(job("stateless")))
    m.observe(Exited("worker-0", 0, T0 + 3), T0 + 3)
    # The last worker reported its steps before it exited: the job ends once the head's
    # Health (which holds them) is read, so that the status shows the final progress.
    assert not finished(m.observe(Exited("worker-1", 0, T0 + 4), T0 + 4))
    assert not finished(m.tick(T0 + 4.5)) and not m.done
    m.observe(health("ps-0", 300), T0 + 5)
    actions = m.tick(T0 + 5)
    assert kinds(actions)[-2:] == [("finish", JobPhase.SUCCEEDED, Reason.STEPS_DONE), ("stop", "ps-0")]
    assert m.state.progress.steps == 300


def test_every_worker_finished_ends_the_job_without_a_read_after_a_while() -> None:
    m = running(Master(job("checkpoint", workers={"replicas": 1})))
    assert not finished(m.observe(Exited("worker-0", 0, T0 + 3), T0 + 3))
    assert not finished(m.tick(T0 + 3 + FINAL_PROGRESS_WAIT - 0.1))
    assert finished(m.tick(T0 + 3 + FINAL_PROGRESS_WAIT)) and m.state.reason is Reason.STEPS_DONE


# -- stop ---------------------------------------------------------------------------------------------


def test_duration_ends_the_job_on_its_clock() -> None:
    m = running(Master(job("checkpoint", stop={"duration": "30s"})))
    assert kinds(m.tick(T0 + 29.9)) == []
    assert kinds(m.tick(T0 + 30))[0] == ("finish", JobPhase.SUCCEEDED, Reason.DURATION_REACHED)


def test_the_target_ends_the_job_only_between_recoveries_and_after_min_duration() -> None:
    m = running(Master(job("checkpoint", stop={"targetAccuracy": 0.7, "minDuration": "10s"})))
    m.observe(health("ps-0", 5, accuracy=0.75), T0 + 5)
    assert kinds(m.tick(T0 + 9)) == []  # before minDuration
    m.observe(Disrupted("ps-0", T0 + 9.5), T0 + 9.5)
    assert kinds(m.tick(T0 + 10)) == []  # killed, its death not seen yet: a recovery in flight
    m.observe(Exited("ps-0", -9, T0 + 10), T0 + 10)
    assert kinds(m.tick(T0 + 10)) == [("start", "ps-0", False)]
    m.observe(health("ps-0", 5, started=5, since=1, ready_at=T0 + 11, first_update_at=T0 + 11.5), T0 + 12)
    assert kinds(m.tick(T0 + 12))[0] == ("finish", JobPhase.SUCCEEDED, Reason.TARGET_REACHED)


def test_the_target_does_not_end_the_job_before_every_planned_kill_fired() -> None:
    """A two-kill run has two kills: the second, due while the PS was still down, fires
    once its target recovered, and only then may the target end the job."""
    chaos = [{"target": "ps-head", "at": "2s"}, {"target": "ps-head", "at": "3s"}]
    m = running(Master(job("checkpoint", chaos=chaos, stop={"targetAccuracy": 0.7, "duration": "60s"})))
    m.observe(health("ps-0", 5, accuracy=0.75), T0 + 1)
    m.observe(Disrupted("ps-0", T0 + 2, target="ps-head", scheduled_at=2.0), T0 + 2)
    m.observe(Exited("ps-0", -9, T0 + 2), T0 + 2)
    m.tick(T0 + 2)
    m.observe(health("ps-0", 5, started=5, since=1, ready_at=T0 + 4, first_update_at=T0 + 4.5), T0 + 5)
    assert kinds(m.tick(T0 + 5)) == []  # recovered, target reached, but the kill at 3 s is still due
    m.observe(Disrupted("ps-0", T0 + 5.5, target="ps-head", scheduled_at=3.0), T0 + 5.5)
    m.observe(Exited("ps-0", -9, T0 + 5.5), T0 + 5.5)
    m.tick(T0 + 5.5)
    m.observe(health("ps-0", 6, started=6, since=1, ready_at=T0 + 7, first_update_at=T0 + 7.5), T0 + 8)
    assert kinds(m.tick(T0 + 8))[0] == ("finish", JobPhase.SUCCEEDED, Reason.TARGET_REACHED)
    assert m.state.chaos_fired == 2


def test_the_target_waits_for_the_kills_drawn_from_a_failure_rate_too() -> None:
    """spec.randomChaos's kills are planned kills: the target ends the job only once the
    fixed one and every drawn one fired."""
    from trainthrough.control.schedule import planned_kills

    spec = {"chaos": [{"target": "ps-head", "at": "1s"}], "stop": {"targetAccuracy": 0.7, "duration": "60s"}}
    spec["randomChaos"] = {"meanTimeBetweenFailures": "5s", "targets": ["ps-head"], "until": "40s", "maxKills": 2}
    m = running(Master(job("checkpoint", **spec)))
    kills = planned_kills(m.spec)
    assert len(kills) == 3  # the fixed one and two drawn
    now = T0
    for number, kill in enumerate(kills, start=1):
        now += 5
        m.observe(health("ps-0", 5 + number, accuracy=0.75), now)
        m.observe(Disrupted("ps-0", now, target=kill.target, scheduled_at=kill.at), now)
        m.observe(Exited("ps-0", -9, now), now)
        m.tick(now)
        m.observe(health("ps-0", 5 + number, started=5 + number, since=1, ready_at=now + 1, first_update_at=now + 1.5), now + 2)
        actions = kinds(m.tick(now + 2))
        if number < len(kills):
            assert actions == [], number  # recovered and at the target, a planned kill still due
    assert actions[0] == ("finish", JobPhase.SUCCEEDED, Reason.TARGET_REACHED)
    assert m.state.chaos_fired == 3


def test_stop_duration_ends_the_job_even_with_kills_still_planned() -> None:
    m = running(Master(job("checkpoint", chaos=[{"target": "ps-head", "at": "90s"}], stop={"duration": "30s"})))
    assert kinds(m.tick(T0 + 30))[0] == ("finish", JobPhase.SUCCEEDED, Reason.DURATION_REACHED)


def test_stopping_from_outside_ends_a_running_job_as_succeeded() -> None:
    m = running(Master(job("checkpoint")))
    assert kinds(m.stop("measured", T0 + 3))[0] == ("finish", JobPhase.SUCCEEDED, Reason.STOPPED)


# -- the state in a status ----------------------------------------------------------------------


def test_the_state_read_back_from_a_status_resumes_a_chain_recovery_where_it_stood() -> None:
    m = running(Master(job("chain", parameterServer={"replicas": 3, "restartDelay": "2s"})))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    m.tick(T0 + 7)  # the replacement ps-3 is started
    written = json.loads(json.dumps(m.state.dump()))  # through the API server and back
    assert written["recoveries"][0]["stage"] == "awaiting-promoted" and written["chains"][0]["members"] == ["ps-1", "ps-2"]
    resumed = Master(job("chain", parameterServer={"replicas": 3, "restartDelay": "2s"}), MasterState.load(written))
    assert resumed.watched() == ["ps-1", "ps-2", "ps-3"]
    assert kinds(resumed.observe(health("ps-3", 0, state="joining"), T0 + 8)) == [("publish", 3, ("ps-1", "ps-2", "ps-3"))]
    assert kinds(resumed.observe(health("ps-3", 15), T0 + 8.05)) == [EventName.REPLICA_JOINED]
    resumed.observe(health("ps-1", 20), T0 + 8.1)
    assert kinds(resumed.observe(health("ps-1", 21), T0 + 8.2)) == [("done", "ps-0"), EventName.RECOVERY]


def test_lost_updates_are_what_the_workers_measured_and_reported_through_the_head() -> None:
    m = running(Master(job("chain", parameterServer={"replicas": 3})))
    assert kinds(m.observe(health("ps-2", 40, lost=5), T0 + 2)) == []  # the tail's count is not the job's
    lost = m.observe(health("ps-0", 41, lost=3), T0 + 3)
    assert [(a.count, a.total) for a in lost if isinstance(a, UpdatesLost)] == [(3, 3)]
    assert EventName.UPDATES_LOST in kinds(lost) and m.state.completed.lost_updates == 3
    assert kinds(m.observe(health("ps-0", 42, lost=3), T0 + 4)) == []  # no growth, nothing new
    assert kinds(m.observe(health("ps-0", 43, lost=0), T0 + 5)) == []  # lower (a PS the workers did not report to yet)
    more = m.observe(health("ps-0", 44, lost=7), T0 + 6)
    assert [(a.count, a.total) for a in more if isinstance(a, UpdatesLost)] == [(4, 7)]
    assert MasterState.load(json.loads(json.dumps(m.state.dump()))).completed.lost_updates == 7


def test_the_workers_reported_waits_are_read_from_the_serving_head_and_never_go_down() -> None:
    m = running(Master(job("stateless")))

    def waited(process: str, state: str = "serving", **idle: float) -> Health:
        workers = tuple(WorkerReport(name.replace("_", "-"), steps=10, idle_seconds=s) for name, s in idle.items())
        return Health(process, state, 10, 0, 10, "", 0.0, 0.0, workers)

    m.observe(waited("ps-0", worker_0=0.5, worker_1=1.0, worker_9=50.0), T0 + 1)  # worker-9 is no member
    assert m.state.progress.idle_seconds == 1.5
    m.observe(waited("ps-0", "seeding", worker_0=4.0, worker_1=4.0), T0 + 2)  # not serving: not read
    assert m.state.progress.idle_seconds == 1.5
    # A restarted PS has heard from one worker so far: the sum it holds is smaller.
    m.observe(waited("ps-0", worker_0=0.75), T0 + 3)
    assert m.state.progress.idle_seconds == 1.5
    m.observe(waited("ps-0", worker_0=0.75, worker_1=1.5), T0 + 4)
    assert m.state.progress.idle_seconds == 2.25


# -- stuck workers -------------------------------------------------------------------------------


def reports(process: str, version: int, state: str = "serving", **steps: int) -> Health:
    """A Health of `process` with each named worker's reported steps (worker_0=5, ...)."""
    workers = tuple(WorkerReport(name.replace("_", "-"), steps=n) for name, n in steps.items())
    return Health(process, state, version, 0, 0, "", 0.0, 0.0, workers)


def test_a_stranded_worker_is_restarted_with_the_current_chain_and_a_training_one_is_not() -> None:
    m = running(Master(job("chain", parameterServer={"replicas": 3, "restartDelay": "60s"}), stuck_after=30.0))
    m.observe(Exited("ps-0", -9, T0 + 1, disrupted=True), T0 + 1)
    m.observe(Published(2), T0 + 1)
    # worker-1 knew only the replicas that are gone: it never reaches the new head ps-1
    for t in range(2, 32):
        assert EventName.WORKER_STUCK not in kinds(m.observe(reports("ps-1", 10 + t, worker_0=t), T0 + t))
    actions = m.observe(reports("ps-1", 50, worker_0=32), T0 + 32)
    assert kinds(actions) == [EventName.WORKER_STUCK, ("terminate", "worker-1", 5.0)]
    assert actions[0].reason is Reason.WORKER_STUCK and actions[0].fields["ps"] == ["ps-1", "ps-2"]
    assert m.state.failures == 1 and m.kill_blocker("worker-1", live=True) == "worker-1 is being restarted"
    assert kinds(m.observe(Disrupted("worker-1", T0 + 32.1), T0 + 32.1)) == []  # its pod deleted: no kill
    assert kinds(m.observe(reports("ps-1", 51, worker_0=33), T0 + 40)) == []  # once
    restart = m.observe(Exited("worker-1", 0, T0 + 33), T0 + 33)  # asked to stop: it exits 0
    assert kinds(restart) == [EventName.PROCESS_EXITED, ("start", "worker-1", ("ps-1", "ps-2"))]
    assert restart[0].fields["disrupted"] and m.state.failures == 1 and "worker-1" not in m.state.finished_workers
    assert kinds(m.observe(reports("ps-1", 52, worker_0=34), T0 + 62.9)) == []  # timed from its start
    assert kinds(m.observe(reports("ps-1", 53, worker_0=35, worker_1=0), T0 + 63.1)) == []  # its first report
    assert kinds(m.observe(reports("ps-1", 54, worker_0=36, worker_1=0), T0 + 93.0)) == []
    assert kinds(m.observe(reports("ps-1", 55, worker_0=37, worker_1=0), T0 + 93.1)) == [EventName.WORKER_STUCK, ("terminate", "worker-1", 5.0)]


def test_the_stuck_clock_runs_only_while_the_head_serves() -> None:
    m = running(Master(job("checkpoint"), stuck_after=30.0, liveness_deadline=1000.0))
    m.observe(reports("ps-0", 10, worker_0=1, worker_1=1), T0 + 1)
    m.observe(Unanswered("ps-0", T0 + 2), T0 + 2)  # waiting for their PS is not being stuck
    m.observe(reports("ps-0", 10, state="starting", worker_0=1, worker_1=1), T0 + 40)
    assert kinds(m.observe(reports("ps-0", 10, worker_0=1, worker_1=1), T0 + 45)) == []  # serves again from here
    assert kinds(m.observe(reports("ps-0", 11, worker_0=2, worker_1=1), T0 + 74.9)) == []
    assert kinds(m.observe(reports("ps-0", 12, worker_0=3, worker_1=1), T0 + 75)) == [EventName.WORKER_STUCK, ("terminate", "worker-1", 5.0)]


def test_a_worker_that_cannot_make_progress_ends_the_job_at_the_restart_limit() -> None:
    m = running(Master(job("checkpoint", runPolicy={"backoffLimit": 0}), stuck_after=30.0))
    actions = m.observe(reports("ps-0", 10, worker_0=5), T0 + 31)  # worker-1 never reported
    assert kinds(actions)[:3] == [EventName.WORKER_STUCK, ("terminate", "worker-1", 5.0), ("finish", JobPhase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED)]


# -- liveness ---------------------------------------------------------------------------------------


def test_a_ps_that_answers_no_health_call_for_the_deadline_is_killed_and_restarted_after_its_exit() -> None:
    m = running(Master(job("checkpoint", parameterServer={"restartDelay": "1s"}), liveness_deadline=10.0))
    m.observe(health("ps-0", 80), T0 + 4)
    assert kinds(m.observe(Unanswered("ps-0", T0 + 5), T0 + 5.1)) == []
    assert kinds(m.observe(health("ps-0", 81), T0 + 9)) == []  # an answer: the clock starts again
    for t in (10, 15, 19.9):
        assert kinds(m.observe(Unanswered("ps-0", T0 + t), T0 + t)) == []
    actions = m.observe(Unanswered("ps-0", T0 + 20), T0 + 20)
    assert kinds(actions) == [EventName.PS_UNRESPONSIVE, ("terminate", "ps-0", 0.0)]
    assert actions[0].reason is Reason.PS_UNRESPONSIVE and actions[0].fields["silent_since"] == T0 + 10
    assert m.state.failures == 1 and m.kill_blocker("ps-0", live=True) == "ps-0 is being killed"
    assert kinds(m.observe(Unanswered("ps-0", T0 + 21), T0 + 21.1)) == []  # killed once
    assert kinds(m.tick(T0 + 40)) == []  # no replacement while the hung process lives
    exited = m.observe(Exited("ps-0", -9, T0 + 41), T0 + 41)
    assert kinds(exited) == [EventName.PROCESS_EXITED, EventName.FAILURE_DETECTED]
    assert m.state.failures == 1  # the hang counted once
    [recovery] = m.state.recoveries
    assert (recovery.killed_at, recovery.version_before, recovery.due_at) == (T0 + 10, 81, T0 + 42)
    assert kinds(m.tick(T0 + 42)) == [("start", "ps-0", False)]
    assert kinds(m.observe(Unanswered("ps-0", T0 + 43), T0 + 60)) == []  # booting: not judged until it answers


def test_every_chain_member_is_watched_and_a_hung_middle_replica_is_removed() -> None:
    m = running(Master(job("chain"), liveness_deadline=10.0))
    assert m.watched() == ["ps-0", "ps-1", "ps-2"]
    m.observe(Unanswered("ps-1", T0 + 1), T0 + 1)
    assert kinds(m.observe(Unanswered("ps-1", T0 + 11), T0 + 11.1)) == [EventName.PS_UNRESPONSIVE, ("terminate", "ps-1", 0.0)]
    assert m.chain_order() == ["ps-0", "ps-1", "ps-2"]  # still a member until it is gone
    actions = m.observe(Exited("ps-1", -9, T0 + 11.2), T0 + 11.2)
    assert ("publish", 2, ("ps-0", "ps-2")) in kinds(actions)


# -- the end ---------------------------------------------------------------------------------------


def test_a_death_before_the_stop_is_a_failure_and_a_process_the_end_stopped_is_not() -> None:
    m = running(Master(job("chain", stop={"duration": "30s"})))
    m.observe(Disrupted("ps-1", T0 + 29.99), T0 + 29.99)  # killed in the last pass ...
    assert kinds(m.tick(T0 + 30))[0] == ("finish", JobPhase.SUCCEEDED, Reason.DURATION_REACHED)
    lost = m.observe(Exited("ps-1", -9, T0 + 30.01), T0 + 30.01)  # ... its death seen after the end
    assert kinds(lost) == [EventName.PROCESS_EXITED, EventName.FAILURE_DETECTED, EventName.RECOVERY_INCOMPLETE]
    assert lost[0].fields["action"] == "promote" and "the job ended first" in lost[0].fields["reason"]
    assert m.chain_order() == ["ps-0", "ps-2"]  # the final configuration: the replicas left
    crashed = m.observe(Exited("worker-1", 1, T0 + 29.995), T0 + 30.02)  # crashed before the end
    assert crashed[0].fields["action"] == "restart-worker" and m.state.failures == 1
    stopped = m.observe(Exited("ps-0", 0, T0 + 30.5), T0 + 30.5)  # stopped by the end
    assert kinds(stopped) == [EventName.PROCESS_EXITED] and stopped[0].fields["reason"] == "the job is stopping"
    assert m.state.failures == 1 and m.state.phase is JobPhase.SUCCEEDED


def test_a_replacement_that_had_not_joined_when_the_job_ended_is_reported_and_no_member() -> None:
    m = running(Master(job("chain", stop={"duration": "30s"})))
    m.observe(Exited("ps-0", -9, T0 + 5, disrupted=True), T0 + 5)
    m.tick(T0 + 5)
    m.observe(health("ps-3", 0, state="joining"), T0 + 6)
    assert m.chain_order() == ["ps-1", "ps-2", "ps-3"]
    actions = m.tick(T0 + 30)
    [incomplete] = [a for a in actions if isinstance(a, Record) and a.event is EventName.REPLICA_JOIN_INCOMPLETE]
    assert incomplete.reason is Reason.REPLICA_JOIN_INCOMPLETE and incomplete.warning
    assert incomplete.fields == {"process": "ps-3", "replaces": "ps-0", "added_epoch": 3, "started_at": T0 + 5, "seconds": 25.0}
    assert "holds no state" in incomplete.message and m.chain_order() == ["ps-1", "ps-2"]
