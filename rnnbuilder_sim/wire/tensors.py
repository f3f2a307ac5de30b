"""Tensors on the wire: dtype + shape + raw little-endian bytes, optionally bit-packed.

The one place that converts between numpy arrays / torch tensors and ``Tensor`` messages, for the
client and the server alike.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import NamedTuple

import numpy as np

from rnnbuilder_sim.v1 import simulator_pb2 as pb

__all__ = [
    "TensorError",
    "encode",
    "encode_fields",
    "check",
    "Checked",
    "shape_of",
    "decode",
    "decode_torch",
    "is_binary",
    "to_numpy",
]

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
_BFLOAT16 = pb.DATA_TYPE_BFLOAT16
_RAW, _BITPACKED, _UNSPECIFIED = pb.TENSOR_ENCODING_RAW, pb.TENSOR_ENCODING_BITPACKED, pb.TENSOR_ENCODING_UNSPECIFIED
_WIRE = {**_NUMPY, _BFLOAT16: np.dtype("<u2")}
"""Each dtype's elements as they lie in the bytes; bfloat16's 16 bits (numpy has no bfloat16) are the
top half of a float32's."""
_FROM_NUMPY = {dtype.newbyteorder(order): code for code, dtype in _NUMPY.items() for order in "<>"}
_DECODED = {code: dtype.newbyteorder("=") for code, dtype in _NUMPY.items()} | {_BFLOAT16: np.dtype(np.float32)}
"""What each dtype decodes to."""
_BITS = {
    code: np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(dtype)
    for code, dtype in _DECODED.items()
    if dtype.itemsize > 1
}
"""The 8 elements (0 or 1) each byte unpacks to, for the dtypes wider than a byte: one gather unpacks."""
_LITTLE_ENDIAN = sys.byteorder == "little"
_torch = None  # the torch module, once decode_torch has imported it


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
    return pb.Tensor(**encode_fields(value, bitpacked))


def encode_fields(value, bitpacked: bool = False) -> dict:
    """``encode``'s message as its fields: a request's ``Tensor`` field given them in the request's
    constructor is made in place, where a finished message would be copied into it.

    >>> pb.RunRequest(input=encode_fields([1.0, 0.0], bitpacked=True)).input == encode([1.0, 0.0], bitpacked=True)
    True
    """
    array = to_numpy(value)
    dtype = array.dtype
    code = _FROM_NUMPY.get(dtype)  # both byte orders are keys
    if code is None:
        raise TensorError(f"can't send arrays of dtype {dtype}; use float32, float64, an int type or bool")
    if bitpacked:
        bits = _packed(array)
        if bits is not None:
            return {"dtype": code, "shape": array.shape, "encoding": _BITPACKED, "data": bits}
    wire = _NUMPY[code]
    data = array.tobytes() if dtype == wire else array.astype(wire).tobytes()  # tobytes: C order, any strides
    return {"dtype": code, "shape": array.shape, "encoding": _RAW, "data": data}


def _packed(array: np.ndarray) -> bytes | None:
    """``array``'s elements as bits (the first in the lowest bit of the first byte), or None unless
    every one is 0 or 1; one full-size temporary (of bools) at most."""
    if array.dtype == np.bool_:
        return np.packbits(array.ravel(), bitorder="little").tobytes()
    if array.ndim == 0:
        array = array.reshape(1)  # ufuncs give scalars for scalars, and those have no buffer to reuse
    bits = np.equal(array, 0)
    zeros = np.count_nonzero(bits)
    ones = np.count_nonzero(np.equal(array, 1, out=bits))  # the same buffer, now the ones: the bits
    return np.packbits(bits.ravel(), bitorder="little").tobytes() if zeros + ones == array.size else None


class Checked(NamedTuple):
    """A ``Tensor`` message's contents, found to agree with each other by ``check``."""

    code: int
    """The ``DataType``."""
    shape: tuple[int, ...]
    count: int
    """The number of elements."""
    packed: bool
    """Whether ``data`` is bit-packed."""
    data: bytes

    def to_torch(self, device=None):
        """The torch tensor this holds, on ``device``; bfloat16 becomes float32.

        Not always a fresh tensor: a raw one (of two bytes or more, not bfloat16) lies in the bytes that
        reading the message's ``data`` copied out of it, which no one else holds: read it, copy it, move
        it, but never write into it (torch has no read-only tensors; a Python ``bytes`` must not change).
        """
        torch = _torch or _import_torch()
        code, shape, count, packed, data = self
        if packed:
            tensor = torch.from_numpy(_unpacked(data, code, count).reshape(shape))
        elif len(data) < 2 or not _LITTLE_ENDIAN:  # Python may share a bytes object of one byte (or none)
            tensor = torch.from_numpy(_raw(data, code).reshape(shape))
        elif code == _BFLOAT16:
            tensor = torch.from_numpy(np.frombuffer(data, dtype="<i2").reshape(shape)).view(torch.bfloat16).float()
        else:  # a view of the bytes: numpy makes it faster than torch.frombuffer
            tensor = torch.from_numpy(np.frombuffer(data, dtype=_WIRE[code]).reshape(shape))
        return tensor if device is None else tensor.to(device)


