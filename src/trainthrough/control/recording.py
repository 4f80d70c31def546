"""The master's metrics of one TrainingJob, recorded the same way by both drivers (the
local one and the operator): each completed recovery's phases, the count, lost updates.

    >>> recorder = RecoveryMetrics(create_metrics(CollectorRegistry()), "demo", "chain")
    >>> recorder.record(done)            # a RecoveryDone action of the master
"""

from __future__ import annotations

from trainthrough.control.io import RecoveryDone
from trainthrough.metrics import RECOVERY_PHASES, Metrics


class RecoveryMetrics:
    def __init__(self, metrics: Metrics, trainingjob: str, mode: str) -> None:
        labels = dict(trainingjob=trainingjob, mode=mode)
        self._phases = {p: metrics.recovery_seconds.labels(phase=p, **labels) for p in RECOVERY_PHASES}
        self._count = metrics.recoveries.labels(**labels)  # exported at 0 from the start
        self._lost = metrics.lost_updates.labels(**labels)

    def record(self, done: RecoveryDone) -> None:
        for phase, seconds in done.phases.items():
            self._phases[phase].observe(seconds)
        self._count.inc()
        self._lost.inc(done.lost_updates)
