"""Spec of the Triton neuron kernels (``rnnbuilder.snn.fused.triton_impl``).

On CPU tensors the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` is set for them
when they are loaded), so CI checks the very kernels that run on the GPU against the reference
loop: bit-identical spikes and final states, gradients within float32 tolerance. The block size is
lowered so that the shapes below need several programs and leave a ragged last block.
"""

from __future__ import annotations

import pytest
import torch

from rnnbuilder import snn
from rnnbuilder.snn import fused
from rnnbuilder.snn.fused import triton_impl

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'rnnbuilder-sim[kernels]')")

BLOCK = 32
SURROGATES = [snn.SpikeLinear(), snn.Sigmoid(slope=4.0), snn.ATan()]
NEURONS = {
    "LIF": lambda sg: snn.LIF(tau=4.0, spike_function=sg),
    "NoReset": lambda sg: snn.NoReset(tau=6.0, spike_function=sg),
    "Adaptive": lambda sg: snn.Adaptive(tau=5.0, tau_thr=12.0, gamma=0.4, spike_function=sg),
    "Cooldown": lambda sg: snn.Cooldown(tau=3.0, spike_function=sg),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRET_BLOCK", BLOCK)


def drive(name, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "Cooldown":
        return torch.randn(shape, generator=g)
    low, high = (-0.5, 0.7) if name == "NoReset" else (-0.2, 1.2)
    return low + (high - low) * torch.rand(shape, generator=g)


def run(model, xs, backend, spike_weight=1.0, state_weight=1.5):
    model.zero_grad()
    xs = xs.clone().requires_grad_(True)
    with fused.use_backend(backend):
        out, state = model(xs)
    weights = spike_weight * torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.device)
    loss = (out * weights).sum() + sum(state_weight * (i + 1) * f.sum() for i, f in enumerate(state))
    loss.backward()
    v0 = [p for name, p in model.named_parameters() if name.endswith("initial_v")][0]
    return out.detach(), [f.detach() for f in state], xs.grad, v0.grad.clone()


def assert_kernels_match(model, xs, **kw):
    ref, got = run(model, xs, "reference", **kw), run(model, xs, "triton", **kw)
    assert 0 < ref[0].sum() < ref[0].numel()
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("surrogate", SURROGATES[:2], ids=repr)
@pytest.mark.parametrize("name", NEURONS)
def test_kernels_match_reference_on_ragged_blocks(name, surrogate):
    """M = 3 x 37 = 111 neurons, blocks of 32 (the last one ragged): exact spikes, close gradients."""
    factory = NEURONS[name](surrogate)
    assert_kernels_match(factory.make_model((37,)), drive(name, (25, 3, 37)))


@pytest.mark.parametrize("name", NEURONS)
def test_kernels_match_reference_on_a_long_sequence(name):
    """T = 300 with a partial single block: spikes and states stay bit-identical, gradients close."""
    factory = NEURONS[name](snn.ATan())
    assert_kernels_match(factory.make_model((5,)), drive(name, (300, 2, 5), seed=1))


@pytest.mark.parametrize("name", NEURONS)
def test_kernels_without_gradient(name):
    """Under no_grad the forward kernel skips the saved values and gives the same spikes and state."""
    model = NEURONS[name](snn.SpikeLinear()).make_model((2, 9))
    xs = drive(name, (30, 4, 2, 9), seed=2)
    with torch.no_grad():
        with fused.use_backend("reference"):
            ref, ref_state = model(xs)
        with fused.use_backend("triton"):
            got, state = model(xs)
    assert torch.equal(got, ref)
    for a, b in zip(state, ref_state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NEURONS)
def test_kernels_gradient_through_final_state_only(name):
    """No gradient on the spikes (the kernel's HAS_GS=False branch) still matches the reference."""
    model = NEURONS[name](snn.SpikeLinear()).make_model((40,))
    assert_kernels_match(model, drive(name, (12, 1, 40), seed=3), spike_weight=0.0)


@pytest.mark.parametrize("name", NEURONS)
def test_kernels_gradient_through_spikes_only(name):
    """No gradient on the final state (HAS_GV=False) still matches the reference."""
    model = NEURONS[name](snn.Sigmoid()).make_model((40,))
    assert_kernels_match(model, drive(name, (12, 1, 40), seed=4), state_weight=0.0)


@pytest.mark.parametrize("surrogate", [snn.FastSigmoid(), snn.Triangular(width=0.7), snn.StraightThrough()], ids=repr)
def test_kernels_know_every_builtin_surrogate(surrogate):
    """The other built-in surrogates' gradients in the kernel match the reference (on LIF)."""
    assert_kernels_match(snn.LIF(spike_function=surrogate).make_model((33,)), drive("LIF", (20, 2, 33), seed=5))


def test_auto_never_interprets_on_cpu():
    """The automatic choice on CPU tensors is the torch backend, never the slow interpreter."""
    assert fused.resolve_backend(torch.rand(4), snn.SpikeLinear()) == "torch"


def test_custom_surrogate_is_refused_by_forced_triton():
    """Forcing 'triton' with a surrogate the kernels don't know raises and names the class."""

    class Box(snn.Surrogate):
        def gradient(self, v):
            return torch.ones_like(v)

    with pytest.raises(RuntimeError, match="Box"):
        fused.resolve_backend(torch.rand(3), Box(), "triton")


def test_kernel_bytes_counts_reads_and_writes():
    """kernel_bytes: the LIF forward moves 12 bytes a element (8 without storing), backward 12."""
    assert triton_impl.kernel_bytes("lif_fwd", 10, 100) == 4 * (3 * 1000 + 200)
    assert triton_impl.kernel_bytes("lif_fwd", 10, 100, store=False) == 4 * (2 * 1000 + 200)
    assert triton_impl.kernel_bytes("lif_bwd", 10, 100) == 4 * (3 * 1000 + 200)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NEURONS)
def test_compiled_kernels_match_reference_on_cuda(name):
    """On a GPU the compiled kernels (auto backend) match the reference loop run on the GPU."""
    factory = NEURONS[name](snn.SpikeLinear())
    model = factory.make_model((1000,)).cuda()
    xs = drive(name, (300, 7, 1000), seed=6).cuda()
    assert fused.resolve_backend(xs, snn.SpikeLinear()) == "triton"
    ref, got = run(model, xs, "reference"), run(model, xs, "auto")
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-4)
