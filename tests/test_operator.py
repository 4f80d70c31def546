"""The operator (kopf, for real): on KMock's Kubernetes emulator where no pod needs to run,
and on the cluster stand-in (trainthrough.standin.cluster) where every pod is a real
process, for the recovery flows.

Covered, on the plain emulator (no pod runs, so no PS ever answers):
- a new TrainingJob gets its ConfigMap, headless Service and PS pods (one per chain
  replica), all owned by the job, and no worker pod (workers start once every PS answers);
  its status: phase Pending, Progressing (Starting) and Ready False, chain epoch 1 with
  publishedEpoch 0, no recovery; an ObjectsCreated Event;
- a chaos section gets a chaos Job under its own ServiceAccount and a Role granting only
  what `trainthrough chaos` does (get the job; get, patch and delete its pods; create
  Events), owned by the job with the checkpoint claim and the PS NetworkPolicy, which
  admits the job's pods and the operator only;
- a checkpoint claim named in the spec is used, not created;
- a pod being deleted is lost at its DELETE (deletionTimestamp minus the grace period),
  not when its grace period ends; the chaos Job's annotation, when written, times it;
- an invalid TrainingJob gets a Failed phase and a condition naming the field, and the
  operator goes on serving other jobs; a refused job (its chaos not allowed) is Failed and
  Stalled, and deleted once its ttlSecondsAfterFinished has passed; the pod runtime removes
  the pod an ended process left (cleanPodPolicy All);
- every manifest the operator creates passes kubernetes-validate --strict (1.30, 1.33);
- `trainthrough operator` as a process serves its metrics and liveness; a job that
  existed before the operator started is taken up; two peered replicas serve jobs once
  and the standby takes over when the active one dies.
Covered on the stand-in, through `trainthrough operator` (one job per flow):
- checkpoint: a deleted PS pod is recreated (same name, --checkpoint-dir) and the
  recovery is in status while in flight (phase Recovering, Recovering and Degraded
  conditions) and counted once done (phases detect + restore + first_update = total),
  with FailureDetected and RecoveryCompleted Events; a PS whose process dies on its own
  (SIGKILL: its pod ends Failed) is one failure, one recovery and exactly one new pod; a
  deleted worker pod is recreated without a PS recovery; workers converge when
  spec.workers.replicas goes up and down (the ConfigMap follows), the scale-down no
  failure; a worker asks its GPU and reaches the PS by its Service DNS name; the
  operator's trainthrough_recovery_seconds{phase} and recoveries_total hold the recoveries;
- chain (3 real replicas): a deleted head advances the chain (epoch 2, head ps-1) and
  gets a replacement that joins at the tail; a replacement lost before it joined is
  replaced (ReplicaJoinFailed) by the next one, which joins; one recovery, in status and
  in the operator's metrics, and the Events in order.
Waits are for events, with generous bounds; nothing asserts how fast this machine is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trainthrough.names import PSStart
from trainthrough.kubeapi import KubeApi
from trainthrough.metrics import create_metrics
from trainthrough.operator.chaos_policy import ChaosPolicy
from trainthrough.operator.handlers import register
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.runtime.pods import ANNOTATION_DISRUPTED_AT, PodRuntime, disruption_of
from trainthrough.spec import load_job, parse_resource
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, timestamp, wait_for

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 180.0  # generous bounds for real processes on a loaded 2-core machine


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": "mlp", "dataset": "synthetic", "stop": {"steps": 100}, "workers": {"replicas": 2}}
    base.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


@pytest.fixture
def operator(kube: KubeEmulator, run_operator):
    registry = kopf.OperatorRegistry()
    metrics = create_metrics(CollectorRegistry())
    config = OperatorConfig(
        api=KubeApi(kube.api_client()), metrics=metrics, images={}, health_timeout=0.1, chaos=ChaosPolicy.allowing()
    )
    register(registry, config)
    run_operator(registry, watching=[TRAININGJOBS, "pods"])
    return config


def pods(kube: KubeEmulator, job: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.list("pods") if p["metadata"]["labels"].get(manifests.LABEL_JOB) == job}


def status(kube: KubeEmulator, name: str) -> dict[str, Any]:
    return kube.get(TRAININGJOBS, name).get("status") or {}


def statuses(kube: KubeEmulator, name: str) -> list[dict[str, Any]]:
    """Every status the job had, oldest first (each stored version of the object)."""
    return [v.get("status") or {} for v in kube.history(TRAININGJOBS, name) if v is not None]


def conditions(current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in current.get("conditions") or []}


def events(kube: KubeEmulator, name: str) -> list[str]:
    found = [e for e in kube.list("events") if e["involvedObject"]["name"] == name]
    return [e["reason"] for e in sorted(found, key=lambda e: e["firstTimestamp"])]


def told(kube: KubeEmulator, name: str, wanted: list[str], timeout: float = 30.0) -> list[str]:
    """The job's Events of the reasons in `wanted`, in order, once each has been told (the
    operator emits them just after the status write that holds what they tell)."""
    return wait_for(
        lambda: set(wanted) <= set(found := [r for r in events(kube, name) if r in wanted]) and found,
        timeout=timeout, what=f"Events {wanted}",
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- on the plain emulator: no pod runs --------------------------------------------------------


def test_creating_a_job_creates_its_objects_and_status(kube: KubeEmulator, operator) -> None:
    spec = {"consistency": "chain", "parameterServer": {"replicas": 3}, "workers": {"replicas": 2, "resources": {"gpu": 1}}}
    job = kube.create(TRAININGJOBS, trainingjob("tj", **spec))
    uid = job["metadata"]["uid"]
    wanted = {"tj-ps-0", "tj-ps-1", "tj-ps-2"}
    wait_for(lambda: wanted <= set(pods(kube, "tj")), timeout=10, what="the job's PS pods")
    service = kube.get("services", "tj")
    config_map = kube.get("configmaps", "tj-job")
    assert service["spec"]["clusterIP"] == "None"
    assert json.loads(config_map["data"]["job.json"])["spec"]["consistency"] == "chain"
    for obj in [service, config_map, *pods(kube, "tj").values()]:
        assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"]["name"]
    current = wait_for(lambda: status(kube, "tj").get("conditions") and status(kube, "tj"), timeout=10, what="status")
    assert current["phase"] == "Pending" and current["ps"] == ["ps-0", "ps-1", "ps-2"]
    chain = current["chain"]
    # No replica answers in the emulator: the configuration stays unpublished (epoch 0).
    assert (chain["epoch"], chain["members"], chain["head"], chain["publishedEpoch"], chain["joining"]) == (
        1, ["ps-0", "ps-1", "ps-2"], "ps-0", 0, [],
    )  # fmt: skip
    progressing, ready = conditions(current)["Progressing"], conditions(current)["Ready"]
    assert (progressing["status"], progressing["reason"], progressing["observedGeneration"]) == ("True", "Starting", 1)
    assert (ready["status"], ready["reason"]) == ("False", "ParameterServerNotServing")
    assert current["recoveries"]["count"] == 0 and current["recoveries"]["inFlight"] == []
    assert current["master"]["phase"] == "Starting" and sorted(current["master"]["up"]) == ["ps-0", "ps-1", "ps-2"]
    assert "ObjectsCreated" in wait_for(lambda: events(kube, "tj"), timeout=5, what="an Event")
    # Workers start once every PS answers its Health; here none ever does.
    time.sleep(1.0)  # a few of the operator's 0.5 s ticks
    assert set(pods(kube, "tj")) == wanted


def test_a_chaos_section_gets_a_chaos_job_with_its_own_least_privilege_role(kube: KubeEmulator, operator) -> None:
    operator.operator_pods = ("trainthrough-system", {"app.kubernetes.io/name": "trainthrough-operator"})
    chaos = [{"target": "ps-head", "at": "30s", "gracePeriod": "5s"}, {"target": "random", "at": "60s"}]
    uid = kube.create(TRAININGJOBS, trainingjob("tj", consistency="checkpoint", chaos=chaos))["metadata"]["uid"]
    job = wait_for(lambda: kube.find("jobs", "tj-chaos"), timeout=10, what="the chaos Job")
    account, role, binding = kube.get("serviceaccounts", "tj-chaos"), kube.get("roles", "tj-chaos"), kube.get("rolebindings", "tj-chaos")
    policy, claim = kube.get("networkpolicies", "tj-ps"), kube.get("persistentvolumeclaims", "tj-checkpoints")
    for obj in (job, account, role, binding, policy, claim):
        assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tj-chaos" and job["spec"]["backoffLimit"] == 0
    assert pod["containers"][0]["args"][:4] == ["--trainingjob", "tj", "--namespace", "default"]
    assert binding["roleRef"]["name"] == "tj-chaos" and binding["subjects"][0]["name"] == "tj-chaos"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    # patch: the chaos Job writes the kill's time and target on the pod just before deleting it.
    assert granted == {("trainthrough.io", "trainingjobs", "get"), ("", "pods", "get"), ("", "pods", "patch"),
                       ("", "pods", "delete"), ("", "events", "create")}  # fmt: skip
    assert [r.get("resourceNames") for r in role["rules"] if r["resources"] == ["trainingjobs"]] == [["tj"]]
    # The PS port: the job's own pods and the operator; its data port the job's own pods; nobody else.
    def allowed(port: int) -> list:
        return [rule["from"] for rule in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in rule["ports"]]

    job_pods = [{"podSelector": {"matchLabels": {manifests.LABEL_JOB: "tj"}}}]
    assert allowed(50051) == [
        job_pods,
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainthrough-system"}},
          "podSelector": {"matchLabels": {"app.kubernetes.io/name": "trainthrough-operator"}}}],
    ]  # fmt: skip
    assert allowed(50053) == [job_pods]
    # The chaos pod is not one of the job's processes: losing it is no failure to recover.
    template_labels = job["spec"]["template"]["metadata"]["labels"]
    assert manifests.LABEL_PROCESS not in template_labels and template_labels[manifests.LABEL_JOB] == "tj"


def test_a_named_checkpoint_claim_is_used_not_created(kube: KubeEmulator, operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("nv", consistency="checkpoint", checkpoint={"volumeClaim": "shared-checkpoints"}))
    ps = wait_for(lambda: pods(kube, "nv").get("nv-ps-0"), timeout=10, what="the PS pod")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in ps["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["shared-checkpoints"]
    assert kube.find("persistentvolumeclaims", "nv-checkpoints") is None
    assert kube.find("persistentvolumeclaims", "shared-checkpoints") is None  # not ours to create


@pytest.fixture(name="kube")
def kube_fixture(request: pytest.FixtureRequest) -> Iterator[KubeEmulator]:
    """kube_fixtures' `kube`; parametrized False (indirect), a cluster whose CRD predates
    its admission rules (the emulator stores TrainingJobs as sent)."""
    with KubeEmulator(admission=getattr(request, "param", True)) as emulator:
        yield emulator


@pytest.mark.parametrize("kube", [False], indirect=True, ids=["crd-without-rules"])
def test_an_invalid_job_fails_with_the_field_and_others_are_still_served(kube: KubeEmulator, operator) -> None:
    # A job the CRD's rules refuse today, stored where they did not run: the operator's own check.
    kube.create(TRAININGJOBS, trainingjob("bad", consistency="stateless", updates="sync"))
    current = wait_for(lambda: status(kube, "bad").get("phase") == "Failed" and status(kube, "bad"), timeout=10, what="Failed")
    ready, failed = conditions(current)["Ready"], conditions(current)["Failed"]
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("spec.updates:")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert "InvalidSpec" in wait_for(lambda: events(kube, "bad"), timeout=5, what="an Event")
    assert pods(kube, "bad") == {} and kube.find("configmaps", "bad-job") is None
    kube.create(TRAININGJOBS, trainingjob("good", consistency="checkpoint"))
    wait_for(lambda: "good-ps-0" in pods(kube, "good"), timeout=10, what="the next job's PS")


def test_a_refused_job_is_deleted_its_ttl_after_it_was_refused(kube: KubeEmulator, operator) -> None:
    operator.chaos = ChaosPolicy()  # chaos off: a job with a chaos schedule is refused whole
    chaos = [{"target": "ps-head", "at": "30s"}]
    kube.create(TRAININGJOBS, trainingjob("refused", chaos=chaos, runPolicy={"ttlSecondsAfterFinished": 1}))
    failed = wait_for(lambda: (s := status(kube, "refused")).get("phase") == "Failed" and s, timeout=10, what="refused")
    assert failed["reason"] == "ChaosNotAllowed" and failed["completionTime"]
    assert conditions(failed)["Stalled"]["status"] == conditions(failed)["Failed"]["status"] == "True"
    wait_for(lambda: kube.find(TRAININGJOBS, "refused") is None, timeout=15, what="the refused job deleted after its TTL")


def test_a_deleted_job_leaves_no_series_and_no_state_in_the_operator(kube: KubeEmulator, operator) -> None:
    """An operator runs for months: a deleted job's recovery series, pods' last states and
    connections go with it, and another namespace's job of the same name keeps its own."""
    body = kube.create(TRAININGJOBS, trainingjob("gone", consistency="stateless"))
    wait_for(lambda: "gone-ps-0" in pods(kube, "gone"), timeout=10, what="its PS pod")
    job = parse_resource(body)
    other = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": "team-b"})})
    operator.recovery_metrics(job)  # as the first recovery of each would
    operator.recovery_metrics(other)
    names = lambda: {s.labels["namespace"] for s in next(iter(operator.metrics.recoveries.collect())).samples if s.labels["trainingjob"] == "gone"}  # noqa: E731
    assert names() == {"default", "team-b"} and ("default", "gone") in operator.seen_pods
    kube.delete(TRAININGJOBS, "gone")
    wait_for(lambda: names() == {"team-b"}, timeout=10, what="the deleted job's series removed")
    # Its pods go after it (garbage collection); their events leave nothing behind either.
    wait_for(lambda: not pods(kube, "gone"), timeout=10, what="its pods collected")
    wait_for(lambda: ("default", "gone") not in operator.seen_pods, timeout=10, what="the pods' last states dropped")


