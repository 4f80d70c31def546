"""The local driver of the master: one TrainingJob's processes on loopback.

Used by `trainthrough run` and the benchmark harness over runtime/local.py. It observes
(processes reaped, PS health read over gRPC and the Health calls that got no answer),
injects the spec's chaos kills on the job's clock, hands everything to the master (control/master.py) and applies the actions it gets
back, one applier per action type. It decides nothing: the operator drives the same master
over pods (operator/driving.py). All waiting is non-blocking polling from one loop.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from trainthrough.control.recording import InjectionMetrics
from trainthrough.control.schedule import KillSchedule, UnknownTarget, planned_kills
from trainthrough.control.applying import Applier
from trainthrough.control.messages import Action, Disrupted, Exited, Health, Observation, Record, Stop, Unanswered
from trainthrough.control.master import Master
from trainthrough.control.recording import RecoveryMetrics
from trainthrough.control.runtime import Death, Runtime
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import EventName, JobPhase
from trainthrough.errors import TrainthroughError
from trainthrough.events import EventLog
from trainthrough.metrics import Metrics
from trainthrough.names import is_worker
from trainthrough.proto import ps_pb2
from trainthrough.rpc import ConnectionPool
from trainthrough.spec import ChaosKill, TrainingJob

LOOP_INTERVAL = 0.01  # seconds; the resolution of recovery milestones
PROGRESS_INTERVAL = 0.5
FINAL_READ_TIMEOUT = 5.0  # the head's Health read once the workers stopped: the final progress, worth a wait


@dataclass
class Progress:
    elapsed: float
    steps: int
    version: int
    accuracy: float
    recoveries: int
    ps: str  # the PS (chain: head) progress was read from, and its state


@dataclass
class RunSummary:
    job: str
    mode: str
    status: str  # succeeded | failed
    reason: str
    wall_seconds: float
    steps: int
    version: int
    accuracy: float
    recoveries: list[dict] = field(default_factory=list)
    kills: int = 0
    lost_updates: int = 0  # as the workers measured and reported them


class Supervisor:
    """
    >>> summary = Supervisor(job, LocalRuntime(job, run_dir), events, metrics).run()
    """

    def __init__(
        self,
        job: TrainingJob,
        runtime: Runtime,
        events: EventLog,
        metrics: Metrics,
        *,
        restart_delay: float | None = None,
        kills: list[ChaosKill] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        until: Callable[[MasterState], str | None] | None = None,
    ) -> None:
        self.job = job
        self.runtime = runtime
        self.events = events
        self.master = Master(job, restart_delay=restart_delay)
        self.schedule = KillSchedule.of(planned_kills(job.spec) + list(kills or []))  # spec.chaos, randomChaos's draw, --kill
        self.on_progress = on_progress
        self.until = until  # an extra stop condition (a benchmark that waits for its recoveries)
        self._recoveries = RecoveryMetrics(metrics, job)
        self._chaos = InjectionMetrics(metrics, job, self.schedule.pending, exports_namespace=True)
        self._chaos_rng = random.Random(job.spec.seed)  # the `random` target, repeatable per seed
        self._pool = ConnectionPool(runtime.credentials)  # the job's token and client certificate
        self._deferred: list[ChaosKill] = []
        self._injected = 0  # kills that fired (a deferred one may never fire)
        self._next_probe = 0.0
        self._t0 = time.time()
        self._applier = Applier(
            self.master, runtime, record=self._write, on_recovery=self._recoveries.record, pool=self._pool, stop=self._stop_all
        )

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        try:
            self._apply(self.master.start(time.time()))
            if self.master.state.phase is JobPhase.SUSPENDED:
                # Nothing here can resume it: on a cluster a queue (Kueue) or a user flips it.
                raise TrainthroughError("spec.runPolicy.suspend is true: a suspended job runs only once resumed on a cluster; set it false to run it here")
            while not self.master.done:
                self._step()
        except Exception as error:  # whatever happens, every process is stopped
            message = str(error) if isinstance(error, TrainthroughError) else f"{type(error).__name__}: {error}"
            self._apply(self.master.fail(message, time.time()))
        return self._finish()

    def _step(self) -> None:
        master = self.master
        now = time.time()
        if master.state.phase is JobPhase.RUNNING:
            elapsed = master.elapsed(now)
            for kill in list(self._deferred) + self.schedule.due(elapsed):
                self._inject(kill)
        for death in self.runtime.deaths(timeout=LOOP_INTERVAL):
            self._observe(self._exited(death))
        now = time.time()
        # While anything is in flight every loop reads the PS involved (milestones to the
        # loop's resolution); otherwise twice a second is enough for progress.
        if master.state.recovering or master.state.phase is JobPhase.STARTING or now >= self._next_probe:
            for name in master.watched():
                self._probe(name)
        if now >= self._next_probe:
            self._next_probe = now + PROGRESS_INTERVAL
            self._report_progress()
        # Deaths before the stop decision: one that happened before the job ends is a failure.
        for death in self.runtime.deaths(timeout=0):
            self._observe(self._exited(death))
        if self.until is not None and master.state.phase is JobPhase.RUNNING:
            reason = self.until(master.state)
            if reason:
                self._apply(master.stop(reason, time.time()))
        self._apply(master.tick(time.time()))
        self._recoveries.observe(master.state, time.time())  # the goodput split, live

    def _probe(self, name: str) -> None:
        """Read a PS's health; a call that fails is an observation too (the liveness check)."""
        try:
            address = self.runtime.address(name)
        except KeyError:  # never started: no address yet, no call made
            return
        started = time.time()
        health = self._pool.get(address).health(0.1)
        self._observe(Health.of(name, health) if health is not None else Unanswered(name, started))

    def _observe(self, observation: Observation) -> None:
        self._apply(self.master.observe(observation, time.time()))

    @staticmethod
    def _exited(death: Death) -> Exited:
        return Exited.of(death)

    # -- applying -------------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        self._applier.apply(actions)

    def _write(self, record: Record) -> None:
        self.events.emit(record.event.value, **record.fields)

    def _stop_all(self, stops: list[Stop]) -> None:
        """Workers at once (a stateless worker stopped offline waits a little for the PS to
        take its work, and those waits must not add up), then read the final progress,
        then the PS processes."""
        workers = [s for s in stops if is_worker(s.process)]
        with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
            list(pool.map(lambda s: self.runtime.stop(s.process, timeout=s.grace), workers))
        for name in self.master.heads():
            health = self._health(name, timeout=FINAL_READ_TIMEOUT)
            if health is not None:
                self._observe(Health.of(name, health))
        for stop in stops:
            if stop not in workers:
                self.runtime.stop(stop.process, timeout=stop.grace)

    # -- chaos ---------------------------------------------------------------------------------------
    def _inject(self, kill: ChaosKill) -> None:
        master = self.master
        try:
            name = master.kill_target(kill.target, self._chaos_rng)
        except UnknownTarget as error:
            self._deferred = [k for k in self._deferred if k is not kill]
            self.events.emit(EventName.CHAOS_SKIPPED.value, target=kill.target, reason=str(error))
            return
        blocker = master.kill_blocker(name, live=name in self.runtime.running())
        if blocker is not None:
            if not any(k is kill for k in self._deferred):
                self._deferred.append(kill)
                self.events.emit(EventName.CHAOS_DEFERRED.value, target=kill.target, process=name, scheduled_at=kill.at, reason=blocker)
            return
        self._deferred = [k for k in self._deferred if k is not kill]
        version = None
        if name in master.state.ps:
            health = self._health(master.acknowledging(name))
            version = health.version if health is not None else None
        self.runtime.kill(name, grace=kill.grace_period)
        killed_at = time.time()
        self._injected += 1
        self._chaos.record(kill.target, killed_at)
        self._observe(Disrupted(name, killed_at, target=kill.target, scheduled_at=kill.at, version_before=version))

    # -- reading the PS --------------------------------------------------------------------------
    def _health(self, name: str, timeout: float = 0.2) -> ps_pb2.HealthReply | None:
        try:
            address = self.runtime.address(name)
        except KeyError:  # never started: no address yet
            return None
        return self._pool.get(address).health(timeout)

    def _progress(self) -> Progress:
        state = self.master.state
        p = state.progress
        return Progress(
            elapsed=self.master.elapsed(time.time()),
            steps=p.steps,
            version=p.version,
            accuracy=p.accuracy,
            recoveries=state.completed.count,
            ps=p.serving,
        )

    def _report_progress(self) -> None:
        if self.on_progress:
            self.on_progress(self._progress())

    # -- the end ---------------------------------------------------------------------------------------
    def _finish(self) -> RunSummary:
        for name in self.runtime.running():
            self.runtime.stop(name)
        deadline = time.time() + 5.0
        while self.runtime.running() and time.time() < deadline:
            for death in self.runtime.deaths(timeout=0.05):
                self._observe(self._exited(death))
        for death in self.runtime.deaths(timeout=0.05):
            self._observe(self._exited(death))
        self._recoveries.observe(self.master.state, time.time())
        state = self.master.state
        progress = self._progress()
        summary = RunSummary(
            job=self.job.metadata.name,
            mode=self.master.mode.value,
            status="succeeded" if state.phase is JobPhase.SUCCEEDED else "failed",
            reason=state.message,
            wall_seconds=round(time.time() - (state.training_started_at or self._t0), 3),
            steps=progress.steps,
            version=progress.version,
            accuracy=progress.accuracy,
            recoveries=list(self._applier.recoveries),
            kills=self._injected,
            lost_updates=state.completed.lost_updates,
        )
        fields = {k: v for k, v in vars(summary).items() if k != "recoveries"}
        self.events.emit(EventName.RUN_END.value, **fields, recoveries=len(self._applier.recoveries), reason_code=str(state.reason))
        self._pool.close()
        return summary
