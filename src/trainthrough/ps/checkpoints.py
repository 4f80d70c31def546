"""Checkpoint files of the parameter server: atomic, checksummed, newest valid one wins.

Used by checkpoint mode (ps/checkpointing.py) and, optionally, as the stateless mode's
fallback. A file is written to a temporary name, fsynced, renamed into place and the
directory fsynced, so a kill at any moment leaves either the old set or the new file,
never a half-written checkpoint under a final name. Each file carries the BLAKE3 hash of
its payload (files of earlier releases: SHA-256, still read); on load a truncated or
corrupted file is reported and skipped in favour of the next newest.

File layout: MAGIC (8 bytes) | payload length (8 bytes, big-endian) | hash (32 bytes) | payload

The payload is a state in the layout of ps/state_codec.py, written straight from the live
tensors and read back into one buffer that the restored state keeps (no copies).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from trainthrough import wire
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec

log = logging.getLogger(__name__)

MAGIC = b"TTCKPT02"  # BLAKE3 of the payload
MAGIC_SHA256 = b"TTCKPT01"  # files of earlier releases: SHA-256 of the payload, still read
HEADER = struct.Struct(">8sQ32s")
NAME = re.compile(r"^ckpt-(\d{12})\.ttc$")


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed verification (bad magic, length or checksum)."""


Payload = bytes | bytearray | memoryview | Iterable[bytes | memoryview]
READ_CHUNK = 16 << 20


@dataclass(frozen=True)
class Checkpoint:
    version: int
    path: Path
    payload: memoryview  # writable: a state decoded from it takes the buffer over


def _write_all(f, chunk: bytes | memoryview) -> None:
    view = memoryview(chunk).cast("B")
    while view:
        view = view[f.write(view) :]


def _read_exactly(f, part: memoryview, path: Path) -> memoryview:
    filled = 0
    while filled < len(part):
        count = f.readinto(part[filled:])
        if not count:
            raise CorruptCheckpoint(f"{path}: the payload ended early while reading")
        filled += count
    return part


