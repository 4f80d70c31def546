"""Integration tests of chain mode: three (or four) in-process ChainReplica servers on
127.0.0.1 port 0, a ChainMaster publishing the configuration, workers through PSClient and
raw stubs.

Aspects covered:
- ack tail: pushes to the head are applied in order on every replica; each push is
  acknowledged only once the tail has it; versions and parameters byte-equal on all replicas;
  Health reports the published configuration and each replica's role;
- a push to a non-head replica is FAILED_PRECONDITION "NotHead..." (PSClient: NotHead), and
  PSClient.discover() finds the head from any replica;
- head failover: the head stops, the master removes it and publishes; the new head has every
  acknowledged update, discover() finds it, pushes continue, a retried push with the same
  push id is a duplicate;
- a replacement (join=True, no state) added at the tail receives the state by transfer and then
  follows new updates;
- a middle (or the tail) replica stops: a push during the outage is not acknowledged, after
  reconfiguration head and tail are equal and the retry of that push is a duplicate;
- a deposed head that still runs is fenced off: its pushes are not acknowledged and do not
  enter the new chain; a worker knowing every replica discovers the new head;
- ack head with replicateEvery 4: the head acknowledges before the tail has the update, and the
  tail catches up.
"""

from __future__ import annotations

import grpc
import pytest
import torch

from conftest import RunningPS, StartPS, tensor_msg, wait_until
from trainthrough import wire
from trainthrough.errors import NotHead
from trainthrough.events import read_events
from trainthrough.proto import ps_pb2
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec

N = 64
LR = 0.125
OPTIMIZER = OptimizerSpec(name="sgd", lr=LR, momentum=0.5)  # momentum: optimizer state matters too
INITIAL = torch.randn(N, generator=torch.Generator().manual_seed(7))


def replica(start_ps: StartPS, name: str, *, ack: str = "tail", replicate_every: int = 1, join: bool = False) -> RunningPS:
    def build(core):
        return ChainReplica(
            core,
            ack=ack,
            replicate_every=replicate_every,
            optimizer=OPTIMIZER,
            initial_state=lambda: ParameterState(INITIAL.clone(), OPTIMIZER),
            join=join,
            numel=N,
        )

    return start_ps(build, name=name, mode="chain")


def chain(start_ps, chain_master, size: int = 3, **kwargs):
    replicas = [replica(start_ps, f"ps-{i}", **kwargs) for i in range(size)]
    master = chain_master([(r.name, r.address) for r in replicas])
    assert master.publish() == []
    return replicas, master


def discovered(client, address: str) -> bool:
    """discover() until it points at `address` (bounded: its Health calls have a 0.5 s
    deadline, which a first connection on a loaded machine may miss)."""
    return wait_until(lambda: client.discover() and client.address == address, timeout=10.0, interval=0.05)


def grad(i: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(100 + i))


def push(ps: RunningPS, worker: str, index: int, gradient: torch.Tensor) -> ps_pb2.PushReply:
    """The worker's push number `index` (from 0; push ids start at 1)."""
    request = ps_pb2.PushRequest(worker=worker, push_id=index + 1, base_version=0, gradient=tensor_msg(gradient), samples=1)
    return ps.stub.Push(request, timeout=10)


def raw_params(ps: RunningPS) -> tuple[int, bytes]:
    reply = ps.stub.Pull(ps_pb2.PullRequest(worker="test", have_version=-1), timeout=10)
    return reply.version, reply.params.data


def assert_all_equal(replicas: list[RunningPS], version: int) -> None:
    states = [raw_params(r) for r in replicas]
    assert [v for v, _ in states] == [version] * len(replicas)
    assert all(data == states[0][1] for _, data in states), "replicas differ"


def expected_params(gradients: list[torch.Tensor]) -> bytes:
    state = ParameterState(INITIAL.clone(), OPTIMIZER)
    for g in gradients:
        state.apply(g)
    return state.params_bytes()


# -- ack tail: order and acknowledgement --------------------------------------------------------


