"""Spec of the neuron behaviours that code ported from rnnbuilder 0.1.1 relies on.

- Spikes and final states a neuron layer returns stay ordinary tensors after ``backward()``, on
  every backend, and keep their values while the fused backends reuse memory at later steps.
- ``spike_function`` takes any callable, as the original does; one that isn't a ``Surrogate`` runs
  the step loop through autograd (its gradient is its own) and can't be described as data.
- A placeholder fed by LIF, NoReset or Adaptive starts at the spike of the initial membrane,
  ``spike_function(initial_v - 1)``, differentiable in ``initial_v``.
"""

from __future__ import annotations

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn, spec
from rnnbuilder.errors import SpecError
from rnnbuilder.snn import fused
from tests.helpers import RefSpike

NEURONS = [snn.LIF, snn.NoReset, snn.Adaptive, snn.Cooldown]
BACKENDS = [
    "torch",
    pytest.param(
        "triton",  # on CPU tensors: Triton's interpreter
        marks=pytest.mark.skipif(not fused.triton_available(), reason="needs triton"),
    ),
]


def linear_neuron_model(neuron: type, seed: int = 0, **kwargs):
    """Sequential(Linear(10), neuron) for inputs of 4 features."""
    torch.manual_seed(seed)
    return rb.Sequential(nn.Linear(10), neuron(**kwargs)).make_model((4,))


def inputs(seed: int, steps: int = 6, batch: int = 3) -> torch.Tensor:
    return 2 * torch.rand(steps, batch, 4, generator=torch.Generator().manual_seed(seed))


