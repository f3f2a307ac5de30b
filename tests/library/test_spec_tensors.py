"""Tensor-valued factory arguments: written and read by ``rnnbuilder.spec`` exactly, refused when
malformed with the place named, compared by value, and never shared with the models built from them."""

from __future__ import annotations

import pytest
import torch

from rnnbuilder import custom, spec
from rnnbuilder.errors import SpecError
from tests.helpers import OffsetFactory
from tests.library.test_spec import wire


class Scale(torch.nn.Module):
    def __init__(self, factor: float | torch.Tensor = 2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


ScaleFactory = custom.register_non_recurrent(Scale, flatten_input=False, shape_change=False)


@pytest.fixture
def registry():
    registry = spec.builtin_registry()
    registry.register("test.Scale", ScaleFactory)
    registry.register("test.Offset", OffsetFactory)
    return registry


def tensor_spec(dtype="float32", shape=(2,), data=(1.0, 2.0)) -> dict:
    return {"tensor": {"dtype": dtype, "shape": list(shape), "data": list(data)}}


def offset_document(value) -> dict:
    return {"format": spec.FORMAT, "root": {"type": "test.Offset", "args": {"offset": value}}}


def test_tensor_argument_is_written_as_dtype_shape_and_row_major_data(registry):
    """A tensor argument is written as {"tensor": {"dtype", "shape", "data"}}, its elements row-major."""
    description = spec.to_spec(OffsetFactory(offset=torch.tensor([[1.0, 2.0], [3.0, 4.0]])), registry)
    assert description["root"]["args"]["offset"] == tensor_spec(shape=(2, 2), data=(1.0, 2.0, 3.0, 4.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.int8, torch.bool])
def test_tensor_argument_round_trips_exactly(registry, dtype):
    """Every value, shape and dtype comes back exactly through JSON (float32's included)."""
    torch.manual_seed(0)
    value = (torch.randn(3, 1, 4) * 100).to(dtype)
    rebuilt = spec.from_spec(wire(spec.to_spec(OffsetFactory(offset=value), registry)), registry)
    offset = rebuilt.arguments["offset"]
    assert offset.dtype == dtype and offset.shape == value.shape
    assert torch.equal(offset, value)


def test_zero_dimensional_tensor_round_trips(registry):
    """A 0-dim tensor is shape [] with one element."""
    value = torch.tensor(0.1, dtype=torch.float32)
    description = spec.to_spec(OffsetFactory(offset=value), registry)
    assert description["root"]["args"]["offset"] == tensor_spec(shape=(), data=(value.item(),))
    assert torch.equal(spec.from_spec(wire(description), registry).arguments["offset"], value)


def test_union_hint_takes_a_number_or_a_tensor(registry):
    """An argument hinted ``float | torch.Tensor`` takes either form."""
    number = spec.from_spec({"format": spec.FORMAT, "root": {"type": "test.Scale", "args": {"factor": 3}}}, registry)
    assert number == ScaleFactory(factor=3.0)
    document = {"format": spec.FORMAT, "root": {"type": "test.Scale", "args": {"factor": tensor_spec()}}}
    assert torch.equal(spec.from_spec(document, registry).arguments["factor"], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "value, path, fragment",
    [
        (tensor_spec(shape=(3,)), "root.args.offset.tensor.data", "3 elements"),
        (tensor_spec(dtype="complex64"), "root.args.offset.tensor.dtype", "float32"),
        (tensor_spec(shape=(-2,)), "root.args.offset.tensor.shape", "non-negative"),
        (tensor_spec(data=(1.0, "2")), "root.args.offset.tensor.data[1]", "finite number"),
        (tensor_spec(dtype="int8", data=(1, 300)), "root.args.offset.tensor.data[1]", "-128 to 127"),
        (tensor_spec(dtype="float16", data=(1.0, 1e10)), "root.args.offset.tensor.data", "too large"),
        ({"tensor": {"dtype": "float32", "shape": [1]}}, "root.args.offset.tensor.data", "missing"),
        ({"tensor": tensor_spec()["tensor"], "type": "x"}, "root.args.offset.type", "unknown key"),
        (1.5, "root.args.offset", "tensor"),
    ],
    ids=["count", "dtype", "shape", "element", "int_range", "overflow", "no_data", "extra_key", "number"],
)
def test_malformed_tensor_argument_is_refused_naming_the_place(registry, value, path, fragment):
    """A malformed tensor argument raises SpecError at its exact path, saying what is wrong."""
    with pytest.raises(SpecError) as caught:
        spec.from_spec(offset_document(value), registry)
    assert caught.value.path == path
    assert fragment in str(caught.value)


def test_non_finite_tensor_argument_cannot_be_written(registry):
    """to_spec refuses a NaN or infinite tensor element (JSON has none), naming the argument."""
    with pytest.raises(SpecError, match=r"root.args.offset: .*finite"):
        spec.to_spec(OffsetFactory(offset=torch.tensor([1.0, float("nan")])), registry)


def test_factories_with_tensor_arguments_compare_by_value():
    """Equal tensor arguments make equal factories; different values, dtypes or shapes don't."""
    a = OffsetFactory(offset=torch.tensor([1.0, 2.0]))
    assert a == OffsetFactory(offset=torch.tensor([1.0, 2.0]))
    assert a != OffsetFactory(offset=torch.tensor([1.0, 3.0]))
    assert a != OffsetFactory(offset=torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert a != OffsetFactory(offset=torch.tensor([[1.0, 2.0]]))


class LearnedOffset(torch.nn.Module):
    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.offset = torch.nn.Parameter(offset)

    def forward(self, x):
        return x + self.offset


LearnedOffsetFactory = custom.register_non_recurrent(LearnedOffset, flatten_input=False, shape_change=False)


def test_training_a_model_leaves_its_factorys_tensor_argument_as_it_was():
    """A module that makes its tensor argument a Parameter gets a copy: an optimizer step doesn't change the factory."""
    factory = LearnedOffsetFactory(offset=torch.zeros(3))
    model = factory.make_model((3,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.ones(2, 1, 3))[0].sum().backward()
    optimizer.step()
    assert factory.arguments["offset"].tolist() == [0.0, 0.0, 0.0]
    assert factory.make_model((3,)).net.module.offset.tolist() == [0.0, 0.0, 0.0]
