"""The chaos metrics of one TrainingJob, recorded the same way by the local master
(control/supervising.py) and the chaos Job on Kubernetes (chaos/pods.py).

    >>> from prometheus_client import CollectorRegistry
    >>> from trainthrough.metrics import create_metrics
    >>> from trainthrough.spec import ChaosKill
    >>> recorder = InjectionMetrics(create_metrics(CollectorRegistry()), "demo", "chain", [ChaosKill(target="ps-head", at=5)])
    >>> recorder.record("ps-head", at=1700000000.0)
"""

from __future__ import annotations

from trainthrough.metrics import Metrics
from trainthrough.spec import ChaosKill


class InjectionMetrics:
    def __init__(self, metrics: Metrics, trainingjob: str, mode: str, kills: list[ChaosKill]) -> None:
        self._metrics = metrics
        self._labels = dict(trainingjob=trainingjob, mode=mode)
        for kill in kills:  # exported at 0 from the start: increase() sees the first kill
            metrics.chaos_injections.labels(target=kill.target, **self._labels)

    def record(self, target: str, at: float) -> None:
        """One fault injected into `target` at unix time `at`."""
        self._metrics.chaos_injections.labels(target=target, **self._labels).inc()
        self._metrics.chaos_last_injection.labels(target=target, **self._labels).set(at)
