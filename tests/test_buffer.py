"""Tests for trainthrough.worker.buffer, the stateless worker's gradient buffer.

Covered:
- capacity: entries keep their base versions in order; `full`, `len` and `gradients`;
  an added gradient is copied (later changes to the caller's tensor do not leak in);
- merge: when full the new gradient is summed into the newest entry, its count grows,
  the entry count stays at capacity, nothing is dropped and `gradients` counts every one;
  merging never writes into the caller's tensor;
- drop-oldest: the oldest entry goes, `dropped` counts each one, newest entries kept;
- pause: add returns False when full and leaves the buffer unchanged, True again after
  clear;
- clear empties the buffer (but keeps the dropped tally);
- bad arguments: capacity < 1 and an unknown policy raise ValueError naming the problem;
- merge outer (worker/training.py LocalProgress): the progress entry is the weights trained
  from minus the weights now, with its steps and samples; after a lost rejoin reply only the
  progress the PS lacks goes again (the PS's replayed_seq says what it merged).
"""

from __future__ import annotations

import pytest
import torch

from trainthrough.worker.buffer import GradientBuffer
from trainthrough.worker.training import LocalProgress


def test_entries_keep_base_versions_in_order_until_full() -> None:
    buffer = GradientBuffer(capacity=3, on_full="merge")
    assert len(buffer) == 0 and buffer.gradients == 0 and not buffer.full
    for version in (10, 11, 12):
        assert buffer.add(torch.full((2,), float(version)), base_version=version)
    assert len(buffer) == 3
    assert buffer.full
    assert buffer.gradients == 3
    assert [e.base_version for e in buffer.entries] == [10, 11, 12]
    assert [e.gradient.tolist() for e in buffer.entries] == [[10.0, 10.0], [11.0, 11.0], [12.0, 12.0]]
    assert [e.count for e in buffer.entries] == [1, 1, 1]


def test_add_copies_the_gradient() -> None:
    buffer = GradientBuffer(capacity=2, on_full="merge")
    gradient = torch.ones(3)
    buffer.add(gradient, base_version=0)
    gradient.mul_(5)
    assert buffer.entries[0].gradient.tolist() == [1.0, 1.0, 1.0]


def test_merge_sums_into_the_newest_entry_and_drops_nothing() -> None:
    buffer = GradientBuffer(capacity=2, on_full="merge")
    buffer.add(torch.tensor([1.0, 0.0]), base_version=5)
    buffer.add(torch.tensor([0.0, 1.0]), base_version=6)
    extra = torch.tensor([2.0, 3.0])
    assert buffer.add(extra, base_version=7)
    assert buffer.add(torch.tensor([10.0, 10.0]), base_version=8)
    assert len(buffer) == 2
    assert buffer.dropped == 0
    assert buffer.gradients == 4
    oldest, newest = buffer.entries
    assert (oldest.base_version, oldest.count, oldest.gradient.tolist()) == (5, 1, [1.0, 0.0])
    assert (newest.base_version, newest.count, newest.gradient.tolist()) == (6, 3, [12.0, 14.0])
    assert extra.tolist() == [2.0, 3.0]


def test_merge_does_not_write_into_a_gradient_it_was_given_before() -> None:
    buffer = GradientBuffer(capacity=1, on_full="merge")
    first = torch.tensor([1.0])
    buffer.add(first, base_version=0)
    buffer.add(torch.tensor([4.0]), base_version=1)
    assert first.tolist() == [1.0]
    assert buffer.entries[0].gradient.tolist() == [5.0]


def test_drop_oldest_forgets_the_oldest_and_counts_drops() -> None:
    buffer = GradientBuffer(capacity=2, on_full="drop-oldest")
    for version in range(5):
        assert buffer.add(torch.full((1,), float(version)), base_version=version)
    assert len(buffer) == 2
    assert buffer.dropped == 3
    assert buffer.gradients == 2
    assert [e.base_version for e in buffer.entries] == [3, 4]
    assert [e.gradient.item() for e in buffer.entries] == [3.0, 4.0]


def test_pause_refuses_when_full_and_changes_nothing() -> None:
    buffer = GradientBuffer(capacity=2, on_full="pause")
    assert buffer.add(torch.ones(1), base_version=1)
    assert buffer.add(torch.ones(1), base_version=2)
    assert buffer.add(torch.full((1,), 9.0), base_version=3) is False
    assert buffer.add(torch.full((1,), 9.0), base_version=4) is False
    assert [e.base_version for e in buffer.entries] == [1, 2]
    assert [e.gradient.item() for e in buffer.entries] == [1.0, 1.0]
    assert buffer.dropped == 0
    buffer.clear()
    assert buffer.add(torch.ones(1), base_version=5) is True
    assert [e.base_version for e in buffer.entries] == [5]


def test_clear_empties_the_buffer_and_keeps_the_drop_tally() -> None:
    buffer = GradientBuffer(capacity=1, on_full="drop-oldest")
    buffer.add(torch.ones(1), base_version=0)
    buffer.add(torch.ones(1), base_version=1)
    buffer.clear()
    assert len(buffer) == 0 and buffer.gradients == 0 and not buffer.full
    assert buffer.dropped == 1


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match=f"buffer capacity must be >= 1, got {capacity}"):
        GradientBuffer(capacity=capacity, on_full="merge")


