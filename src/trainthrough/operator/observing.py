"""The operator's periodic look at a running TrainingJob: progress read from the PS (step,
model version, accuracy), the end of a pending recovery (its restore and first-update
phases, from the PS's own clock), chain replacements joining at the tail, configurations
not yet published, and the job's end. Called by the operator's timer; it reads the job
and writes the status itself under the job's lock (as recoveries do), so that neither
overwrites the other.
"""

from __future__ import annotations

from typing import Any

from trainthrough.errors import TrainthroughError
from trainthrough.operator import conditions as c
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.operator.recovering import endpoint, job_lock, publish_chain
from trainthrough.proto import ps_pb2
from trainthrough.rpc import Connection
from trainthrough.runtime import manifests
from trainthrough.spec import SpecError, TrainingJob, parse_resource


def health(config: OperatorConfig, job: TrainingJob, process: str) -> ps_pb2.HealthReply | None:
    connection = Connection(endpoint(config, job, process))
    try:
        return connection.call(lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=config.health_timeout)
    except TrainthroughError:
        return None
    finally:
        connection.close()


def observe(body: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    try:
        job = parse_resource(body)
    except SpecError:
        return {}
    namespace, name = job.metadata.namespace, job.metadata.name
    with job_lock(namespace, name):
        # Re-read and write under the job's lock: a patch returned to kopf would be applied
        # after the lock is released, over a recovery's status written in between.
        fresh = config.api.get_job(namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return {}
        patch = _observe(fresh, job, config)
        if patch:
            config.api.patch_job_status(namespace, name, patch)
    return {}


def _observe(body: dict[str, Any], job: TrainingJob, config: OperatorConfig) -> dict[str, Any]:
    """The status patch for `body` (read under the job's lock); the caller writes it."""
    namespace, name = job.metadata.namespace, job.metadata.name
    status = body.get("status") or {}
    if status.get("phase") in (c.SUCCEEDED, c.FAILED) or "ps" not in status:
        return {}  # finished, or not created yet (the create handler writes `ps`)
    patch: dict[str, Any] = {}
    generation = body["metadata"].get("generation")
    conditions = status.get("conditions")
    if job.spec.consistency == "chain":
        patch.update(_chain_upkeep(body, job, status, config))
    chain = patch.get("chain") or status.get("chain") or {}
    head = (chain.get("members") or ["ps-0"])[0]
    reply = health(config, job, head)
    if reply is not None and reply.state == "serving":
        patch["progress"] = {
            "step": reply.worker_steps,
            "modelVersion": reply.version,
            "accuracy": round(reply.accuracy, 6) if reply.accuracy >= 0 else None,
        }
        conditions = c.with_condition(conditions, c.READY, True, c.SERVING, f"{head} serving version {reply.version}", generation)
        recoveries = status.get("recoveries") or {}
        pending = recoveries.get("pending")
        # A restarted PS has resumed at its first update after the loss; a promoted
        # chain head serves at once.
        resumed = pending and (job.spec.consistency == "chain" or reply.first_update_at >= pending["detectedAt"])
        if resumed:
            patch["recoveries"] = _completed(recoveries, pending, reply)
            _observe_recovery(config, job, pending, reply, patch["recoveries"]["lastRecoverySeconds"])
            conditions = c.with_condition(conditions, c.RECOVERING_CONDITION, False, c.RECOVERED, "training resumed", generation)
            conditions = c.with_condition(conditions, c.DEGRADED, False, c.RECOVERED, "all pods present", generation)
            config.api.event(
                body, "Normal", c.RECOVERY_COMPLETED,
                f"{pending['process']}: training resumed {patch['recoveries']['lastRecoverySeconds']:.3f} s after the loss",
            )  # fmt: skip
        patch["phase"] = c.RUNNING
    elif reply is not None:
        conditions = c.with_condition(conditions, c.READY, False, c.NOT_SERVING, f"{head} is {reply.state}", generation)
    workers = config.api.list_pods(namespace, f"{manifests.LABEL_JOB}={name},{manifests.LABEL_ROLE}=worker")
    if workers and len(workers) >= job.spec.workers.replicas and all((p.get("status") or {}).get("phase") == "Succeeded" for p in workers):
        patch["phase"] = c.SUCCEEDED
        conditions = c.with_condition(conditions, c.PROGRESSING, False, c.SUCCEEDED, "every worker finished", generation)
    if conditions != status.get("conditions"):
        patch["conditions"] = conditions
    return patch


def _observe_recovery(config: OperatorConfig, job: TrainingJob, pending: dict[str, Any], reply: ps_pb2.HealthReply, total: float) -> None:
    """The recovery in the same metrics the local master exports (the dashboard and the
    rules read them): its phases, from the operator's clock and the PS's own."""
    labels = dict(trainingjob=job.metadata.name, mode=job.spec.consistency)
    phases = {"detect": max(0.0, pending["detectedAt"] - pending["lostAt"]), "total": total}
    if reply.ready_at:
        phases["restore"] = max(0.0, reply.ready_at - pending["detectedAt"])
        if reply.first_update_at >= reply.ready_at:
            phases["first_update"] = reply.first_update_at - reply.ready_at
    for phase, seconds in phases.items():
        config.metrics.recovery_seconds.labels(phase=phase, **labels).observe(seconds)
    config.metrics.recoveries.labels(**labels).inc()


def _completed(recoveries: dict[str, Any], pending: dict[str, Any], reply: ps_pb2.HealthReply) -> dict[str, Any]:
    resumed = reply.first_update_at or reply.ready_at or pending["restartedAt"]
    out = {k: v for k, v in recoveries.items() if k != "pending"}
    out["pending"] = None  # a merge patch removes a key only when told so
    out["lastRecoverySeconds"] = round(max(0.0, resumed - pending["lostAt"]), 6)
    out["downtimeSeconds"] = round(out.get("downtimeSeconds", 0.0) + out["lastRecoverySeconds"], 6)
    if reply.ready_at:
        out["lastRestoreSeconds"] = round(max(0.0, reply.ready_at - pending["detectedAt"]), 6)
    return out


def _chain_upkeep(body: dict[str, Any], job: TrainingJob, status: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """Add answering replacements at the tail; publish a configuration not yet published."""
    chain = dict(status.get("chain") or {})
    members, epoch = list(chain.get("members") or []), int(chain.get("epoch", 1))
    if not members:
        return {}
    joined = []
    for replacement in chain.get("joining", []):
        reply = health(config, job, replacement)
        if reply is not None:  # it answers: add it; the old tail transfers its state to it
            members.append(replacement)
            epoch += 1
            joined.append(replacement)
    changed = bool(joined) or chain.get("publishedEpoch", 0) < epoch
    if not changed:
        return {}
    failed = publish_chain(config, job, members, epoch)
    for replacement in joined:
        config.api.event(body, "Normal", c.REPLICA_JOINED, f"{replacement} joined the chain at the tail (epoch {epoch})")
    chain.update(
        epoch=epoch,
        members=members,
        head=members[0] if members else None,
        joining=[r for r in chain.get("joining", []) if r not in joined],
        publishedEpoch=epoch if not failed else chain.get("publishedEpoch", 0),
    )
    return {"chain": chain}
