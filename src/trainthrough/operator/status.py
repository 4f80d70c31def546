"""The TrainingJob's status as the master's state shows it, built as the typed model
(job_status.py, which the CRD's status schema is generated from): phase, conditions,
progress, recoveries, chain and suspension for people, `kubectl get tj` and tools that
gate on conditions, and the master's state itself under `status.master`, from which the
next reconcile (or another operator replica) resumes. Called by operator/driving.py; pure.
"""

from __future__ import annotations

from typing import Any

from trainthrough.control.master import Master
from trainthrough.model import model_shards
from trainthrough.names import shard_of
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import JobPhase, Reason
from trainthrough.job_status import (
    ShardStatus,
    ChainStatus,
    Condition,
    ConditionType,
    Phase,
    Progress,
    Recoveries,
    Resume,
    Suspension,
    TrainingJobStatus,
)
from trainthrough.operator import conditions as c


def phase_of(master: Master) -> Phase:
    state = master.state
    if state.phase is JobPhase.SUCCEEDED:
        return Phase.SUCCEEDED
    if state.phase is JobPhase.FAILED:
        return Phase.FAILED
    if state.phase is JobPhase.SUSPENDED:
        return Phase.SUSPENDED
    if state.phase is JobPhase.RUNNING:
        return Phase.RECOVERING if state.recoveries else Phase.RUNNING
    return Phase.PENDING


def _conditions(state: MasterState, previous: list[Condition], generation: int | None) -> list[Condition]:
    conditions = previous

    def put(type_: ConditionType, status: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = c.with_condition(conditions, type_, status, reason, message, generation)

    phase, progress = state.phase, state.progress
    suspended = phase is JobPhase.SUSPENDED
    if phase.terminal:
        assert state.reason is not None
        ended = state.reason, state.message
        put(ConditionType.READY, False, *ended)
        put(ConditionType.PROGRESSING, False, *ended)
        put(ConditionType.COMPLETE if phase is JobPhase.SUCCEEDED else ConditionType.FAILED, True, *ended)
        put(ConditionType.RECONCILING, False, *ended)
        put(ConditionType.STALLED, phase is JobPhase.FAILED, *ended)
    elif suspended:
        message = "spec.runPolicy.suspend: no pods until it is resumed"
        put(ConditionType.READY, False, Reason.SUSPENDED, message)
        put(ConditionType.PROGRESSING, False, Reason.SUSPENDED, message)
        put(ConditionType.SUSPENDED, True, Reason.SUSPENDED, message)
        if state.up:
            put(ConditionType.RECONCILING, True, Reason.SUSPENDING, f"stopping {', '.join(state.up)}")
        else:
            put(ConditionType.RECONCILING, False, Reason.SUSPENDED, message)
        put(ConditionType.STALLED, False, Reason.SUSPENDED, message)
    else:
        serving = progress.serving.endswith(" serving")
        reason = Reason.SERVING if serving else Reason.NOT_SERVING
        put(ConditionType.READY, serving, reason, progress.serving or "no parameter server answered yet")
        training = phase is JobPhase.RUNNING
        activity = Reason.TRAINING_STARTED if training else Reason.STARTING
        doing = "training" if training else "waiting for the parameter server and the first update"
        put(ConditionType.PROGRESSING, True, activity, doing)
        if any(p.type == ConditionType.SUSPENDED for p in conditions):
            put(ConditionType.SUSPENDED, False, Reason.RESUMED, "spec.runPolicy.suspend is false")
        converging = [r.target for r in state.recoveries] + [r.replaces for r in state.replacements] + list(state.kills) + state.restarting
        if not training:
            put(ConditionType.RECONCILING, True, Reason.STARTING, doing)
        elif converging:
            put(ConditionType.RECONCILING, True, Reason.FAILURE_DETECTED, f"recovering {', '.join(sorted(set(converging)))}")
        else:
            put(ConditionType.RECONCILING, False, Reason.TRAINING, "every process runs")
        put(ConditionType.STALLED, False, activity, doing)
    recovering = [r.target for r in state.recoveries]
    put(
        ConditionType.RECOVERING, bool(recovering), Reason.FAILURE_DETECTED if recovering else Reason.RECOVERY_COMPLETED,
        f"recovering {', '.join(recovering)}" if recovering else "no recovery in flight",
    )  # fmt: skip
    degraded = sorted(set(recovering) | {r.replaces for r in state.replacements} | set(state.kills))
    put(
        ConditionType.DEGRADED, bool(degraded), Reason.FAILURE_DETECTED if degraded else Reason.RECOVERY_COMPLETED,
        f"lost: {', '.join(degraded)}" if degraded else "every process present",
    )  # fmt: skip
    return conditions


def _chain_status(master: Master, shard: int) -> ChainStatus:
    chain = master.state.chains[shard]
    return ChainStatus(
        epoch=chain.epoch,
        members=list(chain.members),
        head=chain.head,
        published_epoch=chain.published_epoch,
        joining=[r.name for r in master.state.replacements if r.name and shard_of(r.name) == shard],
    )


def _shards(master: Master) -> list[ShardStatus]:
    """Each shard's slice, head and chain."""
    state, out = master.state, []
    for shard in model_shards(master.spec.model, master.shards):
        order = master.chain_order(shard.index)
        head = order[0] if order else None
        out.append(
            ShardStatus(
                index=shard.index, start=shard.start, stop=shard.stop, head=head,
                version=state.versions.get(head) if head is not None else None,
                chain=_chain_status(master, shard.index) if state.chains else None,
            )
        )  # fmt: skip
    return out


def render(master: Master, previous: dict[str, Any], generation: int | None) -> dict[str, Any]:
    """The whole status for the master's state (`previous`: the status it replaces)."""
    state = master.state
    progress, totals = state.progress, state.completed
    last = totals.last or {}
    suspension = state.suspension
    status = TrainingJobStatus(
        observed_generation=generation,
        phase=phase_of(master),
        reason=str(state.reason) if state.reason else None,
        message=state.message or None,
        start_time=c.timestamp(state.created_at),
        completion_time=c.timestamp(state.stopped_at) if state.phase.terminal else None,
        ps=list(state.ps),
        progress=Progress(
            step=progress.steps,
            model_version=progress.version,
            accuracy=round(progress.accuracy, 6) if progress.accuracy >= 0 else None,
        ),
        recoveries=Recoveries(
            count=totals.count,
            lost_updates=totals.lost_updates,
            downtime_seconds=totals.downtime_seconds,
            last_recovery_seconds=(last.get("phases") or {}).get("total"),
            last_phases=last.get("phases"),
            in_flight=[r.target for r in state.recoveries],
            failures=state.failures,
        ),
        chain=_chain_status(master, 0) if state.chains and master.shards == 1 else None,
        shards=_shards(master) if master.shards > 1 else None,
        suspension=None if not (suspension.count or suspension.last) else Suspension(
            count=suspension.count,
            last_resume=Resume.model_validate(suspension.last) if suspension.last else None,
        ),
        conditions=_conditions(state, c.parse(previous.get("conditions")), generation),
        master=state.dump(),
    )  # fmt: skip
    return status.dump()


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: a key `new` lacks is
    set to null (a merge patch keeps keys it does not mention); None when nothing changed."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            if value is not None:
                patch[key] = value
            continue
        if value is None:
            if old[key] is not None:
                patch[key] = None
            continue
        sub = merge_patch(old[key], value)
        if sub is not None:
            patch[key] = sub
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None
