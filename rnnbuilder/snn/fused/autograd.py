"""The fused neurons' entry points (``lif``, ``adaptive``, ``cooldown``) and their autograd
functions, whose forward and backward call the implementation (``torch_impl`` or ``triton_impl``)
that the backend names."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..surrogate import Surrogate
from . import torch_impl

__all__ = ["lif", "adaptive", "cooldown"]


def _implementation(backend: str):
    """The module that implements backend ``backend``: ``torch_impl``, or ``triton_impl`` (imported on first use)."""
    if backend == "triton":
        from . import triton_impl

        return triton_impl
    if backend == "torch":
        return torch_impl
    raise ValueError(f"backend {backend!r} has no fused implementation")


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _state(v: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    return v.expand(xs.shape[1:])


# ------------------------------------------------------------------------------------------------
# Public pure functions on tensors
# ------------------------------------------------------------------------------------------------


def lif(xs, v0, beta: float, reset: bool, surrogate: Surrogate, backend: str = "torch"):
    """LIF (``reset``) or NoReset over xs (T, B, n) from membrane v0 (B, n) -> (spikes, final v)."""
    v0 = _state(v0, xs)
    if xs.shape[0] == 0:
        return xs.new_empty(xs.shape), v0
    impl = _implementation(backend)
    if _needs_grad(xs, v0):
        return _LIF.apply(xs, v0, float(beta), bool(reset), surrogate, impl)
    spikes, v, _ = impl.lif_forward(xs, v0, float(beta), bool(reset), store=False)
    return spikes, v


def adaptive(xs, v0, a0, beta: float, beta_thr: float, gamma: float, surrogate: Surrogate, backend: str = "torch"):
    """Adaptive threshold over xs (T, B, n) from (v0, a0) -> (spikes, final v, final a)."""
    v0, a0 = _state(v0, xs), _state(a0, xs)
    if xs.shape[0] == 0:
        return xs.new_empty(xs.shape), v0, a0
    impl = _implementation(backend)
    params = (float(beta), float(beta_thr), float(gamma))
    if _needs_grad(xs, v0, a0):
        return _Adaptive.apply(xs, v0, a0, params, surrogate, impl)
    spikes, v, a, _ = impl.adaptive_forward(xs, v0, a0, *params, store=False)
    return spikes, v, a


def cooldown(xs, v0, beta: float, sign: torch.Tensor, surrogate: Surrogate, backend: str = "torch"):
    """Cooldown over xs (T, B, n) from v0 (B, n), ``sign`` (n,) -> (spikes, final v)."""
    v0 = _state(v0, xs)
    if xs.shape[0] == 0:
        return xs.new_empty(xs.shape), v0
    impl = _implementation(backend)
    sign = sign.to(device=xs.device, dtype=xs.dtype)
    if _needs_grad(xs, v0):
        return _Cooldown.apply(xs, v0, float(beta), sign, surrogate, impl)
    spikes, v, _ = impl.cooldown_forward(xs, v0, float(beta), sign, store=False)
    return spikes, v


# ------------------------------------------------------------------------------------------------
# Autograd functions: the implementation (torch or triton) is passed in
# ------------------------------------------------------------------------------------------------


class _LIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, v0, beta, reset, surrogate, impl):
        spikes, v, saved = impl.lif_forward(xs, v0, beta, reset, store=True)
        ctx.save_for_backward(*saved)
        ctx.args = (beta, reset, surrogate, impl)
        ctx.set_materialize_grads(False)
        return spikes, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_v):
        beta, reset, surrogate, impl = ctx.args
        gx, gv0 = impl.lif_backward(ctx.saved_tensors, grad_spikes, grad_v, beta, reset, surrogate)
        return gx, gv0, None, None, None, None


class _Adaptive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, v0, a0, params, surrogate, impl):
        spikes, v, a, saved = impl.adaptive_forward(xs, v0, a0, *params, store=True)
        ctx.save_for_backward(*saved)
        ctx.args = (params, surrogate, impl)
        ctx.set_materialize_grads(False)
        return spikes, v, a

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_v, grad_a):
        params, surrogate, impl = ctx.args
        gx, gv0, ga0 = impl.adaptive_backward(ctx.saved_tensors, grad_spikes, grad_v, grad_a, *params, surrogate)
        return gx, gv0, ga0, None, None, None


class _Cooldown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, v0, beta, sign, surrogate, impl):
        spikes, v, saved = impl.cooldown_forward(xs, v0, beta, sign, store=True)
        ctx.save_for_backward(sign, *saved)
        ctx.args = (beta, surrogate, impl)
        ctx.set_materialize_grads(False)
        return spikes, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_v):
        beta, surrogate, impl = ctx.args
        sign, *saved = ctx.saved_tensors
        gx, gv0 = impl.cooldown_backward(saved, grad_spikes, grad_v, beta, sign, surrogate)
        return gx, gv0, None, None, None, None