def test_pushes_to_head_are_applied_in_order_on_every_replica(start_ps, chain_master, ps_client) -> None:
    replicas, _ = chain(start_ps, chain_master)
    head, _, tail = replicas
    roles = {r.name: (r.health().chain.epoch, r.core.role) for r in replicas}
    assert roles == {"ps-0": (1, "head"), "ps-1": (1, "middle"), "ps-2": (1, "tail")}
    assert [m.name for m in tail.health().chain.members] == ["ps-0", "ps-1", "ps-2"]

    client = ps_client([tail.address], "worker-0")
    assert discovered(client, head.address)
    gradients = [grad(i) for i in range(6)]
    for i, g in enumerate(gradients):
        reply = client.push(g, base_version=i, samples=1)
        assert reply.version == i + 1
        # ack tail: acknowledged means the tail has it already.
        assert tail.core.version == i + 1
    assert_all_equal(replicas, 6)
    assert raw_params(tail)[1] == expected_params(gradients)  # the order of application
    assert [r.health().applied_seq for r in replicas] == [6, 6, 6]


def test_push_to_non_head_is_failed_precondition_not_head(start_ps, chain_master, ps_client) -> None:
    replicas, _ = chain(start_ps, chain_master)
    middle = replicas[1]
    with pytest.raises(grpc.RpcError) as caught:
        push(middle, "worker-0", 1, grad(0))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("NotHead")
    assert replicas[0].address in caught.value.details()  # it says where the head is

    client = ps_client([middle.address], "worker-0")
    with pytest.raises(NotHead):
        client.push(grad(0), base_version=0, samples=1)
    assert_all_equal(replicas, 0)  # nothing applied anywhere


# -- failover ----------------------------------------------------------------------------------


def test_head_failover_keeps_every_acknowledged_update(start_ps, chain_master, ps_client) -> None:
    replicas, master = chain(start_ps, chain_master)
    head, middle, tail = replicas
    client = ps_client([r.address for r in replicas], "worker-0")
    assert discovered(client, head.address)
    acknowledged = 0
    for i in range(5):
        client.push(grad(i), base_version=i, samples=1)
        acknowledged += 1

    head.stop(0)
    master.remove("ps-0")
    assert master.publish() == []

    health = middle.health()
    assert health.chain.epoch == 2 and [m.name for m in health.chain.members] == ["ps-1", "ps-2"]
    assert middle.core.role == "head" and tail.core.role == "tail"
    assert health.version == acknowledged
    assert discovered(client, middle.address)
    assert client.epoch == 2

    for i in range(5, 8):
        assert client.push(grad(i), base_version=i, samples=1).version == i + 1
    assert_all_equal([middle, tail], 8)
    assert raw_params(tail)[1] == expected_params([grad(i) for i in range(8)])


def test_retried_push_after_failover_is_duplicate(start_ps, chain_master) -> None:
    replicas, master = chain(start_ps, chain_master)
    head, middle, tail = replicas
    assert push(head, "worker-0", 41, grad(0)).version == 1
    # The acknowledgement of push 42 "gets lost" with the head: the worker retries it.
    assert push(head, "worker-0", 42, grad(1)).version == 2
    head.stop(0)
    master.remove("ps-0")
    assert master.publish() == []

    retry = push(middle, "worker-0", 42, grad(1))
    assert retry.duplicate
    assert retry.version == 2
    assert_all_equal([middle, tail], 2)
    assert push(middle, "worker-0", 43, grad(2)).version == 3
    assert_all_equal([middle, tail], 3)


