"""Which backend runs the fused neurons: the choice (``use_backend``, ``set_backend``, the
environment) and the concrete backend of a call (``resolve_backend``), which Triton may not run."""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar

import torch

from ..surrogate import Surrogate

__all__ = [
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "resolve_backend",
    "triton_available",
]

BACKENDS = ("auto", "torch", "triton", "reference")
"""The names ``set_backend`` and ``use_backend`` accept."""

_CONTEXT: ContextVar[str | None] = ContextVar("rnnbuilder_neuron_backend", default=None)
_GLOBAL: str | None = None


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown neuron backend {name!r}; valid names: {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend name in force here: ``use_backend``, else ``set_backend``, else the environment, else ``"auto"``."""
    name = _CONTEXT.get() or _GLOBAL
    if name is not None:
        return name
    if os.environ.get("RNNBUILDER_REFERENCE", "").strip() not in ("", "0"):
        return "reference"
    return _check_name(os.environ.get("RNNBUILDER_NEURON_BACKEND", "auto").strip() or "auto")


def set_backend(name: str | None) -> None:
    """Set the process-wide neuron backend (one of ``BACKENDS``); ``None`` goes back to the environment/auto."""
    global _GLOBAL
    _GLOBAL = None if name is None else _check_name(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ``with`` block with neuron backend ``name``, e.g. ``use_backend("reference")`` to debug.

    >>> import torch
    >>> from rnnbuilder import snn
    >>> model = snn.LIF().make_model((3,))
    >>> xs = torch.rand(20, 2, 3)
    >>> with use_backend("reference"):
    ...     slow, _ = model(xs)
    >>> torch.equal(model(xs)[0], slow)
    True
    """
    token = _CONTEXT.set(_check_name(name))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """Whether ``import triton`` works (checked once)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401
        except Exception:  # ImportError, or a broken install
            _TRITON_OK = False
        else:
            _TRITON_OK = True
    return _TRITON_OK


def _triton_supports(xs: torch.Tensor, surrogate: Surrogate) -> str | None:
    """Why the Triton kernels can't run this call, or ``None`` if they can."""
    if not triton_available():
        return "triton is not installed (pip install 'rnnbuilder-sim[kernels]')"
    if xs.dtype != torch.float32:
        return f"the Triton kernels take float32, got {xs.dtype}"
    if xs.device.type not in ("cuda", "cpu"):
        return f"the Triton kernels run on CUDA (or the CPU interpreter), got {xs.device}"
    from .triton_impl import surrogate_code

    if surrogate_code(surrogate) is None:
        return f"the Triton kernels know the built-in surrogates only, got {type(surrogate).__name__}"
    return None


def resolve_backend(xs: torch.Tensor, surrogate: Surrogate, backend: str | None = None) -> str:
    """The concrete backend (``"torch"``, ``"triton"`` or ``"reference"``) for this call.

    A spike function that isn't a ``Surrogate`` (any other callable, e.g. a custom autograd
    function's ``apply``) has no ``gradient`` for the fused backwards: it always gets
    ``"reference"``, the step loop, whose gradient comes from the callable's own backward.

    >>> resolve_backend(torch.zeros(2, 1, 3), lambda v: (v > 0).float(), "torch")
    'reference'
    """
    name = _check_name(backend) if backend is not None else get_backend()
    if not isinstance(surrogate, Surrogate):
        return "reference"
    if name == "auto":
        if xs.is_cuda and _triton_supports(xs, surrogate) is None:
            return "triton"
        return "torch"
    if name == "triton":
        why = _triton_supports(xs, surrogate)
        if why is not None:
            raise RuntimeError(f"neuron backend 'triton' was requested but can't run: {why}")
    return name
