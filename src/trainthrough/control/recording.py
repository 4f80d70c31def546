"""The metrics of one TrainingJob that the drivers record, each the same way on both
runtimes: every completed recovery (its phases, the count, lost updates; the local driver
and the operator), the job's time split into productive and each kind of badput (the
master's live goodput account, goodput.JobAccount: `observe` after each decision) and
every fault injected (the local driver and the chaos Job).

Both carry the job's `namespace` themselves (metrics.MASTER_LABELS): the operator and the
local master serve jobs from outside them, from one endpoint. The chaos Job's pod is a
pod of the job: its scrape supplies the namespace (`exports_namespace=False`).

    >>> recorder = RecoveryMetrics(create_metrics(CollectorRegistry()), job)
    >>> recorder.record(done)            # a RecoveryDone action of the master
    >>> recorder.observe(master.state, now=time.time())
    >>> chaos = InjectionMetrics(create_metrics(CollectorRegistry()), job, [ChaosKill(target="ps-head", at=5)], exports_namespace=True)
    >>> chaos.record("ps-head", at=1700000000.0)
"""

from __future__ import annotations

from trainthrough.control.messages import RecoveryDone, UpdatesLost
from trainthrough.control.state import MasterState
from trainthrough.goodput import PRODUCTIVE, BadputKind, JobAccount, Phases
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
        self._account = JobAccount(trains_offline=job.spec.consistency.trains_offline)
        self._workers = job.spec.workers.replicas
        self._kinds = (PRODUCTIVE, *BadputKind)
        self._seconds = {k: metrics.job_seconds.labels(kind=k, **labels) for k in self._kinds}  # at 0 from the start
        self._exported = dict.fromkeys(self._kinds, 0.0)

    def record(self, done: RecoveryDone | UpdatesLost) -> None:
        if isinstance(done, UpdatesLost):
            self._lost.inc(done.count)
            self._account.lost_updates = done.total
            return
        if done.recovery.get("first_update_at") is not None:
            self._account.recovery(Phases.of(done.recovery))
        for phase, seconds in done.phases.items():
            self._phases[phase].observe(seconds)
        self._count.inc()

    def observe(self, state: MasterState, now: float) -> None:
        """Bring trainthrough_job_seconds_total up to `now`. A counter never goes down: a
        kind whose share shrank (productive, when a recovery settles the time it held)
        waits until its figure passes what was exported."""
        if not state.started or (state.phase.halted and state.stopped_at is None):
            return  # suspended: the job's time stands still
        if state.stopped_at is not None:
            now = min(now, state.stopped_at)
        trained = 0.0 if state.training_started_at is None else max(0.0, now - state.training_started_at)
        losses = [k.killed_at for k in state.kills.values()]
        losses += [r.killed_at if r.killed_at is not None else r.detected_at for r in state.recoveries]
        unsettled = max(0.0, now - min(losses)) if losses else 0.0
        idle = state.progress.idle_seconds / max(1, self._workers)  # job seconds: the workers wait side by side
        split = self._account.at(state.active(now), trained, state.progress.steps, unsettled, idle).seconds()
        for kind in self._kinds:
            if split[kind] > self._exported[kind]:
                self._seconds[kind].inc(split[kind] - self._exported[kind])
                self._exported[kind] = split[kind]

    def remove(self) -> None:
        """Stop exporting the job's series (it was deleted): an operator that runs for
        months must not export every job it ever served."""
        for phase in RECOVERY_PHASES:
            self._metrics.recovery_seconds.remove(*self._values, phase)
        self._metrics.recoveries.remove(*self._values)
        self._metrics.lost_updates.remove(*self._values)
        for kind in self._kinds:
            self._metrics.job_seconds.remove(*self._values, kind)


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
