"""What to do when a process of a job dies: a pure decision, and the timing of a recovery.

`decide` is a pure function of the mode, the dead process and the chain; the supervisor
(control/supervising.py) applies the decision through a Runtime. Each action's doc says
what it changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.Enum):
    RESTART_PS = "restart-ps"
    """Start the same PS again at the same address (after the restart delay). Checkpoint:
    it loads the newest valid checkpoint. Stateless: it re-seeds from the workers."""

    PROMOTE = "promote"
    """Chain: drop the dead replica from the configuration (epoch + 1; if it was the head,
    the next replica becomes head), publish it, then add a replacement at the tail."""

    RESTART_WORKER = "restart-worker"
    """Start the worker of the same rank again; it pulls (or rejoins) and trains on."""

    FINISHED = "finished"
    """A worker that exited 0 reached its step limit: nothing to recover."""

    IGNORE = "ignore"
    """The job is stopping, or the process was already replaced."""


@dataclass(frozen=True)
class Decision:
    action: Action
    target: str
    reason: str


def decide(
    *, mode: str, name: str, exit_code: int | None, stopping: bool, chain: list[str], known_ps: set[str]
) -> Decision:
    """The recovery for the death of process `name`."""
    if stopping:
        return Decision(Action.IGNORE, name, "the job is stopping")
    if name.startswith("worker-"):
        if exit_code == 0:
            return Decision(Action.FINISHED, name, "worker reached its step limit")
        return Decision(Action.RESTART_WORKER, name, f"worker exited with {exit_code}")
    if name not in known_ps:
        return Decision(Action.IGNORE, name, "not a process of this job")
    if mode == "chain":
        if name not in chain:
            return Decision(Action.IGNORE, name, "replica already removed from the chain")
        role = "head" if chain[0] == name else ("tail" if chain[-1] == name else "middle")
        return Decision(Action.PROMOTE, name, f"chain {role} {name} died")
    return Decision(Action.RESTART_PS, name, f"{mode} PS {name} died (exit {exit_code})")


@dataclass
class Recovery:
    """The milestones of one recovery, in Unix seconds; phases are derived."""

    target: str
    mode: str
    detected_at: float
    killed_at: float | None = None  # when chaos killed it (None: an unplanned death)
    restarted_at: float | None = None  # a replacement process started
    restored_at: float | None = None  # the PS serves again (restored / promoted / seeded)
    first_update_at: float | None = None  # the first update applied after restore
    version_before: int = -1
    version_restored: int = -1
    restored_from: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.first_update_at is not None

    @property
    def lost_updates(self) -> int:
        if self.version_before < 0 or self.version_restored < 0:
            return 0
        return max(0, self.version_before - self.version_restored)

    def phases(self) -> dict[str, float]:
        """detect (kill -> noticed), restore (noticed -> serving), first_update, total."""
        start = self.killed_at if self.killed_at is not None else self.detected_at
        out: dict[str, float] = {"detect": max(0.0, self.detected_at - start)}
        if self.restored_at is not None:
            out["restore"] = max(0.0, self.restored_at - self.detected_at)
        if self.restored_at is not None and self.first_update_at is not None:
            out["first_update"] = max(0.0, self.first_update_at - self.restored_at)
        if self.first_update_at is not None:
            out["total"] = max(0.0, self.first_update_at - start)
        return out

    def as_event(self) -> dict:
        return {
            "target": self.target,
            "mode": self.mode,
            "killed_at": self.killed_at,
            "detected_at": self.detected_at,
            "restarted_at": self.restarted_at,
            "restored_at": self.restored_at,
            "first_update_at": self.first_update_at,
            "version_before": self.version_before,
            "version_restored": self.version_restored,
            "restored_from": self.restored_from,
            "lost_updates": self.lost_updates,
            "phases": {k: round(v, 6) for k, v in self.phases().items()},
            **self.extra,
        }