def test_a_recreated_job_waits_for_the_old_jobs_token_to_go(kube: KubeEmulator, operator) -> None:
    """A job deleted and created again under its name must not inherit the old job's
    token Secret (still there until garbage collection): it waits, then gets its own."""
    # An owner that still exists stands for the deleted job the collector has not got to.
    keeper = kube.create("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keeper", "namespace": "default"}})
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": keeper["metadata"]["uid"]}
    stale = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"token": "b2xk"},
             "metadata": {"name": "again-token", "namespace": "default", "ownerReferences": [owner]}}  # fmt: skip
    kube.create("secrets", stale)
    uid = kube.create(TRAININGJOBS, trainingjob("again", consistency="stateless"))["metadata"]["uid"]
    time.sleep(1.5)  # several reconciles, each finding the old job's Secret
    assert pods(kube, "again") == {} and kube.find("configmaps", "again-job") is None
    assert kube.get("secrets", "again-token")["data"]["token"] == "b2xk"
    kube.delete("configmaps", "keeper")  # the collector's turn: the stale Secret goes with it
    wait_for(lambda: "again-ps-0" in pods(kube, "again"), timeout=10, what="the PS pod once the old Secret is gone")
    secret = kube.get("secrets", "again-token")
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [uid] and secret["data"]["token"] != "b2xk"


