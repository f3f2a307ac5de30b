"""Custom modules as rnnbuilder 0.1.1 documents them: constructor arguments, ``unroll_full_state``
and ``_full_state``, inferred output shapes, ``self.device``, and the LSTM of examples/lstm.py."""

import math

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import custom, spec
from rnnbuilder.errors import ShapeError, SpecError
from tests.helpers import VectorState
from tests.original_networks import ours

# --- constructor arguments -------------------------------------------------------------------


class Accumulate(VectorState):
    """y_t = y_{t-1} + scale * x_t, scale the product of the positional factors and the ``times`` keyword."""

    def __init__(self, *factors, **options):
        super().__init__()
        self.scale = math.prod(factors) * options.get("times", 1)

    def forward(self, x, state):
        y = state + self.scale * x
        return y, y


class Multiply(torch.nn.Module):
    """x * the product of the positional factors and the ``times`` keyword."""

    def __init__(self, *factors, **options):
        super().__init__()
        self.factor = math.prod(factors) * options.get("times", 1)

    def forward(self, x):
        return x * self.factor


class Sized(torch.nn.Module):
    """Needs ``n``; takes more positional arguments and keywords."""

    def __init__(self, n: int, *rest, scale: float = 1.0, **options):
        super().__init__()

    def forward(self, x):
        return x


AccumulateFactory = custom.register_recurrent(module_class=Accumulate, flatten_input=False, single_step=True)
MultiplyFactory = custom.register_non_recurrent(module_class=Multiply, flatten_input=False, shape_change=False)
SizedFactory = custom.register_non_recurrent(module_class=Sized, flatten_input=False, shape_change=False)


class Tanhish(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)


TanhishFactory = custom.register_non_recurrent(module_class=Tanhish, flatten_input=False, shape_change=False)


def test_register_recurrent_passes_positional_and_keyword_arguments_through():
    """A recurrent factory's *args and **kwargs reach the module's constructor as given."""
    out, _ = AccumulateFactory(2, 3, times=4).make_model((1,))(torch.ones(2, 1, 1))
    assert out.flatten().tolist() == [24.0, 48.0]


def test_register_non_recurrent_passes_positional_and_keyword_arguments_through():
    """A stateless factory's *args and **kwargs reach the module's constructor as given."""
    out, _ = MultiplyFactory(2, times=3).make_model((1,))(torch.ones(1, 1, 1))
    assert out.item() == 6.0


def test_arguments_the_constructor_refuses_fail_at_once():
    """A factory checks its arguments against the module's signature when it is made."""
    with pytest.raises(TypeError, match="SizedFactory"):
        SizedFactory(scale=2.0)


def test_factory_repr_shows_the_arguments_as_given():
    """A factory with *args and **kwargs shows them like the call that made it."""
    assert repr(AccumulateFactory(2, 3, times=4)) == "AccumulateFactory(2, 3, times=4)"


def test_factories_with_the_same_arguments_are_equal():
    """Factories compare by the arguments the module gets, however they were passed."""
    assert SizedFactory(3, 4, extra=1) == SizedFactory(3, 4, extra=1)
    assert SizedFactory(3, scale=2.0) == SizedFactory(n=3, scale=2.0)
    assert SizedFactory(3, 4) != SizedFactory(3, 5)
    assert SizedFactory(3, extra=1) != SizedFactory(3, extra=2)


def test_extra_keyword_arguments_travel_by_name_in_a_description():
    """Keywords a module's **kwargs takes are described by name and read back as JSON values."""
    registry = spec.builtin_registry()
    registry.register("test.Sized", SizedFactory)
    description = spec.to_spec(SizedFactory(3, scale=2.0, times=[1, 2], label="a"), registry)
    assert description["root"]["args"] == {"n": 3, "scale": 2.0, "times": [1, 2], "label": "a"}
    assert spec.from_spec(description, registry) == SizedFactory(3, scale=2.0, times=[1, 2], label="a")


def test_extra_positional_arguments_cannot_be_described():
    """to_spec refuses *args extras at their path, saying to pass them by keyword."""
    registry = spec.builtin_registry()
    registry.register("test.Sized", SizedFactory)
    with pytest.raises(SpecError, match="by keyword") as caught:
        spec.to_spec(SizedFactory(3, 4), registry)
    assert caught.value.path == "root.args.rest"


