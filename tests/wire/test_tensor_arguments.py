"""Tensor factory arguments on the wire: ``Value.tensor_value`` both ways, exact, and refused with the
argument's path when its bytes don't fit its shape."""

from __future__ import annotations

import pytest
import torch

from rnnbuilder import SpecError, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks
from tests.helpers import OffsetFactory


@pytest.fixture
def registry():
    registry = spec.builtin_registry()
    registry.register("test.Offset", OffsetFactory)
    return registry


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.bool])
def test_tensor_argument_travels_as_tensor_value_exactly(registry, dtype):
    """A tensor argument becomes a Value.tensor_value and comes back with the same dtype, shape and values."""
    torch.manual_seed(0)
    value = (torch.randn(2, 3) * 10).to(dtype)
    message = networks.factory_to_message(OffsetFactory(offset=value), registry)
    assert message.root.args["offset"].WhichOneof("kind") == "tensor_value"
    assert list(message.root.args["offset"].tensor_value.shape) == [2, 3]
    rebuilt = spec.from_spec(networks.from_message(message), registry)
    assert rebuilt == OffsetFactory(offset=value)


def test_tensor_value_whose_bytes_do_not_fit_its_shape_is_refused_at_its_path(registry):
    """A tensor_value with too few bytes for its shape raises SpecError naming the argument."""
    message = networks.factory_to_message(OffsetFactory(offset=torch.ones(4)), registry)
    message.root.args["offset"].tensor_value.data = b"\x00" * 12
    with pytest.raises(SpecError) as caught:
        networks.from_message(message)
    assert caught.value.path == "root.args.offset"
    assert "needs 16 bytes, got 12" in str(caught.value)


def test_bfloat16_tensor_value_is_read_as_float32(registry):
    """A BFLOAT16 tensor_value, which JSON descriptions don't name, arrives as float32."""
    message = networks.factory_to_message(OffsetFactory(offset=torch.ones(2)), registry)
    message.root.args["offset"].tensor_value.CopyFrom(
        pb.Tensor(dtype=pb.DATA_TYPE_BFLOAT16, shape=[2], data=b"\x80\x3f\x00\x40")
    )
    offset = spec.from_spec(networks.from_message(message), registry).arguments["offset"]
    assert offset.dtype == torch.float32 and offset.tolist() == [1.0, 2.0]
