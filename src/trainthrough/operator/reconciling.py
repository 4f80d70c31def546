"""Reconcile a TrainingJob: create its objects (owned by it, so deletion cascades) and
converge what may change (worker replicas, the job's ConfigMap). Called by the operator's
create/resume/update handlers; returns the status to write, never raises for a bad spec
(the job is marked Failed with the field path in the condition's message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import kopf

from trainthrough.metrics import Metrics
from trainthrough.operator import conditions as c
from trainthrough.kubeapi import KubeApi
from trainthrough.runtime import manifests
from trainthrough.spec import SpecError, dump_job, parse_resource


@dataclass
class OperatorConfig:
    api: KubeApi
    metrics: Metrics
    images: dict[str, str]
    health_timeout: float = 0.5
    # (namespace, labels) of the operator's pods: set, each job gets a PS NetworkPolicy
    # that lets only its own pods and the operator reach the PS.
    operator_pods: tuple[str, dict[str, str]] | None = None


def invalid_status(body: dict[str, Any], error: SpecError) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    conditions = body.get("status", {}).get("conditions")
    message = "; ".join(f"{e.path}: {e.message}" for e in error.errors)
    return {
        "phase": c.FAILED,
        "observedGeneration": generation,
        "conditions": c.with_condition(conditions, c.READY, False, c.INVALID_SPEC, message, generation),
    }


def create(body: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """Create every object of a new (or resumed) job; the status to write."""
    try:
        job = parse_resource(body)
    except SpecError as error:
        config.api.event(body, "Warning", c.INVALID_SPEC, str(error))
        return invalid_status(body, error)
    status = body.get("status") or {}
    ps = status.get("ps") or manifests.initial_ps_processes(job)
    created = []
    for manifest in manifests.supporting_objects(job, config.images, config.operator_pods):
        if _create_owned(config, manifest, body):
            created.append(manifest["metadata"]["name"])
    for process in ps:
        if _create_owned(config, manifests.ps_pod(job, process, image=config.images.get("ps")), body):
            created.append(process)
    for rank in range(job.spec.workers.replicas):
        if _create_owned(config, manifests.worker_pod(job, rank, ps, image=config.images.get("worker")), body):
            created.append(f"worker-{rank}")
    generation = body["metadata"].get("generation")
    out: dict[str, Any] = {
        "phase": status.get("phase") if status.get("phase") not in (None, c.FAILED) else c.PENDING,
        "observedGeneration": generation,
        "ps": ps,
        "conditions": c.with_condition(
            status.get("conditions"), c.PROGRESSING, True, c.PODS_CREATED, f"created {', '.join(created) or 'nothing new'}", generation
        ),
        "recoveries": status.get("recoveries") or {"count": 0, "lostUpdates": 0, "downtimeSeconds": 0.0},
    }
    out["conditions"] = c.with_condition(out["conditions"], c.READY, False, c.NOT_SERVING, "waiting for the parameter server", generation)
    if job.spec.consistency == "chain":
        out["chain"] = status.get("chain") or {"epoch": 1, "members": ps, "head": ps[0], "publishedEpoch": 0}
    if created:
        config.api.event(body, "Normal", c.PODS_CREATED, f"created {', '.join(created)}")
    return out


def update(body: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """Converge a changed spec: the job's ConfigMap and the number of worker pods."""
    try:
        job = parse_resource(body)
    except SpecError as error:
        config.api.event(body, "Warning", c.INVALID_SPEC, str(error))
        return invalid_status(body, error)
    namespace = job.metadata.namespace
    status = body.get("status") or {}
    ps = status.get("ps") or manifests.initial_ps_processes(job)
    config.api.patch_config_map(namespace, f"{job.metadata.name}-job", {"job.json": json.dumps(dump_job(job), indent=2, sort_keys=True)})
    selector = f"{manifests.LABEL_JOB}={job.metadata.name},{manifests.LABEL_ROLE}=worker"
    existing = {p["metadata"]["labels"].get(manifests.LABEL_PROCESS) for p in config.api.list_pods(namespace, selector)}
    wanted = {f"worker-{r}" for r in range(job.spec.workers.replicas)}
    for rank in range(job.spec.workers.replicas):
        if f"worker-{rank}" not in existing:
            _create_owned(config, manifests.worker_pod(job, rank, ps, image=config.images.get("worker")), body)
    for process in sorted(existing - wanted):
        config.api.delete_pod(namespace, manifests.pod_name(job, process))
    generation = body["metadata"].get("generation")
    message = f"{len(wanted)} workers (added {len(wanted - existing)}, removed {len(existing - wanted)})"
    if wanted != existing:
        config.api.event(body, "Normal", c.SCALED, message)
    return {
        "observedGeneration": generation,
        "phase": status.get("phase") if status.get("phase") != c.FAILED else c.PENDING,
        "conditions": c.with_condition(status.get("conditions"), c.PROGRESSING, True, c.SCALED, message, generation),
    }


def _create_owned(config: OperatorConfig, manifest: dict[str, Any], owner: dict[str, Any]) -> bool:
    kopf.adopt(manifest, owner=owner)
    return config.api.create(manifest)
