"""Recovery on Kubernetes: when a pod of a TrainingJob is deleted or fails, the operator
acts as the job's master, with the same decisions as the local runtime
(control/recovery.py): a checkpoint or stateless PS pod is recreated under its name (it
restores its newest checkpoint, or re-seeds from the workers), a chain drops the lost
replica from its configuration (epoch + 1, published to the replicas over gRPC, the next
replica becomes head) and gets a replacement pod that joins at the tail once it answers,
a lost worker is recreated. Each recovery writes status and Kubernetes Events, and its
phases are timed (detection and restart here, restore and first update by the progress
observer in operator/observing.py).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import kopf

from trainthrough.control.chain_master import ChainMaster
from trainthrough.errors import TemporaryError
from trainthrough.control.recovery import Action, decide
from trainthrough.operator import conditions as c
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.spec import SpecError, TrainingJob, parse_resource

log = logging.getLogger(__name__)

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def job_lock(namespace: str, name: str) -> threading.Lock:
    """Recoveries of one job are serialized (they read-modify-write its status)."""
    return _locks[(namespace, name)]


def pod_gone(event_type: str, pod: dict[str, Any]) -> tuple[bool, int | None]:
    """(whether the pod is lost, its container's exit code when it ended)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    code = None
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            code = terminated.get("exitCode")
    if event_type == "DELETED":
        return True, code
    if phase == "Failed":
        return True, code if code is not None else 1
    if phase == "Succeeded":
        return True, 0
    return False, None


def endpoint(config: OperatorConfig, job: TrainingJob, process: str) -> str:
    """The PS's gRPC address: its pod IP when known, else its stable DNS name."""
    pod = config.api.get_pod(job.metadata.namespace, manifests.pod_name(job, process))
    ip = ((pod or {}).get("status") or {}).get("podIP")
    return f"{ip}:{manifests.PS_PORT}" if ip else manifests.ps_address(job, process)


def publish_chain(config: OperatorConfig, job: TrainingJob, members: list[str], epoch: int) -> list[str]:
    """Send the chain configuration to its members; returns those that did not take it."""
    master = ChainMaster([(m, endpoint(config, job, m)) for m in members], epoch=epoch)
    try:
        return master.publish()
    finally:
        master.close()


def handle_pod_event(event_type: str, pod: dict[str, Any], config: OperatorConfig) -> None:
    labels = pod["metadata"].get("labels") or {}
    name, process = labels.get(manifests.LABEL_JOB), labels.get(manifests.LABEL_PROCESS)
    if not name or not process:
        return  # not a pod of a TrainingJob (the emulator ignores label selectors)
    gone, exit_code = pod_gone(event_type, pod)
    if not gone:
        return
    namespace = pod["metadata"].get("namespace", "default")
    detected = time.time()
    with job_lock(namespace, name):
        current = config.api.get_pod(namespace, pod["metadata"]["name"])
        if current is not None and current["metadata"].get("uid") != pod["metadata"].get("uid"):
            return  # this pod was already replaced (e.g. it failed, then its deletion came)
        body = config.api.get_job(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # the job itself is going away: its pods go with it
        try:
            job = parse_resource(body)
        except SpecError:
            return
        status = body.get("status") or {}
        if status.get("phase") in (c.SUCCEEDED, c.FAILED):
            return
        if process.startswith("worker-") and int(process.split("-")[1]) >= job.spec.workers.replicas:
            return  # scaled away on purpose (reconciling.update), not lost
        ps = list(status.get("ps") or manifests.initial_ps_processes(job))
        chain = (status.get("chain") or {}).get("members") or ps
        if process in (status.get("chain") or {}).get("joining", []):
            _replace_joining(config, job, body, status, ps, process)
            return
        decision = decide(
            mode=job.spec.consistency,
            name=process,
            exit_code=exit_code,
            stopping=False,
            chain=chain if job.spec.consistency == "chain" else [],
            known_ps=set(ps),
        )
        if decision.action in (Action.IGNORE, Action.FINISHED):
            return
        lost_at = _timestamp(pod["metadata"].get("deletionTimestamp")) or detected
        config.metrics.fault_detection_seconds.labels(mode=job.spec.consistency).observe(max(0.0, detected - lost_at))
        config.api.event(body, "Warning", c.FAILURE_DETECTED, f"{process} is lost: {decision.reason}")
        patch = _apply(decision.action, process, job, body, status, ps, chain, config, pod["metadata"].get("uid"))
        restarted = time.time()
        config.metrics.restart_seconds.labels(mode=job.spec.consistency).observe(restarted - detected)
        recoveries = dict(status.get("recoveries") or {"count": 0, "lostUpdates": 0, "downtimeSeconds": 0.0})
        recoveries["count"] = recoveries.get("count", 0) + 1
        recoveries["lastDetectSeconds"] = round(max(0.0, detected - lost_at), 6)
        recoveries["lastRestartSeconds"] = round(restarted - detected, 6)
        if process.startswith("ps-"):
            recoveries["pending"] = {"process": process, "lostAt": lost_at, "detectedAt": detected, "restartedAt": restarted}
        generation = body["metadata"].get("generation")
        conditions = c.with_condition(status.get("conditions"), c.RECOVERING_CONDITION, True, c.FAILURE_DETECTED, decision.reason, generation)
        conditions = c.with_condition(conditions, c.DEGRADED, True, c.FAILURE_DETECTED, f"{process} lost", generation)
        patch.update(recoveries=recoveries, conditions=conditions)
        if job.spec.consistency != "chain" and process.startswith("ps-"):
            patch["phase"] = c.RECOVERING
        config.api.patch_job_status(namespace, name, patch)


def _apply(
    action: Action,
    process: str,
    job: TrainingJob,
    body: dict[str, Any],
    status: dict[str, Any],
    ps: list[str],
    chain: list[str],
    config: OperatorConfig,
    lost_uid: str | None,
) -> dict[str, Any]:
    """Carry out the decision; the status fields it changes."""
    if action is Action.RESTART_WORKER:
        rank = int(process.split("-")[1])
        _recreate(config, body, manifests.worker_pod(job, rank, chain if job.spec.consistency == "chain" else ps, image=config.images.get("worker")), lost_uid)
        config.api.event(body, "Normal", c.POD_REPLACED, f"recreated {process}")
        return {}
    if action is Action.RESTART_PS:
        time.sleep(job.spec.parameter_server.restart_delay)  # models rescheduling, as locally
        _recreate(config, body, manifests.ps_pod(job, process, image=config.images.get("ps")), lost_uid)
        config.api.event(body, "Normal", c.POD_REPLACED, f"recreated {process} ({job.spec.consistency}: it restores on start)")
        return {}
    # Action.PROMOTE: drop the replica, publish, start a replacement that joins at the tail.
    state = dict(status.get("chain") or {"epoch": 1, "members": chain})
    members = [m for m in state.get("members", chain) if m != process]
    epoch = int(state.get("epoch", 1)) + 1
    failed = publish_chain(config, job, members, epoch) if members else []
    replacement = f"ps-{_next_index(ps)}"
    _recreate(config, body, manifests.ps_pod(job, replacement, join=True, image=config.images.get("ps")), None)
    config.api.event(
        body, "Normal", c.CHAIN_RECONFIGURED,
        f"removed {process}; epoch {epoch}, head {members[0] if members else '-'}; replacement {replacement} joins at the tail",
    )  # fmt: skip
    return {
        "ps": ps + [replacement],
        "chain": {
            "epoch": epoch,
            "members": members,
            "head": members[0] if members else None,
            "publishedEpoch": epoch if not failed else state.get("publishedEpoch", 0),
            "joining": sorted(set(state.get("joining", [])) | {replacement}),
        },
    }


def _replace_joining(
    config: OperatorConfig, job: TrainingJob, body: dict[str, Any], status: dict[str, Any], ps: list[str], lost: str
) -> None:
    """A chain replacement was lost before it joined: start another one in its place."""
    replacement = f"ps-{_next_index(ps)}"
    _recreate(config, body, manifests.ps_pod(job, replacement, join=True, image=config.images.get("ps")), None)
    chain = dict(status["chain"])
    chain["joining"] = [r for r in chain.get("joining", []) if r != lost] + [replacement]
    config.api.patch_job_status(job.metadata.namespace, job.metadata.name, {"ps": ps + [replacement], "chain": chain})
    config.api.event(body, "Warning", c.FAILURE_DETECTED, f"replacement {lost} was lost before it joined; starting {replacement}")


def _recreate(config: OperatorConfig, owner: dict[str, Any], manifest: dict[str, Any], lost_uid: str | None) -> None:
    kopf.adopt(manifest, owner=owner)
    if config.api.create(manifest):
        return
    # The name is taken. A failed pod keeps its name until deleted: replace exactly that
    # pod, never a healthy one that already took its place.
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    existing = config.api.get_pod(namespace, name)
    if existing is not None and lost_uid is not None and existing["metadata"].get("uid") == lost_uid:
        config.api.delete_pod(namespace, name, grace_seconds=0)
        if not config.api.create(manifest):
            raise TemporaryError(f"{name} could not be recreated: the name is still taken")



def _next_index(ps: list[str]) -> int:
    return max((int(p.split("-")[1]) for p in ps), default=-1) + 1


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
