"""The names both drivers share: the events the master records, the reasons it gives
(they are the reasons of Kubernetes Events and status conditions too), the job's phase
and its outcome. One typed definition each; nothing compares these as loose strings.
"""

from __future__ import annotations

from enum import StrEnum


class EventName(StrEnum):
    """Events of a run's event log (events.jsonl) that the master writes."""

    RUN_START = "run_start"
    TRAINING_STARTED = "training_started"
    KILL = "kill"
    CHAOS_DEFERRED = "chaos_deferred"
    CHAOS_SKIPPED = "chaos_skipped"
    PROCESS_EXITED = "process_exited"
    FAILURE_DETECTED = "failure_detected"
    CHAIN_PROMOTED = "chain_promoted"
    CHAIN_REBUILDING = "chain_rebuilding"  # hybrid: every replica lost, rebuilt from the workers
    REPLICA_JOINED = "replica_joined"
    REPLICA_JOIN_FAILED = "replica_join_failed"
    REPLICA_JOIN_INCOMPLETE = "replica_join_incomplete"
    PS_UNRESPONSIVE = "ps_unresponsive"
    WORKER_STUCK = "worker_stuck"
    RECOVERY = "recovery"
    UPDATES_LOST = "updates_lost"
    RECOVERY_INCOMPLETE = "recovery_incomplete"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STATE_RESTORED = "state_restored"  # what a resumed job started from, measured
    DELETED = "deleted"  # the operator deleted the finished job (ttlSecondsAfterFinished)
    RUN_END = "run_end"


class Reason(StrEnum):
    """Why something happened, in CamelCase as Kubernetes reasons are spelled."""

    # the job's end (the reasons of the Complete and Failed conditions)
    TARGET_REACHED = "TargetReached"
    STEPS_DONE = "StepsDone"
    DURATION_REACHED = "DurationReached"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    CHAIN_LOST = "ChainLost"
    STARTUP_TIMEOUT = "StartupTimeout"
    PERMANENT_ERROR = "PermanentError"
    STOPPED = "Stopped"
    # on the way
    OBJECTS_CREATED = "ObjectsCreated"
    STARTING = "Starting"
    FAILURE_DETECTED = "FailureDetected"
    CHAIN_RECONFIGURED = "ChainReconfigured"
    CHAIN_REBUILDING = "ChainRebuilding"
    REPLICA_JOINED = "ReplicaJoined"
    REPLICA_JOIN_FAILED = "ReplicaJoinFailed"
    REPLICA_JOIN_INCOMPLETE = "ReplicaJoinIncomplete"
    PS_UNRESPONSIVE = "ParameterServerUnresponsive"
    WORKER_STUCK = "WorkerStuck"
    RECOVERY_COMPLETED = "RecoveryCompleted"
    UPDATES_LOST = "UpdatesLost"
    RECOVERY_INCOMPLETE = "RecoveryIncomplete"
    TRAINING_STARTED = "TrainingStarted"
    TRAINING = "Training"
    SUSPENDED = "Suspended"  # spec.runPolicy.suspend: the job's pods are stopped
    SUSPENDING = "Suspending"  # ... and some are still stopping
    RESUMED = "Resumed"
    STATE_RESTORED = "StateRestored"
    # the operator's
    INVALID_SPEC = "InvalidSpec"
    SERVING = "ParameterServerServing"
    NOT_SERVING = "ParameterServerNotServing"
    SCALED = "WorkersScaled"
    CHAOS_INJECTED = "ChaosInjected"
    CHAOS_SKIPPED = "ChaosSkipped"
    CHAOS_NOT_ALLOWED = "ChaosNotAllowed"


class JobPhase(StrEnum):
    NEW = "New"
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"  # spec.runPolicy.suspend: no process runs (created so, or stopped)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)

    @property
    def halted(self) -> bool:
        """Ended or suspended: no process is the job's to watch, restart or kill."""
        return self.terminal or self is JobPhase.SUSPENDED


class RecoveryStage(StrEnum):
    """Where one recovery stands; each stage ends at one milestone of `Recovery`."""

    AWAITING_RESTART = "awaiting-restart"  # the restart delay runs (ends: restarted_at)
    AWAITING_READY = "awaiting-ready"  # the new process boots and restores (ends: restored_at)
    AWAITING_PROMOTED = "awaiting-promoted"  # chain: the new head's version is read
    AWAITING_FIRST_UPDATE = "awaiting-first-update"  # (ends: first_update_at, the recovery)
