"""The shared-memory data path (trainthrough/shared_memory.py): a worker and a PS on one
host move tensors through a segment the worker made, negotiated over gRPC, which carries
everything else. In-process PS (real gRPC, real /dev/shm segments) and PSClient.

Covered:
- a PS that offers shared memory gets its pushes and sends its parameters through the
  worker's segment: the same exact SGD as over gRPC, float32 and bfloat16, push then
  pull in one call, a pull at the current version without parameters; the PS removes the
  segment's name once it mapped it, and nothing of either end is left in /dev/shm after;
- a PS that offers nothing, or an offer this process cannot verify (a probe it cannot
  open, a nonce that differs), is spoken to over gRPC, with the same results; so is one
  when /dev/shm has no room for the worker's segment (it fails when made, not later);
- every check of the gRPC path holds: a NaN gradient in shared memory is refused and
  counted, and nothing is applied; a retried push id is a duplicate;
- hostile regions are INVALID_ARGUMENT and change nothing: a segment name that is not one
  (a path, another file), a region past the segment's end or negative, data and shared
  both set, shared memory to a PS that takes none, a pull region of the wrong size;
- the PS copies a gradient out of the segment before it checks it: what the writer does
  to the segment afterwards changes nothing;
- a worker's copies reuse one buffer of its own, except for a call racing another of the
  same worker (fresh memory) and in a mode that keeps gradients (always fresh);
- a PS that restarted (no longer holding the segment) is answered SharedSegmentGone, and
  the worker negotiates a new segment and pushes once, applied once;
- `sweep` removes the segments of processes that are gone, and only those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from conftest import RunningPS, StartPS, rejected, tensor_msg
from trainthrough import shared_memory
from trainthrough.errors import PermanentError, SharedSegmentGone
from trainthrough.proto import ps_pb2
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.state import ParameterState
from trainthrough.shared_memory import SHM_DIR, Segment, SharedMemoryServer, WorkerSegment, shares_memory_with
from trainthrough.spec import OptimizerSpec

pytestmark = pytest.mark.skipif(not shared_memory.available(), reason="no /dev/shm on this host")

LR = 0.25  # a power of two: -LR * small integers is exact in float32
N = 12


def our_segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{shared_memory.PREFIX}{os.getpid()}-*")}


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    before = our_segments()
    yield
    assert our_segments() <= before, "segments left in /dev/shm"


def checkpoint_ps(start_ps: StartPS, tmp_path: Path, *, shared: bool = True) -> RunningPS:
    optimizer = OptimizerSpec(name="sgd", lr=LR)

    def build(core):
        store = CheckpointStore(tmp_path / "ckpt", keep=3)
        checkpointer = PeriodicCheckpointer(core, store, every_updates=1000, every_seconds=None)
        return CheckpointMode(
            core, checkpointer=checkpointer, optimizer=optimizer,
            initial_state=lambda: ParameterState(torch.zeros(N), optimizer),
        )  # fmt: skip

    ps = start_ps(build, mode="checkpoint")
    if shared:
        ps.mode.shared = SharedMemoryServer(reuse_copies=True)  # as a checkpoint PS process has it
    return ps


@pytest.fixture
def shared_ps(start_ps: StartPS, tmp_path: Path):
    ps = checkpoint_ps(start_ps, tmp_path)
    yield ps
    ps.mode.shared.close()


def transfers_through_shared_memory(ps: RunningPS, worker: str) -> bool:
    return worker in ps.mode.shared.workers


def region(segment: str, offset: int = 0, length: int = 4 * N) -> ps_pb2.SharedRegion:
    return ps_pb2.SharedRegion(segment=segment, offset=offset, length=length)


def shared_push(worker: str, push_id: int, where: ps_pb2.SharedRegion, dtype: str = "float32") -> ps_pb2.PushRequest:
    request = ps_pb2.PushRequest(worker=worker, push_id=push_id, base_version=0, samples=32)
    request.gradient.dtype = dtype
    request.gradient.shape.append(N)
    request.gradient.shared.CopyFrom(where)
    return request


# -- the path ------------------------------------------------------------------------------------


def test_pushes_and_pulls_go_through_the_workers_segment_with_the_same_sgd(shared_ps, ps_client) -> None:
    client = ps_client([shared_ps.address])
    version, params, _, _, _ = client.pull(-1)  # the first pull learns the size (gRPC)
    assert (version, torch.equal(params, torch.zeros(N))) == (0, True)

    grad = torch.arange(N, dtype=torch.float32) - 3.0
    assert client.push(grad, base_version=0, samples=32).version == 1
    assert transfers_through_shared_memory(shared_ps, client.worker)
    # The PS removed the worker's segment's name once both ends mapped it: only its probe is left.
    assert our_segments() == {shared_ps.mode.shared.offer().probe_segment}
    version, params, _, _, _ = client.pull(0)
    assert version == 1 and torch.equal(params, -LR * grad)
    assert client.pull(1).params is None  # current: no parameters

    push_id = client.push_id
    reply, pulled = client.push_and_pull(torch.full((N,), 2.0), base_version=1, samples=32)
    assert (reply.version, reply.params_version, pulled.version) == (2, 2, 2)
    assert torch.equal(pulled.params, -LR * grad - LR * 2.0)
    assert torch.equal(pulled.params, shared_ps.pull()[1])
    assert pulled.applied_pushes == {client.worker: push_id}
    # The parameters are the worker's own: the next call overwrites the region, not them.
    kept = pulled.params.clone()
    client.push(torch.ones(N), base_version=2, samples=32)
    assert torch.equal(pulled.params, kept)


def test_bfloat16_through_shared_memory_keeps_float32_master_weights(shared_ps, ps_client) -> None:
    client = ps_client([shared_ps.address], transfer_dtype="bfloat16")
    client.pull(-1)
    _, pulled = client.push_and_pull(torch.full((N,), 0.5), base_version=0, samples=32)
    assert transfers_through_shared_memory(shared_ps, client.worker)
    assert torch.equal(pulled.params, torch.full((N,), -LR * 0.5).to(torch.bfloat16).float())
    assert shared_ps.core.state.param.dtype == torch.float32


@pytest.mark.parametrize("offer", ["none", "unreachable probe", "wrong nonce"])
def test_without_an_offer_it_can_verify_the_worker_speaks_grpc(start_ps, ps_client, tmp_path, offer) -> None:
    ps = checkpoint_ps(start_ps, tmp_path, shared=offer != "none")
    if offer != "none":
        server = ps.mode.shared
        real = server.offer()
        forged = ps_pb2.SharedMemoryOffer(probe_segment=real.probe_segment, nonce=bytes(16))
        if offer == "unreachable probe":
            forged = ps_pb2.SharedMemoryOffer(probe_segment=f"trainthrough-1-{'0' * 32}", nonce=real.nonce)
        assert not shares_memory_with(forged)
        server.offer = lambda: forged  # what a PS on another host (or an impostor) offers
    client = ps_client([ps.address])
    client.pull(-1)
    grad = torch.arange(N, dtype=torch.float32)
    _, pulled = client.push_and_pull(grad, base_version=0, samples=32)
    assert torch.equal(pulled.params, -LR * grad)
    if offer != "none":
        assert not transfers_through_shared_memory(ps, client.worker)
        ps.mode.shared.close()


def test_a_worker_without_room_in_dev_shm_speaks_grpc(shared_ps, ps_client, monkeypatch) -> None:
    """A container's /dev/shm is often 64 MiB: a segment that cannot be backed fails when it
    is made (not as a SIGBUS at the first write), and the worker keeps to gRPC."""
    client = ps_client([shared_ps.address])
    client.pull(-1)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    grad = torch.arange(N, dtype=torch.float32)
    _, pulled = client.push_and_pull(grad, base_version=0, samples=32)
    assert torch.equal(pulled.params, -LR * grad)
    assert not transfers_through_shared_memory(shared_ps, client.worker)


# -- every check of every channel -----------------------------------------------------------------


def test_a_nan_gradient_in_shared_memory_is_refused_counted_and_not_applied(shared_ps, ps_client, registry) -> None:
    client = ps_client([shared_ps.address])
    client.pull(-1)
    push_id = client.push_id
    with pytest.raises(PermanentError, match="INVALID_ARGUMENT.*non-finite"):
        client.push(torch.tensor([float("nan")] * N), base_version=0, samples=32)
    assert transfers_through_shared_memory(shared_ps, client.worker)
    assert rejected(registry, "checkpoint", "non_finite") == 1
    assert shared_ps.pull()[0] == 0 and client.push_id == push_id
    # The retry of an applied push id is a duplicate, as over gRPC.
    client.push(torch.ones(N), base_version=0, samples=32)
    client.push_id -= 1
    assert client.push(torch.ones(N), base_version=1, samples=32).duplicate
    assert shared_ps.pull()[0] == 1


def test_hostile_regions_are_invalid_argument_and_change_nothing(shared_ps, ps_client, tmp_path) -> None:
    worker = WorkerSegment(4 * N)
    try:
        stub = shared_ps.stub
        other_file = tmp_path / "secret"
        other_file.write_bytes(b"\0" * 4 * N)
        cases = {
            "a path": shared_push("worker-0", 1, region(f"../..{other_file}")),
            "a file that is no segment": shared_push("worker-0", 2, region("passwd")),
            "past the end": shared_push("worker-0", 3, region(worker.segment.name, offset=4 * N + 8)),
            "negative": shared_push("worker-0", 4, region(worker.segment.name, offset=-4)),
            "too short for the shape": shared_push("worker-0", 5, region(worker.segment.name, length=4 * N - 4)),
        }
        both = shared_push("worker-0", 6, region(worker.segment.name))
        both.gradient.data = bytes(4 * N)
        cases["data and shared"] = both
        wrong_pull = shared_push("worker-0", 7, region(worker.segment.name))
        wrong_pull.pull_dtype = "float32"
        wrong_pull.pull_into.CopyFrom(region(worker.segment.name, offset=4 * N, length=8))
        cases["a pull region of the wrong size"] = wrong_pull
        for what, request in cases.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.Push(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert shared_ps.pull()[0] == 0, what  # a push with a bad pull region is not applied either
        assert torch.equal(shared_ps.pull()[1], torch.zeros(N))
    finally:
        worker.close()


def test_shared_memory_to_a_ps_that_takes_none_is_invalid_argument(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path, shared=False)
    worker = WorkerSegment(4 * N)
    try:
        for call in (
            lambda: ps.stub.Push(shared_push("worker-0", 1, worker.gradient), timeout=5),
            lambda: ps.stub.Pull(ps_pb2.PullRequest(worker="worker-0", have_version=-1, into=worker.params), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "shared memory" in caught.value.details()
        assert ps.pull()[0] == 0
    finally:
        worker.close()


def test_the_ps_checks_and_applies_its_own_copy_of_the_gradient(shared_ps) -> None:
    worker = WorkerSegment(4 * N)
    try:
        header = ps_pb2.Tensor()
        worker.write_gradient(header, torch.ones(N), "float32")
        with shared_ps.mode.shared.copy_out("worker-0", header, "gradient") as copy:
            worker.segment.view[: 4 * N] = tensor_msg(torch.full((N,), float("nan"))).data  # the writer goes on
            assert torch.equal(torch.frombuffer(copy, dtype=torch.float32), torch.ones(N))
    finally:
        worker.close()


@pytest.mark.parametrize("reuse", [True, False])
def test_a_workers_gradients_are_copied_into_one_buffer_unless_a_call_still_holds_it_or_the_mode_keeps_them(reuse: bool) -> None:
    shared = SharedMemoryServer(reuse_copies=reuse)  # False: a chain's PS (its log keeps each gradient)
    worker = WorkerSegment(4 * N)
    try:
        header = ps_pb2.Tensor()
        worker.write_gradient(header, torch.ones(N), "float32")
        with shared.copy_out("worker-0", header, "gradient") as first:
            address = torch.frombuffer(first, dtype=torch.uint8).data_ptr()
            # A retry racing the call it retries (the first still holds the buffer): fresh memory.
            with shared.copy_out("worker-0", header, "gradient") as racing:
                assert torch.frombuffer(racing, dtype=torch.uint8).data_ptr() != address
        worker.write_gradient(header, torch.full((N,), 2.0), "float32")
        with shared.copy_out("worker-0", header, "gradient") as second:
            assert (torch.frombuffer(second, dtype=torch.uint8).data_ptr() == address) == reuse  # its next push: the same buffer
            assert torch.equal(torch.frombuffer(second, dtype=torch.float32), torch.full((N,), 2.0))
    finally:
        worker.close()
        shared.close()


def test_a_restarted_ps_gets_a_new_segment_and_the_push_is_applied_once(shared_ps, ps_client) -> None:
    client = ps_client([shared_ps.address])
    client.pull(-1)
    client.push(torch.ones(N), base_version=0, samples=32)
    first = shared_ps.mode.shared.segment_of(client.worker)
    # What a restarted PS holds: no mapping, and the segment's name long gone.
    shared_ps.mode.shared.close()
    shared_ps.mode.shared = SharedMemoryServer()
    worker = WorkerSegment(4 * N)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            shared_ps.stub.Push(shared_push("worker-9", 1, region(first)), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details().startswith(SharedSegmentGone.__name__)
    finally:
        worker.close()
    assert client.push(torch.ones(N), base_version=1, samples=32).version == 2  # once, not twice
    assert shared_ps.mode.shared.segment_of(client.worker) not in (None, first)
    assert torch.equal(shared_ps.pull()[1], torch.full((N,), -2 * LR))


# -- leftovers -------------------------------------------------------------------------------------


def test_sweep_removes_the_segments_of_processes_that_are_gone_and_only_those() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = SHM_DIR / f"{shared_memory.PREFIX}{int(gone.stdout)}-{'a' * 32}"
    dead.write_bytes(b"x")
    mine = Segment.create(8)
    try:
        assert shared_memory.sweep() >= 1
        assert not dead.exists() and (SHM_DIR / mine.name).exists()
    finally:
        dead.unlink(missing_ok=True)
        mine.unlink()
        mine.close()
