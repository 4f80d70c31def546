"""Integration tests of the stateless parameter server (StatelessMode behind real gRPC, on
127.0.0.1 port 0; workers through PSClient and raw stubs).

Aspects covered:
- fresh start: workers rejoin with base_version -1 and no buffers; the PS seeds from its
  initial state (restored_from 'seed'), version 0, then serves pulls and pushes;
- before seeding: Health says 'seeding', Pull is UNAVAILABLE; a push before rejoin is
  FAILED_PRECONDITION "RejoinRequired..." (PSClient: RejoinRequired), also after seeding;
- re-seeding from workers: the base weights with the highest version win (seeded_from that
  worker, restored_from 'workers'), every buffered gradient is replayed; with 'sum' and plain
  SGD params == base - lr * sum(grads) exactly; version == base + replayed entries; replayed
  counts per worker (merged entries count their gradients); equal versions: lowest rank wins;
- staleness policies against hand-computed numbers: 'weighted' 1/(1+staleness), 'lr-scaled'
  1/W, 'average' (the j-th gradients averaged, one update per layer), clipping with 'sum' and
  with 'average';
- the rejoin window closes after rejoin_timeout with a missing worker; a late worker's rejoin
  replays its gradients onto the live model (under the policy) and lets it push;
- a malformed rejoin (NaN or wrong shape in a buffered gradient, NaN base weights) is
  INVALID_ARGUMENT naming the field, is counted as rejected, and does not count as a rejoin
  (neither for the window nor for pushing later);
- fallback: with fallbackCheckpoint on and no worker bringing weights the PS restores the
  newest checkpoint (restored_from 'fallback-checkpoint') and replays onto it, then keeps
  writing checkpoints; weights from a worker win over the checkpoint;
- idempotency: a retried rejoin (same worker, same entries) replays nothing twice;
- a rejoin streamed in chunks (RejoinStream) reseeds and replays exactly as one message; a
  stream cut short is INVALID_ARGUMENT and does not count as a rejoin;
- a buffered gradient whose push timed out but was applied (same PS) is skipped on replay;
- merge outer: the sample-weighted mean of pseudo-gradients on hand-made tensors; the
  in-doubt push replayed, then one Nesterov step of the outer optimizer; a late worker's
  step carries the momentum; a retried rejoin merges its progress once; a progress entry
  to a replay PS, or without samples, is INVALID_ARGUMENT and changes nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from conftest import RunningPS, StartPS, rejected, tensor_msg, wait_until
from trainthrough.errors import RejoinRequired
from trainthrough.events import read_events
from trainthrough.proto import ps_pb2
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.state import ParameterState
from trainthrough.ps.rejoins import pseudo_gradient
from trainthrough.ps.stateless import StatelessMode
from trainthrough.spec import OptimizerSpec, OuterOptimizerSpec, StatelessMerge, StatelessSpec
from trainthrough.worker.buffer import BufferedGradient

N = 4
LR = 0.5
OPTIMIZER = OptimizerSpec(name="sgd", lr=LR)
INITIAL = torch.tensor([0.5, -0.5, 1.0, 2.0])


def stateless_ps(
    start_ps: StartPS,
    *,
    expected_workers: int = 2,
    fallback_dir: Path | None = None,
    start_mode: bool = True,
    **spec_args,
) -> RunningPS:
    spec_args.setdefault("rejoin_timeout", 10.0)
    spec = StatelessSpec(fallback_checkpoint=fallback_dir is not None, **spec_args)

    def build(core):
        fallback = None
        if fallback_dir is not None:
            fallback = PeriodicCheckpointer(core, CheckpointStore(fallback_dir), every_updates=2, every_seconds=None)
        return StatelessMode(
            core,
            spec=spec,
            optimizer=OPTIMIZER,
            initial_state=lambda: ParameterState(INITIAL.clone(), OPTIMIZER),
            numel=INITIAL.numel(),
            fallback=fallback,
        )

    return start_ps(build, mode="stateless", expected_workers=expected_workers, start_mode=start_mode)


def rejoin_all(clients_and_args: list[tuple], timeout: float = 15.0) -> dict[str, ps_pb2.RejoinReply]:
    """Rejoin several workers at once (each Rejoin blocks until the window closes)."""
    replies: dict[str, ps_pb2.RejoinReply] = {}
    errors: list[BaseException] = []

    def run(client, args) -> None:
        try:
            replies[client.worker] = client.rejoin(*args, timeout=timeout)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in clients_and_args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return replies


def pull(ps: RunningPS) -> tuple[int, torch.Tensor]:
    return ps.pull()


# The re-seeding scenario shared by the policy tests:
#   worker-0: base weights A at version 7, buffered g1 (base 7), g2 (base 8, two merged gradients)
#   worker-1: base weights B at version 9, buffered g3 (base 9)
A = torch.tensor([1.0, 1.0, 1.0, 1.0])
B = torch.tensor([10.0, 20.0, 30.0, 40.0])
G1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
G2 = torch.tensor([0.0, 2.0, 0.0, 0.0])
G3 = torch.tensor([0.0, 0.0, 4.0, 0.0])


def reseed(start_ps, ps_client, stream_above_bytes: int = 1 << 30, **spec_args) -> tuple[RunningPS, dict[str, ps_pb2.RejoinReply]]:
    ps = stateless_ps(start_ps, **spec_args)
    w0 = ps_client([ps.address], "worker-0", stream_above_bytes=stream_above_bytes)
    w1 = ps_client([ps.address], "worker-1", stream_above_bytes=stream_above_bytes)
    replies = rejoin_all(
        [
            (w0, (7, A, [BufferedGradient(1, 7, G1), BufferedGradient(2, 8, G2, count=2)])),
            (w1, (9, B, [BufferedGradient(3, 9, G3)])),
        ]
    )
    return ps, replies


# -- fresh start -------------------------------------------------------------------------------


def test_fresh_start_seeds_from_initial_state(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps)
    assert ps.health().state == "seeding"
    w0 = ps_client([ps.address], "worker-0")
    w1 = ps_client([ps.address], "worker-1")
    replies = rejoin_all([(w0, (-1, None, [])), (w1, (-1, None, []))])
    assert {w: (r.version, r.replayed, r.seeded_from) for w, r in replies.items()} == {
        "worker-0": (0, 0, ""),
        "worker-1": (0, 0, ""),
    }
    health = ps.health()
    assert (health.mode, health.state, health.restored_from, health.version) == ("stateless", "serving", "seed", 0)
    version, params = pull(ps)
    assert version == 0 and torch.equal(params, INITIAL)

    assert w0.push(torch.ones(N), base_version=0, samples=1).version == 1
    assert torch.equal(pull(ps)[1], INITIAL - LR)


def test_push_before_rejoin_is_rejoin_required(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps, expected_workers=1)
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Push(
            ps_pb2.PushRequest(worker="worker-0", push_id=1, gradient=tensor_msg(torch.ones(N)), samples=1), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("RejoinRequired")
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Pull(ps_pb2.PullRequest(worker="worker-0", have_version=-1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # still seeding

    w0 = ps_client([ps.address], "worker-0")
    w0.rejoin(-1, None, [], timeout=10)
    # A worker that has not rejoined this incarnation still must.
    stranger = ps_client([ps.address], "worker-1")
    with pytest.raises(RejoinRequired):
        stranger.push(torch.ones(N), base_version=0, samples=1)
    assert ps.health().version == 0
    assert w0.push(torch.ones(N), base_version=0, samples=1).version == 1


# -- re-seeding and policies -------------------------------------------------------------------


def test_reseed_from_highest_version_and_replay_sum(start_ps, ps_client, events_path) -> None:
    ps, replies = reseed(start_ps, ps_client, staleness="sum")
    assert replies["worker-0"].seeded_from == replies["worker-1"].seeded_from == "worker-1"
    assert replies["worker-0"].replayed == 3  # two entries, one of them two merged gradients
    assert replies["worker-1"].replayed == 1
    assert replies["worker-0"].version == replies["worker-1"].version == 9 + 3
    health = ps.health()
    assert (health.restored_from, health.started_version, health.version) == ("workers", 9, 12)
    version, params = pull(ps)
    assert version == 12
    assert torch.equal(params, B - LR * (G1 + G2 + G3))
    assert torch.equal(params, torch.tensor([9.5, 19.0, 28.0, 40.0]))
    replayed = [e for e in read_events(events_path) if e["event"] == "gradients_replayed"]
    assert [(e["count"], e["per_worker"]) for e in replayed] == [(4, {"worker-0": 3, "worker-1": 1})]


def test_a_rejoin_streamed_in_chunks_reseeds_and_replays_the_same(start_ps, ps_client) -> None:
    # Above stream_above_bytes a rejoin travels as RejoinStream (large models: no message
    # near protobuf's 2 GB); here every rejoin streams.
    ps, replies = reseed(start_ps, ps_client, stream_above_bytes=0, staleness="sum")
    assert (replies["worker-0"].replayed, replies["worker-1"].replayed) == (3, 1)
    assert replies["worker-0"].seeded_from == "worker-1"
    version, params = pull(ps)
    assert version == 12 and torch.equal(params, B - LR * (G1 + G2 + G3))


def test_a_rejoin_stream_cut_short_is_invalid_and_not_counted(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps, expected_workers=1, rejoin_timeout=0.3)
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=7)
    request.base_params.dtype = "float32"
    request.base_params.shape.append(4)
    chunks = [ps_pb2.RejoinChunk(request=request), ps_pb2.RejoinChunk(data=A[:2].numpy().tobytes())]
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.RejoinStream(iter(chunks), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "base_params.data: the stream ended after 2 of 4 elements" in caught.value.details()
    # It did not count as a rejoin: the window closes without it, from the seed, and the
    # worker must rejoin before it pushes.
    assert wait_until(lambda: ps.health().state == "serving", timeout=5.0)
    assert ps.health().restored_from == "seed"
    with pytest.raises(RejoinRequired):
        ps_client([ps.address], "worker-0").push(G1, base_version=0, samples=1)


def test_equal_base_versions_seed_from_lowest_rank(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps)
    w2 = ps_client([ps.address], "worker-2")
    w1 = ps_client([ps.address], "worker-1")
    replies = rejoin_all([(w2, (9, A, [])), (w1, (9, B, []))])
    assert replies["worker-2"].seeded_from == "worker-1"
    assert torch.equal(pull(ps)[1], B)


# Hand-computed results of the scenario above (seed B at version 9, lr 0.5). Layers are
# replayed in order, workers sorted by name within a layer; staleness = PS version at the
# time of application - the gradient's base version.
POLICY_CASES = [
    # weighted: g1 at v9 (staleness 2, w 1/3), g3 at v10 (staleness 1, w 1/2),
    # g2 at v11 (staleness 3, w 1/4).
    pytest.param(
        {"staleness": "weighted"}, [10.0 - 0.5 / 3, 20.0 - 0.5 * 2 / 4, 30.0 - 0.5 * 4 / 2, 40.0], 12, id="weighted"
    ),
    # lr-scaled: W = 2 workers brought gradients, each weighted 1/2.
    pytest.param({"staleness": "lr-scaled"}, [9.75, 19.5, 29.0, 40.0], 12, id="lr-scaled"),
    # average: layer 0 = mean(g1, g3) = [0.5, 0, 2, 0]; layer 1 = g2 alone; two updates.
    pytest.param({"staleness": "average"}, [9.75, 19.0, 29.0, 40.0], 11, id="average"),
    # sum with clip 1: g1 (norm 1) stays, g2 -> [0, 1, 0, 0], g3 -> [0, 0, 1, 0].
    pytest.param({"staleness": "sum", "clip": 1.0}, [9.5, 19.5, 29.5, 40.0], 12, id="sum-clip"),
    # average with clip 1: layer 0 = mean(g1, [0, 0, 1, 0]); layer 1 = [0, 1, 0, 0].
    pytest.param({"staleness": "average", "clip": 1.0}, [9.75, 19.5, 29.75, 40.0], 11, id="average-clip"),
]


@pytest.mark.parametrize("spec_args, expected, version", POLICY_CASES)
def test_staleness_policies(start_ps, ps_client, spec_args, expected, version) -> None:
    ps, replies = reseed(start_ps, ps_client, **spec_args)
    assert {w: r.replayed for w, r in replies.items()} == {"worker-0": 3, "worker-1": 1}
    assert replies["worker-0"].seeded_from == "worker-1"
    got_version, params = pull(ps)
    assert got_version == version
    torch.testing.assert_close(params, torch.tensor(expected), rtol=0, atol=1e-6)


def test_clip_scales_to_the_limit_norm(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps, expected_workers=1, staleness="sum", clip=1.0)
    w0 = ps_client([ps.address], "worker-0")
    reply = w0.rejoin(3, B, [BufferedGradient(4, 3, torch.tensor([3.0, 4.0, 0.0, 0.0]))], timeout=15)
    assert reply.replayed == 1 and reply.version == 4
    torch.testing.assert_close(pull(ps)[1], B - LR * torch.tensor([0.6, 0.8, 0.0, 0.0]), rtol=0, atol=1e-6)


# -- rejoin window -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy, late_weight", [("sum", 1.0), ("weighted", 1.0 / (1 + (6 - 3)))])
def test_window_closes_after_timeout_and_late_worker_replays_onto_live_model(
    start_ps, ps_client, policy, late_weight
) -> None:
    ps = stateless_ps(start_ps, expected_workers=2, rejoin_timeout=0.3, staleness=policy, start_mode=False)
    w0 = ps_client([ps.address], "worker-0")
    w1 = ps_client([ps.address], "worker-1")
    assert w0.health().state == "seeding" and w1.health().state == "seeding"
    # worker-0 announces itself before the window opens, as PSClient.rejoin does first: the
    # window then waits for its rejoin however slow this machine is, but not for worker-1.
    ps.stub.Rejoin(ps_pb2.RejoinRequest(worker="worker-0", announce=True), timeout=5)
    opened = time.monotonic()
    ps.start_mode()

    g = torch.tensor([2.0, 0.0, 0.0, 0.0])
    reply = w0.rejoin(5, B, [BufferedGradient(5, 5, g)], timeout=15)
    assert time.monotonic() - opened >= 0.3 * 0.95  # the window ran to its timeout
    # Only one of two expected workers came: the window closed on its timeout.
    assert reply.seeded_from == "worker-0"
    assert reply.replayed == 1
    assert reply.version == 6
    assert ps.health().state == "serving"
    live = B - LR * g
    assert torch.equal(pull(ps)[1], live)

    h = torch.tensor([0.0, 4.0, 0.0, 0.0])
    late = w1.rejoin(3, A, [BufferedGradient(6, 3, h)], timeout=15)
    assert late.replayed == 1
    assert late.version == 7
    assert late.seeded_from == "worker-0"  # its older weights are ignored
    version, params = pull(ps)
    assert version == 7
    torch.testing.assert_close(params, live - LR * late_weight * h, rtol=0, atol=1e-6)

    # The late worker now may push.
    assert w1.push(torch.ones(N), base_version=7, samples=1).version == 8


def test_a_timed_out_push_the_ps_applied_is_not_replayed_again(start_ps, ps_client, events_path) -> None:
    """A push that timed out on the worker but was applied by a slow (not dead) PS: the
    worker buffers the gradient with that push id and rejoins the same PS, which skips it."""
    ps = stateless_ps(start_ps, expected_workers=1, rejoin_timeout=0.3)
    worker = ps_client([ps.address], "worker-0")
    worker.rejoin(-1, None, [], timeout=15)
    applied = torch.tensor([1.0, 0.0, 0.0, 0.0])
    sent = worker.push_id
    assert worker.push(applied, base_version=0, samples=1).version == 1  # applied (its reply "lost")
    other = torch.tensor([0.0, 3.0, 0.0, 0.0])  # trained locally after going offline
    reply = worker.rejoin(
        0, INITIAL, [BufferedGradient(1, 0, applied.clone(), push_id=sent), BufferedGradient(2, 1, other)], timeout=15
    )
    assert reply.replayed == 1 and reply.version == 2 and reply.replayed_seq == 2
    version, params = pull(ps)
    assert version == 2 and torch.equal(params, INITIAL - LR * (applied + other))  # `applied` once
    skipped = [e for e in read_events(events_path) if e["event"] == "replay_skipped_applied"]
    assert [e["per_worker"] for e in skipped] == [{"worker-0": [1]}]


# -- malformed rejoins -------------------------------------------------------------------------


def bad_buffer_nan() -> ps_pb2.RejoinRequest:
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=3, base_params=tensor_msg(B), push_id=1)
    request.buffered.add(base_version=3, count=1, gradient=tensor_msg(G1))
    request.buffered.add(base_version=4, count=1, gradient=tensor_msg(torch.tensor([0.0, float("nan"), 0.0, 0.0])))
    return request


def bad_buffer_shape() -> ps_pb2.RejoinRequest:
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=3, base_params=tensor_msg(B), push_id=1)
    request.buffered.add(base_version=3, count=1, gradient=tensor_msg(torch.ones(N + 1)))
    return request


def bad_base_params() -> ps_pb2.RejoinRequest:
    return ps_pb2.RejoinRequest(
        worker="worker-0", base_version=3, base_params=tensor_msg(torch.tensor([1.0, float("inf"), 0, 0])), push_id=1
    )


@pytest.mark.parametrize(
    "make, named, reason",
    [
        (bad_buffer_nan, "buffered[1].gradient.data", "non_finite"),
        (bad_buffer_shape, "buffered[0].gradient.shape", "shape"),
        (bad_base_params, "base_params.data", "non_finite"),
    ],
)
def test_malformed_rejoin_is_invalid_argument_and_not_counted(start_ps, ps_client, registry, make, named, reason) -> None:
    ps = stateless_ps(start_ps, expected_workers=1, rejoin_timeout=10.0)
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Rejoin(make(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in caught.value.details()
    assert rejected(registry, "stateless", reason) == 1
    # With one expected worker a counted rejoin would have closed the window.
    assert ps.health().state == "seeding"

    w0 = ps_client([ps.address], "worker-0")
    reply = w0.rejoin(2, A, [BufferedGradient(7, 2, G1)], timeout=10)
    assert reply.seeded_from == "worker-0" and reply.replayed == 1 and reply.version == 3
    assert torch.equal(pull(ps)[1], A - LR * G1)


def test_malformed_late_rejoin_does_not_let_the_worker_push(start_ps, ps_client) -> None:
    ps = stateless_ps(start_ps, expected_workers=1)
    ps_client([ps.address], "worker-0").rejoin(2, A, [], timeout=10)
    request = bad_buffer_nan()
    request.worker = "worker-1"
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Rejoin(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    version, params = pull(ps)
    assert version == 2 and torch.equal(params, A)  # its good first entry was not replayed either
    with pytest.raises(RejoinRequired):
        ps_client([ps.address], "worker-1").push(torch.ones(N), base_version=2, samples=1)


# -- fallback checkpoint -----------------------------------------------------------------------


def save_checkpoint(directory: Path, params: torch.Tensor, version: int) -> None:
    state = ParameterState(params, OPTIMIZER, version=version)
    CheckpointStore(directory).save(version, state.to_bytes())


def test_fallback_restores_newest_checkpoint_when_no_worker_has_weights(start_ps, ps_client, tmp_path) -> None:
    ckpt = tmp_path / "fallback"
    save_checkpoint(ckpt, A, 30)
    save_checkpoint(ckpt, B, 42)
    ps = stateless_ps(start_ps, expected_workers=1, fallback_dir=ckpt)
    w0 = ps_client([ps.address], "worker-0")
    reply = w0.rejoin(-1, None, [BufferedGradient(8, 41, G3)], timeout=10)
    assert reply.seeded_from == ""
    assert reply.replayed == 1 and reply.version == 43
    health = ps.health()
    assert (health.restored_from, health.started_version, health.version) == ("fallback-checkpoint", 42, 43)
    assert torch.equal(pull(ps)[1], B - LR * G3)

    # The fallback keeps writing checkpoints (every 2 updates) once serving.
    w0.push(torch.ones(N), base_version=43, samples=1)
    assert 44 in CheckpointStore(ckpt).versions()


def test_fallback_is_not_used_when_a_worker_brings_weights(start_ps, ps_client, tmp_path) -> None:
    ckpt = tmp_path / "fallback"
    save_checkpoint(ckpt, B, 42)
    ps = stateless_ps(start_ps, expected_workers=1, fallback_dir=ckpt)
    reply = ps_client([ps.address], "worker-0").rejoin(5, A, [], timeout=10)
    assert reply.seeded_from == "worker-0" and reply.version == 5
    assert ps.health().restored_from == "workers"
    assert torch.equal(pull(ps)[1], A)


# -- idempotency -------------------------------------------------------------------------------


def test_retried_rejoin_does_not_replay_twice(start_ps) -> None:
    ps = stateless_ps(start_ps, expected_workers=1)
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=5, base_params=tensor_msg(B), push_id=77)
    request.buffered.add(base_version=5, count=1, gradient=tensor_msg(G3))
    first = ps.stub.Rejoin(request, timeout=10)
    assert first.version == 6 and first.replayed == 1
    # The worker's call failed on its side (a deadline, a broken connection) after the PS
    # had taken it; the worker retries the very same rejoin (worker/training.py until_done).
    ps.stub.Rejoin(request, timeout=10)
    version, params = pull(ps)
    assert torch.equal(params, B - LR * G3)
    assert version == 6


# -- merge outer: local progress as pseudo-gradients, merged by an outer optimizer --------------

D0 = torch.tensor([1.0, 0.0, -2.0, 0.0])  # worker-0's progress: the weights it trained from minus its weights now
D1 = torch.tensor([0.0, 4.0, 2.0, 8.0])


def progress_entry(seq: int, delta: torch.Tensor, steps: int, samples: int, base_version: int) -> BufferedGradient:
    return BufferedGradient(seq, base_version, delta, count=steps, sent=True, progress=True, samples=samples)


def test_pseudo_gradient_is_the_sample_weighted_mean() -> None:
    merged = pseudo_gradient([(100, D0), (300, D1)])
    assert torch.allclose(merged, (100 * D0 + 300 * D1) / 400)
    assert torch.allclose(merged, torch.tensor([0.25, 3.0, 1.0, 6.0]))
    assert torch.equal(pseudo_gradient([(7, D1)]), D1)
    with pytest.raises(ValueError, match="no local progress"):
        pseudo_gradient([])


def test_outer_merge_replays_the_in_doubt_push_then_takes_one_nesterov_step(start_ps, ps_client, events_path) -> None:
    outer = OuterOptimizerSpec(lr=0.5, momentum=0.9)
    ps = stateless_ps(start_ps, merge=StatelessMerge.OUTER, outer_optimizer=outer, expected_workers=3)
    w0 = ps_client([ps.address], "worker-0")
    w1 = ps_client([ps.address], "worker-1")
    w2 = ps_client([ps.address], "worker-2")
    replies = rejoin_all(
        [
            # worker-1: its first offline gradient went out in push 5, whose outcome it never learnt
            (w0, (7, A, [progress_entry(10, D0, steps=3, samples=100, base_version=7)])),
            (w1, (9, B, [BufferedGradient(1, 9, G3, push_id=5), progress_entry(2, D1, steps=6, samples=300, base_version=9)])),
            (w2, (-1, None, [])),  # a worker that was restarted: nothing to give
        ]
    )
    assert {w: r.replayed for w, r in replies.items()} == {"worker-0": 3, "worker-1": 7, "worker-2": 0}
    version, params = pull(ps)
    # Seeded from B (the highest version), the in-doubt gradient replayed by the job's SGD,
    # then one outer step: Nesterov from a zero momentum buffer moves (1 + momentum) x the
    # sample-weighted mean of the pseudo-gradients.
    mean = (100 * D0 + 300 * D1) / 400
    assert version == 9 + 1 + 1
    assert torch.allclose(params, B - LR * G3 - 0.5 * (1 + 0.9) * mean)
    [merged] = [e for e in read_events(events_path) if e["event"] == "progress_merged"]
    assert merged["local_steps"] == {"worker-0": 3, "worker-1": 6}
    assert merged["samples"] == {"worker-0": 100, "worker-1": 300}
    assert merged["pseudo_gradient_norm"] == pytest.approx(float(mean.norm()), rel=1e-6)


def test_outer_merge_of_a_late_worker_carries_the_momentum(start_ps, ps_client) -> None:
    outer = OuterOptimizerSpec(lr=1.0, momentum=0.5)
    ps = stateless_ps(start_ps, merge=StatelessMerge.OUTER, outer_optimizer=outer, rejoin_timeout=0.5)
    w0 = ps_client([ps.address], "worker-0")
    w1 = ps_client([ps.address], "worker-1")
    w0.rejoin(7, A, [progress_entry(1, D0, steps=2, samples=64, base_version=7)], timeout=10)  # the window closes without worker-1
    after_first = A - 1.0 * (1 + 0.5) * D0
    assert torch.allclose(pull(ps)[1], after_first)
    w1.rejoin(5, B, [progress_entry(1, D1, steps=4, samples=128, base_version=5)], timeout=10)
    # torch's Nesterov SGD: buffer = 0.5 * D0 + D1, step = D1 + 0.5 * buffer
    version, params = pull(ps)
    assert version == 9
    assert torch.allclose(params, after_first - (D1 + 0.5 * (0.5 * D0 + D1)))


def test_a_retried_outer_rejoin_merges_its_progress_once(start_ps) -> None:
    ps = stateless_ps(start_ps, merge=StatelessMerge.OUTER, outer_optimizer=OuterOptimizerSpec(lr=1.0, momentum=0.0), expected_workers=1)
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=5, base_params=tensor_msg(B), push_id=77)
    request.buffered.add(base_version=5, count=3, gradient=tensor_msg(D1), seq=4, progress=True, samples=96)
    assert ps.stub.Rejoin(request, timeout=10).replayed_seq == 4
    ps.stub.Rejoin(request, timeout=10)  # its reply was lost: the same rejoin again
    version, params = pull(ps)
    assert version == 6 and torch.equal(params, B - D1)


@pytest.mark.parametrize(
    "merge, samples, named",
    [
        (StatelessMerge.REPLAY, 10, "buffered[0].progress: local progress is merged only with stateless.merge 'outer'"),
        (StatelessMerge.OUTER, 0, "buffered[0].samples"),
    ],
)
def test_a_progress_entry_the_ps_cannot_merge_is_invalid_and_changes_nothing(start_ps, merge, samples, named) -> None:
    ps = stateless_ps(start_ps, merge=merge, expected_workers=1, rejoin_timeout=0.3)
    request = ps_pb2.RejoinRequest(worker="worker-0", base_version=5, base_params=tensor_msg(B), push_id=3)
    request.buffered.add(base_version=5, count=1, gradient=tensor_msg(D0), seq=1, progress=True, samples=samples)
    with pytest.raises(grpc.RpcError) as caught:
        ps.stub.Rejoin(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in caught.value.details()
    wait_until(lambda: ps.health().state == "serving", timeout=10)
    version, params = pull(ps)
    assert (version, torch.equal(params, INITIAL)) == (0, True)  # seeded from its own initial state: the rejoin counted for nothing
