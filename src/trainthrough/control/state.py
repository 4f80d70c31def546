"""The master's state: plain data, nothing else. The local driver keeps it in memory; the
operator writes it to the TrainingJob's `status.master` and reads it back, so that a
restarted (or failed-over) operator resumes a recovery where it stood. camelCase on the
wire, as Kubernetes status fields are spelled.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from trainthrough.control.vocabulary import JobPhase, Reason, RecoveryStage
from trainthrough.names import PSStart
from trainthrough.spec import Mode


class StateModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Recovery(StateModel):
    """One outage of a PS (chain: of a replica) from its loss to the first update after it.
    Milestones are Unix seconds; phases are derived."""

    target: str
    mode: Mode
    detected_at: float
    stage: RecoveryStage = RecoveryStage.AWAITING_RESTART
    killed_at: float | None = None  # when it was disrupted (None: it died on its own)
    due_at: float | None = None  # when its restart is due (the restart delay)
    restarted_at: float | None = None  # a replacement process started
    restored_at: float | None = None  # the PS serves again (restored / promoted / seeded)
    first_update_at: float | None = None  # the first update applied after restore
    version_before: int = -1
    version_restored: int = -1
    restored_from: str = ""
    deaths: int = 1  # a second failure during the recovery extends it
    restart: PSStart = PSStart.FRESH  # how the restarted process begins (hybrid: rebuild)
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.first_update_at is not None

    def phases(self) -> dict[str, float]:
        """detect (loss -> noticed), restore (noticed -> serving), first_update, total."""
        start = self.killed_at if self.killed_at is not None else self.detected_at
        out: dict[str, float] = {"detect": max(0.0, self.detected_at - start)}
        if self.restored_at is not None:
            out["restore"] = max(0.0, self.restored_at - self.detected_at)
        if self.restored_at is not None and self.first_update_at is not None:
            out["first_update"] = max(0.0, self.first_update_at - self.restored_at)
        if self.first_update_at is not None:
            out["total"] = max(0.0, self.first_update_at - start)
        return out

    def as_event(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode.value,
            "killed_at": self.killed_at,
            "detected_at": self.detected_at,
            "restarted_at": self.restarted_at,
            "restored_at": self.restored_at,
            "first_update_at": self.first_update_at,
            "version_before": self.version_before,
            "version_restored": self.version_restored,
            "restored_from": self.restored_from,
            "deaths": self.deaths,
            "phases": {k: round(v, 6) for k, v in self.phases().items()},
            **self.extra,
        }


class Kill(StateModel):
    """A disruption noticed before the death it causes."""

    killed_at: float
    version_before: int = -1


class Replacement(StateModel):
    """Chain: a new replica that will join at the tail in place of `replaces`."""

    replaces: str
    due_at: float
    name: str = ""  # set once started
    started_at: float | None = None
    added_epoch: int | None = None  # the epoch that added it at the tail; it joined once it serves


class WorkerSeen(StateModel):
    """A worker's progress as the master last read it from the head (the stuck check)."""

    changed_at: float  # when it started, or its reported steps last changed
    steps: int = -1  # its latest reported steps (-1: none since it started)


class Chain(StateModel):
    epoch: int = 1
    members: list[str]  # head first
    published_epoch: int = 0
    publish_due_at: float = 0.0

    @property
    def head(self) -> str | None:
        return self.members[0] if self.members else None


class Progress(StateModel):
    steps: int = 0
    version: int = -1
    accuracy: float = -1.0
    best_accuracy: float = -1.0  # the target counts as reached once any evaluation hit it
    idle_seconds: float = 0.0  # the workers' waits for a PS, summed, as they reported them
    observed_at: float | None = None
    serving: str = ""  # the PS progress was last read from, and its state


class Suspension(StateModel):
    """spec.runPolicy.suspend of a job that had started."""

    count: int = 0  # times suspended after it had started
    trained_seconds: float = 0.0  # the job's clock when it was last suspended
    # Set at a resume until the resumed head serves: the newest version read before the
    # suspension, against which what the resume restored is measured.
    version_before: int | None = None
    restored: dict[str, int] = Field(default_factory=dict)  # each resumed head's start, until every one serves
    last: dict[str, Any] | None = None  # the last resume, measured (restored_from, versions, lost_updates)


class Totals(StateModel):
    count: int = 0
    lost_updates: int = 0  # acknowledged updates the workers measured lost, in all
    downtime_seconds: float = 0.0
    last: dict[str, Any] | None = None  # the last completed recovery (as_event)


class MasterState(StateModel):
    phase: JobPhase = JobPhase.NEW
    reason: Reason | None = None
    message: str = ""
    created_at: float | None = None  # the first start (its first processes created): startTime
    starting_since: float | None = None  # the last start or resume: start-up's deadline counts from it
    stopped_at: float | None = None  # when the job's end was decided: completionTime, the TTL's start
    # Active time (spec.runPolicy.activeDeadlineSeconds): the seconds of earlier active
    # spans, and when the current one began (None while suspended, new or ended).
    active_seconds: float = 0.0
    active_since: float | None = None
    training_started_at: float | None = None  # the job's clock: chaos times, stop.duration
    ps: list[str] = Field(default_factory=list)  # every PS process of the job, in creation order
    up: list[str] = Field(default_factory=list)  # processes started and not seen ended
    answered: list[str] = Field(default_factory=list)  # PS processes that answered since start
    workers_started: bool = False
    finished_workers: list[str] = Field(default_factory=list)
    workers_done_at: float | None = None  # when the last worker finished (stop.steps)
    chains: list[Chain] = Field(default_factory=list)  # chained modes: each shard's, in shard order
    recoveries: list[Recovery] = Field(default_factory=list)  # in flight
    replacements: list[Replacement] = Field(default_factory=list)  # chain, not joined yet
    kills: dict[str, Kill] = Field(default_factory=dict)  # disrupted, death not seen yet
    versions: dict[str, int] = Field(default_factory=dict)  # last version read per PS
    # PS processes whose Health calls have failed without a break, since the first one's start
    silent_since: dict[str, float] = Field(default_factory=dict)
    seen_workers: dict[str, WorkerSeen] = Field(default_factory=dict)
    # The heads (one per shard) that have answered "serving" without a break, since when.
    serving_heads: dict[str, float] = Field(default_factory=dict)
    head_states: dict[str, str] = Field(default_factory=dict)  # each head's state, as last read
    restarting: list[str] = Field(default_factory=list)  # workers ended to be started again
    failures: int = 0  # counted against spec.runPolicy.backoffLimit
    chaos_fired: int = 0  # kills of spec.chaos seen (a Disrupted with its scheduled time)
    suspension: Suspension = Field(default_factory=Suspension)
    kept: list[str] = Field(default_factory=list)  # left running at the end (cleanPodPolicy None)
    completed: Totals = Field(default_factory=Totals)
    progress: Progress = Field(default_factory=Progress)

    @property
    def started(self) -> bool:
        """Whether its first processes were created (a job created suspended was not)."""
        return self.created_at is not None

    def active(self, now: float) -> float:
        """Seconds the job has been active (started and not suspended) by `now`."""
        current = 0.0 if self.active_since is None else max(0.0, now - self.active_since)
        return self.active_seconds + current

    @property
    def recovering(self) -> bool:
        return bool(self.recoveries or self.replacements or self.kills)

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> MasterState:
        data = dict(data or {})
        if data.get("chain") and not data.get("chains"):  # written before shards: one chain
            data["chains"] = [data.pop("chain")]
        return cls.model_validate(data)
