"""Tensors on the wire: raw little-endian bytes with dtype and shape (proto `Tensor`).

Used by the parameter server and the workers. Decoding validates everything a malformed or
hostile message could get wrong (dtype, shape, byte length, non-finite values) and raises
WireError with what is wrong; the PS turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import grpc
import torch
from google.protobuf.message import Message

from trainthrough.errors import WireError
from trainthrough.proto import ps_pb2

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_dtype(dtype: str, what: str = "dtype") -> torch.dtype:
    """The torch dtype of a wire dtype name; WireError naming `what` for any other name."""
    if dtype not in DTYPES:
        raise WireError(f"{what}: must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def itemsize(dtype: str) -> int:
    """Bytes per element of a wire dtype."""
    return check_dtype(dtype).itemsize


def encode(tensor: torch.Tensor, dtype: str = "float32") -> ps_pb2.Tensor:
    """A flat CPU copy of `tensor` as a new proto Tensor, cast to `dtype` for transfer."""
    message = ps_pb2.Tensor()
    fill(message, tensor, dtype)
    return message


def fill(target: ps_pb2.Tensor, tensor: torch.Tensor, dtype: str = "float32") -> None:
    """Write `tensor` into the (sub)message `target` in place: one copy of the bytes into the
    message (building a Tensor and assigning or CopyFrom-ing it would copy them again)."""
    fill_bytes(target, tensor_bytes(tensor, dtype), list(tensor.shape), dtype)


def _wire_view(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    """`tensor` flat on the CPU in `dtype`, as a tensor numpy can take the bytes of."""
    flat = tensor.detach().reshape(-1).to(device="cpu", dtype=check_dtype(dtype)).contiguous()
    # bfloat16 has no numpy dtype: reinterpret its storage as int16 to take the bytes.
    return flat.view(torch.int16) if dtype == "bfloat16" else flat


def tensor_bytes(tensor: torch.Tensor, dtype: str = "float32") -> bytes:
    """The flat little-endian bytes of `tensor` cast to `dtype` (one copy)."""
    return _wire_view(tensor, dtype).numpy().tobytes()


def tensor_view(tensor: torch.Tensor, dtype: str = "float32") -> memoryview:
    """The flat little-endian bytes of `tensor` cast to `dtype`, in the tensor's own memory
    when no cast is needed (a socket sends them from there); valid while `tensor` is."""
    return memoryview(_wire_view(tensor, dtype).numpy()).cast("B")


def copy_into(target: memoryview, tensor: torch.Tensor, dtype: str = "float32") -> None:
    """`tensor` flat, cast to `dtype`, into the writable bytes `target` (exactly its wire
    size): one copy, no intermediate bytes."""
    wire_dtype = check_dtype(dtype)
    flat = tensor.detach().reshape(-1)
    if len(target) != flat.numel() * wire_dtype.itemsize:
        raise ValueError(f"{len(target)} bytes cannot hold {flat.numel()} {dtype} elements")
    if not len(target):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (a writable buffer: no warning expected)
        torch.frombuffer(target, dtype=wire_dtype).copy_(flat)


def fill_bytes(target: ps_pb2.Tensor, raw: bytes, shape: list[int], dtype: str = "float32") -> None:
    """Write already-encoded bytes (e.g. a snapshot of the PS's parameters) into `target`."""
    target.dtype = dtype
    del target.shape[:]
    target.shape.extend(shape)
    target.data = raw


def check_header(message: ps_pb2.Tensor, numel: int | None, what: str) -> tuple[torch.dtype, list[int], int]:
    """(dtype, shape, element count) of a proto Tensor, checked against `numel` if given."""
    dtype = check_dtype(message.dtype, f"{what}.dtype")
    shape = list(message.shape)
    if any(d < 0 for d in shape):
        raise WireError(f"{what}.shape: negative dimension in {shape}")
    count = 1
    for d in shape:
        count *= d
    if numel is not None and count != numel:
        raise WireError(f"{what}.shape: expected {numel} elements, got shape {shape} ({count})")
    return dtype, shape, count


def decode(
    message: ps_pb2.Tensor, numel: int | None = None, *, what: str = "tensor", data: bytes | memoryview | None = None
) -> torch.Tensor:
    """A float32 1-D tensor from a proto Tensor (its bytes in `data` when they travelled
    beside it, see Framed); checks dtype, shape, length and finiteness.

    The result may share memory with the (immutable) received bytes: never write to it.
    """
    return decode_bounded(message, numel, what=what, data=data)[0]


def decode_bounded(
    message: ps_pb2.Tensor, numel: int | None = None, *, what: str = "tensor", data: bytes | memoryview | None = None
) -> tuple[torch.Tensor, float]:
    """As decode, with the largest magnitude among the values (found by the same pass that
    checks them finite: the PS's update needs it, and a second pass would cost as much)."""
    raw = message.data if data is None else data
    dtype, shape, count = check_header(message, numel, what)
    if len(raw) != count * dtype.itemsize:
        raise WireError(
            f"{what}.data: expected {count * dtype.itemsize} bytes for shape {shape} {message.dtype}, got {len(raw)}"
        )
    if count == 0:
        return torch.empty(0, dtype=torch.float32), 0.0
    with warnings.catch_warnings():
        # The bytes object is read-only; the tensor is only ever read, never written.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(raw, dtype=dtype)
    if dtype != torch.float32:
        flat = flat.to(torch.float32)
    return flat, check_finite(flat, what)


def check_finite(flat: torch.Tensor, what: str) -> float:
    """The largest magnitude in `flat`; WireError if it holds a NaN or an infinity.

    The minimum and maximum (one pass) are finite exactly when every element is (a NaN
    makes both NaN); only a tensor that fails pays for the element-wise count.
    """
    if not flat.numel():
        return 0.0
    low, high = (v.item() for v in torch.aminmax(flat))  # Python floats: no tensor op for one scalar
    if math.isfinite(low) and math.isfinite(high):
        return max(-low, high)
    bad = int((~torch.isfinite(flat)).sum())
    raise WireError(f"{what}.data: {bad} non-finite values (NaN or Inf)")


# -- the hot RPCs' payload beside its message -------------------------------------------------
# A push carries the gradient and a pull reply the parameters: tens or hundreds of MB each.
# Through protobuf they are copied on every step (parse, `.data`, building, serializing).
# `Framed` keeps the tensor's bytes beside a message that holds everything else, and the
# (de)serializers below read and write the standard protobuf encoding around them, so any
# protobuf peer interoperates: receiving costs no copy of the data (a memoryview into the
# bytes gRPC hands over), sending one (joining the message and the data).

DATA_FIELD = ps_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number
SERVICE = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
PUSH_TENSOR_FIELD = ps_pb2.PushRequest.DESCRIPTOR.fields_by_name["gradient"].number
PUSH_REPLY_TENSOR_FIELD = ps_pb2.PushReply.DESCRIPTOR.fields_by_name["params"].number
PULL_TENSOR_FIELD = ps_pb2.PullReply.DESCRIPTOR.fields_by_name["params"].number


@dataclass(frozen=True)
class Framed:
    """`message` with its Tensor field's data travelling separately as `data`."""

    message: Message
    data: bytes | memoryview = b""


def frame(message: Message, field: int, tensor: torch.Tensor, dtype: str = "float32") -> Framed:
    """`message` with `tensor` in its Tensor field `field`, the bytes beside it."""
    header = getattr(message, field_name(type(message), field))
    fill_bytes(header, b"", list(tensor.shape), dtype)
    return Framed(message, tensor_bytes(tensor, dtype))


def framed_serializer(field: int) -> Callable[[Framed], bytes]:
    """Encode a Framed whose Tensor sits at `field` of its message."""

    def serialize(framed: Framed) -> bytes:
        head = framed.message.SerializeToString()
        if not len(framed.data):
            return head
        # A second occurrence of a message field merges into the first (protobuf's rule),
        # so the data can follow the already-encoded dtype and shape.
        data_head = _key(DATA_FIELD) + _varint(len(framed.data))
        return b"".join((head, _key(field), _varint(len(data_head) + len(framed.data)), data_head, framed.data))

    return serialize


def framed_deserializer(message_type: type[Message], field: int) -> Callable[[bytes], Framed]:
    """Decode bytes of `message_type` into a Framed: the data of its Tensor at `field` as a
    memoryview into `raw`, the rest parsed by protobuf."""

    def deserialize(raw: bytes) -> Framed:
        try:
            rest, data = _split(memoryview(raw), field)
        except (WireError, IndexError):
            rest, data = None, None
        if rest is None:  # an unusual encoding (the data twice, or malformed): protobuf decides
            message = message_type.FromString(raw)
            tensor = getattr(message, field_name(message_type, field))
            data, tensor.data = tensor.data, b""
            return Framed(message, data)
        return Framed(message_type.FromString(rest), data if data is not None else b"")

    return deserialize


def field_name(message_type: type[Message], number: int) -> str:
    return message_type.DESCRIPTOR.fields_by_number[number].name


def _split(view: memoryview, field: int) -> tuple[bytes | None, memoryview | None]:
    """(the message without its Tensor's data field, that data), or (None, None) when the
    data occurs more than once (then protobuf's last-one-wins must decide)."""
    pieces: list[bytes | memoryview] = []
    data: memoryview | None = None
    for number, wire_type, start, value_start, end in _fields(view, 0, len(view)):
        if number != field or wire_type != 2:
            pieces.append(view[start:end])
            continue
        inner: list[bytes | memoryview] = []
        for inner_number, inner_type, inner_start, inner_value, inner_end in _fields(view, value_start, end):
            if inner_number == DATA_FIELD and inner_type == 2:
                if data is not None:
                    return None, None
                data = view[inner_value:inner_end]
            else:
                inner.append(view[inner_start:inner_end])
        body = b"".join(inner)
        pieces += [_key(field), _varint(len(body)), body]
    return b"".join(pieces), data


def _fields(view: memoryview, start: int, end: int):
    """(number, wire type, field start, value start, field end) of each field in view[start:end]."""
    position = start
    while position < end:
        key, value_start = _read_varint(view, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, field_end = _read_varint(view, value_start)
        elif wire_type == 1:
            field_end = value_start + 8
        elif wire_type == 2:
            length, value_start = _read_varint(view, value_start)
            field_end = value_start + length
        elif wire_type == 5:
            field_end = value_start + 4
        else:
            raise WireError(f"wire type {wire_type} of field {number} is not supported")
        if field_end > end:
            raise WireError(f"field {number} runs past the end of its message")
        yield number, wire_type, position, value_start, field_end
        position = field_end


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise WireError("a varint longer than 10 bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint(number << 3 | 2)


# -- large tensors in chunks (PushStream, PullStream) ---------------------------------------------
CHUNK_BYTES = 4 << 20  # per message of a stream: small buffers, far from any message limit


def tensor_chunks(tensor: torch.Tensor, dtype: str = "float32", chunk_bytes: int = CHUNK_BYTES) -> Iterator[memoryview]:
    """The bytes of `tensor` (cast to `dtype`) in chunks of whole elements: views, no copy
    when the tensor is already flat float32 on the CPU (else one cast)."""
    yield from byte_chunks(memoryview(_wire_view(tensor, dtype).numpy()).cast("B"), check_dtype(dtype).itemsize, chunk_bytes)


def byte_chunks(raw: bytes | memoryview, itemsize: int = 4, chunk_bytes: int = CHUNK_BYTES) -> Iterator[memoryview]:
    """Already-encoded bytes in chunks of whole elements (views: no copy here)."""
    view = memoryview(raw)
    step = max(itemsize, chunk_bytes - chunk_bytes % itemsize)
    for start in range(0, max(len(view), 1), step):
        yield view[start : start + step]


class TensorAssembler:
    """Rebuilds a float32 tensor from chunks as they arrive, checking each (dtype, whole
    elements, finiteness) and copying it into place; `finish()` checks nothing is missing.

    >>> header = encode(torch.ones(6))
    >>> assembler = TensorAssembler(header, 6)
    >>> for chunk in byte_chunks(header.data, chunk_bytes=8): assembler.add(chunk)
    >>> assembler.finish().tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, header: ps_pb2.Tensor, numel: int | None = None, *, what: str = "tensor") -> None:
        self.dtype, self.shape, count = check_header(header, numel, what)
        self.what = what
        self.itemsize = self.dtype.itemsize
        self.tensor = torch.empty(count, dtype=torch.float32)
        self.filled = 0
        self.max_abs = 0.0  # of the values received so far

    def add(self, data: bytes | memoryview) -> None:
        if len(data) % self.itemsize:
            raise WireError(f"{self.what}.data: a chunk of {len(data)} bytes is not whole {self.itemsize}-byte elements")
        count = len(data) // self.itemsize
        if self.filled + count > self.tensor.numel():
            raise WireError(f"{self.what}.data: more than the {self.tensor.numel()} elements of shape {self.shape}")
        if count == 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only bytes, only read
            chunk = torch.frombuffer(data, dtype=self.dtype)
        self.max_abs = max(self.max_abs, check_finite(chunk, self.what))
        self.tensor[self.filled : self.filled + count].copy_(chunk)
        self.filled += count

    @property
    def complete(self) -> bool:
        return self.filled == self.tensor.numel()

    def finish(self) -> torch.Tensor:
        if self.filled != self.tensor.numel():
            raise WireError(f"{self.what}.data: the stream ended after {self.filled} of {self.tensor.numel()} elements")
        return self.tensor


def stream_payload(chunks: Iterable[Framed], field: str, what: str) -> tuple[Message, Iterator[bytes | memoryview]]:
    """(the message the first chunk carries in `field`, every chunk's data in order), checking
    that the first chunk carries it and no other chunk does."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None or not first.message.HasField(field):
        raise WireError(f"{what}: the first chunk must carry the {field}")

    def data() -> Iterator[bytes | memoryview]:
        yield first.data
        for chunk in iterator:
            if chunk.message.HasField(field):
                raise WireError(f"{what}: only the first chunk may carry the {field}")
            yield chunk.data

    return getattr(first.message, field), data()


# Every chunk message (PushChunk, PullChunk, RejoinChunk, StateChunk, ReplicateChunk) has `bytes data = 2`:
# its (de)serializers keep those bytes beside the message, as Framed does for a Tensor field.
CHUNK_DATA_FIELD = 2


def serialize_chunk(framed: Framed) -> bytes:
    """A chunk message and its data as standard protobuf: one copy of the data."""
    head = framed.message.SerializeToString()
    if not len(framed.data):
        return head
    return b"".join((head, _key(CHUNK_DATA_FIELD), _varint(len(framed.data)), framed.data))


def chunk_stream(first: Message, chunks: Iterable[bytes | memoryview]) -> Iterator[Framed]:
    """The messages of a stream (serialize_chunk): `first`, a chunk message carrying the
    header and no data, then one empty message of its type per chunk of data."""
    yield Framed(first)
    for chunk in chunks:
        yield Framed(type(first)(), chunk)


def chunk_deserializer(message_type: type[Message]) -> Callable[[bytes], Framed]:
    """Decode a chunk message into a Framed: its data a memoryview into `raw`, no copy."""

    def deserialize(raw: bytes) -> Framed:
        view = memoryview(raw)
        rest: list[memoryview] = []
        data: list[memoryview] = []
        try:
            for number, wire_type, start, value_start, end in _fields(view, 0, len(view)):
                if number == CHUNK_DATA_FIELD and wire_type == 2:
                    data.append(view[value_start:end])
                else:
                    rest.append(view[start:end])
        except (WireError, IndexError):
            data = [view, view]  # malformed: protobuf decides, and says why
        if len(data) > 1:  # an unusual encoding (the data twice): protobuf's last-one-wins
            message = message_type.FromString(raw)
            payload, message.data = message.data, b""
            return Framed(message, payload)
        return Framed(message_type.FromString(b"".join(rest)), data[0] if data else b"")

    return deserialize


def assemble(headers: list[tuple[ps_pb2.Tensor, int | None, str]], chunks: Iterable[bytes]) -> list[torch.Tensor]:
    """Tensors sent one after another in chunks, no chunk spanning two: each chunk checked
    and copied into place on arrival; WireError unless every tensor arrived whole."""
    return [tensor for tensor, _ in assemble_bounded(headers, chunks)]


def assemble_bounded(headers: list[tuple[ps_pb2.Tensor, int | None, str]], chunks: Iterable[bytes]) -> list[tuple[torch.Tensor, float]]:
    """As assemble, each tensor with its largest magnitude (see decode_bounded)."""
    assemblers = [TensorAssembler(header, numel, what=what) for header, numel, what in headers]
    current = 0
    for data in chunks:
        if not len(data):
            continue
        while current < len(assemblers) and assemblers[current].complete:
            current += 1
        if current == len(assemblers):
            raise WireError(f"{len(data)} bytes after the last tensor")
        assemblers[current].add(data)
    return [(assembler.finish(), assembler.max_abs) for assembler in assemblers]


# -- a parameter-server state in chunks (InstallState) ----------------------------------------------
def byte_buffer(nbytes: int) -> tuple[torch.Tensor, memoryview]:
    """An uninitialized uint8 tensor of `nbytes` and a writable view of it, to read or
    receive bytes straight into (a state decoded from it keeps the tensor)."""
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    return buffer, memoryview(buffer.numpy()) if nbytes else memoryview(bytearray())


def receive_bytes(total_bytes: int, data: Iterable[bytes], what: str) -> torch.Tensor:
    """The `total_bytes` sent as `data`, copied into one uint8 buffer as they arrive;
    WireError unless exactly that many arrived."""
    if total_bytes < 0:
        raise WireError(f"{what}: total_bytes is {total_bytes}")
    buffer, view = byte_buffer(total_bytes)
    filled = 0
    for chunk in data:
        if filled + len(chunk) > total_bytes:
            raise WireError(f"{what}: more than the {total_bytes} bytes announced")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != total_bytes:
        raise WireError(f"{what}: the stream ended after {filled} of {total_bytes} bytes")
    return buffer


@dataclass(frozen=True)
class FramedCalls:
    """A channel's RPCs that carry tensors, their bytes kept beside the message (Framed):
    the generated stub's protobuf (de)serialization would copy them several times over."""

    push: grpc.UnaryUnaryMultiCallable
    pull: grpc.UnaryUnaryMultiCallable
    push_stream: grpc.StreamUnaryMultiCallable
    pull_stream: grpc.UnaryStreamMultiCallable
    rejoin_stream: grpc.StreamUnaryMultiCallable
    install_state: grpc.StreamUnaryMultiCallable
    replicate: grpc.StreamUnaryMultiCallable

    @classmethod
    def on(cls, channel: grpc.Channel) -> "FramedCalls":
        def method(name: str) -> str:
            return f"/{SERVICE}/{name}"

        return cls(
            push=channel.unary_unary(
                method("Push"),
                request_serializer=framed_serializer(PUSH_TENSOR_FIELD),
                response_deserializer=framed_deserializer(ps_pb2.PushReply, PUSH_REPLY_TENSOR_FIELD),
            ),
            pull=channel.unary_unary(
                method("Pull"),
                request_serializer=ps_pb2.PullRequest.SerializeToString,
                response_deserializer=framed_deserializer(ps_pb2.PullReply, PULL_TENSOR_FIELD),
            ),
            push_stream=channel.stream_unary(
                method("PushStream"), request_serializer=serialize_chunk, response_deserializer=ps_pb2.PushReply.FromString
            ),
            pull_stream=channel.unary_stream(
                method("PullStream"),
                request_serializer=ps_pb2.PullRequest.SerializeToString,
                response_deserializer=chunk_deserializer(ps_pb2.PullChunk),
            ),
            rejoin_stream=channel.stream_unary(
                method("RejoinStream"), request_serializer=serialize_chunk, response_deserializer=ps_pb2.RejoinReply.FromString
            ),
            install_state=channel.stream_unary(
                method("InstallState"), request_serializer=serialize_chunk, response_deserializer=ps_pb2.InstallReply.FromString
            ),
            replicate=channel.stream_unary(
                method("Replicate"), request_serializer=serialize_chunk, response_deserializer=ps_pb2.ReplicateReply.FromString
            ),
        )
