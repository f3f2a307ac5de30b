"""Networks: graph building, placeholders and cycles, and the misuse messages."""

import math

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import custom, nn, snn
from rnnbuilder.initial import Constant
from tests.helpers import interlocking_cycles


class Hadamard(torch.nn.Module):
    def forward(self, inputs):
        return inputs[0] * inputs[1]


HadamardFactory = custom.register_non_recurrent(module_class=Hadamard, flatten_input=False, shape_change=False)


class BatchSizeProbe(torch.nn.Module):
    """Identity that records the batch sizes it was called with."""

    seen: list[int] = []

    def forward(self, x):
        BatchSizeProbe.seen.append(x.shape[0])
        return x


ProbeFactory = custom.register_non_recurrent(module_class=BatchSizeProbe, flatten_input=False, shape_change=False)


def recurrent_lif_network(hidden=16):
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(hidden), snn.LIF(tau=5))
    return n


def lif_by_hand(x, current, shape, tau):
    """The spikes of s_t = LIF(current(x_t, s_{t-1})): v = beta v + current, s = H(v - 1), v = v - s."""
    beta, v, s, spikes = math.exp(-1 / tau), torch.zeros(shape), torch.zeros(shape), []
    for x_t in x:
        v = beta * v + current(x_t, s)
        s = (v - 1 > 0).float()
        v = v - s
        spikes.append(s)
    return torch.stack(spikes)


def test_placeholder_cycle_equals_hand_written_recurrence():
    """A placeholder cycle computes s_t = LIF(W [x_t, s_{t-1}] + b), step by step."""
    torch.manual_seed(0)
    model = recurrent_lif_network().make_model((4,))
    linear = model.net.layers["output"].runners[0].module
    x = torch.rand(30, 3, 4) * 2
    out, _ = model(x)
    expected = lif_by_hand(x, lambda x_t, s: linear(torch.cat([x_t, s], dim=1)), (3, 16), tau=5)
    assert torch.equal(out, expected)
    assert out.sum() > 0


def test_image_shaped_cycle_equals_hand_written_recurrence():
    """A cycle over (channels, height, width) data keeps its shape at every step: s_t = LIF(conv(x_t + s_{t-1}))."""
    torch.manual_seed(5)
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.sum(n.output).apply(nn.Conv2d(1, 3, padding=1), snn.LIF(tau=4))
    model = n.make_model((1, 5, 6))
    conv = model.net.layers["output"].runners[0].module
    x = torch.rand(12, 3, 1, 5, 6)
    out, _ = model(x)
    assert torch.equal(out, lif_by_hand(x, lambda x_t, s: conv(x_t + s), (3, 1, 5, 6), tau=4))
    assert out.sum() > 0


def test_cycle_member_read_after_the_cycle_has_every_timestep():
    """A node after the cycle that reads an inner node of the cycle (not its layer) gets that node's whole sequence."""
    torch.manual_seed(6)
    n = rb.Network()
    n.spikes = rb.Placeholder()
    n.joined = n.input.stack(n.spikes)
    n.spikes = n.joined.apply(nn.Linear(5), snn.LIF())
    n.output = n.joined.apply(nn.Identity())
    model = n.make_model((2,))
    x = torch.rand(9, 4, 2) * 3
    out, state = model(x)
    _, spikes = model.configure(full_state=True)(x)
    assert torch.equal(out[:, :, :2], x)
    assert torch.equal(out[1:, :, 2:], spikes["placeholders"]["spikes"][:-1])
    assert out[:, :, 2:].sum() > 0


def test_recurrent_network_continues_exactly_from_state():
    """100 steps of a recurrent network equal 40 then 60 with the state carried."""
    torch.manual_seed(1)
    model = rb.Sequential(recurrent_lif_network(), nn.Linear(3)).make_model((4,))
    x = torch.rand(100, 5, 4) * 2
    whole, _ = model(x)
    first, state = model(x[:40])
    rest, _ = model(x[40:], state)
    assert torch.equal(whole, torch.cat([first, rest]))


def test_acyclic_parts_run_over_the_whole_sequence_and_cycles_step_by_step():
    """Layers outside a cycle see time and batch merged; layers inside see one timestep."""
    n = rb.Network()
    n.pre = n.input.apply(ProbeFactory())
    n.h = rb.Placeholder()
    n.h = n.pre.stack(n.h).apply(nn.Linear(6), ProbeFactory(), snn.LIF())
    n.output = n.h
    BatchSizeProbe.seen.clear()
    n.make_model((4,))(torch.rand(7, 2, 4))
    assert BatchSizeProbe.seen == [14] + [2] * 7


