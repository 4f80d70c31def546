"""The Kubernetes objects of a TrainingJob: pure functions from the job to manifests.

Used by the operator (operator/), which creates them with owner references to the
TrainingJob so that deleting the job deletes them. Per job `NAME` in namespace `NS`:

- ConfigMap `NAME-job`: the job as JSON, mounted at /etc/trainthrough/job.json.
- Service `NAME`: headless, selects the job's PS pods, so that PS pod `NAME-ps-0` answers
  at `NAME-ps-0.NAME.NS.svc:50051` (stable across restarts, as the local runtime keeps a
  PS's port).
- PersistentVolumeClaim `NAME-checkpoints` (checkpoint mode, or stateless with a fallback
  checkpoint): where the PS writes its checkpoints; `spec.checkpoint.volumeClaim` names an
  existing claim to use instead.
- Pods `NAME-ps-<i>` (chain: one per replica, replacements take the next free index; a
  sharded job's `NAME-ps-<shard>-<i>`, shards x replicas) and
  `NAME-worker-<r>`. Pods never restart on their own (restartPolicy Never): the operator
  decides each recovery, as the local runtime's supervisor does.
- With a `chaos` or `randomChaos` section: Job `NAME-chaos` running `trainthrough chaos` under its own
  ServiceAccount, Role and RoleBinding `NAME-chaos` (read the job, read and delete
  its pods, write Events: nothing else).
- NetworkPolicy `NAME-ps` (when the operator is told to): the PS gRPC port is open to the
  job's own pods and the operator only, its data port (the TCP data channel) to the job's
  own pods only; metrics stay open to any scraper.

Every pod (PS, chain replacement, worker, the chaos Job's pod template) gets its role's pod
template last (`spec.parameterServer.template`, `spec.workers.template`,
`spec.chaosTemplate`), merged by pod_templates.merge_pod onto everything generated here:
the template sees the whole pod, and what the operator owns cannot be overridden.
"""

from __future__ import annotations

import json
from typing import Any

from trainthrough.control.schedule import injects_failures
from trainthrough.control.runtime import worker_ps_arguments
from trainthrough.names import PSStart, labelled_shard, ps_names, worker_name
from trainthrough.pod_templates import (
    CHECKPOINT_DIR,
    CHECKPOINT_VOLUME,
    CONFIG_DIR,
    CONFIG_VOLUME,
    DATA_PORT,
    METRICS_PORT,
    PS_PORT,
    SCRATCH_DIR,
    SCRATCH_VOLUME,
    Role,
    merge_pod,
)
from trainthrough.runtime import security
from trainthrough.spec import Mode, PodTemplate, TrainingJob, dump_job

GROUP = "trainthrough.io"
LABEL_JOB = f"{GROUP}/job"
LABEL_ROLE = f"{GROUP}/role"
LABEL_PROCESS = f"{GROUP}/process"
LABEL_SHARD = f"{GROUP}/shard"  # a sharded job's PS pods: which shard (the PodMonitor's `shard` label)
DEFAULT_IMAGES = {
    "ps": "ghcr.io/trainthrough/ps:0.1.0",
    "worker": "ghcr.io/trainthrough/worker:0.1.0",
    "chaos": "ghcr.io/trainthrough/chaos:0.1.0",
}
CHECKPOINT_VOLUME_SIZE = "1Gi"
# Every process binds its own pod's address (gRPC and metrics), not 0.0.0.0: Kubernetes
# expands $(POD_IP) in the args from the container's env (the downward API's
# status.podIP), and on the stand-in each pod's address is its own loopback address.
POD_IP = "$(POD_IP)"


def labels(job: TrainingJob, role: str | None = None, process: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "trainthrough", "app.kubernetes.io/managed-by": "trainthrough-operator", LABEL_JOB: job.metadata.name}
    if role:
        out[LABEL_ROLE] = role
    if process:
        out[LABEL_PROCESS] = process
    shard = labelled_shard(process, job.spec.parameter_server.shards) if process else None
    if shard is not None:
        out[LABEL_SHARD] = shard
    return out


