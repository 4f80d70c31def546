"""The metrics of one TrainingJob that the drivers record, each the same way on both
runtimes: every completed recovery (its phases, the count, lost updates; the local driver
and the operator) and every fault injected (the local driver and the chaos Job).

Both carry the job's `namespace` themselves (metrics.MASTER_LABELS): the operator and the
local master serve jobs from outside them, from one endpoint. The chaos Job's pod is a
pod of the job: its scrape supplies the namespace (`exports_namespace=False`).

    >>> recorder = RecoveryMetrics(create_metrics(CollectorRegistry()), job)
    >>> recorder.record(done)            # a RecoveryDone action of the master
    >>> chaos = InjectionMetrics(create_metrics(CollectorRegistry()), job, [ChaosKill(target="ps-head", at=5)], exports_namespace=True)
    >>> chaos.record("ps-head", at=1700000000.0)
"""

from __future__ import annotations

from trainthrough.control.messages import RecoveryDone, UpdatesLost
from trainthrough.metrics import MASTER_LABELS, RECOVERY_PHASES, Metrics
from trainthrough.spec import ChaosKill, TrainingJob


def job_labels(job: TrainingJob, exports_namespace: bool = True) -> dict[str, str]:
    """The labels of metrics.MASTER_LABELS for `job`. Without `exports_namespace` the
    namespace is empty, which Prometheus reads as absent: the target's label applies."""
    namespace = job.metadata.namespace if exports_namespace else ""
    return dict(namespace=namespace, trainingjob=job.metadata.name, mode=str(job.spec.consistency))


class RecoveryMetrics:
    def __init__(self, metrics: Metrics, job: TrainingJob) -> None:
        labels = job_labels(job)
        self._metrics, self._values = metrics, tuple(labels[name] for name in MASTER_LABELS)
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

    def remove(self) -> None:
        """Stop exporting the job's series (it was deleted): an operator that runs for
        months must not export every job it ever served."""
        for phase in RECOVERY_PHASES:
            self._metrics.recovery_seconds.remove(*self._values, phase)
        self._metrics.recoveries.remove(*self._values)
        self._metrics.lost_updates.remove(*self._values)


class InjectionMetrics:
    def __init__(self, metrics: Metrics, job: TrainingJob, kills: list[ChaosKill], *, exports_namespace: bool) -> None:
        self._metrics = metrics
        self._labels = job_labels(job, exports_namespace)
        for kill in kills:  # exported at 0 from the start: increase() sees the first kill
            metrics.chaos_injections.labels(target=kill.target, **self._labels)

    def record(self, target: str, at: float) -> None:
        """One fault injected into `target` at unix time `at`."""
        self._metrics.chaos_injections.labels(target=target, **self._labels).inc()
        self._metrics.chaos_last_injection.labels(target=target, **self._labels).set(at)
