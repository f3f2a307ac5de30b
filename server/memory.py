"""Device-memory budgets: what sessions hold and calls need, counted before anything is allocated.

The figures are estimates, made without touching the device: a session holds its parameters,
buffers, state, optimizer state and carried training state; a call needs, on top, room for the
activations of its timesteps. A real out-of-memory error inside a call is still caught (it fails
that call only); the budgets keep the server from getting there, and say who asked for what.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

import rnnbuilder as rb

__all__ = ["Quota", "MemoryLedger", "activation_elements", "held_bytes", "tensor_bytes", "work_bytes", "MB"]

MB = 1024 * 1024

INFERENCE_COPIES = 2
"""Activations kept per timestep and batch entry when simulating: each layer's output, and the input."""
TRAINING_COPIES = 6
"""When training: the forward's activations, what autograd saves for the backward, and their gradients."""


@dataclass(frozen=True)
class Quota:
    """A tenant's own limits; None: only the server's limits apply."""

    max_sessions: int | None = None
    max_memory_mb: int | None = None
    session_ttl_s: float | None = None
    """Seconds a session may go unused before it expires; 0: never; None: the server's ``--session-ttl``."""


def held_bytes(model: torch.nn.Module, *states) -> int:
    """Bytes of the model's parameters and buffers plus every tensor in ``states`` (state trees,
    optimizers); works on the meta device too."""
    tensors = list(model.state_dict().values())
    for state in states:
        if isinstance(state, torch.optim.Optimizer):
            tensors += [v for values in state.state.values() for v in values.values() if torch.is_tensor(v)]
        elif state is not None:
            tensors += list(rb.named_leaves(state).values())
    return tensor_bytes(tensors)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """The bytes ``tensors`` take."""
    return sum(t.numel() * t.element_size() for t in tensors)


def activation_elements(model: rb.Model, state, batch_size: int) -> int:
    """The elements one timestep of one batch entry passes through ``model``, a model built on the
    meta device: its input, its state, and the output of every innermost module (each layer, and
    what a layer's own modules make: an ``Upsample``'s output before the pool that shrinks it).

    The model runs one timestep of batch ``batch_size`` from ``state`` (its initial state, on the
    meta device too) on the meta device, which computes shapes and allocates nothing. A model that
    can't run there (a custom module that reads values) is
    counted by its input, state and output only.

    >>> from rnnbuilder import nn
    >>> with torch.device("meta"):
    ...     model = rb.Sequential(nn.Upsample(scale_factor=4.0), nn.MaxPool1d(4)).make_model((1, 16))
    ...     state = model.get_initial_state(2)
    >>> activation_elements(model, state, 2)       # 16 in, 64 upsampled, 16 pooled
    96
    """
    inputs = math.prod(model.in_shape)
    state_elements = sum(t.numel() for t in rb.named_leaves(state).values()) // batch_size
    seen: list[int] = []

    def count(module, args, output) -> None:
        seen.extend(t.numel() for t in rb.named_leaves(output).values())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(1, batch_size, *model.in_shape, device="meta"), state)
    except Exception:  # values a meta tensor doesn't have: fall back to what the model shows outside
        seen[:] = [batch_size * math.prod(model.out_shape)]
    finally:
        for handle in handles:
            handle.remove()
    return inputs + state_elements + sum(seen) // batch_size


def work_bytes(elements_per_entry: int, timesteps: int, batch: int, training: bool) -> int:
    """Room a call on ``timesteps`` x ``batch`` needs for activations, in float32 bytes, for a
    network through which one timestep of one batch entry passes ``elements_per_entry`` elements
    (``activation_elements``)."""
    copies = TRAINING_COPIES if training else INFERENCE_COPIES
    return elements_per_entry * timesteps * batch * 4 * copies


class MemoryLedger:
    """Bytes reserved by calls in flight, by tenant; with the resident sessions' bytes (which the
    caller sums), checked against the tenant's and the server's budgets."""

    def __init__(self, server_budget_bytes: int | None):
        self.server_budget = server_budget_bytes
        self._reserved: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reserved(self, owner: str | None = None) -> int:
        with self._lock:
            return self._reserved[owner] if owner is not None else sum(self._reserved.values())

    def try_reserve(
        self, owner: str, need: int, owner_budget: int | None, held: Callable[[], tuple[int, int]]
    ) -> tuple[str, int, int] | None:
        """Reserve ``need`` bytes for ``owner`` if both budgets have room and return None; else
        reserve nothing and return ``(scope, total, budget)`` of the first budget it would break,
        ``scope`` being ``"tenant"`` or ``"server"``. ``held()`` gives the bytes the sessions hold,
        the owner's and everyone's; it is only asked when there is a budget to check."""
        with self._lock:
            if owner_budget is not None or self.server_budget is not None:
                held_owner, held_all = held()
                owner_total = held_owner + self._reserved[owner] + need
                all_total = held_all + sum(self._reserved.values()) + need
                if owner_budget is not None and owner_total > owner_budget:
                    return "tenant", owner_total, owner_budget
                if self.server_budget is not None and all_total > self.server_budget:
                    return "server", all_total, self.server_budget
            self._reserved[owner] += need
            return None

    def release(self, owner: str, amount: int) -> None:
        with self._lock:
            self._reserved[owner] -= amount
            if self._reserved[owner] <= 0:
                del self._reserved[owner]
