"""A parameter server against hostile and malformed requests: every one is refused with a
clear, bounded status, changes nothing, and leaves the PS able to serve.

Classes covered (issue 12):
- bytes that do not parse, on every RPC: INVALID_ARGUMENT, never INTERNAL;
- an error that quotes a huge input: the details stay bounded (no RESOURCE_EXHAUSTED);
- counters at and past the int64 edges (versions, push ids, steps, samples, epochs);
- progress reports: only worker names, accuracies in [0, 1], finite losses; the master
  judges the job on its own members' reports only;
- finite but explosive gradients: refused before they leave a non-finite parameter;
- sizes declared before data (InstallState, rejoin buffers): bounded by the model;
- chain acceptance: sender, epoch, record fields (the property test is test_chain_property.py);
- stalled streams: Health keeps answering, a stalled stream is cancelled, extra streams
  are refused at once.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from conftest import RunningPS, StartPS, rejected, tensor_msg, wait_until
from trainthrough import wire
from trainthrough.control.messages import Health, WorkerReport
from trainthrough.proto import ps_pb2
from trainthrough.ps import service
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.state import ParameterState
from trainthrough.ps.stateless import StatelessMode
from trainthrough.spec import OptimizerSpec, StatelessSpec

N = 16
INT64_MAX = 2**63 - 1
SGD = OptimizerSpec(name="sgd", lr=0.25)
INITIAL = torch.linspace(-1, 1, N)
SERVICE = "/trainthrough.v1alpha1.ParameterServer/"


def checkpoint_ps(start_ps: StartPS, tmp_path: Path, optimizer: OptimizerSpec = SGD, **core_args) -> RunningPS:
    def build(core):
        checkpointer = PeriodicCheckpointer(core, CheckpointStore(tmp_path / "ckpt"), every_updates=1000, every_seconds=None)
        return CheckpointMode(core, checkpointer=checkpointer, optimizer=optimizer,
                              initial_state=lambda: ParameterState(INITIAL.clone(), optimizer))  # fmt: skip

    return start_ps(build, **core_args)


def stateless_ps(start_ps: StartPS) -> RunningPS:
    def build(core):
        return StatelessMode(
            core, spec=StatelessSpec(rejoin_timeout="200ms", max_buffered=4), optimizer=SGD,
            initial_state=lambda: ParameterState(INITIAL.clone(), SGD), numel=N, fallback=None,
        )  # fmt: skip

    return start_ps(build, mode="stateless")


def push(ps: RunningPS, push_id: int, gradient: torch.Tensor, **fields) -> ps_pb2.PushReply:
    fields.setdefault("worker", "worker-0")
    request = ps_pb2.PushRequest(push_id=push_id, base_version=0, gradient=tensor_msg(gradient), samples=1, **fields)
    return ps.stub.Push(request, timeout=5)


def refused(call, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def serves(ps: RunningPS) -> None:
    """The PS answers Health, Pull and a well-formed push, with every value finite."""
    assert ps.health().state == "serving"
    version, params = ps.pull()
    assert torch.isfinite(params).all()
    push_id = time.time_ns() // 1000
    assert push(ps, push_id, torch.ones(N)).version == version + 1


# -- bytes that do not parse, details that stay bounded -----------------------------------------

UNARY = ["Pull", "Push", "Health", "ReportProgress", "Reconfigure", "Rejoin"]
STREAMS = ["PushStream", "Replicate", "InstallState", "RejoinStream"]
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length far past the end


@pytest.mark.parametrize("method", UNARY + STREAMS)
def test_bytes_that_do_not_parse_are_invalid_argument_on_every_rpc(start_ps, tmp_path, method) -> None:
    # Each on a mode that serves it (another mode answers UNIMPLEMENTED before reading).
    if method in ("Replicate", "InstallState", "Reconfigure"):
        ps = replica(start_ps, "ps-0")
        configure(ps, 1, "ps-0")
    elif method in ("Rejoin", "RejoinStream"):
        ps = stateless_ps(start_ps)
    else:
        ps = checkpoint_ps(start_ps, tmp_path)
    if method in STREAMS:
        call = ps.channel.stream_unary(SERVICE + method)
        details = refused(lambda: call(iter([GARBAGE]), timeout=5))
    else:
        call = ps.channel.unary_unary(SERVICE + method)
        details = refused(lambda: call(GARBAGE, timeout=5))
    assert "does not parse" in details
    if method not in ("Rejoin", "RejoinStream"):  # a stateless PS serves once a worker rejoined
        serves(ps)


def test_an_error_quoting_a_huge_input_keeps_its_details_bounded(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    gradient = tensor_msg(torch.ones(N))
    gradient.dtype = "x" * 100_000
    request = ps_pb2.PushRequest(worker="worker-0", push_id=1, gradient=gradient, samples=1)
    details = refused(lambda: ps.stub.Push(request, timeout=5))
    assert "dtype" in details and len(details) <= service.MAX_DETAILS
    details = refused(lambda: push(ps, 1, torch.ones(N), worker="w" * 100_000))
    assert "is not a worker name" in details and len(details) <= service.MAX_DETAILS
    serves(ps)


# -- counters at the edges ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value"),
    [("push_id", INT64_MAX), ("push_id", 0), ("push_id", -5), ("base_version", INT64_MAX), ("base_version", -2),
     ("samples", -1), ("samples", INT64_MAX)],
)  # fmt: skip
def test_push_counters_out_of_range_are_refused_and_change_nothing(start_ps, tmp_path, registry, field, value) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    fields = {"push_id": 7, "base_version": 0, "samples": 1} | {field: value}
    request = ps_pb2.PushRequest(worker="worker-0", gradient=tensor_msg(torch.ones(N)), **fields)
    assert field in refused(lambda: ps.stub.Push(request, timeout=5))
    assert ps.health().version == 0 and rejected(registry, "checkpoint", "field") == 1
    # The worker is not silenced: its next genuine push id is applied.
    assert not push(ps, 8, torch.ones(N)).duplicate
    serves(ps)


def test_a_pull_with_an_absurd_version_is_refused(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    for have in (-2, INT64_MAX):
        assert "have_version" in refused(lambda: ps.stub.Pull(ps_pb2.PullRequest(have_version=have), timeout=5))
    serves(ps)


def test_a_rejoin_with_an_extreme_base_version_cannot_brick_a_stateless_ps(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps)
    for version in (INT64_MAX, 2**62 + 1, -7):
        request = ps_pb2.RejoinRequest(worker="worker-0", base_version=version, base_params=tensor_msg(INITIAL), push_id=1)
        assert "base_version" in refused(lambda: ps.stub.Rejoin(request, timeout=5))
    bad_table = ps_pb2.RejoinRequest(worker="worker-0", base_version=3, base_params=tensor_msg(INITIAL), push_id=1,
                                     base_applied_pushes={"worker-0": INT64_MAX})  # fmt: skip
    assert "base_applied_pushes" in refused(lambda: ps.stub.Rejoin(bad_table, timeout=5))
    entry = ps_pb2.BufferedGradient(base_version=0, count=INT64_MAX + 0, gradient=tensor_msg(torch.ones(N)), seq=1)
    too_many = ps_pb2.RejoinRequest(worker="worker-0", base_version=-1, push_id=1, buffered=[entry])
    assert "count" in refused(lambda: ps.stub.Rejoin(too_many, timeout=5))
    # A genuine rejoin seeds it, and it serves from there.
    good = ps_pb2.RejoinRequest(worker="worker-0", base_version=3, base_params=tensor_msg(INITIAL), push_id=1)
    assert ps.stub.Rejoin(good, timeout=15).version == 3
    assert wait_until(lambda: ps.health().state == "serving", timeout=10)
    assert push(ps, 2, torch.ones(N)).version == 4
    assert ps.health().version == 4 and ps.pull()[0] == 4


def test_a_rejoin_may_not_declare_more_buffered_gradients_than_a_worker_keeps(start_ps) -> None:
    ps = stateless_ps(start_ps)
    entries = [ps_pb2.BufferedGradient(base_version=0, count=1, seq=i, gradient=tensor_msg(torch.ones(N))) for i in range(5)]
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=-1, push_id=1, buffered=entries)
    assert "at most 4" in refused(lambda: ps.stub.Rejoin(request, timeout=5))


# -- progress reports ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "report",
    [dict(worker="intruder", accuracy=1.0), dict(worker="worker-64", accuracy=1.0), dict(worker="worker-01", accuracy=1.0),
     dict(accuracy=math.nan), dict(accuracy=math.inf), dict(accuracy=1.5), dict(accuracy=-0.5), dict(loss=math.nan),
     dict(loss=-3.0), dict(steps=-1), dict(steps=INT64_MAX), dict(lost_updates=-1), dict(idle_seconds=-1.0),
     dict(idle_seconds=math.nan), dict(idle_seconds=math.inf)],
)  # fmt: skip
def test_a_progress_report_that_cannot_be_true_is_refused(start_ps, tmp_path, report) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    message = ps_pb2.ProgressReport(**({"worker": "worker-0", "steps": 5, "accuracy": 0.5, "loss": 0.3} | report))
    refused(lambda: ps.stub.ReportProgress(message, timeout=5))
    health = ps.health()
    assert health.accuracy == -1 and health.worker_steps == 0 and not health.workers


def test_the_master_judges_progress_on_its_own_workers_only() -> None:
    reports = (
        WorkerReport("worker-0", steps=40, accuracy=0.12, evaluation=1),
        WorkerReport("worker-1", steps=30, accuracy=0.10, evaluation=2),
        WorkerReport("worker-7", steps=10**9, accuracy=1.0, lost_updates=10**6, evaluation=3),  # scaled away, or not a member
    )
    reports = tuple(
        WorkerReport(r.worker, r.steps, r.accuracy, r.lost_updates, r.evaluation, idle_seconds=i) for r, i in zip(reports, (0.5, 0.25, 99.0))
    )  # fmt: skip
    health = Health("ps-0", "serving", 70, 0, 70, "seed", 1.0, 2.0, reports)
    progress = health.progress_of(["worker-0", "worker-1"])
    assert (progress.steps, progress.accuracy, progress.lost_updates, progress.idle_seconds) == (70, 0.10, 0, 0.75)
    assert health.progress_of([]).accuracy == -1


def test_health_lists_each_workers_latest_report(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path)
    for worker, steps, accuracy, idle in [("worker-0", 5, 0.2, 0.5), ("worker-1", 7, 0.3, 0.0), ("worker-0", 9, -1.0, 1.25)]:
        report = ps_pb2.ProgressReport(worker=worker, steps=steps, accuracy=accuracy, loss=0.5, idle_seconds=idle)
        ps.stub.ReportProgress(report, timeout=5)
    listed = {w.worker: (w.steps, round(w.accuracy, 6), w.evaluation, w.idle_seconds) for w in ps.health().workers}
    assert listed == {"worker-0": (9, 0.2, 1, 1.25), "worker-1": (7, 0.3, 2, 0.0)}


# -- explosive gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [SGD, OptimizerSpec(name="sgd", lr=0.25, momentum=0.9), OptimizerSpec(name="adam", lr=0.01)])
def test_a_finite_but_explosive_gradient_never_leaves_a_non_finite_parameter(start_ps, tmp_path, registry, optimizer) -> None:
    ps = checkpoint_ps(start_ps, tmp_path, optimizer)
    accepted = refusals = 0
    for push_id in range(1, 30):
        try:
            push(ps, push_id, torch.full((N,), 3e38))
            accepted += 1
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "non-finite" in error.details()
            refusals += 1
        version, params = ps.pull()
        assert version == accepted and torch.isfinite(params).all()
    assert refusals and rejected(registry, "checkpoint", "non_finite") == refusals
    assert all(torch.isfinite(t).all() for _, t in ps.core.state.tensors())
    serves(ps)


def test_a_moderate_gradient_takes_the_same_step_either_way() -> None:
    """The checked path (a copy first) and the direct one give the same bytes."""
    for optimizer in (OptimizerSpec(name="sgd", lr=0.5, momentum=0.5), OptimizerSpec(name="adam", lr=2.0)):
        direct, checked = ParameterState(INITIAL, optimizer), ParameterState(INITIAL, optimizer)
        for i in range(3):
            gradient = torch.randn(N, generator=torch.Generator().manual_seed(i))
            direct.optimizer.step([gradient])
            checked.apply(gradient)  # lr 2 is above 1: the checked path
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(direct.tensors(), checked.tensors()))


# -- chain: acceptance, sizes declared before data --------------------------------------------------

def replica(start_ps: StartPS, name: str, join: bool = False) -> RunningPS:
    def build(core):
        return ChainReplica(core, ack="tail", replicate_every=1, optimizer=SGD, join=join, numel=N,
                            initial_state=lambda: ParameterState(INITIAL.clone(), SGD))  # fmt: skip

    return start_ps(build, name=name, mode="chain")


def configure(ps: RunningPS, epoch: int, *members: str) -> None:
    config = ps_pb2.ChainConfig(epoch=epoch, members=[ps_pb2.ChainMember(name=m, address=f"127.0.0.1:{1 + i}") for i, m in enumerate(members)])
    for member in config.members:
        if member.name == ps.name:
            member.address = ps.address
    ps.stub.Reconfigure(config, timeout=5)


def replicate(ps: RunningPS, epoch: int, sender: str, seq: int = 1, **record) -> ps_pb2.ReplicateReply:
    request = ps_pb2.ReplicateRequest(epoch=epoch, sender=sender)
    message = request.records.add(seq=seq, workers=record.get("workers", ["worker-0"]), push_ids=record.get("push_ids", [1]))
    wire.fill_bytes(message.gradient, b"", [N])
    return ps.framed.replicate(iter([wire.Framed(ps_pb2.ReplicateChunk(request=request), torch.ones(N).numpy().tobytes())]), timeout=5)


def test_a_replica_takes_records_only_from_its_predecessor_in_the_epoch_it_holds(start_ps) -> None:
    tail = replica(start_ps, "ps-2")
    configure(tail, 3, "ps-0", "ps-1", "ps-2")
    before = ps_pb2_state(tail)
    assert "predecessor of ps-2 in epoch 3 is ps-1" in refused(lambda: replicate(tail, 3, "ps-0"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "predecessor" in refused(lambda: replicate(tail, 3, ""), grpc.StatusCode.FAILED_PRECONDITION)
    assert "epoch 2" in refused(lambda: replicate(tail, 2, "ps-1"), grpc.StatusCode.UNAVAILABLE)  # stale
    assert "holds epoch 3" in refused(lambda: replicate(tail, 4, "ps-1"), grpc.StatusCode.UNAVAILABLE)  # never published
    assert "push_ids" in refused(lambda: replicate(tail, 3, "ps-1", workers=["worker-0"], push_ids=[INT64_MAX]))
    assert "2 push ids" in refused(lambda: replicate(tail, 3, "ps-1", workers=["worker-0"], push_ids=[1, 2]))
    assert "seq" in refused(lambda: replicate(tail, 3, "ps-1", seq=0))
    assert ps_pb2_state(tail) == before  # nothing of the refused records was applied
    assert replicate(tail, 3, "ps-1").applied_seq == 1
    # The head has no predecessor: it takes no records at all.
    head = replica(start_ps, "ps-0")
    configure(head, 3, "ps-0")
    assert "no predecessor" in refused(lambda: replicate(head, 3, "ps-1"), grpc.StatusCode.FAILED_PRECONDITION)


def ps_pb2_state(ps: RunningPS) -> tuple[int, bytes]:
    version, params = ps.pull()
    return version, params.numpy().tobytes()


def state_stream(state: ParameterState, *, epoch: int = 1, sender: str = "ps-0", total_bytes: int | None = None):
    encoded = state.encode()
    header = ps_pb2.StateHeader(seq=state.seq, total_bytes=encoded.nbytes if total_bytes is None else total_bytes, epoch=epoch, sender=sender)
    return wire.chunk_stream(ps_pb2.StateChunk(header=header), encoded.chunks())


def test_a_transferred_state_must_fit_the_model_be_finite_and_in_range(start_ps) -> None:
    joiner = replica(start_ps, "ps-1", join=True)
    configure(joiner, 1, "ps-0", "ps-1")
    wrong_size = ParameterState(torch.zeros(N + 1), SGD, version=5)
    non_finite = ParameterState(torch.full((N,), math.inf), SGD, version=5)
    absurd = ParameterState(torch.zeros(N), SGD, version=2**62 + 1)
    absurd.seq = 5
    cases = {
        "the model has 16": state_stream(wrong_size),
        "non-finite": state_stream(non_finite),
        "state.version": state_stream(absurd),
        "at most": state_stream(ParameterState(torch.zeros(N), SGD, version=5), total_bytes=1 << 40),  # 1 TB declared
    }
    for expected, stream in cases.items():
        assert expected in refused(lambda: joiner.framed.install_state(stream, timeout=10)), expected
    assert "predecessor" in refused(lambda: joiner.framed.install_state(state_stream(wrong_size, sender="ps-7"), timeout=10),
                                    grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
    assert joiner.core.state is None and joiner.health().state == "joining"
    good = ParameterState(torch.zeros(N), SGD, version=5)
    assert joiner.framed.install_state(state_stream(good), timeout=10).applied_seq == 5


def test_a_configuration_the_master_cannot_have_published_is_refused(start_ps) -> None:
    ps = replica(start_ps, "ps-0")
    bad = {
        "epoch": ps_pb2.ChainConfig(epoch=INT64_MAX, members=[ps_pb2.ChainMember(name="ps-0", address=ps.address)]),
        "members: 0": ps_pb2.ChainConfig(epoch=2),
        "distinct PS name": ps_pb2.ChainConfig(epoch=2, members=[ps_pb2.ChainMember(name="ps-0", address="a"), ps_pb2.ChainMember(name="ps-0", address="b")]),
        "address": ps_pb2.ChainConfig(epoch=2, members=[ps_pb2.ChainMember(name="ps-0", address="")]),
    }  # fmt: skip
    for expected, config in bad.items():
        assert expected in refused(lambda: ps.stub.Reconfigure(config, timeout=5)), expected
    assert ps.health().chain.epoch == -1


# -- stalled streams -------------------------------------------------------------------------------

def test_stalled_streams_cannot_starve_health_and_are_cancelled(start_ps, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(service, "STREAM_IDLE_TIMEOUT", 1.0)
    ps = checkpoint_ps(start_ps, tmp_path)
    release = threading.Event()

    def stalled():
        header = ps_pb2.PushRequest(worker="worker-0", push_id=1, gradient=ps_pb2.Tensor(dtype="float32", shape=[N]), samples=1)
        yield wire.Framed(ps_pb2.PushChunk(request=header))
        release.wait(30)  # sends nothing more

    limit = (16 - service.UNARY_RESERVE) // 2  # start_ps serves with 16 threads; one host takes half
    outcomes: list[grpc.StatusCode] = []

    def open_stream() -> None:
        try:
            ps.framed.push_stream(stalled(), timeout=30)
        except grpc.RpcError as error:
            outcomes.append(error.code())

    threads = [threading.Thread(target=open_stream) for _ in range(limit + 4)]
    for thread in threads:
        thread.start()
    try:
        # Every stream slot is taken by a stalled stream; Health still answers at once.
        for _ in range(10):
            assert ps.health(timeout=1.0).state == "serving"
        # The streams beyond the limit were refused at once; the stalled ones are cancelled.
        assert wait_until(lambda: len(outcomes) == len(threads), timeout=15)
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4
        assert set(outcomes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert ps.health().version == 0  # nothing of them was applied
    serves(ps)


def test_a_stream_received_whole_may_wait_for_its_round_past_the_idle_timeout(start_ps, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(service, "STREAM_IDLE_TIMEOUT", 0.5)
    ps = checkpoint_ps(start_ps, tmp_path, updates="sync", expected_workers=2, sync_timeout=2.0)
    header = ps_pb2.PushRequest(worker="worker-0", push_id=1, gradient=ps_pb2.Tensor(dtype="float32", shape=[N]), samples=1)
    chunks = wire.chunk_stream(ps_pb2.PushChunk(request=header), [torch.ones(N).numpy().tobytes()])
    # The other worker never pushes: the round closes after 2 s with this push alone.
    assert ps.framed.push_stream(chunks, timeout=10).version == 1
