"""Spec of the spiking neurons (``rnnbuilder.snn``) and their pure updates (``snn.functional``).

Definitions: H(v) = 1 if v > 0 else 0; beta = exp(-1 / tau). Neurons flatten each sample to n
neurons; the membrane starts at a learnable per-neuron value that starts at zeros.

The reference loops below are written from the equations, independently of ``snn.functional``.
"""

from __future__ import annotations

import math

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn
from rnnbuilder.snn import functional as F
from tests.helpers import RefSpike

TAUS = [1.5, 5.0, 20.0]


# --------------------------------------------------------------------------------------------
# Hand-written references
# --------------------------------------------------------------------------------------------


def H(v: torch.Tensor) -> torch.Tensor:
    """Heaviside, 1 where v > 0, in v's dtype (no gradient)."""
    return (v > 0).to(v.dtype)


def ref_lif(xs, tau, reset=True, spike=H, m0=None):
    """m = beta*m + x; s = H(m - 1); m -= s (if reset). xs: (T, B, n) -> (spikes, final m)."""
    beta = math.exp(-1.0 / tau)
    m = torch.zeros_like(xs[0]) if m0 is None else m0
    out = []
    for x in xs:
        m = beta * m + x
        s = spike(m - 1)
        if reset:
            m = m - s
        out.append(s)
    return torch.stack(out), m


def ref_adaptive(xs, tau, tau_thr=5.0, gamma=0.25, spike=H, m0=None):
    """theta = 1 + a; s = H((m - theta) / theta); m = beta*m + x - s*theta; a = beta_thr*a + gamma*s."""
    beta, beta_thr = math.exp(-1.0 / tau), math.exp(-1.0 / tau_thr)
    m = torch.zeros_like(xs[0]) if m0 is None else m0
    a = torch.zeros_like(xs[0])
    out = []
    for x in xs:
        theta = 1 + a
        s = spike((m - theta) / theta)
        m = beta * m + x - s * theta
        a = beta_thr * a + gamma * s
        out.append(s)
    return torch.stack(out), (m, a)


