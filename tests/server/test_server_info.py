"""GetServerInfo's type descriptions, as server.convert makes them."""

import torch

from rnnbuilder import custom, spec
from rnnbuilder.describe import describe
from rnnbuilder_sim.wire import descriptions
from server import Limits, convert


class Gain(torch.nn.Module):
    """Multiplies its input by a gain."""

    gain: float
    """The factor, unitless."""

    def __init__(self, gain: float = 2.0):
        super().__init__()


GainFactory = custom.register_non_recurrent(Gain, flatten_input=False, shape_change=False)


def info(registry: spec.Registry):
    return convert.server_info("0", "cpu", "test", Limits(), registry, False)


def test_server_info_describes_every_type():
    """The answer's factories, surrogates and encoders are the registry's descriptions."""
    registry = spec.builtin_registry()
    assert descriptions.from_server_info(info(registry)) == describe(registry)


def test_operator_registered_custom_type_is_described():
    """A custom factory registered by the operator is listed with its arguments."""
    registry = spec.builtin_registry()
    registry.register("ops.Gain", GainFactory)
    gain = next(d for d in info(registry).factories if d.type == "ops.Gain")
    assert (gain.description, gain.arguments[0].description) == (
        "Multiplies its input by a gain.",
        "The factor, unitless.",
    )


def test_types_registered_later_are_described_too():
    """A type registered after the first answer is in the next one."""
    registry = spec.builtin_registry()
    assert "ops.Gain" not in [d.type for d in info(registry).factories]
    registry.register("ops.Gain", GainFactory)
    assert "ops.Gain" in [d.type for d in info(registry).factories]


def test_answers_repeat_without_describing_again(monkeypatch):
    """A server describes its registry's types once, not on every GetServerInfo."""
    calls = []
    monkeypatch.setattr(convert, "describe", lambda registry: calls.append(registry) or describe(registry))
    registry = spec.builtin_registry()
    first, second = info(registry), info(registry)
    assert first.factories == second.factories and calls == [registry]
