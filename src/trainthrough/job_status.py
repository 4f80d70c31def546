"""The TrainingJob's status as one typed model: what the operator writes
(operator/status.py builds it) and the source of the CRD's status schema (crd.py), so
that nothing the operator writes is pruned by the API server and tools can rely on each
field. Only `master`, the master's own persisted state (control/state.py), is free-form.

Conditions have the metav1.Condition shape and are a map keyed by `type`, so that
`kubectl wait --for=condition=Complete`, Argo CD, Flux and kstatus can gate on them.
This module sits beside spec.py in the import layering (crd.py, below control/ and
operator/, imports it): the reasons are control/vocabulary.py's `Reason`, written here
as strings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# metav1.Condition's own bounds (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
CONDITION_TYPE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
MAX_MESSAGE = 32768
_DATE_TIME = {"format": "date-time"}


class ConditionType(StrEnum):
    """The condition types the operator sets (see `TrainingJobStatus.conditions`)."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Phase(StrEnum):
    """A one-word summary for people and `kubectl get tj`; gate on conditions instead."""

    PENDING = "Pending"
    RUNNING = "Running"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class StatusModel(BaseModel):
    # A status written by an older operator may hold fields this one no longer writes.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Condition(StatusModel):
    """One condition, in the shape of metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]  # CamelCase, one per type
    status: ConditionStatus  # True, False or Unknown
    observed_generation: Annotated[int, Field(ge=0)] | None = None  # the metadata.generation it was set for
    last_transition_time: Annotated[str, Field(json_schema_extra=_DATE_TIME)]  # when status last changed
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)]  # CamelCase, for machines
    message: Annotated[str, Field(max_length=MAX_MESSAGE)]  # for people


class Progress(StatusModel):
    """Training progress as the job's parameter server (chain: head) reports it."""

    step: int = 0  # training steps of the job's workers, summed
    model_version: int = -1  # updates applied to the model (-1: none read yet)
    accuracy: float | None = None  # the newest test accuracy (absent: no evaluation yet)


class Recoveries(StatusModel):
    """Parameter-server recoveries: completed ones and those in flight."""

    count: int = 0  # recoveries completed
    lost_updates: int = 0  # acknowledged updates the workers measured lost, in all
    downtime_seconds: float = 0.0  # loss to first update after it, summed over recoveries
    last_recovery_seconds: float | None = None  # the last recovery, loss to first update
    last_phases: dict[str, float] | None = Field(
        None,
        description=(
            "The last recovery's phases in seconds (detect, restore, first_update, total), "
            "named as the trainthrough_recovery_seconds histogram's phase label."
        ),
    )
    in_flight: list[str] = Field(default_factory=list)  # the processes being recovered
    failures: int = 0  # process failures counted against spec.runPolicy.backoffLimit


class ChainStatus(StatusModel):
    """Chain mode: the configuration the master published."""

    epoch: int  # the configuration's number; each change adds one
    members: list[str]  # head first
    head: str | None = None
    published_epoch: int = 0  # the newest epoch every member took
    joining: list[str] = Field(default_factory=list)  # replacements not joined yet


class ShardStatus(StatusModel):
    """A sharded job's shard: its slice of the flat parameter vector and who serves it."""

    index: int
    start: int  # its elements of the flat parameter vector: [start, stop)
    stop: int
    head: str | None = None  # the PS that serves it (chain: its chain's head)
    version: int | None = None  # the head's model version, as last read
    chain: ChainStatus | None = None  # chain mode: its chain


class Resume(StatusModel):
    """What a resumed job started from, measured: the model version the master last read
    before the suspension against the version the resumed parameter server started at."""

    restored_from: str  # checkpoint, workers, fallback-checkpoint or seed (the initial weights)
    version_before: int  # the newest model version read before the suspension
    version_restored: int  # the version the resumed parameter server started from
    lost_updates: int  # versionBefore - versionRestored (0 when nothing read was lost)


class Suspension(StatusModel):
    """spec.runPolicy.suspend of a job that had started: how often, and the last resume."""

    count: int = 0  # times the job was suspended after it had started
    last_resume: Resume | None = None


class TrainingJobStatus(StatusModel):
    """Written by the operator. Gate on `conditions` (Complete, Failed; kstatus' Reconciling
    and Stalled); `phase` is a summary for people."""

    observed_generation: int | None = None  # the metadata.generation this status describes
    phase: Phase = Phase.PENDING
    reason: str | None = None  # why the job ended (a terminal condition's reason)
    message: str | None = None
    start_time: Annotated[str | None, Field(json_schema_extra=_DATE_TIME)] = None  # its first pods were created
    completion_time: Annotated[str | None, Field(json_schema_extra=_DATE_TIME)] = None  # it ended (Complete or Failed)
    ps: list[str] | None = None  # every parameter-server process of the job, in creation order
    progress: Progress | None = None
    recoveries: Recoveries | None = None
    chain: ChainStatus | None = None  # an unsharded job's chain (a sharded job's are under shards)
    shards: list[ShardStatus] | None = None  # parameterServer.shards > 1: each shard
    suspension: Suspension | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "One condition per type (metav1.Condition; a map keyed by type). "
            "Ready: the parameter server (chain: head) serves. "
            "Progressing: True while the job starts or trains; False once it ended or while suspended. "
            "Degraded: a process is lost and not yet replaced. "
            "Recovering: a parameter-server recovery is in flight (loss to first update). "
            "Suspended: True while spec.runPolicy.suspend holds the job without pods (reason "
            "Suspended), False once resumed (reason Resumed); absent if it never was. "
            "Complete: True once the job succeeded (TargetReached, StepsDone, DurationReached, Stopped). "
            "Failed: True once the job failed (DeadlineExceeded, BackoffLimitExceeded, ChainLost, "
            "StartupTimeout, PermanentError, InvalidSpec, ChaosNotAllowed, Stopped). "
            "Complete and Failed are set once, at the end, as on a batch/v1 Job. "
            "Reconciling (kstatus): True while the job converges: starting, recovering, "
            "stopping its pods for a suspension. Stalled (kstatus): True when it cannot "
            "progress without intervention (it failed). Every condition's observedGeneration "
            "is the generation it was set for."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    master: dict[str, Any] | None = None  # the master's own state, from which a restarted operator resumes

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
