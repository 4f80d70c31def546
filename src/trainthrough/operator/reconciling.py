"""The objects of a TrainingJob besides its pods, and the operator's configuration.

The master (control/master.py, driven by operator/driving.py) decides every pod; what is
here never changes with a recovery: the ConfigMap with the job, the headless Service, the
checkpoint claim, the NetworkPolicy and the chaos Job with its Role. Each is created once,
owned by the TrainingJob (deleting the job deletes them), and the ConfigMap follows spec
changes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from trainthrough.control.recording import RecoveryMetrics
from trainthrough.control.vocabulary import Reason
from trainthrough.errors import TemporaryError
from trainthrough.events import EventLog
from trainthrough.job_status import ConditionType, Phase, TrainingJobStatus
from trainthrough.kubeapi import KubeApi
from trainthrough.metrics import Metrics
from trainthrough.operator import conditions as c
from trainthrough.operator.chaos_policy import ChaosPolicy
from trainthrough.rpc import ConnectionPool
from trainthrough.runtime import manifests, security
from trainthrough.runtime.security import JobCredentials
from trainthrough.spec import RunPolicySpec, SpecError, TrainingJob, dump_job, validate_document


@dataclass
class OperatorConfig:
    api: KubeApi
    metrics: Metrics
    images: dict[str, str]
    health_timeout: float = 0.5
    # (namespace, labels) of the operator's pods: set, each job gets a PS NetworkPolicy
    # that lets only its own pods and the operator reach the PS.
    operator_pods: tuple[str, dict[str, str]] | None = None
    # Where the master's records also go as JSON lines (the stand-in and the benchmark
    # read them beside the pods' logs); None: the operator's log and Kubernetes Events only.
    events: EventLog | None = None
    # Each job's connections to its PS, with its token and certificates (runtime/security.py).
    job_credentials: JobCredentials | None = None
    # Off unless the platform team turns it on (operator/chaos_policy.py).
    chaos: ChaosPolicy = field(default_factory=ChaosPolicy)
    # (namespace, job) -> process -> the last state of its pod, from the pod events
    seen_pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    _recovery_metrics: dict[tuple[str, str, str], RecoveryMetrics] = field(default_factory=dict)
    _metrics_lock: threading.Lock = field(default_factory=threading.Lock)  # handlers of many jobs run in threads

    def pool_for(self, job: TrainingJob, uid: str = "") -> ConnectionPool:
        """The connections to `job`'s PS (`uid`: the TrainingJob object's)."""
        if self.job_credentials is None:
            self.job_credentials = JobCredentials(self.api)
        return self.job_credentials.pool(job, uid)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what the operator holds of a deleted job: its pods' last states, its
        connections and its metric series (else they grow with every job ever served)."""
        self.seen_pods.pop((namespace, name), None)
        if self.job_credentials is not None:
            self.job_credentials.forget(namespace, name)
        with self._metrics_lock:
            for key in [k for k in self._recovery_metrics if k[:2] == (namespace, name)]:
                self._recovery_metrics.pop(key).remove()

    def recovery_metrics(self, job: TrainingJob) -> RecoveryMetrics:
        # By namespace too: two teams' jobs of the same name are two series (metrics.py).
        key = (job.metadata.namespace, job.metadata.name, job.spec.consistency)
        with self._metrics_lock:
            if key not in self._recovery_metrics:
                self._recovery_metrics[key] = RecoveryMetrics(self.metrics, job)
            return self._recovery_metrics[key]


def invalid_status(body: dict[str, Any], error: SpecError, reason: Reason = Reason.INVALID_SPEC) -> dict[str, Any]:
    """The status of a job refused before anything of it was created (`reason`: why): it
    failed (Failed, and Stalled: nothing changes until its spec does). Only the fields
    set here are written; the rest of a status stays as it is."""
    generation = body["metadata"].get("generation")
    conditions = c.parse((body.get("status") or {}).get("conditions"))
    message = "; ".join(f"{e.path}: {e.message}" for e in error.errors)
    for type_, value in [(ConditionType.READY, False), (ConditionType.PROGRESSING, False), (ConditionType.RECONCILING, False),
                         (ConditionType.FAILED, True), (ConditionType.STALLED, True)]:  # fmt: skip
        conditions = c.with_condition(conditions, type_, value, reason, message, generation)
    status = TrainingJobStatus(
        observed_generation=generation, phase=Phase.FAILED, reason=reason, message=message, completion_time=c.now(), conditions=conditions
    )
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def ttl_of(body: dict[str, Any]) -> int | None:
    """spec.runPolicy.ttlSecondsAfterFinished of a job whose spec may be invalid as a
    whole: honoured when its runPolicy is valid by itself (a refused job is finished too)."""
    raw = (body.get("spec") or {}).get("runPolicy") or {}
    try:
        return validate_document(RunPolicySpec, raw, "spec.runPolicy", "runPolicy").ttl_seconds_after_finished
    except SpecError:
        return None


def create_supporting_objects(body: dict[str, Any], job: TrainingJob, config: OperatorConfig) -> None:
    """Create every object of a new job but its pods (those already there are kept)."""
    created = []
    objects = security.job_secrets(job, manifests.labels(job)) + manifests.supporting_objects(job, config.images, config.operator_pods)
    for manifest in objects:
        kopf.adopt(manifest, owner=body)
        if config.api.create(manifest):
            created.append(f"{manifest['kind']} {manifest['metadata']['name']}")
        elif manifest["kind"] == "Secret":
            _check_secret_owner(config, manifest, body)
    if created:
        config.api.event(body, "Normal", Reason.OBJECTS_CREATED, f"created {', '.join(created)}")


def _check_secret_owner(config: OperatorConfig, manifest: dict[str, Any], body: dict[str, Any]) -> None:
    """A job's Secret that exists already must be its own. A job deleted and created again
    under its name finds the old job's token until garbage collection removes it: using it
    would let the old job's stale processes in, and the collector would then delete it
    under the new job. Wait (a retry) until it is gone; it is created afresh then."""
    meta = manifest["metadata"]
    existing = config.api.get_secret(meta["namespace"], meta["name"])
    owners = {o.get("uid") for o in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []}
    if existing is not None and body["metadata"].get("uid") not in owners:
        raise TemporaryError(
            f"Secret {meta['name']} belongs to an earlier TrainingJob of this name; waiting for its garbage collection",
            delay=1.0,
        )


def update_config_map(job: TrainingJob, config: OperatorConfig) -> None:
    """A changed spec: the pods started from now on read it (the master starts or stops
    workers when their number changes)."""
    data = {"job.json": json.dumps(dump_job(job), indent=2, sort_keys=True)}
    config.api.patch_config_map(job.metadata.namespace, f"{job.metadata.name}-job", data)
