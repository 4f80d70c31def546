"""Tensors on the wire: raw little-endian bytes with dtype and shape (proto `Tensor`).

Used by the parameter server and the workers. Decoding validates everything a malformed or
hostile message could get wrong (dtype, shape, byte length, non-finite values) and raises
WireError with what is wrong; the PS turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

import warnings

import torch

from trainthrough.errors import WireError
from trainthrough.proto import ps_pb2

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_NAMES = {v: k for k, v in DTYPES.items()}


def encode(tensor: torch.Tensor, dtype: str = "float32") -> ps_pb2.Tensor:
    """A flat CPU copy of `tensor` as a new proto Tensor, cast to `dtype` for transfer."""
    message = ps_pb2.Tensor()
    fill(message, tensor, dtype)
    return message


def fill(target: ps_pb2.Tensor, tensor: torch.Tensor, dtype: str = "float32") -> None:
    """Write `tensor` into the (sub)message `target` in place: one copy of the bytes into the
    message (building a Tensor and assigning or CopyFrom-ing it would copy them again)."""
    if dtype not in DTYPES:
        raise WireError(f"dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    flat = tensor.detach().reshape(-1).to(device="cpu", dtype=DTYPES[dtype]).contiguous()
    # bfloat16 has no numpy dtype: reinterpret its storage as int16 to take the bytes.
    raw = flat.view(torch.int16).numpy().tobytes() if dtype == "bfloat16" else flat.numpy().tobytes()
    fill_bytes(target, raw, list(tensor.shape), dtype)


def fill_bytes(target: ps_pb2.Tensor, raw: bytes, shape: list[int], dtype: str = "float32") -> None:
    """Write already-encoded bytes (e.g. a snapshot of the PS's parameters) into `target`."""
    target.dtype = dtype
    del target.shape[:]
    target.shape.extend(shape)
    target.data = raw


def decode(message: ps_pb2.Tensor, numel: int | None = None, *, what: str = "tensor") -> torch.Tensor:
    """A float32 1-D tensor from a proto Tensor; checks dtype, shape, length and finiteness.

    The result may share memory with the (immutable) message bytes: never write to it.
    """
    if message.dtype not in DTYPES:
        raise WireError(f"{what}.dtype: must be one of {sorted(DTYPES)}, got {message.dtype!r}")
    shape = list(message.shape)
    if any(d < 0 for d in shape):
        raise WireError(f"{what}.shape: negative dimension in {shape}")
    count = 1
    for d in shape:
        count *= d
    if numel is not None and count != numel:
        raise WireError(f"{what}.shape: expected {numel} elements, got shape {shape} ({count})")
    dtype = DTYPES[message.dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(message.data) != count * itemsize:
        raise WireError(
            f"{what}.data: expected {count * itemsize} bytes for shape {shape} {message.dtype}, "
            f"got {len(message.data)}"
        )
    if count == 0:
        return torch.empty(0, dtype=torch.float32)
    with warnings.catch_warnings():
        # The bytes object is read-only; the tensor is only ever read, never written.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(message.data, dtype=dtype)
    if dtype != torch.float32:
        flat = flat.to(torch.float32)
    check_finite(flat, what)
    return flat


def check_finite(flat: torch.Tensor, what: str) -> None:
    """Raise WireError if `flat` holds a NaN or an infinity.

    A finite sum proves every element finite (a NaN or an infinity makes the sum NaN or
    infinite) at a fraction of an element-wise check's cost; only a non-finite sum, which
    a huge but finite gradient can also give, pays for the element-wise count.
    """
    if bool(torch.isfinite(flat.sum())):
        return
    bad = int((~torch.isfinite(flat)).sum())
    if bad:
        raise WireError(f"{what}.data: {bad} non-finite values (NaN or Inf)")