def _hashed_alongside(digest, chunks: Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """Each chunk, after handing it to a thread that hashes it into `digest` (hashing
    releases the GIL) while the caller writes it or reads the next; all hashed at the end."""
    with ThreadPoolExecutor(1) as hashing:
        hashed = None
        for chunk in chunks:
            if hashed is not None:
                hashed.result()  # in order: one chunk at a time
            hashed = hashing.submit(digest.update, chunk)
            yield chunk
        if hashed is not None:
            hashed.result()


class CheckpointStore:
    """A folder of checkpoints named by model version, keeping the newest `keep`.

    >>> store = CheckpointStore("/tmp/ckpts", keep=3)
    >>> store.save(100, b"...state bytes...")
    >>> store.load_newest().version
    100
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self.skipped: list[tuple[Path, str]] = []  # (file, reason) of invalid files seen on load

    def path_for(self, version: int) -> Path:
        return self.directory / f"ckpt-{version:012d}.ttc"

    def versions(self) -> list[int]:
        """Versions present on disk (valid or not), newest first."""
        found = []
        for entry in self.directory.iterdir():
            match = NAME.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def save(self, version: int, payload: Payload) -> Path:
        """Write `payload` (bytes, or its chunks in order) as the checkpoint of `version`,
        hashing each chunk in a thread while it is written."""
        chunks = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        final = self.path_for(version)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(fd, "wb", buffering=0, closefd=True) as f:
                f.write(bytes(HEADER.size))  # the real header once the payload's length and hash are known
                digest, length = blake3.blake3(), 0
                for chunk in _hashed_alongside(digest, chunks):
                    _write_all(f, chunk)
                    length += len(chunk)
                os.pwrite(f.fileno(), HEADER.pack(MAGIC, length, digest.digest()), 0)
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_directory()
        self._prune(keep_version=version)
        return final

    def load(self, version: int) -> Checkpoint:
        """The verified checkpoint of `version`: read into one buffer while the part read
        before is hashed, so verifying costs little more than reading."""
        path = self.path_for(version)
        with open(path, "rb", buffering=0) as f:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                raise CorruptCheckpoint(f"{path}: truncated header ({len(head)} bytes)")
            magic, length, expected = HEADER.unpack(head)
            if magic not in (MAGIC, MAGIC_SHA256):
                raise CorruptCheckpoint(f"{path}: not a trainthrough checkpoint (magic {magic!r})")
            stored = os.fstat(f.fileno()).st_size - HEADER.size
            if stored != length:
                raise CorruptCheckpoint(f"{path}: {'truncated' if stored < length else 'oversized'} payload ({stored} of {length} bytes)")
            _, view = wire.byte_buffer(length)
            digest = blake3.blake3() if magic == MAGIC else hashlib.sha256()
            parts = (_read_exactly(f, view[start : start + READ_CHUNK], path) for start in range(0, length, READ_CHUNK))
            for _ in _hashed_alongside(digest, parts):
                pass  # the next part is read while this one is hashed
        if digest.digest() != expected:
            raise CorruptCheckpoint(f"{path}: checksum mismatch")
        return Checkpoint(version=version, path=path, payload=view)

    def load_newest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; invalid ones are logged, recorded and skipped."""
        for version in self.versions():
            try:
                return self.load(version)
            except (CorruptCheckpoint, OSError) as error:
                log.warning("skipping invalid checkpoint: %s", error)
                path = self.path_for(version)
                self.skipped.append((path, str(error)))
                # Set it aside (kept for inspection): it no longer counts towards `keep`.
                path.replace(path.with_name(path.name + ".invalid"))
        return None

    def _prune(self, keep_version: int) -> None:
        for version in self.versions()[self.keep :]:
            if version != keep_version:  # never the checkpoint just written
                self.path_for(version).unlink(missing_ok=True)
        for stale in self.directory.glob(".ckpt-*.tmp-*"):
            # A temporary file of a writer that died mid-write; ours was renamed already.
            if not stale.name.endswith(f"-{os.getpid()}"):
                stale.unlink(missing_ok=True)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PeriodicCheckpointer:
    """Writes a PS's state to a CheckpointStore every N updates and/or T seconds.

    Used by checkpoint mode and by stateless mode's optional fallback. Writes happen under
    the PS's order lock, so no update is applied between snapshot and file, and a kill can
    roll the model back by at most one interval.
    """

    def __init__(self, core, store: CheckpointStore, every_updates: int | None, every_seconds: float | None) -> None:
        self.core = core
        self.store = store
        self.every_updates = every_updates
        self.every_seconds = every_seconds
        self._last_write = time.monotonic()
        self._last_version = -1
        self._stopped = threading.Event()

    def start(self) -> None:
        self._last_version = self.core.version
        if self.every_seconds:
            threading.Thread(target=self._timer, name="checkpoint-timer", daemon=True).start()

    def after_apply(self, version: int) -> None:
        """Call under the order lock after each applied update."""
        if self.every_updates and version % self.every_updates == 0:
            self.write()

    def stop(self) -> None:
        self._stopped.set()
        if self.core.serving:
            with self.core.order_lock:
                self.write()

    def _timer(self) -> None:
        assert self.every_seconds
        while not self._stopped.wait(min(self.every_seconds, 0.5)):
            if time.monotonic() - self._last_write >= self.every_seconds:
                with self.core.order_lock:
                    self.write()

    def write(self) -> None:
        """Write the current state; the caller holds the order lock."""
        state = self.core.require_state()
        self._last_write = time.monotonic()
        if state.version == self._last_version:
            return
        started = time.monotonic()
        encoded = state.encode()  # views of the live state: unchanged while we hold the order lock
        path = self.store.save(state.version, encoded.chunks())
        self._last_version = state.version
        self.core.metric(self.core.metrics.checkpoints_written).inc()
        self.core.events.emit(
            "checkpoint_written",
            version=state.version,
            path=str(path),
            bytes=encoded.nbytes,
            seconds=round(time.monotonic() - started, 6),
        )


def restore_newest(core, store: CheckpointStore, optimizer: OptimizerSpec) -> ParameterState | None:
    """The newest valid checkpoint's state, reporting every invalid file skipped on the way."""
    newest = store.load_newest()
    for path, reason in store.skipped:
        core.events.emit("checkpoint_invalid", path=str(path), reason=reason)
    return None if newest is None else ParameterState.from_bytes(newest.payload, optimizer)
