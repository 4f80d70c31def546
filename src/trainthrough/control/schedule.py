"""The fault schedule: which process to kill when, as a pure, tested function of time.

Used by both drivers: the local one (control/supervising.py) and the chaos Job (chaos/pods.py). Targets name roles, not
processes, and are resolved at the moment of the kill: `ps-head` and `ps-tail` follow the
chain as it changes, `ps-<i>` is the i-th PS in the current chain order (the only PS in
the other modes is `ps-0`), `worker-<i>` is the worker of rank i, `random` any of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trainthrough.spec import ChaosKill


@dataclass
class KillSchedule:
    """Kills ordered by time; `due(elapsed)` hands out each one once.

    >>> schedule = KillSchedule.of([ChaosKill(target="ps-head", at=30.0)])
    >>> schedule.due(29.9), [k.target for k in schedule.due(30.0)]
    ([], ['ps-head'])
    """

    pending: list[ChaosKill]
    fired: list[ChaosKill] = field(default_factory=list)

    @classmethod
    def of(cls, kills: list[ChaosKill]) -> "KillSchedule":
        return cls(pending=sorted(kills, key=lambda k: k.at))

    def due(self, elapsed: float) -> list[ChaosKill]:
        ready = [k for k in self.pending if k.at <= elapsed]
        self.pending = [k for k in self.pending if k.at > elapsed]
        self.fired.extend(ready)
        return ready

    @property
    def next_at(self) -> float | None:
        return self.pending[0].at if self.pending else None


class UnknownTarget(ValueError):
    """A chaos target that names no live process right now."""


def resolve_target(target: str, ps_chain: list[str], workers: list[str], rng: random.Random | None = None) -> str:
    """The process name `target` means now; `ps_chain` is head-first (one PS outside chain
    mode); `rng` draws the `random` target (pass a seeded one for a repeatable run)."""
    if target == "random":
        pool = ps_chain + workers
        if not pool:
            raise UnknownTarget("random: no process is running")
        return (rng or random.Random()).choice(pool)
    if target == "ps-head":
        if not ps_chain:
            raise UnknownTarget("ps-head: no parameter server is running")
        return ps_chain[0]
    if target == "ps-tail":
        if not ps_chain:
            raise UnknownTarget("ps-tail: no parameter server is running")
        return ps_chain[-1]
    kind, _, index_text = target.rpartition("-")
    if not (index_text.isascii() and index_text.isdigit()) or kind not in ("ps", "worker"):
        raise UnknownTarget(f"{target}: not ps-head, ps-tail, ps-<i>, worker-<i> or random")
    index = int(index_text)
    pool = ps_chain if kind == "ps" else workers
    if index >= len(pool):
        raise UnknownTarget(f"{target}: only {len(pool)} {kind} processes are running")
    return pool[index]