def test_the_pod_runtime_removes_the_pod_an_ended_process_left(kube: KubeEmulator) -> None:
    """cleanPodPolicy All's Remove: the pod of a process that ended goes (no operator runs
    here: nothing else touches it); a process that left no pod is nothing to do."""
    owner = kube.create(TRAININGJOBS, trainingjob("ended"))
    job = parse_resource(owner)
    pod = manifests.worker_pod(job, 0, [["ps-0"]])
    kube.create("pods", pod)
    kube.patch_status("pods", pod["metadata"]["name"], {"phase": "Succeeded"})
    runtime = PodRuntime(KubeApi(kube.api_client()), job, owner=owner, images={})
    runtime.remove("worker-0")
    runtime.remove("ps-0")
    assert kube.find("pods", pod["metadata"]["name"]) is None


def test_a_deleted_pod_is_lost_when_it_was_deleted_not_when_its_grace_ends() -> None:
    """A pod being deleted: deletionTimestamp is the end of its grace period (the DELETE's
    time plus deletionGracePeriodSeconds, whole seconds); the loss is the DELETE's time,
    or the chaos Job's own record of it when it wrote one."""
    deleted = time.time()
    meta = {"labels": {manifests.LABEL_PROCESS: "ps-0"}, "deletionTimestamp": timestamp(30), "deletionGracePeriodSeconds": 30}
    disrupted = disruption_of({"metadata": meta}, now=deleted + 0.5)
    assert disrupted is not None and disrupted.process == "ps-0"
    assert deleted - 1.0 <= disrupted.at <= deleted + 0.5
    annotated = {**meta, "annotations": {ANNOTATION_DISRUPTED_AT: f"{deleted - 0.25:.6f}"}}
    assert disruption_of({"metadata": annotated}, now=deleted + 0.5).at == pytest.approx(deleted - 0.25, abs=1e-6)
    assert disruption_of({"metadata": {"labels": meta["labels"]}}, now=deleted) is None  # nobody deletes it


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
        documents += manifests.manifests(job, operator_pods=operator_pods) + [manifests.ps_pod(job, "ps-7", start=PSStart.JOIN)] + manifests.manifests(gpu)[-1:]
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", version, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(documents), result.stdout


