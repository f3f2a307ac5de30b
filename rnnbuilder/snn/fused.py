"""Fused multi-step neurons: a whole (time, batch, n) sequence in one call, forward and backward.

``rnnbuilder.snn.functional.lif_sequence`` and friends call into this module. Each neuron family has
a ``torch.autograd.Function`` whose forward runs the time loop without an autograd graph and whose
backward is a hand-written reverse-time loop (BPTT) with the surrogate's ``gradient``.

Backends (``use_backend``, ``set_backend``, or the environment):

- ``"auto"`` (default): ``"triton"`` for float32 CUDA tensors when Triton is importable and the
  surrogate is a built-in one, else ``"torch"``.
- ``"torch"``: the loop in PyTorch ops, on any device and float dtype. Spikes and states are
  bit-identical to the reference loop because every step applies the same PyTorch operations in
  the same order. The backward evaluates the surrogate for a chunk of timesteps at once and leaves
  one fused multiply-add per timestep in its sequential part.
- ``"triton"``: one Triton kernel launch forward and one backward over all timesteps
  (``rnnbuilder.snn.triton_kernels``); each program owns a block of neurons and loops over time.
  On CPU tensors the kernels run in Triton's interpreter (slow; for tests and debugging).
- ``"reference"``: ``functional.unroll`` over the step function, through autograd (debugging). A
  spike function that isn't a ``Surrogate`` (any callable) always runs here, whatever the choice.

``RNNBUILDER_REFERENCE=1`` forces ``"reference"``; ``RNNBUILDER_NEURON_BACKEND=<name>`` picks one.
``use_backend`` (a context manager, per thread or task) wins over ``set_backend`` (process-wide),
which wins over the environment.

What the backward pass keeps, per element of the (time, batch, n) input, in the input's dtype
(float32: 4 bytes a value); nothing when no gradient is needed:

==========  ==========================================  ==================
neuron      saved for the backward pass                 bytes (float32)
==========  ==========================================  ==================
LIF         pre-spike membrane u = beta * v + x         4
NoReset     membrane u                                  4
Adaptive    membrane and adaptation before the step     8
Cooldown    membrane before the step, (1 - beta) e^x    8
==========  ==========================================  ==================

The backward recomputes spikes and surrogate gradients from these; it never saves the spikes. (The
torch backend allocates its spike output and saved values in one block of memory, as separate
tensors rather than views of the block, so the spikes' memory is released together with the saved
values; see ``_block``.) Keeping the pre-spike membrane is the minimum for an exact backward:
recovering it backwards in time (v = (u - x) / beta) amplifies rounding errors by 1 / beta a step,
and recomputing it costs a second forward pass.

The torch backend's LIF backward writes the input gradient over the saved membrane, timestep by
timestep right after reading it, when autograd frees the saved values after the call (no
``retain_graph``): on the CPU a fresh gradient buffer costs a write of the whole sequence to memory
that isn't in cache, the largest single cost of the backward. The gradient then shares the block
with the spikes until both are freed. The spikes keep their values and stay ordinary tensors: the
write bumps the version counter of the saved membrane only, which the spikes don't share. On the
CPU a freed block is kept for the next call of the same size (``SPARE_BLOCKS``), which then writes
into memory that is already mapped; a block is reused only once nothing refers to it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from contextvars import ContextVar

import torch
from torch.autograd.function import once_differentiable

from . import surrogate as S
from .surrogate import Surrogate

__all__ = [
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "resolve_backend",
    "triton_available",
    "lif",
    "adaptive",
    "cooldown",
]

BACKENDS = ("auto", "torch", "triton", "reference")
"""The names ``set_backend`` and ``use_backend`` accept."""

_CONTEXT: ContextVar[str | None] = ContextVar("rnnbuilder_neuron_backend", default=None)
_GLOBAL: str | None = None
CHUNK_ELEMENTS = 1 << 15
"""The torch backward evaluates the surrogate for this many elements (timesteps x neurons) at once,
at least one timestep. 32768 is PyTorch's intra-op grain size: each op stays on one thread, which
measured faster and far steadier than splitting it on a busy 2-core machine, and fits in L2."""


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
    from .triton_kernels import surrogate_code

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


def _impl(backend: str):
    if backend == "triton":
        from . import triton_kernels

        return triton_kernels
    if backend == "torch":
        return _torch_impl
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
    impl = _impl(backend)
    if _needs_grad(xs, v0):
        return _LIF.apply(xs, v0, float(beta), bool(reset), surrogate, impl)
    spikes, v, _ = impl.lif_forward(xs, v0, float(beta), bool(reset), store=False)
    return spikes, v


def adaptive(xs, v0, a0, beta: float, beta_thr: float, gamma: float, surrogate: Surrogate, backend: str = "torch"):
    """Adaptive threshold over xs (T, B, n) from (v0, a0) -> (spikes, final v, final a)."""
    v0, a0 = _state(v0, xs), _state(a0, xs)
    if xs.shape[0] == 0:
        return xs.new_empty(xs.shape), v0, a0
    impl = _impl(backend)
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
    impl = _impl(backend)
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


# ------------------------------------------------------------------------------------------------
# The torch implementation
# ------------------------------------------------------------------------------------------------


class _TorchImpl:
    """Loops of PyTorch ops without an autograd graph.

    The forward applies exactly the reference step's operations (``functional.lif_step`` etc.) to
    the same (batch, n) slices, so the results are bit-identical; it writes into preallocated
    outputs. The backward evaluates the surrogate and the per-element coefficients of the reverse
    recurrence for a chunk of timesteps at once (few large ops), then runs the recurrence itself,
    one or two fused multiply-adds per timestep.

    On the CPU these loops are bound by the fixed cost of each PyTorch call (about 1 to 3 us, as
    much as the arithmetic on a (16, 1024) slice) and by memory that other work has evicted from
    the cache, so the LIF path counts both: three ops a timestep forward, three and a half backward,
    per-timestep views made once (``unbind``) rather than by indexing in the loop, and no fresh
    buffer for the input gradient (see the module docstring).
    """

    # -- LIF / NoReset ------------------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def lif_forward(xs, v0, beta, reset, store):
        steps = xs.shape[0]
        # u is the spikes' buffer when not storing
        spikes, u = _block(xs, steps, steps) if store else _block(xs, steps) * 2
        x_t, s_t = xs.unbind(0), spikes.unbind(0)
        u_t = u.unbind(0) if store or not reset else (torch.empty_like(s_t[0]),) * steps
        one, ones = _scalar(1.0, xs), _decay_ones(xs)
        beta_s = _scalar(beta, xs)
        # u_t = beta * v_{t-1} + x_t: addcmul(x, v, ones, value=beta) where that is exact, else mul, add.
        prev = v0
        if not reset:
            # u_t doesn't depend on the spikes: spikes in one op afterwards.
            for x, ut in zip(x_t, u_t):
                if ones is not None:
                    prev = torch.addcmul(x, prev, ones, value=beta, out=ut)
                else:
                    prev = torch.mul(prev, beta_s, out=ut).add_(x)
            v = u_t[-1].clone()
            if store:
                torch.gt(u, one, out=spikes)  # H(u - 1): u - 1 > 0 exactly when u > 1 (no underflow)
            else:
                spikes.gt_(one)
            return spikes, v, (u,) if store else ()
        v = torch.empty_like(s_t[0])
        if ones is not None:
            for x, ut, st in zip(x_t, u_t, s_t):
                torch.addcmul(x, prev, ones, value=beta, out=ut)
                torch.gt(ut, one, out=st)
                prev = torch.sub(ut, st, out=v)
        else:
            for x, ut, st in zip(x_t, u_t, s_t):
                torch.mul(prev, beta_s, out=ut).add_(x)
                torch.gt(ut, one, out=st)
                prev = torch.sub(ut, st, out=v)
        return spikes, v, (u,) if store else ()

    @staticmethod
    @torch.no_grad()
    def lif_backward(saved, grad_spikes, grad_v, beta, reset, surrogate):
        (u,) = saved
        steps = u.shape[0]
        # G_t = dL/du_t. With gv = dL/dv_t (after the reset): G_t = gv * (1 - g_t) + gs_t * g_t (reset)
        # or gv + gs_t * g_t (no reset); dL/dv_{t-1} = beta * G_t. The coefficient c_t multiplies
        # G_{t+1}, so it carries beta, except at the last step, where it multiplies grad_v.
        # G_t goes into u_t's slot when autograd drops u after this call: that memory was just read
        # (in cache), where a fresh buffer would cost a cold write of the whole sequence.
        gx = u if _saved_tensors_are_freed() else torch.empty_like(u)
        g_t = gx.unbind(0)
        prev = grad_v if grad_v is not None else torch.zeros_like(g_t[0])
        chunk = _chunk(u)
        work = _Buffers(u, chunk)
        has_d = grad_spikes is not None
        z_all = work.get("z", chunk)
        c_all, c_t = (work.get("c", chunk), work.steps("c")) if reset else (None, None)
        d_all, d_t = (work.get("d", chunk), work.steps("d")) if has_d else (None, None)
        one, two, beta_s = _scalar(1.0, u), _scalar(2.0, u), _scalar(beta, u)
        spike_linear = type(surrogate) is S.SpikeLinear
        factor = float(surrogate.gradient_factor) if spike_linear else 1.0
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        for stop in range(steps, 0, -chunk):
            start = max(0, stop - chunk)
            n = stop - start
            uc = u[start:stop]
            z = z_all if n == chunk else z_all[:n]
            if spike_linear:
                # g = factor * h with h = clamp(1 - |u - 1|, min=0), as clamp(min(2 - u, u), min=0): 3 ops, not 4
                torch.sub(two, uc, out=z)
                h = torch.minimum(z, uc, out=z).clamp_min_(0)
            else:
                h = _surrogate_gradient(torch.sub(uc, one, out=z), surrogate, work)
            if has_d:  # d = g * gs = factor * h * gs, one op: 0 + factor * h * gs
                d = d_all if n == chunk else d_all[:n]
                torch.addcmul(zero, h, grad_spikes[start:stop], value=factor, out=d)
            if reset:
                c = c_all if n == chunk else c_all[:n]
                torch.add(beta_s, h, alpha=-beta * factor, out=c)  # beta * (1 - g)
                if stop == steps:
                    torch.add(one, h[-1], alpha=-factor, out=c[-1])  # 1 - g
                if has_d:
                    for i in range(n - 1, -1, -1):
                        prev = torch.addcmul(d_t[i], c_t[i], prev, out=g_t[start + i])
                else:
                    for i in range(n - 1, -1, -1):
                        prev = torch.mul(c_t[i], prev, out=g_t[start + i])
            else:
                for i in range(n - 1, -1, -1):
                    scale = 1.0 if start + i == steps - 1 else beta
                    if has_d:
                        prev = torch.add(d_t[i], prev, alpha=scale, out=g_t[start + i])
                    else:
                        prev = torch.mul(prev, scale, out=g_t[start + i])
        return gx, prev * beta

    # -- Adaptive ----------------------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def adaptive_forward(xs, v0, a0, beta, beta_thr, gamma, store):
        steps = xs.shape[0]
        # The states before each step (and the final one) when storing, else two alternating slots.
        if store:
            spikes, vs, as_ = _block(xs, steps, steps + 1, steps + 1)
        else:
            (spikes,), (vs, as_) = _block(xs, steps), _block(xs, 2, 2)
        x_t, s_t = xs.unbind(0), spikes.unbind(0)
        v_t, a_t = vs.unbind(0), as_.unbind(0)
        v_t[0].copy_(v0)
        a_t[0].copy_(a0)
        theta, tmp = torch.empty_like(s_t[0]), torch.empty_like(s_t[0])
        beta, beta_thr, gamma = _scalar(beta, xs), _scalar(beta_thr, xs), _scalar(gamma, xs)
        one, zero = _scalar(1.0, xs), _scalar(0.0, xs)
        for t in range(steps):
            i, j = (t, t + 1) if store else (t % 2, (t + 1) % 2)
            v, a, new_v, new_a = v_t[i], a_t[i], v_t[j], a_t[j]
            torch.add(a, one, out=theta)  # theta = 1 + a
            torch.sub(v, theta, out=tmp)
            tmp.div_(theta)
            torch.gt(tmp, zero, out=s_t[t])  # s = H((v - theta) / theta)
            torch.mul(v, beta, out=new_v)
            new_v.add_(x_t[t])
            torch.mul(s_t[t], theta, out=tmp)
            new_v.sub_(tmp)  # v = beta * v + x - s * theta
            torch.mul(a, beta_thr, out=new_a)
            torch.mul(s_t[t], gamma, out=tmp)
            new_a.add_(tmp)  # a = beta_thr * a + gamma * s
        last = steps if store else steps % 2
        saved = (vs[:-1], as_[:-1]) if store else ()
        return spikes, v_t[last].clone(), a_t[last].clone(), saved

    @staticmethod
    @torch.no_grad()
    def adaptive_backward(saved, grad_spikes, grad_v, grad_a, beta, beta_thr, gamma, surrogate):
        vs, as_ = saved
        steps = vs.shape[0]
        # Per step, with gv = dL/dv, ga = dL/da after the step, and theta = 1 + a, r = 1 / theta,
        # z = (v - theta) r, g = surrogate'(z), s = H(z) from the state before it:
        #   dz = g (gs - theta gv + gamma ga);  dx = gv
        #   dv = beta gv + r dz;  da = beta_thr ga - s gv - v r^2 dz
        # i.e. dv = A gv + B ga + E and da = C gv + D ga + F with per-element coefficients.
        # gx[t] = dL/dx_t = dL/dv after step t, so the loop writes dv straight into gx[t - 1].
        gx, g_t = _gradient_steps(vs, grad_v)
        gv = g_t[-1]
        ga = grad_a if grad_a is not None else torch.zeros_like(gv)
        chunk = _chunk(vs)
        work = _Buffers(vs, chunk)
        for stop in range(steps, 0, -chunk):
            start = max(0, stop - chunk)
            v, theta = vs[start:stop], as_[start:stop] + 1
            r = theta.reciprocal()
            z = (v - theta) / theta
            s = (z > 0).to(z.dtype)
            g = _surrogate_gradient(z, surrogate, work)
            q = g * r
            w = q * v * r
            A = torch.rsub(g, beta)
            B = q * gamma
            C = (g * v * r).sub_(s)
            D = torch.mul(w, -gamma).add_(beta_thr)
            if grad_spikes is not None:
                gs = grad_spikes[start:stop]
                E, F = q * gs, (w * gs).neg_()
            for t in range(stop - 1, start - 1, -1):
                i = t - start
                nv = g_t[t - 1] if t > 0 else torch.empty_like(gv)
                if grad_spikes is not None:
                    torch.addcmul(E[i], A[i], gv, out=nv)
                    na = torch.addcmul(F[i], C[i], gv)
                else:
                    torch.mul(A[i], gv, out=nv)
                    na = C[i] * gv
                nv.addcmul_(B[i], ga)
                na.addcmul_(D[i], ga)
                gv, ga = nv, na
        return gx, gv, ga

    # -- Cooldown ----------------------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def cooldown_forward(xs, v0, beta, sign, store):
        steps = xs.shape[0]
        one_minus_beta, beta = _scalar(1 - beta, xs), _scalar(beta, xs)
        # The membrane doesn't depend on the spikes: the trajectory first, then spikes in one go.
        vs, w, spikes = _block(xs, steps + 1, steps, steps)
        x_t, v_t, w_t = xs.unbind(0), vs.unbind(0), w.unbind(0)
        v_t[0].copy_(v0)
        for t in range(steps):
            torch.exp(x_t[t], out=w_t[t])  # per (batch, n) slice, as the reference step does
            w_t[t].mul_(one_minus_beta)
            torch.mul(v_t[t], beta, out=v_t[t + 1])
            v_t[t + 1].add_(w_t[t])  # v = beta * v + (1 - beta) * exp(x)
        before = vs[:-1]
        torch.sub(before, _scalar(1.0, xs), out=spikes).mul_(sign).gt_(0)  # H(sign * (v - 1)) on the previous v
        return spikes, v_t[-1].clone(), (before, w) if store else ()

    @staticmethod
    @torch.no_grad()
    def cooldown_backward(saved, grad_spikes, grad_v, beta, sign, surrogate):
        before, w = saved
        steps = before.shape[0]
        # gx_t = dL/dv_{t+1} * w_t; dL/dv_t = beta dL/dv_{t+1} + gs_t g(sign (v_t - 1)) sign.
        # gx holds dL/dv_{t+1} during the loop and is multiplied by w at the end.
        gx, g_t = _gradient_steps(before, grad_v)
        prev = g_t[-1]
        chunk = _chunk(before)
        work = _Buffers(before, chunk)
        gv0 = None
        for stop in range(steps, 0, -chunk):
            start = max(0, stop - chunk)
            if grad_spikes is not None:
                d = _surrogate_gradient(torch.sub(before[start:stop], 1).mul_(sign), surrogate, work)
                d.mul_(grad_spikes[start:stop]).mul_(sign)
            for t in range(stop - 1, start - 1, -1):
                out = g_t[t - 1] if t > 0 else torch.empty_like(prev)
                if grad_spikes is not None:
                    torch.add(d[t - start], prev, alpha=beta, out=out)
                else:
                    torch.mul(prev, beta, out=out)
                prev = out
            gv0 = prev
        gx.mul_(w)
        return gx, gv0


def _gradient_steps(like: torch.Tensor, grad_v: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
    """A fresh (T, ...) gradient buffer shaped as ``like``, its per-step views, and its last step
    set to ``grad_v`` (zero without one): where a backward's recurrence starts."""
    gx = torch.empty_like(like)
    g_t = gx.unbind(0)
    if grad_v is not None:
        g_t[-1].copy_(grad_v)
    else:
        g_t[-1].zero_()
    return gx, g_t


