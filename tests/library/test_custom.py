"""Custom modules: register_recurrent and register_non_recurrent."""

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import custom, nn
from tests.helpers import VectorState


class LeakyStep(VectorState):
    """y_t = decay * y_{t-1} + x_t, one timestep per call."""

    def __init__(self, decay=0.5):
        super().__init__()
        self.decay = decay

    def get_initial_output(self, full_shape):
        return torch.full(full_shape, 7.0)

    def forward(self, x, state):
        y = self.decay * state + x
        return y, y


class LeakySequence(LeakyStep):
    """The same recurrence over a whole (time, batch, n) sequence per call."""

    def forward(self, x, state):
        outputs = []
        for x_t in x:
            state = self.decay * state + x_t
            outputs.append(state)
        return torch.stack(outputs), state


class LeakySequenceFullState(LeakySequence):
    """Registered with unroll_full_state=False: returns the state of every timestep, stacked along
    time, when the library sets ``_full_state``, else the final state."""

    def forward(self, x, state):
        y, state = super().forward(x, state)
        return y, (y if self._full_state else state)


StepFactory = custom.register_recurrent(module_class=LeakyStep, flatten_input=True, single_step=True)
SequenceFactory = custom.register_recurrent(module_class=LeakySequence, flatten_input=True, single_step=False)
FullStateFactory = custom.register_recurrent(
    module_class=LeakySequenceFullState, flatten_input=True, single_step=False, unroll_full_state=False
)


def reference(x, decay=0.5):
    y, out = torch.zeros(x.shape[1:]).flatten(1), []
    for x_t in x:
        y = decay * y + x_t.flatten(1)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("factory", [StepFactory, SequenceFactory, FullStateFactory])
def test_recurrent_custom_module_computes_its_recurrence(factory):
    """Step-wise, sequence-wise and full-state custom modules give the same recurrence."""
    x = torch.randn(9, 2, 2, 3)
    out, _ = factory(decay=0.5).make_model((2, 3))(x)
    torch.testing.assert_close(out, reference(x))


@pytest.mark.parametrize("factory", [StepFactory, SequenceFactory, FullStateFactory])
def test_recurrent_custom_module_full_state_has_every_step(factory):
    """full_state gives the state after each timestep, whatever the registration."""
    x = torch.randn(5, 2, 4)
    model = factory().make_model((4,), full_state=True)
    out, states = model(x)
    assert states.shape == (5, 2, 4)
    torch.testing.assert_close(states, out)


@pytest.mark.parametrize("factory", [StepFactory, SequenceFactory, FullStateFactory])
def test_recurrent_custom_module_inside_a_cycle(factory):
    """A custom module in a placeholder cycle runs one step at a time and starts from its initial output."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.sum(n.output).apply(factory(decay=0.0))
    out, _ = n.make_model((1,))(torch.ones(3, 1, 1))
    assert out.flatten().tolist() == [8.0, 9.0, 10.0]


def test_custom_constructor_arguments_are_checked():
    """Wrong constructor arguments fail at once, naming the factory."""
    with pytest.raises(TypeError, match="LeakyStepFactory"):
        StepFactory(rate=3)


def test_register_recurrent_needs_a_custom_module():
    """register_recurrent rejects a class that is not a CustomModule."""
    with pytest.raises(TypeError, match="CustomModule"):
        custom.register_recurrent(module_class=torch.nn.Linear, flatten_input=False, single_step=True)


class Double(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, x], dim=1)


class Halve(torch.nn.Module):
    def get_out_shape(self, in_shape):
        return (in_shape[0] // 2,)

    def forward(self, x):
        return x[:, : x.shape[1] // 2]


def test_non_recurrent_shape_change_is_inferred():
    """shape_change=True infers the output shape from a trial run."""
    factory = custom.register_non_recurrent(module_class=Double, flatten_input=True, shape_change=True)
    model = factory().make_model((2, 3))
    assert model.out_shape == (12,)
    assert model(torch.ones(4, 1, 2, 3))[0].shape == (4, 1, 12)


def test_non_recurrent_get_out_shape_is_used():
    """A module's own get_out_shape wins over the trial run."""
    factory = custom.register_non_recurrent(module_class=Halve, flatten_input=False, shape_change=True)
    assert factory().make_model((6,)).out_shape == (3,)


def test_non_recurrent_module_sees_time_merged_into_batch():
    """A stateless custom module gets (time * batch, ...) in one call."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x

    factory = custom.register_non_recurrent(module_class=Probe, flatten_input=False, shape_change=False)
    rb.Sequential(nn.Identity(), factory()).make_model((3,))(torch.zeros(5, 2, 3))
    assert seen == [(10, 3)]