def ref_cooldown(xs, tau):
    """s = H(sigma * (m - 1)) on the previous m; m = beta*m + (1 - beta)*exp(x)."""
    beta = math.exp(-1.0 / tau)
    n = xs.shape[-1]
    sigma = torch.tensor([1.0] * (n // 2) + [-1.0] * (n - n // 2), dtype=xs.dtype)
    m = torch.zeros_like(xs[0])
    out = []
    for x in xs:
        s = H(sigma * (m - 1))
        m = beta * m + (1 - beta) * torch.exp(x)
        out.append(s)
    return torch.stack(out), m


def initial_v(model) -> torch.nn.Parameter:
    """The one learnable initial membrane of a model built from a single neuron factory."""
    found = [p for name, p in model.named_parameters() if name.split(".")[-1] == "initial_v"]
    assert len(found) == 1, [name for name, _ in model.named_parameters()]
    return found[0]


def drive(shape, low=-0.2, high=1.0, seed=0):
    """Random input with enough drive to make neurons spike."""
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g)


# --------------------------------------------------------------------------------------------
# Golden trajectories against the reference loops (bit-identical spikes)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TAUS)
def test_lif_matches_reference_loop(tau):
    """LIF spikes are bit-identical to the hand-written loop and the final membrane is equal."""
    xs = drive((60, 4, 7))
    out, state = snn.LIF(tau=tau).make_model((7,))(xs)
    ref_s, ref_m = ref_lif(xs, tau)
    assert 0 < ref_s.sum() < ref_s.numel()
    assert torch.equal(out, ref_s)
    assert torch.equal(state.v, ref_m)


@pytest.mark.parametrize("tau", TAUS)
def test_noreset_matches_reference_loop(tau):
    """NoReset is LIF without the reset: bit-identical spikes and equal final membrane."""
    xs = drive((60, 4, 7), low=-0.5, high=0.7)
    out, state = snn.NoReset(tau=tau).make_model((7,))(xs)
    ref_s, ref_m = ref_lif(xs, tau, reset=False)
    assert 0 < ref_s.sum() < ref_s.numel()
    assert torch.equal(out, ref_s)
    assert torch.equal(state.v, ref_m)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize(("tau_thr", "gamma"), [(5.0, 0.25), (30.0, 0.8)])
def test_adaptive_matches_reference_loop(tau, tau_thr, gamma):
    """Adaptive spikes are bit-identical to the loop; final membrane and adaptation are equal."""
    xs = drive((60, 4, 7), low=0.0, high=1.2)
    out, state = snn.Adaptive(tau=tau, tau_thr=tau_thr, gamma=gamma).make_model((7,))(xs)
    ref_s, (ref_m, ref_a) = ref_adaptive(xs, tau, tau_thr, gamma)
    assert 0 < ref_s.sum() < ref_s.numel()
    assert torch.equal(out, ref_s)
    assert torch.equal(state.v, ref_m)
    assert torch.equal(state.a, ref_a)


@pytest.mark.parametrize("tau", TAUS)
def test_cooldown_matches_reference_loop(tau):
    """Cooldown spikes are bit-identical to the loop (sign +1 for the first n//2, -1 after)."""
    xs = torch.randn(60, 4, 7, generator=torch.Generator().manual_seed(1))
    out, state = snn.Cooldown(tau=tau).make_model((7,))(xs)
    ref_s, ref_m = ref_cooldown(xs, tau)
    assert 0 < ref_s[:, :, :3].sum() < ref_s[:, :, :3].numel()  # the + half spikes sometimes
    assert 0 < ref_s[:, :, 3:].sum() < ref_s[:, :, 3:].numel()  # and so does the - half
    assert torch.equal(out, ref_s)
    assert torch.equal(state.v, ref_m)


@pytest.mark.parametrize("threshold", [1.0, 0.3, -0.2])
def test_discontinuous_is_heaviside_of_input_minus_threshold(threshold):
    """Discontinuous gives H(x - threshold) elementwise and has no state."""
    xs = drive((10, 3, 6), low=-1.0, high=2.0)
    out, state = snn.Discontinuous(threshold=threshold).make_model((6,))(xs)
    expected = (xs - threshold > 0).float()
    assert 0 < expected.sum() < expected.numel()
    assert torch.equal(out, expected)
    assert state == ()


# --------------------------------------------------------------------------------------------
# Tiny hand-computed golden examples
# --------------------------------------------------------------------------------------------


def test_lif_hand_computed_example():
    """LIF(tau=5) on x = 0.6, 0.6, 0.6, 0.6, 0, 1.5: spikes at steps 2, 4, 6 with known membranes."""
    model = snn.LIF(tau=5).make_model((1,), full_state=True)
    xs = torch.tensor([0.6, 0.6, 0.6, 0.6, 0.0, 1.5]).reshape(6, 1, 1)
    out, states = model(xs)
    assert out.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    # 0.6; 0.6*e^-0.2 + 0.6 = 1.0912 -> spike, 0.0912; ...
    expected_v = [0.6, 0.0912385, 0.6746997, 0.1523974, 0.1247725, 0.602155]
    assert states.v.flatten().tolist() == pytest.approx(expected_v, abs=1e-6)


def test_adaptive_hand_computed_example():
    """Adaptive(tau=5, tau_thr=5, gamma=0.25): spike reads the previous membrane; threshold adapts."""
    model = snn.Adaptive(tau=5, tau_thr=5, gamma=0.25).make_model((1,), full_state=True)
    xs = torch.tensor([1.5, 0.0, 1.5, 0.0, 0.0, 0.0]).reshape(6, 1, 1)
    out, states = model(xs)
    # step 1 sees v=0 (no spike) even though x=1.5; step 2 sees v=1.5 > theta=1 and spikes;
    # step 3 sees v=0.228 < theta=1.25; step 4 sees v=1.687 > theta=1.2047 and spikes.
    assert out.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    expected_v = [1.5, 0.2280961, 1.6867493, 0.1763108, 0.1443511, 0.1181847]
    expected_a = [0.0, 0.25, 0.2046827, 0.41758, 0.3418856, 0.2799123]
    assert states.v.flatten().tolist() == pytest.approx(expected_v, abs=1e-6)
    assert states.a.flatten().tolist() == pytest.approx(expected_a, abs=1e-6)


def test_cooldown_first_step_reads_initial_membrane():
    """Cooldown at t=0 reads v=0: the -1 half spikes (H(1)), the +1 half doesn't (H(-1))."""
    out, _ = snn.Cooldown().make_model((5,))(torch.zeros(1, 2, 5))
    assert out[0].tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]] * 2


# --------------------------------------------------------------------------------------------
# Cooldown's initial output
# --------------------------------------------------------------------------------------------


