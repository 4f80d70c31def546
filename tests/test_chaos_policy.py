"""Chaos is opt-in at the operator: a TrainingJob's spec.chaos deletes its own pods, so the
operator runs it only when the platform team allowed chaos (``--allow-chaos``, the chart's
``chaos.enabled``), and only in the namespaces it names (``--chaos-namespace``,
``chaos.namespaces``). A job whose chaos is not allowed is refused whole, with reason
ChaosNotAllowed, before any object of it exists; a job without chaos is unaffected.
"""

from __future__ import annotations

import time
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from trainthrough.kubeapi import KubeApi
from trainthrough.metrics import create_metrics
from trainthrough.operator.chaos_policy import ChaosPolicy
from trainthrough.operator.handlers import register
from trainthrough.operator.main import parse_args
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.spec import parse_job
from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, wait_for

CHAOS = [{"target": "ps-head", "at": "30s"}]


def document(name: str, namespace: str = "default", chaos: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": "mlp", "dataset": "synthetic", "stop": {"steps": 100}, "consistency": "stateless"}
    if chaos is not None:
        spec["chaos"] = chaos
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize(
    ("policy", "namespace", "refused"),
    [
        (ChaosPolicy(), "default", "chaos is turned off on this operator"),
        (ChaosPolicy.allowing(), "team-a", None),
        (ChaosPolicy.allowing(["chaos-lab"]), "chaos-lab", None),
        (ChaosPolicy.allowing(["chaos-lab", "qa"]), "team-a", "chaos is not allowed in namespace 'team-a' (allowed: chaos-lab, qa"),
    ],
)
def test_the_policy_refuses_chaos_where_it_is_not_allowed(policy: ChaosPolicy, namespace: str, refused: str | None) -> None:
    error = policy.refusal(parse_job(document("tj", namespace, CHAOS)))
    if refused is None:
        assert error is None
    else:
        assert error is not None and [e.path for e in error.errors] == ["spec.chaos"]
        assert refused in error.errors[0].message and error.source == f"TrainingJob {namespace}/tj"
    # A job without chaos runs under any policy.
    assert policy.refusal(parse_job(document("tj", namespace))) is None


def test_the_operator_flags_default_to_no_chaos() -> None:
    assert not parse_args([]).allow_chaos
    args = parse_args(["--allow-chaos", "--chaos-namespace", "a", "--chaos-namespace", "b"])
    assert args.allow_chaos and args.chaos_namespace == ["a", "b"]
    with pytest.raises(SystemExit):
        parse_args(["--chaos-namespace", "a"])  # a namespace list without --allow-chaos is a mistake


def _operator(kube: KubeEmulator, run_operator: Any, policy: ChaosPolicy) -> None:
    registry = kopf.OperatorRegistry()
    config = OperatorConfig(
        api=KubeApi(kube.api_client()), metrics=create_metrics(CollectorRegistry()), images={}, health_timeout=0.1, chaos=policy
    )
    register(registry, config)
    run_operator(registry, watching=[TRAININGJOBS, "pods"])


def _objects_of(kube: KubeEmulator, name: str) -> list[str]:
    found = []
    for kind in ("pods", "jobs", "configmaps", "services", "serviceaccounts", "roles"):
        found += [f"{kind}/{o['metadata']['name']}" for o in kube.list(kind) if o["metadata"].get("labels", {}).get(manifests.LABEL_JOB) == name]
    return found


def test_an_operator_without_chaos_refuses_a_chaos_job_and_creates_nothing_of_it(kube: KubeEmulator, run_operator: Any) -> None:
    _operator(kube, run_operator, ChaosPolicy())
    kube.create(TRAININGJOBS, document("calm"))
    kube.create(TRAININGJOBS, document("wild", chaos=CHAOS))
    status = wait_for(lambda: (kube.get(TRAININGJOBS, "wild").get("status") or {}).get("phase") and kube.get(TRAININGJOBS, "wild")["status"], timeout=10, what="the refusal")
    assert (status["phase"], status["reason"]) == ("Failed", "ChaosNotAllowed")
    assert status["message"].startswith("spec.chaos: chaos is turned off on this operator")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ChaosNotAllowed")
    warnings = [e for e in kube.list("events") if e.get("involvedObject", {}).get("name") == "wild"]
    assert [(e["type"], e["reason"]) for e in warnings] == [("Warning", "ChaosNotAllowed")]
    # The job without chaos gets its objects; the refused one none, however long we look.
    wait_for(lambda: "pods/calm-ps-0" in _objects_of(kube, "calm"), timeout=10, what="the calm job's PS pod")
    time.sleep(1.0)  # a few of the operator's 0.5 s ticks
    assert _objects_of(kube, "wild") == []
