"""The TrainingJob's status as the master's state shows it: phase, conditions, progress,
recoveries and chain for people and `kubectl get tj` (printer columns), and the master's
state itself under `status.master`, from which the next reconcile (or another operator
replica) resumes. Called by operator/driving.py; pure.
"""

from __future__ import annotations

from typing import Any

from trainthrough.control.master import Master
from trainthrough.control.vocabulary import JobPhase, Reason
from trainthrough.operator import conditions as c


def phase_of(master: Master) -> str:
    state = master.state
    if state.phase is JobPhase.SUCCEEDED:
        return c.SUCCEEDED
    if state.phase is JobPhase.FAILED:
        return c.FAILED
    if state.phase is JobPhase.RUNNING:
        return c.RECOVERING if state.recoveries else c.RUNNING
    return c.PENDING


def render(master: Master, previous: dict[str, Any], generation: int | None) -> dict[str, Any]:
    """The whole status for the master's state (`previous`: the status it replaces)."""
    state = master.state
    progress, totals = state.progress, state.completed
    conditions = previous.get("conditions")
    serving = progress.serving.endswith(" serving")
    conditions = c.with_condition(
        conditions, c.READY, serving, Reason.SERVING if serving else Reason.NOT_SERVING, progress.serving or "no parameter server answered yet", generation
    )
    if state.phase.terminal:
        assert state.reason is not None
        conditions = c.with_condition(conditions, c.PROGRESSING, False, state.reason, state.message, generation)
        done = c.SUCCEEDED_CONDITION if state.phase is JobPhase.SUCCEEDED else c.FAILED_CONDITION
        conditions = c.with_condition(conditions, done, True, state.reason, state.message, generation)
    else:
        reason = Reason.TRAINING_STARTED if state.phase is JobPhase.RUNNING else Reason.STARTING
        message = "training" if state.phase is JobPhase.RUNNING else "waiting for the parameter server and the first update"
        conditions = c.with_condition(conditions, c.PROGRESSING, True, reason, message, generation)
    recovering = [r.target for r in state.recoveries]
    conditions = c.with_condition(
        conditions, c.RECOVERING_CONDITION, bool(recovering), Reason.FAILURE_DETECTED if recovering else Reason.RECOVERY_COMPLETED,
        f"recovering {', '.join(recovering)}" if recovering else "no recovery in flight", generation,
    )  # fmt: skip
    degraded = sorted(set(recovering) | {r.replaces for r in state.replacements} | set(state.kills))
    conditions = c.with_condition(
        conditions, c.DEGRADED, bool(degraded), Reason.FAILURE_DETECTED if degraded else Reason.RECOVERY_COMPLETED,
        f"lost: {', '.join(degraded)}" if degraded else "every process present", generation,
    )  # fmt: skip
    last = totals.last or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase_of(master),
        "reason": str(state.reason) if state.reason else None,
        "message": state.message or None,
        "ps": list(state.ps),
        "progress": {
            "step": progress.steps,
            "modelVersion": progress.version,
            "accuracy": round(progress.accuracy, 6) if progress.accuracy >= 0 else None,
        },
        "recoveries": {
            "count": totals.count,
            "lostUpdates": totals.lost_updates,
            "downtimeSeconds": totals.downtime_seconds,
            "lastRecoverySeconds": (last.get("phases") or {}).get("total"),
            "lastPhases": last.get("phases"),
            "inFlight": recovering,
            "failures": state.failures,
        },
        "conditions": conditions,
        "master": state.dump(),
    }
    if state.chain is not None:
        status["chain"] = {
            "epoch": state.chain.epoch,
            "members": list(state.chain.members),
            "head": state.chain.head,
            "publishedEpoch": state.chain.published_epoch,
            "joining": [r.name for r in state.replacements if r.name],
        }
    return status


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