def test_cooldown_initial_output_via_placeholder():
    """A placeholder fed by a Cooldown layer holds 1 where sign = -1 and 0 elsewhere at t=0."""
    n = rb.Network()
    previous = rb.Placeholder()
    n.cool = rb.Layer(n.input, snn.Cooldown(), placeholder=previous)
    n.output = previous.stack(n.cool)
    model = n.make_model((5,))
    xs = torch.randn(3, 2, 5)
    out, _ = model(xs)
    assert out.shape == (3, 2, 10)
    assert out[0, :, :5].tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]] * 2
    assert torch.equal(out[1:, :, :5], out[:-1, :, 5:])  # afterwards: the previous output


def test_cooldown_initial_output_of_runner():
    """The runner's initial_output is (batch, *out_shape): 1 for the last n - n//2 neurons."""
    model = snn.Cooldown().make_model((2, 3))
    init = model.net.initial_output(4, torch.device("cpu"), torch.float64)
    assert init.shape == (4, 2, 3) and init.dtype == torch.float64
    assert init.reshape(4, 6).tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * 4


@pytest.mark.parametrize("factory", [snn.LIF(), snn.NoReset(), snn.Adaptive()], ids=repr)
def test_other_neurons_initial_output_is_zero(factory):
    """A placeholder fed by a LIF/NoReset/Adaptive layer starts at zeros."""
    init = factory.make_model((5,)).net.initial_output(3, torch.device("cpu"), torch.float32)
    assert torch.equal(init, torch.zeros(3, 5))


# --------------------------------------------------------------------------------------------
# The learnable initial membrane
# --------------------------------------------------------------------------------------------

STATEFUL = [
    snn.LIF(tau=5),
    snn.NoReset(tau=5),
    snn.Adaptive(tau=5),
    snn.Cooldown(tau=5),
]


@pytest.mark.parametrize("factory", STATEFUL, ids=repr)
def test_initial_membrane_is_a_zero_parameter_per_neuron(factory):
    """initial_v is a Parameter with one zero entry per neuron (n = prod(in_shape))."""
    model = factory.make_model((2, 3))
    v0 = initial_v(model)
    assert isinstance(v0, torch.nn.Parameter) and v0.requires_grad
    assert torch.equal(v0.detach(), torch.zeros(6))
    assert torch.equal(model.get_initial_state(4)[0], torch.zeros(4, 6))


@pytest.mark.parametrize("factory", STATEFUL, ids=repr)
def test_initial_membrane_gets_gradient(factory):
    """A loss on the spikes gives initial_v a nonzero gradient (through the surrogate)."""
    model = factory.make_model((6,))
    xs = drive((5, 3, 6), low=0.4, high=0.9)
    out, state = model(xs)
    (out.sum() + state[0].sum()).backward()
    grad = initial_v(model).grad
    assert grad is not None and grad.shape == (6,)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("factory", STATEFUL, ids=repr)
def test_initial_membrane_changes_the_trajectory(factory):
    """Setting initial_v changes the spikes; LIF from initial_v equals the loop started there."""
    model = factory.make_model((6,))
    xs = drive((8, 2, 6), low=0.0, high=0.5)
    before, _ = model(xs)
    with torch.no_grad():
        initial_v(model).copy_(torch.tensor([0.9, 0.95, 2.0, 2.0, 0.5, 0.99]))
    after, _ = model(xs)
    assert not torch.equal(before, after)
    if isinstance(factory, snn.LIF):
        m0 = initial_v(model).detach().expand(2, 6)
        assert torch.equal(after, ref_lif(xs, 5.0, m0=m0)[0])


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [*STATEFUL, snn.Discontinuous()], ids=repr)
def test_output_keeps_input_shape(factory):
    """A (C, H, W) input gives (T, B, C, H, W) spikes; the state is flat (B, C*H*W)."""
    model = factory.make_model((2, 3, 4))
    assert model.out_shape == (2, 3, 4)
    assert factory.out_shape((2, 3, 4)) == (2, 3, 4)
    out, state = model(drive((5, 3, 2, 3, 4)))
    assert out.shape == (5, 3, 2, 3, 4)
    for leaf in state:
        assert leaf.shape == (3, 24)


def test_multidim_lif_equals_flat_lif():
    """LIF on (C, H, W) is LIF on the flattened neurons, reshaped back."""
    xs = drive((30, 2, 2, 3, 4))
    out, _ = snn.LIF().make_model((2, 3, 4))(xs)
    ref, _ = ref_lif(xs.flatten(2), 5.0)
    assert ref.sum() > 0
    assert torch.equal(out, ref.reshape(xs.shape))


