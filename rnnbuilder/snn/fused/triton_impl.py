"""The Triton implementation of the fused neurons: launchers of the kernels in ``_triton_src``, with
the functions of ``torch_impl``: ``*_forward(..., store)`` and ``*_backward(saved, grads, ...)``.

One launch runs all T timesteps forward; one launch runs them backward. The kernels take float32
contiguous tensors. On CUDA tensors they are compiled (or interpreted if ``TRITON_INTERPRET=1`` is
set); on CPU tensors they always run in Triton's interpreter, which is how the tests check them
without a GPU. Importing this module doesn't import Triton; the first launch does.

Memory traffic per element of the (T, batch, n) input, float32 (``kernel_bytes``): LIF forward
reads x and writes spikes and u (12 bytes; 8 without gradient), LIF backward reads u and the
spikes' gradient and writes the input's gradient (12 bytes).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch

from .. import surrogate as S

__all__ = [
    "surrogate_code",
    "lif_forward",
    "lif_backward",
    "adaptive_forward",
    "adaptive_backward",
    "cooldown_forward",
    "cooldown_backward",
    "kernel_bytes",
]

_SURROGATES = {
    S.SpikeLinear: (0, "gradient_factor"),
    S.FastSigmoid: (1, "slope"),
    S.ATan: (2, "alpha"),
    S.Triangular: (3, "width"),
    S.Sigmoid: (4, "slope"),
    S.StraightThrough: (5, None),
}

INTERPRET_BLOCK = 128
"""Neurons per program in the interpreter (tests lower it to exercise several programs and a ragged last block)."""
STAGES = 3
"""Software-pipelining depth of the time loop on the GPU (``tl.range(num_stages=...)``)."""


def surrogate_code(surrogate) -> tuple[int, float] | None:
    """(kernel code, parameter) of a built-in surrogate; ``None`` for others (they use the torch backend)."""
    entry = _SURROGATES.get(type(surrogate))
    if entry is None:
        return None
    code, field = entry
    return code, float(getattr(surrogate, field)) if field else 0.0


_LOADED: dict[bool, object] = {}
_LOCK = threading.Lock()


def _kernels(interpret: bool):
    """The kernel module, compiled or interpreted; ``triton.jit`` decides when it runs, so each mode
    gets its own copy of ``_triton_src`` executed with ``TRITON_INTERPRET`` set accordingly."""
    with _LOCK:
        if interpret not in _LOADED:
            name = f"{__package__}._triton_src_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_triton_src.py"))
            module = importlib.util.module_from_spec(spec)
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
            try:
                spec.loader.exec_module(module)
            finally:
                if old is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = old
            if getattr(module, "triton", None) is None:
                raise RuntimeError("triton is not installed (pip install 'rnnbuilder-sim[kernels]')")
            _LOADED[interpret] = module
        return _LOADED[interpret]


def _interpret(device: torch.device) -> bool:
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _launch(kernel_name: str, device: torch.device, m: int, *args, **constexprs) -> None:
    interpret = _interpret(device)
    kernel = getattr(_kernels(interpret), kernel_name)
    block, warps = _config(m, device, interpret)
    grid = (max(1, -(-m // block)),)
    options = {"BLOCK": block, "STAGES": 1 if interpret else STAGES, "num_warps": warps, "enable_fp_fusion": False}
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **constexprs, **options)
    else:
        kernel[grid](*args, **constexprs, **options)


def _config(m: int, device: torch.device, interpret: bool) -> tuple[int, int]:
    """(BLOCK, num_warps): 8 neurons a thread, and blocks small enough to give every SM a few programs."""
    if interpret:
        return INTERPRET_BLOCK, 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    block = 1024
    while block > 128 and -(-m // block) < 4 * sms:
        block //= 2
    return block, max(1, block // 256)


def _f32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.float32:
        raise TypeError(f"the Triton neuron kernels take float32 tensors, got {t.dtype}")
    return t.contiguous()


def _grad(g: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A contiguous float32 gradient, or a placeholder (never read) and False when there is none."""
    if g is None:
        return like, False
    return g.to(torch.float32).contiguous(), True


def _spikes_like(xs: torch.Tensor) -> torch.Tensor:
    return torch.empty(xs.shape, dtype=xs.dtype, device=xs.device)


# ------------------------------------------------------------------------------------------------
# LIF / NoReset
# ------------------------------------------------------------------------------------------------


def lif_forward(xs, v0, beta, reset, store):
    """-> (spikes (T, B, n), final v (B, n), saved tensors for ``lif_backward``)."""
    xs, v0 = _f32(xs), _f32(v0)
    steps, m = xs.shape[0], xs[0].numel()
    spikes = _spikes_like(xs)
    u = torch.empty_like(spikes) if store else spikes  # never written when not storing
    v = torch.empty_like(v0)
    _launch("lif_fwd", xs.device, m, xs, v0, spikes, u, v, m, steps, beta, RESET=reset, STORE=store)
    return spikes, v, (u,) if store else ()


