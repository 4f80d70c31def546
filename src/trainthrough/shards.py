"""Where a sharded parameter server cuts the model: contiguous ranges of the flat
parameter vector (the parameters one after another, as model.flatten_params lays them
out), one per shard, balanced by bytes.

Contiguous, so that a worker sends each shard a view of its flat gradient and pulls each
shard's parameters into its place in one flat buffer, with no gather or scatter. Every
element is float32 on the PS, so balancing bytes is balancing elements.

A cut falls on the parameter boundary nearest to its ideal place (k / N of the vector)
when that boundary is within `tolerance` of a shard's ideal size from it: a parameter
then lives on one shard (its gradient and its values in one transfer, one place to read
in a checkpoint). Where no boundary is that near, as inside one large embedding, the cut
is at the ideal element. Pure: the PS, the worker and the master compute the same plan
from the same spec.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

DEFAULT_TOLERANCE = 0.05  # of a shard's ideal size: how far a cut may move to a boundary


@dataclass(frozen=True)
class Shard:
    """Elements [start, stop) of the flat parameter vector."""

    index: int
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start


def partition(parameter_sizes: Sequence[int], shards: int, *, tolerance: float = DEFAULT_TOLERANCE) -> list[Shard]:
    """The flat vector of parameters of `parameter_sizes` elements cut into `shards`
    contiguous, non-empty ranges that tile it, balanced by bytes (module docstring).
    ValueError, saying which, for no parameters, a size below 1, fewer elements than
    shards, or a shard count or tolerance out of range."""
    if shards < 1:
        raise ValueError(f"shards: must be >= 1, got {shards}")
    if not 0 <= tolerance < 0.5:
        raise ValueError(f"tolerance: must be in [0, 0.5), got {tolerance}")
    if not parameter_sizes:
        raise ValueError("parameter_sizes: no parameters to shard")
    bad = next((i for i, size in enumerate(parameter_sizes) if size < 1), None)
    if bad is not None:
        raise ValueError(f"parameter_sizes[{bad}]: must be >= 1, got {parameter_sizes[bad]}")
    total = sum(parameter_sizes)
    if total < shards:
        raise ValueError(f"shards: {shards} shards of a model of {total} elements (each shard needs at least one)")
    boundaries = list(accumulate(parameter_sizes))[:-1]  # where a parameter ends inside the vector
    slack = tolerance * total / shards
    cuts = [0]
    for k in range(1, shards):
        ideal = round(k * total / shards)
        cut = ideal
        nearest = _nearest(boundaries, ideal)
        if nearest is not None and abs(nearest - ideal) <= slack:
            cut = nearest
        # Strictly after the previous cut and leaving an element for each shard after it.
        cut = min(max(cut, cuts[-1] + 1), total - (shards - k))
        cuts.append(cut)
    cuts.append(total)
    return [Shard(index, start, stop) for index, (start, stop) in enumerate(zip(cuts, cuts[1:]))]


def _nearest(sorted_values: list[int], target: int) -> int | None:
    """The value of `sorted_values` nearest to `target` (the lower on a tie), or None."""
    at = bisect.bisect_left(sorted_values, target)
    near = sorted_values[max(0, at - 1) : at + 1]
    return min(near, key=lambda value: (abs(value - target), value)) if near else None
