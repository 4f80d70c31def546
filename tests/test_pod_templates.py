"""Pod templates (spec.parameterServer.template, spec.workers.template, spec.chaosTemplate)
and a worker reading its dataset from a volume.

Covered, as pure functions:
- the merge (pod_templates.merge_template): maps merge key by key, recursively; keyed lists
  merge by their Kubernetes merge key (containers and env by name, volumeMounts by
  mountPath, ports by containerPort), new items appended; other lists and scalars are
  replaced (a template's tolerations replace the GPU worker's default); inputs unchanged;
- what the operator owns is refused at the field's path: by parse_job (so `trainthrough
  validate` and the operator, before any pod exists) and by merge_pod against what the
  generated pod holds (an entry the operator adds, such as the job's token volume);
- every pod the operator builds carries its role's template: PS pods, a chain
  replacement, GPU workers, the chaos Job's pod; with rich templates every manifest passes
  kubernetes-validate --strict (1.30, 1.33);
- the model follows Kubernetes: each field is one of 1.30's (and 1.37's) PodSpec /
  Container fields and every 1.30 field is modelled but ephemeralContainers; the merge
  keys, list types and volume sources are the schema's own;
- the CRD keeps a template whole (pruning as the API server prunes drops nothing) and
  refuses an unknown field in it; examples/airgapped.yaml validates;
- dataPath: an explicit path must hold the data (no search, no download); the local
  runtime reads it through the worker template's hostPath volume, and nothing else of it;
  a worker exiting with CONFIG_EXIT_CODE fails the job at once (the master, fake clock).
End to end on the cluster stand-in (one operator, two jobs at once):
- a job whose templates put a node selector, a toleration, a pull secret and labels on
  every pod (PS, worker, chaos) and mount a hostPath data volume at dataPath: every pod
  has them, the worker loaded Fashion-MNIST from the volume, and the job completes;
- a job whose data volume holds nothing: the worker exits with CONFIG_EXIT_CODE saying
  why, nothing is downloaded, and the job fails at once (PermanentError), not after
  spec.runPolicy.backoffLimit restarts.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainthrough.names import PSStart
from trainthrough import crd, data, pod_templates
from trainthrough.errors import CONFIG_EXIT_CODE, PermanentError, SpecError
from trainthrough.pod_templates import merge_pod, merge_template, node_path
from trainthrough.runtime import manifests
from trainthrough.spec import ContainerTemplate, PodSpecTemplate, VolumeTemplate, local_data_path, local_job, parse_job

ROOT = Path(__file__).resolve().parents[1]
REAL = (ROOT / "../shared/data/fashion-mnist").resolve()
KUBERNETES_VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))

WORKER_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "vision"}, "annotations": {"example.com/owner": "vision"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu.example.com/model", "operator": "In", "values": ["a100", "h100"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"trainthrough.io/role": "worker"}}}],
        "priorityClassName": "training",
        "schedulerName": "volcano",
        "runtimeClassName": "nvidia",
        "imagePullSecrets": [{"name": "registry-pull"}],
        "serviceAccountName": "trainer",
        "securityContext": {"runAsUser": 2000, "supplementalGroups": [3000]},
        "volumes": [{"name": "data", "hostPath": {"path": "/srv/datasets/fashion-mnist", "type": "Directory"}},
                    {"name": "shared", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}],
        "initContainers": [{"name": "check-data", "image": "registry.internal/busybox:1.36", "command": ["ls", "/data"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "containers": [
            {"name": "worker", "image": "registry.internal/trainthrough/worker:0.1.0",
             "env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
             "envFrom": [{"configMapRef": {"name": "site-env"}}],
             "volumeMounts": [{"name": "data", "mountPath": "/data/fashion-mnist", "readOnly": True}],
             "resources": {"limits": {"cpu": "4"}, "requests": {"ephemeral-storage": "1Gi"}},
             "securityContext": {"readOnlyRootFilesystem": False}},
            {"name": "exporter", "image": "registry.internal/dcgm-exporter:3", "ports": [{"name": "dcgm", "containerPort": 9400}]},
        ],
    },
}  # fmt: skip
PS_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "vision"}},
    "spec": {
        "nodeSelector": {"node-role.example.com/cpu": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry-pull"}],
        "priorityClassName": "training",
        "containers": [{"name": "ps", "image": "registry.internal/trainthrough/ps:0.1.0", "resources": {"limits": {"memory": "8Gi"}}}],
    },
}  # fmt: skip
CHAOS_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "vision"}},
    "spec": {
        "nodeSelector": {"node-role.example.com/cpu": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry-pull"}],
        "containers": [{"name": "chaos", "image": "registry.internal/trainthrough/chaos:0.1.0"}],
    },
}  # fmt: skip


def document(name: str = "tpl", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataPath": "/data/fashion-mnist",
        "workers": {"replicas": 2, "resources": {"gpu": 1}, "template": copy.deepcopy(WORKER_TEMPLATE)},
        "parameterServer": {"template": copy.deepcopy(PS_TEMPLATE)},
        "chaosTemplate": copy.deepcopy(CHAOS_TEMPLATE),
        "chaos": [{"target": "ps-head", "at": "30s"}],
    }
    body.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_job(doc)
    return {e.path: e.message for e in info.value.errors}


def containers(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec["containers"]}


# --------------------------------------------------------------------------- the merge


def test_maps_merge_keyed_lists_merge_by_key_other_lists_and_scalars_replace() -> None:
    pod = {
        "metadata": {"labels": {"a": "1", "b": "2"}},
        "spec": {
            "securityContext": {"runAsUser": 1, "seccompProfile": {"type": "RuntimeDefault"}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [{"name": "worker", "image": "old", "args": ["--x"], "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 9100, "name": "metrics"}],
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}}],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }  # fmt: skip
    before = copy.deepcopy(pod)
    template = {
        "metadata": {"labels": {"b": "3", "c": "4"}},
        "spec": {
            "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "containers": [
                {"name": "worker", "image": "new", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
                 "ports": [{"containerPort": 9100, "protocol": "TCP"}, {"containerPort": 8080}],
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp/", "readOnly": True}, {"name": "d", "mountPath": "/d"}],
                 "resources": {"limits": {"cpu": "4", "nvidia.com/gpu": "1"}}},
                {"name": "sidecar", "image": "s"},
            ],
            "volumes": [{"name": "d", "hostPath": {"path": "/srv"}}],
        },
    }  # fmt: skip
    merged = merge_template(pod, template)
    assert merged["metadata"]["labels"] == {"a": "1", "b": "3", "c": "4"}
    assert merged["spec"]["securityContext"] == {"runAsUser": 1, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}
    assert merged["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]  # replaced, not appended
    main, sidecar = merged["spec"]["containers"]
    assert (main["name"], main["image"], main["args"], sidecar) == ("worker", "new", ["--x"], {"name": "sidecar", "image": "s"})
    assert main["env"] == [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]
    assert main["ports"] == [{"containerPort": 9100, "name": "metrics", "protocol": "TCP"}, {"containerPort": 8080}]
    assert main["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp", "readOnly": True}, {"name": "d", "mountPath": "/d"}]
    assert main["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi", "cpu": "4", "nvidia.com/gpu": "1"}}
    assert [v["name"] for v in merged["spec"]["volumes"]] == ["tmp", "d"]
    assert pod == before  # the pod is not changed
    merged["spec"]["containers"][1]["image"] = "changed"
    assert template["spec"]["containers"][1]["image"] == "s"  # and the result shares nothing


def test_every_pod_the_operator_builds_carries_its_roles_template() -> None:
    job = parse_job(document(consistency="chain", parameterServer={"replicas": 3, "template": copy.deepcopy(PS_TEMPLATE)}))
    objects = manifests.manifests(job) + [manifests.ps_pod(job, "ps-3", start=PSStart.JOIN)]
    pods = [o for o in objects if o["kind"] == "Pod"]
    [chaos] = [o for o in objects if o["kind"] == "Job"]
    assert len(pods) == 3 + 2 + 1
    for pod_like, role in [(p, p["metadata"]["labels"][manifests.LABEL_ROLE]) for p in pods] + [(chaos["spec"]["template"], "chaos")]:
        spec, labels = pod_like["spec"], pod_like["metadata"]["labels"]
        assert labels["team"] == "vision" and labels[manifests.LABEL_JOB] == "tpl" and labels[manifests.LABEL_ROLE] == role
        assert spec["imagePullSecrets"] == [{"name": "registry-pull"}]
        assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
        assert spec["restartPolicy"] == "Never"
        main = containers(spec)[role]
        assert main["image"] == f"registry.internal/trainthrough/{role}:0.1.0"
        assert main["args"][0] == ("--trainingjob" if role == "chaos" else "--job")  # the operator's command line
    worker = next(p for p in pods if p["metadata"]["name"] == "tpl-worker-1")
    spec = worker["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and spec["serviceAccountName"] == "trainer"
    assert spec["securityContext"]["runAsUser"] == 2000 and spec["securityContext"]["runAsNonRoot"] is True
    main = containers(spec)["worker"]
    assert main["args"][main["args"].index("--data-path") + 1] == "/data/fashion-mnist"
    assert main["resources"]["limits"] == {"memory": "2Gi", "nvidia.com/gpu": "1", "cpu": "4"}  # over workers.resources
    assert {"name": "data", "mountPath": "/data/fashion-mnist", "readOnly": True} in main["volumeMounts"]
    assert list(containers(spec)) == ["worker", "exporter"] and [c["name"] for c in spec["initContainers"]] == ["check-data"]
    ps = next(p for p in pods if p["metadata"]["name"] == "tpl-ps-3")
    assert (ps["spec"]["hostname"], ps["spec"]["subdomain"]) == ("tpl-ps-3", "tpl") and "--join" in containers(ps["spec"])["ps"]["args"]
    assert containers(ps["spec"])["ps"]["resources"]["limits"]["memory"] == "8Gi"
    assert chaos["spec"]["template"]["spec"]["serviceAccountName"] == "tpl-chaos"


def test_without_a_template_the_gpu_toleration_is_the_default() -> None:
    job = parse_job(document(workers={"resources": {"gpu": 1}}, parameterServer={}, chaosTemplate=None))
    worker = manifests.worker_pod(job, 0, [["ps-0"]])
    assert worker["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in worker["spec"] and "imagePullSecrets" not in worker["spec"]


# --------------------------------------------------------------------------- what the operator owns


@pytest.mark.parametrize(
    ("section", "change", "path", "message"),
    [
        ("workers", {"metadata": {"labels": {"trainthrough.io/job": "other"}}}, "metadata.labels.trainthrough.io/job", "the operator's"),
        ("workers", {"metadata": {"annotations": {"trainthrough.io/disrupted-at": "1"}}}, "metadata.annotations.trainthrough.io/disrupted-at", "the operator's"),
        ("workers", {"spec": {"restartPolicy": "Always"}}, "spec.restartPolicy", "set by the operator"),
        ("parameterServer", {"spec": {"hostname": "x"}}, "spec.hostname", "set by the operator"),
        ("parameterServer", {"spec": {"subdomain": "x"}}, "spec.subdomain", "set by the operator"),
        ("chaosTemplate", {"spec": {"serviceAccountName": "admin"}}, "spec.serviceAccountName", "set by the operator"),
        ("workers", {"spec": {"containers": [{"name": "worker", "command": ["sh"]}]}}, "spec.containers[0].command", "command line"),
        ("parameterServer", {"spec": {"containers": [{"name": "ps", "args": ["--port", "1"]}]}}, "spec.containers[0].args", "command line"),
        ("workers", {"spec": {"containers": [{"name": "worker", "env": [{"name": "POD_IP", "value": "1"}]}]}}, "spec.containers[0].env[0].name", "set by the operator"),
        ("workers", {"spec": {"volumes": [{"name": "job", "emptyDir": {}}]}}, "spec.volumes[0].name", "the operator's"),
        ("parameterServer", {"spec": {"volumes": [{"name": "token", "emptyDir": {}}]}}, "spec.volumes[0].name", "the operator's"),
        ("workers", {"spec": {"containers": [{"name": "worker", "volumeMounts": [{"name": "d", "mountPath": "/var/run/secrets/trainthrough/tls"}]}]}},
         "spec.containers[0].volumeMounts[0].mountPath", "the operator's mount"),
        ("workers", {"spec": {"containers": [{"name": "worker", "volumeMounts": [{"name": "d", "mountPath": "/etc/trainthrough/"}]}]}},
         "spec.containers[0].volumeMounts[0].mountPath", "the operator's mount"),
        # Another spelling of the same path is the same path to the kubelet.
        ("workers", {"spec": {"containers": [{"name": "worker", "volumeMounts": [{"name": "d", "mountPath": "/etc//trainthrough//"}]}]}},
         "spec.containers[0].volumeMounts[0].mountPath", "the operator's mount"),
        ("chaosTemplate", {"spec": {"containers": [{"name": "chaos", "volumeMounts": [{"name": "d", "mountPath": "//tmp"}]}]}},
         "spec.containers[0].volumeMounts[0].mountPath", "the operator's mount"),
        ("parameterServer", {"spec": {"containers": [{"name": "ps", "volumeMounts": [{"name": "d", "mountPath": "/data/../var/lib/trainthrough/checkpoints"}]}]}},
         "spec.containers[0].volumeMounts[0].mountPath", "the operator's mount"),
        ("workers", {"spec": {"containers": [{"name": "side", "ports": [{"containerPort": 9100}]}]}}, "spec.containers[0].ports[0]", "9100 (metrics)"),
        ("parameterServer", {"spec": {"initContainers": [{"name": "x", "ports": [{"name": "grpc", "containerPort": 1}]}]}},
         "spec.initContainers[0].ports[0]", "50051 (grpc)"),
        ("workers", {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}, "spec.containers[1].name", "duplicate name 'a'"),
        ("workers", {"spec": {"containers": [{"name": "worker", "env": [{"name": "X"}, {"name": "X"}]}]}}, "spec.containers[0].env[1].name", "duplicate"),
        ("workers", {"spec": {"volumes": [{"name": "d", "hostPath": {"path": "/a"}, "nfs": {"server": "s", "path": "/"}}]}}, "spec.volumes[0]", "one source"),
        ("workers", {"spec": {"volumes": [{"name": "d", "hostpath": {"path": "/a"}}]}}, "spec.volumes[0].hostpath", "unknown field"),
        ("workers", {"spec": {"ephemeralContainers": [{"name": "debug"}]}}, "spec.ephemeralContainers", "unknown field"),
        ("workers", {"spec": {"containers": [{"name": "Worker_1"}]}}, "spec.containers[0].name", "DNS-1123"),
        ("workers", {"spec": {"containers": [{"name": "worker", "resources": {"limits": {"cpu": 0.5}}}]}}, "spec.containers[0].resources.limits.cpu", "quoted"),
    ],
)  # fmt: skip
def test_a_template_that_changes_what_the_operator_owns_is_refused_at_the_field(section: str, change: dict[str, Any], path: str, message: str) -> None:
    doc = document(workers={"template": {}}, parameterServer={"template": {}}, chaosTemplate={})
    if section == "chaosTemplate":
        doc["spec"]["chaosTemplate"] = change
    else:
        doc["spec"][section]["template"] = change
    where = f"spec.{section}" if section == "chaosTemplate" else f"spec.{section}.template"
    found = problems(doc)
    assert f"{where}.{path}" in found, found
    assert message in found[f"{where}.{path}"]
    # The CRD refuses it at admission too (its rules are pod_templates.cel_rules); the
    # stand-in's admission does not check list types, which refuse a duplicate.
    refused = admission_fields(doc)
    assert refused or "duplicate" in message, doc
    assert all(field.startswith(where) for field in refused if field != "<nil>"), refused  # <nil>: "rules not checked"


def admission_fields(doc: dict[str, Any]) -> list[str]:
    """The fields the API server's admission (the stand-in's: schema, then the CEL rules)
    refuses in `doc`; [] when it stores it."""
    from trainthrough.standin.admission import Admission, AdmissionError, FieldValidation

    try:
        Admission(crd.crd_manifest(), "v1alpha1").admit(copy.deepcopy(doc), field_validation=FieldValidation.STRICT)
    except AdmissionError as error:
        if error.code == 400:
            return [f for f in error.message.split('"')[1::2] if f.startswith("spec.")]
        return [cause["field"] for cause in error.details["causes"]]
    return []


def test_what_is_owned_for_one_role_is_free_for_another() -> None:
    doc = document(
        workers={"template": {"spec": {"hostname": "w", "serviceAccountName": "trainer"}}},
        parameterServer={"template": {"spec": {"serviceAccountName": "ps"}}},
        chaosTemplate={"spec": {"containers": [{"name": "worker", "command": ["x"]}]}},  # not the chaos pod's main container
    )
    job = parse_job(doc)
    assert admission_fields(doc) == []
    assert admission_fields(document()) == []  # the rich templates too
    assert manifests.worker_pod(job, 0, [["ps-0"]])["spec"]["hostname"] == "w"
    assert manifests.ps_pod(job, "ps-0")["spec"]["serviceAccountName"] == "ps"


def test_merge_pod_refuses_what_the_generated_pod_holds() -> None:
    """An entry the operator adds that no RESERVED_* set names is owned as well: merge_pod
    checks the pod it is given, and fails permanently (the operator fails the job)."""
    job = parse_job(document(workers={"template": {"spec": {"containers": [{"name": "worker"}]}}}))
    pod = manifests.worker_pod(job, 0, [["ps-0"]])
    assert any(v["name"] == "token" for v in pod["spec"]["volumes"])  # the job's token (spec.security.token)
    pod["spec"]["volumes"].append({"name": "extra", "emptyDir": {}})
    main = containers(pod["spec"])["worker"]
    main["env"].append({"name": "EXTRA", "value": "1"})
    main["volumeMounts"].append({"name": "extra", "mountPath": "/extra"})
    main["ports"].append({"name": "extra", "containerPort": 7000})
    template = {"spec": {"volumes": [{"name": "extra", "emptyDir": {}}],
                         "containers": [{"name": "worker", "env": [{"name": "EXTRA", "value": "2"}],
                                         "volumeMounts": [{"name": "x", "mountPath": "/extra/"}]},
                                        {"name": "side", "ports": [{"containerPort": 7000}]}]}}  # fmt: skip
    with pytest.raises(pod_templates.TemplateConflict) as info:
        merge_pod(pod, template, "worker", "spec.workers.template")
    assert isinstance(info.value, PermanentError)
    assert sorted(e.path for e in info.value.errors) == [
        "spec.workers.template.spec.containers[0].env[0].name",
        "spec.workers.template.spec.containers[0].volumeMounts[0].mountPath",
        "spec.workers.template.spec.containers[1].ports[0]",
        "spec.workers.template.spec.volumes[0].name",
    ]
    assert merge_pod(pod, None, "worker", "spec.workers.template") == pod


# --------------------------------------------------------------------------- Kubernetes' own schema


def _definitions(version: str) -> dict[str, Any]:
    """Kubernetes' own schema of `version`, as kubernetes-validate ships it."""
    package = pytest.importorskip("kubernetes_validate")
    path = Path(package.__file__).parent / "kubernetes-json-schema" / f"v{version}.0-local-strict" / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