class _Buffers:
    """Scratch tensors of (chunk, *state shape), reused across chunks: fresh large allocations
    cost page faults on every chunk."""

    def __init__(self, like: torch.Tensor, chunk: int):
        self.like, self.chunk, self.buffers = like, chunk, {}

    def get(self, name: str, steps: int) -> torch.Tensor:
        if name not in self.buffers:
            self.buffers[name] = torch.empty(
                (self.chunk, *self.like.shape[1:]), dtype=self.like.dtype, device=self.like.device
            )
        return self.buffers[name][:steps]

    def steps(self, name: str) -> tuple[torch.Tensor, ...]:
        """The (state shape) slices of buffer ``name``, one per timestep of a chunk: indexing a
        tuple costs nothing, indexing the tensor costs a view each time."""
        key = name + "/steps"
        if key not in self.buffers:
            self.buffers[key] = self.get(name, self.chunk).unbind(0)
        return self.buffers[key]


def _surrogate_gradient(z: torch.Tensor, surrogate: Surrogate, work: _Buffers) -> torch.Tensor:
    """``surrogate.gradient(z)``, in place in ``z`` for the built-in surrogates: the same PyTorch
    operations in the same order (so the same values), without temporaries."""
    kind = type(surrogate)
    if kind is S.SpikeLinear:  # gradient_factor * clamp(1 - |z|, min=0)
        z.abs_()
        torch.sub(_scalar(1.0, z), z, out=z)
        return z.clamp_min_(0).mul_(_scalar(surrogate.gradient_factor, z))
    if kind is S.FastSigmoid:  # 1 / (slope * |z| + 1) ** 2
        return z.abs_().mul_(_scalar(surrogate.slope, z)).add_(_scalar(1.0, z)).pow_(2).reciprocal_()
    if kind is S.ATan:  # (alpha / 2) / (1 + (pi / 2 * alpha * z) ** 2)
        z.mul_(_scalar(math.pi / 2 * surrogate.alpha, z)).pow_(2).add_(_scalar(1.0, z))
        return z.reciprocal_().mul_(_scalar(surrogate.alpha / 2, z))
    if kind is S.Triangular:  # clamp(width - |z|, min=0) / width ** 2
        z.abs_()
        torch.sub(_scalar(surrogate.width, z), z, out=z)
        return z.clamp_min_(0).div_(_scalar(surrogate.width**2, z))
    if kind is S.Sigmoid:  # slope * s * (1 - s), s = sigmoid(slope * z)
        s = z.mul_(_scalar(surrogate.slope, z)).sigmoid_()
        one_minus = torch.sub(_scalar(1.0, z), s, out=work.get("scratch", z.shape[0]))
        return s.mul_(_scalar(surrogate.slope, z)).mul_(one_minus)
    if kind is S.StraightThrough:
        return z.fill_(1)
    return surrogate.gradient(z)


