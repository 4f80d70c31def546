"""TrainingJob status conditions, phases and the reasons the operator gives, as Kubernetes
conventions have them: one condition per type with status "True"/"False", a reason in
CamelCase (control/vocabulary.py's `Reason`), a message for humans, the generation it
was observed at and the time it last changed."""

from __future__ import annotations

import datetime
from typing import Any

# Phases (status.phase; the printer column)
PENDING, RUNNING, RECOVERING, SUCCEEDED, FAILED = "Pending", "Running", "Recovering", "Succeeded", "Failed"

# Condition types. Succeeded and Failed are set once, at the end, for `kubectl wait
# --for=condition=Succeeded` and the like; the reasons are control/vocabulary.py's.
READY, PROGRESSING, DEGRADED, RECOVERING_CONDITION = "Ready", "Progressing", "Degraded", "Recovering"
SUCCEEDED_CONDITION, FAILED_CONDITION = "Succeeded", "Failed"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def with_condition(
    conditions: list[dict[str, Any]] | None, type_: str, status: bool, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """`conditions` with the condition of `type_` set; its transition time moves only when
    its status changes."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now() if changed else previous.get("lastTransitionTime", now()),
        }
    )
    return sorted(out, key=lambda c: c["type"])
