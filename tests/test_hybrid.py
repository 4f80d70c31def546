"""Tests of the hybrid replica (ps/hybrid.py) behind real gRPC on 127.0.0.1: a chain that
its workers can also rejoin.

Covered:
- a rebuilt replica (the chain lost every replica) is empty and seeding: it refuses pulls,
  and pushes from a worker that has not rejoined it (RejoinRequired); it seeds from the
  workers' rejoins (the base with the highest version, their buffered gradients replayed),
  serves as the head of its new configuration, then hands its state to a replacement at
  its tail, which follows every later update;
- a replica that was not rebuilt takes a rejoin only as the head (NotHead elsewhere): the
  worker's buffered gradients go onto the live model and down the chain;
- the master's REBUILD start reaches the PS command line as --rebuild (pods and processes).
"""

from __future__ import annotations

import grpc
import pytest
import torch

from conftest import RunningPS, StartPS, tensor_msg, wait_until
from test_stateless import rejoin_all  # the same concurrent rejoins as a stateless PS takes
from trainthrough.errors import RejoinRequired
from trainthrough.proto import ps_pb2
from trainthrough.ps.hybrid import HybridReplica
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec, StatelessSpec
from trainthrough.worker.buffer import BufferedGradient

N = 4
LR = 0.5
OPTIMIZER = OptimizerSpec(name="sgd", lr=LR)
INITIAL = torch.tensor([0.5, -0.5, 1.0, 2.0])
A = torch.tensor([1.0, 1.0, 1.0, 1.0])
B = torch.tensor([10.0, 20.0, 30.0, 40.0])
G = torch.tensor([0.0, 0.0, 4.0, 0.0])


def replica(start_ps: StartPS, name: str, *, join: bool = False, rebuild: bool = False) -> RunningPS:
    def build(core):
        return HybridReplica(
            core, ack="tail", replicate_every=1, optimizer=OPTIMIZER,
            initial_state=lambda: ParameterState(INITIAL.clone(), OPTIMIZER),
            join=join, rebuild=rebuild, stateless=StatelessSpec(rejoin_timeout=10.0), numel=N,
        )  # fmt: skip

    return start_ps(build, name=name, mode="hybrid", expected_workers=2)


def test_a_rebuilt_replica_seeds_from_the_workers_then_hands_its_state_down_the_chain(start_ps, ps_client, chain_master) -> None:
    head = replica(start_ps, "ps-2", rebuild=True)
    assert head.health().state == "seeding"
    w0 = ps_client([head.address], "worker-0")
    w1 = ps_client([head.address], "worker-1")
    with pytest.raises(RejoinRequired):
        w0.push(torch.ones(N), base_version=0, samples=1)
    with pytest.raises(grpc.RpcError) as caught:
        head.stub.Pull(ps_pb2.PullRequest(worker="worker-0", have_version=-1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    master = chain_master([(head.name, head.address)])
    assert master.publish() == []

    rejoin_all([(w0, (7, A, [])), (w1, (9, B, [BufferedGradient(1, 9, G)]))])
    health = head.health()
    assert (health.state, health.restored_from, health.version) == ("serving", "workers", 10)
    assert torch.equal(head.pull()[1], B - LR * G)

    # A replacement joins at its tail and takes its state, then every update after it.
    tail = replica(start_ps, "ps-3", join=True)
    master.add_tail(tail.name, tail.address)
    assert master.publish() == []
    w0.discover()
    assert w0.push(torch.ones(N), base_version=10, samples=1).version == 11
    assert wait_until(lambda: tail.health().version == 11, timeout=10)
    assert torch.equal(tail.pull()[1], head.pull()[1])
    assert torch.equal(tail.pull()[1], B - LR * G - LR * torch.ones(N))


def test_only_the_head_of_a_live_chain_takes_a_rejoin(start_ps, ps_client, chain_master) -> None:
    first, second = replica(start_ps, "ps-0"), replica(start_ps, "ps-1")
    master = chain_master([(first.name, first.address), (second.name, second.address)])
    assert master.publish() == []
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=0, base_params=tensor_msg(INITIAL), push_id=1)
    request.buffered.add(base_version=0, count=1, gradient=tensor_msg(G), seq=1)
    with pytest.raises(grpc.RpcError) as caught:
        second.stub.Rejoin(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not the head" in caught.value.details()
    assert second.health().version == 0
    # At the head: onto the live model (it never opened a window), and down the chain.
    reply = first.stub.Rejoin(request, timeout=5)
    assert (reply.version, reply.replayed) == (1, 1)
    assert wait_until(lambda: second.health().version == 1, timeout=10)
    assert torch.equal(second.pull()[1], INITIAL - LR * G)


def test_a_rebuilt_replica_is_started_with_rebuild_on_both_runtimes() -> None:
    from trainthrough.names import PSStart
    from trainthrough.runtime import manifests
    from trainthrough.spec import parse_job

    job = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "h"},
        "spec": {"consistency": "hybrid", "parameterServer": {"replicas": 3}, "model": "mlp", "dataset": "synthetic"},
    })  # fmt: skip
    args = {start: manifests.ps_pod(job, "ps-2", start=start)["spec"]["containers"][0]["args"] for start in PSStart}
    assert "--rebuild" in args[PSStart.REBUILD] and "--join" not in args[PSStart.REBUILD]
    assert "--join" in args[PSStart.JOIN] and not {"--join", "--rebuild"} & set(args[PSStart.FRESH])
    assert PSStart.REBUILD.args == ["--rebuild"]  # what the local runtime appends too
