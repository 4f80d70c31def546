"""The run policy as the master decides it (control/master.py): a fake clock, no processes.
The same decisions drive the local runtime and the operator; the cluster stand-in shows
them end to end (tests/test_cluster_e2e.py).

Covered:
- activeDeadlineSeconds counts the job's active time from its first start, not while it
  is suspended; past it the job fails (DeadlineExceeded) and its processes are stopped;
- a job created suspended starts nothing (no process, and it counts as not started) until
  spec.runPolicy.suspend is false, then starts as any job;
- suspending a running job stops its processes (workers first), abandons a recovery in
  flight, and their ends are no failures and no disruptions; the resume waits until every
  process ended, starts the PS again (chain: the members, topped up, a new epoch published
  once all answer), measures what it restored against the version read before (checkpoint:
  nothing lost; chain: back to the seed, everything lost, a warning), and the job's clock
  goes on from where the suspension stopped it;
- cleanPodPolicy: Running stops the processes still running; All also removes those that
  ended; None stops nothing and leaves them running, no concern of the job's any more;
- ttlSecondsAfterFinished: a finished job expires that long after its end, an unfinished
  or unlimited one never;
- the local driver refuses to run a suspended job, with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from test_master import T0, health, job, kinds, running
from trainthrough.control.master import Master, expires_at
from trainthrough.control.messages import Action, Disrupted, Exited, Published, Record, Remove
from trainthrough.control.state import MasterState
from trainthrough.control.supervising import Supervisor
from trainthrough.control.vocabulary import EventName, JobPhase, Reason
from trainthrough.events import EventLog
from trainthrough.metrics import create_metrics


def short(actions: list[Action]) -> list[Any]:
    """test_master's short forms, and Remove's."""
    return [("remove", a.process) if isinstance(a, Remove) else kinds([a])[0] for a in actions if isinstance(a, Remove) or kinds([a])]


def respec(master: Master, **spec: Any) -> Master:
    """The master of the same job after a spec change (the operator builds one per
    reconcile from the job and the state in its status)."""
    return Master(job(master.mode.value, **spec), MasterState.load(master.state.dump()))


def records(actions: list[Action], event: EventName) -> list[Record]:
    return [a for a in actions if isinstance(a, Record) and a.event is event]


# -- activeDeadlineSeconds --------------------------------------------------------------------


def test_the_deadline_fails_the_job_counted_from_its_start() -> None:
    m = running(Master(job("checkpoint", runPolicy={"activeDeadlineSeconds": 10})), T0)
    assert kinds(m.tick(T0 + 9.9)) == []
    actions = m.tick(T0 + 10)
    assert kinds(actions) == [
        ("finish", JobPhase.FAILED, Reason.DEADLINE_EXCEEDED), ("stop", "worker-0"), ("stop", "worker-1"), ("stop", "ps-0"),
    ]  # fmt: skip
    assert m.state.phase is JobPhase.FAILED and "activeDeadlineSeconds 10" in m.state.message
    assert m.state.stopped_at == T0 + 10 and kinds(m.tick(T0 + 11)) == []


def test_the_deadline_also_ends_a_job_that_never_finished_starting() -> None:
    m = Master(job("stateless", runPolicy={"activeDeadlineSeconds": 5}))
    m.start(T0)
    assert kinds(m.tick(T0 + 5)) == [("finish", JobPhase.FAILED, Reason.DEADLINE_EXCEEDED), ("stop", "ps-0")]


def test_the_deadline_does_not_run_while_the_job_is_suspended() -> None:
    m = running(Master(job("checkpoint", runPolicy={"activeDeadlineSeconds": 10})), T0)
    m = respec(m, runPolicy={"activeDeadlineSeconds": 10, "suspend": True})
    m.tick(T0 + 4)  # suspended after 4 s active
    for p in ("worker-0", "worker-1", "ps-0"):
        m.observe(Exited(p, 0, T0 + 5), T0 + 5)
    assert kinds(m.tick(T0 + 500)) == [] and m.state.phase is JobPhase.SUSPENDED
    m = respec(m, runPolicy={"activeDeadlineSeconds": 10})
    assert kinds(m.tick(T0 + 1000)) == [EventName.RESUMED, ("start", "ps-0", False)]
    assert m.state.active(T0 + 1005.9) == pytest.approx(9.9) and kinds(m.tick(T0 + 1005.9)) == []
    assert kinds(m.tick(T0 + 1006))[0] == ("finish", JobPhase.FAILED, Reason.DEADLINE_EXCEEDED)


# -- suspend ------------------------------------------------------------------------------------


def test_a_job_created_suspended_starts_nothing_until_it_is_resumed() -> None:
    m = Master(job("checkpoint", runPolicy={"suspend": True}))
    actions = m.start(T0)
    assert kinds(actions) == [EventName.SUSPENDED] and actions[0].reason is Reason.SUSPENDED
    assert m.state.phase is JobPhase.SUSPENDED and not m.state.started
    assert kinds(m.start(T0 + 1)) == [] and kinds(m.tick(T0 + 1)) == [] and m.watched() == []
    m = respec(m)
    assert kinds(m.start(T0 + 60)) == [EventName.RUN_START, ("start", "ps-0", False)]
    assert m.state.started and m.state.created_at == T0 + 60 and m.state.active(T0 + 70) == 10


def test_a_suspended_checkpoint_job_stops_its_processes_and_resumes_from_its_checkpoint() -> None:
    m = running(Master(job("checkpoint")), T0)
    m.observe(health("ps-0", 400), T0 + 20)
    m.observe(Disrupted("ps-0", T0 + 21), T0 + 21)
    m.observe(Exited("ps-0", -9, T0 + 21), T0 + 21)  # a recovery in flight
    m.tick(T0 + 21)
    assert m.state.recoveries and m.state.up == ["worker-0", "worker-1", "ps-0"]
    m.observe(health("ps-0", 400, started=400, restored_from="checkpoint"), T0 + 22)  # no update since: in flight
    m = respec(m, runPolicy={"suspend": True})
    actions = m.tick(T0 + 30)
    assert kinds(actions) == [
        EventName.RECOVERY_INCOMPLETE, EventName.SUSPENDED, ("stop", "worker-0"), ("stop", "worker-1"), ("stop", "ps-0"),
    ]  # fmt: skip
    [suspended] = records(actions, EventName.SUSPENDED)
    assert suspended.reason is Reason.SUSPENDED and not suspended.warning and "newest checkpoint" in suspended.message
    assert m.state.phase is JobPhase.SUSPENDED and m.state.recoveries == [] and m.state.suspension.count == 1
    # Their ends (pods deleted, processes stopped) are no disruption, no failure, no recovery.
    assert m.observe(Disrupted("worker-0", T0 + 30), T0 + 30) == [] and m.watched() == []
    for p in ("worker-0", "worker-1"):
        [exited] = m.observe(Exited(p, 0, T0 + 31, disrupted=True), T0 + 31)
        assert exited.fields["reason"] == "the job is suspended"
    m = respec(m)
    assert kinds(m.tick(T0 + 32)) == []  # the PS is still stopping (it writes its checkpoint)
    m.observe(Exited("ps-0", 0, T0 + 33), T0 + 33)
    assert m.state.failures == 0 and m.state.completed.count == 0
    assert kinds(m.tick(T0 + 40)) == [EventName.RESUMED, ("start", "ps-0", False)]
    assert m.state.phase is JobPhase.STARTING
    # The resumed PS serves what its checkpoint held (it wrote one as it stopped, after
    # updates the master did not read): measured against the version read before.
    answered = m.observe(health("ps-0", 450, started=450, restored_from="checkpoint"), T0 + 42)
    assert kinds(answered) == [EventName.STATE_RESTORED, ("start", "worker-0", ("ps-0",)), ("start", "worker-1", ("ps-0",))]
    [restored] = records(answered, EventName.STATE_RESTORED)
    assert (restored.reason, restored.warning) == (Reason.STATE_RESTORED, False)
    assert m.state.suspension.last == {"restored_from": "checkpoint", "version_before": 400, "version_restored": 450, "lost_updates": 0}
    assert kinds(m.observe(health("ps-0", 450, started=450), T0 + 43)) == []  # no new update yet
    assert kinds(m.observe(health("ps-0", 451, started=450, since=1), T0 + 44)) == [EventName.TRAINING_STARTED]
    # The job's clock goes on from the 30 s it had trained before the suspension.
    assert m.state.phase is JobPhase.RUNNING and m.elapsed(T0 + 44) == 30.0


def test_a_resumed_chain_starts_from_the_seed_and_says_what_it_lost() -> None:
    m = running(Master(job("chain")), T0)
    m.observe(health("ps-0", 300), T0 + 10)
    m.observe(Exited("ps-2", 1, T0 + 11), T0 + 11)  # the tail lost: its replacement not joined yet
    assert m.state.chains and m.state.chains[0].members == ["ps-0", "ps-1"] and m.state.replacements
    m = respec(m, runPolicy={"suspend": True})
    actions = m.tick(T0 + 12)
    [suspended] = records(actions, EventName.SUSPENDED)
    assert suspended.warning and "initial weights" in suspended.message
    assert records(actions, EventName.REPLICA_JOIN_INCOMPLETE) and m.state.replacements == []
    for p in list(m.state.up):
        m.observe(Exited(p, 0, T0 + 13), T0 + 13)
    m = respec(m)
    resumed = m.tick(T0 + 20)
    # The two members left and a new one: the chain's length again, as a new configuration.
    assert kinds(resumed) == [EventName.RESUMED, ("start", "ps-0", False), ("start", "ps-1", False), ("start", "ps-3", False)]
    assert m.state.chains
    assert (m.state.chains[0].members, m.state.chains[0].epoch, m.state.chains[0].published_epoch) == (["ps-0", "ps-1", "ps-3"], 3, 1)
    out: list[Action] = []
    for p in ("ps-0", "ps-1", "ps-3"):
        out += m.observe(health(p, 0, started=0, restored_from="seed"), T0 + 21)
    assert kinds(out) == [EventName.STATE_RESTORED, ("publish", 3, ("ps-0", "ps-1", "ps-3"))]
    [restored] = records(out, EventName.STATE_RESTORED)
    assert restored.warning and m.state.suspension.last == {
        "restored_from": "seed", "version_before": 300, "version_restored": 0, "lost_updates": 300,
    }  # fmt: skip
    m.observe(Published(3), T0 + 21)
    assert kinds(m.observe(health("ps-0", 0), T0 + 22))[:1] == [("start", "worker-0", ("ps-0", "ps-1", "ps-3"))]


def test_a_stateless_job_without_its_fallback_checkpoint_warns_that_a_resume_loses_the_state() -> None:
    for fallback, warned in ((False, True), (True, False)):
        m = running(Master(job("stateless", stateless={"fallbackCheckpoint": fallback})), T0)
        m = respec(m, stateless={"fallbackCheckpoint": fallback}, runPolicy={"suspend": True})
        [suspended] = records(m.tick(T0 + 5), EventName.SUSPENDED)
        assert suspended.warning is warned, fallback


# -- cleanPodPolicy ---------------------------------------------------------------------------------


def test_the_clean_pod_policy_says_which_processes_the_end_stops_and_removes() -> None:
    def ended(policy: str) -> tuple[Master, list[Any]]:
        m = running(Master(job("checkpoint", runPolicy={"cleanPodPolicy": policy}, stop={"duration": "30s"})), T0)
        m.observe(Exited("worker-1", 0, T0 + 10), T0 + 10)  # finished: its pod ended
        return m, short(m.tick(T0 + 30))

    m, actions = ended("Running")
    assert actions == [("finish", JobPhase.SUCCEEDED, Reason.DURATION_REACHED), ("stop", "worker-0"), ("stop", "ps-0")]
    m, actions = ended("All")
    assert actions[1:] == [("stop", "worker-0"), ("stop", "ps-0"), ("remove", "worker-1")]
    m, actions = ended("None")
    assert actions == [("finish", JobPhase.SUCCEEDED, Reason.DURATION_REACHED)]
    assert m.state.up == [] and sorted(m.state.kept) == ["ps-0", "worker-0"]
    [exited] = m.observe(Exited("ps-0", 0, T0 + 40), T0 + 40)
    assert exited.fields["action"] == "ignore" and m.state.failures == 0


# -- ttlSecondsAfterFinished ------------------------------------------------------------------------


def test_a_finished_job_expires_its_ttl_after_its_end() -> None:
    m = running(Master(job("checkpoint", runPolicy={"ttlSecondsAfterFinished": 30}, stop={"duration": "10s"})), T0)
    assert m.expires_at() is None
    m.tick(T0 + 10)
    assert m.state.phase is JobPhase.SUCCEEDED and m.expires_at() == T0 + 40
    kept = running(Master(job("checkpoint", stop={"duration": "10s"})), T0)
    kept.tick(T0 + 10)
    assert kept.expires_at() is None
    assert expires_at(None, 5) is None and expires_at(T0, 0) == T0


# -- the local driver -------------------------------------------------------------------------------


class NoRuntime:
    """A runtime nothing may be started on (a suspended job starts nothing)."""

    credentials = None

    def __getattr__(self, name: str) -> Any:
        if name in ("running",):
            return lambda: set()
        if name == "deaths":
            return lambda timeout=0.0: []
        raise AssertionError(f"a suspended job called runtime.{name}")


def test_the_local_driver_refuses_a_suspended_job_with_the_reason(tmp_path) -> None:
    events = EventLog(str(tmp_path / "events.jsonl"), source="master")
    summary = Supervisor(job("checkpoint", runPolicy={"suspend": True}), NoRuntime(), events, create_metrics(CollectorRegistry())).run()
    events.close()
    assert summary.status == "failed" and "spec.runPolicy.suspend is true" in summary.reason
    assert [e for e in (tmp_path / "events.jsonl").read_text().splitlines() if '"suspended"' in e]
