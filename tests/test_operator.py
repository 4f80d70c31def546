"""The operator (kopf, for real) against KMock's Kubernetes emulator on 127.0.0.1.

Aspects covered, as a list of steps (a change, then a check):
- creating a TrainingJob yields its ConfigMap, headless Service and PS and worker pods,
  owned by the job, with GPU limits where asked; the job gets status and conditions;
- deleting a checkpoint PS pod (as a chaos job would) makes the operator recreate it,
  count the recovery in status and write Events; the replacement appears within 1 s;
- deleting a chain head advances the chain configuration (epoch, members, head) and
  starts a replacement replica that joins at the tail;
- a lost worker pod is recreated; worker replicas converge when the spec changes;
- an invalid TrainingJob gets a Failed phase and a condition naming the field, and the
  operator goes on serving other jobs;
- a chaos section gets a chaos Job under its own ServiceAccount and a Role granting only
  what `trainthrough chaos` does; the PS NetworkPolicy admits the job's pods and the
  operator only;
- every manifest the operator creates passes kubernetes-validate --strict (1.30, 1.33).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, wait_for
from trainthrough.metrics import create_metrics
from trainthrough.operator.handlers import register
from trainthrough.kubeapi import KubeApi
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.spec import load_job

ROOT = Path(__file__).resolve().parents[1]


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": "mlp", "dataset": "synthetic", "stop": {"steps": 100}, "workers": {"replicas": 2}}
    base.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


@pytest.fixture
def operator(kube: KubeEmulator, run_operator):
    registry = kopf.OperatorRegistry()
    metrics = create_metrics(CollectorRegistry())
    config = OperatorConfig(api=KubeApi(kube.api_client()), metrics=metrics, images={}, health_timeout=0.1)
    register(registry, config)
    run_operator(registry, watching=[TRAININGJOBS, "pods"])
    return config


def pods(kube: KubeEmulator, job: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.list("pods") if p["metadata"]["labels"].get(manifests.LABEL_JOB) == job}


def status(kube: KubeEmulator, name: str) -> dict[str, Any]:
    return kube.get(TRAININGJOBS, name).get("status") or {}


def sample(metric: Any, name: str, labels: dict[str, str]) -> float | None:
    for family in metric.collect():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def events(kube: KubeEmulator, name: str) -> list[str]:
    return [e["reason"] for e in kube.list("events") if e["involvedObject"]["name"] == name]


def test_creating_a_job_creates_its_objects_and_status(kube: KubeEmulator, operator) -> None:
    spec = {"consistency": "chain", "parameterServer": {"replicas": 3}, "workers": {"replicas": 2, "resources": {"gpu": 1}}}
    job = kube.create(TRAININGJOBS, trainingjob("tj", **spec))
    uid = job["metadata"]["uid"]
    wanted = {"tj-ps-0", "tj-ps-1", "tj-ps-2", "tj-worker-0", "tj-worker-1"}
    wait_for(lambda: wanted <= set(pods(kube, "tj")), timeout=10, what="the job's pods")
    service = kube.get("services", "tj")
    config_map = kube.get("configmaps", "tj-job")
    assert service["spec"]["clusterIP"] == "None"
    assert json.loads(config_map["data"]["job.json"])["spec"]["consistency"] == "chain"
    for obj in [service, config_map, *pods(kube, "tj").values()]:
        assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"]["name"]
    worker = pods(kube, "tj")["tj-worker-0"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "tj-ps-0.tj.default.svc:50051" in worker["args"][worker["args"].index("--ps") + 1]
    current = wait_for(lambda: status(kube, "tj").get("conditions") and status(kube, "tj"), timeout=10, what="status")
    assert current["phase"] == "Pending"
    chain = current["chain"]
    # No replica answers in the emulator: the configuration stays unpublished (epoch 0).
    assert (chain["epoch"], chain["members"], chain["head"], chain["publishedEpoch"]) == (1, ["ps-0", "ps-1", "ps-2"], "ps-0", 0)
    progressing = next(c for c in current["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"], progressing["observedGeneration"]) == ("True", "PodsCreated", 1)
    assert "PodsCreated" in events(kube, "tj")


def test_a_chaos_section_gets_a_chaos_job_with_its_own_least_privilege_role(kube: KubeEmulator, operator) -> None:
    operator.operator_pods = ("trainthrough-system", {"app.kubernetes.io/name": "trainthrough-operator"})
    chaos = [{"target": "ps-head", "at": "30s", "gracePeriod": "5s"}, {"target": "random", "at": "60s"}]
    uid = kube.create(TRAININGJOBS, trainingjob("tj", consistency="checkpoint", chaos=chaos))["metadata"]["uid"]
    job = wait_for(lambda: kube.find("jobs", "tj-chaos"), timeout=10, what="the chaos Job")
    account, role, binding = kube.get("serviceaccounts", "tj-chaos"), kube.get("roles", "tj-chaos"), kube.get("rolebindings", "tj-chaos")
    policy = kube.get("networkpolicies", "tj-ps")
    for obj in (job, account, role, binding, policy):
        assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tj-chaos" and job["spec"]["backoffLimit"] == 0
    assert pod["containers"][0]["args"][:4] == ["--trainingjob", "tj", "--namespace", "default"]
    assert binding["roleRef"]["name"] == "tj-chaos" and binding["subjects"][0]["name"] == "tj-chaos"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {("trainthrough.io", "trainingjobs", "get"), ("", "pods", "get"),
                       ("", "pods", "delete"), ("", "events", "create")}  # fmt: skip
    # The PS port: the job's own pods and the operator; nobody else.
    grpc_from = [rule["from"] for rule in policy["spec"]["ingress"] if rule["ports"] == [{"protocol": "TCP", "port": 50051}]]
    assert grpc_from == [
        [{"podSelector": {"matchLabels": {manifests.LABEL_JOB: "tj"}}}],
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainthrough-system"}},
          "podSelector": {"matchLabels": {"app.kubernetes.io/name": "trainthrough-operator"}}}],
    ]  # fmt: skip
    # The chaos pod is not one of the job's processes: losing it is no failure to recover.
    assert "tj-chaos" not in {p.get("metadata", {}).get("labels", {}).get(manifests.LABEL_PROCESS) for p in pods(kube, "tj").values()}


def test_a_deleted_checkpoint_ps_pod_is_recreated_and_counted(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("ck", consistency="checkpoint"))
    first = wait_for(lambda: pods(kube, "ck").get("ck-ps-0"), timeout=10, what="the PS pod")
    wait_for(lambda: kube.find("persistentvolumeclaims", "ck-checkpoints"), timeout=5, what="the checkpoint volume")
    deleted = time.monotonic()
    kube.delete("pods", "ck-ps-0")
    replacement = wait_for(
        lambda: (p := pods(kube, "ck").get("ck-ps-0")) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,
        timeout=5,
        what="the replacement PS pod",
    )
    appeared = time.monotonic() - deleted
    print(f"replacement PS pod appeared {appeared:.3f} s after the deletion")
    assert appeared < 1.0
    assert "--checkpoint-dir" in replacement["spec"]["containers"][0]["args"]
    current = wait_for(lambda: status(kube, "ck").get("recoveries", {}).get("count") == 1 and status(kube, "ck"), timeout=5, what="recovery count")
    assert current["recoveries"]["pending"]["process"] == "ps-0"
    assert {c["type"]: c["status"] for c in current["conditions"]}["Recovering"] == "True"
    assert current["phase"] == "Recovering"
    assert {"FailureDetected", "PodReplaced"} <= set(wait_for(lambda: events(kube, "ck"), timeout=5))
    fault = operator.metrics.fault_detection_seconds.labels(mode="checkpoint")
    assert fault._sum.get() >= 0 and operator.metrics.restart_seconds.labels(mode="checkpoint")._sum.get() > 0


def test_a_deleted_chain_head_advances_the_chain_and_gets_a_replacement(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("ch", consistency="chain", parameterServer={"replicas": 3}))
    wait_for(lambda: {"ch-ps-0", "ch-ps-1", "ch-ps-2"} <= set(pods(kube, "ch")), timeout=10, what="the replicas")
    wait_for(lambda: (status(kube, "ch").get("chain") or {}).get("members"), timeout=5, what="the chain in status")
    kube.delete("pods", "ch-ps-0")
    chain = wait_for(lambda: (status(kube, "ch").get("chain") or {}).get("epoch") == 2 and status(kube, "ch")["chain"], timeout=10, what="epoch 2")
    assert chain["members"] == ["ps-1", "ps-2"] and chain["head"] == "ps-1"
    assert chain["joining"] == ["ps-3"]
    replacement = wait_for(lambda: pods(kube, "ch").get("ch-ps-3"), timeout=5, what="the replacement replica")
    assert "--join" in replacement["spec"]["containers"][0]["args"]
    assert status(kube, "ch")["recoveries"]["count"] == 1
    assert status(kube, "ch")["ps"] == ["ps-0", "ps-1", "ps-2", "ps-3"]
    assert "ChainReconfigured" in wait_for(lambda: events(kube, "ch"), timeout=5)


def test_a_failed_pod_is_replaced_once(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("fl", consistency="stateless"))
    first = wait_for(lambda: pods(kube, "fl").get("fl-ps-0"), timeout=10, what="the PS pod")
    # The kubelet reports the container's crash; the failed pod is then deleted (by the
    # operator, to free the name): one loss, one recovery, one new pod.
    kube.patch_status("pods", "fl-ps-0", {"phase": "Failed", "containerStatuses": [
        {"name": "ps", "state": {"terminated": {"exitCode": 137}}}]})  # fmt: skip
    second = wait_for(
        lambda: (p := pods(kube, "fl").get("fl-ps-0")) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,
        timeout=5,
        what="the replacement",
    )
    wait_for(lambda: status(kube, "fl").get("recoveries", {}).get("count") == 1, timeout=5, what="one recovery")
    time.sleep(0.5)  # room for a wrong second recovery triggered by the old pod's deletion
    assert pods(kube, "fl")["fl-ps-0"]["metadata"]["uid"] == second["metadata"]["uid"]
    assert status(kube, "fl")["recoveries"]["count"] == 1


def test_a_chain_replacement_lost_before_joining_is_replaced(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("jr", consistency="chain", parameterServer={"replicas": 2}))
    wait_for(lambda: (status(kube, "jr").get("chain") or {}).get("members"), timeout=10, what="the chain")
    kube.delete("pods", "jr-ps-0")
    wait_for(lambda: "jr-ps-2" in pods(kube, "jr"), timeout=5, what="the first replacement")
    kube.delete("pods", "jr-ps-2")
    wait_for(lambda: "jr-ps-3" in pods(kube, "jr"), timeout=5, what="a second replacement")
    chain = wait_for(lambda: (c := status(kube, "jr")["chain"]).get("joining") == ["ps-3"] and c, timeout=5, what="joining ps-3")
    assert chain["members"] == ["ps-1"]


def test_a_named_checkpoint_claim_is_used_not_created(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("nv", consistency="checkpoint", checkpoint={"volumeClaim": "shared-checkpoints"}))
    ps = wait_for(lambda: pods(kube, "nv").get("nv-ps-0"), timeout=10, what="the PS pod")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in ps["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["shared-checkpoints"]
    assert kube.find("persistentvolumeclaims", "nv-checkpoints") is None
    assert kube.find("persistentvolumeclaims", "shared-checkpoints") is None  # not ours to create


def test_workers_are_recreated_and_converge_on_update(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("wk", consistency="stateless"))
    first = wait_for(lambda: pods(kube, "wk").get("wk-worker-1"), timeout=10, what="worker 1")
    kube.delete("pods", "wk-worker-1")
    wait_for(lambda: (p := pods(kube, "wk").get("wk-worker-1")) and p["metadata"]["uid"] != first["metadata"]["uid"], timeout=5, what="worker 1 again")
    kube.patch(TRAININGJOBS, "wk", {"spec": {"workers": {"replicas": 3}}})
    wait_for(lambda: "wk-worker-2" in pods(kube, "wk"), timeout=10, what="a third worker")
    assert json.loads(kube.get("configmaps", "wk-job")["data"]["job.json"])["spec"]["workers"]["replicas"] == 3
    kube.patch(TRAININGJOBS, "wk", {"spec": {"workers": {"replicas": 1}}})
    wait_for(lambda: {n for n in pods(kube, "wk") if "worker" in n} == {"wk-worker-0"}, timeout=10, what="one worker left")


def test_an_invalid_job_fails_with_the_field_and_others_are_still_served(kube: KubeEmulator, operator) -> None:
    # A rule no CRD schema expresses (the schema would reject replicas: 0 already).
    kube.create(TRAININGJOBS, trainingjob("bad", consistency="stateless", updates="sync"))
    current = wait_for(lambda: status(kube, "bad").get("phase") == "Failed" and status(kube, "bad"), timeout=10, what="Failed")
    ready = next(c for c in current["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("spec.updates:")
    assert pods(kube, "bad") == {}
    kube.create(TRAININGJOBS, trainingjob("good", consistency="checkpoint"))
    wait_for(lambda: "good-ps-0" in pods(kube, "good"), timeout=10, what="the next job's PS")


KUBERNETES_VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_every_manifest_passes_kubernetes_validate(tmp_path: Path, version: str) -> None:
    assert KUBERNETES_VALIDATE, "kubernetes-validate is a dev dependency"
    import yaml

    documents = []
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        job = load_job(example)
        gpu = job.model_copy(update={"spec": job.spec.model_copy(update={"workers": job.spec.workers.model_copy(update={"resources": job.spec.workers.resources.model_copy(update={"gpu": 1})})})})
        operator_pods = ("trainthrough-system", {"app.kubernetes.io/name": "trainthrough-operator"})
        documents += manifests.manifests(job, operator_pods=operator_pods) + [manifests.ps_pod(job, "ps-7", join=True)] + manifests.manifests(gpu)[-1:]
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", version, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(documents), result.stdout


# -- with real parameter servers ---------------------------------------------------------------
# The emulator runs no pods: the test plays the kubelet. It runs each PS pod's process on
# its own loopback address (127.x.y.z, the pod's port 50051) and writes that address into
# the pod's status, as a kubelet reports a pod IP; the operator reaches the PS there.


class Kubelet:
    def __init__(self, kube: KubeEmulator, tmp_path: Path, job: str) -> None:
        self.kube, self.tmp_path, self.job = kube, tmp_path, job
        self.base = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.processes: dict[str, subprocess.Popen] = {}

    def run(self, process: str, index: int) -> None:
        pod = self.kube.get("pods", f"{self.job}-{process}")
        args = pod["spec"]["containers"][0]["args"]
        job_json = self.tmp_path / "job.json"
        job_json.write_text(self.kube.get("configmaps", f"{self.job}-job")["data"]["job.json"])
        ip = f"{self.base}.{index + 2}"
        command = [sys.executable, "-m", "trainthrough.cli", "ps", "--job", str(job_json), "--name", process,
                   "--host", ip, "--port", str(manifests.PS_PORT), "--metrics-port", "0"]  # fmt: skip
        if "--join" in args:
            command.append("--join")
        self.processes[process] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.kube.patch_status("pods", f"{self.job}-{process}", {"phase": "Running", "podIP": ip})

    def kill(self, process: str) -> None:
        self.processes[process].kill()
        self.processes[process].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()


@pytest.mark.e2e
def test_chain_recovery_with_real_replicas(kube: KubeEmulator, operator, tmp_path: Path) -> None:
    kube.create(TRAININGJOBS, trainingjob("rc", consistency="chain", parameterServer={"replicas": 3}))
    wait_for(lambda: {"rc-ps-0", "rc-ps-1", "rc-ps-2"} <= set(pods(kube, "rc")), timeout=10, what="the replicas")
    kubelet = Kubelet(kube, tmp_path, "rc")
    try:
        for i in range(3):
            kubelet.run(f"ps-{i}", i)
        wait_for(lambda: (status(kube, "rc").get("chain") or {}).get("publishedEpoch") == 1, timeout=60, what="epoch 1 published")
        wait_for(lambda: status(kube, "rc").get("phase") == "Running", timeout=30, what="Running")

        kubelet.kill("ps-0")
        kube.delete("pods", "rc-ps-0")
        chain = wait_for(lambda: (c := status(kube, "rc").get("chain") or {}).get("publishedEpoch") == 2 and c, timeout=20, what="epoch 2 published")
        assert chain["members"] == ["ps-1", "ps-2"]
        wait_for(lambda: "rc-ps-3" in pods(kube, "rc"), timeout=5, what="the replacement pod")
        kubelet.run("ps-3", 3)
        chain = wait_for(lambda: (c := status(kube, "rc").get("chain") or {}).get("members") == ["ps-1", "ps-2", "ps-3"] and c, timeout=60, what="ps-3 joined")
        assert chain["epoch"] == chain["publishedEpoch"] == 3 and not chain["joining"]
        assert {"ChainReconfigured", "ReplicaJoined", "RecoveryCompleted"} <= set(events(kube, "rc"))
        recoveries = wait_for(lambda: (r := status(kube, "rc").get("recoveries") or {}).get("lastRecoverySeconds") is not None and r, timeout=10, what="the recovery's time")
        assert recoveries["count"] == 1 and "pending" not in recoveries
        # The same metrics as the local master's, for the dashboard and the rules.
        labels = {"trainingjob": "rc", "mode": "chain"}
        assert sample(operator.metrics.recoveries, "trainthrough_recoveries_total", labels) == 1
        total = sample(operator.metrics.recovery_seconds, "trainthrough_recovery_seconds_sum", {**labels, "phase": "total"})
        assert total == pytest.approx(recoveries["lastRecoverySeconds"], abs=1e-5)
        assert sample(operator.metrics.recovery_seconds, "trainthrough_recovery_seconds_count", {**labels, "phase": "detect"}) == 1
    finally:
        kubelet.stop()


@pytest.mark.e2e
def test_the_operator_command_serves_metrics_and_liveness(kube: KubeEmulator, tmp_path: Path) -> None:
    """`trainthrough operator` as a process, configured by a kubeconfig, like `kopf run`."""
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    metrics_port, liveness_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainthrough.cli", "operator", "--standalone", "--metrics-port", str(metrics_port),
         "--liveness", f"http://127.0.0.1:{liveness_port}/healthz"],
        env={**__import__("os").environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # A job created once the operator watches (see the note on pre-existing jobs in
        # the issue log: with KMock they are not picked up at start).
        kube.wait_watched(TRAININGJOBS, timeout=60)
        kube.create(TRAININGJOBS, trainingjob("op", consistency="checkpoint"))
        wait_for(lambda: "op-ps-0" in pods(kube, "op"), timeout=60, what="the operator process creating pods")

        def fetch(port: int, path: str) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
                    return response.read().decode()
            except OSError:
                return None

        assert wait_for(lambda: fetch(liveness_port, "/healthz"), timeout=20, what="liveness") is not None
        text = wait_for(lambda: fetch(metrics_port, "/metrics"), timeout=10, what="metrics")
        assert 'trainthrough_operator_reconciles_total{result="ok"}' in text
    finally:
        process.terminate()
        process.wait(20)


def test_a_job_that_existed_before_the_operator_started_is_taken_up(kube: KubeEmulator, run_operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("early", consistency="stateless"))
    registry = kopf.OperatorRegistry()
    config = OperatorConfig(api=KubeApi(kube.api_client()), metrics=create_metrics(CollectorRegistry()), images={}, health_timeout=0.1)
    register(registry, config)
    run_operator(registry, watching=[TRAININGJOBS, "pods"])
    wait_for(lambda: {"early-ps-0", "early-worker-0", "early-worker-1"} <= set(pods(kube, "early")), timeout=10, what="its pods")


@pytest.mark.e2e
def test_two_peered_replicas_serve_jobs_once_and_a_standby_takes_over(kube: KubeEmulator, tmp_path: Path) -> None:
    """Two `trainthrough operator` replicas with kopf peering (the chart's CRDs and
    ClusterKopfPeering): the higher priority serves, the other stands by; when the active
    one dies, the standby takes over once its peering record expires."""
    import os
    import socket
    import urllib.request

    import yaml

    for crd in yaml.safe_load_all((ROOT / "helm" / "trainthrough" / "crds" / "kopfpeerings.kopf.dev.yaml").read_text()):
        kube.register_crd(crd)
    kube.create("clusterkopfpeerings.v1.kopf.dev", {"metadata": {"name": "trainthrough"}})
    env = {**os.environ, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def start(priority: int) -> tuple[subprocess.Popen, int]:
        port = free_port()
        command = [sys.executable, "-m", "trainthrough.cli", "operator", "--peering", "trainthrough", "--priority", str(priority),
                   "--peering-lifetime", "3", "--metrics-port", str(port), "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]  # fmt: skip
        with open(tmp_path / f"operator-{priority}.log", "wb") as log:
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), port

    def reconciles(port: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith("trainthrough_operator_reconciles_total{"))

    def peers() -> dict[str, Any]:
        return kube.get("clusterkopfpeerings.v1.kopf.dev", "trainthrough").get("status") or {}

    (active, active_port), (standby, standby_port) = start(200), start(100)
    try:
        wait_for(lambda: sorted(p["priority"] for p in peers().values()) == [100, 200], timeout=60, what="both replicas peered")
        kube.wait_watched(TRAININGJOBS, timeout=60)
        kube.create(TRAININGJOBS, trainingjob("one", consistency="checkpoint"))
        wait_for(lambda: "one-ps-0" in pods(kube, "one"), timeout=30, what="the active replica serving")
        wait_for(lambda: reconciles(active_port) >= 1, timeout=10, what="the active replica's reconcile")
        time.sleep(1.0)
        assert reconciles(standby_port) == 0, "the standby reconciled while the active replica ran"

        active.kill()  # no goodbye: its peering record stays until it expires
        active.wait(10)
        kube.create(TRAININGJOBS, trainingjob("two", consistency="checkpoint"))
        wait_for(lambda: "two-ps-0" in pods(kube, "two"), timeout=30, what="the standby taking over")
        assert reconciles(standby_port) >= 1
    finally:
        for process in (active, standby):
            process.terminate()
            process.wait(20)
