"""Tests for trainthrough.wire, tensors on the wire.

Covered:
- encode/decode round trip in float32 (exact) and bfloat16 (exact for representable
  values, otherwise equal to torch's own bfloat16 rounding); shape and dtype recorded in
  the message; decode returns a flat float32 tensor; an empty tensor;
- encode rejects an unknown transfer dtype;
- decode rejects, with a WireError naming the field (`<what>.dtype`, `.shape`, `.data`)
  and what is wrong: an unknown dtype string, a shape whose element count is not the
  expected numel, negative dimensions (even when their product matches), a byte length
  that does not match shape and dtype (truncated or extra data), NaN, +Inf and -Inf values
  in either dtype;
- WireError is a ValueError, so callers that only know ValueError still catch it.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch

from trainthrough import wire
from trainthrough.errors import WireError
from trainthrough.proto import ps_pb2


def _float32_message(values: list[float], shape: list[int] | None = None) -> ps_pb2.Tensor:
    data = struct.pack(f"<{len(values)}f", *values)
    return ps_pb2.Tensor(dtype="float32", shape=[len(values)] if shape is None else shape, data=data)


# -- round trips -----------------------------------------------------------------------


def test_float32_round_trip_is_exact_and_flat() -> None:
    original = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    message = wire.encode(original)
    assert message.dtype == "float32"
    assert list(message.shape) == [3, 4]
    assert len(message.data) == 12 * 4
    decoded = wire.decode(message, 12)
    assert decoded.dtype == torch.float32
    assert decoded.shape == (12,)
    assert torch.equal(decoded, original.reshape(-1))


def test_float32_bytes_are_little_endian() -> None:
    message = wire.encode(torch.tensor([1.0, -2.5]))
    assert message.data == struct.pack("<2f", 1.0, -2.5)


def test_bfloat16_round_trip_of_representable_values_is_exact() -> None:
    original = torch.tensor([[1.0, -2.0, 0.25], [1.5, 0.0, -96.0]])
    message = wire.encode(original, dtype="bfloat16")
    assert message.dtype == "bfloat16"
    assert list(message.shape) == [2, 3]
    assert len(message.data) == 6 * 2
    decoded = wire.decode(message, 6)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, original.reshape(-1))


def test_bfloat16_round_trip_rounds_like_torch() -> None:
    original = torch.randn(100, generator=torch.Generator().manual_seed(1))
    decoded = wire.decode(wire.encode(original, dtype="bfloat16"), 100)
    assert torch.equal(decoded, original.to(torch.bfloat16).to(torch.float32))
    assert not torch.equal(decoded, original)  # resolution really was lost


def test_decode_without_numel_accepts_any_consistent_shape() -> None:
    decoded = wire.decode(wire.encode(torch.arange(6, dtype=torch.float32).reshape(2, 3)))
    assert decoded.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_empty_tensor_round_trip() -> None:
    decoded = wire.decode(wire.encode(torch.empty(0)), 0)
    assert decoded.shape == (0,)
    assert decoded.dtype == torch.float32


def test_encode_rejects_unknown_dtype() -> None:
    with pytest.raises(WireError, match=r"^dtype: must be one of .*got 'float16'"):
        wire.encode(torch.zeros(2), dtype="float16")


# -- rejections ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "", "FLOAT32", "bf16"])
def test_decode_rejects_unknown_dtype(dtype: str) -> None:
    message = _float32_message([1.0, 2.0])
    message.dtype = dtype
    with pytest.raises(WireError) as info:
        wire.decode(message, 2, what="gradient")
    text = str(info.value)
    assert text.startswith("gradient.dtype: ")
    assert "must be one of ['bfloat16', 'float32']" in text
    assert repr(dtype) in text


def test_decode_rejects_shape_not_matching_numel() -> None:
    message = _float32_message([1.0] * 6, shape=[2, 3])
    with pytest.raises(WireError) as info:
        wire.decode(message, 5, what="gradient")
    assert str(info.value) == "gradient.shape: expected 5 elements, got shape [2, 3] (6)"


@pytest.mark.parametrize("shape", [[-1], [2, -3], [-2, -3]])
def test_decode_rejects_negative_dimensions(shape: list[int]) -> None:
    # [-2, -3] multiplies to 6, which matches numel and the data: still rejected.
    message = _float32_message([1.0] * 6, shape=shape)
    with pytest.raises(WireError) as info:
        wire.decode(message, 6, what="gradient")
    assert str(info.value) == f"gradient.shape: negative dimension in {shape}"


def test_decode_rejects_truncated_data() -> None:
    message = _float32_message([1.0, 2.0, 3.0])
    message.data = message.data[:-1]
    with pytest.raises(WireError) as info:
        wire.decode(message, 3, what="gradient")
    assert str(info.value) == "gradient.data: expected 12 bytes for shape [3] float32, got 11"


def test_decode_rejects_extra_data() -> None:
    message = _float32_message([1.0, 2.0, 3.0])
    message.data = message.data + b"\x00\x00\x00\x00"
    with pytest.raises(WireError, match=r"^gradient\.data: expected 12 bytes .* got 16$"):
        wire.decode(message, 3, what="gradient")


def test_decode_checks_length_against_the_declared_dtype() -> None:
    # 4 float32 bytes would be 2 bfloat16 values, not the 1 the shape declares.
    message = _float32_message([1.0])
    message.dtype = "bfloat16"
    with pytest.raises(WireError) as info:
        wire.decode(message, 1, what="params")
    assert str(info.value) == "params.data: expected 2 bytes for shape [1] bfloat16, got 4"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_rejects_non_finite_values(bad: float, dtype: str) -> None:
    message = wire.encode(torch.tensor([1.0, bad, 2.0, bad]), dtype=dtype)
    with pytest.raises(WireError) as info:
        wire.decode(message, 4, what="gradient")
    assert str(info.value) == "gradient.data: 2 non-finite values (NaN or Inf)"


def test_default_field_name_is_tensor() -> None:
    message = _float32_message([1.0])
    message.dtype = "int8"
    with pytest.raises(WireError, match=r"^tensor\.dtype: "):
        wire.decode(message)


def test_wire_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        wire.decode(_float32_message([1.0]), 2)


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    # The finiteness check sums first; an overflowing sum must not reject finite data.
    huge = torch.full((8,), 3.0e38)
    assert torch.isinf(huge.sum())
    assert torch.equal(wire.decode(wire.encode(huge)), huge)
    mixed = torch.cat([huge, torch.tensor([float("nan")])])
    with pytest.raises(WireError, match="1 non-finite values"):
        wire.decode(wire.encode(mixed))


def test_fill_writes_into_an_existing_submessage() -> None:
    request = ps_pb2.PushRequest(worker="w", push_id=1)
    wire.fill(request.gradient, torch.arange(6.0).reshape(2, 3))
    wire.fill(request.gradient, torch.arange(4.0))  # refilling replaces shape and data
    assert list(request.gradient.shape) == [4]
    assert torch.equal(wire.decode(request.gradient), torch.arange(4.0))


# -- Framed: the hot RPCs' tensor bytes beside the message ------------------------------------
PUSH = wire.PUSH_TENSOR_FIELD


def _push(gradient: torch.Tensor) -> ps_pb2.PushRequest:
    request = ps_pb2.PushRequest(worker="worker-1", push_id=7, base_version=3, samples=32)
    wire.fill(request.gradient, gradient)
    return request


def test_framed_encoding_is_standard_protobuf_both_ways() -> None:
    gradient = torch.arange(10.0) - 4.5
    framed = wire.frame(ps_pb2.PushRequest(worker="worker-1", push_id=7, base_version=3, samples=32), PUSH, gradient)
    raw = wire.framed_serializer(PUSH)(framed)
    assert ps_pb2.PushRequest.FromString(raw) == _push(gradient)  # any protobuf peer reads it
    received = wire.framed_deserializer(ps_pb2.PushRequest, PUSH)(_push(gradient).SerializeToString())
    assert received.message.worker == "worker-1" and received.message.push_id == 7
    assert received.message.gradient.data == b"" and list(received.message.gradient.shape) == [10]
    assert isinstance(received.data, memoryview)  # no copy of the bytes
    assert torch.equal(wire.decode(received.message.gradient, 10, data=received.data), gradient)


def test_framed_without_a_tensor_and_with_an_empty_one() -> None:
    serialize = wire.framed_serializer(wire.PULL_TENSOR_FIELD)
    deserialize = wire.framed_deserializer(ps_pb2.PullReply, wire.PULL_TENSOR_FIELD)
    current = ps_pb2.PullReply(version=5, incarnation="abc")  # have_version was current: no params
    back = deserialize(serialize(wire.Framed(current)))
    assert back.message == current and not back.message.HasField("params") and back.data == b""


def test_framed_deserializer_defers_to_protobuf_for_repeated_data() -> None:
    first, second = _push(torch.ones(3)), ps_pb2.PushRequest()
    second.gradient.data = torch.full((3,), 2.0).numpy().tobytes()
    raw = first.SerializeToString() + second.SerializeToString()  # merge: the last data wins
    received = wire.framed_deserializer(ps_pb2.PushRequest, PUSH)(raw)
    assert torch.equal(wire.decode(received.message.gradient, 3, data=received.data), torch.full((3,), 2.0))
    assert received.message.worker == "worker-1"


@pytest.mark.parametrize("chunk_type", [ps_pb2.PushChunk, ps_pb2.PullChunk, ps_pb2.RejoinChunk, ps_pb2.StateChunk, ps_pb2.ReplicateChunk])
def test_every_chunk_message_keeps_its_data_in_field_2(chunk_type) -> None:
    assert chunk_type.DESCRIPTOR.fields_by_name["data"].number == wire.CHUNK_DATA_FIELD


def test_chunk_encoding_is_standard_protobuf_both_ways() -> None:
    request = _push(torch.ones(3))
    data = memoryview(torch.arange(6.0).numpy()).cast("B")
    raw = wire.serialize_chunk(wire.Framed(ps_pb2.PushChunk(request=request), data))
    assert ps_pb2.PushChunk.FromString(raw) == ps_pb2.PushChunk(request=request, data=bytes(data))  # any peer reads it
    received = wire.chunk_deserializer(ps_pb2.PushChunk)(ps_pb2.PushChunk(request=request, data=bytes(data)).SerializeToString())
    assert received.message == ps_pb2.PushChunk(request=request) and isinstance(received.data, memoryview)
    assert bytes(received.data) == bytes(data)
    data_only = wire.chunk_deserializer(ps_pb2.PushChunk)(wire.serialize_chunk(wire.Framed(ps_pb2.PushChunk(), data)))
    assert not data_only.message.HasField("request") and bytes(data_only.data) == bytes(data)
    empty = wire.chunk_deserializer(ps_pb2.PushChunk)(b"")
    assert empty.message == ps_pb2.PushChunk() and empty.data == b""


def test_chunk_deserializer_defers_to_protobuf_for_repeated_or_malformed_data() -> None:
    from google.protobuf.message import DecodeError

    raw = ps_pb2.PushChunk(data=b"first").SerializeToString() + ps_pb2.PushChunk(data=b"second").SerializeToString()
    assert bytes(wire.chunk_deserializer(ps_pb2.PushChunk)(raw).data) == b"second"  # protobuf: the last one wins
    with pytest.raises(DecodeError):
        wire.chunk_deserializer(ps_pb2.PushChunk)(ps_pb2.PushChunk(data=b"abcdef").SerializeToString()[:-2])


def test_framed_deserializer_rejects_malformed_bytes_like_protobuf() -> None:
    from google.protobuf.message import DecodeError

    raw = _push(torch.ones(4)).SerializeToString()
    with pytest.raises(DecodeError):
        wire.framed_deserializer(ps_pb2.PushRequest, PUSH)(raw[:-3])  # truncated
    with pytest.raises(DecodeError):
        wire.framed_deserializer(ps_pb2.PushRequest, PUSH)(b"\x22\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