def shape_of(message: pb.Tensor) -> tuple[int, ...]:
    """The shape a ``Tensor`` message holds, once its dtype, encoding and byte count are found to
    agree with it (TensorError if not), without expanding anything: what a receiver checks against
    what it expects before ``decode`` makes the array (a bit-packed float64 is 64 times its message).

    >>> shape_of(encode(np.ones((2, 3), dtype=np.float32), bitpacked=True))
    (2, 3)
    """
    return check(message).shape


def check(message: pb.Tensor) -> Checked:
    """``message``'s dtype, shape and bytes, read once (each read of ``message.data`` copies them)
    and found to agree (TensorError if not), without expanding anything: a receiver compares
    ``shape`` with what it expects before ``Checked.to_torch`` makes the tensor (a bit-packed
    float64 is 64 times its message).

    >>> checked = check(encode(np.ones((2, 3), dtype=np.float32), bitpacked=True))
    >>> checked.shape, checked.to_torch().sum().item()
    ((2, 3), 6.0)
    """
    data = message.data
    code = message.dtype
    wire = _WIRE.get(code)
    if wire is None:
        names = ", ".join(pb.DataType.Name(code) for code in _WIRE)
        raise TensorError(f"unsupported tensor dtype {code}; use one of {names}")
    shape = tuple(message.shape[:])  # [:] first: a list, made faster than a tuple of the field
    if min(shape, default=0) < 0:
        raise TensorError(f"tensor shape must not be negative, got {list(shape)}")
    count = math.prod(shape)
    encoding = message.encoding
    if encoding == _BITPACKED:
        if len(data) != (count + 7) // 8:
            raise TensorError(
                f"a bit-packed tensor of shape {list(shape)} needs {(count + 7) // 8} bytes, got {len(data)}"
            )
        return Checked(code, shape, count, True, data)
    if encoding != _RAW and encoding != _UNSPECIFIED:
        raise TensorError(f"unknown tensor encoding {encoding}")
    if len(data) != count * wire.itemsize:
        raise TensorError(
            f"a {pb.DataType.Name(code)} tensor of shape {list(shape)} needs {count * wire.itemsize} bytes, "
            f"got {len(data)}"
        )
    if code == pb.DATA_TYPE_BOOL and data and max(data) > 1:  # any other byte is no bool (torch's would be invalid)
        raise TensorError("a BOOL tensor's bytes must each be 0 or 1")
    return Checked(code, shape, count, False, data)


def decode(message: pb.Tensor) -> np.ndarray:
    """The numpy array a ``Tensor`` message holds (a fresh, writable array); bfloat16 becomes float32."""
    code, shape, count, packed, data = check(message)
    if packed:
        return _unpacked(data, code, count).reshape(shape)
    return _raw(data, code).reshape(shape)


def _raw(data: bytes, code: int) -> np.ndarray:
    """Raw ``data``'s elements, flat, in a fresh writable array; bfloat16's as float32."""
    array = np.frombuffer(data, dtype=_WIRE[code])
    if code == _BFLOAT16:
        return (array.astype("<u4") << 16).view("<f4").astype(np.float32)
    return array.astype(_DECODED[code])  # a copy, in native byte order


def _unpacked(data: bytes, code: int, count: int) -> np.ndarray:
    """Bit-packed ``data``'s ``count`` elements, flat, in a fresh writable array, in one pass."""
    packed = np.frombuffer(data, dtype=np.uint8)
    bits = _BITS.get(code)
    if bits is None:  # a one-byte dtype: its 0 and 1 are the bytes 0 and 1
        return np.unpackbits(packed, count=count, bitorder="little").view(_DECODED[code])
    return bits.take(packed, axis=0).reshape(-1)[:count]


def decode_torch(message: pb.Tensor, device=None):
    """The torch tensor a ``Tensor`` message holds, on ``device``: ``check(message).to_torch(device)``."""
    return check(message).to_torch(device)


def _import_torch():
    """torch, imported, once it has given (and this has silenced) its warning that a tensor made from
    read-only memory is not read-only: decode_torch's raw tensors are, on purpose. torch gives it
    once per process, at its first such tensor, which is this one."""
    global _torch
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        torch.from_numpy(np.frombuffer(bytes(4), dtype=np.float32))
    _torch = torch
    return torch


def to_numpy(value) -> np.ndarray:
    """``value`` (a numpy array, a torch tensor on any device, a nested list) as a numpy array;
    bfloat16, which numpy lacks, becomes float32.

    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype('float32')
    """
    if type(value) is np.ndarray:
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        try:
            return value.numpy()  # on the CPU, out of any graph, of a dtype numpy has: no copy
        except (RuntimeError, TypeError):
            pass
        import torch

        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)
