"""Tensors through shared memory when a worker and its PS share a host (the local runtime
always does): the fastest channel the two ends can share, negotiated over gRPC, which
stays the protocol and carries everything but the bytes.

How it goes:
- A PS offers it in its Health reply (`SharedMemoryOffer`): a small segment of its own,
  `/dev/shm/<probe>`, holding a random nonce. A worker that can open it and read the same
  nonce shares the PS's shared memory (another pod, another node, another container
  cannot, and keeps to gRPC).
- The worker creates one segment for the gradient and the parameters (`WorkerSegment`),
  writes its gradient, then pushes with `Tensor.shared` naming the region (and the region
  to write the parameters into); the PS copies the gradient out of the region before
  anything checks it, so the checks (dtype, shape, byte length, NaN, push id) are those of
  every channel and nothing the writer does afterwards reaches the applied gradient.
- The PS maps a worker's segment on its first request, keeps the mapping per worker, and
  removes the segment's name at once (a PS that restarts gets a new segment from each
  worker). A segment is named after the process that made it; whoever starts next on the
  host removes those of processes that are gone (`sweep`), so a SIGKILL leaks nothing for
  long.

Segments are files of /dev/shm, created owner-only (0600) and mapped whole; a request that
names anything but a segment of this form, or a region outside it, is a WireError.
"""

from __future__ import annotations

import hmac
import mmap
import os
import re
import secrets
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from trainthrough import wire
from trainthrough.errors import SharedSegmentGone, WireError
from trainthrough.proto import ps_pb2

# Where POSIX shared memory lives as files. A pod on a node has a /dev/shm of its own; the
# cluster stand-in, whose pods are processes of one host, gives each pod a folder of its
# own through this variable, so that pods never share memory there either.
SHM_DIR_ENV = "TRAINTHROUGH_SHM_DIR"
SHM_DIR = Path(os.environ.get(SHM_DIR_ENV) or "/dev/shm")
PREFIX = "trainthrough-"
# What a segment's name may be: the prefix, the pid of the process that made it and a
# random suffix; nothing that could name another file (no separators, no dots).
SEGMENT_NAME = re.compile(r"^trainthrough-(?P<pid>[0-9]{1,10})-[0-9a-f]{32}$")
NONCE_BYTES = 16
MAX_MAPPED = 64  # worker segments a PS keeps mapped (one per worker; the oldest go first)


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux's /dev/shm)."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep() -> int:
    """Remove the segments whose maker is gone (killed before a peer took the name);
    returns how many."""
    removed = 0
    for path in SHM_DIR.glob(PREFIX + "*"):
        match = SEGMENT_NAME.match(path.name)
        if match and not _alive(int(match["pid"])):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


