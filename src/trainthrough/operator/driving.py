"""The operator's driver of the master: one reconcile of one TrainingJob.

Called by every handler (operator/handlers.py): a job created or resumed, a pod of the job
changed, the timer. Under the job's lock it reads the job and its pods, loads the master's
state from `status.master`, tells the master what it observed (pods gone or ended, pods
being deleted, PS health over gRPC, the clock), applies the actions it gets back through
the pod runtime (runtime/pods.py) with the same appliers as the local driver
(control/applying.py), writes the status once, and only then emits the Kubernetes Events
and records the metrics. It decides nothing and never sleeps: a restart delay is a due
time in the master's state that a later reconcile finds due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from trainthrough.control.applying import Applier
from trainthrough.control.messages import Exited, Health, Observation, Record, RecoveryDone, Unanswered
from trainthrough.control.master import Master, expires_at
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import EventName, Reason
from trainthrough.errors import PermanentError, TemporaryError
from trainthrough.job_status import Phase
from trainthrough.operator import reconciling
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.operator.status import merge_patch, render
from trainthrough.rpc import ConnectionPool
from trainthrough.runtime.pods import PodRuntime, timestamp
from trainthrough.spec import SpecError, TrainingJob, parse_resource

log = logging.getLogger(__name__)

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def job_lock(namespace: str, name: str) -> threading.Lock:
    """One reconcile of a job at a time (each reads, decides and writes its status)."""
    return _locks[(namespace, name)]


def reconcile(namespace: str, name: str, config: OperatorConfig) -> None:
    """Drive job `namespace/name` one step."""
    with job_lock(namespace, name):
        body = config.api.get_job(namespace, name)
        if body is None:
            config.forget(namespace, name)  # a pod event of a job already gone
            return
        if body["metadata"].get("deletionTimestamp"):
            return  # the job is going away: its pods go with it
        status = body.get("status") or {}
        try:
            job = parse_resource(body)
        except SpecError as error:
            _refuse(body, status, error, Reason.INVALID_SPEC, config)
            return
        refusal = config.chaos.refusal(job)
        if refusal is not None and not status.get("master"):  # a job already running keeps running
            _refuse(body, status, refusal, Reason.CHAOS_NOT_ALLOWED, config)
            return
        _drive(body, job, status, config)


def _refuse(body: dict[str, Any], status: dict[str, Any], error: SpecError, reason: Reason, config: OperatorConfig) -> None:
    """Fail a job that may not run, once: nothing of it is created. A refused job has
    finished too: its ttlSecondsAfterFinished counts from its completionTime."""
    if status.get("phase") != Phase.FAILED:
        metadata = body["metadata"]
        config.api.patch_job_status(metadata["namespace"], metadata["name"], reconciling.invalid_status(body, error, reason))
        config.api.event(body, "Warning", reason, str(error))
        return
    _expire(body, expires_at(timestamp(status.get("completionTime")), reconciling.ttl_of(body)), config)


def _drive(body: dict[str, Any], job: TrainingJob, status: dict[str, Any], config: OperatorConfig) -> None:
    namespace, name = job.metadata.namespace, job.metadata.name
    state = MasterState.load(status.get("master"))
    master = Master(job, state)
    if _expire(body, master.expires_at(), config) or (state.phase.terminal and not state.up):
        config.seen_pods.pop((namespace, name), None)
        return  # deleted, or finished and every pod gone
    last_seen = config.seen_pods.get((namespace, name), {})
    runtime = PodRuntime(config.api, job, owner=body, images=config.images, expected=state.up, last_seen=last_seen)
    # Events and metrics only once the status that holds what they tell is written.
    records: list[Record] = []
    recoveries: list[RecoveryDone] = []
    pool = config.pool_for(job, body["metadata"].get("uid", ""))  # the job's token and certificates
    applier = Applier(master, runtime, record=records.append, on_recovery=recoveries.append, pool=pool, remove=runtime.remove)

    def observe(observation: Observation) -> None:
        applier.apply(master.observe(observation, time.time()))

    try:
        if not state.started and not state.phase.terminal:
            # A job created suspended gets nothing (no chaos Job, no claim) until it starts.
            actions = master.start(time.time())
            if state.started:
                reconciling.create_supporting_objects(body, job, config)
            applier.apply(actions)
        else:
            for disrupted in runtime.disruptions():
                observe(disrupted)
            for death in runtime.deaths():
                observe(Exited.of(death))
            for process in master.watched():
                probed = _probe(config, pool, runtime, process)
                if probed is not None:
                    observe(probed)
        applier.apply(master.tick(time.time()))
    except TemporaryError:
        # What was applied stays applied (every start is idempotent); the state that led
        # to it is not written, so the next reconcile decides again from the last one.
        raise
    except PermanentError as error:  # the API refuses what the job needs: it cannot run
        log.warning("%s/%s: %s", namespace, name, error)
        applier.apply(master.fail(str(error), time.time()))
    new = render(master, status, body["metadata"].get("generation"))
    patch = merge_patch(status, new)
    if patch:
        config.api.patch_job_status(namespace, name, patch)
    for done in recoveries:
        config.recovery_metrics(job).record(done)
    config.recovery_metrics(job).observe(master.state, time.time())  # the goodput split, live
    for record in records:
        _emit(config, body, record)


def _expire(body: dict[str, Any], due: float | None, config: OperatorConfig) -> bool:
    """Delete the finished job once its spec.runPolicy.ttlSecondsAfterFinished is due (its
    pods and other objects go with it); whether it was deleted."""
    if due is None or time.time() < due:
        return False
    meta = body["metadata"]
    log.info("%s/%s: deleted, its ttlSecondsAfterFinished past", meta["namespace"], meta["name"])
    if config.events is not None:
        config.events.emit(EventName.DELETED.value, trainingjob=meta["name"], reason="ttlSecondsAfterFinished")
    config.api.delete_job(meta["namespace"], meta["name"])
    return True


def _probe(config: OperatorConfig, pool: ConnectionPool, runtime: PodRuntime, process: str) -> Health | Unanswered | None:
    """A PS's health, or that it did not answer (the master's liveness check); None when
    its pod has no IP yet (nothing would answer: no call made)."""
    pod = runtime.pod(process) or {}
    if not (pod.get("status") or {}).get("podIP"):
        return None
    started = time.time()
    reply = pool.get(runtime.address(process)).health(config.health_timeout)
    return Health.of(process, reply) if reply is not None else Unanswered(process, started)


def _emit(config: OperatorConfig, body: dict[str, Any], record: Record) -> None:
    log.info("%s/%s %s %s", body["metadata"]["namespace"], body["metadata"]["name"], record.event.value, record.fields)
    if config.events is not None:
        config.events.emit(record.event.value, **{"trainingjob": body["metadata"]["name"], **record.fields})
    if record.reason is not None:
        config.api.event(body, "Warning" if record.warning else "Normal", record.reason, record.message)
