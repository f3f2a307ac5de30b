"""Networks written for rnnbuilder 0.1.1: stacks of unlike shapes, networks inside cycles, the
original's keywords and names, and layers built in the order they were defined."""

from __future__ import annotations

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn
from tests.helpers import CONV_IN, conv_input, defined_apart_from_topology, spiking_convolution

# Stacks of unlike shapes


def test_stack_of_image_and_vector_flattens_both():
    """A (64, 8, 6) image stacked with a (512,) vector is their flattened values end to end: (3584,)."""
    n = rb.Network()
    n.image = n.input.apply(nn.Unflatten(0, (64, 8, 6)))
    n.vector = n.input.apply(nn.Linear(512))
    n.output = n.image.stack(n.vector)
    model = n.make_model((64 * 8 * 6,))
    x = torch.rand(3, 2, 64 * 8 * 6)
    out, _ = model(x)
    assert model.out_shape == (3584,)
    assert torch.equal(out[..., :3072], x)
    assert torch.equal(out[..., 3072:], model.net.layers["vector"].module(x))


def test_stack_of_fewer_dims_counts_leading_ones():
    """(4, 3) stacked with (2, 4, 3) is (3, 4, 3): the first input counts as (1, 4, 3)."""
    n = rb.Network()
    n.small = n.input.apply(nn.Linear(12), nn.Unflatten(0, (4, 3)))
    n.big = n.input.apply(nn.Linear(24), nn.Unflatten(0, (2, 4, 3)))
    n.output = n.small.stack(n.big)
    model = n.make_model((5,))
    x = torch.rand(2, 3, 5)
    out, _ = model(x)
    small, big = model.net.layers["small"], model.net.layers["big"]
    assert model.out_shape == (3, 4, 3)
    assert torch.equal(out[:, :, 0], small.sequence(x, ((), ()))[0])
    assert torch.equal(out[:, :, 1:], big.sequence(x, ((), ()))[0])


def test_stack_with_matching_trailing_dims_concatenates_along_the_first():
    """(2, 4) stacked with (3, 4) is (5, 4): concatenated along the first data dim, as before."""
    n = rb.Network()
    n.a = n.input.apply(nn.Unflatten(0, (2, 4)))
    n.b = n.input.apply(nn.Linear(12), nn.Unflatten(0, (3, 4)))
    n.output = n.a.stack(n.b)
    model = n.make_model((8,))
    x = torch.rand(2, 1, 8)
    out, _ = model(x)
    assert model.out_shape == (5, 4)
    assert torch.equal(out[:, :, :2], x.reshape(2, 1, 2, 4))


def test_spiking_convolution_example_builds_with_a_3584_input_readout():
    """The original's spiking-convolution example builds: its recurrent Linear takes 3,072 + 512 inputs."""
    model = spiking_convolution().make_model(CONV_IN)
    linear = model.net.runners[1].layers["output"].runners[0].module
    assert linear.in_features == 3584 and linear.out_features == 512
    assert model.out_shape == (3,)


def test_spiking_convolution_example_runs_forward_and_backward():
    """Forward gives (time, batch, 3) and backward reaches the first convolution's weights."""
    model = spiking_convolution().make_model(CONV_IN)
    out, _ = model(conv_input(6))
    out.sum().backward()
    assert out.shape == (6, 2, 3)
    assert model.net.runners[0].runners[0].conv.weight.grad is not None


def test_spiking_convolution_example_continues_exactly_across_chunks():
    """Eight timesteps at once equal 3 + 1 + 4 timesteps with the state passed on."""
    model = spiking_convolution().make_model(CONV_IN)
    x = conv_input(8)
    with torch.no_grad():
        whole, _ = model(x)
        parts, state = [], None
        for chunk in x.split([3, 1, 4]):
            out, state = model(chunk, state)
            parts.append(out)
    assert torch.equal(whole, torch.cat(parts))


# Networks inside placeholder cycles


def inner_network(width: int = 7) -> rb.Network:
    inner = rb.Network()
    inner.output = inner.input.apply(nn.Linear(width), snn.LIF())
    return inner


def test_network_in_a_cycle_gets_its_fixed_output_size():
    """A Network whose output size its layers fix (Linear(7)) can close a placeholder cycle."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(inner_network(7))
    model = n.make_model((4,))
    out, _ = model(torch.rand(5, 2, 4))
    assert model.out_shape == (7,) and out.shape == (5, 2, 7)


def test_network_in_a_cycle_equals_its_layers_written_inline():
    """The inner network in the cycle computes what its Linear and LIF inlined into the cycle do."""
    torch.manual_seed(0)
    nested = rb.Network()
    nested.output = rb.Placeholder()
    nested.output = nested.input.stack(nested.output).apply(inner_network(6))
    flat = rb.Network()
    flat.output = rb.Placeholder()
    flat.output = flat.input.stack(flat.output).apply(nn.Linear(6), snn.LIF())
    a, b = nested.make_model((3,)), flat.make_model((3,))
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            q.copy_(p)
    x = torch.rand(12, 2, 3) * 2
    assert torch.equal(a(x)[0], b(x)[0])


def test_network_in_a_cycle_with_input_dependent_size_names_the_placeholder():
    """An inner network whose size follows its input can't close a cycle; the error names the placeholder."""
    inner = rb.Network()
    inner.output = inner.input.apply(snn.LIF())
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(inner)
    with pytest.raises(rb.GraphError, match="'output'"):
        n.make_model((4,))


