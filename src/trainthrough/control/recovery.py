"""What to do when a process of a job dies: a pure decision.

`decide` is a pure function of the mode, the dead process and the chain; the master
(control/master.py) carries the decision out. Each remedy's doc says what it changes.
"""

from __future__ import annotations

from trainthrough.names import is_worker
from trainthrough.spec import Mode

import enum
from dataclasses import dataclass


class Remedy(enum.Enum):
    RESTART_PS = "restart-ps"
    """Start the same PS again at the same address (after the restart delay). Checkpoint:
    it loads the newest valid checkpoint. Stateless: it re-seeds from the workers."""

    PROMOTE = "promote"
    """Chain: drop the dead replica from the configuration (epoch + 1; if it was the head,
    the next replica becomes head), publish it, then add a replacement at the tail."""

    REBUILD = "rebuild"
    """Hybrid: the chain lost its last serving replica. Start it again at the same address,
    empty (names.PSStart.REBUILD): it seeds from the workers' rejoins (they trained on),
    serves as the head, and the replacements due join at its tail."""

    RESTART_WORKER = "restart-worker"
    """Start the worker of the same rank again; it pulls (or rejoins) and trains on."""

    FINISHED = "finished"
    """A worker that exited 0 reached its step limit: nothing to recover."""

    IGNORE = "ignore"
    """The job is stopping, or the process was already replaced."""


@dataclass(frozen=True)
class Decision:
    action: Remedy
    target: str
    reason: str


def decide(
    *, mode: str, name: str, exit_code: int | None, stopping: bool, chain: list[str], known_ps: set[str],
    serving: list[str] | None = None,
) -> Decision:
    """The recovery for the death of process `name`; `chain`: the chain's members head
    first, `serving` those of them that hold the state (not replacements still joining)."""
    if stopping:
        return Decision(Remedy.IGNORE, name, "the job is stopping")
    if is_worker(name):
        if exit_code == 0:
            return Decision(Remedy.FINISHED, name, "worker reached its step limit")
        return Decision(Remedy.RESTART_WORKER, name, f"worker exited with {exit_code}")
    if name not in known_ps:
        return Decision(Remedy.IGNORE, name, "not a process of this job")
    if Mode(mode).chained:
        if name not in chain:
            return Decision(Remedy.IGNORE, name, "replica already removed from the chain")
        if mode == Mode.HYBRID and (chain if serving is None else serving) == [name]:
            return Decision(Remedy.REBUILD, name, f"{name}, the chain's last replica with the state, died: the workers rebuild it")
        role = "head" if chain[0] == name else ("tail" if chain[-1] == name else "middle")
        return Decision(Remedy.PROMOTE, name, f"chain {role} {name} died")
    return Decision(Remedy.RESTART_PS, name, f"{mode} PS {name} died (exit {exit_code})")