def test_replacement_joins_at_tail_by_state_transfer(start_ps, chain_master, ps_client, events_path) -> None:
    replicas, master = chain(start_ps, chain_master)
    head, middle, tail = replicas
    client = ps_client([head.address], "worker-0")
    assert discovered(client, head.address)
    for i in range(3):
        client.push(grad(i), base_version=i, samples=1)

    joiner = replica(start_ps, "ps-3", join=True)
    health = joiner.health()
    assert health.state == "joining" and health.version == -1
    with pytest.raises(grpc.RpcError) as caught:
        joiner.stub.Pull(ps_pb2.PullRequest(worker="test", have_version=-1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    master.add_tail("ps-3", joiner.address)
    assert master.publish() == []
    health = joiner.health()
    assert health.state == "serving"
    assert health.restored_from == "chain"
    assert health.version == 3
    assert joiner.core.role == "tail" and tail.core.role == "middle"
    assert_all_equal(replicas + [joiner], 3)

    # It follows new updates, including the optimizer state (momentum) it received.
    for i in range(3, 6):
        client.push(grad(i), base_version=i, samples=1)
    assert_all_equal(replicas + [joiner], 6)
    assert raw_params(joiner)[1] == expected_params([grad(i) for i in range(6)])
    transfers = [e for e in read_events(events_path) if e["event"] == "chain_state_transfer"]
    assert [(e["source"], e["to"]) for e in transfers] == [("ps-2", joiner.address)]


@pytest.mark.parametrize("stopped", ["ps-1", "ps-2"], ids=["middle", "tail"])
def test_replica_behind_head_stops_head_and_tail_stay_equal(start_ps, chain_master, stopped) -> None:
    replicas, master = chain(start_ps, chain_master)
    by_name = {r.name: r for r in replicas}
    head = by_name["ps-0"]
    for i in range(3):
        push(head, "worker-0", i, grad(i))
    assert_all_equal(replicas, 3)

    by_name[stopped].stop(0)
    # ack tail: with a replica downstream gone, the push cannot reach the tail and is not
    # acknowledged.
    with pytest.raises(grpc.RpcError) as caught:
        push(head, "worker-0", 3, grad(3))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    master.remove(stopped)
    assert master.publish() == []
    remaining = [r for r in replicas if r.name != stopped]
    tail = remaining[-1]
    assert head.core.role == "head" and tail.core.role == "tail"
    # The head applied the unacknowledged push before it failed; reconfiguration brought the
    # tail up to the head, and the worker's retry is recognised as a duplicate.
    assert_all_equal(remaining, 4)
    retry = push(head, "worker-0", 3, grad(3))
    assert retry.duplicate and retry.version == 4
    for i in range(4, 7):
        assert push(head, "worker-0", i, grad(i)).version == i + 1
    assert_all_equal(remaining, 7)
    assert raw_params(tail)[1] == expected_params([grad(i) for i in range(7)])


def test_deposed_head_is_fenced_off(start_ps, chain_master, ps_client) -> None:
    replicas, master = chain(start_ps, chain_master)
    old_head, middle, tail = replicas
    for i in range(2):
        push(old_head, "worker-0", i, grad(i))
    # The master deposes the head, which still runs and never hears of the new epoch.
    master.remove("ps-0")
    assert master.publish() == []
    assert old_head.health().chain.epoch == 1

    with pytest.raises(grpc.RpcError) as caught:
        push(old_head, "worker-0", 2, grad(2))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # not acknowledged
    assert_all_equal([middle, tail], 2)  # its update did not enter the new chain

    # A worker that knows every replica learns the newest configuration from the others.
    client = ps_client([r.address for r in replicas], "worker-0")
    client.push_id = 3  # push(..., 2, ...) above sent id 3, never applied
    assert discovered(client, middle.address)
    assert client.epoch == 2
    reply = client.push(grad(2), base_version=2, samples=1)
    assert reply.version == 3 and not reply.duplicate
    assert_all_equal([middle, tail], 3)


# -- ack head ----------------------------------------------------------------------------------


def test_ack_head_acknowledges_before_tail_and_tail_catches_up(start_ps, chain_master) -> None:
    replicas, master = chain(start_ps, chain_master, ack="head", replicate_every=4)
    head, middle, tail = replicas

    # Freeze the tail (hold its order lock, under which it applies records): the head must
    # still acknowledge, so it cannot have waited for the tail.
    with tail.core.order_lock:
        reply = push(head, "worker-0", 1, grad(0))
        assert reply.version == 1 and head.core.version == 1
        assert tail.core.version == 0
        assert raw_params(tail)[0] == 0  # Pull does not need the order lock
    assert wait_until(lambda: tail.core.version == 1, timeout=10.0)

    for i in range(1, 9):
        assert push(head, "worker-0", i + 1, grad(i)).version == i + 1
    assert wait_until(lambda: tail.core.version == 9 and middle.core.version == 9, timeout=10.0)
    assert_all_equal(replicas, 9)
    assert raw_params(tail)[1] == expected_params([grad(i) for i in range(9)])


def state_stream(seq: int, total_bytes: int, chunks, *, epoch: int = 1, sender: str = "ps-2"):
    header = ps_pb2.StateHeader(seq=seq, total_bytes=total_bytes, epoch=epoch, sender=sender)
    return wire.chunk_stream(ps_pb2.StateChunk(header=header), chunks)


def test_a_malformed_state_transfer_is_refused_and_the_joiner_stays_empty(start_ps) -> None:
    joiner = replica(start_ps, "ps-3", join=True)
    members = [ps_pb2.ChainMember(name="ps-2", address="127.0.0.1:1"), ps_pb2.ChainMember(name="ps-3", address=joiner.address)]
    joiner.stub.Reconfigure(ps_pb2.ChainConfig(epoch=1, members=members), timeout=5)
    good = ParameterState(INITIAL.clone(), OPTIMIZER, version=4).encode()
    attempts = {
        "the stream ended after": state_stream(4, good.nbytes + 10, good.chunks()),
        "more than the": state_stream(4, good.nbytes - 10, good.chunks()),
        "unknown format": state_stream(4, 64, [b"x" * 64]),
        "the first chunk must carry the header": iter([wire.Framed(ps_pb2.StateChunk(), b"x" * 64)]),
        "the header says seq 9": state_stream(9, good.nbytes, good.chunks()),
    }
    for message, stream in attempts.items():
        with pytest.raises(grpc.RpcError) as caught:
            joiner.framed.install_state(stream, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details(), message
    assert joiner.health().state == "joining" and joiner.core.state is None
    # The same replica then takes a whole one.
    assert joiner.framed.install_state(state_stream(4, good.nbytes, good.chunks()), timeout=10).applied_seq == 4
    assert joiner.health().state == "serving" and joiner.health().version == 4


@pytest.mark.parametrize(("ack", "replicate_every", "kept"), [("tail", 1, 2), ("head", 4, 8)])
def test_the_log_holds_two_gradients_worth_but_never_less_than_the_forwarder_needs(start_ps, chain_master, ack, replicate_every, kept) -> None:
    """A successor further behind than that gets the state, which costs no more; a log of
    64 whole gradients would hold 12.8 GB for a 50M-parameter model."""
    replicas, _ = chain(start_ps, chain_master, size=2, ack=ack, replicate_every=replicate_every)
    head, tail = replicas
    for i in range(12):
        push(head, "worker-0", i + 1, grad(i))
    assert [r.seq for r in head.mode.log] == list(range(12 - kept + 1, 13))
    assert sum(r.gradient.nbytes for r in head.mode.log) == kept * N * 4
    assert wait_until(lambda: tail.health().version == 12 if ack == "tail" else tail.health().version >= 8, timeout=10)


def test_a_replicate_stream_cut_short_applies_nothing(start_ps, chain_master) -> None:
    replicas, master = chain(start_ps, chain_master, size=2)
    tail = replicas[1]
    request = ps_pb2.ReplicateRequest(epoch=tail.mode.config.epoch, sender="ps-0")
    record = request.records.add(seq=1, workers=["worker-0"], push_ids=[1])
    wire.fill_bytes(record.gradient, b"", [N])
    short = [wire.Framed(ps_pb2.ReplicateChunk(request=request), grad(0).numpy().tobytes()[:-8])]
    with pytest.raises(grpc.RpcError) as caught:
        tail.framed.replicate(iter(short), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the stream ended after 62 of 64 elements" in caught.value.details()
    assert tail.health().version == 0
    whole = [wire.Framed(ps_pb2.ReplicateChunk(request=request), grad(0).numpy().tobytes())]
    assert tail.framed.replicate(iter(whole), timeout=10).applied_seq == 1


def test_a_replica_that_changes_role_exports_its_version_under_the_new_role_only(start_ps, chain_master, registry) -> None:
    replicas, master = chain(start_ps, chain_master)
    for i in range(2):
        push(replicas[0], "worker-0", i, grad(i))
    replicas[0].stop()
    master.remove("ps-0")
    assert master.publish() == []
    push(replicas[1], "worker-0", 2, grad(2))
    # (The replicas of this test share one registry; in a PS process the roles are its own.)
    series = {
        sample.labels["role"]: sample.value
        for metric in registry.collect() if metric.name == "trainthrough_ps_model_version"
        for sample in metric.samples
    }  # fmt: skip
    assert series == {"head": 3, "tail": 3}, series