def test_unknown_argument_names_are_refused_without_var_keyword():
    """A description naming an argument that a module without **kwargs lacks is refused at its path."""
    registry = spec.builtin_registry()
    registry.register("test.Tanhish", TanhishFactory)
    with pytest.raises(SpecError) as caught:
        spec.from_spec({"format": spec.FORMAT, "root": {"type": "test.Tanhish", "args": {"gain": 1}}}, registry)
    assert caught.value.path == "root.args.gain"


# --- unroll_full_state=False: final state unless _full_state ------------------------------------


class LeakySequence(VectorState):
    """y_t = decay * y_{t-1} + x_t over a whole sequence; every step's state only when ``_full_state``."""

    def __init__(self, decay: float = 0.5):
        super().__init__()
        self.decay = decay
        self.seen_full_state = []

    def forward(self, x, state):
        self.seen_full_state.append(self._full_state)
        outputs = []
        for x_t in x:
            state = self.decay * state + x_t
            outputs.append(state)
        y = torch.stack(outputs)
        return y, (y if self._full_state else state)


class AlwaysEveryStep(LeakySequence):
    """Ignores ``_full_state``: always returns the state of every step."""

    def forward(self, x, state):
        y, _ = super().forward(x, state)
        return y, y


class AlwaysFinal(LeakySequence):
    """Ignores ``_full_state``: always returns the final state."""

    def forward(self, x, state):
        y, _ = super().forward(x, state)
        return y, y[-1]


def register_sequence(module_class):
    return custom.register_recurrent(
        module_class=module_class, flatten_input=False, single_step=False, unroll_full_state=False
    )


def leaky_reference(x, decay=0.5):
    y, out = torch.zeros(x.shape[1:]), []
    for x_t in x:
        y = decay * y + x_t
        out.append(y)
    return torch.stack(out)


def module_of(model, cls):
    return next(m for m in model.modules() if isinstance(m, cls))


def test_sequence_module_returns_its_final_state():
    """Without full_state, a sequence module gets _full_state=False and its final state is the model's state."""
    x = torch.randn(6, 3, 2)
    model = register_sequence(LeakySequence)().make_model((2,))
    out, state = model(x)
    torch.testing.assert_close(state, leaky_reference(x)[-1])
    assert module_of(model, LeakySequence).seen_full_state == [False]


def test_full_state_asks_a_sequence_module_for_every_step():
    """With full_state=True, a sequence module gets _full_state=True and returns the state of every step."""
    x = torch.randn(6, 3, 2)
    model = register_sequence(LeakySequence)().make_model((2,), full_state=True)
    out, states = model(x)
    torch.testing.assert_close(states, leaky_reference(x))
    assert module_of(model, LeakySequence).seen_full_state == [True]


def test_sequence_module_inside_a_cycle_keeps_each_batch_entry_own_state():
    """In a placeholder cycle a sequence module runs one-step sequences and returns each entry's final state."""
    n = rb.Network()
    n.output = rb.Placeholder(initial_value=rb.initial.zeros)
    n.output = n.input.sum(n.output).apply(register_sequence(LeakySequence)(decay=0.5))
    x = torch.tensor([1.0, 10.0]).reshape(1, 2, 1).expand(3, 2, 1)
    out, _ = n.make_model((1,))(x)
    # y_t = 0.5 * y_{t-1} + (x + y_{t-1}) = 1.5 * y_{t-1} + x, per batch entry
    expected = torch.tensor([[1.0, 10.0], [2.5, 25.0], [4.75, 47.5]]).unsqueeze(-1)
    torch.testing.assert_close(out, expected)


def test_module_returning_every_step_without__full_state_raises_shape_error():
    """A sequence module that returns per-step states when _full_state is False gets a ShapeError saying so."""
    model = register_sequence(AlwaysEveryStep)().make_model((2,))
    with pytest.raises(ShapeError, match=r"AlwaysEveryStep.*_full_state=False.*final state.*get_initial_state"):
        model(torch.randn(4, 3, 2))


