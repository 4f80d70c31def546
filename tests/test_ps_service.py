"""Integration tests of the parameter server's gRPC service in checkpoint mode (in-process
servers on 127.0.0.1 port 0, real gRPC through PSClient and raw stubs).

Aspects covered:
- push then pull: the SGD update is applied exactly (params = -lr * grad), the version
  increments, a pull at the current version carries no parameters; bfloat16 gradients work;
- bad input (wrong shape, unknown dtype, truncated bytes, NaN, Inf) is INVALID_ARGUMENT whose
  details name the problem; parameters and version stay unchanged, the PS keeps serving, and
  the rejected-pushes counter counts each by reason; PSClient raises PermanentError and keeps
  its push id;
- a 50-million-parameter model (200 MB) pushes and pulls through gRPC, above the 4 MB default;
- a duplicate push (same worker, same push id) is acknowledged with duplicate=True, not applied
  twice, and older push ids are duplicates too;
- sync updates: two workers' pushes from threads become one averaged update; a round with a
  missing worker closes after sync_timeout with what arrived; a retry while the round is still
  open waits for that round and is a duplicate; a retry after it closed is a duplicate;
- Health reports name, mode, state serving, version, updates since start, restored_from and the
  incarnation that Pull and Push also carry;
- checkpoint restart: a new PS on the same directory restores the newest checkpoint, with a new
  incarnation, and the checkpoint_written event is in the event log; a torn newest checkpoint
  is skipped for the one before it (checkpoint_invalid event);
- a retry of a push in a full round that is still being applied waits for that round;
- workers.transferDtype bfloat16: the PS keeps float32 master weights; a pull in an unknown
  dtype is INVALID_ARGUMENT;
- above a size, pushes and pulls stream in chunks with the same result as one message; a
  stream cut short, with a split element, too long, with a NaN or without its request is
  INVALID_ARGUMENT and applies nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from conftest import TRAININGJOB, RunningPS, StartPS, rejected, tensor_msg, wait_until
from trainthrough.errors import PermanentError
from trainthrough.events import read_events
from trainthrough.proto import ps_pb2
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec

LR = 0.25  # a power of two: -LR * small integers is exact in float32
N = 10


def checkpoint_ps(
    start_ps: StartPS,
    ckpt_dir: Path,
    *,
    init: torch.Tensor | None = None,
    lr: float = LR,
    every_updates: int = 1000,
    **core_args,
) -> RunningPS:
    optimizer = OptimizerSpec(name="sgd", lr=lr)
    initial = torch.zeros(N) if init is None else init

    def build(core):
        store = CheckpointStore(ckpt_dir, keep=3)
        checkpointer = PeriodicCheckpointer(core, store, every_updates=every_updates, every_seconds=None)
        return CheckpointMode(
            core,
            checkpointer=checkpointer,
            optimizer=optimizer,
            initial_state=lambda: ParameterState(initial.clone(), optimizer),
        )

    return start_ps(build, mode="checkpoint", **core_args)


def push_request(worker: str, push_id: int, gradient: ps_pb2.Tensor, base_version: int = 0) -> ps_pb2.PushRequest:
    return ps_pb2.PushRequest(worker=worker, push_id=push_id, base_version=base_version, gradient=gradient, samples=32)


# -- push / pull -----------------------------------------------------------------------------


def test_push_then_pull_applies_sgd_exactly(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    client = ps_client([ps.address])
    version, params, incarnation, _, _ = client.pull(-1)
    assert version == 0
    assert torch.equal(params, torch.zeros(N))

    grad = torch.arange(N, dtype=torch.float32) - 3.0
    reply = client.push(grad, base_version=0, samples=32)
    assert reply.version == 1 and not reply.duplicate
    assert reply.incarnation == incarnation

    version, params, _, _, _ = client.pull(-1)
    assert version == 1
    assert torch.equal(params, -LR * grad)

    grad2 = torch.full((N,), 2.0)
    assert client.push(grad2, base_version=1, samples=32).version == 2
    version, params, _, _, _ = client.pull(1)
    assert version == 2
    assert torch.equal(params, -LR * grad - LR * grad2)
    # Already current: the reply carries the version but no parameters.
    version, params, _, _, _ = client.pull(2)
    assert version == 2 and params is None


def test_push_and_pull_gets_the_parameters_after_the_push_in_the_same_call(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    client = ps_client([ps.address])
    _, _, incarnation, _, _ = client.pull(-1)
    grad = torch.arange(N, dtype=torch.float32) - 3.0
    push_id = client.push_id
    reply, pulled = client.push_and_pull(grad, base_version=0, samples=32)
    assert (reply.version, reply.duplicate, reply.params_version) == (1, False, 1)
    version, params, pulled_incarnation, applied, started = pulled
    assert version == 1 and pulled_incarnation == incarnation
    assert applied == {client.worker: push_id}  # the parameters hold this push, and say so
    assert started == -1  # the state this PS started from held no push of this worker
    assert torch.equal(params, -LR * grad) and torch.equal(params, client.pull(-1)[1])
    assert client.push_id == push_id + 1  # one push, acknowledged

    # In bfloat16 when the worker transfers in bfloat16; the master weights stay float32.
    half = ps_client([ps.address], "worker-1", transfer_dtype="bfloat16")
    half.pull(-1)
    _, (version, params, _, _, _) = half.push_and_pull(torch.full((N,), 0.5), base_version=1, samples=32)
    assert version == 2 and torch.equal(params, ps.pull()[1].to(torch.bfloat16).float())


def test_a_push_asking_for_parameters_in_an_unknown_dtype_applies_nothing(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    request = push_request("worker-0", 1, tensor_msg(GOOD))
    request.pull_dtype = "float16"
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Push(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pull_dtype: must be one of" in caught.value.details()
    streamed = push_request("worker-0", 1, ps_pb2.Tensor(dtype="float32", shape=[N]))
    streamed.pull_dtype = "float32"
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.PushStream(iter([ps_pb2.PushChunk(request=streamed, data=tensor_msg(GOOD).data)]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pull a streamed model with PullStream" in caught.value.details()
    assert ps.pull()[0] == 0  # nothing applied


def test_bfloat16_gradient_is_accepted(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    grad = torch.tensor([1.0, -2.0, 0.5, 4.0, 0, 0, 0, 0, 0, 8.0])  # exact in bfloat16
    reply = ps.stub.Push(push_request("worker-0", 1, tensor_msg(grad, "bfloat16")), timeout=5)
    assert reply.version == 1
    _, params = ps.pull()
    assert torch.equal(params, -LR * grad)


GOOD = torch.ones(N)

BAD_PUSHES = [
    pytest.param(tensor_msg(torch.ones(N - 1)), "gradient.shape", "shape", id="wrong-shape"),
    pytest.param(
        ps_pb2.Tensor(dtype="float64", shape=[N], data=torch.ones(N, dtype=torch.float64).numpy().tobytes()),
        "gradient.dtype",
        "dtype",
        id="wrong-dtype",
    ),
    pytest.param(
        ps_pb2.Tensor(dtype="float32", shape=[N], data=tensor_msg(GOOD).data[:-3]),
        "gradient.data",
        "length",
        id="truncated-bytes",
    ),
    pytest.param(tensor_msg(torch.tensor([1.0] * (N - 1) + [float("nan")])), "non-finite", "non_finite", id="nan"),
    pytest.param(tensor_msg(torch.tensor([float("-inf")] + [1.0] * (N - 1))), "non-finite", "non_finite", id="inf"),
]


@pytest.mark.parametrize("gradient, named, reason", BAD_PUSHES)
def test_bad_push_is_invalid_argument_and_changes_nothing(
    start_ps, registry, tmp_path, gradient, named, reason
) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", init=torch.linspace(-1, 1, N))
    first = ps.stub.Push(push_request("worker-0", 1, tensor_msg(torch.full((N,), 4.0))), timeout=5)
    assert first.version == 1
    version_before, params_before = ps.pull()

    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Push(push_request("worker-0", 2, gradient, base_version=1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("Push: ")
    assert named in caught.value.details()

    version_after, params_after = ps.pull()
    assert version_after == version_before == 1
    assert torch.equal(params_after, params_before)
    assert rejected(registry, "checkpoint", reason) == 1.0
    assert sum(rejected(registry, "checkpoint", r) for r in ("shape", "dtype", "length", "non_finite", "other")) == 1.0

    # The PS keeps serving: the same push id, now well-formed, is applied (the bad one
    # was never recorded as applied).
    reply = ps.stub.Push(push_request("worker-0", 2, tensor_msg(GOOD), base_version=1), timeout=5)
    assert reply.version == 2 and not reply.duplicate
    version, params = ps.pull()
    assert version == 2
    assert torch.equal(params, params_before - LR * GOOD)


def test_rejected_counter_counts_each_reason(start_ps, registry, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    for i, case in enumerate(BAD_PUSHES):
        gradient = case.values[0]
        with pytest.raises(grpc.RpcError) as caught:
            ps.stub.Push(push_request("worker-0", i + 1, gradient), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected(registry, "checkpoint", "shape") == 1
    assert rejected(registry, "checkpoint", "dtype") == 1
    assert rejected(registry, "checkpoint", "length") == 1
    assert rejected(registry, "checkpoint", "non_finite") == 2
    assert ps.health().version == 0
    assert registry.get_sample_value(
        "trainthrough_ps_updates_applied_total", {"trainingjob": TRAININGJOB, "mode": "checkpoint", "role": "standalone"}
    ) in (None, 0.0)


def test_psclient_raises_permanent_error_on_invalid_argument(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    client = ps_client([ps.address])
    push_id = client.push_id
    with pytest.raises(PermanentError, match="INVALID_ARGUMENT"):
        client.push(torch.ones(N + 1), base_version=0, samples=1)
    assert client.push_id == push_id  # not acknowledged, so the id is not used up
    assert client.push(torch.ones(N), base_version=0, samples=1).version == 1


# A 50-million-parameter model: 200 MB of float32 per message, far above gRPC's 4 MB
# default limit. One push and one pull only, to stay well under ~20 s on 2 cores.
def test_large_model_pushes_and_pulls_through_grpc(start_ps, ps_client, tmp_path) -> None:
    numel = 50_000_000
    optimizer = OptimizerSpec(name="sgd", lr=LR)

    def build(core):
        store = CheckpointStore(tmp_path / "ckpt", keep=1)
        # No checkpoint during the test (every_updates is far away).
        checkpointer = PeriodicCheckpointer(core, store, every_updates=10**9, every_seconds=None)
        return CheckpointMode(
            core,
            checkpointer=checkpointer,
            optimizer=optimizer,
            initial_state=lambda: ParameterState(torch.zeros(numel), optimizer),
        )

    ps = start_ps(build)
    client = ps_client([ps.address], call_timeout=60.0)
    grad = torch.ones(numel)
    grad[::1000] = -4.0
    assert client.push(grad, base_version=0, samples=1).version == 1
    del grad
    version, params, _, _, _ = client.pull(-1)
    assert version == 1
    assert params is not None and params.numel() == numel
    assert params[0].item() == LR * 4.0
    assert params[1].item() == -LR
    assert params[999_001].item() == -LR and params[999_000].item() == LR * 4.0
    assert float(params.sum()) == pytest.approx(-LR * (numel - 5 * (numel // 1000)), rel=1e-6)


# -- duplicates ------------------------------------------------------------------------------


def test_duplicate_push_is_acknowledged_and_not_applied_twice(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    grad = tensor_msg(torch.full((N,), 2.0))
    first = ps.stub.Push(push_request("worker-0", 5, grad), timeout=5)
    assert first.version == 1 and not first.duplicate

    retry = ps.stub.Push(push_request("worker-0", 5, grad), timeout=5)
    assert retry.duplicate
    assert retry.version == 1
    older = ps.stub.Push(push_request("worker-0", 4, grad), timeout=5)
    assert older.duplicate and older.version == 1
    version, params = ps.pull()
    assert version == 1
    assert torch.equal(params, torch.full((N,), -LR * 2.0))

    # Push ids are per worker: another worker's id 5 is new.
    other = ps.stub.Push(push_request("worker-1", 5, grad), timeout=5)
    assert other.version == 2 and not other.duplicate
    nxt = ps.stub.Push(push_request("worker-0", 6, grad), timeout=5)
    assert nxt.version == 3 and not nxt.duplicate
    assert ps.pull()[0] == 3


# -- sync updates ----------------------------------------------------------------------------


def test_sync_round_averages_two_workers(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", updates="sync", expected_workers=2, sync_timeout=10.0)
    grads = {"worker-0": torch.full((N,), 2.0), "worker-1": torch.arange(N, dtype=torch.float32) * 2}
    replies: dict[str, ps_pb2.PushReply] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def push(worker: str) -> None:
        try:
            client = ps_client([ps.address], worker)
            start.wait(5)
            replies[worker] = client.push(grads[worker], base_version=0, samples=32)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=push, args=(w,)) for w in grads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not errors
    assert {w: (r.version, r.duplicate) for w, r in replies.items()} == {"worker-0": (1, False), "worker-1": (1, False)}

    version, params = ps.pull()
    assert version == 1  # one averaged update, not two
    mean = (grads["worker-0"] + grads["worker-1"]) / 2
    assert torch.equal(params, -LR * mean)


def test_sync_round_with_missing_worker_closes_after_timeout(start_ps, ps_client, tmp_path) -> None:
    sync_timeout = 0.3
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", updates="sync", expected_workers=2, sync_timeout=sync_timeout)
    client = ps_client([ps.address], "worker-0")
    grad = torch.full((N,), 4.0)
    started = time.monotonic()
    reply = client.push(grad, base_version=0, samples=32)
    waited = time.monotonic() - started
    assert reply.version == 1 and not reply.duplicate
    assert waited >= sync_timeout * 0.95  # the round waited for the missing worker
    version, params = ps.pull()
    assert version == 1
    assert torch.equal(params, -LR * grad)  # the mean of what arrived: one gradient

    # The next round is a fresh one: the same worker can contribute again.
    reply = client.push(grad, base_version=1, samples=32)
    assert reply.version == 2
    assert torch.equal(ps.pull()[1], -2 * LR * grad)


def test_sync_retry_while_round_is_open_waits_for_that_round(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", updates="sync", expected_workers=2, sync_timeout=10.0)
    g0, g1 = torch.full((N,), 2.0), torch.full((N,), 6.0)
    replies: dict[str, ps_pb2.PushReply] = {}

    def send(key: str, worker: str, gradient: torch.Tensor) -> None:
        replies[key] = ps.stub.Push(push_request(worker, 1, tensor_msg(gradient)), timeout=20)

    original = threading.Thread(target=send, args=("original", "worker-0", g0))
    original.start()
    # White-box: the open round (no RPC shows it) holds worker-0's gradient.
    assert wait_until(lambda: "worker-0" in ps.core._round.workers, timeout=10.0)
    # worker-0 retries the same push (its call timed out on its side) while the round is open.
    retry = threading.Thread(target=send, args=("retry", "worker-0", g0))
    retry.start()
    try:
        send("worker-1", "worker-1", g1)
    finally:
        original.join(25)
        retry.join(25)
    assert {k: (r.version, r.duplicate) for k, r in replies.items()} == {
        "original": (1, False),
        "retry": (1, True),
        "worker-1": (1, False),
    }
    version, params = ps.pull()
    assert version == 1
    assert torch.equal(params, -LR * (g0 + g1) / 2)  # worker-0 counted once


def test_sync_retry_while_full_round_is_being_applied_is_not_applied_twice(start_ps, tmp_path) -> None:
    """The round is full and taken out of the open slot, but not yet applied (its close
    waits for the order lock): a retry of one of its pushes must wait for it, not join the
    next round."""
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", updates="sync", expected_workers=2, sync_timeout=10.0)
    g0, g1 = torch.full((N,), 2.0), torch.full((N,), 6.0)
    replies: dict[str, ps_pb2.PushReply] = {}

    def send(key: str, worker: str, gradient: torch.Tensor) -> None:
        replies[key] = ps.stub.Push(push_request(worker, 1, tensor_msg(gradient)), timeout=20)

    threads = [threading.Thread(target=send, args=(w, w, g)) for w, g in (("worker-0", g0), ("worker-1", g1))]
    with ps.core.order_lock:  # freezes every apply
        for thread in threads:
            thread.start()
        # White-box: both pushes are in a round that is closing, and the open round is empty.
        assert wait_until(lambda: len(ps.core._closing) == 1 and len(ps.core._closing[0].workers) == 2, timeout=10.0)
        retry = threading.Thread(target=send, args=("retry", "worker-0", g0))
        retry.start()
        time.sleep(0.2)  # the retry reaches the PS while the apply is still held
        assert ps.core._round.workers == []
    for thread in [*threads, retry]:
        thread.join(25)
    assert {k: (r.version, r.duplicate) for k, r in replies.items()} == {
        "worker-0": (1, False),
        "worker-1": (1, False),
        "retry": (1, True),
    }
    version, params = ps.pull()
    assert version == 1
    assert torch.equal(params, -LR * (g0 + g1) / 2)


def test_sync_duplicate_of_closed_round_is_not_applied(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", updates="sync", expected_workers=1)
    grad = tensor_msg(torch.ones(N))
    assert ps.stub.Push(push_request("worker-0", 1, grad), timeout=5).version == 1
    retry = ps.stub.Push(push_request("worker-0", 1, grad), timeout=5)
    assert retry.duplicate and retry.version == 1
    assert ps.pull()[0] == 1


# -- health and restart ----------------------------------------------------------------------


def test_health_reports_mode_state_version_incarnation(start_ps, ps_client, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    health = ps.health()
    assert health.name == "ps-0"
    assert health.mode == "checkpoint"
    assert health.state == "serving"
    assert health.version == 0
    assert health.restored_from == "seed"
    assert health.started_version == 0
    assert health.incarnation == ps.core.incarnation and len(health.incarnation) == 12

    client = ps_client([ps.address])
    for _ in range(3):
        client.push(torch.ones(N), base_version=0, samples=1)
    client.report(steps=42, accuracy=0.5)
    health = ps.health()
    assert health.version == 3
    assert health.updates_since_start == 3
    assert health.applied_seq == 3
    assert health.worker_steps == 42
    assert health.accuracy == pytest.approx(0.5)
    _, _, incarnation, _, _ = client.pull(-1)
    assert incarnation == health.incarnation


def test_restart_restores_newest_checkpoint(start_ps, ps_client, tmp_path, events_path) -> None:
    ckpt = tmp_path / "ckpt"
    first = checkpoint_ps(start_ps, ckpt, every_updates=2)
    client = ps_client([first.address])
    for _ in range(5):
        client.push(torch.ones(N), base_version=0, samples=1)
    _, params_at_5 = first.pull()
    first.stop()  # a kill: no final checkpoint, updates 5 is lost
    assert CheckpointStore(ckpt).versions()[0] == 4

    second = checkpoint_ps(start_ps, ckpt, name="ps-0-restarted")
    health = second.health()
    assert health.restored_from == "checkpoint"
    assert health.version == health.started_version == 4
    assert health.incarnation != first.core.incarnation
    version, params = second.pull()
    assert version == 4
    assert torch.equal(params, params_at_5 + LR * torch.ones(N))  # one update lost
    written = [e["version"] for e in read_events(events_path) if e["event"] == "checkpoint_written"]
    assert written == [2, 4]


def test_restart_skips_a_corrupted_newest_checkpoint(start_ps, ps_client, tmp_path, events_path) -> None:
    ckpt = tmp_path / "ckpt"
    first = checkpoint_ps(start_ps, ckpt, every_updates=2)
    client = ps_client([first.address])
    for _ in range(4):
        client.push(torch.ones(N), base_version=0, samples=1)
    first.stop()
    store = CheckpointStore(ckpt)
    assert store.versions() == [4, 2]
    newest = store.path_for(4)
    newest.write_bytes(newest.read_bytes()[:-10])  # a torn write

    second = checkpoint_ps(start_ps, ckpt, name="ps-0-restarted")
    health = second.health()
    assert (health.restored_from, health.version) == ("checkpoint", 2)
    assert torch.equal(second.pull()[1], -2 * LR * torch.ones(N))
    invalid = [e for e in read_events(events_path) if e["event"] == "checkpoint_invalid"]
    assert len(invalid) == 1 and invalid[0]["path"] == str(newest) and "truncated" in invalid[0]["reason"]


def test_bfloat16_transfer_keeps_float32_master_weights(start_ps, ps_client, tmp_path) -> None:
    """workers.transferDtype bfloat16: gradients and parameters travel as bfloat16; the PS
    applies in float32 and its master weights keep full precision."""
    init = torch.full((N,), 1.0 + 2**-12)  # not representable in bfloat16 (8 bits of mantissa)
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", init=init)
    client = ps_client([ps.address], "worker-0", transfer_dtype="bfloat16")
    version, params, _, _, _ = client.pull(-1)
    assert params.dtype == torch.float32 and torch.equal(params, init.to(torch.bfloat16).float())
    gradient = torch.full((N,), 0.5)  # exact in bfloat16
    assert client.push(gradient, base_version=version, samples=32).version == 1
    version, master = ps.pull()  # a float32 pull: the master weights, not rounded
    assert torch.equal(master, init - LR * gradient)
    assert torch.equal(client.pull(0)[1], master.to(torch.bfloat16).float())


def test_a_pull_in_an_unknown_dtype_is_invalid_argument(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Pull(ps_pb2.PullRequest(worker="w", have_version=-1, dtype="float16"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dtype: must be one of ['bfloat16', 'float32'], got 'float16'" in caught.value.details()


# -- large tensors in chunks ------------------------------------------------------------------
def test_streamed_push_and_pull_match_unary(start_ps, ps_client, tmp_path) -> None:
    """Above `stream_above_bytes` pushes and pulls travel in chunks; the PS applies the same
    update and the worker gets the same parameters as with one message."""
    n = 300_001  # not a multiple of the chunk size
    init = torch.randn(n)
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt", init=init)
    ps.core.expected_workers = 1
    streaming = ps_client([ps.address], "worker-0", stream_above_bytes=64 * 1024)
    unary = ps_client([ps.address], "worker-1")
    version, params, _, _, _ = streaming.pull(-1)  # learns the size: later pulls stream
    assert torch.equal(params, init)
    gradient = torch.randn(n)
    assert streaming.push(gradient, base_version=version, samples=32).version == 1
    version, streamed, _, _, _ = streaming.pull(0)
    assert version == 1 and torch.equal(streamed, unary.pull(-1)[1])
    assert torch.equal(streamed, init - LR * gradient)
    # push_and_pull of a streamed model: the push streams, the parameters come by the caller's pull.
    reply, pulled = streaming.push_and_pull(gradient, base_version=1, samples=32)
    assert reply.version == 2 and pulled is None and streaming.pull(1)[0] == 2


def test_a_stream_cut_short_or_malformed_applies_nothing(start_ps, tmp_path) -> None:
    ps = checkpoint_ps(start_ps, tmp_path / "ckpt")
    header = push_request("worker-0", 1, ps_pb2.Tensor(dtype="float32", shape=[N]))
    whole = torch.ones(N).numpy().tobytes()
    cases = {
        "short": [ps_pb2.PushChunk(request=header, data=whole[:16])],
        "split element": [ps_pb2.PushChunk(request=header, data=whole[:6]), ps_pb2.PushChunk(data=whole[6:])],
        "too long": [ps_pb2.PushChunk(request=header, data=whole), ps_pb2.PushChunk(data=whole[:4])],
        "nan": [ps_pb2.PushChunk(request=header, data=torch.full((N,), float("nan")).numpy().tobytes())],
        "no request": [ps_pb2.PushChunk(data=whole)],
    }
    messages = {
        "short": "the stream ended after 4 of 10 elements",
        "split element": "a chunk of 6 bytes is not whole 4-byte elements",
        "too long": "4 bytes after the last tensor",
        "nan": "10 non-finite values",
        "no request": "the first chunk must carry the request",
    }
    for name, chunks in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            ps.stub.PushStream(iter(chunks), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert messages[name] in caught.value.details(), (name, caught.value.details())
    version, params = ps.pull()
    assert version == 0 and torch.equal(params, torch.zeros(N))  # nothing applied


def test_a_large_models_calls_get_time_to_move_their_bytes() -> None:
    """A deadline sized for a small model would cut a 50M-parameter push short, and a
    stateless worker would take that for a dead PS."""
    from trainthrough.worker.client import PSClient

    client = PSClient(["127.0.0.1:1"], "worker-0", call_timeout=1.0)
    try:
        assert client._deadline(None, 1000) == pytest.approx(1.0, abs=1e-3)
        assert client._deadline(None, 50_000_000) == pytest.approx(1.0 + 200e6 / 50e6)
        assert client._deadline(0.5, 50_000_000) == pytest.approx(0.5 + 4.0)
    finally:
        client.close()
