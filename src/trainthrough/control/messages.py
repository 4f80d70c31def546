"""What a driver tells the master (observations) and what the master asks of a driver
(actions). Both runtimes speak exactly these; each driver has one applier per action type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from trainthrough.control.runtime import Death
from trainthrough.control.vocabulary import EventName, JobPhase, Reason
from trainthrough.names import PSStart
from trainthrough.proto import ps_pb2

# -- observations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """A process ended (locally: reaped; on Kubernetes: its pod Failed, Succeeded or vanished)."""

    process: str
    exit_code: int | None  # None when unknown (a pod that vanished)
    at: float
    # removed from outside (a pod deleted, a process the master killed): such a death
    # does not count against spec.runPolicy.backoffLimit
    disrupted: bool = False
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None

    @classmethod
    def of(cls, death: Death) -> Exited:
        return cls(death.name, death.exit_code, death.at, death.disrupted, death.cpu_seconds, death.max_rss_bytes)


@dataclass(frozen=True)
class Disrupted:
    """Something outside the process is ending it: a chaos kill, a pod deletion (its
    deletionTimestamp). Its `Exited` follows once it is gone."""

    process: str
    at: float
    target: str = ""  # the chaos target that chose it (`ps-head`), when chaos did
    scheduled_at: float | None = None  # seconds after training started, when scheduled
    version_before: int | None = None  # the acknowledged version just before, when read


@dataclass(frozen=True)
class WorkerReport:
    """A worker's latest progress report, as a PS holds it (`WorkerProgress`)."""

    worker: str
    steps: int
    accuracy: float = -1.0  # its latest evaluation; -1: none yet
    lost_updates: int = 0  # measured by the worker against the state it follows
    evaluation: int = 0  # orders the workers' evaluations: the largest is the newest
    idle_seconds: float = 0.0  # the worker waited for a PS this long (its process's life)

    @classmethod
    def of(cls, message: ps_pb2.WorkerProgress) -> WorkerReport:
        return cls(message.worker, message.steps, message.accuracy, message.lost_updates, message.evaluation, message.idle_seconds)


@dataclass(frozen=True)
class MemberProgress:
    """The job's progress from its own workers' reports."""

    steps: int
    accuracy: float  # the newest evaluation among them; -1: none yet
    lost_updates: int
    idle_seconds: float = 0.0  # summed over the workers


@dataclass(frozen=True)
class Health:
    """A PS answered its Health call (the fields the master uses, from `HealthReply`)."""

    process: str
    state: str  # starting | seeding | serving
    version: int
    started_version: int
    updates_since_start: int
    restored_from: str
    ready_at: float
    first_update_at: float
    workers: tuple[WorkerReport, ...] = ()  # each worker's latest report to this PS
    applied_seq: int = -1

    def progress_of(self, members: list[str]) -> MemberProgress:
        """The job's progress as reported by `members` alone: a report from any other
        name (a worker scaled away, something that is not a worker of the job) counts for
        nothing."""
        reports = [r for r in self.workers if r.worker in members]
        evaluated = [r for r in reports if r.accuracy >= 0]
        newest = max(evaluated, key=lambda r: r.evaluation) if evaluated else None
        return MemberProgress(
            steps=sum(r.steps for r in reports),
            accuracy=newest.accuracy if newest is not None else -1.0,
            lost_updates=sum(r.lost_updates for r in reports),
            idle_seconds=sum(r.idle_seconds for r in reports),
        )

    @classmethod
    def of(cls, process: str, reply: ps_pb2.HealthReply) -> Health:
        return cls(
            process=process,
            state=reply.state,
            version=reply.version,
            started_version=reply.started_version,
            updates_since_start=reply.updates_since_start,
            restored_from=reply.restored_from,
            ready_at=reply.ready_at,
            first_update_at=reply.first_update_at,
            workers=tuple(WorkerReport.of(w) for w in reply.workers),
            applied_seq=reply.applied_seq,
        )


@dataclass(frozen=True)
class Unanswered:
    """A PS did not answer a Health call that started `at` (refused, or its deadline
    passed). Only a call made: a process with no address yet is no observation."""

    process: str
    at: float


@dataclass(frozen=True)
class Published:
    """The outcome of a PublishChain: the members that did not take the configuration."""

    epoch: int
    failed: tuple[str, ...] = ()
    shard: int = 0  # whose chain


Observation = Union[Exited, Disrupted, Health, Unanswered, Published]

# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start `process` (a PS, `start` saying where its state comes from, or a worker that
    reaches the PS processes `ps`: per shard, head first). A PS keeps its address across
    restarts."""

    process: str
    start: PSStart = PSStart.FRESH
    ps: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Stop:
    """Stop `process`: ask it to end (SIGTERM / pod deletion), kill it after `grace`."""

    process: str
    grace: float = 10.0


@dataclass(frozen=True)
class Terminate:
    """End `process` without waiting for it: at once (SIGKILL; a pod deleted without
    grace), or a stop request first and the kill after `grace`. Its `Exited` follows."""

    process: str
    grace: float = 0.0


@dataclass(frozen=True)
class Remove:
    """Delete what is left of `process`, which has ended: its pod, and the logs with it
    (spec.runPolicy.cleanPodPolicy All). A local process leaves nothing to delete."""

    process: str


@dataclass(frozen=True)
class PublishChain:
    """Send the chain configuration (epoch, members head first) of shard `shard` to its
    members, tail first; answer with `Published`."""

    epoch: int
    members: tuple[str, ...]
    shard: int = 0


@dataclass(frozen=True)
class Record:
    """Something happened: the driver appends `event` with `fields` to its event log and,
    when `reason` is set, makes it a Kubernetes Event (`warning`: type Warning)."""

    event: EventName
    fields: dict[str, Any] = field(default_factory=dict)
    reason: Reason | None = None
    message: str = ""
    warning: bool = False


@dataclass(frozen=True)
class RecoveryDone:
    """A recovery reached its first update: record it (event log, metrics, status)."""

    recovery: dict[str, Any]  # Recovery.as_event()
    phases: dict[str, float]


@dataclass(frozen=True)
class UpdatesLost:
    """The workers measured `count` more acknowledged updates lost (`total` so far): the
    state they follow after a recovery lacks them. Reported after the recovery's first
    update, so apart from it."""

    count: int
    total: int


@dataclass(frozen=True)
class Finish:
    """The job ended: stop every process; the job's phase and reason are final."""

    phase: JobPhase
    reason: Reason
    message: str


Action = Union[Start, Stop, Terminate, Remove, PublishChain, Record, RecoveryDone, UpdatesLost, Finish]