@pytest.mark.parametrize("policy", ["drop", "Merge", "", "drop_oldest"])
def test_unknown_policy_is_refused(policy: str) -> None:
    with pytest.raises(ValueError, match=r"onFull: must be merge, drop-oldest or pause, got " + repr(policy)):
        GradientBuffer(capacity=2, on_full=policy)


def test_entries_carry_growing_sequence_numbers() -> None:
    buffer = GradientBuffer(capacity=3, on_full="merge", first_seq=100)
    for version in range(3):
        buffer.add(torch.ones(2), base_version=version)
    assert [e.seq for e in buffer.entries] == [100, 101, 102]


def test_a_sent_entry_is_sealed_against_merging() -> None:
    buffer = GradientBuffer(capacity=1, on_full="merge", first_seq=0)
    buffer.add(torch.ones(2), base_version=0)
    buffer.mark_sent()
    # The PS may already have replayed the sent entry: a new gradient must not hide in it.
    buffer.add(torch.full((2,), 5.0), base_version=1)
    assert [(e.seq, e.count, e.sent) for e in buffer.entries] == [(0, 1, True), (1, 1, False)]
    assert torch.equal(buffer.entries[0].gradient, torch.ones(2))


def test_discard_through_drops_what_the_ps_replayed() -> None:
    buffer = GradientBuffer(capacity=4, on_full="merge", first_seq=10)
    for version in range(4):
        buffer.add(torch.ones(2), base_version=version)
    buffer.discard_through(11)
    assert [e.seq for e in buffer.entries] == [12, 13]
    buffer.discard_through(-1)
    assert len(buffer) == 2


def test_restarted_worker_sequence_continues_upwards(monkeypatch) -> None:
    import trainthrough.worker.buffer as buffer_module

    clock = iter([1_000_000_000, 3_000_000_000])  # a restart two seconds later
    monkeypatch.setattr(buffer_module.time, "time_ns", lambda: next(clock))
    first = GradientBuffer(capacity=1, on_full="merge")
    for _ in range(5):
        first.add(torch.ones(1), base_version=0)
    second = GradientBuffer(capacity=1, on_full="merge")
    second.add(torch.ones(1), base_version=0)
    assert second.entries[0].seq > first.entries[0].seq


def test_merge_never_writes_into_an_entry_that_was_a_push() -> None:
    # The PS may skip that entry as already applied: merging later gradients into it
    # would lose them.
    buffer = GradientBuffer(capacity=1, on_full="merge")
    assert buffer.add(torch.ones(2), base_version=3, push_id=77)
    assert buffer.add(torch.full((2,), 2.0), base_version=4)
    assert [(e.push_id, e.count) for e in buffer.entries] == [(77, 1), (0, 1)]
    assert torch.equal(buffer.entries[0].gradient, torch.ones(2))
    assert buffer.add(torch.full((2,), 3.0), base_version=5)  # merges into the newest, as before
    assert [(e.push_id, e.count) for e in buffer.entries] == [(77, 1), (0, 2)]


# -- merge outer: the local progress a stateless worker hands over -----------------------------


def test_local_progress_is_the_weights_trained_from_minus_the_weights_now() -> None:
    buffer = GradientBuffer(capacity=4, on_full="merge", first_seq=10)
    progress = LocalProgress()
    progress.start(torch.tensor([1.0, 1.0]))
    assert progress.entry(-1, buffer, torch.tensor([1.0, 1.0]), version=3) is None  # no local step yet
    progress.add(32)
    progress.add(16)
    entry = progress.entry(-1, buffer, torch.tensor([0.5, 2.0]), version=3)
    assert entry is not None and entry.progress and entry.sent
    assert (entry.seq, entry.base_version, entry.count, entry.samples) == (10, 3, 2, 48)
    assert torch.equal(entry.gradient, torch.tensor([0.5, -1.0]))


def test_a_lost_rejoin_reply_sends_only_the_progress_the_ps_lacks() -> None:
    buffer = GradientBuffer(capacity=4, on_full="merge", first_seq=0)
    progress = LocalProgress()
    progress.start(torch.tensor([0.0, 0.0]))
    progress.add(32)
    first = progress.entry(-1, buffer, torch.tensor([-1.0, 0.0]), version=5)  # sent; its reply is lost
    assert first is not None
    progress.add(32)
    # The PS says it merged that entry (replayed_seq): only the step since goes again.
    second = progress.entry(first.seq, buffer, torch.tensor([-1.0, -2.0]), version=5)
    assert second is not None and (second.count, second.samples) == (1, 32)
    assert torch.equal(second.gradient, torch.tensor([0.0, 2.0]))
    progress.add(32)
    # A PS that never took `second` (it died): everything since the merged one goes again.
    third = progress.entry(first.seq, buffer, torch.tensor([-1.0, -3.0]), version=5)
    assert third is not None and (third.count, third.samples) == (2, 64)
    assert torch.equal(third.gradient, torch.tensor([0.0, 3.0]))
    assert first.seq < second.seq < third.seq
    progress.clear()
    assert progress.entry(third.seq, buffer, torch.tensor([9.0, 9.0]), version=6) is None