def test_placeholder_outside_a_cycle_is_the_delayed_layer_output():
    """A placeholder whose layer doesn't read it is that layer's output shifted by one step."""
    n = rb.Network()
    n.prev = rb.Placeholder()
    n.output = n.input.stack(n.prev)
    n.prev = n.input.apply(nn.Identity())
    model = n.make_model((2,))
    x = torch.arange(12.0).reshape(3, 2, 2)
    out, state = model(x)
    assert torch.equal(out[:, :, 2:], torch.cat([torch.zeros(1, 2, 2), x[:-1]]))
    assert torch.equal(state["placeholders"]["prev"], x[-1])


def test_placeholder_initial_value_is_used():
    """Placeholder(initial_value=...) sets what the placeholder holds before the first step."""
    n = rb.Network()
    n.output = rb.Placeholder(initial_value=Constant(0.25))
    n.output = n.input.sum(n.output).apply(nn.Identity())
    out, _ = n.make_model((3,))(torch.zeros(2, 1, 3))
    assert out[0].tolist() == [[0.25] * 3]
    assert out[1].tolist() == [[0.25] * 3]


def test_placeholder_initial_value_accepts_a_plain_callable():
    """Any callable from (batch, *shape) to a tensor works as initial value."""
    n = rb.Network()
    n.output = rb.Placeholder(initial_value=torch.ones)
    n.output = n.input.stack(n.output).apply(nn.Linear(2), nn.Identity())
    state = n.make_model((1,)).get_initial_state(4)
    assert torch.equal(state["placeholders"]["output"], torch.ones(4, 2))


def test_placeholder_default_is_the_neuron_initial_output():
    """Without initial_value, a placeholder of a Cooldown layer starts at Cooldown's initial output."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(4), snn.Cooldown())
    state = n.make_model((2,)).get_initial_state(1)
    assert state["placeholders"]["output"].tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_layer_with_explicit_placeholder_argument():
    """Layer(input, factories, placeholder=p) assigns p, like n.name = Placeholder() then n.name = layer."""
    n = rb.Network()
    p = rb.Placeholder()
    n.output = rb.Layer(n.input.stack(p), [nn.Linear(3), snn.LIF()], placeholder=p)
    torch.manual_seed(2)
    a, _ = n.make_model((2,))(torch.rand(5, 1, 2))
    torch.manual_seed(2)
    b, _ = recurrent_lif_network(3).make_model((2,))(torch.rand(5, 1, 2))
    assert torch.equal(a, b)


def test_lstm_from_network_primitives_equals_the_lstm_equations():
    """An LSTM built from gates, a cell placeholder and a Hadamard module equals hand-written LSTM math."""
    hidden = 5
    n = rb.Network()
    n.h = rb.Placeholder()
    n.c = rb.Placeholder()
    both = n.input.stack(n.h)
    n.i = both.apply(nn.Linear(hidden), nn.Sigmoid())
    n.f = both.apply(nn.Linear(hidden), nn.Sigmoid())
    n.o = both.apply(nn.Linear(hidden), nn.Sigmoid())
    n.g = both.apply(nn.Linear(hidden), nn.Tanh())
    n.c = n.f.append(n.c).apply(HadamardFactory()).sum(n.i.append(n.g).apply(HadamardFactory()))
    n.output = n.o.append(n.c.apply(nn.Tanh())).apply(HadamardFactory())
    n.h = n.output
    torch.manual_seed(3)
    model = n.make_model((3,))
    gate = {name: model.net.layers[name].runners[0].module for name in "ifog"}
    x = torch.randn(12, 2, 3)
    out, _ = model(x)
    h, c, expected = torch.zeros(2, hidden), torch.zeros(2, hidden), []
    for x_t in x:
        xh = torch.cat([x_t, h], dim=1)
        i, f, o = (torch.sigmoid(gate[k](xh)) for k in "ifo")
        g = torch.tanh(gate["g"](xh))
        c = f * c + i * g
        h = o * torch.tanh(c)
        expected.append(h)
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-6)


def test_network_nested_in_a_layer_of_another_network():
    """A Network is a factory: it can be applied inside another network's layer."""
    inner = recurrent_lif_network(4)
    n = rb.Network()
    n.output = n.input.apply(inner, nn.Linear(2))
    model = n.make_model((3,))
    out, state = model(torch.rand(6, 2, 3))
    assert out.shape == (6, 2, 2)
    assert set(state["layers"]["output"][0]["placeholders"]) == {"output"}


def test_every_make_model_gives_independent_parameters():
    """Factories are specifications: two models from one factory share no parameters."""
    factory = recurrent_lif_network()
    a, b = factory.make_model((4,)), factory.make_model((4,))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert pa.data_ptr() != pb.data_ptr()
    assert not torch.equal(
        a.net.layers["output"].runners[0].module.weight, b.net.layers["output"].runners[0].module.weight
    )


