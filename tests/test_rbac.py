"""RBAC: what the operator and the chaos Job are granted is exactly what they do.

The Kubernetes emulator records every API call it serves, with the caller's User-Agent
(tests/kube_emulator.py). The real operator (`trainthrough operator`, with the arguments
the chart's Deployment gives it, peering on, through a kubeconfig) runs a scenario that
takes every path that talks to the API: jobs of every kind of object (a checkpoint PVC,
a chain, a chaos section, the PS NetworkPolicy), a scale-down, a lost PS pod and a lost
chain head, an invalid job. Then:
- every call it made is allowed by the chart's ClusterRole, and the ClusterRole grants
  nothing it did not use; the namespaced install's Roles grant the same (with kopf's
  namespaced peering instead of the cluster one);
- the chaos runner's calls are exactly what the chaos Role the operator creates grants.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from helm_chart import CHART, NAMESPACED, granted, render
from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, wait_for
from trainthrough.chaos.pods import PodChaos
from trainthrough.kubeapi import KubeApi
from trainthrough.metrics import create_metrics
from trainthrough.runtime import manifests
from trainthrough.spec import ChaosKill, parse_job

pytestmark = pytest.mark.e2e

TEST_CLIENT = "Python-urllib"  # the test's own calls (KubeEmulator.create, ...)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": "mlp", "dataset": "synthetic", "stop": {"steps": 100}, "workers": {"replicas": 2}}
    base.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


def pods(kube: KubeEmulator, job: str) -> set[str]:
    return {p["metadata"]["name"] for p in kube.list("pods") if p["metadata"]["labels"].get(manifests.LABEL_JOB) == job}


def calls_by(kube: KubeEmulator, since: int = 0, exclude: str = TEST_CLIENT) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verb, agent in kube.calls()[since:] if not agent.startswith(exclude)}


def test_the_chart_grants_the_operator_exactly_the_calls_it_makes(kube: KubeEmulator, tmp_path: Path) -> None:
    chart = {d["kind"]: d for d in render(["networkPolicy.enabled=true"])}
    role = granted(chart["ClusterRole"])
    args = chart["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    # What the chart installs besides the operator: kopf's peering CRDs and the peering.
    for crd in yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text()):
        kube.register_crd(crd)
    kube.create("clusterkopfpeerings.v1.kopf.dev", {"metadata": {"name": "trainthrough"}})
    own_port = [f"--metrics-port={free_port()}", f"--liveness=http://127.0.0.1:{free_port()}/healthz"]
    env = dict(os.environ, KUBECONFIG=str(kube.write_kubeconfig(tmp_path / "kubeconfig")), POD_NAMESPACE="trainthrough-system")
    with open(tmp_path / "operator.log", "wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "trainthrough.cli", "operator", *args, *own_port], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        kube.wait_watched(TRAININGJOBS, timeout=60)
        chaos = [{"target": "ps-head", "at": "1h"}]
        kube.create(TRAININGJOBS, trainingjob("ck", consistency="checkpoint", chaos=chaos))
        kube.create(TRAININGJOBS, trainingjob("rc", consistency="chain", parameterServer={"replicas": 2}))
        kube.create(TRAININGJOBS, trainingjob("bad", consistency="stateless", updates="sync"))
        wait_for(lambda: kube.find("jobs", "ck-chaos") and kube.find("networkpolicies", "rc-ps"), timeout=60, what="every object")
        wait_for(lambda: {"ck-worker-1", "rc-ps-1"} <= pods(kube, "ck") | pods(kube, "rc"), timeout=30, what="the pods")
        kube.patch(TRAININGJOBS, "ck", {"spec": {"workers": {"replicas": 1}}})
        wait_for(lambda: "ck-worker-1" not in pods(kube, "ck"), timeout=30, what="the scale-down")
        kube.delete("pods", "ck-ps-0")
        wait_for(lambda: ((kube.get(TRAININGJOBS, "ck").get("status") or {}).get("recoveries") or {}).get("count") == 1, timeout=30, what="the PS recovery")
        kube.delete("pods", "rc-ps-0")
        wait_for(lambda: ((kube.get(TRAININGJOBS, "rc").get("status") or {}).get("chain") or {}).get("head") == "ps-1", timeout=30, what="the promotion")
        wait_for(lambda: (kube.get(TRAININGJOBS, "bad").get("status") or {}).get("phase") == "Failed", timeout=30, what="the invalid job")
    finally:
        operator.terminate()
        operator.wait(30)
    made = calls_by(kube)
    assert made, (tmp_path / "operator.log").read_text()[-3000:]
    assert made <= role, f"calls the chart does not allow: {sorted(made - role)}"
    assert role <= made, f"granted but never used: {sorted(role - made)}"

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


def test_the_chaos_role_grants_exactly_what_the_chaos_job_does(kube: KubeEmulator) -> None:
    body = kube.create(TRAININGJOBS, trainingjob("tj", consistency="checkpoint", chaos=[{"target": "random", "at": 0}]))
    job = parse_job({**body, "metadata": {"name": "tj", "namespace": "default"}})
    for process in ("ps-0", "worker-0", "worker-1"):
        name = manifests.pod_name(job, process)
        labels = {manifests.LABEL_JOB: "tj", manifests.LABEL_PROCESS: process}
        kube.create("pods", {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
        kube.patch_status("pods", name, {"phase": "Running"})
    kube.patch_status(TRAININGJOBS, "tj", {"phase": "Running", "ps": ["ps-0"], "progress": {"modelVersion": 1}})
    since = len(kube.calls())
    chaos = PodChaos(
        KubeApi(kube.api_client()), "default", "tj", create_metrics(CollectorRegistry()),
        kills=[ChaosKill(target="random", at=0.0), ChaosKill(target="ps-9", at=0.0)], poll_interval=0.05, wait_timeout=0.3,
    )  # fmt: skip
    chaos.run()
    assert len(chaos.injections) == 1 and len(chaos.skipped) == 1  # an injection and a skip: every path
    made = calls_by(kube, since)
    assert made == granted(manifests.chaos_role(job))