# The original's keywords and names


def test_apply_takes_a_placeholder_on_a_layer():
    """layer.apply(..., placeholder=p) assigns p the new layer, as Layer(..., placeholder=p) does."""
    n = rb.Network()
    n.feedback = rb.Placeholder()
    n.hidden = n.input.apply(nn.Linear(4))
    n.output = n.hidden.apply(nn.Linear(3), placeholder=n.feedback)
    n.mix = n.feedback.apply(nn.Linear(2))
    assert n.feedback.layer is n.output


@pytest.mark.parametrize("combine", ["stack", "sum", "append"])
def test_apply_takes_a_placeholder_on_a_combination(combine):
    """Stack, Sum and List inputs take apply(..., placeholder=p) too."""
    n = rb.Network()
    n.output = rb.Placeholder()
    combined = getattr(n.input, combine)(n.input)
    factory = nn.Bilinear(3) if combine == "append" else nn.Linear(3)
    layer = combined.apply(factory, placeholder=n.output)
    assert n.output.layer is layer


def test_sequential_takes_a_list_of_factories():
    """Sequential([a, b]) is Sequential(a, b)."""
    model = rb.Sequential([nn.Linear(4), snn.LIF()]).make_model((3,))
    assert model.out_shape == (4,)
    assert len(model.net.runners) == 2


def test_sequential_takes_a_generator_of_factories():
    """Sequential(f for f in ...) takes every factory the generator gives."""
    model = rb.Sequential(nn.Linear(w) for w in (5, 4, 3)).make_model((2,))
    assert [r.module.out_features for r in model.net.runners] == [5, 4, 3]


def test_layer_takes_a_generator_of_factories():
    """Layer(input, generator) applies every factory in order."""
    n = rb.Network()
    n.output = rb.Layer(n.input, (f for f in (nn.Linear(4), nn.Linear(2))))
    assert n.make_model((3,)).out_shape == (2,)


def test_model_takes_the_state_as_h():
    """model(x, h=state) is model(x, state), rnnbuilder 0.1.1's keyword."""
    model = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
    x = torch.rand(6, 2, 3) * 3
    _, state = model(x[:3])
    assert torch.equal(model(x[3:], h=state)[0], model(x[3:], state)[0])


def test_model_refuses_the_state_given_twice():
    """Giving both state and h is a TypeError, not a silent choice."""
    model = snn.LIF().make_model((3,))
    state = model.get_initial_state(2)
    with pytest.raises(TypeError, match="not both"):
        model(torch.rand(1, 2, 3), state, h=state)


def test_base_module_has_the_original_base_classes():
    """rnnbuilder.base names ModuleFactory, LayerInput, LayerBase, InputBase and OuterModule."""
    n = rb.Network()
    n.output = n.input.apply(nn.Linear(2))
    assert isinstance(nn.Linear(2), rb.base.ModuleFactory)
    assert isinstance(n.output, rb.base.LayerBase) and isinstance(n.output, rb.base.LayerInput)
    assert isinstance(n.input.sum(n.input), rb.base.InputBase)
    assert isinstance(n.make_model((3,)), rb.base.OuterModule)


# Definition order


def test_layers_are_built_in_definition_order():
    """With one seed, the first-defined layer draws its weights first, as torch modules made in that order do."""
    torch.manual_seed(0)
    model = defined_apart_from_topology().make_model((4,))
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 3), torch.nn.Linear(6, 2)
    assert torch.equal(model.net.layers["x"].module.weight, first.weight)
    assert torch.equal(model.net.layers["output"].module.weight, second.weight)


def test_parameters_are_listed_in_definition_order():
    """parameters() lists the first-defined layer's first, so index-based weight copies line up."""
    model = defined_apart_from_topology().make_model((4,))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(3, 4), (3,), (2, 6), (2,)]


def test_definition_order_survives_a_description():
    """A network rebuilt from its description builds its layers in the same order: same seed, same weights."""
    net = defined_apart_from_topology()
    torch.manual_seed(3)
    a = net.make_model((4,))
    torch.manual_seed(3)
    b = rb.spec.from_spec(rb.spec.to_spec(net)).make_model((4,))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