@pytest.mark.e2e
def test_the_operator_command_serves_metrics_and_liveness(kube: KubeEmulator, tmp_path: Path) -> None:
    """`trainthrough operator` as a process, configured by a kubeconfig, like `kopf run`."""
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    metrics_port, liveness_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainthrough.cli", "operator", "--standalone", "--metrics-port", str(metrics_port),
         "--liveness", f"http://127.0.0.1:{liveness_port}/healthz"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
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
        # The counter moves once a reconcile has ended (after its pods were made): wait for it.
        ok = 'trainthrough_operator_reconciles_total{result="ok"}'
        wait_for(lambda: ok in (fetch(metrics_port, "/metrics") or ""), timeout=30, what="a reconcile counted in the metrics")
    finally:
        process.terminate()
        process.wait(20)


def test_a_job_that_existed_before_the_operator_started_is_taken_up(kube: KubeEmulator, run_operator) -> None:
    kube.create(TRAININGJOBS, trainingjob("early", consistency="stateless"))
    registry = kopf.OperatorRegistry()
    config = OperatorConfig(api=KubeApi(kube.api_client()), metrics=create_metrics(CollectorRegistry()), images={}, health_timeout=0.1)
    register(registry, config)
    run_operator(registry, watching=[TRAININGJOBS, "pods"])
    wait_for(lambda: "early-ps-0" in pods(kube, "early") and kube.find("services", "early"), timeout=10, what="its PS pod and Service")
    current = wait_for(lambda: status(kube, "early").get("phase") and status(kube, "early"), timeout=10, what="its status")
    assert current["phase"] == "Pending" and current["ps"] == ["ps-0"]


