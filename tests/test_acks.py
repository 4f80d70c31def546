"""A worker's acknowledged pushes (worker/acks.py), the ledger lost updates are measured
with: consecutive ids make one range, a retry's repeat counts once, a state that holds a
prefix up to an id lacks exactly the acknowledged ids above it (counted once, then
forgotten), gaps (push ids spent offline) are not counted."""

from __future__ import annotations

from trainthrough.worker.acks import AcknowledgedPushes


def test_pushes_above_the_state_are_lost_once() -> None:
    acks = AcknowledgedPushes()
    for push_id in range(100, 150):
        acks.add(push_id)
    acks.add(149)  # a retry answered as a duplicate
    assert len(acks) == 50
    assert acks.lost_since(139) == 10  # 140..149
    assert acks.lost_since(139) == 0 and len(acks) == 40
    assert acks.lost_since(-1) == 40  # a state that holds none of this worker's pushes


def test_ids_never_acknowledged_are_not_lost() -> None:
    acks = AcknowledgedPushes()
    for push_id in (1, 2, 3, 10, 11, 20):  # 4..9 and 12..19 went out while the PS was down
        acks.add(push_id)
    assert acks.lost_since(2) == 4  # 3, 10, 11, 20
    acks.add(21)
    assert acks.lost_since(30) == 0 and acks.lost_since(1) == 2  # 2 and 21