def lif_backward(saved, grad_spikes, grad_v, beta, reset, surrogate):
    """-> (dL/dxs, dL/dv0)."""
    (u,) = saved
    steps, m = u.shape[0], u[0].numel()
    code, param = surrogate_code(surrogate)
    gs, has_gs = _grad(grad_spikes, u)
    gv, has_gv = _grad(grad_v, u)
    gx = torch.empty_like(u)
    gv0 = torch.empty(u.shape[1:], dtype=u.dtype, device=u.device)
    _launch(
        "lif_bwd", u.device, m, u, gs, gv, gx, gv0, m, steps, beta, param,
        RESET=reset, HAS_GS=has_gs, HAS_GV=has_gv, SURR=code,
    )  # fmt: skip
    return gx, gv0


# ------------------------------------------------------------------------------------------------
# Adaptive
# ------------------------------------------------------------------------------------------------


def adaptive_forward(xs, v0, a0, beta, beta_thr, gamma, store):
    """-> (spikes, final v, final a, saved: the states before each step)."""
    xs, v0, a0 = _f32(xs), _f32(v0), _f32(a0)
    steps, m = xs.shape[0], xs[0].numel()
    spikes = _spikes_like(xs)
    vs = torch.empty_like(spikes) if store else spikes
    as_ = torch.empty_like(spikes) if store else spikes
    v, a = torch.empty_like(v0), torch.empty_like(a0)
    _launch(
        "adaptive_fwd", xs.device, m, xs, v0, a0, spikes, vs, as_, v, a, m, steps, beta, beta_thr, gamma,
        STORE=store,
    )  # fmt: skip
    return spikes, v, a, (vs, as_) if store else ()


def adaptive_backward(saved, grad_spikes, grad_v, grad_a, beta, beta_thr, gamma, surrogate):
    """-> (dL/dxs, dL/dv0, dL/da0)."""
    vs, as_ = saved
    steps, m = vs.shape[0], vs[0].numel()
    code, param = surrogate_code(surrogate)
    gs, has_gs = _grad(grad_spikes, vs)
    gv, has_gv = _grad(grad_v, vs)
    ga, has_ga = _grad(grad_a, vs)
    gx = torch.empty_like(vs)
    gv0 = torch.empty(vs.shape[1:], dtype=vs.dtype, device=vs.device)
    ga0 = torch.empty_like(gv0)
    _launch(
        "adaptive_bwd", vs.device, m, vs, as_, gs, gv, ga, gx, gv0, ga0, m, steps, beta, beta_thr, gamma, param,
        HAS_GS=has_gs, HAS_GV=has_gv, HAS_GA=has_ga, SURR=code,
    )  # fmt: skip
    return gx, gv0, ga0


# ------------------------------------------------------------------------------------------------
# Cooldown
# ------------------------------------------------------------------------------------------------


def _input_term(xs: torch.Tensor, one_minus_beta: float) -> torch.Tensor:
    """(1 - beta) * exp(x) by torch, as the reference step computes it: on CUDA in one op (the
    elementwise exp doesn't depend on the tensor's extent), on CPU slice by slice like the loop."""
    w = torch.empty_like(xs)
    if xs.is_cuda:
        torch.exp(xs, out=w)
        w.mul_(one_minus_beta)
    else:
        for x_t, w_t in zip(xs.unbind(0), w.unbind(0)):
            torch.exp(x_t, out=w_t)
            w_t.mul_(one_minus_beta)
    return w


def cooldown_forward(xs, v0, beta, sign, store):
    """-> (spikes, final v, saved: the membrane before each step and (1 - beta) exp(x))."""
    xs, v0, sign = _f32(xs), _f32(v0), _f32(sign)
    steps, m, n = xs.shape[0], xs[0].numel(), xs.shape[-1]
    w = _input_term(xs, 1 - beta)
    spikes = _spikes_like(xs)
    vs = torch.empty_like(spikes) if store else spikes
    v = torch.empty_like(v0)
    _launch("cooldown_fwd", xs.device, m, w, v0, sign, spikes, vs, v, m, n, steps, beta, STORE=store)
    return spikes, v, (vs, w) if store else ()


def cooldown_backward(saved, grad_spikes, grad_v, beta, sign, surrogate):
    """-> (dL/dxs, dL/dv0)."""
    vs, w = saved
    steps, m, n = vs.shape[0], vs[0].numel(), vs.shape[-1]
    code, param = surrogate_code(surrogate)
    gs, has_gs = _grad(grad_spikes, vs)
    gv, has_gv = _grad(grad_v, vs)
    gx = torch.empty_like(vs)
    gv0 = torch.empty(vs.shape[1:], dtype=vs.dtype, device=vs.device)
    _launch(
        "cooldown_bwd", vs.device, m, vs, w, _f32(sign), gs, gv, gx, gv0, m, n, steps, beta, param,
        HAS_GS=has_gs, HAS_GV=has_gv, SURR=code,
    )  # fmt: skip
    return gx, gv0


def kernel_bytes(kind: str, steps: int, m: int, store: bool = True) -> int:
    """Bytes a kernel reads plus writes for ``steps`` x ``m`` float32 elements (initial and final
    states included): ``kind`` is ``"lif_fwd"`` or ``"lif_bwd"``."""
    per_step = {"lif_fwd": 3 if store else 2, "lif_bwd": 3}[kind]
    return 4 * (per_step * steps * m + 2 * m)