@pytest.mark.e2e
def test_two_peered_replicas_serve_jobs_once_and_a_standby_takes_over(kube: KubeEmulator, tmp_path: Path) -> None:
    """Two `trainthrough operator` replicas with kopf peering (the chart's CRDs and
    ClusterKopfPeering): the higher priority serves, the other stands by; when the active
    one dies, the standby takes over once its peering record expires."""
    import yaml

    for crd in yaml.safe_load_all((ROOT / "helm" / "trainthrough" / "crds" / "kopfpeerings.kopf.dev.yaml").read_text()):
        kube.register_crd(crd)
    kube.create("clusterkopfpeerings.v1.kopf.dev", {"metadata": {"name": "trainthrough"}})
    env = {**os.environ, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}

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


# -- on the stand-in: every pod a real process -----------------------------------------------
# The real operator (`trainthrough operator`, through a kubeconfig) against the stand-in,
# whose kubelet runs each pod as a local process on its own loopback address: the PS
# answers the operator's Health calls, workers train, deletions stop processes.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInCluster]:
    work = tmp_path_factory.mktemp("standin")
    with StandInCluster(work) as standin:
        standin.start_operator()
        yield standin


def running(cluster: StandInCluster, name: str) -> dict[str, Any]:
    kube = cluster.kube
    return wait_for(
        lambda: (s := status(kube, name)).get("phase") == "Running" and s, timeout=JOB_TIMEOUT, interval=0.1,
        what=f"{name} training ({cluster.operator_log})",
    )  # fmt: skip


