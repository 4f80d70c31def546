"""A worker's record of the pushes a PS acknowledged, to measure lost updates.

A push id grows with every push of a worker, and a PS state holds, per worker, the newest
push id it applied (`PullReply.applied_pushes`; a prefix of the pushes, in every mode).
When the PS a worker follows changes (a restart, a failover, a stateless rebuild), the
acknowledged pushes above the new state's entry are updates the job lost: measured
against the state the job continues from, not derived from version numbers.

Acknowledged ids are kept as ranges (consecutive pushes extend the last one), so a long
job costs a few integers, not one per push.

    >>> acks = AcknowledgedPushes()
    >>> for push_id in (10, 11, 12, 14): acks.add(push_id)
    >>> acks.lost_since(11)   # a state that holds pushes up to 11: 12 and 14 are lost
    2
    >>> acks.lost_since(14)   # those were forgotten above: each loss counts once
    0
"""

from __future__ import annotations


class AcknowledgedPushes:
    def __init__(self) -> None:
        self._ranges: list[list[int]] = []  # [first, last] push ids, increasing, disjoint

    def add(self, push_id: int) -> None:
        """`push_id` was acknowledged (again, for a retry answered as a duplicate)."""
        if self._ranges and push_id <= self._ranges[-1][1]:
            return  # already counted: ids only grow, a repeat is a retry
        if self._ranges and push_id == self._ranges[-1][1] + 1:
            self._ranges[-1][1] = push_id
        else:
            self._ranges.append([push_id, push_id])

    def lost_since(self, applied: int) -> int:
        """How many acknowledged pushes a state holding pushes up to `applied` lacks; they
        are forgotten (the state the worker follows now never gets them)."""
        lost = 0
        while self._ranges and self._ranges[-1][1] > applied:
            first, last = self._ranges[-1]
            if first > applied:
                lost += last - first + 1
                self._ranges.pop()
            else:
                lost += last - applied
                self._ranges[-1][1] = applied
        return lost

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self._ranges)
