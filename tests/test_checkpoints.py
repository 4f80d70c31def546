"""Tests for the parameter server's state and checkpoints: trainthrough.ps.state,
trainthrough.ps.checkpoints and checkpoint mode (trainthrough.ps.checkpointing).

Covered:
- ParameterState: a flat float32 copy of the initial parameters (not an alias); apply is
  one optimizer step and bumps version and seq; weight scales the gradient; per-worker
  deduplication (is_duplicate / record_pushes keep the newest push id per worker);
- ParameterState.to_bytes / from_bytes round trip of params, version, seq and dedup table;
  the optimizer state (SGD momentum buffer, Adam moments and step) is restored exactly, so
  the next step gives bit-identical parameters on the original and the copy, while a copy
  without optimizer state would not; an unknown format number is refused, a format-1
  payload (torch.save) still restores; from_buffer keeps the tensors in the given buffer
  (no copies); hyperparameters come from the spec; each kind of malformed payload is
  refused with what is wrong;
- CheckpointStore: save/load round trip, file name and header layout (magic, length,
  BLAKE3; files of earlier releases with SHA-256 are still read and verified); a payload saved in chunks gives the same file as saved whole; a file longer than
  its header says is invalid; versions newest first; load_newest picks the newest; prune keeps `keep` files;
  no temporary file is left after a save;
- invalid files (truncated payload, truncated header, a flipped payload byte, a bad magic)
  are skipped in favour of the previous valid checkpoint, with the file and reason in
  `store.skipped`; no valid file at all gives None;
- a temporary file of another pid (a writer killed mid-write) is ignored by load and
  removed by the next save; our own pid's temp name is never touched by pruning;
- PeriodicCheckpointer on a real ParameterServerCore writes every N updates (files,
  `checkpoint_written` events, the checkpoints-written counter), writes nothing twice for
  the same version, and writes the final state on stop;
- CheckpointMode.start: with no files it serves the initial state (restored_from 'seed');
  with checkpoints at versions 10 and 20 where 20 is corrupted it restores version 10
  (restored_from 'checkpoint'), emits `checkpoint_invalid` naming file and reason, and
  later checkpoints replace the corrupted file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest
import torch
from prometheus_client import CollectorRegistry

from trainthrough.events import EventLog, read_events
from trainthrough.metrics import create_metrics
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.optim import Optimizer
from trainthrough.ps.checkpoints import (
    HEADER,
    MAGIC,
    READ_CHUNK,
    CheckpointStore,
    CorruptCheckpoint,
    PeriodicCheckpointer,
)
from trainthrough.ps.core import ParameterServerCore
from trainthrough.ps import state_codec
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec

NUMEL = 8
SGD_MOMENTUM = OptimizerSpec(name="sgd", lr=0.1, momentum=0.9)
ADAM = OptimizerSpec(name="adam", lr=0.01, betas=(0.8, 0.9))


def _gradients(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(NUMEL, generator=generator) for _ in range(count)]


def _state(version: int = 0, optimizer: OptimizerSpec = SGD_MOMENTUM, fill: float = 0.0) -> ParameterState:
    return ParameterState(torch.full((NUMEL,), fill), optimizer, version=version)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- ParameterState ----------------------------------------------------------------------


def test_state_copies_and_flattens_the_initial_parameters() -> None:
    initial = torch.ones(2, 4, dtype=torch.float64)
    state = ParameterState(initial, OptimizerSpec())
    assert state.numel == 8
    assert state.param.shape == (8,)
    assert state.param.dtype == torch.float32
    initial.zero_()
    assert state.param.tolist() == [1.0] * 8
    assert state.version == 0 and state.seq == 0


def test_apply_is_one_sgd_step_and_bumps_version_and_seq() -> None:
    state = ParameterState(torch.zeros(4), OptimizerSpec(name="sgd", lr=0.5), version=7)
    state.apply(torch.tensor([1.0, 2.0, -2.0, 0.0]))
    assert state.param.tolist() == [-0.5, -1.0, 1.0, 0.0]
    assert (state.version, state.seq) == (8, 8)
    assert state.param.grad is None
    state.apply(torch.tensor([1.0, 1.0, 1.0, 1.0]), weight=2.0)
    assert state.param.tolist() == [-1.5, -2.0, 0.0, -1.0]
    assert (state.version, state.seq) == (9, 9)


def test_apply_with_weight_does_not_modify_the_callers_gradient() -> None:
    state = ParameterState(torch.zeros(2), OptimizerSpec(name="sgd", lr=1.0))
    gradient = torch.tensor([1.0, 2.0])
    state.apply(gradient, weight=0.5)
    assert gradient.tolist() == [1.0, 2.0]
    assert state.param.tolist() == [-0.5, -1.0]


def test_dedup_keeps_the_newest_push_id_per_worker() -> None:
    state = _state()
    assert not state.is_duplicate("worker-0", 0)
    state.record_pushes(["worker-0", "worker-1"], [3, 5])
    assert state.is_duplicate("worker-0", 3)
    assert state.is_duplicate("worker-0", 2)
    assert not state.is_duplicate("worker-0", 4)
    assert state.is_duplicate("worker-1", 5)
    assert not state.is_duplicate("worker-2", 0)
    state.record_pushes(["worker-0"], [1])  # an older id never moves the mark back
    assert state.last_push == {"worker-0": 3, "worker-1": 5}


def test_params_bytes_are_the_float32_parameters() -> None:
    state = ParameterState(torch.tensor([1.0, -2.0]), OptimizerSpec())
    assert torch.equal(torch.frombuffer(bytearray(state.params_bytes()), dtype=torch.float32), state.param)


@pytest.mark.parametrize("optimizer", [SGD_MOMENTUM, ADAM], ids=["sgd-momentum", "adam"])
def test_to_bytes_from_bytes_round_trip_continues_identically(optimizer: OptimizerSpec) -> None:
    original = ParameterState(torch.randn(NUMEL, generator=torch.Generator().manual_seed(3)), optimizer, version=40)
    for gradient in _gradients(5):
        original.apply(gradient)
    original.record_pushes(["worker-0", "worker-1"], [11, 12])
    original.seq = 47  # a chain sequence that differs from the version

    copy = ParameterState.from_bytes(original.to_bytes(), optimizer)
    assert copy.version == 45
    assert copy.seq == 47
    assert copy.last_push == {"worker-0": 11, "worker-1": 12}
    assert torch.equal(copy.param, original.param)
    assert copy.param.data_ptr() != original.param.data_ptr()

    # The optimizer state came along: the next steps agree bit for bit.
    for gradient in _gradients(3, seed=9):
        original.apply(gradient)
        copy.apply(gradient)
        assert torch.equal(copy.param, original.param)
    assert copy.version == original.version == 48


@pytest.mark.parametrize("optimizer", [SGD_MOMENTUM, ADAM], ids=["sgd-momentum", "adam"])
def test_optimizer_state_matters_for_the_round_trip_check(optimizer: OptimizerSpec) -> None:
    """The previous test could fail: a copy with a fresh optimizer takes a different step."""
    original = _state(optimizer=optimizer)
    for gradient in _gradients(5):
        original.apply(gradient)
    fresh = ParameterState(original.param.detach().clone(), optimizer, version=original.version)
    step = _gradients(1, seed=9)[0]
    original.apply(step)
    fresh.apply(step)
    assert not torch.equal(fresh.param, original.param)


def test_from_bytes_reads_a_format_1_payload_of_an_older_release() -> None:
    """Checkpoints written before the current layout (torch.save archives) still restore."""
    import io

    # Those releases kept torch.optim's state_dict: write one with torch.optim itself.
    param = torch.nn.Parameter(torch.zeros(NUMEL))
    torch_sgd = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    original = _state(optimizer=SGD_MOMENTUM)
    for gradient in _gradients(3):
        param.grad = gradient
        torch_sgd.step()
        original.apply(gradient)
    buffer = io.BytesIO()
    legacy = {"format": 1, "version": 3, "seq": 3, "params": param.detach().clone(),
              "optimizer": torch_sgd.state_dict(), "last_push": {"worker-0": 7}}  # fmt: skip
    torch.save(legacy, buffer)
    restored = ParameterState.from_bytes(buffer.getvalue(), SGD_MOMENTUM)
    assert (restored.version, restored.last_push) == (3, {"worker-0": 7})
    step = _gradients(1, seed=9)[0]
    original.apply(step)
    restored.apply(step)
    assert torch.equal(restored.param, original.param)  # the momentum came along


def test_from_bytes_refuses_an_unknown_format() -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"format": 99}, buffer)
    with pytest.raises(ValueError, match="state format 99 is not 1"):
        ParameterState.from_bytes(buffer.getvalue(), OptimizerSpec())
    future = state_codec.MAGIC + ParameterState(torch.zeros(4), OptimizerSpec()).to_bytes()[len(state_codec.MAGIC) :]
    future = future.replace(b'"format": 2', b'"format": 9')
    with pytest.raises(state_codec.StateFormatError, match="state format 9 is not 2"):
        ParameterState.from_bytes(future, OptimizerSpec())


def test_from_buffer_keeps_the_tensors_in_the_buffer_it_was_given() -> None:
    """A restore costs one read: the parameters and the optimizer state are views of the
    buffer, and training goes on in it."""
    original = _state(optimizer=ADAM)
    original.apply(_gradients(1)[0])
    buffer = torch.frombuffer(bytearray(original.to_bytes()), dtype=torch.uint8)
    restored = ParameterState.from_buffer(buffer, ADAM)
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    moments = restored.optimizer.state[0]
    for tensor in (restored.param, moments["exp_avg"], moments["exp_avg_sq"]):
        assert start <= tensor.data_ptr() < end
    restored.apply(_gradients(1, seed=5)[0])
    assert restored.version == 2 and torch.equal(ParameterState.from_buffer(buffer, ADAM).param, restored.param)


def test_the_optimizer_hyperparameters_come_from_the_spec_not_the_payload() -> None:
    payload = _state(optimizer=SGD_MOMENTUM).to_bytes()
    changed = OptimizerSpec(name="sgd", lr=0.5, momentum=0.9)
    before = ParameterState.from_bytes(payload, SGD_MOMENTUM).param.clone()
    restored, reference = ParameterState.from_bytes(payload, changed), ParameterState.from_bytes(payload, SGD_MOMENTUM)
    step = _gradients(1, seed=3)[0]
    restored.apply(step)
    reference.apply(step)
    # The same momentum buffer at five times the learning rate: five times the move.
    moved, reference_moved = restored.param - before, reference.param - before
    assert torch.allclose(moved, 5 * reference_moved)


def test_encoded_chunks_are_the_payload_and_are_aligned() -> None:
    state = _state(optimizer=ADAM)
    state.apply(_gradients(1)[0])
    encoded = state.encode()
    chunks = list(encoded.chunks(chunk_bytes=12))
    assert b"".join(chunks) == encoded.to_bytes() and len(encoded.to_bytes()) == encoded.nbytes
    assert all(offset % state_codec.ALIGN == 0 for offset in encoded.offsets)
    tensor_data = [c for c in chunks if not c.readonly]  # views of the live tensors (header, padding: bytes)
    assert len(tensor_data) >= 3 * 3 and max(len(c) for c in tensor_data) <= 12


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:10], "shorter than its 16-byte prefix"),
        (lambda b: b"NOTSTATE" + b[8:], "unknown format"),
        (lambda b: b[:8] + (10**9).to_bytes(8, "little") + b[16:], "header of 1000000000 bytes runs past"),
        (lambda b: b.replace(b'"float32"', b'"float99"', 1), "unknown dtype 'float99'"),
        (lambda b: b[: len(b) - 4], "lies outside the"),
        (lambda b: b.replace(b'"version"', b'"versjon"', 1), "malformed header"),
    ],
    ids=["short", "magic", "header-length", "dtype", "truncated-data", "missing-field"],
)
def test_a_malformed_state_is_refused_with_what_is_wrong(damage, message: str) -> None:
    payload = _state(optimizer=SGD_MOMENTUM).to_bytes()
    with pytest.raises(state_codec.StateFormatError, match=message):
        ParameterState.from_bytes(damage(payload), SGD_MOMENTUM)


# -- CheckpointStore ---------------------------------------------------------------------


def test_save_and_load_round_trip_and_file_layout(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpts", keep=3)
    path = store.save(10, b"payload-10")
    assert path == tmp_path / "ckpts" / "ckpt-000000000010.ttc"
    data = path.read_bytes()
    magic, length, digest = HEADER.unpack_from(data)
    assert magic == MAGIC == b"TTCKPT02"
    assert length == len(b"payload-10")
    assert digest == blake3.blake3(b"payload-10").digest()
    assert data[HEADER.size :] == b"payload-10"

    checkpoint = store.load(10)
    assert (checkpoint.version, checkpoint.path, checkpoint.payload) == (10, path, b"payload-10")


def test_a_payload_saved_in_chunks_is_the_same_file_as_saved_whole(tmp_path: Path) -> None:
    """Checkpoint mode writes the state straight from its tensors, chunk by chunk, hashing
    each while the previous one is written; the file is the same as one written whole,
    and it spans several read chunks on load."""
    state = _state(optimizer=ADAM)
    state.param = torch.nn.Parameter(torch.randn(9_000_000), requires_grad=False)  # 36 MB: > READ_CHUNK
    state.optimizer = Optimizer(ADAM, [state.param])
    state.apply(torch.randn(9_000_000))
    encoded = state.encode()
    whole, chunked = CheckpointStore(tmp_path / "whole"), CheckpointStore(tmp_path / "chunked")
    assert whole.save(1, encoded.to_bytes()).read_bytes() == chunked.save(1, encoded.chunks()).read_bytes()
    assert encoded.nbytes > 2 * READ_CHUNK
    restored = ParameterState.from_bytes(chunked.load(1).payload, ADAM)
    assert torch.equal(restored.param, state.param) and restored.version == 1


def test_a_checkpoint_of_an_earlier_release_sha256_is_read_and_verified(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    payload = _state(version=3).to_bytes()
    path = store.path_for(3)
    path.write_bytes(HEADER.pack(b"TTCKPT01", len(payload), hashlib.sha256(payload).digest()) + payload)
    assert ParameterState.from_bytes(store.load(3).payload, SGD_MOMENTUM).version == 3
    _flip_byte(path, HEADER.size + len(payload) - 1)
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        store.load(3)


def test_a_file_longer_than_its_header_says_is_invalid(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    path = store.save(10, b"payload-10")
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(CorruptCheckpoint, match="oversized payload"):
        store.load(10)


def test_load_newest_and_versions(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    assert store.load_newest() is None
    for version in (10, 30, 20):
        store.save(version, f"state {version}".encode())
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "ckpt-12.ttc").write_bytes(b"wrong name width")
    assert store.versions() == [30, 20, 10]
    newest = store.load_newest()
    assert newest is not None
    assert (newest.version, newest.payload) == (30, b"state 30")
    assert store.skipped == []


def test_save_prunes_to_keep(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for version in (1, 2, 3, 4, 5):
        store.save(version, bytes([version]))
    assert store.versions() == [5, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000004.ttc", "ckpt-000000000005.ttc"]
    assert store.load(4).payload == b"\x04"


def test_save_overwrites_the_same_version(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(7, b"first")
    store.save(7, b"second")
    assert store.versions() == [7]
    assert store.load(7).payload == b"second"


def test_no_temporary_file_is_left_after_save(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for version in range(5):
        store.save(version, b"x" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000000002.ttc",
        "ckpt-000000000003.ttc",
        "ckpt-000000000004.ttc",
    ]


def _store_with_two(tmp_path: Path) -> tuple[CheckpointStore, Path]:
    store = CheckpointStore(tmp_path, keep=3)
    store.save(10, b"ten" * 100)
    newest = store.save(20, b"twenty" * 100)
    return store, newest


def test_truncated_newest_file_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    newest.write_bytes(newest.read_bytes()[:-7])
    checkpoint = store.load_newest()
    assert checkpoint is not None
    assert (checkpoint.version, checkpoint.payload) == (10, b"ten" * 100)
    assert len(store.skipped) == 1
    path, reason = store.skipped[0]
    assert path == newest
    assert reason == f"{newest}: truncated payload (593 of 600 bytes)"


def test_truncated_header_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    newest.write_bytes(newest.read_bytes()[:20])
    checkpoint = store.load_newest()
    assert checkpoint is not None and checkpoint.version == 10
    assert store.skipped == [(newest, f"{newest}: truncated header (20 bytes)")]


def test_empty_newest_file_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    newest.write_bytes(b"")
    checkpoint = store.load_newest()
    assert checkpoint is not None and checkpoint.version == 10
    assert store.skipped == [(newest, f"{newest}: truncated header (0 bytes)")]


def test_flipped_payload_byte_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    _flip_byte(newest, HEADER.size + 50)
    checkpoint = store.load_newest()
    assert checkpoint is not None and checkpoint.version == 10
    assert store.skipped == [(newest, f"{newest}: checksum mismatch")]
    # Set aside for inspection, no longer a candidate nor counted towards `keep`.
    assert store.versions() == [10]
    assert newest.with_name(newest.name + ".invalid").exists()


def test_load_reports_a_checksum_mismatch(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    _flip_byte(newest, HEADER.size + 50)
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        store.load(20)


def test_bad_magic_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    data = newest.read_bytes()
    newest.write_bytes(b"NOTACKPT" + data[8:])
    checkpoint = store.load_newest()
    assert checkpoint is not None and checkpoint.version == 10
    assert store.skipped == [(newest, f"{newest}: not a trainthrough checkpoint (magic b'NOTACKPT')")]


def test_every_file_invalid_gives_none_and_reports_each(tmp_path: Path) -> None:
    store, newest = _store_with_two(tmp_path)
    oldest = store.path_for(10)
    _flip_byte(newest, HEADER.size)
    _flip_byte(oldest, 0)
    assert store.load_newest() is None
    assert [path for path, _ in store.skipped] == [newest, oldest]
    assert "checksum mismatch" in store.skipped[0][1]
    assert "not a trainthrough checkpoint" in store.skipped[1][1]


def test_leftover_temp_file_of_another_pid_is_ignored_and_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save(10, b"ten")
    # A writer killed mid-write of version 20 left half a file under its temporary name.
    other_pid = os.getpid() + 1
    leftover = tmp_path / f".ckpt-000000000020.ttc.tmp-{other_pid}"
    leftover.write_bytes(MAGIC + b"\x00" * 10)
    assert store.versions() == [10]
    checkpoint = CheckpointStore(tmp_path, keep=3).load_newest()
    assert checkpoint is not None and checkpoint.version == 10
    assert leftover.exists()  # loading never deletes anything

    store.save(11, b"eleven")
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000010.ttc", "ckpt-000000000011.ttc"]


def test_prune_leaves_a_temp_file_of_our_own_pid(tmp_path: Path) -> None:
    # Our own temp name belongs to a save in progress (another thread), never a dead writer.
    store = CheckpointStore(tmp_path)
    ours = tmp_path / f".ckpt-000000000099.ttc.tmp-{os.getpid()}"
    ours.write_bytes(b"in progress")
    store.save(1, b"one")
    assert ours.exists()


def test_save_never_prunes_the_checkpoint_it_just_wrote(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.save(10, b"ten")
    _flip_byte(store.save(20, b"twenty"), HEADER.size)  # keep=1 already pruned 10
    # The PS restarts, finds 20 corrupted and nothing else, starts from its seed and, at
    # version 15, writes a checkpoint.
    assert store.load_newest() is None
    store.save(15, b"fifteen")
    checkpoint = CheckpointStore(tmp_path, keep=1).load_newest()
    assert checkpoint is not None and checkpoint.version == 15


# -- a real ParameterServerCore ----------------------------------------------------------


@pytest.fixture
def events(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl", "ps-0")
    yield log
    log.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _core(events: EventLog, registry: CollectorRegistry) -> ParameterServerCore:
    return ParameterServerCore(
        name="ps-0",
        mode="checkpoint",
        updates="async",
        expected_workers=1,
        events=events,
        metrics=create_metrics(registry),
        trainingjob="demo",
    )


def _written(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(
        "trainthrough_ps_checkpoints_written_total",
        {"trainingjob": "demo", "mode": "checkpoint", "role": "standalone"},
    )


def test_periodic_checkpointer_writes_every_n_updates(tmp_path: Path, events: EventLog, registry) -> None:
    core = _core(events, registry)
    store = CheckpointStore(tmp_path / "ckpts", keep=10)
    checkpointer = PeriodicCheckpointer(core, store, every_updates=3, every_seconds=None)
    core.install(_state(), restored_from="seed")
    core.commit = lambda record: record is not None and checkpointer.after_apply(core.version)
    checkpointer.start()

    for push_id, gradient in enumerate(_gradients(7)):
        core.push("worker-0", push_id, gradient)
    assert core.version == 7
    assert store.versions() == [6, 3]
    assert _written(registry) == 2.0

    # Each file holds the state as it was at its version.
    six = ParameterState.from_bytes(store.load(6).payload, SGD_MOMENTUM)
    assert six.version == 6
    assert six.last_push == {"worker-0": 5}

    written = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "checkpoint_written"]
    assert [e["version"] for e in written] == [3, 6]
    assert written[1]["path"] == str(store.path_for(6))
    assert written[1]["bytes"] == len(store.load(6).payload)
    assert all(e["source"] == "ps-0" for e in written)

    # A duplicate push (a retry) applies nothing and writes nothing.
    core.push("worker-0", 6, _gradients(1)[0])
    assert core.version == 7 and _written(registry) == 2.0

    checkpointer.stop()  # the final state is persisted on a graceful stop
    assert store.versions() == [7, 6, 3]
    assert _written(registry) == 3.0
    with core.order_lock:
        checkpointer.write()  # same version again: nothing new
    assert _written(registry) == 3.0


def test_checkpoint_mode_without_files_starts_from_the_seed(tmp_path: Path, events: EventLog, registry) -> None:
    core = _core(events, registry)
    store = CheckpointStore(tmp_path / "ckpts")
    seed = _state(fill=0.5)
    mode = CheckpointMode(
        core,
        checkpointer=PeriodicCheckpointer(core, store, every_updates=5, every_seconds=None),
        optimizer=SGD_MOMENTUM,
        initial_state=lambda: seed,
    )
    mode.start()
    assert core.restored_from == "seed"
    assert core.state is seed
    assert core.version == 0
    log = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in log] == ["ps_ready"]
    assert log[0]["restored_from"] == "seed"
    assert log[0]["version"] == 0

    for push_id, gradient in enumerate(_gradients(5)):
        core.push("worker-0", push_id, gradient)
    assert store.versions() == [5]
    mode.stop()


def test_checkpoint_mode_skips_a_corrupted_newest_checkpoint(tmp_path: Path, events: EventLog, registry) -> None:
    store = CheckpointStore(tmp_path / "ckpts", keep=3)
    ten = _state(version=10, fill=1.0)
    ten.record_pushes(["worker-0"], [9])
    twenty = _state(version=20, fill=2.0)
    store.save(10, ten.to_bytes())
    corrupted = store.save(20, twenty.to_bytes())
    _flip_byte(corrupted, HEADER.size + 100)

    core = _core(events, registry)
    seeded = []
    mode = CheckpointMode(
        core,
        checkpointer=PeriodicCheckpointer(core, store, every_updates=10, every_seconds=None),
        optimizer=SGD_MOMENTUM,
        initial_state=lambda: seeded.append(1) or _state(),
    )
    mode.start()
    assert seeded == []
    assert core.restored_from == "checkpoint"
    assert core.version == 10
    assert core.started_version == 10
    assert torch.equal(core.require_state().param, ten.param)
    assert core.require_state().is_duplicate("worker-0", 9)

    log = read_events(tmp_path / "events.jsonl")
    invalid = [e for e in log if e["event"] == "checkpoint_invalid"]
    assert len(invalid) == 1
    assert invalid[0]["path"] == str(corrupted)
    assert invalid[0]["reason"] == f"{corrupted}: checksum mismatch"
    assert invalid[0]["source"] == "ps-0"
    ready = [e for e in log if e["event"] == "ps_ready"]
    assert len(ready) == 1 and ready[0]["restored_from"] == "checkpoint" and ready[0]["version"] == 10
    assert log.index(invalid[0]) < log.index(ready[0])

    # Training continues from 10; the checkpoint at 20 replaces the corrupted file.
    for push_id, gradient in enumerate(_gradients(10), start=10):
        core.push("worker-0", push_id, gradient)
    assert core.version == 20
    fresh = CheckpointStore(tmp_path / "ckpts").load_newest()
    assert fresh is not None and fresh.version == 20
    assert torch.equal(ParameterState.from_bytes(fresh.payload, SGD_MOMENTUM).param, core.require_state().param)
    mode.stop()
