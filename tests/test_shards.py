"""Where a sharded PS cuts the model (trainthrough/shards.py).

Covered: the shards tile the flat vector (contiguous, non-empty, in order) for every
model and shard count; one large parameter is cut at the ideal elements (sizes within one
element); cuts move to a parameter boundary within the tolerance and not beyond it; the
project's models cut into 2 and 4 shards within the tolerance of equal bytes; bad
arguments are refused with what is wrong; random sizes keep every invariant.
"""

from __future__ import annotations

import random

import pytest

from trainthrough.model import MODELS, model_size, parameter_sizes
from trainthrough.shards import DEFAULT_TOLERANCE, Shard, partition


def assert_tiles(shards: list[Shard], total: int) -> None:
    assert [s.index for s in shards] == list(range(len(shards)))
    assert shards[0].start == 0 and shards[-1].stop == total
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    assert all(s.numel >= 1 for s in shards)


def boundaries(sizes: list[int]) -> set[int]:
    return {sum(sizes[: i + 1]) for i in range(len(sizes) - 1)}


def test_one_large_parameter_is_cut_into_equal_parts() -> None:
    shards = partition([10], 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 7), (7, 10)]
    for total, count in ((50_000_000, 4), (10_000_001, 2), (7, 7)):
        shards = partition([total], count)
        assert_tiles(shards, total)
        assert max(s.numel for s in shards) - min(s.numel for s in shards) <= 1


def test_a_cut_moves_to_a_boundary_within_the_tolerance_and_no_further() -> None:
    assert [s.stop for s in partition([100, 100, 100, 100], 2)] == [200, 400]
    # The ideal cut (510) is inside the large parameter, far from either boundary.
    assert [s.stop for s in partition([10, 1000, 10], 2)] == [510, 1020]
    # A boundary 4 elements from the ideal (1000 of 2000) is within 5% of a shard (50).
    assert [s.stop for s in partition([996, 1004], 2)] == [996, 2000]
    # 60 elements away is not: the cut stays at the ideal element.
    assert [s.stop for s in partition([940, 1060], 2)] == [1000, 2000]
    assert [s.stop for s in partition([940, 1060], 2, tolerance=0.49)] == [940, 2000]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("count", [1, 2, 4])
def test_every_model_cuts_into_shards_of_equal_bytes_within_the_tolerance(model: str, count: int) -> None:
    sizes = parameter_sizes(model)
    assert sum(sizes) == model_size(model)
    shards = partition(sizes, count)
    assert_tiles(shards, model_size(model))
    ideal = model_size(model) / count
    # Each cut is at most the tolerance of a shard from its ideal place: a shard at most twice that off.
    assert all(abs(s.numel - ideal) <= 2 * DEFAULT_TOLERANCE * ideal + 1 for s in shards)


@pytest.mark.parametrize(
    ("sizes", "count", "tolerance", "message"),
    [
        ([10], 0, DEFAULT_TOLERANCE, r"shards: must be >= 1, got 0"),
        ([2, 1], 4, DEFAULT_TOLERANCE, r"4 shards of a model of 3 elements"),
        ([], 1, DEFAULT_TOLERANCE, r"no parameters"),
        ([5, 0, 5], 2, DEFAULT_TOLERANCE, r"parameter_sizes\[1\]: must be >= 1, got 0"),
        ([10], 2, 0.5, r"tolerance: must be in \[0, 0.5\)"),
    ],
)
def test_bad_arguments_say_what_is_wrong(sizes, count, tolerance, message) -> None:
    with pytest.raises(ValueError, match=message):
        partition(sizes, count, tolerance=tolerance)


def test_random_models_keep_every_invariant() -> None:
    rng = random.Random(15)
    for _ in range(500):
        sizes = [rng.choice([1, rng.randint(1, 50), rng.randint(1, 5000)]) for _ in range(rng.randint(1, 12))]
        total = sum(sizes)
        count = rng.randint(1, min(total, 9))
        shards = partition(sizes, count)
        assert_tiles(shards, total)
        assert len(shards) == count
        slack = DEFAULT_TOLERANCE * total / count
        near = boundaries(sizes)
        for k, shard in enumerate(shards[:-1], start=1):
            ideal = round(k * total / count)
            clamped = {shard.start + 1, total - (count - k)}  # moved only to leave each shard an element
            within = {b for b in near if abs(b - ideal) <= slack}
            if shard.stop not in clamped:
                # At the nearest boundary within the slack where there is one, else at the ideal element.
                assert shard.stop in within if within else shard.stop == ideal, (sizes, count, k)
                assert not within or abs(shard.stop - ideal) == min(abs(b - ideal) for b in within)