def pod_name(job: TrainingJob, process: str) -> str:
    """`ps-0` -> `NAME-ps-0`, `worker-1` -> `NAME-worker-1`."""
    return f"{job.metadata.name}-{process}"


def ps_address(job: TrainingJob, process: str) -> str:
    return f"{pod_name(job, process)}.{job.metadata.name}.{job.metadata.namespace}.svc:{PS_PORT}"


def needs_volume(job: TrainingJob) -> bool:
    spec = job.spec
    return spec.consistency == Mode.CHECKPOINT or (spec.consistency == Mode.STATELESS and spec.stateless.fallback_checkpoint)


def needs_claim(job: TrainingJob) -> bool:
    """Whether the operator creates the checkpoint PVC (not when the spec names one)."""
    return needs_volume(job) and job.spec.checkpoint.volume_claim is None


def checkpoint_claim_name(job: TrainingJob) -> str:
    """The PVC the PS writes checkpoints to: the one the spec names, else the job's own."""
    return job.spec.checkpoint.volume_claim or f"{job.metadata.name}-checkpoints"


def config_map(job: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{job.metadata.name}-job", "namespace": job.metadata.namespace, "labels": labels(job)},
        "data": {"job.json": json.dumps(dump_job(job), indent=2, sort_keys=True)},
    }


def service(job: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace, "labels": labels(job)},
        "spec": {
            "clusterIP": "None",
            # A restarting PS must be reachable by name before it reports ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.metadata.name, LABEL_ROLE: "ps"},
            "ports": [
                {"name": "grpc", "port": PS_PORT, "targetPort": PS_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }


def checkpoint_claim(job: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": checkpoint_claim_name(job), "namespace": job.metadata.namespace, "labels": labels(job)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": CHECKPOINT_VOLUME_SIZE}}},
    }


def _resources(cpu: str, memory: str, gpu: int) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if gpu:
        # Extended resources must be requested in limits (requests default to them).
        limits["nvidia.com/gpu"] = str(gpu)
    return {"requests": requests, "limits": limits}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod(
    job: TrainingJob, process: str, role: str, image: str, args: list[str], resources: dict[str, Any], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], extra_spec: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(job, process), "namespace": job.metadata.namespace, "labels": labels(job, role, process)},
        "spec": _pod_spec(role, image, args, resources, volumes, mounts, extra_spec),
    }


