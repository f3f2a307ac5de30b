"""The torch implementation of the fused neurons: loops of PyTorch ops without an autograd graph,
with the same functions as ``triton_impl``: ``*_forward(..., store)`` and ``*_backward(saved, grads, ...)``.

The forward applies exactly the reference step's operations (``functional.lif_step`` etc.) to
the same (batch, n) slices, so the results are bit-identical; it writes into preallocated
outputs. The backward evaluates the surrogate and the per-element coefficients of the reverse
recurrence for a chunk of timesteps at once (few large ops), then runs the recurrence itself,
one or two fused multiply-adds per timestep.

On the CPU these loops are bound by the fixed cost of each PyTorch call (about 1 to 3 us, as
much as the arithmetic on a (16, 1024) slice) and by memory that other work has evicted from
the cache, so the LIF path counts both: three ops a timestep forward, three and a half backward,
per-timestep views made once (``unbind``) rather than by indexing in the loop, and no fresh
buffer for the input gradient (see ``rnnbuilder.snn.fused``).
"""

from __future__ import annotations

import functools
import math

import torch

from .. import surrogate as S
from ..surrogate import Surrogate
from .blocks import block

__all__ = [
    "CHUNK_ELEMENTS",
    "lif_forward",
    "lif_backward",
    "adaptive_forward",
    "adaptive_backward",
    "cooldown_forward",
    "cooldown_backward",
]

CHUNK_ELEMENTS = 1 << 15
"""The torch backward evaluates the surrogate for this many elements (timesteps x neurons) at once,
at least one timestep. 32768 is PyTorch's intra-op grain size: each op stays on one thread, which
measured faster and far steadier than splitting it on a busy 2-core machine, and fits in L2."""


# ------------------------------------------------------------------------------------------------
# LIF / NoReset
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def lif_forward(xs, v0, beta, reset, store):
    steps = xs.shape[0]
    # u is the spikes' buffer when not storing
    spikes, u = block(xs, steps, steps) if store else block(xs, steps) * 2
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


# ------------------------------------------------------------------------------------------------
# Adaptive
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def adaptive_forward(xs, v0, a0, beta, beta_thr, gamma, store):
    steps = xs.shape[0]
    # The states before each step (and the final one) when storing, else two alternating slots.
    if store:
        spikes, vs, as_ = block(xs, steps, steps + 1, steps + 1)
    else:
        (spikes,), (vs, as_) = block(xs, steps), block(xs, 2, 2)
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


# ------------------------------------------------------------------------------------------------
# Cooldown
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def cooldown_forward(xs, v0, beta, sign, store):
    steps = xs.shape[0]
    one_minus_beta, beta = _scalar(1 - beta, xs), _scalar(beta, xs)
    # The membrane doesn't depend on the spikes: the trajectory first, then spikes in one go.
    vs, w, spikes = block(xs, steps + 1, steps, steps)
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
    return torch.tensor(value, dtype=dtype, device="cpu")  # CPU even under a default-device context (meta planning)


def _chunk(reference: torch.Tensor) -> int:
    per_step = max(1, reference[0].numel())
    return max(1, min(reference.shape[0], CHUNK_ELEMENTS // per_step))
