"""The stand-in's Prometheus scrape targets: a file_sd list (JSON), what a Prometheus
pointed at it (`file_sd_configs: [{files: [PATH]}]`) scrapes.

The kubelet (kubelet.py) lists each running pod's container ports named `metrics` at its
pod IP, with the target labels `namespace`, `pod` and `component` (the pod's
`trainthrough.io/role` label when it has one: ps, worker, chaos); the stand-in cluster
(cluster.py) adds the operator's own endpoint (component=operator) without a `namespace`:
its per-job series carry the job's namespace themselves (metrics.py), as the chart's
ServiceMonitor keeps them, while a pod's namespace is its target label, as kubernetes_sd
gives it to the chart's PodMonitor. No target label is named `job`, `trainingjob` or
`role`: the metrics carry labels of those names themselves (the PS's `role` is its place
in a chain), and a target label would rename theirs to `exported_*`. The file is
rewritten atomically (a temporary file, then os.replace) on every change, so Prometheus
never reads half of one.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Group = dict[str, Any]  # one file_sd entry: {"targets": ["host:port"], "labels": {...}}


def metrics_groups(pod: Mapping[str, Any], address: str, target_labels: Mapping[str, str]) -> list[Group]:
    """The file_sd entries of a pod's container ports named `metrics`; `target_labels`: pod
    label -> target label, as a PodMonitor's relabelings take them (absent: none)."""
    meta = pod.get("metadata", {})
    labels = {"namespace": meta.get("namespace", ""), "pod": meta.get("name", "")}
    for pod_label, target_label in target_labels.items():
        value = (meta.get("labels") or {}).get(pod_label)
        if value:
            labels[target_label] = value
    return [
        {"targets": [f"{address}:{port['containerPort']}"], "labels": dict(labels)}
        for container in pod.get("spec", {}).get("containers") or []
        for port in container.get("ports") or []
        if port.get("name") == "metrics"
    ]


class TargetsFile:
    """A file_sd list kept up to date, its entries grouped by a key of the caller's::

        targets = TargetsFile(workdir / "targets.json")
        targets.set("operator", [{"targets": ["127.0.0.1:8080"], "labels": {"component": "operator"}}])
        targets.remove("operator")
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._groups: dict[str, list[Group]] = {}
        self._lock = threading.Lock()
        self._write()

    def set(self, key: str, groups: Iterable[Group]) -> None:
        with self._lock:
            self._groups[key] = list(groups)
            self._write()

    def remove(self, key: str) -> None:
        with self._lock:
            if self._groups.pop(key, None) is not None:
                self._write()

    def groups(self) -> list[Group]:
        with self._lock:
            return self._all()

    def _all(self) -> list[Group]:
        return [group for key in sorted(self._groups) for group in self._groups[key]]

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self._all(), indent=1))
        os.replace(tmp, self.path)  # Prometheus never reads half a file