def _decay_ones(like: torch.Tensor) -> torch.Tensor | None:
    """``ones`` such that ``addcmul(x, v, ones, value=beta)`` is ``beta * v + x`` with exactly the
    reference's two roundings, or None where it isn't (then: mul, add).

    On the CPU addcmul computes x + (beta * v) * 1 in ``like``'s own dtype, so the product is
    rounded before the sum just as ``beta * v + x`` does, whether or not the compiler fused the
    multiply-add (the factor 1 makes it exact either way). float16/bfloat16 compute in float32 and
    round once; other devices aren't checked."""
    if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64):
        return torch.ones((), dtype=like.dtype).expand(like.shape[1:])
    return None


def _saved_tensors_are_freed() -> bool:
    """Whether autograd frees this backward's saved tensors when it returns (no ``retain_graph``),
    so that the backward may overwrite them. False when it can't tell (outside a backward, or a
    PyTorch without the query that AOTAutograd uses for the same purpose)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None:
        return False
    try:
        return not keep_graph()
    except RuntimeError:
        return False


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim CPU tensor, which PyTorch's binary ops treat exactly like the Python
    number (same rounding to ``like``'s dtype, same opmath for float16/bfloat16) but without
    wrapping a new scalar tensor on every call. Cached; never modified."""
    return _cached_scalar(float(value), like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float64)


