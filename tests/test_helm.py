"""The Helm chart (helm/trainthrough), rendered by the real helm binary.

Covered:
- `helm lint --strict` passes with the defaults, with every option on and namespaced;
- the rendered output (CRDs included) passes kubernetes-validate --strict for 1.30 and
  1.33; the objects it has no schema for (the Prometheus operator's, kopf's peering) are
  checked here: kopf's against its CRD in the chart;
- values.schema.json rejects a wrong type, a value out of range and an unknown key, and
  helm says where;
- the operator Deployment: non-root, read-only root filesystem, liveness probe on kopf's
  endpoint, resources; its arguments are accepted by `trainthrough operator`'s parser;
  without peering a single replica is enforced by the Recreate strategy;
- a namespaced install gets a Role and RoleBinding (and a KopfPeering) per watched
  namespace and cluster-wide only kopf's read of CRDs; the operator watches only those
  namespaces;
- the dashboard ConfigMap carries the sidecar label and the dashboard JSON; the
  PrometheusRule carries exactly the rules file promtool tests, its runbook links moved by
  monitoring.prometheusRule.runbookBaseUrl; the PodMonitor selects the job pods' metrics
  port without honoring their labels, the ServiceMonitor honors the operator's; NOTES.txt
  renders what to run next.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helm_chart import ALL_ON, CHART, NAMESPACED, helm, render

KUBERNETES_VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
OTHER_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}


def by_kind(documents: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for document in documents:
        out.setdefault(document["kind"], []).append(document)
    return out


@pytest.mark.parametrize("sets", [[], ALL_ON, NAMESPACED + ALL_ON], ids=["defaults", "all-on", "namespaced"])
def test_helm_lint_strict(sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for option in sets:
        args += ["--set", option]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", ["1.30", "1.33"])
@pytest.mark.parametrize("sets", [[], ALL_ON, NAMESPACED + ALL_ON], ids=["defaults", "all-on", "namespaced"])
def test_rendered_chart_passes_kubernetes_validate(tmp_path: Path, sets: list[str], version: str) -> None:
    assert KUBERNETES_VALIDATE, "kubernetes-validate is a dev dependency"
    documents = render(sets, crds=True)
    builtin = [d for d in documents if d["kind"] not in OTHER_KINDS]
    path = tmp_path / "chart.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", version, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(builtin), result.stdout


def test_objects_of_other_apis_are_well_formed() -> None:
    kinds = by_kind(render(ALL_ON, crds=True))
    crds = {c["spec"]["names"]["kind"]: c for c in kinds["CustomResourceDefinition"]}
    (peering,) = kinds["ClusterKopfPeering"]
    assert crds["ClusterKopfPeering"]["spec"]["scope"] == "Cluster" and "namespace" not in peering["metadata"]
    assert peering["apiVersion"] == f"{crds['ClusterKopfPeering']['spec']['group']}/v1"
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (obj,) = kinds[kind]
        assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["metadata"]["namespace"] == "trainthrough-system"
    (pod_monitor,) = kinds["PodMonitor"]
    assert pod_monitor["spec"]["selector"] == {"matchExpressions": [{"key": "trainthrough.io/job", "operator": "Exists"}]}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    # A pod's namespace is the one discovery gives; the operator's per-job series keep the
    # job's namespace they carry (tests/test_observability.py scrapes through both).
    assert [e["honorLabels"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == [False]
    (service_monitor,) = kinds["ServiceMonitor"]
    (service,) = kinds["Service"]
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [p["name"] for p in service["spec"]["ports"]] == [e["port"] for e in service_monitor["spec"]["endpoints"]]
    assert [e["honorLabels"] for e in service_monitor["spec"]["endpoints"]] == [True]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("operator.replicas=-1", "at '/operator/replicas': minimum: got -1, want 0"),
        ("operator.metricsPort=70000", "at '/operator/metricsPort': maximum: got 70,000, want 65,535"),
        ("networkPolicy.enabled=maybe", "at '/networkPolicy/enabled': got string, want boolean"),
        ("chaos.namespaces={Team_A}", "at '/chaos/namespaces/0'"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
        ("monitoring.podMonitor.interval=often", "at '/monitoring/podMonitor/interval'"),
        ("monitoring.prometheusRule.runbookBaseUrl=wiki/runbooks", "at '/monitoring/prometheusRule/runbookBaseUrl'"),
        ("operatorr.replicas=1", "additional properties 'operatorr' not allowed"),
    ],
)
def test_values_schema_rejects_bad_values_and_says_where(option: str, message: str) -> None:
    result = helm("template", "tt", str(CHART), "--set", option)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_operator_deployment_is_locked_down_and_its_arguments_parse() -> None:
    from trainthrough.operator.main import parse_args

    kinds = by_kind(render(ALL_ON))
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/trainthrough/operator:0.1.0"
    assert deployment["spec"]["replicas"] == 2 and "strategy" not in deployment["spec"]  # peering: rolling is safe
    args = parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"] and args.liveness == f"http://0.0.0.0:{ports['liveness']}/healthz"
    assert (args.peering, args.standalone, args.namespace) == ("trainthrough", False, [])
    assert args.network_policy and args.operator_label == [
        "app.kubernetes.io/name=trainthrough-operator",
        "app.kubernetes.io/instance=tt",
    ]
    # The labels the operator admits to its jobs' PS ports are its own pod's labels.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in (a.split("=", 1) for a in args.operator_label))
    assert args.allow_chaos and args.chaos_namespace == ["chaos-lab"]
    (single,) = by_kind(render(["peering.enabled=false"]))["Deployment"]
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    defaults = parse_args(single["spec"]["template"]["spec"]["containers"][0]["args"])
    assert defaults.standalone
    assert not defaults.allow_chaos and defaults.chaos_namespace == []  # chaos is opt-in


def test_a_namespaced_install_has_roles_per_namespace_and_reads_only_crds_cluster_wide() -> None:
    from helm_chart import granted
    from trainthrough.operator.main import parse_args

    kinds = by_kind(render(NAMESPACED))
    assert "ClusterKopfPeering" not in kinds
    (cluster_role,) = kinds["ClusterRole"]
    assert granted(cluster_role) == {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in kinds["RoleBinding"]) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in kinds["KopfPeering"]) == ["team-a", "team-b"]
    for binding in kinds["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tt-trainthrough", "namespace": "trainthrough-system"}]
    (deployment,) = kinds["Deployment"]
    assert parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"]).namespace == ["team-a", "team-b"]


def test_dashboard_and_rules_come_from_the_files_the_tests_check() -> None:
    kinds = by_kind(render(ALL_ON))
    dashboard = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Training"}
    assert json.loads(dashboard["data"]["trainthrough.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert "PrometheusRule" not in by_kind(render([]))  # only where the Prometheus operator is


def test_runbook_links_follow_the_runbook_base_url() -> None:
    """The rule file links the repository's runbooks; the value moves every link, and
    nothing else, to a platform team's copy (a trailing slash or not)."""
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    for base in ("https://wiki.example.com/ml/runbooks", "https://wiki.example.com/ml/runbooks/"):
        (rule,) = by_kind(render(ALL_ON + [f"monitoring.prometheusRule.runbookBaseUrl={base}"]))["PrometheusRule"]
        moved = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
        assert moved and all(r["annotations"]["runbook_url"] == f"https://wiki.example.com/ml/runbooks/{r['alert']}.md" for r in moved)
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                r.get("annotations", {}).pop("runbook_url", None)
        for group in rules["groups"]:
            for r in group["rules"]:
                r.get("annotations", {}).pop("runbook_url", None)
        assert rule["spec"] == rules


def test_notes_say_what_to_run_next() -> None:
    result = helm("install", "tt", str(CHART), "--dry-run=client", "--namespace", "trainthrough-system")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n trainthrough-system rollout status deployment/tt-trainthrough" in notes
    assert "kubectl apply -f examples/stateless.yaml" in notes and "kubectl get tj" in notes
