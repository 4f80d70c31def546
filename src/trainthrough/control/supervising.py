"""The master of one training job on a Runtime: start everything, inject the scheduled
faults, recover from deaths as the mode says, time every recovery, report progress and
stop when the job's stop condition holds.

Used by `trainthrough run` over the local runtime. Decisions come from control/recovery.py
(pure); this module applies them and measures. All waiting is non-blocking polling from
one loop, so a second failure during a recovery is handled as promptly as the first.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from trainthrough.chaos.injections import InjectionMetrics
from trainthrough.chaos.schedule import KillSchedule, UnknownTarget, resolve_target
from trainthrough.control.chain_master import ChainMaster
from trainthrough.control.recovery import Action, Recovery, decide
from trainthrough.control.runtime import Death, Runtime
from trainthrough.errors import TrainthroughError
from trainthrough.events import EventLog
from trainthrough.metrics import Metrics
from trainthrough.proto import ps_pb2
from trainthrough.rpc import ConnectionPool
from trainthrough.spec import ChaosKill, TrainingJob

LOOP_INTERVAL = 0.01  # seconds; the resolution of recovery milestones
PROGRESS_INTERVAL = 0.5
STARTUP_TIMEOUT = 120.0
MAX_WORKER_RESTARTS = 5
MAX_PS_RESTARTS = 10


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


@dataclass
class _PendingRecovery:
    record: Recovery
    phase: str  # restart | ready | first-update
    due: float = 0.0


@dataclass
class _PendingReplacement:
    replaces: str
    due: float
    name: str = ""
    started_at: float = 0.0


class Supervisor:
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
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.mode = job.spec.consistency
        self.runtime = runtime
        self.events = events
        self.restart_delay = self.spec.parameter_server.restart_delay if restart_delay is None else restart_delay
        self.schedule = KillSchedule.of(list(self.spec.chaos) + list(kills or []))
        self.on_progress = on_progress
        labels = dict(trainingjob=job.metadata.name, mode=self.mode)
        self._m_recovery = {p: metrics.recovery_seconds.labels(phase=p, **labels) for p in ("detect", "restore", "first_update", "total")}
        self._m_recoveries = metrics.recoveries.labels(**labels)
        self._m_lost = metrics.lost_updates.labels(**labels)
        self._m_chaos = InjectionMetrics(metrics, job.metadata.name, self.mode, self.schedule.pending)
        self._chaos_rng = random.Random(self.spec.seed)  # the `random` target, repeatable per seed
        self.ps_names = [f"ps-{i}" for i in range(self.spec.parameter_server.replicas)]
        self.known_ps = set(self.ps_names)
        self.workers = [f"worker-{r}" for r in range(self.spec.workers.replicas)]
        self.master: ChainMaster | None = None
        self._pool = ConnectionPool()
        self._kills: dict[str, tuple[float, int]] = {}  # process -> (killed_at, version before)
        self._pending: list[_PendingRecovery] = []
        self._deferred: list[ChaosKill] = []
        self._replacements: list[_PendingReplacement] = []
        self._done: list[Recovery] = []
        self._finished: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._stopping = False
        self._failure: str | None = None
        self._last = Progress(0.0, 0, -1, -1.0, 0, "")
        self._best_accuracy = -1.0  # the target counts as reached once any evaluation hit it
        self._t0 = time.time()

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        spec = self.spec
        self.events.emit(
            "run_start",
            job=self.job.metadata.name,
            mode=self.mode,
            updates=spec.updates,
            workers=spec.workers.replicas,
            ps_replicas=spec.parameter_server.replicas,
            restart_delay=self.restart_delay,
            kills=[f"{k.target}@{k.at}" for k in self.schedule.pending],
        )
        try:
            self._start()
            reason = self._loop()
        except Exception as error:  # whatever happens, _finish stops every process
            self._failure = str(error) if isinstance(error, TrainthroughError) else f"{type(error).__name__}: {error}"
            reason = self._failure
        finally:
            self._stopping = True
        return self._finish(reason)

    def _start(self) -> None:
        for name in self.ps_names:
            self.runtime.start_ps(name)
        for name in self.ps_names:
            self._wait_answering(name)
        if self.mode == "chain":
            self.master = ChainMaster([(n, self.runtime.address(n)) for n in self.ps_names])
            failed = self.master.publish()
            if failed:
                raise TrainthroughError(f"chain replicas did not accept the configuration: {failed}")
        addresses = [self.runtime.address(n) for n in self.ps_names]
        for rank in range(self.spec.workers.replicas):
            self.runtime.start_worker(rank, addresses)
        self._await_first_update()

    def _await_first_update(self) -> None:
        """The job's clock (chaos times, stop.duration) starts at the first applied update,
        not when processes were launched: start-up takes seconds on a busy machine."""
        deadline = time.time() + STARTUP_TIMEOUT
        primary = self.ps_chain()[0]
        while time.time() < deadline:
            for death in self.runtime.deaths(timeout=0.05):
                self._on_death(death)
            if self._failure:
                raise TrainthroughError(self._failure)
            health = self._health(primary)
            if health is not None and health.version > 0:
                self._t0 = time.time()
                self.events.emit("training_started", ps=[self.runtime.address(n) for n in self.ps_names])
                return
        raise TrainthroughError(f"no update was applied within {STARTUP_TIMEOUT:.0f} s of starting the workers")

    def _wait_answering(self, name: str) -> ps_pb2.HealthReply:
        deadline = time.time() + STARTUP_TIMEOUT
        while time.time() < deadline:
            health = self._health(name)
            if health is not None:
                return health
            for death in self.runtime.deaths(timeout=0.05):
                if death.name == name:
                    raise TrainthroughError(f"{name} exited with {death.exit_code} during start-up")
        raise TrainthroughError(f"{name} did not answer within {STARTUP_TIMEOUT:.0f} s")

    def _loop(self) -> str:
        next_progress = 0.0
        stop = self.spec.stop
        while True:
            elapsed = time.time() - self._t0
            for kill in list(self._deferred) + self.schedule.due(elapsed):
                self._inject(kill)
            for death in self.runtime.deaths(timeout=LOOP_INTERVAL):
                self._on_death(death)
            self._advance()
            if self._failure:
                return self._failure
            if time.time() >= next_progress:
                next_progress = time.time() + PROGRESS_INTERVAL
                self._poll_progress()
            if self._finished >= set(self.workers):
                return "every worker reached stop.steps"
            if stop.duration is not None and elapsed >= stop.duration:
                return f"stop.duration {stop.duration:g}s reached"
            # Reaching the target ends a job only between recoveries (chain replacements
            # included), so that every recovery is measured to its end; stop.duration binds.
            if (
                stop.target_accuracy is not None
                and self._best_accuracy >= stop.target_accuracy
                and elapsed >= stop.min_duration
                and not self._pending
                and not self._replacements
            ):
                return f"stop.targetAccuracy {stop.target_accuracy:g} reached ({self._best_accuracy:.4f})"

    # -- faults ------------------------------------------------------------------------------
    def ps_chain(self) -> list[str]:
        return self.master.names if self.master is not None else [n for n in self.ps_names]

    def _inject(self, kill: ChaosKill) -> None:
        try:
            name = resolve_target(kill.target, self.ps_chain(), [w for w in self.workers if w not in self._finished], self._chaos_rng)
        except UnknownTarget as error:
            self.events.emit("chaos_skipped", target=kill.target, reason=str(error))
            return
        if self._recovering(name):
            # A kill hits the first live incarnation at or after its time: killing a PS
            # that is still down (its outage, its restart) would be no failure at all.
            if not any(k is kill for k in self._deferred):
                self._deferred.append(kill)
                self.events.emit("chaos_deferred", target=kill.target, process=name, scheduled_at=kill.at)
            return
        self._deferred = [k for k in self._deferred if k is not kill]
        health = self._health(self._acknowledging(name)) if name in self.known_ps else None
        version = health.version if health is not None else -1
        self.runtime.kill(name, grace=kill.grace_period)
        killed_at = time.time()
        self._kills[name] = (killed_at, version)
        self._m_chaos.record(kill.target, killed_at)
        self.events.emit(
            "kill", target=kill.target, process=name, version_before=version, scheduled_at=kill.at, killed_at=killed_at
        )

    def _recovering(self, name: str) -> bool:
        """Whether `name` is down or its recovery has not reached its first update yet."""
        if name not in self.runtime.running():
            return True
        return any(p.record.target == name for p in self._pending)

    def _acknowledging(self, name: str) -> str:
        """The PS whose version counts as acknowledged when `name` dies: with `ack: tail`
        a push is acknowledged once the tail has it, otherwise once `name` applied it."""
        if self.master is not None and self.spec.chain.ack == "tail" and name == self.master.head.name:
            return self.master.names[-1]
        return name

    def _on_death(self, death: Death) -> None:
        decision = decide(
            mode=self.mode,
            name=death.name,
            exit_code=death.exit_code,
            stopping=self._stopping,
            chain=self.master.names if self.master else [],
            known_ps=self.known_ps,
        )
        self._emit_exit(death, decision.action.value, decision.reason)
        for replacement in self._replacements:
            if replacement.name == death.name:
                # A replacement died before it joined: start another one.
                self.events.emit("replica_join_failed", process=death.name)
                replacement.name, replacement.due = "", time.time() + self.restart_delay
        if decision.action is Action.FINISHED:
            self._finished.add(death.name)
        elif decision.action is Action.RESTART_WORKER:
            self._count_restart(death.name, MAX_WORKER_RESTARTS)
            rank = int(death.name.split("-")[1])
            self.runtime.start_worker(rank, [self.runtime.address(n) for n in self.ps_chain()])
        elif decision.action is Action.RESTART_PS:
            self._count_restart(death.name, MAX_PS_RESTARTS)
            record = self._new_recovery(death)
            self._pending.append(_PendingRecovery(record, "restart", due=death.at + self.restart_delay))
        elif decision.action is Action.PROMOTE:
            self._promote(death)

    def _emit_exit(self, death: Death, action: str, reason: str) -> None:
        self.events.emit(
            "process_exited",
            process=death.name,
            exit_code=death.exit_code,
            action=action,
            reason=reason,
            cpu_seconds=death.cpu_seconds,
            max_rss_bytes=death.max_rss_bytes,
        )

    def _count_restart(self, name: str, limit: int) -> None:
        self._restarts[name] = self._restarts.get(name, 0) + 1
        if self._restarts[name] > limit:
            self._failure = f"{name} failed {self._restarts[name]} times; giving up"

    def _new_recovery(self, death: Death) -> Recovery:
        killed_at, version = self._kills.pop(death.name, (None, self._last.version))
        record = Recovery(target=death.name, mode=self.mode, detected_at=death.at, killed_at=killed_at, version_before=version)
        self.events.emit("failure_detected", process=death.name, detect_seconds=round(record.phases()["detect"], 6))
        return record

    def _promote(self, death: Death) -> None:
        assert self.master is not None
        record = self._new_recovery(death)
        self.master.remove(death.name)
        if not self.master.names:
            self._failure = f"every chain replica is lost ({death.name} was the last)"
            return
        self.master.publish()  # a member that fails here is dead too; its death comes next
        record.restored_at = time.time()
        head = self.master.head.name
        health = self._health(head)
        record.version_restored = health.version if health is not None else -1
        record.restored_from = "chain"
        record.extra = {"new_head": head, "epoch": self.master.config.epoch, "chain": self.master.names}
        self.events.emit("chain_promoted", removed=death.name, head=head, epoch=self.master.config.epoch, chain=self.master.names)
        self._pending.append(_PendingRecovery(record, "first-update"))
        self._replacements.append(_PendingReplacement(replaces=death.name, due=death.at + self.restart_delay))

    # -- recoveries in flight --------------------------------------------------------------------
    def _advance(self) -> None:
        for pending in list(self._pending):
            if self._advance_recovery(pending):
                self._pending.remove(pending)
                self._complete(pending.record)
        for replacement in list(self._replacements):
            if self._advance_replacement(replacement):
                self._replacements.remove(replacement)

    def _advance_recovery(self, pending: _PendingRecovery) -> bool:
        record = pending.record
        now = time.time()
        if pending.phase == "restart":
            if now < pending.due:
                return False
            self.runtime.start_ps(record.target)
            record.restarted_at = time.time()
            pending.phase = "ready"
            return False
        watched = record.target if pending.phase == "ready" else self._progress_ps(record)
        health = self._health(watched, timeout=0.1)
        if health is None:
            return False
        if pending.phase == "ready":
            if health.state != "serving":
                return False
            record.restored_at = health.ready_at or time.time()
            record.version_restored = health.started_version
            record.restored_from = health.restored_from
            pending.phase = "first-update"
        if self.mode == "chain":
            # The promoted head keeps serving: its first update after the promotion.
            if health.version > record.version_restored:
                record.first_update_at = time.time()
                return True
            return False
        if health.updates_since_start > 0:
            record.first_update_at = health.first_update_at or time.time()
            return True
        return False

    def _progress_ps(self, record: Recovery) -> str:
        return self.master.head.name if self.master is not None else record.target

    def _advance_replacement(self, replacement: _PendingReplacement) -> bool:
        assert self.master is not None
        if time.time() < replacement.due:
            return False
        if not replacement.name:
            replacement.name = f"ps-{len(self.known_ps)}"
            self.known_ps.add(replacement.name)
            self.runtime.start_ps(replacement.name, join=True)
            replacement.started_at = time.time()
            return False
        if self._health(replacement.name, timeout=0.1) is None:
            return False
        self.master.add_tail(replacement.name, self.runtime.address(replacement.name))
        self.master.publish()
        health = self._health(replacement.name)
        self.events.emit(
            "replica_joined",
            process=replacement.name,
            replaces=replacement.replaces,
            epoch=self.master.config.epoch,
            chain=self.master.names,
            state=health.state if health else "unknown",
            applied_seq=health.applied_seq if health else -1,
            seconds=round(time.time() - replacement.started_at, 6),
        )
        return True

    def _complete(self, record: Recovery) -> None:
        self._done.append(record)
        for phase, seconds in record.phases().items():
            self._m_recovery[phase].observe(seconds)
        self._m_recoveries.inc()
        self._m_lost.inc(record.lost_updates)
        self.events.emit("recovery", **record.as_event())

    # -- progress --------------------------------------------------------------------------------
    def _health(self, name: str, timeout: float = 0.2) -> ps_pb2.HealthReply | None:
        try:
            return self._pool.get(self.runtime.address(name)).call(lambda s, t: s.Health(ps_pb2.HealthRequest(), timeout=t), timeout=timeout)
        except TrainthroughError:
            return None

    def _poll_progress(self) -> None:
        name = self.ps_chain()[0] if self.ps_chain() else ""
        health = self._health(name) if name else None
        elapsed = time.time() - self._t0
        if health is not None and health.state == "serving":
            self._best_accuracy = max(self._best_accuracy, health.accuracy)
            self._last = Progress(
                elapsed=elapsed,
                steps=max(self._last.steps, health.worker_steps),
                version=health.version,
                accuracy=health.accuracy if health.accuracy >= 0 else self._last.accuracy,
                recoveries=len(self._done),
                ps=f"{name} serving",
            )
        else:
            self._last.elapsed = elapsed
            self._last.ps = f"{name} {'down' if health is None else health.state}"
            self._last.recoveries = len(self._done)
        if self.on_progress:
            self.on_progress(self._last)

    def _drain_deaths(self) -> list[Death]:
        """Every death the runtime reports once nothing is left running (bounded wait)."""
        found: list[Death] = []
        deadline = time.time() + 5.0
        while self.runtime.running() and time.time() < deadline:
            found.extend(self.runtime.deaths(timeout=0.05))
        found.extend(self.runtime.deaths(timeout=0.05))
        return found

    # -- the end -----------------------------------------------------------------------------------
    def _finish(self, reason: str) -> RunSummary:
        # All workers at once: a stateless worker stopped while offline waits a little for
        # the PS to hand its work over, and those waits must not add up.
        with ThreadPoolExecutor(max_workers=max(1, len(self.workers))) as pool:
            list(pool.map(lambda worker: self.runtime.stop(worker, timeout=60.0), self.workers))
        self._poll_progress()
        for name in self.ps_chain():
            self.runtime.stop(name)
        for name in self.runtime.running():
            self.runtime.stop(name)
        for death in self._drain_deaths():
            self._emit_exit(death, "stopped", "the job is stopping")
        for pending in self._pending:
            self.events.emit("recovery_incomplete", **pending.record.as_event())
        summary = RunSummary(
            job=self.job.metadata.name,
            mode=self.mode,
            status="failed" if self._failure else "succeeded",
            reason=reason,
            wall_seconds=round(time.time() - self._t0, 3),
            steps=self._last.steps,
            version=self._last.version,
            accuracy=self._last.accuracy,
            recoveries=[r.as_event() for r in self._done],
            kills=len(self.schedule.fired),
        )
        self.events.emit("run_end", **{k: v for k, v in vars(summary).items() if k != "recoveries"}, recoveries=len(self._done))
        self._pool.close()
        if self.master is not None:
            self.master.close()
        return summary
