"""``Stacked``: models of one structure stepped together give what each model gives alone."""

from __future__ import annotations

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, rnn, snn
from rnnbuilder._tree import tree_leaves
from tests.helpers import recurrent_net

NEURONS = {type(f).__name__: f for f in (snn.LIF(), snn.NoReset(), snn.Adaptive(), snn.Cooldown(), snn.Discontinuous())}

# name -> (factory, in_shape, whether the output is spikes)
NETWORKS = {
    "linear_lif": (lambda: rb.Sequential(nn.Linear(16), snn.LIF()), (8,), True),
    "convolution": (lambda: rb.Sequential(nn.Conv2d(4, 3), snn.LIF()), (1, 8, 8), True),
    "cycle": (lambda: recurrent_net(16), (4,), True),
    "lstm": (lambda: rb.Sequential(rnn.LSTM(6), nn.Linear(3)), (4,), False),
    "gru": (lambda: rnn.GRU(5), (3,), False),
    "linear_cuba_lif": (
        lambda: rb.Sequential(nn.Linear(16), snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=4.0, r=2.0)),
        (8,),
        True,
    ),
    **{f"linear_{name}": (lambda f=f: rb.Sequential(nn.Linear(16), f), (8,), True) for name, f in NEURONS.items()},
    **{name: (lambda f=f: f, (8,), True) for name, f in NEURONS.items()},
}

# Measured on this project's CPU (torch 2.13, MKL): where batched and unbatched arithmetic agree bit
# for bit. At batch 1 a small Linear runs as a matrix-vector product alone and as a batched matrix
# product stacked, which round differently; a convolution batched over weights always does.
EXACT = {
    4: [name for name in NETWORKS if name != "convolution"],
    1: ["lstm", *NEURONS],
}


def _models(name: str, count: int = 4, seed: int = 0) -> tuple[list[rb.Model], tuple[int, ...]]:
    """``count`` models of network ``name``, each with its own random parameters (membranes too)."""
    factory, shape, _ = NETWORKS[name]
    torch.manual_seed(seed)
    models = [factory().make_model(shape).eval() for _ in range(count)]
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    return models, shape


def _inputs(count: int, batch: int, shape, seed: int = 1) -> torch.Tensor:
    return torch.rand((count, batch, *shape), generator=torch.Generator().manual_seed(seed)) * 2


def _alone(models, x, states):
    """Each model on its own input for one timestep: stacked outputs, and the new states."""
    outs, new = [], []
    with torch.no_grad():
        for model, x_i, state in zip(models, x, states, strict=True):
            y, state = model(x_i.unsqueeze(0), state)
            outs.append(y[0])
            new.append(state)
    return torch.stack(outs), new


def _run_both(name: str, batch: int, steps: int):
    """Outputs and states of ``steps`` timesteps, batched and alone, for 4 models of ``name``."""
    models, shape = _models(name)
    stacked = rb.Stacked(models)
    ours = theirs = [m.get_initial_state(batch) for m in models]
    results = []
    for t in range(steps):
        x = _inputs(len(models), batch, shape, seed=t)
        y, ours = stacked.step(range(len(models)), x, ours)
        expected, theirs = _alone(models, x, theirs)
        results.append((y, expected, ours, theirs))
    return results


def _assert_close(y, expected, ours, theirs, spikes: bool) -> None:
    if spikes:
        assert torch.equal(y, expected)
    else:
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    for mine, own in zip(ours, theirs, strict=True):
        for a, b in zip(tree_leaves(mine), tree_leaves(own), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NETWORKS)
def test_one_step_equals_each_model_alone(name):
    """One batched step gives each model's own spikes exactly, and outputs and states to float tolerance."""
    ((y, expected, ours, theirs),) = _run_both(name, batch=3, steps=1)
    _assert_close(y, expected, ours, theirs, NETWORKS[name][2])


@pytest.mark.parametrize("name", NETWORKS)
def test_several_steps_in_a_row_stay_equal_to_each_model_alone(name):
    """Ten timesteps, each member's state fed back, stay equal to the models stepped alone."""
    for y, expected, ours, theirs in _run_both(name, batch=2, steps=10):
        _assert_close(y, expected, ours, theirs, NETWORKS[name][2])


@pytest.mark.parametrize(("batch", "name"), [(batch, name) for batch, names in EXACT.items() for name in names])
def test_bit_equal_to_each_model_alone_where_the_arithmetic_is_the_same(batch, name):
    """Where batched and unbatched kernels round alike (measured on this CPU), outputs and states are bit-equal."""
    for y, expected, ours, theirs in _run_both(name, batch=batch, steps=5):
        assert torch.equal(y, expected)
        for mine, own in zip(ours, theirs, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(tree_leaves(mine), tree_leaves(own), strict=True))


@pytest.mark.parametrize("name", ["linear_lif", "cycle", "lstm"])
def test_a_subset_of_members_gives_the_same_as_all(name):
    """Stepping slots [3, 1] gives what stepping all four gives for those two."""
    models, shape = _models(name)
    stacked = rb.Stacked(models)
    states = [m.get_initial_state(2) for m in models]
    x = _inputs(4, 2, shape)
    y_all, new_all = stacked.step(range(4), x, states)
    y_some, new_some = stacked.step([3, 1], x[[3, 1]], [states[3], states[1]])
    assert torch.equal(y_some, y_all[[3, 1]])
    for mine, own in zip(new_some, [new_all[3], new_all[1]], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(mine), tree_leaves(own), strict=True))


