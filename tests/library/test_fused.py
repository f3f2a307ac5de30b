"""Spec of the fused multi-step neurons (``rnnbuilder.snn.fused``, torch backend, on the CPU).

The fused whole-sequence path must give bit-identical spikes and final states to the reference
loop ``functional.unroll(step, ...)``, and the same gradients to float tolerance, for every
neuron and surrogate. The reference runs under ``fused.use_backend("reference")``.
"""

from __future__ import annotations

import threading

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn
from rnnbuilder.snn import functional as F
from rnnbuilder.snn import fused
from rnnbuilder.snn.fused import blocks, torch_impl

SURROGATES = [
    snn.SpikeLinear(),
    snn.FastSigmoid(),
    snn.ATan(),
    snn.Triangular(),
    snn.Sigmoid(),
    snn.StraightThrough(),
]


def neurons(spike_function=None):
    """The four stateful neurons with non-default parameters."""
    spike_function = spike_function or snn.SpikeLinear()
    return [
        snn.LIF(tau=4.0, spike_function=spike_function),
        snn.NoReset(tau=6.0, spike_function=spike_function),
        snn.Adaptive(tau=5.0, tau_thr=12.0, gamma=0.4, spike_function=spike_function),
        snn.Cooldown(tau=3.0, spike_function=spike_function),
    ]


