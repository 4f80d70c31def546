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
    """A flat CPU copy of `tensor` as a proto Tensor, cast to `dtype` for transfer."""
    if dtype not in DTYPES:
        raise WireError(f"dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    flat = tensor.detach().reshape(-1).to(device="cpu", dtype=DTYPES[dtype]).contiguous()
    # bfloat16 has no numpy dtype: reinterpret its storage as int16 to take the bytes.
    raw = flat.view(torch.int16).numpy().tobytes() if dtype == "bfloat16" else flat.numpy().tobytes()
    return ps_pb2.Tensor(dtype=dtype, shape=list(tensor.shape), data=raw)


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
    if not bool(torch.isfinite(flat).all()):
        bad = int((~torch.isfinite(flat)).sum())
        raise WireError(f"{what}.data: {bad} non-finite values (NaN or Inf)")
    return flat