def process_id(pod: dict[str, Any]) -> int:
    """The PID of a stand-in pod's process (its container ID is `standin://PID`)."""
    [container] = pod["status"]["containerStatuses"]
    scheme, _, pid = container["containerID"].partition("://")
    assert scheme == "standin", container
    return int(pid)


def uids(kube: KubeEmulator, pod: str) -> list[str]:
    """The uid of every pod ever named `pod`, in creation order."""
    return list(dict.fromkeys(v["metadata"]["uid"] for v in kube.history("pods", pod) if v is not None))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def remove(cluster: StandInCluster, name: str) -> None:
    """Delete the job; its pods (and their processes) go with it, freeing the machine."""
    if cluster.kube.find(TRAININGJOBS, name) is not None:
        cluster.kube.delete(TRAININGJOBS, name)
    wait_for(lambda: not pods(cluster.kube, name), timeout=120, interval=0.2, what=f"{name}'s pods gone")


@pytest.mark.e2e
@pytest.mark.timeout(600)  # real processes on a loaded machine; the waits bound each step
def test_a_checkpoint_job_recovers_lost_pods_once_and_follows_its_worker_count(cluster: StandInCluster) -> None:
    kube, name = cluster.kube, "ck"
    cluster.apply(trainingjob(name, consistency="checkpoint", workers={"replicas": 1, "resources": {"gpu": 1}}, stop={"duration": "600s"}))
    try:
        running(cluster, name)
        worker = pods(kube, name)["ck-worker-0"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert worker["args"][worker["args"].index("--ps") + 1] == "ck-ps-0.ck.default.svc:50051"

        # A deleted PS pod (as a chaos Job or a drained node deletes it): the same PS again.
        first = pods(kube, name)["ck-ps-0"]
        kube.delete("pods", "ck-ps-0")
        replacement = wait_for(
            lambda: (p := pods(kube, name).get("ck-ps-0")) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,
            timeout=JOB_TIMEOUT, interval=0.1, what="the replacement PS pod",
        )  # fmt: skip
        assert "--checkpoint-dir" in replacement["spec"]["containers"][0]["args"]
        after = wait_for(lambda: (s := status(kube, name))["recoveries"]["count"] == 1 and s, timeout=JOB_TIMEOUT, interval=0.2, what="the recovery")
        # While it was in flight, the status said so.
        [during, *_] = [s for s in statuses(kube, name) if s.get("phase") == "Recovering"]
        assert during["recoveries"]["inFlight"] == ["ps-0"]
        assert conditions(during)["Recovering"]["status"] == conditions(during)["Degraded"]["status"] == "True"
        assert after["phase"] == "Running" and after["recoveries"]["inFlight"] == []
        assert conditions(after)["Recovering"]["status"] == conditions(after)["Degraded"]["status"] == "False"
        phases = after["recoveries"]["lastPhases"]
        assert set(phases) == {"detect", "restore", "first_update", "total"}
        assert phases["total"] == pytest.approx(phases["detect"] + phases["restore"] + phases["first_update"], abs=1e-5)
        assert after["recoveries"]["failures"] == 0  # a deletion is a disruption, not a failure
        assert told(kube, name, ["FailureDetected", "RecoveryCompleted"]) == ["FailureDetected", "RecoveryCompleted"]

        # The PS process dies on its own: its pod ends Failed (137); the operator removes
        # that pod to free the name. One failure, one recovery, exactly one new pod.
        os.kill(process_id(kube.get("pods", "ck-ps-0")), signal.SIGKILL)
        after = wait_for(lambda: (s := status(kube, name))["recoveries"]["count"] == 2 and s, timeout=JOB_TIMEOUT, interval=0.2, what="the second recovery")
        assert after["recoveries"]["failures"] == 1
        assert len(uids(kube, "ck-ps-0")) == 3

        # A deleted worker comes back under its name; no PS recovery, no failure.
        lost = pods(kube, name)["ck-worker-0"]["metadata"]["uid"]
        kube.delete("pods", "ck-worker-0")
        wait_for(
            lambda: (p := pods(kube, name).get("ck-worker-0")) and p["metadata"]["uid"] != lost and p.get("status", {}).get("phase") == "Running",
            timeout=JOB_TIMEOUT, interval=0.2, what="worker 0 again",
        )  # fmt: skip

        # Workers follow spec.workers.replicas, up and down (the ConfigMap too).
        kube.patch(TRAININGJOBS, name, {"spec": {"workers": {"replicas": 2}}})
        wait_for(
            lambda: (p := pods(kube, name).get("ck-worker-1")) and p.get("status", {}).get("phase") == "Running",
            timeout=JOB_TIMEOUT, interval=0.2, what="a second worker running",
        )  # fmt: skip
        assert json.loads(kube.get("configmaps", "ck-job")["data"]["job.json"])["spec"]["workers"]["replicas"] == 2
        kube.patch(TRAININGJOBS, name, {"spec": {"workers": {"replicas": 1}}})
        wait_for(lambda: {n for n in pods(kube, name) if "worker" in n} == {"ck-worker-0"}, timeout=JOB_TIMEOUT, interval=0.2, what="one worker left")
        assert json.loads(kube.get("configmaps", "ck-job")["data"]["job.json"])["spec"]["workers"]["replicas"] == 1
        wait_for(lambda: sorted(status(kube, name)["master"]["up"]) == ["ps-0", "worker-0"], timeout=30, what="the master's view")

        final = status(kube, name)
        assert final["phase"] == "Running" and final["recoveries"]["count"] == 2 and final["recoveries"]["failures"] == 1
        assert len(uids(kube, "ck-ps-0")) == 3  # still: nothing replaced the PS a second time
        assert cluster.operator_metrics_port is not None
        port, labels = cluster.operator_metrics_port, (("mode", "checkpoint"), ("namespace", "default"), ("trainingjob", name))
        samples = wait_for(lambda: (m := scrape(port)).get(("trainthrough_recoveries_total", labels)) == 2 and m, timeout=30, what="the metrics")
        for phase in ("detect", "restore", "first_update", "total"):
            assert samples[("trainthrough_recovery_seconds_count", tuple(sorted(labels + (("phase", phase),))))] == 2
        total = samples[("trainthrough_recovery_seconds_sum", tuple(sorted(labels + (("phase", "total"),))))]
        assert total == pytest.approx(final["recoveries"]["downtimeSeconds"], abs=1e-4)
    finally:
        remove(cluster, name)


@pytest.mark.e2e
@pytest.mark.timeout(600)  # real processes on a loaded machine; the waits bound each step
def test_a_lost_chain_head_is_replaced_at_the_tail_even_when_the_replacement_is_lost(cluster: StandInCluster) -> None:
    kube, name = cluster.kube, "ch"
    cluster.apply(trainingjob(name, consistency="chain", parameterServer={"replicas": 3}, workers={"replicas": 1}, stop={"duration": "600s"}))
    try:
        chain = running(cluster, name)["chain"]
        assert (chain["epoch"], chain["publishedEpoch"], chain["members"]) == (1, 1, ["ps-0", "ps-1", "ps-2"])

        kube.delete("pods", "ch-ps-0")
        replacement = wait_for(lambda: pods(kube, name).get("ch-ps-3"), timeout=JOB_TIMEOUT, what="the replacement replica")
        assert "--join" in replacement["spec"]["containers"][0]["args"]
        # Lost before it joined (its process is barely starting): the next one replaces it.
        kube.delete("pods", "ch-ps-3")
        second = wait_for(lambda: pods(kube, name).get("ch-ps-4"), timeout=JOB_TIMEOUT, interval=0.1, what="a second replacement")
        assert "--join" in second["spec"]["containers"][0]["args"]
        final = wait_for(
            lambda: (s := status(kube, name))["chain"]["members"] == ["ps-1", "ps-2", "ps-4"] and not s["chain"]["joining"]
            and s["recoveries"]["lastRecoverySeconds"] is not None and s,
            timeout=JOB_TIMEOUT, interval=0.2, what="ps-4 joined at the tail",
        )  # fmt: skip
        chain = final["chain"]
        assert chain["head"] == "ps-1" and chain["epoch"] == chain["publishedEpoch"]

        # The way there: the head's loss made epoch 2 (ps-1 heads), with ps-3 joining ...
        history = [s["chain"] for s in statuses(kube, name) if s.get("chain")]
        [promoted, *_] = [c for c in history if c["epoch"] == 2]
        assert (promoted["members"], promoted["head"], promoted["joining"]) == (["ps-1", "ps-2"], "ps-1", ["ps-3"])
        # ... then, ps-3 lost, ps-4 joining in its place and ps-3 never a member since.
        losing = next(i for i, c in enumerate(history) if c["joining"] == ["ps-4"])
        assert all("ps-3" not in c["members"] for c in history[losing:])
        assert final["ps"] == ["ps-0", "ps-1", "ps-2", "ps-3", "ps-4"]
        recoveries = final["recoveries"]
        assert recoveries["count"] == 1 and recoveries["failures"] == 0 and recoveries["inFlight"] == []
        assert recoveries["lostUpdates"] == 0 and set(recoveries["lastPhases"]) == {"detect", "restore", "first_update", "total"}
        wanted = ["FailureDetected", "ChainReconfigured", "ReplicaJoinFailed", "ReplicaJoined"]
        assert told(kube, name, wanted) == wanted
        assert told(kube, name, ["RecoveryCompleted"]) == ["RecoveryCompleted"]

        # The operator's metrics hold the same recovery (the dashboard and the rules).
        assert cluster.operator_metrics_port is not None
        port, labels = cluster.operator_metrics_port, (("mode", "chain"), ("namespace", "default"), ("trainingjob", name))
        samples = wait_for(lambda: (m := scrape(port)).get(("trainthrough_recoveries_total", labels)) == 1 and m, timeout=30, what="the metrics")
        assert samples[("trainthrough_recovery_seconds_count", tuple(sorted(labels + (("phase", "detect"),))))] == 1
        total = samples[("trainthrough_recovery_seconds_sum", tuple(sorted(labels + (("phase", "total"),))))]
        assert total == pytest.approx(recoveries["lastRecoverySeconds"], abs=1e-5)
    finally:
        remove(cluster, name)