def test_module_returning_the_final_state_with__full_state_raises_shape_error():
    """A sequence module that returns only the final state when _full_state is True gets a ShapeError saying so."""
    model = register_sequence(AlwaysFinal)().make_model((2,), full_state=True)
    with pytest.raises(ShapeError, match=r"AlwaysFinal.*_full_state=True.*every timestep"):
        model(torch.randn(4, 3, 2))


def test_unrolled_sequence_module_must_return_its_final_state():
    """With unroll_full_state=True a sequence module always returns its final state; per-step states are refused."""
    factory = custom.register_recurrent(module_class=AlwaysEveryStep, flatten_input=False, single_step=False)
    with pytest.raises(ShapeError, match="final state"):
        factory().make_model((2,))(torch.randn(4, 3, 2))


# --- get_out_shape may return None ------------------------------------------------------------


class Doubling(custom.CustomModule):
    """[x, x + previous x] along the last dim; leaves the output shape to a trial run."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def enter_in_shape(self, in_shape):
        self.n = in_shape[-1]

    def get_out_shape(self, in_shape):
        return None

    def get_initial_state(self, batch_size):
        return torch.zeros(batch_size, self.n)

    def forward(self, x, state):
        self.calls += 1
        if x.dim() == 2:  # one step
            return torch.cat([x, x + state], -1), x
        previous = torch.cat([state.unsqueeze(0), x[:-1]])
        return torch.cat([x, x + previous], -1), (x if self._full_state else x[-1])


@pytest.mark.parametrize("single_step", [True, False])
def test_out_shape_none_is_inferred_by_a_trial_run(single_step):
    """get_out_shape returning None makes the output shape come from running the module once."""
    factory = custom.register_recurrent(
        module_class=Doubling, flatten_input=False, single_step=single_step, unroll_full_state=False
    )
    model = factory().make_model((3,))
    assert model.out_shape == (6,)
    x = torch.randn(4, 2, 3)
    out, _ = model(x)
    torch.testing.assert_close(out, torch.cat([x, x + torch.cat([torch.zeros(1, 2, 3), x[:-1]])], -1))
    assert module_of(model, Doubling).calls == (4 if single_step else 1)  # the trial ran elsewhere


class NoisyDoubling(Doubling):
    """Like Doubling plus noise, and it can't run on the meta device (``.item()``)."""

    def forward(self, x, state):
        y, state = super().forward(x, state)
        return y + 0.0 * torch.rand_like(y) + 0.0 * x.sum().item(), state


class NoisyDoublingKnown(NoisyDoubling):
    def get_out_shape(self, in_shape):
        return (2 * in_shape[-1],)


def test_out_shape_trial_run_leaves_the_random_generator_untouched():
    """A trial run that can't use the meta device runs for real without drawing random numbers."""
    draws = []
    for cls in (NoisyDoubling, NoisyDoublingKnown):
        factory = custom.register_recurrent(module_class=cls, flatten_input=False, single_step=True)
        torch.manual_seed(0)
        assert factory().make_model((3,)).out_shape == (6,)
        draws.append(torch.rand(3))
    torch.testing.assert_close(draws[0], draws[1])


# --- self.device -------------------------------------------------------------------------------


class Weighted(custom.CustomModule):
    """x * w, with a parameter w; records the device it saw when it was built."""

    def __init__(self):
        super().__init__()
        self.built_on = self.device

    def enter_in_shape(self, in_shape):
        self.w = torch.nn.Parameter(torch.ones(in_shape))

    def get_out_shape(self, in_shape):
        return in_shape

    def get_initial_state(self, batch_size):
        return torch.zeros(batch_size, *self.w.shape, device=self.device)

    def forward(self, x, state):
        return x * self.w + state, state


class Parameterless(custom.CustomModule):
    """Counts timesteps in a state it creates on ``self.device``."""

    def get_out_shape(self, in_shape):
        return in_shape

    def get_initial_state(self, batch_size):
        return torch.zeros(batch_size, 1, device=self.device)

    def forward(self, x, state):
        return x, state + 1


WeightedFactory = custom.register_recurrent(module_class=Weighted, flatten_input=False, single_step=True)
ParameterlessFactory = custom.register_recurrent(module_class=Parameterless, flatten_input=False, single_step=True)


