"""The metrics of one TrainingJob that the drivers record, each the same way on both
runtimes: every completed recovery (its phases, the count, lost updates; the local driver
and the operator) and every fault injected (the local driver and the chaos Job).

    >>> recorder = RecoveryMetrics(create_metrics(CollectorRegistry()), "demo", "chain")
    >>> recorder.record(done)            # a RecoveryDone action of the master
    >>> chaos = InjectionMetrics(create_metrics(CollectorRegistry()), "demo", "chain", [ChaosKill(target="ps-head", at=5)])
    >>> chaos.record("ps-head", at=1700000000.0)
"""

from __future__ import annotations

from trainthrough.control.messages import RecoveryDone, UpdatesLost
from trainthrough.metrics import RECOVERY_PHASES, Metrics
from trainthrough.spec import ChaosKill


class RecoveryMetrics:
    def __init__(self, metrics: Metrics, trainingjob: str, mode: str) -> None:
        labels = dict(trainingjob=trainingjob, mode=mode)
        self._phases = {p: metrics.recovery_seconds.labels(phase=p, **labels) for p in RECOVERY_PHASES}
        self._count = metrics.recoveries.labels(**labels)  # exported at 0 from the start
        self._lost = metrics.lost_updates.labels(**labels)

    def record(self, done: RecoveryDone | UpdatesLost) -> None:
        if isinstance(done, UpdatesLost):
            self._lost.inc(done.count)
            return
        for phase, seconds in done.phases.items():
            self._phases[phase].observe(seconds)
        self._count.inc()


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
