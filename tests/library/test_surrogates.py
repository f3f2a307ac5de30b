"""Spec of the surrogate spike functions (``rnnbuilder.snn.surrogate``).

Every surrogate is the exact Heaviside step forward (H(v) = 1 if v > 0 else 0, in v's dtype) and a
documented pseudo-derivative backward. The formulas below are written out independently.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from rnnbuilder import snn


def spike_linear(v, gradient_factor=0.3):
    return gradient_factor * torch.clamp(1 - v.abs(), min=0)


def fast_sigmoid(v, slope=25.0):
    return 1 / (slope * v.abs() + 1) ** 2


def atan(v, alpha=2.0):
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * v) ** 2)


def triangular(v, width=1.0):
    return torch.clamp(width - v.abs(), min=0) / width**2


def sigmoid(v, slope=5.0):
    s = 1 / (1 + torch.exp(-slope * v))
    return slope * s * (1 - s)


def straight_through(v):
    return torch.ones_like(v)


# (surrogate, its documented derivative with the same parameters)
CASES = [
    (snn.SpikeLinear(), spike_linear),
    (snn.SpikeLinear(gradient_factor=1.7), lambda v: spike_linear(v, 1.7)),
    (snn.FastSigmoid(), fast_sigmoid),
    (snn.FastSigmoid(slope=3.0), lambda v: fast_sigmoid(v, 3.0)),
    (snn.ATan(), atan),
    (snn.ATan(alpha=0.5), lambda v: atan(v, 0.5)),
    (snn.Triangular(), triangular),
    (snn.Triangular(width=0.4), lambda v: triangular(v, 0.4)),
    (snn.Sigmoid(), sigmoid),
    (snn.Sigmoid(slope=1.5), lambda v: sigmoid(v, 1.5)),
    (snn.StraightThrough(), straight_through),
]
SURROGATES = [surrogate for surrogate, _ in CASES]

# (name, params, an invalid params dict)
BY_NAME = [
    ("SpikeLinear", {"gradient_factor": 0.5}, {"gradient_factor": 0.0}),
    ("FastSigmoid", {"slope": 10.0}, {"slope": 0.0}),
    ("ATan", {"alpha": 3.0}, {"alpha": -1.0}),
    ("Triangular", {"width": 0.5}, {"width": 0.0}),
    ("Sigmoid", {"slope": 2.0}, {"slope": -2.0}),
    ("StraightThrough", {}, None),
]

GRID = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)  # includes v = 0 and v = +-1


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_forward_is_exact_heaviside(surrogate, dtype):
    """Forward is 1 where v > 0 and 0 elsewhere (0 at v = 0 and -0), in v's dtype and shape."""
    v = torch.tensor([[-2.0, -1e-3, -0.0, 0.0], [1e-3, 0.5, 1.0, 7.0]], dtype=dtype)
    s = surrogate(v)
    assert s.dtype == dtype
    assert s.shape == v.shape
    assert s.tolist() == [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_forward_on_grid_equals_step(surrogate):
    """On a grid of v, the forward pass is exactly (v > 0)."""
    assert torch.equal(surrogate(GRID), (GRID > 0).double())


@pytest.mark.parametrize(("surrogate", "derivative"), CASES, ids=[repr(s) for s in SURROGATES])
def test_backward_is_documented_derivative(surrogate, derivative):
    """Backward multiplies the incoming gradient by the documented pseudo-derivative at v."""
    v = GRID.clone().requires_grad_(True)
    upstream = torch.randn(GRID.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    surrogate(v).backward(upstream)
    torch.testing.assert_close(v.grad, upstream * derivative(GRID))


@pytest.mark.parametrize(("surrogate", "derivative"), CASES, ids=[repr(s) for s in SURROGATES])
def test_gradient_method_is_documented_derivative(surrogate, derivative):
    """surrogate.gradient(v) is the documented pseudo-derivative."""
    torch.testing.assert_close(surrogate.gradient(GRID), derivative(GRID))


def test_derivative_golden_values_at_zero():
    """At v = 0 the pseudo-derivatives take their peak values."""
    zero = torch.zeros(1, dtype=torch.float64)
    expected = {
        snn.SpikeLinear(): 0.3,
        snn.SpikeLinear(gradient_factor=2.0): 2.0,
        snn.FastSigmoid(): 1.0,
        snn.ATan(): 1.0,
        snn.ATan(alpha=4.0): 2.0,
        snn.Triangular(): 1.0,
        snn.Triangular(width=0.5): 2.0,
        snn.Sigmoid(): 1.25,
        snn.StraightThrough(): 1.0,
    }
    for surrogate, value in expected.items():
        v = zero.clone().requires_grad_(True)
        surrogate(v).sum().backward()
        assert v.grad.item() == pytest.approx(value), surrogate


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_surrogate_gradient_keeps_shape_and_dtype(surrogate):
    """The input gradient has v's shape and dtype (float32 too)."""
    v = torch.randn(3, 4, 5, requires_grad=True)
    surrogate(v).sum().backward()
    assert v.grad.shape == (3, 4, 5) and v.grad.dtype == torch.float32


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_pickle_round_trip(surrogate):
    """A surrogate pickles to an equal surrogate that computes the same forward and backward."""
    clone = pickle.loads(pickle.dumps(surrogate))
    assert clone == surrogate
    assert type(clone) is type(surrogate)
    v1 = GRID.clone().requires_grad_(True)
    v2 = GRID.clone().requires_grad_(True)
    surrogate(v1).sum().backward()
    clone(v2).sum().backward()
    assert torch.equal(clone(GRID), surrogate(GRID))
    assert torch.equal(v1.grad, v2.grad)


def test_neuron_with_custom_surrogate_pickles():
    """A neuron factory carrying a non-default surrogate survives pickling."""
    factory = snn.LIF(tau=3.0, spike_function=snn.ATan(alpha=3.0))
    clone = pickle.loads(pickle.dumps(factory))
    assert clone == factory
    assert clone.spike_function == snn.ATan(alpha=3.0)


def test_surrogates_compare_by_value():
    """Surrogates are equal when class and parameters are equal."""
    assert snn.FastSigmoid(slope=10.0) == snn.FastSigmoid(slope=10.0)
    assert snn.FastSigmoid(slope=10.0) != snn.FastSigmoid(slope=11.0)
    assert snn.Sigmoid(slope=5.0) != snn.FastSigmoid(slope=5.0)
    assert hash(snn.ATan()) == hash(snn.ATan())


def test_default_surrogate_is_spike_linear():
    """Neurons default to SpikeLinear(gradient_factor=0.3)."""
    assert snn.SpikeLinear() == snn.SpikeLinear(gradient_factor=0.3)
    for factory in (snn.LIF(), snn.NoReset(), snn.Adaptive(), snn.Cooldown(), snn.Discontinuous()):
        assert factory.spike_function == snn.SpikeLinear(0.3)


@pytest.mark.parametrize(("name", "params", "_"), BY_NAME, ids=[row[0] for row in BY_NAME])
def test_get_surrogate_by_name(name, params, _):
    """get_surrogate(name, **params) builds the named class with those params."""
    surrogate = snn.get_surrogate(name, **params)
    cls = getattr(snn, name)
    assert type(surrogate) is cls
    assert surrogate == cls(**params)
    assert snn.get_surrogate(name) == cls()


def test_surrogate_names_lists_all():
    """surrogate_names() lists every surrogate class."""
    assert sorted(snn.surrogate_names()) == sorted(name for name, _, _ in BY_NAME)


def test_get_surrogate_unknown_name_lists_valid_names():
    """An unknown name raises ValueError naming every valid surrogate."""
    with pytest.raises(ValueError) as info:
        snn.get_surrogate("SuperDuperSpike")
    message = str(info.value)
    assert "SuperDuperSpike" in message
    for name, _, _ in BY_NAME:
        assert name in message


@pytest.mark.parametrize(
    ("name", "bad"), [(name, bad) for name, _, bad in BY_NAME if bad is not None], ids=[r[0] for r in BY_NAME[:-1]]
)
def test_invalid_parameters_raise_value_error(name, bad):
    """Non-positive parameters (e.g. slope=0) raise ValueError, directly and via get_surrogate."""
    cls = getattr(snn, name)
    (param,) = bad
    with pytest.raises(ValueError, match=param):
        cls(**bad)
    with pytest.raises(ValueError, match=param):
        snn.get_surrogate(name, **bad)


@pytest.mark.parametrize("cls", [snn.FastSigmoid, snn.Sigmoid])
def test_nan_slope_is_rejected(cls):
    """A NaN slope is not a positive number."""
    with pytest.raises(ValueError):
        cls(slope=float("nan"))


def test_without_autograd_a_surrogate_is_the_plain_step():
    """With no gradient wanted, a surrogate gives H(v) and records nothing for a backward."""
    from rnnbuilder.snn.surrogate import SpikeLinear, heaviside

    v = torch.tensor([-1.0, 0.0, 0.5], requires_grad=True)
    with torch.no_grad():
        s = SpikeLinear()(v)
    assert s.grad_fn is None and torch.equal(s, heaviside(v.detach()))
    assert SpikeLinear()(v).grad_fn is not None
