"""The forward-Euler neurons of NIR (``rnnbuilder.snn.nir_functional``): their operations, shared
by the step functions and the fused sequences, and the fused sequences' autograd function.

Every operation of a step is one of the functions below, so the step loop and the fused forward
apply the same PyTorch operations in the same order: bit-identical spikes and states. The fused
forward passes ``out`` buffers, where the step loop gets fresh tensors: an op writing into a buffer
computes the same values. The input terms (``input_current``, and ``drive`` without a synapse)
don't depend on the state, so the fused forward evaluates them for all timesteps in one op each;
the loop then writes every step into one preallocated block (``blocks.block``: outputs and the
pre-reset membranes, which the backward of spiking neurons keeps). The backward evaluates the
surrogate and the per-element coefficients of the reverse recurrence for a chunk of timesteps at
once and leaves one multiply-add a timestep in a spiking membrane's sequential part (an
integrator's membrane and the synapse: a product and a sum, as the step loop's autograd). The
coefficients (decay, leak, gain, ...) are constants: no gradient reaches them. The ``"triton"``
backend runs these on the torch path.

Shapes: ``xs`` (time, batch, n); states (batch, n); coefficients (n,) or scalars. The fused loop
needs the coefficient tensors and the states in the input's dtype (``nir_functional`` runs other
combinations through the step loop, whose type promotion differs op by op).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .blocks import block
from .torch_impl import _Buffers, _chunk, _saved_tensors_are_freed, _scalar, _surrogate_gradient

__all__ = ["input_current", "synapse", "drive", "charge", "fire", "reset", "euler"]


def input_current(x: torch.Tensor, syn_gain, out=None) -> torch.Tensor:
    """The synapse's input term ``syn_gain * x``."""
    return torch.mul(x, syn_gain, out=out)


def synapse(i: torch.Tensor, w: torch.Tensor, syn_decay, out=None) -> torch.Tensor:
    """The synaptic current after one step, from input term ``w`` (not ``out``): ``syn_decay * i + w``."""
    return torch.add(torch.mul(i, syn_decay, out=out), w, out=out)


def drive(x: torch.Tensor, leak, gain, out=None) -> torch.Tensor:
    """The membrane's input term ``leak + gain * x``."""
    return torch.add(torch.mul(x, gain, out=out), leak, out=out)


def charge(v: torch.Tensor, d: torch.Tensor, decay, out=None) -> torch.Tensor:
    """The membrane after one step, before any reset, from input term ``d`` (may be ``out``): ``decay * v + d``."""
    return torch.add(torch.mul(v, decay), d, out=out)


def fire(u: torch.Tensor, v_threshold, spike_fn, out=None) -> torch.Tensor:
    """The spikes of membrane ``u``: ``spike_fn(u - v_threshold)``, 1 where ``u > v_threshold``.

    ``out``: the spikes' buffer, for a ``Surrogate`` without autograd (the fused forward), whose
    call is then ``heaviside``: 1 where ``u - v_threshold > 0``, written as a comparison."""
    if out is None:
        return spike_fn(u - v_threshold)
    return torch.gt(torch.sub(u, v_threshold, out=out), _scalar(0.0, u), out=out)


def reset(u: torch.Tensor, s: torch.Tensor, v_reset, out=None) -> torch.Tensor:
    """``u`` set to ``v_reset`` where it spiked: ``(1 - s) * u + s * v_reset`` (exactly ``v_reset``
    there and ``u`` elsewhere, as both products are exact; the gradient flows through ``s`` too).
    One multiply-add: the product ``(1 - s) * u`` is exact, so it rounds once, fused or not.
    ``out`` is neither ``u`` nor ``s``. (The constants are cached 0-dim tensors, which compute as
    the numbers do, without a new scalar tensor a call: see ``torch_impl._scalar``.)"""
    return torch.addcmul(torch.mul(s, v_reset, out=out), torch.rsub(s, _scalar(1.0, s)), u, out=out)


