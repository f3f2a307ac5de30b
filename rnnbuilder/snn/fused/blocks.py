"""The torch backend's forward memory: one allocation for a call's outputs and saved values
(``block``), and on the CPU a pool of spare blocks that later calls of the same size reuse."""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["block", "SPARE_BLOCKS", "SPARE_BYTES"]

SPARE_BLOCKS = 4
"""How many forward blocks (``block``) the torch backend keeps on the CPU for reuse, at most
``SPARE_BYTES`` together; 0 turns reuse off. A block is reused only once nothing refers to it (the
spikes, saved values and input gradient made from it are all gone), so at most these stay
allocated between calls: what a training loop would allocate again at its next step anyway."""
SPARE_BYTES = 1 << 28
"""The most bytes that ``SPARE_BLOCKS`` keep together (256 MiB); a larger block is never kept."""
_SPARES: list[tuple[tuple, torch.UntypedStorage]] = []
_SPARES_LOCK = threading.Lock()
_storage_refs = getattr(torch._C, "_storage_Use_Count", None)
"""References to a storage (as inductor's CUDA graph trees count them); None: no reuse."""


def block(like: torch.Tensor, *lengths: int) -> tuple[torch.Tensor, ...]:
    """Tensors of (length, *like.shape[1:]) for each of ``lengths``, in one allocation. The forward's
    outputs and saved values share it: on Linux, several fresh allocations of this size are returned
    to the OS when freed and cost page faults on every call (measured: about 1.5 ms per 6 MiB
    buffer); one doesn't. On the CPU a spare block of the same size and dtype that nothing refers to
    any more is reused (see ``SPARE_BLOCKS``): that one doesn't fault either. Its old values are all
    overwritten.

    Each tensor is a base of its own, not a view of the block: they don't overlap, and each has its
    own autograd version counter, so the LIF backward writing the input gradient over the saved
    membrane leaves the spikes (which the caller may still use) untouched in value and in version.

    >>> spikes, u = block(torch.zeros(3, 2, 4), 3, 3)
    >>> spikes.shape, spikes._base is None, spikes.untyped_storage().nbytes()
    (torch.Size([3, 2, 4]), True, 192)
    >>> before = spikes._version
    >>> _ = u.add_(1)
    >>> spikes._version == before
    True
    """
    per_step = math.prod(like.shape[1:])
    flat = _memory(sum(lengths) * per_step, like)  # holds the block until the parts do
    parts, offset = [], 0
    for length in lengths:
        part = torch.empty(0, dtype=like.dtype, device=like.device)
        parts.append(part.set_(flat.untyped_storage(), offset, (length, *like.shape[1:])))
        offset += length * per_step
    return tuple(parts)


def _memory(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat tensor of ``numel`` elements of ``like``'s dtype: a spare block (CPU) or a fresh one.
    A spare is claimed under the lock by the tensor made on it, so that no other thread takes it too."""
    nbytes = numel * like.element_size()
    if like.device.type != "cpu" or _storage_refs is None or SPARE_BLOCKS <= 0 or nbytes > SPARE_BYTES:
        return torch.empty(numel, dtype=like.dtype, device=like.device)
    key = (nbytes, like.dtype)
    with _SPARES_LOCK:
        for i, (k, storage) in enumerate(_SPARES):
            if k == key and _storage_refs(storage._cdata) == 1:  # only this list refers to it
                _SPARES.append(_SPARES.pop(i))  # most recently used last
                return torch.empty(0, dtype=like.dtype).set_(storage, 0, (numel,))
        fresh = torch.empty(numel, dtype=like.dtype)
        _SPARES.append((key, fresh.untyped_storage()))
        kept = 0
        for i in range(len(_SPARES) - 1, -1, -1):  # keep the most recent that fit the limits
            kept += _SPARES[i][1].nbytes()
            if kept > SPARE_BYTES or len(_SPARES) - i > SPARE_BLOCKS:
                del _SPARES[: i + 1]
                break
        return fresh