# --------------------------------------------------------------------------------------------
# BPTT gradients
# --------------------------------------------------------------------------------------------


def _bptt(model, xs, weights):
    xs = xs.clone().requires_grad_(True)
    out, state = model(xs)
    (out * weights).sum().backward()
    return xs.grad, initial_v(model).grad


def test_lif_bptt_gradient_matches_autograd_reference():
    """LIF over T=20: d loss / d input and d loss / d initial_v equal the reference loop's."""
    g = torch.Generator().manual_seed(3)
    xs = (0.6 * torch.rand(20, 3, 5, generator=g)).double()
    weights = torch.randn(20, 3, 5, generator=g).double()
    x_grad, v_grad = _bptt(snn.LIF(tau=5).make_model((5,)), xs, weights)

    ref_x = xs.clone().requires_grad_(True)
    ref_m0 = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    ref_s, _ = ref_lif(ref_x, 5.0, spike=RefSpike.apply, m0=ref_m0)
    assert 0 < ref_s.sum() < ref_s.numel()
    (ref_s * weights).sum().backward()
    assert ref_x.grad.abs().sum() > 0
    torch.testing.assert_close(x_grad, ref_x.grad)
    torch.testing.assert_close(v_grad.double(), ref_m0.grad.sum(0))


def test_adaptive_bptt_gradient_matches_autograd_reference():
    """Adaptive over T=20: d loss / d input and d loss / d initial_v equal the reference loop's."""
    g = torch.Generator().manual_seed(4)
    xs = (1.2 * torch.rand(20, 3, 5, generator=g)).double()
    weights = torch.randn(20, 3, 5, generator=g).double()
    x_grad, v_grad = _bptt(snn.Adaptive(tau=5, tau_thr=5, gamma=0.25).make_model((5,)), xs, weights)

    ref_x = xs.clone().requires_grad_(True)
    ref_m0 = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    ref_s, _ = ref_adaptive(ref_x, 5.0, 5.0, 0.25, spike=RefSpike.apply, m0=ref_m0)
    assert 0 < ref_s.sum() < ref_s.numel()
    (ref_s * weights).sum().backward()
    assert ref_x.grad.abs().sum() > 0
    torch.testing.assert_close(x_grad, ref_x.grad)
    torch.testing.assert_close(v_grad.double(), ref_m0.grad.sum(0))


def test_gradient_flows_through_stacked_neurons_into_weights():
    """Linear -> LIF -> Linear: the first Linear's weight gets a nonzero gradient."""
    torch.manual_seed(0)
    model = rb.Sequential(nn.Linear(8), snn.LIF(), nn.Linear(2)).make_model((4,))
    out, _ = model(2 * torch.rand(10, 3, 4))
    out.pow(2).sum().backward()
    first = next(model.parameters())
    assert first.shape == (8, 4)
    assert first.grad is not None and first.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Chunking: 100 steps == 40 + 60 with state carried
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [*STATEFUL, snn.Discontinuous()], ids=repr)
def test_100_steps_equal_40_then_60(factory):
    """Running 100 steps at once equals 40 steps then 60 with the state carried over."""
    model = factory.make_model((6,))
    xs = torch.randn(100, 3, 6, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.4
    whole, final = model(xs)
    first, state = model(xs[:40])
    second, state = model(xs[40:], state)
    assert 0 < whole.sum() < whole.numel()
    assert torch.equal(whole, torch.cat([first, second]))
    assert len(final) == len(state)
    for a, b in zip(final, state):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: snn.LIF(tau=0), lambda: snn.Adaptive(tau_thr=-1), lambda: snn.Cooldown(tau=0)]
)
def test_nonpositive_time_constants_are_rejected(make):
    """tau and tau_thr must be positive."""
    with pytest.raises(ValueError, match="must be a positive number"):
        make()


# --------------------------------------------------------------------------------------------
# snn.functional: pure updates
# --------------------------------------------------------------------------------------------


def _snapshot(state):
    return [(t.clone(), t._version) for t in state]


def _unchanged(state, snapshot):
    return all(torch.equal(t, c) and t._version == ver for t, (c, ver) in zip(state, snapshot))


def test_decay_is_exp_minus_one_over_tau():
    """decay(tau) = exp(-1 / tau)."""
    for tau in TAUS:
        assert F.decay(tau) == pytest.approx(math.exp(-1.0 / tau), rel=1e-15)