def test_device_is_known_from_construction():
    """A custom module can read self.device in its constructor: the CPU by default."""
    model = WeightedFactory().make_model((2,))
    assert module_of(model, Weighted).built_on == torch.device("cpu")


def test_device_is_where_the_parameters_are():
    """self.device is the parameters' device after make_model and after moving the model."""
    model = WeightedFactory().make_model((2,))
    module = module_of(model, Weighted)
    assert module.device == module.w.device == torch.device("cpu")
    model.to("cpu")
    assert module.device == module.w.device
    model.to("meta")
    assert module.device == module.w.device == torch.device("meta")


def test_device_of_a_parameterless_module_follows_the_model():
    """Without parameters, self.device is still where the model was moved, so states are created there."""
    model = ParameterlessFactory().make_model((2,))
    module = module_of(model, Parameterless)
    assert module.device == torch.device("cpu")
    model.to(torch.float64)
    assert module.device == torch.device("cpu")
    model.to("meta")
    assert module.device == torch.device("meta")
    assert module.get_initial_state(3).device == torch.device("meta")


def test_device_marker_is_not_part_of_the_state_dict():
    """What makes self.device work adds nothing to a model's state_dict."""
    assert ParameterlessFactory().make_model((2,)).state_dict() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_follows_the_model_to_the_gpu():
    """After model.cuda(), a custom module's self.device is the GPU, and so is the state it creates."""
    model = ParameterlessFactory().make_model((2,)).cuda()
    assert module_of(model, Parameterless).device.type == "cuda"
    out, state = model(torch.ones(3, 2, 2, device="cuda"))
    assert state.device.type == "cuda" and state.flatten().tolist() == [3.0, 3.0]


# --- examples/lstm.py: an LSTM from Network primitives -------------------------------------------


SEQ, BATCH, INP_SHAPE, HIDDEN = 8, 32, (10,), 16  # the sizes of lstm_from_primitives in tests/original_networks.py


def lstm_network() -> rb.Network:
    """The network of the original's examples/lstm.py, with its custom Hadamard module."""
    return ours("lstm_from_primitives")


def lstm_reference(model, x):
    """The LSTM equations with the model's own weights."""
    params = dict(model.named_parameters())

    def gate(name, z):
        return (
            z @ params[f"net.layers.{name}.runners.0.module.weight"].T
            + params[f"net.layers.{name}.runners.0.module.bias"]
        )

    h, c, out = torch.zeros(x.shape[1], HIDDEN), torch.zeros(x.shape[1], HIDDEN), []
    for x_t in x:
        z = torch.cat([x_t, h], -1)
        i, f, o = (torch.sigmoid(gate(k, z)) for k in "ifo")
        g = torch.tanh(gate("g", z))
        c = f * c + i * g
        h = o * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def test_lstm_from_network_primitives_computes_the_lstm_equations():
    """examples/lstm.py builds, runs forward and backward, and computes an LSTM."""
    torch.manual_seed(0)
    model = lstm_network().make_model(INP_SHAPE)
    x = torch.rand((SEQ, BATCH) + INP_SHAPE)
    out, _ = model(x)
    assert out.shape == (SEQ, BATCH, HIDDEN)
    torch.testing.assert_close(out, lstm_reference(model, x))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_lstm_from_network_primitives_continues_across_chunks():
    """Running the primitive LSTM on T steps equals running two chunks, passing the state on."""
    torch.manual_seed(0)
    model = lstm_network().make_model(INP_SHAPE)
    x = torch.rand((SEQ, BATCH) + INP_SHAPE)
    whole, whole_state = model(x)
    first, state = model(x[:3])
    second, chunked_state = model(x[3:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(chunked_state, whole_state)


def test_lstm_from_network_primitives_full_state_ends_with_the_final_state():
    """With full_state=True the primitive LSTM gives every step's state, the last equal to the final state."""
    torch.manual_seed(0)
    model = lstm_network().make_model(INP_SHAPE)
    x = torch.rand((SEQ, BATCH) + INP_SHAPE)
    out, final = model(x)
    full_out, states = model.configure(full_state=True)(x)
    torch.testing.assert_close(full_out, out)
    for leaf in rb.named_leaves(states).values():
        assert leaf.shape[0] == SEQ
    torch.testing.assert_close(rb.last_state(states), final)