def leaves(state) -> list[torch.Tensor]:
    """The tensors of a (nested tuple) state, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in leaves(part)]


def gradients(model, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(spikes, input gradient, parameter gradients...) of a loss on the spikes and final state."""
    model.zero_grad()
    xs = xs.clone().requires_grad_(True)
    out, state = model(xs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    loss = (out * weights).sum() + sum(f.sum() for f in leaves(state))
    loss.backward()
    return (out.detach(), xs.grad, *(p.grad for p in model.parameters()))


# --------------------------------------------------------------------------------------------
# Outputs after backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", NEURONS, ids=lambda n: n.__name__)
def test_spikes_stay_usable_after_backward(neuron, backend):
    """After backward() the spikes work in further computations, with gradient mode on."""
    model = linear_neuron_model(neuron)
    with fused.use_backend(backend):
        out, _ = model(inputs(0))
    expected = out.detach().clone()
    out.sum().backward()
    accuracy = out.sum(0).argmax(1)
    assert torch.equal(accuracy, expected.sum(0).argmax(1))
    assert torch.equal((out * 2).detach(), expected * 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", NEURONS, ids=lambda n: n.__name__)
def test_final_state_stays_usable_after_backward(neuron, backend):
    """After backward() every final state tensor works in further computations."""
    model = linear_neuron_model(neuron)
    with fused.use_backend(backend):
        out, state = model(inputs(1))
    fields = leaves(state)
    expected = [f.detach().clone() for f in fields]
    out.sum().backward()
    for field, value in zip(fields, expected):
        assert torch.equal((field + 1).detach(), value + 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", NEURONS, ids=lambda n: n.__name__)
def test_outputs_kept_over_training_steps_keep_their_values(neuron, backend):
    """Spikes and states kept from 3 optimizer steps still hold their values afterwards (memory
    that the backends reuse is never memory that something still refers to)."""
    model = linear_neuron_model(neuron)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    kept, copies = [], []
    for step in range(3):
        optimizer.zero_grad()
        x = inputs(10 + step).requires_grad_(True)
        with fused.use_backend(backend):
            out, state = model(x)
        kept.append((out, *leaves(state), x))
        copies.append([t.detach().clone() for t in kept[-1][:-1]])
        (out.sum() + sum(t.sum() for t in kept[-1][1:-1])).backward()
        copies[-1].append(x.grad.clone())
        optimizer.step()
    for tensors, values in zip(kept, copies):
        *outputs, x = tensors
        for tensor, value in zip([*outputs, x.grad], values):
            assert torch.equal(tensor.detach(), value)
        assert outputs[0].sum(0).argmax(1).shape == (3,)


# --------------------------------------------------------------------------------------------
# Any callable as spike function
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("neuron", [*NEURONS, snn.Discontinuous], ids=lambda n: n.__name__)
def test_any_callable_is_accepted_as_spike_function(neuron):
    """A plain function and a custom autograd function's apply are accepted and give the spikes
    the built-in surrogate gives."""
    xs = inputs(2)
    expected = linear_neuron_model(neuron)(xs)[0]
    for spike in (lambda v: (v > 0).float(), RefSpike.apply):
        assert torch.equal(linear_neuron_model(neuron, spike_function=spike)(xs)[0], expected)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("neuron", [*NEURONS, snn.Discontinuous], ids=lambda n: n.__name__)
def test_custom_spike_function_gradient_comes_from_its_own_backward(neuron, backend):
    """Whatever backend is chosen, a custom callable runs the step loop through autograd: the
    gradients equal those of the built-in surrogate that has the same pseudo-derivative."""
    xs = inputs(3)
    with fused.use_backend("reference"):
        expected = gradients(linear_neuron_model(neuron, spike_function=snn.SpikeLinear(0.3)), xs)
    with fused.use_backend(backend):
        got = gradients(linear_neuron_model(neuron, spike_function=RefSpike.apply), xs)
    assert torch.equal(got[0], expected[0])
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b)


def test_custom_spike_function_takes_the_reference_backend():
    """resolve_backend picks the step loop for a spike function that isn't a Surrogate."""
    xs = torch.rand(5, 2, 3)
    for backend in ("auto", "torch", "triton", "reference"):
        assert fused.resolve_backend(xs, RefSpike.apply, backend) == "reference"
    assert fused.resolve_backend(xs, snn.SpikeLinear(), "auto") == "torch"


@pytest.mark.parametrize("value", [1.0, "SpikeLinear", None, snn.SpikeLinear], ids=repr)
@pytest.mark.parametrize("neuron", [*NEURONS, snn.Discontinuous], ids=lambda n: n.__name__)
def test_non_callable_spike_function_is_refused(neuron, value):
    """A spike function that isn't callable (or is a class) raises a TypeError saying what is accepted."""
    with pytest.raises(TypeError, match="Surrogate such as snn.SpikeLinear.*or another callable"):
        neuron(spike_function=value)


def test_to_spec_refuses_a_custom_spike_function():
    """to_spec names the layer's spike_function and lists the registered surrogates to use instead."""
    factory = rb.Sequential(nn.Linear(10), snn.LIF(spike_function=RefSpike.apply))
    with pytest.raises(SpecError) as caught:
        spec.to_spec(factory)
    assert caught.value.path == "root.factories[1].args.spike_function"
    for name in spec.default_registry.surrogate_names():
        assert name in str(caught.value)


def test_to_spec_of_a_custom_spike_function_lists_the_registry_in_use():
    """With a registry given, the surrogates listed are that registry's."""
    registry = spec.builtin_registry()
    registry.register("my.Box", snn.StraightThrough)
    network = rb.Network()
    network.output = network.input.apply(snn.Discontinuous(spike_function=lambda v: (v > 0).float()))
    with pytest.raises(SpecError, match="my.Box") as caught:
        spec.to_spec(network, registry)
    assert caught.value.path.endswith(".factories[0].args.spike_function")


# --------------------------------------------------------------------------------------------
# Initial output: the spike of the initial membrane
# --------------------------------------------------------------------------------------------


def recurrent_model(neuron: type):
    """output = neuron(Linear(4)(stack(input, previous output))), for inputs of 2 features."""
    network = rb.Network()
    network.output = rb.Placeholder()
    network.output = network.input.stack(network.output).apply(nn.Linear(4), neuron())
    return network.make_model((2,))


def initial_v(model) -> torch.nn.Parameter:
    return next(p for name, p in model.named_parameters() if name.endswith("initial_v"))


@pytest.mark.parametrize("neuron", [snn.LIF, snn.NoReset, snn.Adaptive], ids=lambda n: n.__name__)
def test_placeholder_starts_at_the_spike_of_the_initial_membrane(neuron):
    """A placeholder fed by LIF, NoReset or Adaptive starts at H(initial_v - 1), as in the original."""
    model = recurrent_model(neuron)
    with torch.no_grad():
        initial_v(model).copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
    start = model.get_initial_state(3)["placeholders"]["output"]
    assert start.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 3


@pytest.mark.parametrize("neuron", [snn.LIF, snn.NoReset, snn.Adaptive], ids=lambda n: n.__name__)
def test_initial_output_is_differentiable_in_the_initial_membrane(neuron):
    """The initial output's gradient reaches initial_v through the surrogate: batch * 0.3 * max(0, 1 - |v - 1|)."""
    model = neuron().make_model((4,))
    v = initial_v(model)
    with torch.no_grad():
        v.copy_(torch.tensor([1.5, 0.5, 2.5, 1.0]))
    model.net.initial_output(3, torch.device("cpu"), torch.float64).sum().backward()
    assert v.grad.tolist() == pytest.approx([3 * 0.15, 3 * 0.15, 0.0, 3 * 0.3])
