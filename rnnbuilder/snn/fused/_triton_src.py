# ruff: noqa: SIM108  (if/else on constexpr flags reads better in kernels than ternaries)
"""Triton kernels of the fused neurons (the source; ``triton_impl`` loads and launches them).

Layout: every (time, batch, n) tensor is contiguous and seen as (T, M) with M = batch * n. Each
program owns BLOCK neurons (a block of M) and loops over all T timesteps, keeping the state in
registers; the backward kernels walk time in reverse. Forward arithmetic repeats the reference
step's float32 operations in the same order (the launcher turns off FMA contraction and division
is IEEE-rounded), so spikes and states are bit-identical to ``functional.unroll``.

This module imports without Triton (it then defines nothing), so that doctest collection and
CPU-only installs don't need it. ``triton_impl`` executes a copy of it once per mode (compiled,
or interpreted under ``TRITON_INTERPRET=1``), because ``triton.jit`` picks the mode when it runs.
"""

try:  # pragma: no cover - exercised only where triton is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

_KERNELS = ["lif_fwd", "lif_bwd", "adaptive_fwd", "adaptive_bwd", "cooldown_fwd", "cooldown_bwd"]
__all__ = _KERNELS if triton is not None else []  # the kernels, where Triton is installed

if triton is not None:
    # Surrogate codes, shared with triton_impl.surrogate_code.
    SPIKE_LINEAR, FAST_SIGMOID, ATAN, TRIANGULAR, SIGMOID, STRAIGHT_THROUGH = 0, 1, 2, 3, 4, 5

    @triton.jit
    def _surrogate_grad(z, SURR: tl.constexpr, p):
        """dH/dz of the built-in surrogates; ``p`` is the surrogate's one parameter."""
        if SURR == 0:  # SpikeLinear: p * max(0, 1 - |z|)
            g = p * tl.maximum(1.0 - tl.abs(z), 0.0)
        elif SURR == 1:  # FastSigmoid: 1 / (p |z| + 1)^2
            d = p * tl.abs(z) + 1.0
            g = 1.0 / (d * d)
        elif SURR == 2:  # ATan: (p / 2) / (1 + (pi / 2 * p * z)^2)
            k = 1.5707963267948966 * p * z
            g = (p * 0.5) / (1.0 + k * k)
        elif SURR == 3:  # Triangular: max(0, p - |z|) / p^2
            g = tl.maximum(p - tl.abs(z), 0.0) / (p * p)
        elif SURR == 4:  # Sigmoid: p s (1 - s), s = sigmoid(p z) = p e / (1 + e)^2, e = exp(-|p z|)
            e = tl.exp(-tl.abs(p * z))
            g = p * e / ((1.0 + e) * (1.0 + e))
        else:  # StraightThrough
            g = tl.full(z.shape, 1.0, tl.float32)
        return g

    @triton.jit(do_not_specialize=["T"])
    def lif_fwd(
        x_ptr, v0_ptr, s_ptr, u_ptr, vT_ptr, M, T, beta,
        RESET: tl.constexpr, STORE: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        x_p, s_p, u_p = x_ptr + offs, s_ptr + offs, u_ptr + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            x = tl.load(x_p, mask=mask, other=0.0)
            u = beta * v + x
            s = tl.where(u - 1.0 > 0.0, 1.0, 0.0)
            tl.store(s_p, s, mask=mask)
            if STORE:
                tl.store(u_p, u, mask=mask)
                u_p += M
            if RESET:
                v = u - s
            else:
                v = u
            x_p += M
            s_p += M
        tl.store(vT_ptr + offs, v, mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def lif_bwd(
        u_ptr, gs_ptr, gvT_ptr, gx_ptr, gv0_ptr, M, T, beta, sp,
        RESET: tl.constexpr, HAS_GS: tl.constexpr, HAS_GV: tl.constexpr, SURR: tl.constexpr,
        BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        if HAS_GV:
            gv = tl.load(gvT_ptr + offs, mask=mask, other=0.0)
        else:
            gv = tl.full([BLOCK], 0.0, tl.float32)
        last = (T - 1).to(tl.int64) * M
        u_p, gs_p, gx_p = u_ptr + last + offs, gs_ptr + last + offs, gx_ptr + last + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            u = tl.load(u_p, mask=mask, other=0.0)
            g = _surrogate_grad(u - 1.0, SURR, sp)
            if HAS_GS:
                gs = tl.load(gs_p, mask=mask, other=0.0)
            else:
                gs = tl.full([BLOCK], 0.0, tl.float32)
            if RESET:  # dL/du = gv (1 - g) + gs g
                gu = gv + (gs - gv) * g
            else:
                gu = gv + gs * g
            tl.store(gx_p, gu, mask=mask)
            gv = beta * gu
            u_p -= M
            gs_p -= M
            gx_p -= M
        tl.store(gv0_ptr + offs, gv, mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def adaptive_fwd(
        x_ptr, v0_ptr, a0_ptr, s_ptr, vs_ptr, as_ptr, vT_ptr, aT_ptr, M, T, beta, beta_thr, gamma,
        STORE: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        a = tl.load(a0_ptr + offs, mask=mask, other=0.0)
        x_p, s_p, vs_p, as_p = x_ptr + offs, s_ptr + offs, vs_ptr + offs, as_ptr + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            x = tl.load(x_p, mask=mask, other=0.0)
            if STORE:  # the state before the step
                tl.store(vs_p, v, mask=mask)
                tl.store(as_p, a, mask=mask)
                vs_p += M
                as_p += M
            theta = a + 1.0
            s = tl.where(tl.math.div_rn(v - theta, theta) > 0.0, 1.0, 0.0)
            tl.store(s_p, s, mask=mask)
            v = (beta * v + x) - s * theta
            a = beta_thr * a + gamma * s
            x_p += M
            s_p += M
        tl.store(vT_ptr + offs, v, mask=mask)
        tl.store(aT_ptr + offs, a, mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def adaptive_bwd(
        vs_ptr, as_ptr, gs_ptr, gvT_ptr, gaT_ptr, gx_ptr, gv0_ptr, ga0_ptr, M, T, beta, beta_thr, gamma, sp,
        HAS_GS: tl.constexpr, HAS_GV: tl.constexpr, HAS_GA: tl.constexpr, SURR: tl.constexpr,
        BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        if HAS_GV:
            gv = tl.load(gvT_ptr + offs, mask=mask, other=0.0)
        else:
            gv = tl.full([BLOCK], 0.0, tl.float32)
        if HAS_GA:
            ga = tl.load(gaT_ptr + offs, mask=mask, other=0.0)
        else:
            ga = tl.full([BLOCK], 0.0, tl.float32)
        last = (T - 1).to(tl.int64) * M
        vs_p, as_p = vs_ptr + last + offs, as_ptr + last + offs
        gs_p, gx_p = gs_ptr + last + offs, gx_ptr + last + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            v = tl.load(vs_p, mask=mask, other=0.0)
            a = tl.load(as_p, mask=mask, other=0.0)
            theta = a + 1.0
            z = tl.math.div_rn(v - theta, theta)
            s = tl.where(z > 0.0, 1.0, 0.0)
            g = _surrogate_grad(z, SURR, sp)
            if HAS_GS:
                gs = tl.load(gs_p, mask=mask, other=0.0)
            else:
                gs = tl.full([BLOCK], 0.0, tl.float32)
            tl.store(gx_p, gv, mask=mask)  # dL/dx = dL/dv after the step
            dz = g * (gs - theta * gv + gamma * ga)
            r = 1.0 / theta
            gv_new = beta * gv + dz * r
            ga = beta_thr * ga - s * gv - dz * v * r * r
            gv = gv_new
            vs_p -= M
            as_p -= M
            gs_p -= M
            gx_p -= M
        tl.store(gv0_ptr + offs, gv, mask=mask)
        tl.store(ga0_ptr + offs, ga, mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def cooldown_fwd(
        w_ptr, v0_ptr, sign_ptr, s_ptr, vs_ptr, vT_ptr, M, N, T, beta,
        STORE: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        sign = tl.load(sign_ptr + offs % N, mask=mask, other=1.0)
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        w_p, s_p, vs_p = w_ptr + offs, s_ptr + offs, vs_ptr + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            w = tl.load(w_p, mask=mask, other=0.0)  # (1 - beta) * exp(x), from torch
            if STORE:
                tl.store(vs_p, v, mask=mask)
                vs_p += M
            s = tl.where(sign * (v - 1.0) > 0.0, 1.0, 0.0)
            tl.store(s_p, s, mask=mask)
            v = beta * v + w
            w_p += M
            s_p += M
        tl.store(vT_ptr + offs, v, mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def cooldown_bwd(
        vs_ptr, w_ptr, sign_ptr, gs_ptr, gvT_ptr, gx_ptr, gv0_ptr, M, N, T, beta, sp,
        HAS_GS: tl.constexpr, HAS_GV: tl.constexpr, SURR: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        sign = tl.load(sign_ptr + offs % N, mask=mask, other=1.0)
        if HAS_GV:
            gv = tl.load(gvT_ptr + offs, mask=mask, other=0.0)
        else:
            gv = tl.full([BLOCK], 0.0, tl.float32)
        last = (T - 1).to(tl.int64) * M
        vs_p, w_p, gs_p, gx_p = vs_ptr + last + offs, w_ptr + last + offs, gs_ptr + last + offs, gx_ptr + last + offs
        for _ in tl.range(0, T, num_stages=STAGES):
            w = tl.load(w_p, mask=mask, other=0.0)
            tl.store(gx_p, gv * w, mask=mask)
            if HAS_GS:
                v = tl.load(vs_p, mask=mask, other=0.0)
                gs = tl.load(gs_p, mask=mask, other=0.0)
                g = _surrogate_grad(sign * (v - 1.0), SURR, sp)
                gv = beta * gv + gs * g * sign
            else:
                gv = beta * gv
            vs_p -= M
            w_p -= M
            gs_p -= M
            gx_p -= M
        tl.store(gv0_ptr + offs, gv, mask=mask)
