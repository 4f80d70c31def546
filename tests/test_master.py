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
  replica fails the job (EveryChainReplicaLost); with ack: tail the tail's version counts;
- a second failure during a recovery extends it (one outage, two deaths);
- lost updates are the workers' measurement (HealthReply.lost_updates of the head): each
  growth is one UpdatesLost with its count, the total is in the state; a replica that is
  not the head, and a report that did not grow, change nothing;
- restart limits: process failures beyond spec.runPolicy.backoffLimit fail the job
  (BackoffLimitExceeded), disruptions (kills, deleted pods) do not count;
- workers: exit 0 is finished (all finished: StepsReached), a failure is restarted, a
  change of spec.workers.replicas starts or stops workers;
- a kill waits while its target is down, being killed or recovering;
- stop: duration, target accuracy only between recoveries, after minDuration and once
  every kill of spec.chaos fired;
- the state written to a status and read back resumes a recovery where it stood.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

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
    UpdatesLost,
    WorkerReport,
)
from trainthrough.control.master import Master
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import EventName, JobPhase, Reason, RecoveryStage
from trainthrough.spec import parse_job

T0 = 1_000.0


def job(consistency: str = "checkpoint", **spec: Any):
    base: dict[str, Any] = {"consistency": consistency, "model": "mlp", "dataset": "synthetic", "workers": {"replicas": 2}}
    if consistency == "chain":
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
            out.append(("start", a.process, a.join) if not a.process.startswith("worker-") else ("start", a.process, a.ps))
        elif isinstance(a, Stop):
            out.append(("stop", a.process))
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
                master.observe(Published(action.epoch), now)
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
    assert m.state.chain is not None and m.state.chain.published_epoch == 1
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


def test_every_worker_finished_ends_the_job() -> None:
    m = running(Master(job("stateless")))
    m.observe(Exited("worker-0", 0, T0 + 3), T0 + 3)
    actions = m.observe(Exited("worker-1", 0, T0 + 4), T0 + 4)
    assert kinds(actions)[-2:] == [("finish", JobPhase.SUCCEEDED, Reason.STEPS_REACHED), ("stop", "ps-0")]


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
    assert written["recoveries"][0]["stage"] == "awaiting-promoted" and written["chain"]["members"] == ["ps-1", "ps-2"]
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
