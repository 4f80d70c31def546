"""The stand-in's Job controller: the `batch/v1` Jobs of the emulator get their pods (the
operator's chaos Job is one), as kube-controller-manager's Job controller gives them.

Started by the stand-in cluster (cluster.py) beside the kubelet; it follows Jobs and
their pods through the API (client.py). For each Job, with one completion (`completions`
and `parallelism` other than 1 are not emulated):

- one pod from `spec.template`, named `JOB-` and 5 random characters (generateName),
  labelled `job-name`, `batch.kubernetes.io/job-name`, `controller-uid` and
  `batch.kubernetes.io/controller-uid`, owned by the Job (a controller ownerReference,
  so deleting the Job deletes it);
- a new pod for each failed one (Failed, or deleted before it succeeded) while the
  failures do not exceed `spec.backoffLimit` (default 6), at once (no back-off delay);
- `status`: `active`, `succeeded`, `failed`, `startTime`, and at the end a condition
  `Complete` (with `completionTime`) or `Failed` (reason BackoffLimitExceeded; the active
  pods are deleted), written through the status subresource when it changes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

from trainthrough.standin.client import Api, job_path, pod_path
from trainthrough.standin.emulator import KubeApiError, timestamp

log = logging.getLogger(__name__)

USER_AGENT = "trainthrough-standin-job-controller"
DEFAULT_BACKOFF_LIMIT = 6
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
CONTROLLER_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")


def _owner(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the Job that controls a pod, if one does."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/") and ref.get("controller"):
            return meta.get("namespace", ""), ref["name"]
    return None


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


class JobController:
    """Runs batch/v1 Jobs as pods; see the module doc::

        controller = JobController(api)
        task = asyncio.create_task(controller.run())   # until cancelled
    """

    def __init__(self, api: Api) -> None:
        self.api = api
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        # Per Job uid: its pods that ended, by pod uid: "Succeeded" or "Failed" (a count
        # that survives the pods' deletion).
        self._ended: dict[str, dict[str, str]] = {}

    async def run(self, synced: asyncio.Event | None = None) -> None:
        """Follow Jobs and pods and reconcile, until cancelled; `synced` once both are listed."""
        jobs_synced, pods_synced = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.ensure_future(self.api.follow("/apis/batch/v1/jobs", self._on_job, jobs_synced)),
            asyncio.ensure_future(self.api.follow("/api/v1/pods", self._on_pod, pods_synced)),
            asyncio.ensure_future(self._work()),
        ]
        try:
            await asyncio.wait([asyncio.ensure_future(jobs_synced.wait()), asyncio.ensure_future(pods_synced.wait())])
            if synced is not None:
                synced.set()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _enqueue(self, key: tuple[str, str]) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata") or {}
        if kind == "DELETED":
            self._ended.pop(meta.get("uid", ""), None)
            return
        self._enqueue((meta.get("namespace", ""), meta.get("name", "")))

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        owner = _owner(pod)
        if owner is None:
            return
        meta = pod.get("metadata") or {}
        job_uid = next((ref["uid"] for ref in meta.get("ownerReferences") or [] if ref.get("controller")), "")
        phase = (pod.get("status") or {}).get("phase")
        ended = self._ended.setdefault(job_uid, {})
        if phase in ("Succeeded", "Failed"):
            ended.setdefault(meta["uid"], phase)
        elif kind == "DELETED":
            ended.setdefault(meta["uid"], "Failed")  # deleted before it succeeded
        self._enqueue(owner)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            try:
                await self._reconcile(*key)
            except KubeApiError as error:
                log.warning("Job %s/%s: %s; retrying", *key, error)
                await asyncio.sleep(0.5)
                self._enqueue(key)

    async def _reconcile(self, namespace: str, name: str) -> None:
        try:
            job = await self.api.request("GET", job_path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return
            raise
        if _finished(job) or (job.get("metadata") or {}).get("deletionTimestamp"):
            return
        uid = job["metadata"]["uid"]
        selector = f"{CONTROLLER_UID_LABELS[1]}={uid}"
        listed = await self.api.request("GET", pod_path(namespace), params={"labelSelector": selector})
        ended = self._ended.setdefault(uid, {})
        active = []
        for pod in listed.get("items", []):
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                ended.setdefault(pod["metadata"]["uid"], phase)
            elif not pod["metadata"].get("deletionTimestamp"):
                active.append(pod)
        succeeded = sum(1 for phase in ended.values() if phase == "Succeeded")
        failed = len(ended) - succeeded
        now = timestamp()
        status = dict(job.get("status") or {})
        status.setdefault("startTime", now)
        limit = (job.get("spec") or {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        if succeeded:
            status["conditions"] = [_condition("Complete", "Completed", "Job completed", now)]
            status["completionTime"] = now
        elif failed > limit:
            status["conditions"] = [_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now)]
            for pod in active:
                await self._delete(pod)
            active = []
        elif not active:
            active = [await self.api.request("POST", pod_path(namespace), _pod(job))]
        status.update(active=len(active), succeeded=succeeded, failed=failed)
        if status != job.get("status"):
            await self.api.patch_status(job_path(namespace, name), status)

    async def _delete(self, pod: Mapping[str, Any]) -> None:
        try:
            await self.api.request("DELETE", pod_path(pod["metadata"]["namespace"], pod["metadata"]["name"]))
        except KubeApiError as error:
            if error.status != 404:
                raise


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now}


def _pod(job: Mapping[str, Any]) -> dict[str, Any]:
    """A new pod of `job` from its template."""
    meta = job["metadata"]
    template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    template_meta = template.get("metadata") or {}
    labels = dict(template_meta.get("labels") or {})
    labels.update({label: meta["name"] for label in JOB_NAME_LABELS})
    labels.update({label: meta["uid"] for label in CONTROLLER_UID_LABELS})
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [owner],
        },
        "spec": template.get("spec") or {},
    }
