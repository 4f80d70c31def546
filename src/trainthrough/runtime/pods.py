"""The Kubernetes runtime: one TrainingJob's processes as pods, through the API.

Implements control/runtime.py's interface for the operator's driver (operator/driving.py),
as runtime/local.py does with processes for the local one. It is level-triggered: it
reads the job's pods once per reconcile, and a death is a process the master believes up
whose pod is gone or has ended. A pod deleted (by chaos, a preemption, a drained node) is a
disruption; a pod whose container exited on its own is a failure, with its exit code.

Addresses: workers are given each PS's headless-Service DNS name (runtime/manifests.py,
`NAME-ps-<i>.NAME.NS.svc`), which outlives the pod: a PS recreated under the same name
(checkpoint, stateless) is found again without telling the workers anything. The operator
itself talks to a PS at its pod IP while that is known (no DNS lookup, no stale cache
right after a recreation), else by the same DNS name.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Iterable

import kopf

from trainthrough.control.messages import Disrupted
from trainthrough.control.runtime import Death
from trainthrough.errors import TemporaryError
from trainthrough.kubeapi import KubeApi
from trainthrough.names import PSStart, worker_name
from trainthrough.runtime import manifests
from trainthrough.spec import TrainingJob

# Set by the chaos Job on a pod just before it deletes it, so that the operator knows when
# (to the millisecond: deletionTimestamp has whole seconds) and why the pod was lost.
ANNOTATION_DISRUPTED_AT = f"{manifests.GROUP}/disrupted-at"
ANNOTATION_DISRUPTED_BY = f"{manifests.GROUP}/disrupted-by"
ANNOTATION_SCHEDULED_AT = f"{manifests.GROUP}/scheduled-at"
ANNOTATION_VERSION_BEFORE = f"{manifests.GROUP}/version-before"  # acknowledged, read just before

_ENDED = ("Succeeded", "Failed")


def timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def process_of(pod: dict[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(manifests.LABEL_PROCESS)


def exit_code(pod: dict[str, Any]) -> int | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated.get("exitCode")
    return None


def disruption_of(pod: dict[str, Any], now: float) -> Disrupted | None:
    """The disruption a pod being deleted (or already deleted) stands for; None for a pod
    nobody is deleting."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    process = process_of(pod)
    deleting = meta.get("deletionTimestamp")
    if process is None or (not deleting and ANNOTATION_DISRUPTED_AT not in annotations):
        return None
    try:
        at = float(annotations[ANNOTATION_DISRUPTED_AT])
    except (KeyError, ValueError):
        # deletionTimestamp is when the grace period ENDS (the DELETE's time plus
        # deletionGracePeriodSeconds, in whole seconds): the deletion itself came that
        # grace period earlier, and never after now.
        deadline = timestamp(deleting)
        grace = meta.get("deletionGracePeriodSeconds") or 0
        at = now if deadline is None else min(now, deadline - float(grace))
    try:
        scheduled = float(annotations[ANNOTATION_SCHEDULED_AT])
    except (KeyError, ValueError):
        scheduled = None
    try:
        version: int | None = int(annotations[ANNOTATION_VERSION_BEFORE])
    except (KeyError, ValueError):
        version = None
    target = annotations.get(ANNOTATION_DISRUPTED_BY, "")
    return Disrupted(process, at, target=target, scheduled_at=scheduled, version_before=version)


