"""Recording of inner layers' outputs and state fields during one ``Model.record`` call.

Containers (``Sequential``, ``Network``) call their children through ``call_child``. While a
recording is active in the current context (thread or task), it captures the outputs and state
fields that were asked for; otherwise ``call_child`` is a plain call. Nothing is stored on modules.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar

import torch

__all__ = ["Recording", "recording", "call_child", "child_stepper"]

_ACTIVE: ContextVar[Recording | None] = ContextVar("rnnbuilder_recording", default=None)


class Recording:
    """The values captured so far, by dotted name (``"hidden"``, ``"hidden.1.v"``), each a list of
    (time, batch, ...) pieces in time order."""

    def __init__(self, names: list[str]):
        self.wanted = set(names)
        self.path: list[str] = []
        self.pieces: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def capture(self, output, state, method: str) -> None:
        name = ".".join(self.path)
        if name in self.wanted:
            self.pieces[name].append(output.unsqueeze(0) if method == "step" else output)
        if hasattr(state, "_fields"):
            # Only sequence_full returns per-timestep states; the other calls cover a single step.
            for field, value in zip(state._fields, state):
                if f"{name}.{field}" in self.wanted:
                    self.pieces[f"{name}.{field}"].append(value if method == "sequence_full" else value.unsqueeze(0))

    def result(self) -> dict[str, torch.Tensor]:
        return {name: torch.cat(pieces) for name, pieces in self.pieces.items()}


@contextmanager
def recording(names: list[str]):
    """Capture ``names`` during the calls made inside the ``with`` block."""
    rec = Recording(names)
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def call_child(name: str, runner, method: str, x, state):
    """``runner.<method>(x, state)``, recorded under ``name`` when a recording is active."""
    rec = _ACTIVE.get()
    if rec is None:
        return getattr(runner, method)(x, state)
    rec.path.append(name)
    try:
        y, state = getattr(runner, method)(x, state)
        rec.capture(y, state, method)
    finally:
        rec.path.pop()
    return y, state


def child_stepper(name: str, runner):
    """A function ``(x, state) -> (y, state)`` for ``runner``'s timesteps: its lean ``stepper()``,
    or, while a recording is active, ``call_child`` so that the steps are recorded."""
    if _ACTIVE.get() is None:
        return runner.stepper()
    return functools.partial(call_child, name, runner, "step")
