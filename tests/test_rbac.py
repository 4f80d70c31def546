"""RBAC: what the operator and the chaos Job are granted is exactly what they do.

The Kubernetes API emulator (trainthrough.standin.emulator) records every API call it
serves, with the caller's User-Agent (`KubeEmulator.calls()`). On the cluster stand-in
(trainthrough.standin.cluster: every pod a real process) the real operator
(`trainthrough operator`, with the arguments the chart's Deployment gives it, peering on,
through a kubeconfig) runs a scenario that takes every path that talks to the API: jobs
of every kind of object (a checkpoint PVC, a chain, a chaos section, the PS
NetworkPolicy), a chaos Job that really deletes the checkpoint PS once training runs, a
recovery from it, a scale-down, a lost chain head replaced at the tail, the chain job
failed past a shortened activeDeadlineSeconds and deleted by its ttlSecondsAfterFinished
(an invalid job no longer gets past the CRD's rules: its status and Event calls are the
ones every job makes).
The stand-in's own kubelet and Job controller (their User-Agents) and the test's calls are
left out; the chaos pod runs `trainthrough chaos` with its API client's User-Agent
tagged, so that its calls can be told from the operator's (both use the kubernetes
client). Covered:
- every call the operator made is allowed by the chart's ClusterRole, and the ClusterRole
  grants nothing it did not use but what it must hold to create the chaos Role (RBAC's
  escalation check: a Role may grant only what its creator holds); the namespaced
  install's Roles grant the same (with kopf's namespaced peering instead of the cluster
  one);
- the chaos Job's calls are exactly what the chaos Role the operator creates grants.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_chart import CHART, NAMESPACED, granted, render
from trainthrough.runtime import manifests
from trainthrough.spec import parse_job
from trainthrough.standin import jobs, kubelet
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TIMEOUT = 240.0  # generous bounds for real processes on a loaded 2-core machine
TEST_CLIENT = "Python-urllib"  # the test's own calls (KubeEmulator.create, ...)
STANDIN = (kubelet.USER_AGENT, jobs.USER_AGENT)  # the stand-in's kubelet and Job controller
CHAOS_AGENT = "trainthrough-chaos-under-test"
# The chaos image's entrypoint (`trainthrough chaos`), its kubernetes client tagged.
CHAOS_ENTRYPOINT = [
    sys.executable, "-c",
    "import sys, kubernetes.client\n"
    "init = kubernetes.client.ApiClient.__init__\n"
    "def tagged(self, *args, **kwargs):\n"
    "    init(self, *args, **kwargs)\n"
    f"    self.user_agent = {CHAOS_AGENT!r}\n"
    "kubernetes.client.ApiClient.__init__ = tagged\n"
    "from trainthrough.cli import main\n"
    "sys.exit(main(['chaos', *sys.argv[1:]]))\n",
]  # fmt: skip

Calls = set[tuple[str, str, str]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": "mlp", "dataset": "synthetic", "stop": {"duration": "600s"}, "workers": {"replicas": 1}}
    base.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


def pods(kube: KubeEmulator, job: str) -> set[str]:
    return {p["metadata"]["name"] for p in kube.list("pods") if p["metadata"]["labels"].get(manifests.LABEL_JOB) == job}


def status(kube: KubeEmulator, name: str) -> dict[str, Any]:
    return kube.get(TRAININGJOBS, name).get("status") or {}


def reasons(kube: KubeEmulator, name: str) -> list[str]:
    return [e["reason"] for e in kube.list("events") if e["involvedObject"]["name"] == name]


@dataclass
class Recorded:
    operator: Calls  # (api group, resource, verb) the operator called
    chaos: Calls  # ... and the chaos Job
    cluster_role: Calls  # what the chart grants the operator
    chaos_role: Calls  # what the operator grants the chaos Job
    log: str  # the operator's output, for failure messages


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    work = tmp_path_factory.mktemp("rbac")
    # chaos.enabled: the scenario's chaos Job (chaos is off unless the chart turns it on).
    chart = {d["kind"]: d for d in render(["networkPolicy.enabled=true", "chaos.enabled=true"])}
    args = chart["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    [chaos_image] = [a.split("=", 1)[1] for a in args if a.startswith("--chaos-image=")]
    with StandInCluster(work, images={chaos_image: CHAOS_ENTRYPOINT}) as cluster:
        kube = cluster.kube
        # What the chart installs besides the operator: kopf's peering CRDs and the peering.
        for crd in yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text()):
            kube.register_crd(crd)
        kube.create("clusterkopfpeerings.v1.kopf.dev", {"metadata": {"name": "trainthrough"}})
        own_ports = [f"--metrics-port={free_port()}", f"--liveness=http://127.0.0.1:{free_port()}/healthz"]
        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), POD_NAMESPACE="trainthrough-system")
        log_path = work / "operator.log"
        with open(log_path, "wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "trainthrough.cli", "operator", *args, *own_ports],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            kube.wait_watched(TRAININGJOBS, timeout=60)
            chaos = [{"target": "ps-head", "at": "1s"}]
            kube.create(TRAININGJOBS, trainingjob("ck", consistency="checkpoint", chaos=chaos, workers={"replicas": 2}))
            kube.create(TRAININGJOBS, trainingjob("rc", consistency="chain", parameterServer={"replicas": 2}))
            # The chaos Job deletes ck's PS once training runs; the operator recovers it.
            wait_for(lambda: "ChaosInjected" in reasons(kube, "ck"), timeout=TIMEOUT, interval=0.2, what="the chaos Job's kill")
            wait_for(lambda: status(kube, "ck")["recoveries"]["count"] == 1, timeout=TIMEOUT, interval=0.2, what="the PS recovery")
            kube.patch(TRAININGJOBS, "ck", {"spec": {"workers": {"replicas": 1}}})
            wait_for(lambda: "ck-worker-1" not in pods(kube, "ck"), timeout=TIMEOUT, interval=0.2, what="the scale-down")
            wait_for(lambda: status(kube, "rc").get("phase") == "Running", timeout=TIMEOUT, interval=0.2, what="the chain training")
            kube.delete("pods", "rc-ps-0")
            wait_for(
                lambda: (s := status(kube, "rc"))["chain"]["members"] == ["ps-1", "ps-2"] and not s["chain"]["joining"]
                and s["recoveries"]["count"] == 1,
                timeout=TIMEOUT, interval=0.2, what="the promotion and the replacement's join",
            )  # fmt: skip
            # runPolicy stays mutable: past a shortened deadline it fails, and its TTL deletes it.
            kube.patch(TRAININGJOBS, "rc", {"spec": {"runPolicy": {"activeDeadlineSeconds": 1, "ttlSecondsAfterFinished": 0}}})
            wait_for(lambda: kube.find(TRAININGJOBS, "rc") is None, timeout=TIMEOUT, interval=0.2, what="rc failed and deleted")
            job = parse_job({**kube.get(TRAININGJOBS, "ck"), "metadata": {"name": "ck", "namespace": "default"}})
        finally:
            operator.terminate()
            operator.wait(30)
        calls = kube.calls()
    others = {TEST_CLIENT, *STANDIN, CHAOS_AGENT}
    return Recorded(
        operator={(g, r, v) for g, r, v, agent in calls if not agent.startswith(tuple(others))},
        chaos={(g, r, v) for g, r, v, agent in calls if agent == CHAOS_AGENT},
        cluster_role=granted(chart["ClusterRole"]),
        chaos_role=granted(manifests.chaos_role(job)),
        log=log_path.read_text(errors="replace")[-3000:],
    )


def test_the_chart_grants_the_operator_exactly_the_calls_it_makes(recorded: Recorded) -> None:
    made, role = recorded.operator, recorded.cluster_role
    assert made, recorded.log
    assert made <= role, f"calls the chart does not allow: {sorted(made - role)}"
    # RBAC's escalation check: a Role may only grant what its creator holds (short of the
    # `escalate` verb, which the operator is not given). The operator creates the chaos
    # Role, so it must hold each of its permissions, whether it calls them or not: the
    # chaos Job's reads of the pods and its annotation of one before deleting it.
    unused = role - made
    assert unused <= recorded.chaos_role, f"granted but never used: {sorted(unused - recorded.chaos_role)}"
    assert unused == {("", "pods", "get"), ("", "pods", "patch")}, sorted(unused)

    # A namespaced install grants the same in each namespace (peering is namespaced there),
    # and only kopf's read of CRDs cluster-wide.
    namespaced = render(NAMESPACED + ["networkPolicy.enabled=true"])
    roles = [d for d in namespaced if d["kind"] == "Role"]
    (cluster_role,) = [d for d in namespaced if d["kind"] == "ClusterRole"]
    crds = {rule for rule in role if rule[0] == "apiextensions.k8s.io"}
    peering = {rule for rule in role if rule[:2] == ("kopf.dev", "clusterkopfpeerings")}
    expected = (role - crds - peering) | {("kopf.dev", "kopfpeerings", verb) for _, _, verb in peering}
    assert len(roles) == 2 and all(granted(r) == expected for r in roles)
    assert granted(cluster_role) == crds


def test_the_chaos_role_grants_exactly_what_the_chaos_job_does(recorded: Recorded) -> None:
    assert recorded.chaos, "the chaos Job made no call"
    assert recorded.chaos == recorded.chaos_role