def test_cooldown_sign_vector():
    """cooldown_sign(n) is +1 for the first n//2 entries and -1 for the rest."""
    assert F.cooldown_sign(5).tolist() == [1.0, 1.0, -1.0, -1.0, -1.0]
    assert F.cooldown_sign(4).tolist() == [1.0, 1.0, -1.0, -1.0]
    assert F.cooldown_sign(1).tolist() == [-1.0]


@pytest.mark.parametrize("reset", [True, False])
def test_lif_step_is_pure(reset):
    """lif_step returns (spikes, new LIFState) by the formula and leaves its input state alone."""
    v = torch.tensor([[0.0, 0.5, 0.9, 4.0]])
    x = torch.tensor([[0.2, 0.8, 0.05, -0.5]])
    state = F.LIFState(v)
    snap = _snapshot(state)
    s, new = F.lif_step(x, state, F.LIFParameters(0.5, snn.SpikeLinear(), reset))
    assert isinstance(new, F.LIFState)
    assert s.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    m = 0.5 * v + x  # [0.2, 1.05, 0.5, 1.5]
    assert torch.equal(s, (m - 1 > 0).float())
    assert torch.equal(new.v, m - s if reset else m)
    assert _unchanged(state, snap)


def test_lif_step_hand_values():
    """lif_step with beta=0.5: v=1.0, x=0.6 -> 1.1 spikes and resets to 0.1."""
    s, new = F.lif_step(torch.tensor([[0.6]]), F.LIFState(torch.tensor([[1.0]])), F.LIFParameters(0.5, snn.ATan()))
    assert s.item() == 1.0
    assert new.v.item() == pytest.approx(0.1, abs=1e-6)


def test_adaptive_step_is_pure():
    """adaptive_step returns (spikes, new AdaptiveState) by the formula, input state untouched."""
    v = torch.tensor([[0.0, 1.6, 1.6, 3.0]])
    a = torch.tensor([[0.0, 0.0, 0.8, 1.0]])
    x = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    state = F.AdaptiveState(v, a)
    snap = _snapshot(state)
    s, new = F.adaptive_step(x, state, F.AdaptiveParameters(0.5, 0.25, 0.4, snn.SpikeLinear()))
    assert isinstance(new, F.AdaptiveState)
    # theta = [1, 1, 1.8, 2]; v > theta at neurons 1 and 3
    assert s.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    theta = 1 + a
    assert torch.allclose(new.v, 0.5 * v + x - s * theta)
    assert torch.allclose(new.a, 0.25 * a + 0.4 * s)
    assert _unchanged(state, snap)


def test_cooldown_step_is_pure():
    """cooldown_step reads the previous membrane with the sign, then integrates exp(x)."""
    v = torch.tensor([[0.5, 1.5, 0.5, 1.5]])
    x = torch.tensor([[0.0, -1.0, 1.0, 2.0]])
    state = F.CooldownState(v)
    snap = _snapshot(state)
    sign = F.cooldown_sign(4)
    s, new = F.cooldown_step(x, state, F.CooldownParameters(0.75, snn.SpikeLinear(), sign))
    assert isinstance(new, F.CooldownState)
    assert s.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert torch.allclose(new.v, 0.75 * v + 0.25 * torch.exp(x))
    assert _unchanged(state, snap)


def test_discontinuous_step_is_stateless():
    """discontinuous_step gives H(x - threshold) and passes the empty state through."""
    x = torch.tensor([[0.4, 0.5, 0.6]])
    s, state = F.discontinuous_step(x, (), F.DiscontinuousParameters(0.5, snn.SpikeLinear()))
    assert s.tolist() == [[0.0, 0.0, 1.0]]
    assert state == ()


def test_unroll_applies_step_over_time():
    """unroll(step, xs, state, p) stacks the step's spikes over time and returns the final state."""
    xs = drive((12, 2, 3))
    p = F.LIFParameters(F.decay(5.0), snn.SpikeLinear())
    state = F.LIFState(torch.zeros(2, 3))
    spikes, final = F.unroll(F.lif_step, xs, state, p)
    ref_s, ref_m = ref_lif(xs, 5.0)
    assert ref_s.sum() > 0
    assert torch.equal(spikes, ref_s)
    assert torch.equal(final.v, ref_m)
    assert torch.equal(state.v, torch.zeros(2, 3))