def drive(factory, shape, seed=0, dtype=torch.float32):
    """Input that makes each neuron spike sometimes."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(factory, snn.Cooldown):
        return torch.randn(shape, generator=g).to(dtype)
    low, high = (-0.5, 0.7) if isinstance(factory, snn.NoReset) else (-0.2, 1.2)
    return (low + (high - low) * torch.rand(shape, generator=g)).to(dtype)


def run(model, xs, backend, weights=None, state_weight=1.5):
    """Spikes, final state and the gradients of a loss on both w.r.t. input and initial_v."""
    model.zero_grad()
    xs = xs.clone().requires_grad_(True)
    with fused.use_backend(backend):
        out, state = model(xs)
    if weights is None:
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    loss = (out * weights).sum() + sum(state_weight * (i + 1) * field.sum() for i, field in enumerate(state))
    loss.backward()
    v0 = [p for name, p in model.named_parameters() if name.endswith("initial_v")][0]
    return out.detach(), [f.detach() for f in state], xs.grad, v0.grad.clone()


def assert_matches_reference(model, xs, rtol=None, atol=None, **kw):
    ref = run(model, xs, "reference", **kw)
    got = run(model, xs, "auto", **kw)
    assert 0 < ref[0].sum() < ref[0].numel(), "the input should make the neurons spike sometimes"
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[2], ref[2], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[3], ref[3], rtol=rtol, atol=atol)


def grad_fn_name(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__


# --------------------------------------------------------------------------------------------
# Exactness against the reference loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", neurons(), ids=repr)
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 3, 11), (23, 2, 3, 5)], ids=str)
def test_fused_matches_reference_float32(factory, shape):
    """Float32: bit-identical spikes and final state, close input and initial_v gradients."""
    model = factory.make_model(shape[2:])
    xs = drive(factory, shape)
    if shape[0] == 1:  # a single step may not spike: only check equality there
        ref, got = run(model, xs, "reference"), run(model, xs, "auto")
        assert torch.equal(ref[0], got[0])
        torch.testing.assert_close(got[2], ref[2])
        return
    assert_matches_reference(model, xs)


@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_fused_gradients_match_reference_float64(factory):
    """Float64: gradients agree with autograd through the reference loop to 1e-12."""
    model = factory.make_model((13,)).double()
    assert_matches_reference(model, drive(factory, (40, 4, 13), seed=1, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
@pytest.mark.parametrize("kind", range(4), ids=["LIF", "NoReset", "Adaptive", "Cooldown"])
def test_every_surrogate_matches_reference(surrogate, kind):
    """All six built-in surrogates: exact spikes, gradients within float32 tolerance."""
    factory = neurons(surrogate)[kind]
    assert_matches_reference(factory.make_model((9,)), drive(factory, (30, 3, 9), seed=2))


@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_long_sequence_matches_reference(factory):
    """T = 1500: spikes and final state stay bit-identical over a long run."""
    model = factory.make_model((4,))
    xs = drive(factory, (1500, 2, 4), seed=3)
    with torch.no_grad():
        with fused.use_backend("reference"):
            ref, ref_state = model(xs)
        got, state = model(xs)
    assert torch.equal(got, ref)
    for a, b in zip(state, ref_state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_backward_chunks_do_not_change_gradients(factory, monkeypatch):
    """The backward evaluates the surrogate in chunks of timesteps; a ragged chunking gives the same result."""
    model = factory.make_model((5,))
    xs = drive(factory, (29, 2, 5), seed=4)
    whole = run(model, xs, "torch")
    monkeypatch.setattr(torch_impl, "CHUNK_ELEMENTS", 3 * 2 * 5)  # chunks of 3 steps, the last one of 2
    chunked = run(model, xs, "torch")
    assert torch.equal(whole[0], chunked[0])
    torch.testing.assert_close(chunked[2], whole[2])
    torch.testing.assert_close(chunked[3], whole[3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_reduced_precision_spikes_are_exact(factory, dtype):
    """float16/bfloat16 inputs: the torch backend still gives bit-identical spikes and states."""
    model = factory.make_model((6,)).to(dtype)
    xs = drive(factory, (25, 3, 6), seed=5, dtype=dtype)
    with torch.no_grad():
        with fused.use_backend("reference"):
            ref, ref_state = model(xs)
        got, state = model(xs)
    assert got.dtype == dtype
    assert torch.equal(got, ref)
    for a, b in zip(state, ref_state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_gradient_through_final_state_only(factory):
    """A loss on the final state alone (no gradient reaches the spikes) matches the reference."""
    model = factory.make_model((7,))
    xs = drive(factory, (20, 2, 7), seed=6)
    ref = run(model, xs, "reference", weights=torch.zeros(20, 2, 7))
    got = run(model, xs, "auto", weights=torch.zeros(20, 2, 7))
    torch.testing.assert_close(got[2], ref[2])
    torch.testing.assert_close(got[3], ref[3])


@pytest.mark.parametrize("factory", neurons(), ids=repr)
def test_gradient_through_spikes_only(factory):
    """A loss on the spikes alone (the final state unused) matches the reference."""
    model = factory.make_model((7,))
    xs = drive(factory, (20, 2, 7), seed=7)
    ref = run(model, xs, "reference", state_weight=0.0)
    got = run(model, xs, "auto", state_weight=0.0)
    torch.testing.assert_close(got[2], ref[2])
    torch.testing.assert_close(got[3], ref[3])


def test_custom_surrogate_uses_its_gradient():
    """A user-defined Surrogate subclass works on the fused path through its own gradient()."""

    class Box(snn.Surrogate):
        def gradient(self, v):
            return (v.abs() < 0.5).to(v.dtype) * 0.7

    model = snn.LIF(spike_function=Box()).make_model((8,))
    assert_matches_reference(model, drive(snn.LIF(), (25, 3, 8), seed=8))


def test_stacked_layers_and_chunked_state_match_reference():
    """Linear -> LIF -> Linear -> Adaptive, run as 30 + 20 steps, equals the reference end to end."""
    torch.manual_seed(0)
    model = rb.Sequential(nn.Linear(12), snn.LIF(), nn.Linear(6), snn.Adaptive()).make_model((5,))
    xs = 2 * torch.rand(50, 3, 5)
    with torch.no_grad():
        with fused.use_backend("reference"):
            ref, ref_state = model(xs)
        first, state = model(xs[:30])
        second, state = model(xs[30:], state)
    assert torch.equal(torch.cat([first, second]), ref)
    assert torch.equal(state[3].a, ref_state[3].a)


# --------------------------------------------------------------------------------------------
# The functional API
# --------------------------------------------------------------------------------------------


def test_sequence_functions_are_pure():
    """lif_sequence returns new tensors and leaves its input state untouched."""
    v = torch.rand(2, 3)
    state = F.LIFState(v)
    before, version = v.clone(), v._version
    spikes, new = F.lif_sequence(torch.rand(10, 2, 3), state, F.LIFParameters(0.8, snn.SpikeLinear()))
    assert isinstance(new, F.LIFState) and spikes.shape == (10, 2, 3)
    assert torch.equal(v, before) and v._version == version
    assert new.v is not v


def test_sequence_function_equals_unroll():
    """adaptive_sequence(xs, state, p) is unroll(adaptive_step, xs, state, p), bit for bit."""
    xs = 1.5 * torch.rand(40, 2, 6)
    state = F.AdaptiveState(torch.rand(2, 6), torch.zeros(2, 6))
    p = F.AdaptiveParameters(0.8, 0.9, 0.3, snn.ATan())
    spikes, final = F.adaptive_sequence(xs, state, p)
    ref, ref_final = F.unroll(F.adaptive_step, xs, state, p)
    assert torch.equal(spikes, ref)
    assert torch.equal(final.v, ref_final.v) and torch.equal(final.a, ref_final.a)


def test_empty_sequence_returns_the_state():
    """Zero timesteps give an empty spike tensor and the initial state back."""
    state = F.LIFState(torch.rand(2, 3))
    spikes, final = F.lif_sequence(torch.rand(0, 2, 3), state, F.LIFParameters(0.8, snn.SpikeLinear()))
    assert spikes.shape == (0, 2, 3)
    assert torch.equal(final.v, state.v)


def test_no_grad_builds_no_graph():
    """Under torch.no_grad the fused path gives the same spikes and records nothing for autograd."""
    model = snn.LIF().make_model((6,))
    xs = drive(snn.LIF(), (20, 2, 6))
    with torch.no_grad():
        out, state = model(xs)
    assert out.grad_fn is None and state.v.grad_fn is None
    assert torch.equal(out, model(xs)[0].detach())


def test_backward_keeps_one_value_per_element_for_lif():
    """LIF's backward keeps only the pre-spike membrane: 4 bytes per float32 input element."""
    xs = torch.rand(50, 4, 32, requires_grad=True)
    v0 = torch.zeros(4, 32, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spikes, _ = F.lif_sequence(xs, F.LIFState(v0), F.LIFParameters(0.8, snn.SpikeLinear()))
    assert sum(t.numel() * t.element_size() for t in saved) == 4 * xs.numel()
    spikes.sum().backward()
    assert xs.grad.shape == xs.shape


@pytest.mark.parametrize("factory", [snn.LIF(tau=4.0), snn.NoReset(tau=6.0)], ids=repr)
def test_retain_graph_backward_twice_gives_the_same_gradients(factory):
    """LIF's backward writes the input gradient over its saved membrane only when autograd frees it
    afterwards; with retain_graph=True it keeps it, so a second backward gives the same gradients."""
    model = factory.make_model((7,))
    xs = drive(factory, (30, 3, 7), seed=10)
    ref = run(model, xs, "reference")
    model.zero_grad()
    xs = xs.clone().requires_grad_(True)
    out, state = model(xs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    loss = (out * weights).sum() + 1.5 * state.v.sum()
    first = torch.autograd.grad(loss, xs, retain_graph=True)[0]
    second = torch.autograd.grad(loss, xs)[0]  # the graph is freed after this one
    assert torch.equal(first, second)
    torch.testing.assert_close(first, ref[2])


@pytest.mark.parametrize("grad_spikes", ["dense", "broadcast", "none"])
@pytest.mark.parametrize("reset", [True, False], ids=["LIF", "NoReset"])
def test_lif_backward_called_directly_leaves_its_saved_values(reset, grad_spikes):
    """Outside an autograd backward the torch backward can't know that its saved membrane is
    freed afterwards: it leaves it untouched, and it gives the same gradient as the in-place path."""
    xs = drive(snn.LIF(), (9, 2, 5), seed=11)
    impl = torch_impl
    _, _, saved = impl.lif_forward(xs, torch.zeros(2, 5), 0.8, reset, store=True)
    kept = saved[0].clone()
    gs = {
        "dense": torch.randn(9, 2, 5),
        "broadcast": torch.tensor(0.5).expand(9, 2, 5),  # what out.sum() or out.mean() pass back
        "none": None,
    }[grad_spikes]
    gv = torch.randn(2, 5)
    gx, gv0 = impl.lif_backward(saved, gs, gv, 0.8, reset, snn.SpikeLinear())
    assert torch.equal(saved[0], kept)

    class Wrapped(torch.autograd.Function):  # the same call inside a backward that frees u
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(kept.clone())
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            (u,) = ctx.saved_tensors
            got, got_v0 = impl.lif_backward((u,), gs, gv, 0.8, reset, snn.SpikeLinear())
            assert got.data_ptr() == u.data_ptr()  # written in place
            torch.testing.assert_close(got, gx)
            torch.testing.assert_close(got_v0, gv0)
            return grad

    Wrapped.apply(torch.ones(1, requires_grad=True)).sum().backward()


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.fixture
def spares(monkeypatch):
    """An empty list of spare forward blocks, with the default limits."""
    monkeypatch.setattr(blocks, "_SPARES", [])
    monkeypatch.setattr(blocks, "SPARE_BLOCKS", 4)
    monkeypatch.setattr(blocks, "SPARE_BYTES", 1 << 28)
    return blocks._SPARES


def test_forward_reuses_a_block_once_nothing_refers_to_it(spares):
    """The CPU forward's output block is reused by the next call of the same shape once its spikes,
    saved membrane and input gradient are gone, and every value in it is recomputed."""
    model = snn.LIF(tau=4.0).make_model((6,))
    first, second = drive(snn.LIF(), (12, 3, 6), seed=13), drive(snn.LIF(), (12, 3, 6), seed=14)
    expected = [run(model, xs, "reference") for xs in (first, second)]
    xs = first.clone().requires_grad_(True)
    out, state = model(xs)
    out.sum().backward()
    address = _storage(out)
    assert _storage(xs.grad) == address  # the input gradient lives in the block too
    del out, state, xs  # (the state's graph refers to xs, and so to its gradient)
    got = run(model, second, "auto")
    assert _storage(got[0]) == address
    assert torch.equal(got[0], expected[1][0])
    torch.testing.assert_close(got[2], expected[1][2])
    again = run(model, first, "auto")  # the second call's block is still referenced by `got`
    assert _storage(again[0]) != address
    assert torch.equal(again[0], expected[0][0]) and torch.equal(got[0], expected[1][0])
    torch.testing.assert_close(again[2], expected[0][2])


def test_forward_does_not_reuse_a_block_still_referenced(spares):
    """Spikes or an input gradient kept from an earlier call keep its block: a later call of the
    same shape writes elsewhere, and what was kept doesn't change."""
    model = snn.LIF().make_model((5,))
    xs = drive(snn.LIF(), (10, 2, 5), seed=15)
    with torch.no_grad():
        kept = model(xs)[0]
    copy = kept.clone()
    x = xs.clone().requires_grad_(True)
    out, state = model(x)
    out.sum().backward()
    grad = x.grad
    grad_copy = grad.clone()
    del out, state, x
    for _ in range(3):
        with torch.no_grad():
            model(xs * 0.5)
        later = xs.clone().requires_grad_(True)
        model(later)[0].sum().backward()
        assert _storage(later.grad) not in (_storage(kept), _storage(grad))
    assert torch.equal(kept, copy) and torch.equal(grad, grad_copy)


def test_spare_blocks_respect_their_limits(spares, monkeypatch):
    """At most SPARE_BLOCKS blocks and SPARE_BYTES bytes are kept; 0 blocks turns reuse off."""
    model = snn.NoReset().make_model((4,))
    with torch.no_grad():
        for steps in range(1, 8):
            model(torch.rand(steps, 2, 4))
    assert len(spares) == 4
    assert [s.nbytes() for _, s in spares] == [4 * steps * 2 * 4 for steps in range(4, 8)]
    monkeypatch.setattr(blocks, "SPARE_BYTES", 4 * 10 * 2 * 4)  # room for one block of 10 steps
    with torch.no_grad():
        model(torch.rand(10, 2, 4))
        assert [s.nbytes() for _, s in spares] == [4 * 10 * 2 * 4]
        model(torch.rand(11, 2, 4))  # larger than the limit: not kept
        assert [s.nbytes() for _, s in spares] == [4 * 10 * 2 * 4]
    monkeypatch.setattr(blocks, "SPARE_BLOCKS", 0)
    spares.clear()
    with torch.no_grad():
        model(torch.rand(10, 2, 4))
    assert spares == []


def test_concurrent_forwards_never_share_a_block(spares):
    """Threads running the same layer at once each get their own block (the reuse check and the
    claim happen under one lock)."""
    model = snn.LIF().make_model((8,))
    inputs = [drive(snn.LIF(), (16, 2, 8), seed=s) for s in range(4)]
    with torch.no_grad(), fused.use_backend("reference"):
        expected = [model(xs)[0] for xs in inputs]
    failures = []

    def work(i):
        for _ in range(30):
            with torch.no_grad():
                out = model(inputs[i])[0]
            if not torch.equal(out, expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_op_decay_rounds_like_the_reference_step(dtype):
    """The torch forward's ``beta * v + x`` in one addcmul equals the reference's mul then add,
    bit for bit, over magnitudes from subnormal to huge, both signs."""
    g = torch.Generator().manual_seed(12)
    scale = torch.pow(10.0, torch.randint(-40, 30, (4096,), generator=g).to(torch.float64))
    v = (torch.randn(4096, generator=g, dtype=torch.float64) * scale).to(dtype).reshape(1, 64, 64)
    x = (torch.randn(4096, generator=g, dtype=torch.float64) * scale.flip(0)).to(dtype).reshape(64, 64)
    for beta in (F.decay(5.0), F.decay(1.5), 0.3, 1.0):
        out = torch.addcmul(x, v[0], torch_impl._decay_ones(v), value=beta)  # what the forward runs
        assert torch.equal(out, beta * v[0] + x)


# --------------------------------------------------------------------------------------------
# Choosing the backend
# --------------------------------------------------------------------------------------------


def test_default_cpu_path_is_fused():
    """On the CPU the automatic choice is the fused torch backend (one autograd node)."""
    out, _ = snn.LIF().make_model((4,))(torch.rand(10, 2, 4, requires_grad=True))
    assert fused.resolve_backend(torch.rand(1), snn.SpikeLinear()) == "torch"
    assert grad_fn_name(out) == "ViewBackward0" and "_LIF" in type(out.grad_fn.next_functions[0][0]).__name__


def test_use_backend_reference_runs_the_step_loop():
    """use_backend('reference') runs functional.unroll: the output comes from a stack of steps."""
    model = snn.LIF().make_model((4,))
    with fused.use_backend("reference"):
        out, _ = model(torch.rand(10, 2, 4, requires_grad=True))
    assert "Stack" in type(out.grad_fn.next_functions[0][0]).__name__


def test_environment_forces_the_reference(monkeypatch):
    """RNNBUILDER_REFERENCE=1 selects the reference loop; RNNBUILDER_NEURON_BACKEND names a backend."""
    monkeypatch.setenv("RNNBUILDER_REFERENCE", "1")
    assert fused.get_backend() == "reference"
    monkeypatch.delenv("RNNBUILDER_REFERENCE")
    monkeypatch.setenv("RNNBUILDER_NEURON_BACKEND", "torch")
    assert fused.get_backend() == "torch"
    monkeypatch.setenv("RNNBUILDER_NEURON_BACKEND", "bogus")
    with pytest.raises(ValueError, match="valid names"):
        fused.get_backend()


def test_set_backend_and_use_backend_precedence(monkeypatch):
    """use_backend wins over set_backend, which wins over the environment; None resets."""
    monkeypatch.setenv("RNNBUILDER_REFERENCE", "1")
    try:
        fused.set_backend("torch")
        assert fused.get_backend() == "torch"
        with fused.use_backend("auto"):
            assert fused.get_backend() == "auto"
        assert fused.get_backend() == "torch"
    finally:
        fused.set_backend(None)
    assert fused.get_backend() == "reference"


def test_unknown_backend_is_rejected():
    """An unknown backend name raises a ValueError that lists the valid ones."""
    with pytest.raises(ValueError, match="auto, torch, triton, reference"), fused.use_backend("cuda"):
        pass


def test_forced_triton_explains_what_it_cannot_run():
    """Forcing 'triton' on a call it can't run (float64 here) raises and says why."""
    with pytest.raises(RuntimeError, match="float32"):
        fused.resolve_backend(torch.rand(3, dtype=torch.float64), snn.SpikeLinear(), "triton")


def test_cycles_still_run_step_by_step():
    """A neuron inside a placeholder cycle uses the step function, and matches the reference."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(8), snn.LIF())
    model = n.make_model((3,))
    xs = torch.rand(15, 2, 3)
    with fused.use_backend("reference"):
        ref, _ = model(xs)
    assert torch.equal(model(xs)[0], ref)
