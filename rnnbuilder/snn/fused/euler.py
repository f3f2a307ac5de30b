"""The forward-Euler neurons of NIR (``rnnbuilder.snn.nir_functional``): their operations, shared
by the step functions and the fused sequences, and the fused sequences' autograd function.

Every operation of a step is one of the functions below, so the step loop and the fused forward
apply the same PyTorch operations in the same order: bit-identical spikes and states. The fused
forward runs the loop without an autograd graph and keeps the pre-reset membrane of every timestep
(spiking neurons only: the integrators' backward needs nothing); the backward is a reverse-time loop
that evaluates the surrogate for all timesteps at once. The coefficients (decay, leak, gain, ...)
are constants: no gradient reaches them. The ``"triton"`` backend runs these on the torch path.

Shapes: ``xs`` (time, batch, n); states (batch, n); coefficients (n,) or scalars.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..surrogate import heaviside

__all__ = ["synapse", "charge", "fire", "reset", "euler"]


def synapse(i: torch.Tensor, x: torch.Tensor, syn_decay, syn_gain) -> torch.Tensor:
    """The synaptic current after one step: ``syn_decay * i + syn_gain * x``."""
    return syn_decay * i + syn_gain * x


def charge(v: torch.Tensor, drive: torch.Tensor, decay, leak, gain) -> torch.Tensor:
    """The membrane after one step, before any reset: ``decay * v + (leak + gain * drive)``."""
    return decay * v + (leak + gain * drive)


def fire(u: torch.Tensor, v_threshold, spike_fn) -> torch.Tensor:
    """The spikes of membrane ``u``: ``spike_fn(u - v_threshold)``, 1 where ``u > v_threshold``."""
    return spike_fn(u - v_threshold)


def reset(u: torch.Tensor, s: torch.Tensor, v_reset) -> torch.Tensor:
    """``u`` set to ``v_reset`` where it spiked: ``(1 - s) * u + s * v_reset`` (exactly ``v_reset``
    there and ``u`` elsewhere, as both products are exact; the gradient flows through ``s`` too)."""
    return (1 - s) * u + s * v_reset


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
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xs, v0, i0)):
        return _Euler.apply(xs, v0, i0, synaptic, membrane, firing)
    out, v, i, _ = _forward(xs, v0, i0, synaptic, membrane, firing, store=False)
    return out, v, i


@torch.no_grad()
def _forward(xs, v, i, synaptic, membrane, firing, store: bool):
    """The loop: (output, final v, final i, pre-reset membranes (T, B, n) if ``store`` and spiking)."""
    outputs, saved = [], []
    for x in xs.unbind(0):
        if synaptic is not None:
            i = synapse(i, x, *synaptic)
            x = i
        u = charge(v, x, *membrane)
        if firing is None:
            v = u
            outputs.append(u)
            continue
        v_threshold, v_reset, surrogate = firing
        s = fire(u, v_threshold, surrogate)
        v = reset(u, s, v_reset)
        outputs.append(s)
        if store:
            saved.append(u)
    out = torch.stack(outputs) if outputs else xs.new_empty(xs.shape)
    return out, v, i, torch.stack(saved) if saved else None


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
        # Per step, with gv = dL/dv and gi = dL/di after it, g = surrogate'(u - v_threshold):
        #   dL/du = gv (1 - s) + (gv (v_reset - u) + dL/ds) g   (integrators: gv + dL/dout)
        #   dL/di_t = gi + gain dL/du;  dL/dx = syn_gain dL/di_t (or gain dL/du);  gv <- decay dL/du
        shape, dtype, device, synaptic, membrane, firing = ctx.args
        (us,) = ctx.saved_tensors
        decay, _, gain = membrane
        zeros = torch.zeros(shape[1:], dtype=dtype, device=device)
        gv = zeros if grad_v is None else grad_v
        gi = None if synaptic is None else zeros if grad_i is None else grad_i
        if firing is not None:
            v_threshold, v_reset, surrogate = firing
            z = us - v_threshold
            s, g = heaviside(z), surrogate.gradient(z)
        gx = torch.empty(shape, dtype=dtype, device=device)
        for t in range(shape[0] - 1, -1, -1):
            if firing is None:
                gu = gv if grad_out is None else gv + grad_out[t]
            else:
                to_spike = gv * (v_reset - us[t])
                if grad_out is not None:
                    to_spike = to_spike + grad_out[t]
                gu = gv * (1 - s[t]) + to_spike * g[t]
            if synaptic is None:
                gx[t] = gain * gu
            else:
                syn_decay, syn_gain = synaptic
                gi = gi + gain * gu
                gx[t] = syn_gain * gi
                gi = syn_decay * gi
            gv = decay * gu
        return gx, gv, gi, None, None, None
