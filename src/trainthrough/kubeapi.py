"""Calls to the Kubernetes API, on the official `kubernetes` client.

Every call the operator and the chaos Job make goes through this one class, so the RBAC
they are granted (the Helm chart's Role, the chaos Role in runtime/manifests.py) can be checked
against what they do (tests/test_rbac.py records the calls), and
`kubernetes.client.ApiException` never leaks: it is wrapped into the project's errors (a
conflict or a server error is temporary, a rejected object permanent) with the original
as the cause.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from trainthrough.errors import PermanentError, TemporaryError
from trainthrough.spec import API_GROUP, PLURAL, VERSION

def load_api_client() -> kubernetes.client.ApiClient:
    """A client with the pod's service account in a cluster, else the user's kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class KubeApi:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create a namespaced object; False if it already exists (idempotent)."""
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Secret": self.core.create_namespaced_secret,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }[kind]
        try:
            create(namespace, manifest)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise _wrap(error, f"create {kind} {manifest['metadata']['name']}") from error

    def patch_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        try:
            self.core.patch_namespaced_config_map(name, namespace, {"data": data})
        except ApiException as error:
            raise _wrap(error, f"patch ConfigMap {name}") from error

    def delete_pod(self, namespace: str, name: str, grace_seconds: int = 30) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds)
        except ApiException as error:
            if error.status != 404:
                raise _wrap(error, f"delete Pod {name}") from error

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        try:
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
        except ApiException as error:
            if error.status != 404:
                raise _wrap(error, f"annotate Pod {name}") from error

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read_raw(self.core.read_namespaced_pod, "Pod", namespace, name)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        try:
            response = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        except ApiException as error:
            raise _wrap(error, f"list Pods {selector}") from error
        return json.loads(response.data).get("items", [])

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret as raw JSON (its `data` base64-encoded), None if there is none."""
        return self._read_raw(self.core.read_namespaced_secret, "Secret", namespace, name)

    @staticmethod
    def _read_raw(read: Callable[..., Any], kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        # Raw JSON (no client models): the operator reads a few fields and must not fail
        # on a field the client's models would reject. None: there is no such object.
        try:
            return json.loads(read(name, namespace, _preload_content=False).data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _wrap(error, f"get {kind} {name}") from error

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _wrap(error, f"get TrainingJob {name}") from error

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a TrainingJob (spec.runPolicy.ttlSecondsAfterFinished); the objects it owns
        go with it (garbage collection by ownerReferences). Gone already: nothing to do."""
        try:
            self.custom.delete_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise _wrap(error, f"delete TrainingJob {name}") from error

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        except ApiException as error:
            raise _wrap(error, f"patch TrainingJob {name} status") from error

    def event(self, job: dict[str, Any], type_: str, reason: str, message: str, component: str = "trainthrough-operator") -> None:
        """A Kubernetes Event about the TrainingJob (best effort: never fails a handler)."""
        meta = job["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc)
        body = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:10]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": job.get("apiVersion", f"{API_GROUP}/{VERSION}"),
                "kind": "TrainingJob",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException:
            pass


def _wrap(error: ApiException, what: str) -> Exception:
    message = f"{what}: {error.status} {error.reason}"
    if error.status in (409, 429) or (error.status or 0) >= 500:
        return TemporaryError(message, delay=2.0)
    return PermanentError(message)