class Segment:
    """A mapped shared-memory segment: created here (`create`) or opened by name (`open`)."""

    def __init__(self, name: str, size: int, memory: mmap.mmap) -> None:
        self.name = name
        self.size = size
        self._memory = memory
        self.view = memoryview(memory)

    @classmethod
    def create(cls, size: int) -> "Segment":
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
        fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the pages now: a full /dev/shm (a container's is often 64 MiB) must
            # fail here, not as a SIGBUS at the first write into a page it cannot back.
            os.posix_fallocate(fd, 0, size)
            return cls(name, size, mmap.mmap(fd, size))
        except BaseException:
            os.unlink(SHM_DIR / name)
            raise
        finally:
            os.close(fd)

    @classmethod
    def open(cls, name: str, what: str) -> "Segment":
        """The segment `name` (a request's: validated), mapped whole; WireError if it is
        not one of ours or cannot be opened."""
        if not SEGMENT_NAME.match(name):
            raise WireError(f"{what}.segment: not a shared-memory segment name ({name[:80]!r})")
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SharedSegmentGone(f"{what}.segment: {name} does not exist (any more)") from None
        except OSError as error:
            raise WireError(f"{what}.segment: cannot open {name}: {error.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size <= 0:
                raise WireError(f"{what}.segment: {name} is empty")
            return cls(name, size, mmap.mmap(fd, size))
        finally:
            os.close(fd)

    def region(self, region: ps_pb2.SharedRegion, what: str) -> memoryview:
        """The bytes `region` names; WireError if they are not all inside the segment."""
        offset, length = region.offset, region.length
        if offset < 0 or length < 0 or offset + length > self.size:
            raise WireError(f"{what}: bytes {offset}..{offset + length} are outside segment {self.name} of {self.size}")
        return self.view[offset : offset + length]

    def unlink(self) -> None:
        """Remove the name (the mappings stay valid until closed)."""
        try:
            os.unlink(SHM_DIR / self.name)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.view.release()
        try:
            self._memory.close()
        except BufferError:  # a tensor still views it: the mapping goes with the last view
            pass


def _private_copy(source: memoryview, into: torch.Tensor | None = None) -> memoryview:
    """The bytes of `source` in memory of this process's own (`into`, when it is large
    enough): one pass, no zeroing first (a bytearray of the model's size costs three
    times the copy), from the allocator's warm pages (process.tune_allocator)."""
    copy = torch.empty(len(source), dtype=torch.uint8) if into is None else into[: len(source)]
    if len(source):
        copy.copy_(torch.frombuffer(source, dtype=torch.uint8))
    return memoryview(copy.numpy())


class _WorkerCopy:
    """The memory one worker's gradients are copied into, reused by its next push."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.busy = threading.Lock()  # held while a push of this worker uses the buffer


# -- the PS side -------------------------------------------------------------------------------
class SharedMemoryServer:
    """A PS's end: the probe it offers, and the segments of the workers that use them."""

    def __init__(self, on_mapped: Callable[[str, int], None] = lambda worker, size: None, *, reuse_copies: bool = False) -> None:
        """`on_mapped(worker, bytes)`: a worker's segment was mapped (its transfers go
        through shared memory from now on). `reuse_copies`: each worker's gradients are
        copied into one buffer of its own, reused by its next push (a mode that keeps a
        gradient after its push returned, the chain's log, gets a fresh copy each time).
        Fresh buffers of the model's size, freed and taken again around the small
        allocations between them, fragment the heap: the PS grows by a model now and then."""
        sweep()
        self._on_mapped = on_mapped
        self._reuse_copies = reuse_copies
        self._copies: dict[str, _WorkerCopy] = {}
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self._probe = Segment.create(NONCE_BYTES)
        self._probe.view[:] = self._nonce
        self._mapped: OrderedDict[str, Segment] = OrderedDict()  # worker -> its segment
        self._lock = threading.Lock()

    def offer(self) -> ps_pb2.SharedMemoryOffer:
        return ps_pb2.SharedMemoryOffer(probe_segment=self._probe.name, nonce=self._nonce)

    def _segment(self, worker: str, name: str, what: str) -> Segment:
        with self._lock:
            known = self._mapped.get(worker)
            if known is not None and known.name == name:
                self._mapped.move_to_end(worker)
                return known
            segment = Segment.open(name, what)
            segment.unlink()  # mapped on both ends: no name is left to leak
            if known is not None:
                known.close()
            self._mapped[worker] = segment
            while len(self._mapped) > MAX_MAPPED:
                evicted, oldest = self._mapped.popitem(last=False)
                oldest.close()
                self._copies.pop(evicted, None)
        self._on_mapped(worker, segment.size)
        return segment

    @property
    def workers(self) -> list[str]:
        """The workers whose segments are mapped (they transfer through shared memory)."""
        with self._lock:
            return list(self._mapped)

    def segment_of(self, worker: str) -> str | None:
        with self._lock:
            segment = self._mapped.get(worker)
            return segment.name if segment is not None else None

    def check_region(self, worker: str, region: ps_pb2.SharedRegion, nbytes: int, what: str) -> memoryview:
        """The bytes of `region`, WireError unless they are `nbytes` inside the worker's
        segment: checked before a push is applied whose parameters will be written there."""
        target = self._segment(worker, region.segment, what).region(region, what)
        if len(target) != nbytes:
            raise WireError(f"{what}: a region of {len(target)} bytes for {nbytes} bytes of parameters")
        return target

    @contextmanager
    def copy_out(self, worker: str, tensor: ps_pb2.Tensor, what: str) -> Iterator[memoryview]:
        """A private copy of the bytes `tensor.shared` names (then checked as any data),
        valid until the block ends: in the worker's reused buffer when the server reuses
        them and no other call of the same worker holds it (a retry racing the call it
        retries gets a fresh copy)."""
        segment = self._segment(worker, tensor.shared.segment, f"{what}.shared")
        source = segment.region(tensor.shared, f"{what}.shared")
        if not self._reuse_copies:
            yield _private_copy(source)
            return
        with self._lock:
            mine = self._copies.setdefault(worker, _WorkerCopy())
        if not mine.busy.acquire(blocking=False):
            yield _private_copy(source)
            return
        try:
            if mine.buffer is None or mine.buffer.numel() < len(source):
                mine.buffer = torch.empty(len(source), dtype=torch.uint8)
            yield _private_copy(source, mine.buffer)
        finally:
            mine.busy.release()

    def write(self, worker: str, region: ps_pb2.SharedRegion, tensor: torch.Tensor, dtype: str, what: str) -> None:
        """`tensor` (the parameters it asked for), cast to `dtype`, into `region` of the
        worker's segment: one copy."""
        wire.copy_into(self.check_region(worker, region, tensor.numel() * wire.itemsize(dtype), what), tensor, dtype)

    def close(self) -> None:
        self._probe.unlink()
        self._probe.close()
        with self._lock:
            for segment in self._mapped.values():
                segment.close()
            self._mapped.clear()
            self._copies.clear()


# -- the worker side ---------------------------------------------------------------------------
def shares_memory_with(offer: ps_pb2.SharedMemoryOffer) -> bool:
    """Whether this process sees the PS's probe segment holding the PS's nonce."""
    if not offer.probe_segment or len(offer.nonce) != NONCE_BYTES or not available():
        return False
    try:
        probe = Segment.open(offer.probe_segment, "probe")
    except (WireError, SharedSegmentGone):
        return False
    try:
        return probe.size == NONCE_BYTES and hmac.compare_digest(bytes(probe.view), offer.nonce)
    finally:
        probe.close()


class WorkerSegment:
    """A worker's segment: its gradient, then the parameters, each `nbytes` long."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.segment = Segment.create(2 * nbytes)

    def _region(self, offset: int) -> ps_pb2.SharedRegion:
        return ps_pb2.SharedRegion(segment=self.segment.name, offset=offset, length=self.nbytes)

    @property
    def gradient(self) -> ps_pb2.SharedRegion:
        return self._region(0)

    @property
    def params(self) -> ps_pb2.SharedRegion:
        return self._region(self.nbytes)

    def write_gradient(self, target: ps_pb2.Tensor, gradient: torch.Tensor, dtype: str) -> None:
        """The gradient into the segment (one copy, cast to the wire dtype), and `target`
        the header that names it."""
        wire.copy_into(self.segment.view[: self.nbytes], gradient, dtype)
        wire.fill_bytes(target, b"", list(gradient.shape), dtype)
        target.shared.CopyFrom(self.gradient)

    def read_params(self, header: ps_pb2.Tensor) -> torch.Tensor:
        """The parameters the PS wrote (header.shared must name our params region), as a
        tensor of their own: the region is written again by the next call."""
        region = header.shared
        if (region.segment, region.offset, region.length) != (self.segment.name, self.nbytes, self.nbytes):
            raise WireError(f"params.shared: not this worker's parameters region ({region.segment[:80]!r} {region.offset}+{region.length})")
        return wire.decode(header, what="params", data=_private_copy(self.segment.region(region, "params.shared")))

    def close(self) -> None:
        self.segment.unlink()
        self.segment.close()


class SharedChannel:
    """A worker's shared-memory path to the PS it calls: negotiated from the PS's Health
    offer once per PS address, again after the PS forgot the segment (`forget`: it
    restarted). One segment at a time: a worker talks to one PS (the head)."""

    def __init__(self) -> None:
        self._address: str | None = None
        self._segment: WorkerSegment | None = None
        self._refused: set[str] = set()  # addresses whose PS offers nothing this worker reaches

    def segment_for(self, address: str, nbytes: int, health: Callable[[], ps_pb2.HealthReply]) -> WorkerSegment | None:
        if address in self._refused:
            return None
        if address != self._address or self._segment is None or self._segment.nbytes != nbytes:
            offer = health()
            self.close()
            if not (offer.HasField("shared_memory") and shares_memory_with(offer.shared_memory)):
                self._refused.add(address)
                return None
            try:
                self._address, self._segment = address, WorkerSegment(nbytes)
            except OSError:  # no room in /dev/shm for the model twice: gRPC it is
                self._refused.add(address)
                return None
        return self._segment

    def forget(self, address: str) -> None:
        if address == self._address:
            self.close()

    def close(self) -> None:
        if self._segment is not None:
            self._segment.close()
        self._address, self._segment = None, None