def _pod_spec(
    role: str, image: str, args: list[str], resources: dict[str, Any], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], extra_spec: dict[str, Any]
) -> dict[str, Any]:
    """One non-root container of `role` with the metrics port (and the PS's gRPC port), never
    restarted by the kubelet: the operator decides each recovery."""
    return {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": role,
                "image": image,
                "args": args,
                "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
                + (
                    [{"name": "grpc", "containerPort": PS_PORT, "protocol": "TCP"}, {"name": "data", "containerPort": DATA_PORT, "protocol": "TCP"}]
                    if role == "ps"
                    else []
                ),
                "resources": resources,
                # The root filesystem is read-only: caches (the dataset) go to /tmp. POD_IP (the
                # downward API): the address the process binds, `--host $(POD_IP)`.
                "env": [
                    {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
                    {"name": "HOME", "value": "/tmp"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "volumeMounts": mounts,
                "securityContext": _container_security(),
            }
        ],
        "volumes": volumes,
        **extra_spec,
    }


def _config_volume(job: TrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": CONFIG_VOLUME, "configMap": {"name": f"{job.metadata.name}-job"}}
    mount = {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
    return volume, mount


def _scratch_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    # The root filesystem is read-only; torch and Python want a writable /tmp.
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}, {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR}


# Where each role's template is, in the job and in a document (for errors).
TEMPLATE_PATHS: dict[Role, str] = {"ps": "spec.parameterServer.template", "worker": "spec.workers.template", "chaos": "spec.chaosTemplate"}


def template_of(job: TrainingJob, role: Role) -> PodTemplate | None:
    spec = job.spec
    return {"ps": spec.parameter_server.template, "worker": spec.workers.template, "chaos": spec.chaos_template}[role]


def _templated(pod: dict[str, Any], job: TrainingJob, role: Role) -> dict[str, Any]:
    """`pod` (or a Job's pod template) with the role's template merged onto it: the last
    step of every pod built here, so the template sees all the operator generated."""
    template = template_of(job, role)
    return merge_pod(pod, template.overlay() if template is not None else None, role, TEMPLATE_PATHS[role])


def ps_pod(job: TrainingJob, process: str, *, start: PSStart = PSStart.FRESH, image: str | None = None) -> dict[str, Any]:
    """The pod of PS `process` (e.g. `ps-0`); `start`: where its state comes from."""
    config, config_mount = _config_volume(job)
    tmp, tmp_mount = _scratch_volume()
    volumes, mounts = [config, tmp], [config_mount, tmp_mount]
    # The image's entrypoint is `trainthrough ps` (ps_image/Dockerfile): options only.
    args = [
        "--job", f"{CONFIG_DIR}/job.json", "--name", process, "--host", POD_IP,
        "--port", str(PS_PORT), "--metrics-port", str(METRICS_PORT), "--data-port", str(DATA_PORT),
    ]  # fmt: skip
    if needs_volume(job):
        volumes.append({"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": checkpoint_claim_name(job)}})
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_DIR})
        args += ["--checkpoint-dir", CHECKPOINT_DIR]
    args += start.args
    r = job.spec.parameter_server.resources
    extra = {"hostname": pod_name(job, process), "subdomain": job.metadata.name}
    pod = _pod(job, process, "ps", image or DEFAULT_IMAGES["ps"], args, _resources(r.cpu, r.memory, 0), volumes, mounts, extra)
    security.secure(pod["spec"], job, "ps")  # the job's token and certificates, the probes
    return _templated(pod, job, "ps")


def worker_pod(job: TrainingJob, rank: int, ps_processes: list[list[str]], *, image: str | None = None) -> dict[str, Any]:
    """The pod of worker `rank`, reaching the PS processes `ps_processes` (per shard, head first)."""
    config, config_mount = _config_volume(job)
    tmp, tmp_mount = _scratch_volume()
    args = [
        "--job", f"{CONFIG_DIR}/job.json", "--rank", str(rank), *worker_ps_arguments(ps_processes, lambda p: ps_address(job, p)),
        "--host", POD_IP, "--metrics-port", str(METRICS_PORT),
    ]  # fmt: skip
    if job.spec.dataset == "fashion-mnist" and job.spec.data_path is not None:
        # The path inside the pod, on the command line: a mount the kubelet rewrites (the
        # stand-in's, which has no mount namespaces) stays visible to the worker.
        args += ["--data-path", job.spec.data_path]
    r = job.spec.workers.resources
    extra: dict[str, Any] = {}
    if r.gpu:
        # GPU nodes are commonly tainted for GPU workloads only: a default, which a
        # template's tolerations replace.
        extra["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod = _pod(
        job, worker_name(rank), "worker", image or DEFAULT_IMAGES["worker"], args, _resources(r.cpu, r.memory, r.gpu),
        [config, tmp], [config_mount, tmp_mount], extra,
    )  # fmt: skip
    security.secure(pod["spec"], job, "worker")  # the job's token and certificates
    return _templated(pod, job, "worker")


def chaos_name(job: TrainingJob) -> str:
    return f"{job.metadata.name}-chaos"


def chaos_service_account(job: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": chaos_name(job), "namespace": job.metadata.namespace, "labels": labels(job, "chaos")},
    }