def test_refresh_makes_a_members_changed_parameters_count():
    """After a model's weights change, refresh(i, model) makes slot i step with the new weights."""
    models, shape = _models("linear_lif")
    stacked = rb.Stacked(models)
    states = [m.get_initial_state(4) for m in models]
    x = _inputs(4, 4, shape)
    with torch.no_grad():
        models[2].net.runners[0].module.weight.mul_(-2)
    stale, _ = stacked.step(range(4), x, states)
    stacked.refresh(2, models[2])
    fresh, _ = stacked.step(range(4), x, states)
    expected, _ = _alone(models, x, states)
    assert not torch.equal(stale[2], expected[2])
    assert torch.equal(fresh, expected)


def test_each_member_steps_with_its_own_neuron_coefficients():
    """NIR neurons keep their coefficients as buffers: a member whose buffers were loaded with other
    values steps with its own, not the first member's."""
    models, shape = _models("linear_cuba_lif", count=2)
    with torch.no_grad():
        models[1].net.runners[1].v_threshold.fill_(0.25)
        models[1].net.runners[1].decay.fill_(0.5)
    stacked = rb.Stacked(models)
    states = [m.get_initial_state(3) for m in models]
    x = _inputs(2, 3, shape)
    y, ours = stacked.step(range(2), x, states)
    expected, theirs = _alone(models, x, states)
    _assert_close(y, expected, ours, theirs, spikes=True)


def test_refresh_copies_in_place():
    """refresh writes into the existing stacked tensors: no reallocation."""
    models, _ = _models("linear_lif")
    stacked = rb.Stacked(models)
    before = {name: t.data_ptr() for name, t in stacked._tensors.items()}
    stacked.refresh(1, models[3])
    assert {name: t.data_ptr() for name, t in stacked._tensors.items()} == before


def test_refresh_rejects_a_model_of_another_structure():
    """refresh with a model whose parameters have other shapes raises ValueError naming the parameter."""
    models, _ = _models("linear_lif")
    other = rb.Sequential(nn.Linear(12), snn.LIF()).make_model((8,))
    with pytest.raises(ValueError, match=r"'runners\.0\.module\.weight'"):
        rb.Stacked(models).refresh(0, other)


def test_models_for_different_input_shapes_raise_naming_the_difference():
    """A model built for another input shape raises ValueError naming that model and the input shape."""
    a = rb.Sequential(nn.Linear(16), snn.LIF()).make_model((8,))
    b = rb.Sequential(nn.Linear(16), snn.LIF()).make_model((9,))
    with pytest.raises(ValueError, match=r"model 2 differs from model 0 .*input shape"):
        rb.Stacked([a, a, b])


def test_models_with_different_parameter_shapes_raise_naming_the_parameter():
    """Same input shape, other layer width: the ValueError names the module that differs."""
    a = rb.Sequential(nn.Linear(16), snn.LIF()).make_model((8,))
    b = rb.Sequential(nn.Linear(12), snn.LIF()).make_model((8,))
    with pytest.raises(ValueError, match=r"model 1 differs from model 0 .*'runners\.0\.module'"):
        rb.Stacked([a, b])


def test_models_with_different_dtypes_raise_naming_the_tensor():
    """A model in float64 among float32 ones: the ValueError names a tensor and both dtypes."""
    a = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
    b = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,)).double()
    with pytest.raises(ValueError, match=r"'runners\.0\.module\.weight'.*float64.*float32"):
        rb.Stacked([a, b])


def test_models_with_different_neurons_of_equal_shapes_raise():
    """LIF and NoReset hold the same tensors but step differently: the ValueError names the factory."""
    a = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
    b = rb.Sequential(nn.Linear(4), snn.NoReset()).make_model((3,))
    with pytest.raises(ValueError, match=r"'runners\.1'.*factory"):
        rb.Stacked([a, b])


def test_no_models_raise():
    """Stacked needs at least one model."""
    with pytest.raises(ValueError, match="at least one"):
        rb.Stacked([])


def test_len_is_the_number_of_models():
    """len() counts the slots."""
    models, _ = _models("linear_lif", count=3)
    assert len(rb.Stacked(models)) == 3


@pytest.mark.parametrize("name", ["cycle", "lstm", "linear_Adaptive"])
def test_states_come_back_structured_as_the_models_own(name):
    """Each new state has the model's own structure and types, and the model takes it back."""
    models, shape = _models(name, count=2)
    states = [m.get_initial_state(2) for m in models]
    _, new = rb.Stacked(models).step([0, 1], _inputs(2, 2, shape), states)
    _, own = _alone(models, _inputs(2, 2, shape), states)
    for mine, theirs, model in zip(new, own, models, strict=True):
        assert rb.named_leaves(mine).keys() == rb.named_leaves(theirs).keys()
        assert type(mine) is type(theirs)
        out, _ = model(torch.rand(3, 2, *shape), mine)
        assert out.shape[:2] == (3, 2)


def test_step_runs_without_autograd():
    """step is inference: its outputs need no gradient even from trainable parameters."""
    models, shape = _models("linear_lif", count=2)
    y, states = rb.Stacked(models).step([0, 1], _inputs(2, 1, shape), [m.get_initial_state(1) for m in models])
    assert not y.requires_grad and not states[0][1].v.requires_grad


def test_step_does_not_change_the_models():
    """The models keep their own parameters: the stack holds copies."""
    models, shape = _models("linear_lif", count=2)
    before = [p.clone() for p in models[0].parameters()]
    stacked = rb.Stacked(models)
    stacked.step([0, 1], _inputs(2, 1, shape), [m.get_initial_state(1) for m in models])
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), before, strict=True))