class PodRuntime:
    """
    >>> runtime = PodRuntime(api, job, owner=body, images={}, expected=["ps-0", "worker-0"])
    >>> runtime.start_ps("ps-0"); runtime.deaths(timeout=0)
    """

    # Nothing of the pod runtime calls a PS: the operator's connection pool presents each
    # job's token and client certificate (runtime/security.JobCredentials).
    credentials: None = None

    def __init__(
        self,
        api: KubeApi,
        job: TrainingJob,
        *,
        owner: dict[str, Any],
        images: dict[str, str],
        expected: Iterable[str] = (),
        last_seen: dict[str, dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.job, self.owner, self.images = api, job, owner, images
        self.namespace = job.metadata.namespace
        self.expected = set(expected)  # the processes the master believes up
        # The last state of each process's pod from the pod events (a deleted pod is gone
        # from the API; its last state says when and why it went).
        self.last_seen = last_seen or {}
        self.clock = clock
        selector = f"{manifests.LABEL_JOB}={job.metadata.name}"
        self._pods: dict[str, dict[str, Any]] = {}
        for pod in api.list_pods(self.namespace, selector):
            process = process_of(pod)
            if process and (pod.get("metadata") or {}).get("labels", {}).get(manifests.LABEL_JOB) == job.metadata.name:
                self._pods[process] = pod

    # -- Runtime interface -----------------------------------------------------------------
    def start_ps(self, name: str, *, start: PSStart = PSStart.FRESH) -> str:
        self._create(name, manifests.ps_pod(self.job, name, start=start, image=self.images.get("ps")))
        return self.address(name)

    def start_worker(self, rank: int, ps: list[list[str]]) -> None:
        self._create(worker_name(rank), manifests.worker_pod(self.job, rank, ps, image=self.images.get("worker")))

    def kill(self, name: str, grace: float = 0.0) -> None:
        self.api.delete_pod(self.namespace, manifests.pod_name(self.job, name), grace_seconds=int(round(grace)))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Delete the pod with `timeout` as its grace; its end is observed as any death."""
        self.api.delete_pod(self.namespace, manifests.pod_name(self.job, name), grace_seconds=int(round(timeout)))

    def remove(self, name: str) -> None:
        """Delete the pod of a process that ended (spec.runPolicy.cleanPodPolicy All); no
        pod left: nothing to do."""
        pod = self._pods.get(name)
        if pod is not None:
            self.api.delete_pod(self.namespace, pod["metadata"]["name"], grace_seconds=0)

    def address(self, name: str) -> str:
        ip = ((self._pods.get(name) or {}).get("status") or {}).get("podIP")
        return f"{ip}:{manifests.PS_PORT}" if ip else manifests.ps_address(self.job, name)

    def running(self) -> set[str]:
        return {
            name for name, pod in self._pods.items()
            if not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in _ENDED
        }  # fmt: skip

    def deaths(self, timeout: float = 0.0) -> list[Death]:
        """The expected processes whose pod is gone or has ended (no waiting: the pods were
        read when this runtime was made)."""
        now = self.clock()
        found = []
        for name in sorted(self.expected):
            pod = self._pods.get(name)
            if pod is None:
                found.append(Death(name, None, now, disrupted=True))
                continue
            status = pod.get("status") or {}
            if status.get("phase") in _ENDED:
                # An eviction ends a pod as Failed without its process failing.
                evicted = status.get("reason") == "Evicted" or any(
                    c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or []
                )
                code = exit_code(pod)
                if code is None:
                    code = 0 if status["phase"] == "Succeeded" else 1
                found.append(Death(name, code, now, disrupted=evicted or bool(pod["metadata"].get("deletionTimestamp"))))
        return found

    # -- beyond the interface ------------------------------------------------------------------
    def disruptions(self) -> list[Disrupted]:
        """Expected processes whose pod is being deleted (gracefully: still running) or
        was deleted (its last state seen)."""
        now = self.clock()
        found = []
        for name in sorted(self.expected):
            pod = self._pods.get(name) or self.last_seen.get(name)
            disrupted = disruption_of(pod, now) if pod is not None else None
            if disrupted is not None:
                found.append(disrupted)
        return found

    def pod(self, name: str) -> dict[str, Any] | None:
        return self._pods.get(name)

    def _create(self, process: str, manifest: dict[str, Any]) -> None:
        existing = self._pods.get(process)
        if existing is not None:
            status = existing.get("status") or {}
            if status.get("phase") not in _ENDED and not existing["metadata"].get("deletionTimestamp"):
                return  # already running (a start applied before the status write that records it)
            # An ended pod keeps its name until deleted: remove exactly that one.
            self.api.delete_pod(self.namespace, existing["metadata"]["name"], grace_seconds=0)
        kopf.adopt(manifest, owner=self.owner)
        if not self.api.create(manifest):
            raise TemporaryError(f"{manifest['metadata']['name']} cannot be created yet: the name is still taken", delay=1.0)
        self._pods[process] = manifest
