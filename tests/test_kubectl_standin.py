"""The real kubectl binary against the cluster stand-in's API (standin/emulator.py).

What a user types, with kubectl's defaults (``--validate=strict``: no ``--validate=false``):

- ``kubectl apply -f examples/quickstart.yaml`` creates the job (kubectl reads the
  server's OpenAPI v3 to leave field validation to it, and sends ``fieldValidation=Strict``);
  ``kubectl get tj`` prints the CRD's printer columns (a server-side Table);
  ``kubectl get tj NAME -o yaml`` shows the job as stored, defaults filled in by admission;
- ``kubectl patch --type=merge`` of a mutable field (``workers.replicas``) is applied, of
  an immutable one (``consistency``) refused with the CRD rule's message; a document that
  breaks a rule between fields is refused by ``kubectl apply --dry-run=server`` and
  nothing is stored; an unknown field is a strict decoding error;
- ``kubectl delete`` removes it (kubectl waits for the deletion through a watch);
- end to end, with the real operator and pods: ``kubectl wait --for=condition=Complete
  tj/NAME`` returns once the job has trained to its stop condition (a synthetic-dataset
  mlp job: seconds).

Skipped, saying why, where no kubectl is on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainthrough.rules import IMMUTABLE
from trainthrough.standin import tables
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
KUBECTL_TIMEOUT = 60


def kubectl_binary() -> str:
    tool = shutil.which("kubectl")
    if tool is None:
        pytest.skip("no kubectl on PATH (the project's dev setup installs one)")
    return tool


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def make_kubectl(kubeconfig: Path, home: Path) -> Kubectl:
    tool = kubectl_binary()
    # HOME: kubectl caches discovery and OpenAPI under ~/.kube/cache; a fresh one per test.
    env = {"KUBECONFIG": str(kubeconfig), "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def kubectl(*args: str, stdin: str | None = None, timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
        )

    return kubectl


@pytest.fixture
def kubectl(kube: KubeEmulator, tmp_path: Path) -> Kubectl:
    return make_kubectl(kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Warning" not in result.stderr, result.stderr  # e.g. an ambiguous short name
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr


def message(field: str) -> str:
    return next(rule.message for rule in IMMUTABLE if rule.field == field)


def test_kubectl_applies_shows_patches_and_deletes_a_trainingjob(kube: KubeEmulator, kubectl: Kubectl) -> None:
    assert "trainingjob.trainthrough.io/quickstart created" in ok(kubectl("apply", "-f", str(QUICKSTART)))

    table = ok(kubectl("get", "tj")).splitlines()
    assert table[0].split() == ["NAME", "MODE", "PHASE", "STEP", "ACCURACY", "RECOVERIES", "AGE"]
    assert table[1].split()[:2] == ["quickstart", "stateless"] and len(table) == 2

    stored: dict[str, Any] = yaml.safe_load(ok(kubectl("get", "tj", "quickstart", "-o", "yaml")))
    written = yaml.safe_load(QUICKSTART.read_text())
    assert stored["spec"]["consistency"] == written["spec"]["consistency"]
    assert stored["spec"]["batchSize"] == 32 and stored["spec"]["chain"] == {"ack": "tail", "replicateEvery": 1}  # defaults
    assert stored["metadata"]["generation"] == 1

    # A mode change of a running job: refused by the CRD's transition rule, at the field.
    error = refused(kubectl("patch", "tj", "quickstart", "--type=merge", "-p", '{"spec":{"consistency":"chain"}}'))
    assert 'The TrainingJob "quickstart" is invalid' in error
    assert f'spec.consistency: Invalid value: "string": {message("consistency")}' in error
    error = refused(kubectl("patch", "tj", "quickstart", "--type=merge", "-p", '{"spec":{"parameterServer":{"replicas":2}}}'))
    assert f"spec.parameterServer.replicas: Invalid value: \"integer\": {message('parameterServer.replicas')}" in error

    # Scaling the workers is what the operator applies to a running job.
    ok(kubectl("patch", "tj", "quickstart", "--type=merge", "-p", '{"spec":{"workers":{"replicas":3}}}'))
    assert ok(kubectl("get", "tj", "quickstart", "-o", "jsonpath={.spec.workers.replicas} {.metadata.generation}")) == "3 2"

    # A rule between fields, through a server-side dry run: refused, and nothing changes.
    fine = QUICKSTART.read_text().replace("name: quickstart", "name: broken")
    broken = fine.replace("updates: async", "updates: sync")
    assert broken != fine
    error = refused(kubectl("apply", "--dry-run=server", "-f", "-", stdin=broken))
    assert "spec.updates: Invalid value: \"object\": consistency 'stateless' trains asynchronously; got 'sync'" in error
    assert "(server dry run)" in ok(kubectl("apply", "--dry-run=server", "-f", "-", stdin=fine))
    assert kube.find(TRAININGJOBS, "broken") is None

    # kubectl's strict field validation, done by the server.
    error = refused(kubectl("apply", "-f", "-", stdin=fine.replace("spec:", "spec:\n  batchsize: 8", 1)))
    assert 'strict decoding error: unknown field "spec.batchsize"' in error

    assert 'trainingjob.trainthrough.io "quickstart" deleted' in ok(kubectl("delete", "tj", "quickstart", "--timeout=30s"))
    assert "NotFound" in refused(kubectl("get", "tj", "quickstart"))
    assert kube.find(TRAININGJOBS, "quickstart") is None


def test_kubectl_explains_the_crd_from_the_servers_openapi(kubectl: Kubectl) -> None:
    explained = ok(kubectl("explain", "tj.spec.consistency"))
    assert "ENUM:" in explained and "checkpoint" in explained and "stateless" in explained


TRAINED = {
    "apiVersion": "trainthrough.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "waited"},
    "spec": {
        "model": "mlp",
        "dataset": "synthetic",
        "consistency": "checkpoint",
        "workers": {"replicas": 1},
        "stop": {"steps": 150},
        "evaluation": {"interval": "1s"},
    },
}


@pytest.mark.e2e
def test_kubectl_wait_returns_when_the_job_completes(tmp_path: Path) -> None:
    from trainthrough.job_status import ConditionType  # the operator's terminal conditions

    kubectl_binary()
    with StandInCluster(tmp_path / "standin") as cluster:
        cluster.start_operator()
        kubectl = make_kubectl(cluster.kubeconfig, tmp_path)
        ok(kubectl("apply", "-f", "-", stdin=yaml.safe_dump(TRAINED)))
        waited = kubectl("wait", f"--for=condition={ConditionType.COMPLETE}", "tj/waited", "--timeout=180s", timeout=200)
        assert "trainingjob.trainthrough.io/waited condition met" in ok(waited)
        status = cluster.kube.get(TRAININGJOBS, "waited")["status"]
        complete = next(c for c in status["conditions"] if c["type"] == ConditionType.COMPLETE)
        assert complete["status"] == "True", status
        assert status["progress"]["step"] >= 150, status
        row = ok(kubectl("get", "tj", "waited", "--no-headers")).split()
        assert row[:2] == ["waited", "checkpoint"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-0.5, "0s"), (-3, "<invalid>"), (59, "59s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
     (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"), (50 * 3600, "2d2h"),
     (8 * 86400, "8d"), (800 * 86400, "2y70d"), (3 * 365 * 86400, "3y"), (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_ages_are_shown_as_kubectl_shows_them(seconds: float, shown: str) -> None:
    assert tables.human_duration(seconds) == shown


def test_a_table_is_rendered_only_when_asked_for() -> None:
    kubectl_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    assert tables.wants_table(kubectl_accept)
    assert not tables.wants_table("application/json")
    columns = [{"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"}, {"name": "Mode", "type": "string", "jsonPath": ".spec.consistency"}]
    rendered = tables.table(columns, [{"metadata": {"name": "a"}, "spec": {"consistency": "chain"}, "status": {"progress": {"step": 3.0}}}])
    assert [c["name"] for c in rendered["columnDefinitions"]] == ["Name", "Step", "Mode"]
    assert rendered["rows"][0]["cells"] == ["a", 3, "chain"]
    assert rendered["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