def _aliases(model: Any) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_the_template_model_follows_kubernetes_podspec_and_container(version: str) -> None:
    defs = _definitions(version)
    pod_spec, container = defs["io.k8s.api.core.v1.PodSpec"]["properties"], defs["io.k8s.api.core.v1.Container"]["properties"]
    assert _aliases(PodSpecTemplate) <= set(pod_spec), _aliases(PodSpecTemplate) - set(pod_spec)
    assert _aliases(ContainerTemplate) <= set(container), _aliases(ContainerTemplate) - set(container)
    if version == "1.30":  # the version the template follows: all of it, but what a pod cannot be created with
        assert set(pod_spec) - _aliases(PodSpecTemplate) == {"ephemeralContainers"}
        assert set(container) == _aliases(ContainerTemplate)
    # The merge keys are Kubernetes' strategic-merge keys, every one of them.
    for fields, keys in ((pod_spec, pod_templates.POD_LIST_KEYS), (container, pod_templates.CONTAINER_LIST_KEYS)):
        theirs = {name: node["x-kubernetes-patch-merge-key"] for name, node in fields.items() if "x-kubernetes-patch-merge-key" in node}
        theirs.pop("ephemeralContainers", None)
        assert keys.items() <= theirs.items()
        if version == "1.30":
            assert keys == theirs
    volume = set(defs["io.k8s.api.core.v1.Volume"]["properties"])
    assert _aliases(VolumeTemplate) <= volume and (version != "1.30" or _aliases(VolumeTemplate) == volume)
    # The CRD's list types are Kubernetes' own (two items with one name are refused).
    crd_spec = crd.spec_schema()["properties"]["workers"]["properties"]["template"]["properties"]["spec"]
    crd_container = crd_spec["properties"]["containers"]["items"]
    marked = 0
    for ours, real in ((crd_spec, pod_spec), (crd_container, container)):
        for name, node in ours["properties"].items():
            if "x-kubernetes-list-type" in node:
                marked += 1
                expected = (real[name].get("x-kubernetes-list-type"), real[name].get("x-kubernetes-list-map-keys"))
                assert (node["x-kubernetes-list-type"], node.get("x-kubernetes-list-map-keys")) == expected, name
    assert marked >= 8


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_pods_from_rich_templates_pass_kubernetes_validate(tmp_path: Path, version: str) -> None:
    assert KUBERNETES_VALIDATE, "kubernetes-validate is a dev dependency"
    documents: list[dict[str, Any]] = []
    for mode, ps in (("checkpoint", {}), ("chain", {"replicas": 2}), ("stateless", {})):
        job = parse_job(document(f"rich-{mode}", consistency=mode, parameterServer={**ps, "template": copy.deepcopy(PS_TEMPLATE)}))
        documents += [o for o in manifests.manifests(job) if o["kind"] in ("Pod", "Job")] + [manifests.ps_pod(job, "ps-5", start=PSStart.JOIN)]
    airgapped = parse_job(yaml.safe_load((ROOT / "examples" / "airgapped.yaml").read_text()))
    documents += [o for o in manifests.manifests(airgapped) if o["kind"] in ("Pod", "Job")]
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run([KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", version, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(documents), result.stdout


# --------------------------------------------------------------------------- the CRD


def _prune(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server keeps of `value` under a structural `schema` (its pruning)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            props = schema.get("properties", {})
            return {k: _prune(v, props[k]) if k in props else v for k, v in value.items()}
        if "additionalProperties" in schema:
            return {k: _prune(v, schema["additionalProperties"]) for k, v in value.items()}
        props = schema.get("properties", {})
        return {k: _prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list):
        return [_prune(v, schema.get("items", {})) for v in value]
    return value


def test_the_crd_keeps_a_template_whole_and_refuses_unknown_fields() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = crd.spec_schema()
    doc = document()["spec"]
    kept = _prune(doc, schema)
    for section, template in (("workers", WORKER_TEMPLATE), ("parameterServer", PS_TEMPLATE)):
        assert kept[section]["template"] == template
    assert kept["chaosTemplate"] == CHAOS_TEMPLATE
    template_schema = schema["properties"]["workers"]["properties"]["template"]

    def strict(node: dict[str, Any]) -> dict[str, Any]:  # kubectl's --validate=strict on what the schema lists
        out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k not in ("nullable", "description")}
        if "properties" in node:
            out["properties"] = {k: strict(v) for k, v in node["properties"].items()}
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out[key] = strict(node[key])
        if node.get("x-kubernetes-int-or-string"):
            out.pop("anyOf", None)
            out["type"] = ["integer", "string"]
        if node.get("nullable"):
            out = {"anyOf": [{"type": "null"}, out]}
        return out

    validator = jsonschema.Draft4Validator(strict(template_schema))
    assert list(validator.iter_errors(WORKER_TEMPLATE)) == []
    bad = copy.deepcopy(WORKER_TEMPLATE)
    bad["spec"]["nodeSelecter"] = {"a": "b"}
    bad["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    errors = sorted(e.message for e in validator.iter_errors(bad))
    assert any("nodeSelecter" in e for e in errors) and any("Sometimes" in e for e in errors), errors


# --------------------------------------------------------------------------- dataPath


def test_an_explicit_data_path_must_hold_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / data.FILE_NAMES[0]).write_bytes(b"")
    monkeypatch.setattr(data, "download_fashion_mnist", lambda *a, **k: pytest.fail("an explicit path is never downloaded to"))
    monkeypatch.setenv(data.ENV_VAR, str(REAL))  # a copy elsewhere is not taken instead
    assert data.data_path_problem(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: no such folder"
    assert data.data_path_problem(empty) == f"{empty}: it does not hold {', '.join(data.FILE_NAMES[1:])}"
    with pytest.raises(data.DatasetNotFound, match="nothing is searched or downloaded instead"):
        data.find_fashion_mnist(empty)
    if REAL.is_dir():
        assert data.data_path_problem(REAL) is None and data.find_fashion_mnist(REAL) == REAL


def test_the_local_runtime_reads_data_path_through_a_hostpath_volume_only() -> None:
    template = {"spec": {"volumes": [{"name": "d", "hostPath": {"path": "/srv/ds"}}, {"name": "p", "persistentVolumeClaim": {"claimName": "c"}}],
                         "containers": [{"name": "worker", "volumeMounts": [
                             {"name": "d", "mountPath": "/data"}, {"name": "d", "mountPath": "/data/fm", "subPath": "fashion"},
                             {"name": "p", "mountPath": "/pvc"}]}]}}  # fmt: skip
    assert node_path(template, "worker", "/data/fm") == "/srv/ds/fashion"  # the longest mount
    assert node_path(template, "worker", "/data/fm/x") == "/srv/ds/fashion/x"
    assert node_path(template, "worker", "/data/other") == "/srv/ds/other"
    assert node_path(template, "worker", "/datax") == "/datax"  # at path boundaries only
    assert node_path(template, "worker", "/pvc/fm") == "/pvc/fm"  # a claim cannot be mounted here
    assert node_path(template, "ps", "/data/fm") == "/data/fm"  # another container's mounts
    job = parse_job(yaml.safe_load((ROOT / "examples" / "airgapped.yaml").read_text()))
    assert local_data_path(job) == "/usr/share/datasets/fashion-mnist"
    assert local_job(job).spec.data_path == "/usr/share/datasets/fashion-mnist"
    assert job.spec.data_path == "/data/fashion-mnist"  # the job itself is unchanged
    plain = parse_job(document(workers={}, dataPath="/x"))
    assert local_job(plain) is plain


# --------------------------------------------------------------------------- end to end


def _terminal(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Complete", "Succeeded", "Failed") and condition.get("status") == "True":
            return "Failed" if condition["type"] == "Failed" else "Complete"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.skipif(not all((REAL / n).is_file() for n in data.FILE_NAMES), reason=f"no Fashion-MNIST at {REAL}")
def test_templates_reach_every_pod_and_the_worker_reads_its_data_volume(tmp_path: Path) -> None:
    from trainthrough.standin.cluster import StandInCluster
    from trainthrough.standin.emulator import TRAININGJOBS, wait_for

    volume, empty = tmp_path / "node" / "fashion-mnist", tmp_path / "node" / "empty"
    volume.mkdir(parents=True)
    empty.mkdir()
    for name in data.FILE_NAMES:
        shutil.copy(REAL / name, volume / name)

    def job(name: str, host_path: Path, *, chaos: bool) -> dict[str, Any]:
        worker = {"metadata": {"labels": {"team": "vision"}}, "spec": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "registry-pull"}],
            "volumes": [{"name": "fashion-mnist", "hostPath": {"path": str(host_path), "type": "Directory"}}],
            "containers": [{"name": "worker", "volumeMounts": [{"name": "fashion-mnist", "mountPath": "/data/fashion-mnist", "readOnly": True}]}],
        }}  # fmt: skip
        plain = {k: v for k, v in PS_TEMPLATE.items() if k != "spec"} | {"spec": {k: v for k, v in PS_TEMPLATE["spec"].items() if k != "containers"}}
        chaos_template = {"metadata": CHAOS_TEMPLATE["metadata"], "spec": {k: v for k, v in CHAOS_TEMPLATE["spec"].items() if k != "containers"}}
        return document(
            name, model="mlp", dataset="fashion-mnist", consistency="checkpoint", stop={"steps": 30}, evaluation={"interval": "1s", "testSamples": 500},
            workers={"replicas": 1, "template": worker}, parameterServer={"template": plain}, chaosTemplate=chaos_template,
            chaos=[{"target": "ps-head", "at": "10m"}] if chaos else [],  # never fires: the chaos pod is here for its template
        )  # fmt: skip

    with StandInCluster(tmp_path / "standin") as cluster:
        cluster.start_operator()
        cluster.apply(job("data", volume, chaos=True))
        cluster.apply(job("nodata", empty, chaos=False))

        def pods_of(name: str) -> dict[str, dict[str, Any]]:
            found = [p for p in cluster.kube.list("pods") if p["metadata"].get("labels", {}).get(manifests.LABEL_JOB) == name]
            return {p["metadata"]["labels"][manifests.LABEL_ROLE]: p for p in found}

        seen = wait_for(lambda: (p := pods_of("data")).keys() >= {"ps", "worker", "chaos"} and p, timeout=180, interval=0.5, what="every pod of the job")
        for role, pod in seen.items():
            spec = pod["spec"]
            assert pod["metadata"]["labels"]["team"] == "vision", role
            assert spec["nodeSelector"] in ({"nvidia.com/gpu.present": "true"}, {"node-role.example.com/cpu": "true"}), role
            assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in spec["tolerations"], role
            assert spec["imagePullSecrets"] == [{"name": "registry-pull"}], role
        worker = seen["worker"]["spec"]
        assert {"name": "fashion-mnist", "hostPath": {"path": str(volume), "type": "Directory"}} in worker["volumes"]

        status = wait_for(lambda: _terminal(s := cluster.kube.get(TRAININGJOBS, "data").get("status") or {}) and s, timeout=240, interval=0.5, what="data to finish")
        assert _terminal(status) == "Complete", status
        log = cluster.log_path("data-worker-0").read_text()
        assert f"Fashion-MNIST train split: loading from {volume}" in log
        assert f"Fashion-MNIST test split: loading from {volume}" in log

        failed = wait_for(lambda: _terminal(s := cluster.kube.get(TRAININGJOBS, "nodata").get("status") or {}) and s, timeout=240, interval=0.5, what="nodata to fail")
        assert _terminal(failed) == "Failed", failed
        [condition] = [c for c in failed["conditions"] if c["type"] == "Failed"]
        assert condition["reason"] == "PermanentError", condition
        assert "worker-0 cannot work as configured" in condition["message"], condition  # at once, not at the backoff limit (6)
        log = cluster.log_path("nodata-worker-0").read_text()
        assert f"the data path {empty}: it does not hold" in log and "downloading" not in log
        assert list(empty.iterdir()) == [] and not list(cluster.pod_dir("nodata-worker-0").rglob("*.gz"))
        pod = cluster.kube.find("pods", "nodata-worker-0")
        if pod is not None:  # kept for its logs (cleanPodPolicy Running deletes only running pods)
            assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == CONFIG_EXIT_CODE


def test_a_process_that_cannot_work_as_configured_fails_the_job_at_once() -> None:
    """A worker exits with CONFIG_EXIT_CODE (its dataPath does not hold the data): the
    master fails the job then (PermanentError), not after spec.runPolicy.backoffLimit tries."""
    from trainthrough.control.master import Master
    from trainthrough.control.messages import Exited, Finish, Health, Record, Start, WorkerReport
    from trainthrough.control.vocabulary import JobPhase, Reason

    t0 = 1_000.0
    master = Master(parse_job(document(workers={"replicas": 2}, parameterServer={}, chaosTemplate=None, chaos=[], model="mlp")))
    master.start(t0)

    def health(version: int) -> Health:
        return Health("ps-0", "serving", version, 0, 0, "", 0.0, 0.0, (WorkerReport("worker-0", steps=version, accuracy=-1.0, lost_updates=0, evaluation=1),))

    master.observe(health(0), t0)
    master.observe(health(0), t0)
    master.observe(health(1), t0)
    actions = master.observe(Exited("worker-1", CONFIG_EXIT_CODE, t0 + 5), t0 + 5)
    assert not any(isinstance(a, Start) for a in actions)  # not started again
    [finish] = [a for a in actions if isinstance(a, Finish)]
    assert (finish.phase, finish.reason) == (JobPhase.FAILED, Reason.PERMANENT_ERROR)
    assert "worker-1 cannot work as configured" in finish.message and master.state.failures == 1
    assert any(isinstance(a, Record) and a.fields.get("action") == "fail" for a in actions)
