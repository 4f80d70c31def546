"""The Chaos Mesh examples in chaos/ select what they say, among the pods the operator
creates for examples/quickstart.yaml (Chaos Mesh itself cannot run here): the PodChaos
its PS pod only, the Schedule any PS or worker pod but never the chaos Job's own pod; both
kill without grace, like a `trainthrough chaos` kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainthrough.runtime import manifests
from trainthrough.spec import load_job

ROOT = Path(__file__).resolve().parents[1]


def selected(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """Chaos Mesh's label and expression selectors (In / NotIn / Exists / DoesNotExist)."""
    if any(pod_labels.get(k) != v for k, v in selector.get("labelSelectors", {}).items()):
        return False
    for expression in selector.get("expressionSelectors", []):
        value, operator = pod_labels.get(expression["key"]), expression["operator"]
        ok = {
            "In": value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[operator]
        if not ok:
            return False
    return True


def quickstart_pods() -> dict[str, dict[str, str]]:
    job = load_job(ROOT / "examples" / "quickstart.yaml")
    pods = {m["metadata"]["name"]: m["metadata"]["labels"] for m in manifests.manifests(job) if m["kind"] == "Pod"}
    chaos_job = manifests.chaos_job(job)
    pods["quickstart-chaos-xyz"] = chaos_job["spec"]["template"]["metadata"]["labels"]
    return pods


def test_podchaos_kills_the_ps_pod_only() -> None:
    chaos = yaml.safe_load((ROOT / "chaos" / "chaos-mesh-podchaos.yaml").read_text())
    assert (chaos["apiVersion"], chaos["kind"], chaos["spec"]["action"]) == ("chaos-mesh.org/v1alpha1", "PodChaos", "pod-kill")
    assert chaos["spec"]["gracePeriod"] == 0
    hit = {name for name, labels in quickstart_pods().items() if selected(chaos["spec"]["selector"], labels)}
    assert hit == {"quickstart-ps-0"}


def test_schedule_kills_any_ps_or_worker_but_not_the_chaos_pod() -> None:
    schedule = yaml.safe_load((ROOT / "chaos" / "chaos-mesh-schedule.yaml").read_text())
    assert (schedule["kind"], schedule["spec"]["type"], schedule["spec"]["concurrencyPolicy"]) == ("Schedule", "PodChaos", "Forbid")
    pod_chaos = schedule["spec"]["podChaos"]
    assert pod_chaos["action"] == "pod-kill" and pod_chaos["mode"] == "one"
    hit = {name for name, labels in quickstart_pods().items() if selected(pod_chaos["selector"], labels)}
    assert hit == {"quickstart-ps-0", "quickstart-worker-0", "quickstart-worker-1"}