def euler(
    xs: torch.Tensor,
    v0: torch.Tensor,
    i0: torch.Tensor | None,
    synaptic: tuple | None,
    membrane: tuple,
    firing: tuple | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A forward-Euler neuron over xs (T, B, n) from membrane v0 and current i0 (B, n; ``None``
    without a synapse) -> (output (T, B, n), final v, final i or ``None``).

    ``synaptic`` is ``(syn_decay, syn_gain)`` for a current-based neuron, else ``None``;
    ``membrane`` is ``(decay, leak, gain)``; ``firing`` is ``(v_threshold, v_reset, surrogate)``
    for a spiking neuron, whose output is its spikes, else ``None``: the output is the membrane.
    """
    v0 = v0.expand(xs.shape[1:])
    i0 = None if i0 is None else i0.expand(xs.shape[1:])
    if xs.shape[0] == 0:
        return xs.new_empty(xs.shape), v0, i0
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xs, v0, i0)):
        return _Euler.apply(xs, v0, i0, synaptic, membrane, firing)
    out, v, i, _ = _forward(xs, v0, i0, synaptic, membrane, firing, store=False)
    return out, v, i


@torch.no_grad()
def _forward(xs, v, i, synaptic, membrane, firing, store: bool):
    """The loop: (output, final v, final i, pre-reset membranes (T, B, n) if ``store`` and spiking)."""
    steps = xs.shape[0]
    synaptic, membrane, firing = (_tensors(c, xs) for c in (synaptic, membrane, firing))
    decay, leak, gain = membrane
    # The input terms go into the output's slots, each read before that step's output replaces it;
    # a spiking neuron's membranes into their own block (``store``) or one reused buffer.
    if store and firing is not None:
        out, us = block(xs, steps, steps)
        u_t = us.unbind(0)
    else:
        (out,), us = block(xs, steps), None
        u_t = out.unbind(0) if firing is None else (torch.empty_like(out[0]),) * steps
    out_t = out.unbind(0)
    if synaptic is None:
        drive(xs, leak, gain, out=out)
    else:
        syn_decay, syn_gain = synaptic
        input_current(xs, syn_gain, out=out)
        current, d = torch.empty_like(out_t[0]), torch.empty_like(out_t[0])
    if firing is not None:
        v_threshold, v_reset, surrogate = firing
        membrane_v = torch.empty_like(out_t[0])
    for t in range(steps):
        if synaptic is None:
            d = out_t[t]
        else:
            i = synapse(i, out_t[t], syn_decay, out=current)
            drive(i, leak, gain, out=d)
        u = charge(v, d, decay, out=u_t[t])
        if firing is None:
            v = u
            continue
        s = fire(u, v_threshold, surrogate, out=out_t[t])
        v = reset(u, s, v_reset, out=membrane_v)
    return out, v.clone() if firing is None else v, i, us


def _tensors(coefficients: tuple | None, like: torch.Tensor) -> tuple | None:
    """``coefficients`` with each number as a cached 0-dim tensor (same values, see ``_scalar``)."""
    if coefficients is None:
        return None
    return tuple(
        _scalar(c, like) if isinstance(c, (int, float)) and not isinstance(c, bool) else c for c in coefficients
    )


class _Euler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, v0, i0, synaptic, membrane, firing):
        out, v, i, us = _forward(xs, v0, i0, synaptic, membrane, firing, store=True)
        ctx.save_for_backward(us)
        ctx.args = (xs.shape, xs.dtype, xs.device, synaptic, membrane, firing)
        ctx.set_materialize_grads(False)
        return out, v, i

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_v, grad_i):
        shape, dtype, device, synaptic, membrane, firing = ctx.args
        (us,) = ctx.saved_tensors
        return _backward(us, grad_out, grad_v, grad_i, shape, dtype, device, synaptic, membrane, firing)


@torch.no_grad()
def _backward(us, grad_out, grad_v, grad_i, shape, dtype, device, synaptic, membrane, firing):
    # G_t = dL/du_t (the pre-reset membrane), with g_t = surrogate'(u_t - v_threshold), s_t its spike:
    #   G_t = c_t gv_t + d_t, c_t = (1 - s_t) + (v_reset - u_t) g_t, d_t = g_t dL/ds_t
    #   (integrators: c_t = 1, d_t = dL/dout_t), gv_t = dL/dv_t after step t: decay G_{t+1}, or grad_v.
    # So G_t = (decay c_t) G_{t+1} + d_t, one multiply-add a step, c and d for a chunk at once.
    # With a synapse, H_t = dL/di_t = syn_decay H_{t+1} + gain G_t (grad_i at the end);
    # dL/dx_t = syn_gain H_t, or gain G_t without one.
    decay, _, gain = (torch.as_tensor(c, dtype=dtype, device=device) for c in membrane)
    # G_t goes into u_t's slot when autograd frees it after this call (in cache, see torch_impl).
    gx = us if us is not None and _saved_tensors_are_freed() else torch.empty(shape, dtype=dtype, device=device)
    g_t = gx.unbind(0)
    steps = shape[0]
    prev = grad_v if grad_v is not None else torch.zeros(shape[1:], dtype=dtype, device=device)
    if firing is None:
        # G_{T-1} = grad_v + dL/dout_{T-1}; G_t = decay G_{t+1} + dL/dout_t, a product and a sum
        # as the step loop's autograd computes them: the same gradient.
        for t in range(steps - 1, -1, -1):
            prev = torch.mul(prev, decay, out=g_t[t]) if t < steps - 1 else g_t[t].copy_(prev)
            if grad_out is not None:
                prev.add_(grad_out[t])
    else:
        v_threshold, v_reset, surrogate = firing
        chunk = _chunk(us)
        work = _Buffers(us, chunk)
        for stop in range(steps, 0, -chunk):
            start = max(0, stop - chunk)
            n = stop - start
            u = us[start:stop]
            z = torch.sub(u, v_threshold, out=work.get("z", n))
            c = torch.le(z, _scalar(0.0, z), out=work.get("c", n))  # 1 - s (the gradient is NaN anyway where z is)
            g = _surrogate_gradient(z, surrogate, work)
            c.sub_(torch.sub(u, v_reset, out=work.get("r", n)).mul_(g))  # + (v_reset - u) g
            if stop == steps:
                c[:-1].mul_(decay)
            else:
                c.mul_(decay)
            c_t = c.unbind(0)
            if grad_out is not None:
                d_t = torch.mul(g, grad_out[start:stop], out=work.get("d", n)).unbind(0)
                for k in range(n - 1, -1, -1):
                    prev = torch.addcmul(d_t[k], c_t[k], prev, out=g_t[start + k])
            else:
                for k in range(n - 1, -1, -1):
                    prev = torch.mul(c_t[k], prev, out=g_t[start + k])
    gv0 = decay * prev
    if synaptic is None:
        return gx.mul_(gain), gv0, None, None, None, None
    syn_decay, syn_gain = (torch.as_tensor(c, dtype=dtype, device=device) for c in synaptic)
    gx.mul_(gain)
    if grad_i is not None:
        g_t[-1].add_(grad_i)
    decayed = torch.empty_like(g_t[0])
    for t in range(steps - 2, -1, -1):
        g_t[t].add_(torch.mul(g_t[t + 1], syn_decay, out=decayed))
    gi0 = syn_decay * g_t[0]
    return gx.mul_(syn_gain), gv0, gi0, None, None, None
