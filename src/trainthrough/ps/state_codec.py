"""The byte layout of a parameter-server state, for checkpoints and chain state transfer.

Written straight from the live tensors (no serialized copy of the model is built first)
and read back without copying: every tensor of a decoded state is a view into the buffer
it was read into. That makes a restore cost one read of the bytes, and a state transfer
one copy out of the network buffers.

Layout (all integers little-endian):

    MAGIC (8 bytes) | header length (8 bytes) | header (JSON, UTF-8) | padding | tensor data

The header holds the version, the chain sequence number, the deduplication table, the
optimizer's non-tensor state and, for each tensor, its name, dtype, shape and byte offset
from the start of the payload (each aligned to ALIGN bytes). The optimizer's
hyperparameters are not stored: they come from the job spec, which stays the truth when it
changes between a write and a restore.

Payloads of format 1 (torch.save archives) are still read, so checkpoints written before
this layout restore after an upgrade.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trainthrough import wire

MAGIC = b"TTSTATE2"
FORMAT_VERSION = 2
ALIGN = 64
_LENGTH = struct.Struct("<Q")
_PREFIX = len(MAGIC) + _LENGTH.size
_LEGACY_MAGIC = b"PK\x03\x04"  # a zip archive: torch.save, format 1


# A header holds a few scalars, one entry per tensor and the deduplication table (at most
# 64 workers): a few KB. The bound is what a receiver reserves before any data arrives.
MAX_HEADER_BYTES = 64 << 10
MAX_TENSORS = 4  # the params and at most three optimizer tensors (Adam: exp_avg, exp_avg_sq, step)


def max_nbytes(numel: int) -> int:
    """The most bytes an encoded state of a model of `numel` parameters can take."""
    return MAX_HEADER_BYTES + MAX_TENSORS * _align(numel * 4 + ALIGN)


class StateFormatError(ValueError):
    """A payload that is not a well-formed parameter-server state."""


@dataclass
class DecodedState:
    """What a payload holds; the tensors are views into the buffer it was decoded from."""

    version: int
    seq: int
    last_push: dict[str, int]
    params: torch.Tensor
    optimizer_state: dict[str, Any]  # torch.optim per-parameter state of the one parameter


@dataclass
class EncodedState:
    """A state ready to write: the header bytes, then each tensor's bytes at its offset.

    The tensors are the live ones: the caller keeps them unchanged until the bytes are
    written (the PS holds its order lock, under which alone updates are applied).
    """

    header: bytes
    tensors: list[torch.Tensor]
    offsets: list[int]
    nbytes: int

    def chunks(self, chunk_bytes: int = wire.CHUNK_BYTES) -> Iterator[memoryview]:
        """The payload as views of at most `chunk_bytes` (padding included); no copies."""
        yield memoryview(self.header)
        position = len(self.header)
        for tensor, offset in zip(self.tensors, self.offsets):
            if offset > position:
                yield memoryview(bytes(offset - position))
            raw = _byte_view(tensor)
            for start in range(0, len(raw), chunk_bytes):
                yield raw[start : start + chunk_bytes]
            position = offset + len(raw)

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def encode(version: int, seq: int, last_push: dict[str, int], params: torch.Tensor, optimizer_state: dict[str, Any]) -> EncodedState:
    tensors = {"params": params.detach()}
    values: dict[str, Any] = {}
    for key, value in optimizer_state.items():
        if isinstance(value, torch.Tensor):
            tensors[f"optimizer.{key}"] = value.detach()
        else:
            values[key] = value  # plain values (None, numbers) travel in the header
    entries: list[dict[str, Any]] = []
    offsets: list[int] = []
    for name, tensor in tensors.items():
        entries.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)})
    header_fields = {
        "format": FORMAT_VERSION,
        "version": version,
        "seq": seq,
        "last_push": last_push,
        "optimizer_values": values,
        "tensors": entries,
    }
    # Offsets depend on the header's length, which depends on the offsets' digits: lay out
    # the data after a header sized with room to spare, then pad the header to it.
    body = json.dumps(header_fields).encode()
    start = _align(_PREFIX + len(body) + 32 * (len(entries) + 1))
    position = start
    for entry, tensor in zip(entries, tensors.values()):
        entry["offset"] = position
        offsets.append(position)
        position = _align(position + tensor.numel() * tensor.element_size())
    body = json.dumps(header_fields).encode()
    if _PREFIX + len(body) > start:  # cannot happen with the room above; never write a bad layout
        raise AssertionError("state header outgrew its reserved space")
    header = MAGIC + _LENGTH.pack(len(body)) + body
    last = list(tensors.values())[-1]
    nbytes = offsets[-1] + last.numel() * last.element_size()
    return EncodedState(header, list(tensors.values()), offsets, nbytes)


def decode(buffer: torch.Tensor) -> DecodedState:
    """The state in `buffer` (a writable 1-D uint8 tensor), its tensors viewing it."""
    if buffer.numel() >= len(_LEGACY_MAGIC) and bytes(buffer[: len(_LEGACY_MAGIC)].tolist()) == _LEGACY_MAGIC:
        return _decode_legacy(buffer)
    if buffer.numel() < _PREFIX:
        raise StateFormatError(f"state: {buffer.numel()} bytes, shorter than its {_PREFIX}-byte prefix")
    prefix = bytes(buffer[:_PREFIX].numpy())
    if prefix[: len(MAGIC)] != MAGIC:
        raise StateFormatError(f"state: unknown format (starts with {prefix[: len(MAGIC)]!r}, expected {MAGIC!r})")
    (length,) = _LENGTH.unpack_from(prefix, len(MAGIC))
    if _PREFIX + length > buffer.numel():
        raise StateFormatError(f"state: header of {length} bytes runs past the {buffer.numel()}-byte payload")
    try:
        header = json.loads(bytes(buffer[_PREFIX : _PREFIX + length].numpy()))
        if header.get("format") != FORMAT_VERSION:
            raise StateFormatError(f"state format {header.get('format')!r} is not {FORMAT_VERSION}")
        tensors = {entry["name"]: _tensor_at(buffer, entry) for entry in header["tensors"]}
        optimizer_state: dict[str, Any] = dict(header["optimizer_values"])
        for name, tensor in tensors.items():
            if name.startswith("optimizer."):
                optimizer_state[name.removeprefix("optimizer.")] = tensor
        return DecodedState(
            version=int(header["version"]),
            seq=int(header["seq"]),
            last_push={str(k): int(v) for k, v in header["last_push"].items()},
            params=tensors["params"],
            optimizer_state=optimizer_state,
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StateFormatError(f"state: malformed header ({type(error).__name__}: {error})") from error


def writable_buffer(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """`data` as a writable uint8 tensor: shared when it is writable, else copied once
    (decoded tensors are trained in place, and read-only bytes must never be written)."""
    view = memoryview(data)
    if not len(view):
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(view) if view.readonly else view, dtype=torch.uint8)


def _tensor_at(buffer: torch.Tensor, entry: dict[str, Any]) -> torch.Tensor:
    name = entry["name"]
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype) or dtype.is_complex:
        raise StateFormatError(f"state: tensor {name!r} has unknown dtype {entry['dtype']!r}")
    shape = [int(d) for d in entry["shape"]]
    offset = int(entry["offset"])
    nbytes = dtype.itemsize
    for dim in shape:
        nbytes *= dim
    if offset % ALIGN or offset < _PREFIX or offset + nbytes > buffer.numel():
        raise StateFormatError(f"state: tensor {name!r} ({nbytes} bytes at {offset}) lies outside the {buffer.numel()}-byte payload")
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


def _decode_legacy(buffer: torch.Tensor) -> DecodedState:
    blob = torch.load(io.BytesIO(buffer.numpy().tobytes()), weights_only=True)
    if blob.get("format") != 1:
        raise StateFormatError(f"state format {blob.get('format')!r} is not 1 or {FORMAT_VERSION}")
    return DecodedState(
        version=int(blob["version"]),
        seq=int(blob["seq"]),
        last_push={str(k): int(v) for k, v in blob["last_push"].items()},
        params=blob["params"],
        optimizer_state=dict(blob["optimizer"]["state"].get(0, {})),
    )


def _byte_view(tensor: torch.Tensor) -> memoryview:
    flat = tensor.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _align(position: int) -> int:
    return -(-position // ALIGN) * ALIGN
