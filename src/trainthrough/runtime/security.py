"""The credentials of a job on Kubernetes: its Secrets, how its pods get them, the PS
probes, and the operator's own client side (trainthrough.auth decides what is on).

- Secret `NAME-token` (Opaque, key `token`; with `spec.security.token`, the default): made
  by the operator with the job's other objects and owned by the job, so deleting the job
  deletes it. The token is random per job; the operator reads it back through the API (a
  restarted operator keeps the job's token).
- The Secret `spec.security.tls.secretName` (type kubernetes.io/tls with ca.crt: what
  cert-manager issues) is the user's: the operator never writes it.
- Every pod of the job (PS, workers, the chaos Job) mounts them read-only, the token at
  TOKEN_DIR and the certificates at TLS_DIR, and is given `--token-file` / `--tls-dir`.
  Files, not environment variables: a process's environment is visible in more places
  (`/proc/PID/environ`, crash reports, `kubectl describe` of an env value).
- PS pods serve grpc.health.v1 alone on a plaintext port, HEALTH_PORT (ps/health.py), and
  the kubelet probes it natively (`grpc:` probes, Kubernetes 1.27+): it cannot present a
  client certificate, and an exec probe would need a gRPC client in the image and a
  process per probe. Readiness asks `trainthrough.ParameterServer` (SERVING once the PS
  takes pushes: not while a stateless PS seeds, a checkpoint PS restores or a chain
  replacement waits for its state), liveness the server itself (the process answers); a
  startup probe gives a slow boot (torch's import on a busy node) its time first. The
  operator does not wait for readiness (it reads each PS's own Health RPC); readiness is
  what `kubectl get pods`, dashboards and admission systems see.
- The operator talks to a job's PS with that job's token and certificate (`JobCredentials`),
  read through the API: each job may have its own CA, so one certificate mounted into the
  operator could not serve them all.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from trainthrough import auth, tls
from trainthrough.auth import READINESS, Credentials
from trainthrough.errors import CredentialsError, TemporaryError
from trainthrough.kubeapi import KubeApi
from trainthrough.pod_templates import HEALTH_PORT, TLS_DIR, TLS_VOLUME, TOKEN_DIR, TOKEN_VOLUME
from trainthrough.rpc import ConnectionPool
from trainthrough.spec import TrainingJob
from trainthrough.tls import TlsMaterial

TOKEN_KEY = "token"
_READ_ONLY = 0o440  # owner and fsGroup (the pod's user reads it through fsGroup)


def token_secret_name(job: TrainingJob) -> str:
    return f"{job.metadata.name}-token"


def token_secret(job: TrainingJob, token: str, labels: dict[str, str]) -> dict[str, Any]:
    """The job's token Secret (the operator creates it once; an existing one is kept)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token_secret_name(job), "namespace": job.metadata.namespace, "labels": labels},
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def job_secrets(job: TrainingJob, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The Secrets the operator makes for a new job (a fresh token each call: the first
    one created is the job's)."""
    return [token_secret(job, auth.new_token(), labels)] if auth.uses_token(job) else []


@dataclass
class PodSecurity:
    """What one container of a job's pod needs for the job's credentials."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)  # readinessProbe, livenessProbe, startupProbe


def pod_security(job: TrainingJob, role: str) -> PodSecurity:
    """The Secrets' volumes, mounts and options of a `role` pod (ps, worker, chaos); the
    health port and probes of a PS."""
    out = PodSecurity()
    if auth.uses_token(job):
        out.volumes.append({"name": TOKEN_VOLUME, "secret": {"secretName": token_secret_name(job), "defaultMode": _READ_ONLY}})
        out.mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
        out.args += ["--token-file", f"{TOKEN_DIR}/{TOKEN_KEY}"]
    secret_name = job.spec.security.tls.secret_name
    if secret_name is not None:
        out.volumes.append({"name": TLS_VOLUME, "secret": {"secretName": secret_name, "defaultMode": _READ_ONLY}})
        out.mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
        out.args += ["--tls-dir", TLS_DIR]
    if role == "ps":
        out.args += ["--health-port", str(HEALTH_PORT)]
        out.ports.append({"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"})
        out.probes = {
            "startupProbe": {"grpc": {"port": HEALTH_PORT}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 150},
            "livenessProbe": {"grpc": {"port": HEALTH_PORT}, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
            "readinessProbe": {"grpc": {"port": HEALTH_PORT, "service": READINESS}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 1},
        }
    return out


def secure(pod_spec: dict[str, Any], job: TrainingJob, role: str) -> dict[str, Any]:
    """`pod_spec` (its container named `role`) with `pod_security(job, role)` added; the
    hook runtime/manifests.py calls on each pod it builds."""
    pieces = pod_security(job, role)
    [container] = [c for c in pod_spec["containers"] if c["name"] == role]
    pod_spec.setdefault("volumes", []).extend(pieces.volumes)
    container.setdefault("volumeMounts", []).extend(pieces.mounts)
    container.setdefault("args", []).extend(pieces.args)
    container.setdefault("ports", []).extend(pieces.ports)
    container.update(pieces.probes)
    return pod_spec


class JobCredentials:
    """The operator's side: each job's credentials, read from its Secrets through the API,
    and a connection pool per job that presents them. The Secrets are read again every
    REREAD_SECONDS: a certificate cert-manager renewed is presented from then on."""

    REREAD_SECONDS = 300.0

    def __init__(self, api: KubeApi, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.clock = clock
        self._pools: dict[tuple[str, str, str], tuple[ConnectionPool, float]] = {}  # key -> (pool, read at)
        self._lock = threading.Lock()  # kopf runs handlers of different jobs in threads

    def pool(self, job: TrainingJob, uid: str = "") -> ConnectionPool:
        """The pool of connections to `job`'s PS (`uid`: the job object's, so a job deleted
        and created again under its name gets its new token). A new pool reads the Secrets
        when its first connection is made: a new job's token Secret is created after this."""
        with self._lock:
            return self._pool(job, uid)

    def _pool(self, job: TrainingJob, uid: str) -> ConnectionPool:
        key = (job.metadata.namespace, job.metadata.name, uid)
        now = self.clock()
        entry = self._pools.get(key)
        if entry is not None and now - entry[1] < self.REREAD_SECONDS:
            return entry[0]
        if entry is not None:
            fresh = self.credentials(job)
            if entry[0].credentials == fresh:
                self._pools[key] = (entry[0], now)
                return entry[0]
            pool = ConnectionPool(fresh)
        else:
            pool = ConnectionPool(lambda: self.credentials(job))
        for old in [k for k in self._pools if k[:2] == key[:2]]:
            self._pools.pop(old)[0].close()
        self._pools[key] = (pool, now)
        return pool

    def forget(self, namespace: str, name: str) -> None:
        """Close and drop the pools of a deleted job."""
        with self._lock:
            for key in [k for k in self._pools if k[:2] == (namespace, name)]:
                self._pools.pop(key)[0].close()

    def credentials(self, job: TrainingJob) -> Credentials:
        namespace = job.metadata.namespace
        token = None
        if auth.uses_token(job):
            token = self._secret_value(namespace, token_secret_name(job), TOKEN_KEY).decode().strip()
        material = None
        secret_name = job.spec.security.tls.secret_name
        if secret_name is not None:
            ca, cert, key = (self._secret_value(namespace, secret_name, k) for k in (tls.CA_FILE, tls.CERT_FILE, tls.KEY_FILE))
            material = TlsMaterial(ca, cert, key)
        return Credentials(auth.job_identity(job), token, material)

    def _secret_value(self, namespace: str, name: str, key: str) -> bytes:
        secret = self.api.get_secret(namespace, name)
        if secret is None:  # cert-manager may not have issued it yet; the pods wait for it too
            raise TemporaryError(f"Secret {namespace}/{name} not found", delay=5.0)
        value = (secret.get("data") or {}).get(key)
        if not value:
            raise CredentialsError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(value)
