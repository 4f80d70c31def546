"""TrainingJob status conditions as Kubernetes conventions have them (metav1.Condition,
typed in job_status.py): one condition per type with status "True"/"False", a reason in
CamelCase (control/vocabulary.py's `Reason`), a message for people, the generation it
was set for and the time its status last changed."""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import ValidationError

from trainthrough.job_status import MAX_MESSAGE, Condition, ConditionStatus, ConditionType


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def timestamp(at: float | None) -> str | None:
    """Unix seconds as an RFC 3339 time, as Kubernetes writes them (whole seconds, UTC)."""
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse(raw: Any) -> list[Condition]:
    """The conditions of a stored status; an entry that is not a condition (written by
    hand, or by something else) is dropped rather than failing the job's reconcile."""
    out: list[Condition] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return out


def with_condition(
    conditions: list[Condition], type_: ConditionType, status: bool, reason: str, message: str, generation: int | None
) -> list[Condition]:
    """`conditions` with the condition of `type_` set, sorted by type; its transition time
    moves only when its status changes."""
    value = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != value
    condition = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:MAX_MESSAGE],
        observed_generation=generation,
        last_transition_time=now() if changed or previous is None else previous.last_transition_time,
    )
    return sorted([c for c in conditions if c.type != type_] + [condition], key=lambda c: c.type)