def chaos_role(job: TrainingJob) -> dict[str, Any]:
    """What the chaos Job does (chaos/pods.py), and nothing more: the operator may only grant
    what it holds itself, and it holds each of these."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": chaos_name(job), "namespace": job.metadata.namespace, "labels": labels(job, "chaos")},
        "rules": [
            {"apiGroups": [GROUP], "resources": ["trainingjobs"], "resourceNames": [job.metadata.name], "verbs": ["get"]},
            # patch: the kill's time and target written on the pod just before it is deleted
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }


def chaos_role_binding(job: TrainingJob) -> dict[str, Any]:
    name = chaos_name(job)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": job.metadata.namespace, "labels": labels(job, "chaos")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.metadata.namespace}],
    }


def chaos_job(job: TrainingJob, image: str | None = None) -> dict[str, Any]:
    """The Job that deletes the job's pods on the spec's chaos schedule (`trainthrough chaos`)."""
    name = chaos_name(job)
    # The schedule is read from the TrainingJob itself (spec.chaos, spec.randomChaos), grace periods included.
    args = ["--trainingjob", job.metadata.name, "--namespace", job.metadata.namespace, "--host", POD_IP, "--metrics-port", str(METRICS_PORT)]
    tmp, tmp_mount = _scratch_volume()
    chaos = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": job.metadata.namespace, "labels": labels(job, "chaos")},
        "spec": {
            # A retried chaos pod would inject its schedule a second time.
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(job, "chaos")},
                "spec": _pod_spec(
                    "chaos", image or DEFAULT_IMAGES["chaos"], args,
                    {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    [tmp], [tmp_mount], {"serviceAccountName": name},
                ),  # fmt: skip
            },
        },
    }
    security.secure(chaos["spec"]["template"]["spec"], job, "chaos")  # it reads the PS's version over gRPC
    chaos["spec"]["template"] = _templated(chaos["spec"]["template"], job, "chaos")
    return chaos


def ps_network_policy(job: TrainingJob, operator_namespace: str, operator_labels: dict[str, str]) -> dict[str, Any]:
    """The PS's gRPC port accepts the job's own pods (workers, chain peers) and the operator
    (chain configuration, health), its data port the job's own pods; its metrics port any
    scraper."""
    grpc = [{"protocol": "TCP", "port": PS_PORT}]
    data = [{"protocol": "TCP", "port": DATA_PORT}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{job.metadata.name}-ps", "namespace": job.metadata.namespace, "labels": labels(job)},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: job.metadata.name, LABEL_ROLE: "ps"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {LABEL_JOB: job.metadata.name}}}], "ports": grpc + data},
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                            "podSelector": {"matchLabels": operator_labels},
                        }
                    ],
                    "ports": grpc,
                },
                {"ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }


def initial_ps_processes(job: TrainingJob) -> list[list[str]]:
    """The job's first PS processes, per shard (head first)."""
    return ps_names(job.spec.parameter_server.shards, job.spec.parameter_server.replicas)


def supporting_objects(
    job: TrainingJob, images: dict[str, str] | None = None, operator_pods: tuple[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Every object of a job but its pods, in creation order; `operator_pods` (namespace,
    labels) asks for the PS NetworkPolicy."""
    objects = [config_map(job), service(job)]
    if needs_claim(job):
        objects.append(checkpoint_claim(job))
    if operator_pods is not None:
        objects.append(ps_network_policy(job, *operator_pods))
    if injects_failures(job.spec):  # spec.chaos or spec.randomChaos
        objects += [chaos_service_account(job), chaos_role(job), chaos_role_binding(job), chaos_job(job, (images or {}).get("chaos"))]
    return objects


def manifests(
    job: TrainingJob, images: dict[str, str] | None = None, operator_pods: tuple[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Everything a new job needs, in creation order."""
    images = images or {}
    ps = initial_ps_processes(job)
    objects = supporting_objects(job, images, operator_pods)
    objects += [ps_pod(job, p, image=images.get("ps")) for shard in ps for p in shard]
    objects += [worker_pod(job, r, ps, image=images.get("worker")) for r in range(job.spec.workers.replicas)]
    return objects
