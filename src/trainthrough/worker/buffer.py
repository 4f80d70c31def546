"""The stateless worker's bounded buffer of gradients computed while the PS is down.

Each entry keeps the version of the model it was computed on (the last PS version plus
the worker's own local steps since), so the PS can weigh it by staleness on replay. When
full, `onFull` decides: `merge` adds the new gradient into the newest entry (its count
grows; nothing is dropped, resolution is), `drop-oldest` forgets the oldest entry,
`pause` tells the worker to stop training until the PS is back.

Every entry has a sequence number that only grows (across restarts of the worker too), so
the PS can replay each entry exactly once even when a worker retries a rejoin whose reply
it lost. An entry once sent is sealed: nothing more is merged into it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class BufferedGradient:
    seq: int
    base_version: int
    gradient: torch.Tensor
    count: int = 1
    sent: bool = False
    push_id: int = 0  # the timed-out push this gradient was sent in (0: never pushed)
    # stateless.merge outer: not a gradient but local progress (a pseudo-gradient of
    # `count` local steps over `samples` samples); made at each rejoin, never buffered
    progress: bool = False
    samples: int = 0


class GradientBuffer:
    """
    >>> buffer = GradientBuffer(capacity=2, on_full="merge")
    >>> buffer.add(torch.ones(3), base_version=10)
    True
    """

    def __init__(self, capacity: int, on_full: str, first_seq: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if on_full not in ("merge", "drop-oldest", "pause"):
            raise ValueError(f"onFull: must be merge, drop-oldest or pause, got {on_full!r}")
        self.capacity = capacity
        self.on_full = on_full
        self.entries: deque[BufferedGradient] = deque()
        self.dropped = 0
        # Time-based, so that a restarted worker's entries follow its earlier ones.
        self._next_seq = time.time_ns() // 1000 if first_seq is None else first_seq

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def gradients(self) -> int:
        """Gradients held, counting merged ones."""
        return sum(entry.count for entry in self.entries)

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.capacity

    def add(self, gradient: torch.Tensor, base_version: int, push_id: int = 0) -> bool:
        """Buffer one gradient; False when the policy is `pause` and the buffer is full.
        `push_id`: the push this gradient already went out in, whose outcome is unknown."""
        if self.full:
            if self.on_full == "pause":
                return False
            # Never merge into an entry the PS may skip as already applied (its push id).
            if self.on_full == "merge" and not self.entries[-1].sent and not self.entries[-1].push_id:
                newest = self.entries[-1]
                newest.gradient.add_(gradient)
                newest.count += 1
                return True
            if self.on_full == "drop-oldest":
                self.entries.popleft()
                self.dropped += 1
            # merge onto a sealed entry: start a new one (past capacity, until the next
            # rejoin succeeds; only after a rejoin whose outcome is unknown).
        self.entries.append(BufferedGradient(self._next_seq, base_version, gradient.detach().clone(), push_id=push_id))
        self._next_seq += 1
        return True

    def take_seq(self) -> int:
        """A sequence number for an entry sent beside the buffered ones (local progress):
        the same order, so the PS's `replayed_seq` covers it too."""
        self._next_seq += 1
        return self._next_seq - 1

    def mark_sent(self) -> None:
        for entry in self.entries:
            entry.sent = True

    def discard_through(self, seq: int) -> None:
        """Forget the entries the PS has already replayed (seq <= `seq`)."""
        while self.entries and self.entries[0].seq <= seq:
            self.entries.popleft()

    def clear(self) -> None:
        self.entries.clear()