def test_stack_concatenates_along_the_first_data_dim():
    """Stack of (2, 4, 4) and (3, 4, 4) images gives (5, 4, 4) channels."""
    n = rb.Network()
    n.a = n.input.apply(nn.Conv2d(2, 3, padding=1))
    n.b = n.input.apply(nn.Conv2d(3, 3))
    n.output = rb.Stack(n.a, n.b.apply(nn.Upsample(scale_factor=2.0)))
    assert n.make_model((1, 4, 4)).out_shape == (5, 4, 4)


def test_network_without_output_layer_is_rejected():
    """A Network needs a layer named 'output'; the message says how to add one."""
    n = rb.Network()
    n.hidden = n.input.apply(nn.Linear(3))
    with pytest.raises(rb.GraphError, match="no layer named 'output'.*n.output = "):
        n.make_model((2,))


def test_unassigned_placeholder_is_rejected():
    """A placeholder that never gets a layer is named in the error."""
    n = rb.Network()
    n.memory = rb.Placeholder()
    n.output = n.input.stack(n.memory).apply(nn.Linear(3))
    with pytest.raises(rb.GraphError, match="placeholder 'memory' was never assigned"):
        n.make_model((2,))


def test_sum_of_different_shapes_is_rejected():
    """A sum of (3,) and (4,) names both layers and their shapes."""
    n = rb.Network()
    n.a = n.input.apply(nn.Linear(3))
    n.b = n.input.apply(nn.Linear(4))
    n.output = n.a.sum(n.b)
    with pytest.raises(rb.ShapeError, match=r"'a' gives \(3,\), 'b' gives \(4,\)"):
        n.make_model((2,))


def test_stack_of_mismatched_images_is_flattened():
    """Stacking (1, 4, 4) with (1, 2, 2) flattens both: (20,), the first's 16 values then the second's 4."""
    n = rb.Network()
    n.small = n.input.apply(nn.MaxPool2d(2))
    n.output = n.input.stack(n.small)
    model = n.make_model((1, 4, 4))
    x = torch.rand(3, 2, 1, 4, 4)
    out, _ = model(x)
    small = torch.nn.functional.max_pool2d(x.flatten(0, 1), 2).reshape(3, 2, 4)
    assert model.out_shape == (20,)
    assert torch.equal(out, torch.cat([x.flatten(2), small], dim=2))


def test_layer_shape_error_names_the_layer():
    """A factory that can't take its input shape is reported with the layer's name."""
    n = rb.Network()
    n.output = n.input.apply(nn.Conv2d(4, 3))
    with pytest.raises(rb.ShapeError, match="layer 'output'.*Conv2d"):
        n.make_model((64,))


def test_cycle_of_unknown_size_is_rejected():
    """A cycle that never fixes its size asks for a layer of fixed size."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.output.apply(snn.LIF())
    with pytest.raises(rb.GraphError, match="cannot infer the shape of placeholder.*nn.Linear"):
        n.make_model((2,))


def test_network_attributes_must_be_layers():
    """Assigning a factory instead of a layer says how to build a layer."""
    n = rb.Network()
    with pytest.raises(rb.GraphError, match=r"n.input.apply"):
        n.output = nn.Linear(3)


def test_network_input_cannot_be_reassigned():
    """n.input is fixed."""
    n = rb.Network()
    with pytest.raises(rb.GraphError, match="can't be reassigned"):
        n.input = n.input.apply(nn.Linear(2))


def test_unknown_layer_lists_the_known_ones():
    """Reading a missing layer lists the layers the network has."""
    n = rb.Network()
    n.hidden = n.input.apply(nn.Linear(3))
    with pytest.raises(AttributeError, match="no layer 'hiden'.*hidden"):
        n.hiden  # noqa: B018


def test_layer_from_another_network_input_is_rejected():
    """Reading another network's input is caught when building."""
    n, other = rb.Network(), rb.Network()
    n.output = other.input.apply(nn.Linear(2))
    with pytest.raises(rb.GraphError, match="input of another Network"):
        n.make_model((2,))


def test_layer_needs_factories():
    """n.input.apply() with nothing, or with a non-factory, is rejected."""
    n = rb.Network()
    with pytest.raises(rb.GraphError, match="at least one factory"):
        n.input.apply()
    with pytest.raises(rb.GraphError, match="factories such as"):
        n.input.apply(torch.nn.Linear(2, 2))


def test_two_cycles_sharing_a_layer_run_as_one_cycle():
    """Two placeholder cycles through a shared layer form one step-by-step block, in dependency order."""
    torch.manual_seed(4)
    model = interlocking_cycles().make_model((3,))
    assert len(model.net.cycles) == 1
    x = torch.rand(30, 2, 3) * 3
    whole, _ = model(x)
    first, state = model(x[:12])
    rest, _ = model(x[12:], state)
    assert torch.equal(whole, torch.cat([first, rest]))
    assert whole.sum() > 0
