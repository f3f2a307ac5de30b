"""Tensors on the wire: dtype + shape + raw little-endian bytes, optionally bit-packed.

The one place that converts between numpy arrays / torch tensors and ``Tensor`` messages, for the
client and the server alike.
"""

from __future__ import annotations

import math

import numpy as np

from rnnbuilder_sim.v1 import simulator_pb2 as pb

__all__ = ["TensorError", "encode", "shape_of", "decode", "decode_torch", "is_binary", "to_numpy"]

_NUMPY = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT16: np.dtype("<i2"),
    pb.DATA_TYPE_INT8: np.dtype("i1"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
    pb.DATA_TYPE_BOOL: np.dtype("?"),
}
_FROM_NUMPY = {dtype.newbyteorder("="): code for code, dtype in _NUMPY.items()}


class TensorError(ValueError):
    """A ``Tensor`` message is malformed, or an array can't be sent."""


def is_binary(array: np.ndarray) -> bool:
    """Whether every element is 0 or 1 (spikes)."""
    return bool(np.all((array == 0) | (array == 1)))


def encode(value, bitpacked: bool = False) -> pb.Tensor:
    """A ``Tensor`` message from a numpy array, a torch tensor or a nested list.

    With ``bitpacked=True`` and 0/1 values only, the elements go as bits (8 per byte).

    >>> t = encode(np.array([[1.0, 0.0, 1.0]], dtype=np.float32), bitpacked=True)
    >>> list(t.shape), t.data, t.encoding == pb.TENSOR_ENCODING_BITPACKED
    ([1, 3], b'\\x05', True)
    >>> decode(t).tolist()
    [[1.0, 0.0, 1.0]]
    """
    array = to_numpy(value)
    code = _FROM_NUMPY.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TensorError(f"can't send arrays of dtype {array.dtype}; use float32, float64, an int type or bool")
    message = pb.Tensor(dtype=code, shape=array.shape)
    if bitpacked and is_binary(array):
        message.encoding = pb.TENSOR_ENCODING_BITPACKED
        message.data = np.packbits(array.astype(bool).ravel(), bitorder="little").tobytes()
    else:
        message.encoding = pb.TENSOR_ENCODING_RAW
        message.data = np.ascontiguousarray(array, dtype=_NUMPY[code]).tobytes()
    return message


def shape_of(message: pb.Tensor) -> tuple[int, ...]:
    """The shape a ``Tensor`` message holds, once its dtype, encoding and byte count are found to
    agree with it (TensorError if not), without expanding anything: what a receiver checks against
    what it expects before ``decode`` makes the array (a bit-packed float64 is 64 times its message).

    >>> shape_of(encode(np.ones((2, 3), dtype=np.float32), bitpacked=True))
    (2, 3)
    """
    dtype = _dtype(message)
    shape = tuple(message.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"tensor shape must not be negative, got {list(shape)}")
    count = math.prod(shape)
    if message.encoding == pb.TENSOR_ENCODING_BITPACKED:
        if len(message.data) != (count + 7) // 8:
            raise TensorError(
                f"a bit-packed tensor of shape {list(shape)} needs {(count + 7) // 8} bytes, got {len(message.data)}"
            )
        return shape
    if message.encoding not in (pb.TENSOR_ENCODING_RAW, pb.TENSOR_ENCODING_UNSPECIFIED):
        raise TensorError(f"unknown tensor encoding {message.encoding}")
    if len(message.data) != count * dtype.itemsize:
        raise TensorError(
            f"a {pb.DataType.Name(message.dtype)} tensor of shape {list(shape)} needs {count * dtype.itemsize} bytes, "
            f"got {len(message.data)}"
        )
    return shape


def decode(message: pb.Tensor) -> np.ndarray:
    """The numpy array a ``Tensor`` message holds (a fresh, writable array); bfloat16 becomes float32."""
    shape = shape_of(message)
    dtype = _dtype(message)
    bfloat16 = message.dtype == pb.DATA_TYPE_BFLOAT16
    if message.encoding == pb.TENSOR_ENCODING_BITPACKED:
        bits = np.unpackbits(np.frombuffer(message.data, dtype=np.uint8), count=math.prod(shape), bitorder="little")
        return bits.astype(np.float32 if bfloat16 else dtype).reshape(shape)
    array = np.frombuffer(message.data, dtype=dtype).reshape(shape)
    if bfloat16:
        return (array.astype("<u4") << 16).view("<f4").astype(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _dtype(message: pb.Tensor) -> np.dtype:
    """The wire dtype of ``message``'s elements; bfloat16's 16 bits (numpy has no bfloat16) are the
    top half of a float32's."""
    if message.dtype == pb.DATA_TYPE_BFLOAT16:
        return np.dtype("<u2")
    if message.dtype not in _NUMPY:
        names = ", ".join(pb.DataType.Name(code) for code in (*_NUMPY, pb.DATA_TYPE_BFLOAT16))
        raise TensorError(f"unsupported tensor dtype {message.dtype}; use one of {names}")
    return _NUMPY[message.dtype]


def decode_torch(message: pb.Tensor, device=None):
    """The torch tensor a ``Tensor`` message holds, on ``device``."""
    import torch

    return torch.from_numpy(decode(message)).to(device)


def to_numpy(value) -> np.ndarray:
    """``value`` (a numpy array, a torch tensor on any device, a nested list) as a numpy array;
    bfloat16, which numpy lacks, becomes float32.

    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype('float32')
    """
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        import torch

        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)