@functools.lru_cache(maxsize=512)
def _cached_scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def _block(like: torch.Tensor, *lengths: int) -> tuple[torch.Tensor, ...]:
    """Tensors of (length, *like.shape[1:]) for each of ``lengths``, in one allocation. The forward's
    outputs and saved values share it: on Linux, several fresh allocations of this size are returned
    to the OS when freed and cost page faults on every call (measured: about 1.5 ms per 6 MiB
    buffer); one doesn't. On the CPU a spare block of the same size and dtype that nothing refers to
    any more is reused (see ``SPARE_BLOCKS``): that one doesn't fault either. Its old values are all
    overwritten.

    Each tensor is a base of its own, not a view of the block: they don't overlap, and each has its
    own autograd version counter, so the LIF backward writing the input gradient over the saved
    membrane leaves the spikes (which the caller may still use) untouched in value and in version.

    >>> spikes, u = _block(torch.zeros(3, 2, 4), 3, 3)
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
        block = torch.empty(numel, dtype=like.dtype)
        _SPARES.append((key, block.untyped_storage()))
        kept = 0
        for i in range(len(_SPARES) - 1, -1, -1):  # keep the most recent that fit the limits
            kept += _SPARES[i][1].nbytes()
            if kept > SPARE_BYTES or len(_SPARES) - i > SPARE_BLOCKS:
                del _SPARES[: i + 1]
                break
        return block


SPARE_BLOCKS = 4
"""How many forward blocks (``_block``) the torch backend keeps on the CPU for reuse, at most
``SPARE_BYTES`` together; 0 turns reuse off. A block is reused only once nothing refers to it (the
spikes, saved values and input gradient made from it are all gone), so at most these stay
allocated between calls: what a training loop would allocate again at its next step anyway."""
SPARE_BYTES = 1 << 28
"""The most bytes that ``SPARE_BLOCKS`` keep together (256 MiB); a larger block is never kept."""
_SPARES: list[tuple[tuple, torch.UntypedStorage]] = []
_SPARES_LOCK = threading.Lock()
_storage_refs = getattr(torch._C, "_storage_Use_Count", None)
"""References to a storage (as inductor's CUDA graph trees count them); None: no reuse."""


def _chunk(reference: torch.Tensor) -> int:
    per_step = max(1, reference[0].numel())
    return max(1, min(reference.shape[0], CHUNK_ELEMENTS // per_step))


_torch_impl = _TorchImpl
