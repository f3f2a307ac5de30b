"""Conversions to the wire (``rnnbuilder_sim.wire``): arrays as ``Tensor`` messages and rnnbuilder
networks as ``NetworkSpec`` messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import SpecError, initial, nn, rnn, snn, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks as network
from rnnbuilder_sim.wire import tensors
from rnnbuilder_sim.wire.tensors import TensorError

# Tensors

DTYPES = {
    np.float32: pb.DATA_TYPE_FLOAT32,
    np.float64: pb.DATA_TYPE_FLOAT64,
    np.float16: pb.DATA_TYPE_FLOAT16,
    np.int64: pb.DATA_TYPE_INT64,
    np.int32: pb.DATA_TYPE_INT32,
    np.int16: pb.DATA_TYPE_INT16,
    np.int8: pb.DATA_TYPE_INT8,
    np.uint8: pb.DATA_TYPE_UINT8,
    np.bool_: pb.DATA_TYPE_BOOL,
}
TORCH_DTYPES = {
    torch.float32: pb.DATA_TYPE_FLOAT32,
    torch.float64: pb.DATA_TYPE_FLOAT64,
    torch.float16: pb.DATA_TYPE_FLOAT16,
    torch.int64: pb.DATA_TYPE_INT64,
    torch.int32: pb.DATA_TYPE_INT32,
    torch.int16: pb.DATA_TYPE_INT16,
    torch.int8: pb.DATA_TYPE_INT8,
    torch.uint8: pb.DATA_TYPE_UINT8,
    torch.bool: pb.DATA_TYPE_BOOL,
}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)


def sample(dtype, shape=(3, 5, 2), seed=0) -> np.ndarray:
    """Values spread over the dtype's range, negatives included where it has them."""
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.normal(size=shape) * 100).astype(dtype)


def binary(shape, dtype=np.float32, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < 0.5).astype(dtype)


@dtypes
def test_every_dtype_round_trips(dtype):
    """An array of each wire dtype decodes to an equal array of the same dtype and shape."""
    array = sample(dtype)
    message = tensors.encode(array)
    assert message.dtype == DTYPES[dtype]
    assert list(message.shape) == [3, 5, 2]
    assert message.encoding == pb.TENSOR_ENCODING_RAW
    decoded = tensors.decode(message)
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == array.shape
    assert np.array_equal(decoded, array)


def test_data_is_little_endian_c_order():
    """The bytes are the elements in C order, little-endian, as the contract says."""
    message = tensors.encode(np.array([[1, 2], [3, 256]], dtype=np.int32))
    assert message.data == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0])


def test_float_special_values_round_trip():
    """NaN, infinities, -0.0 and subnormals keep their exact bits."""
    array = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, np.finfo(np.float32).max], dtype=np.float32)
    decoded = tensors.decode(tensors.encode(array))
    assert decoded.tobytes() == array.tobytes()


@pytest.mark.parametrize("torch_dtype", TORCH_DTYPES, ids=str)
def test_torch_tensors_encode_as_their_dtype(torch_dtype):
    """A torch tensor of each wire dtype travels as that dtype; decode_torch gives it back."""
    tensor = torch.from_numpy(sample(torch.empty(0, dtype=torch_dtype).numpy().dtype.type))
    message = tensors.encode(tensor)
    assert message.dtype == TORCH_DTYPES[torch_dtype]
    decoded = tensors.decode_torch(message)
    assert decoded.dtype == torch_dtype and torch.equal(decoded, tensor)


def test_bfloat16_torch_tensors_go_as_float32():
    """A bfloat16 tensor (which numpy lacks) is sent as float32 with exactly its values."""
    tensor = torch.tensor([[1.0, -2.5], [0.15625, 3e38]], dtype=torch.bfloat16)
    message = tensors.encode(tensor)
    assert message.dtype == pb.DATA_TYPE_FLOAT32
    assert torch.equal(tensors.decode_torch(message), tensor.float())


def test_bfloat16_messages_decode_to_float32():
    """A BFLOAT16 Tensor, which the contract names and a non-Python client may send, decodes to float32."""
    values = torch.tensor([1.0, -2.5, 0.15625], dtype=torch.bfloat16)
    raw = values.view(torch.int16).numpy().astype("<i2").tobytes()
    message = pb.Tensor(dtype=pb.DATA_TYPE_BFLOAT16, shape=[3], data=raw, encoding=pb.TENSOR_ENCODING_RAW)
    assert tensors.decode(message).tolist() == [1.0, -2.5, 0.15625]


def test_torch_tensors_that_require_grad_are_encoded():
    """Tensors in an autograd graph are detached, not refused."""
    tensor = torch.ones(2, 3, requires_grad=True) * 2
    assert tensors.decode(tensors.encode(tensor)).tolist() == [[2.0] * 3] * 2


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">i4", ">i2"])
def test_big_endian_arrays_are_sent_little_endian(dtype):
    """Big-endian numpy input goes on the wire little-endian and decodes to native equal values."""
    array = np.arange(-6, 6, dtype=dtype).reshape(3, 4)
    message = tensors.encode(array)
    assert message.data == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    decoded = tensors.decode(message)
    assert decoded.dtype.isnative and np.array_equal(decoded, array)


def test_non_contiguous_arrays_are_sent_in_c_order():
    """Transposed or strided views are sent as the array they show."""
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    for view in (base.T, base[::2, 1::3], np.broadcast_to(base[:1], (3, 6))):
        assert np.array_equal(tensors.decode(tensors.encode(view)), view)


@pytest.mark.parametrize("shape", [(), (0,), (4, 0, 3)], ids=["scalar", "empty", "empty_inner"])
def test_scalars_and_empty_arrays_round_trip(shape):
    """Zero-dimensional and zero-sized arrays keep their shape, raw and bit-packed."""
    array = np.zeros(shape, dtype=np.float32)
    for packed in (False, True):
        decoded = tensors.decode(tensors.encode(array, bitpacked=packed))
        assert decoded.shape == shape and np.array_equal(decoded, array)


def test_nested_lists_are_encoded():
    """Nested Python lists are encoded as numpy would convert them."""
    assert tensors.decode(tensors.encode([[1.5, 2.0], [3.0, 4.0]])).tolist() == [[1.5, 2.0], [3.0, 4.0]]


def test_decoded_arrays_are_writable_copies():
    """decode returns a fresh writable array, not a view of the message's bytes."""
    message = tensors.encode(np.arange(4, dtype=np.float32))
    decoded = tensors.decode(message)
    decoded[0] = 42
    assert tensors.decode(message)[0] == 0


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.uint64, object, "U3", "datetime64[s]"], ids=str)
def test_unsupported_array_dtypes_are_refused(dtype):
    """Arrays of a dtype the contract lacks raise TensorError naming the dtype."""
    array = np.zeros(3, dtype=dtype)
    with pytest.raises(TensorError, match="dtype"):
        tensors.encode(array)


# Bit-packing


@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (3, 5), (2, 3, 7), (13, 11, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.uint8, np.int64, np.bool_], ids=str)
def test_binary_arrays_bitpack_round_trip(shape, dtype):
    """Random 0/1 arrays of sizes not a multiple of 8 pack into ceil(n/8) bytes and unpack exactly."""
    array = binary(shape, dtype, seed=sum(shape))
    message = tensors.encode(array, bitpacked=True)
    assert message.encoding == pb.TENSOR_ENCODING_BITPACKED
    assert message.dtype == DTYPES[dtype]
    assert len(message.data) == (array.size + 7) // 8
    decoded = tensors.decode(message)
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == shape
    assert np.array_equal(decoded, array)


def test_bitpacking_puts_the_first_element_in_the_lowest_bit():
    """Bits follow numpy.packbits(bitorder='little'); padding bits are zero."""
    message = tensors.encode(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=np.float32), bitpacked=True)
    assert message.data == bytes([0b00000001, 0b00000110])
    assert tensors.encode(np.ones(9, dtype=bool), bitpacked=True).data == bytes([0xFF, 0x01])


def test_bitpacking_is_32_times_smaller_than_float32():
    """Spikes for 1,024 neurons take 128 bytes bit-packed instead of 4,096."""
    spikes = binary((1, 1, 1024))
    assert len(tensors.encode(spikes).data) == 4096
    assert len(tensors.encode(spikes, bitpacked=True).data) == 128


def test_torch_spikes_bitpack():
    """A torch spike tensor packs like its numpy array."""
    spikes = torch.from_numpy(binary((5, 3)))
    message = tensors.encode(spikes, bitpacked=True)
    assert message.encoding == pb.TENSOR_ENCODING_BITPACKED
    assert torch.equal(tensors.decode_torch(message), spikes)


@pytest.mark.parametrize(
    "array",
    [
        np.array([0.0, 1.0, 0.5], dtype=np.float32),
        np.array([0, 2, 1], dtype=np.int64),
        np.array([-1.0, 0.0, 1.0]),
        np.array([0.0, np.nan, 1.0], dtype=np.float32),
    ],
    ids=["fraction", "two", "minus_one", "nan"],
)
def test_non_binary_arrays_fall_back_to_raw(array):
    """With bitpacked=True, an array that isn't all 0/1 is sent raw and decodes exactly."""
    message = tensors.encode(array, bitpacked=True)
    assert message.encoding == pb.TENSOR_ENCODING_RAW
    assert tensors.decode(message).tobytes() == array.tobytes()


def test_unspecified_encoding_reads_as_raw():
    """TENSOR_ENCODING_UNSPECIFIED (a client that never sets it) is read as raw."""
    message = tensors.encode(np.arange(3, dtype=np.int16))
    message.encoding = pb.TENSOR_ENCODING_UNSPECIFIED
    assert tensors.decode(message).tolist() == [0, 1, 2]


# Malformed messages

F32 = pb.DATA_TYPE_FLOAT32
MALFORMED = {
    "raw_data_too_short": (pb.Tensor(dtype=F32, shape=[2, 3], data=b"\0" * 20), "needs 24 bytes, got 20"),
    "raw_data_too_long": (pb.Tensor(dtype=F32, shape=[2, 3], data=b"\0" * 28), "needs 24 bytes, got 28"),
    "raw_data_for_no_shape": (pb.Tensor(dtype=F32, shape=[0], data=b"\0" * 4), "needs 0 bytes, got 4"),
    "bitpacked_too_short": (
        pb.Tensor(dtype=F32, shape=[9], data=b"\1", encoding=pb.TENSOR_ENCODING_BITPACKED),
        "needs 2 bytes, got 1",
    ),
    "bitpacked_too_long": (
        pb.Tensor(dtype=F32, shape=[8], data=b"\1\1", encoding=pb.TENSOR_ENCODING_BITPACKED),
        "needs 1 bytes, got 2",
    ),
    "negative_dim": (pb.Tensor(dtype=F32, shape=[-2, -3], data=b"\0" * 24), "negative"),
    "unspecified_dtype": (pb.Tensor(shape=[1], data=b"\0" * 4), "DATA_TYPE_FLOAT32"),
    "unknown_dtype": (pb.Tensor(dtype=77, shape=[1], data=b"\0" * 4), "77"),
    "unknown_encoding": (pb.Tensor(dtype=F32, shape=[1], data=b"\0" * 4, encoding=9), "encoding"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_messages_raise_tensor_error(case):
    """A message whose dtype, shape, data length or encoding is wrong raises TensorError saying what's wrong."""
    message, fragment = MALFORMED[case]
    with pytest.raises(TensorError) as caught:
        tensors.decode(message)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


# Decoding into torch


def address_of(blob: bytes) -> int:
    return np.frombuffer(blob, dtype=np.uint8).ctypes.data


def held(message: pb.Tensor, blob: bytes) -> SimpleNamespace:
    """``message`` with ``blob`` as its bytes, the very object each read of ``data`` gives."""
    return SimpleNamespace(dtype=message.dtype, shape=list(message.shape), encoding=message.encoding, data=blob)


def test_decode_torch_makes_raw_tensors_from_the_bytes_without_a_copy():
    """A raw tensor from decode_torch lies in the bytes read from the message, not in a copy of them."""
    message = tensors.encode(np.arange(12, dtype=np.float32).reshape(3, 4))
    blob = message.data
    tensor = tensors.decode_torch(held(message, blob))
    assert tensor.data_ptr() == address_of(blob)
    assert tensor.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()


@pytest.mark.parametrize("packed", [False, True], ids=["raw", "bitpacked"])
@dtypes
def test_decode_torch_gives_decodes_values(dtype, packed):
    """decode_torch gives the dtype, shape and bits decode gives, raw and bit-packed."""
    array = binary((3, 5, 7), dtype) if packed else sample(dtype, (3, 5, 7))
    message = pb.Tensor.FromString(tensors.encode(array, bitpacked=packed).SerializeToString())
    decoded = tensors.decode_torch(message)
    assert decoded.shape == array.shape
    assert decoded.numpy().dtype == np.dtype(dtype) and decoded.numpy().tobytes() == array.tobytes()


@pytest.mark.parametrize("shape", [(), (0,), (4, 0, 3)], ids=["scalar", "empty", "empty_inner"])
@pytest.mark.parametrize("packed", [False, True], ids=["raw", "bitpacked"])
def test_decode_torch_of_scalars_and_empty_tensors(shape, packed):
    """Zero-dimensional and zero-sized tensors keep their shape in decode_torch too."""
    decoded = tensors.decode_torch(tensors.encode(np.ones(shape, dtype=np.float32), bitpacked=packed))
    assert decoded.shape == shape and torch.equal(decoded, torch.ones(shape))


def test_decode_torch_of_one_byte_shares_no_bytes_object():
    """A one-byte tensor is a copy: Python shares bytes objects of one byte, which must never change."""
    message = pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[1], data=b"\x05")
    tensor = tensors.decode_torch(message)
    tensor[0] = 9
    assert b"\x05"[0] == 5 and message.data == b"\x05"


def test_decode_torch_of_bfloat16_gives_float32():
    """A raw BFLOAT16 message becomes a float32 tensor of exactly its values."""
    values = torch.tensor([[1.0, -2.5], [0.15625, 3e38]], dtype=torch.bfloat16)
    data = values.view(torch.int16).numpy().astype("<i2").tobytes()
    message = pb.Tensor(dtype=pb.DATA_TYPE_BFLOAT16, shape=[2, 2], data=data, encoding=pb.TENSOR_ENCODING_RAW)
    decoded = tensors.decode_torch(message)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, values.float())


def test_decode_torch_moves_to_the_device():
    """decode_torch(message, device) gives the tensor on that device."""
    assert tensors.decode_torch(tensors.encode(np.ones(3, dtype=np.float32)), "meta").device.type == "meta"


def test_decode_torch_does_not_warn():
    """The first raw tensor made from read-only bytes raises no warning (torch's is silenced)."""
    code = (
        "import numpy as np\n"
        "from rnnbuilder_sim.wire import tensors\n"
        "tensors.decode_torch(tensors.encode(np.ones(4, dtype=np.float32)))\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", MALFORMED)
def test_decode_torch_refuses_malformed_messages(case):
    """decode_torch raises decode's TensorError for each malformed message."""
    message, fragment = MALFORMED[case]
    with pytest.raises(TensorError, match=re.escape(fragment)):
        tensors.decode_torch(message)


@pytest.mark.parametrize("case", MALFORMED)
def test_shape_of_refuses_malformed_messages(case):
    """shape_of raises the same TensorError before anything is decoded."""
    message, fragment = MALFORMED[case]
    with pytest.raises(TensorError, match=re.escape(fragment)):
        tensors.shape_of(message)


# Encoding in one pass


def test_encode_fields_make_encodes_message():
    """A request given encode_fields' fields holds the very message encode makes."""
    spikes = binary((2, 9))
    for packed in (False, True):
        request = pb.RunRequest(input=tensors.encode_fields(spikes, bitpacked=packed))
        assert request.input == tensors.encode(spikes, bitpacked=packed)


def test_non_contiguous_binary_arrays_bitpack_in_c_order():
    """Transposed and strided 0/1 views pack as the array they show."""
    base = binary((6, 10))
    for view in (base.T, base[::2, 1::3], np.broadcast_to(base[:1], (3, 10))):
        message = tensors.encode(view, bitpacked=True)
        assert message.encoding == pb.TENSOR_ENCODING_BITPACKED
        assert message.data == np.packbits(np.ascontiguousarray(view).astype(bool), bitorder="little").tobytes()


def test_non_contiguous_torch_tensors_are_sent_in_c_order():
    """A transposed torch tensor is sent as the tensor it shows."""
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    assert tensors.encode(tensor).data == tensor.contiguous().numpy().tobytes()


def test_negative_zero_bitpacks_as_zero():
    """-0.0 counts as a 0 when bit-packing, as it compares equal to 0."""
    message = tensors.encode(np.array([-0.0, 1.0, 0.0], dtype=np.float32), bitpacked=True)
    assert message.encoding == pb.TENSOR_ENCODING_BITPACKED and message.data == b"\x02"


def test_big_endian_binary_arrays_bitpack():
    """A big-endian 0/1 array packs and decodes to native equal values."""
    array = binary((3, 7), ">f4")
    decoded = tensors.decode(tensors.encode(array, bitpacked=True))
    assert decoded.dtype.isnative and np.array_equal(decoded, array)


def test_bitpacked_decoded_arrays_are_writable_copies():
    """decode of a bit-packed message also returns a fresh writable array."""
    message = tensors.encode(binary((4, 9)), bitpacked=True)
    decoded = tensors.decode(message)
    decoded[...] = 7
    assert set(np.unique(tensors.decode(message))) <= {0.0, 1.0}


# Networks


def rich_network() -> rb.Network:
    """Placeholders with initial values, stack, sum, list, nested Sequentials and non-default surrogates."""
    n = rb.Network()
    n.memory = rb.Placeholder(initial_value=initial.Constant(0.5))
    n.echo = rb.Placeholder(initial_value=initial.ones)
    n.plain = rb.Placeholder()
    n.hidden = n.input.stack(n.memory).apply(
        nn.Linear(8, bias=False), snn.LIF(tau=3.5, spike_function=snn.FastSigmoid(slope=10.0))
    )
    n.memory = n.hidden
    n.mixed = n.hidden.sum(n.echo).apply(nn.Linear(8), snn.Adaptive(spike_function=snn.ATan(alpha=3.0), gamma=0.5))
    n.echo = n.mixed
    n.smooth = n.mixed.stack(n.plain).apply(rb.Sequential(nn.Linear(4), rb.Sequential(nn.Linear(4), nn.LeakyReLU(0.1))))
    n.plain = n.smooth
    n.paired = n.hidden.append(n.mixed).apply(nn.Bilinear(3))
    n.output = n.paired.stack(n.smooth).apply(nn.Unflatten(0, (1, 7)), nn.MaxPool1d(1, stride=None))
    return n


def as_json(description: dict) -> str:
    """Canonical JSON: equal only if values, types (1 vs 1.0) and list orders are equal."""
    return json.dumps(description, sort_keys=True)


def test_network_round_trips_through_messages():
    """from_message(to_message(d)) is to_spec's description d, types and all, for a rich Network."""
    description = spec.to_spec(rich_network())
    assert as_json(network.from_message(network.to_message(description))) == as_json(description)


def test_network_survives_serialization():
    """The description also survives serializing the message to bytes and parsing it back."""
    description = spec.to_spec(rich_network())
    wire = pb.NetworkSpec.FromString(network.to_message(description).SerializeToString())
    rebuilt = spec.from_spec(network.from_message(wire))
    assert as_json(spec.to_spec(rebuilt)) == as_json(description)
    assert rebuilt.make_model((5,)).out_shape == (1, 7)


def test_factory_to_message_equals_to_message_of_to_spec():
    """factory_to_message(f) is to_message(to_spec(f))."""
    factory = rich_network()
    assert network.factory_to_message(factory) == network.to_message(spec.to_spec(factory))


def test_factories_without_arguments_round_trip():
    """Argument-less factories and surrogates (nn.ReLU, snn.StraightThrough) come back as to_spec wrote them."""
    description = spec.to_spec(rb.Sequential(nn.Linear(3), nn.ReLU(), snn.LIF(spike_function=snn.StraightThrough())))
    assert as_json(network.from_message(network.to_message(description))) == as_json(description)


def test_argument_values_use_their_kinds():
    """Integers, numbers, booleans, strings, None, lists and nested factories each use their own Value field."""
    message = network.factory_to_message(
        rb.Sequential(
            nn.MaxPool2d((2, 2)),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Linear(4, bias=False),
            snn.LIF(tau=2.5),
            rnn.LSTM(3),
        )
    )
    pool, upsample, linear, lif, _ = message.root.factories
    assert pool.args["kernel_size"].WhichOneof("kind") == "list_value"
    assert [v.int_value for v in pool.args["kernel_size"].list_value.values] == [2, 2]
    assert pool.args["stride"].WhichOneof("kind") == "null_value"
    assert upsample.args["mode"].string_value == "nearest"
    assert upsample.args["scale_factor"].WhichOneof("kind") == "number_value"
    assert linear.args["out_features"].WhichOneof("kind") == "int_value"
    assert linear.args["bias"].WhichOneof("kind") == "bool_value" and not linear.args["bias"].bool_value
    assert lif.args["tau"].number_value == 2.5
    assert lif.args["spike_function"].factory_value.type == "snn.SpikeLinear"


def test_network_nodes_use_their_kinds():
    """Network nodes map to input, layer, stack, sum, list and placeholder messages with initial values."""
    message = network.factory_to_message(rich_network())
    kinds = [node.WhichOneof("kind") for node in message.root.layers]
    assert sorted(set(kinds)) == ["input", "layer", "list", "placeholder", "stack", "sum"]
    initials = {
        node.placeholder.hint: node.placeholder.initial_value.WhichOneof("kind")
        for node in message.root.layers
        if node.HasField("placeholder")
    }
    assert initials == {"memory": "constant", "echo": "ones", "plain": None}
    assert "output" in [name.name for name in message.root.names]


def spec_error(message: pb.NetworkSpec) -> SpecError:
    with pytest.raises(SpecError) as caught:
        network.from_message(message)
    return caught.value


def test_empty_value_names_its_path():
    """An argument Value with nothing set raises SpecError naming the argument's path."""
    message = network.factory_to_message(rb.Sequential(nn.Linear(4), snn.LIF()))
    message.root.factories[1].args["tau"].Clear()
    error = spec_error(message)
    assert error.path == "root.factories[1].args.tau"
    assert "empty value" in str(error)


def test_empty_value_in_a_list_names_its_index():
    """An empty Value inside a list names its index."""
    message = network.factory_to_message(nn.MaxPool2d((2, 2)))
    message.root.args["kernel_size"].list_value.values[1].Clear()
    assert spec_error(message).path == "root.args.kernel_size[1]"


def test_empty_value_in_a_nested_factory_names_its_path():
    """An empty Value inside a surrogate inside a network layer names the whole path."""
    message = network.factory_to_message(rich_network())
    index = next(i for i, node in enumerate(message.root.layers) if node.WhichOneof("kind") == "layer")
    surrogate = message.root.layers[index].layer.factories[1].args["spike_function"].factory_value
    surrogate.args["slope"].Clear()
    assert spec_error(message).path == f"root.layers[{index}].factories[1].args.spike_function.args.slope"


def test_empty_node_names_its_path():
    """A Network node with no kind set raises SpecError naming the node."""
    message = network.factory_to_message(rich_network())
    message.root.layers[2].Clear()
    error = spec_error(message)
    assert error.path == "root.layers[2]"
    assert "empty node" in str(error)


def test_missing_root_names_it():
    """A NetworkSpec without its root factory raises SpecError for network.root."""
    error = spec_error(pb.NetworkSpec())
    assert error.path == "network.root"


def test_raw_bool_bytes_other_than_0_or_1_are_refused():
    """A BOOL tensor whose bytes aren't each 0 or 1 is malformed, for numpy and torch alike."""
    message = pb.Tensor(dtype=pb.DATA_TYPE_BOOL, shape=[3], data=bytes([0, 2, 1]), encoding=pb.TENSOR_ENCODING_RAW)
    for decoder in (tensors.shape_of, tensors.decode, tensors.decode_torch):
        with pytest.raises(tensors.TensorError, match="0 or 1"):
            decoder(message)


def test_sequential_args_on_the_wire_are_refused():
    """Args on a Sequential message reach the description and are refused there, not dropped."""
    message = network.factory_to_message(rb.Sequential(nn.Linear(4), nn.ReLU()))
    message.root.args["out_features"].int_value = 3
    with pytest.raises(SpecError, match="Sequential takes no arguments") as caught:
        spec.from_spec(network.from_message(message))
    assert caught.value.path == "root.args"


def test_network_args_on_the_wire_are_refused():
    """Args on a Network message are refused at the Network's args."""
    message = network.factory_to_message(rich_network())
    message.root.args["bias"].bool_value = False
    with pytest.raises(SpecError, match="Network takes no arguments") as caught:
        spec.from_spec(network.from_message(message))
    assert caught.value.path == "root.args"


def test_integral_number_value_for_an_int_argument_builds_as_int():
    """A double 8.0 for an integer argument builds exactly as the integer 8."""
    message = network.factory_to_message(nn.Linear(8))
    message.root.args["out_features"].number_value = 8.0
    assert spec.from_spec(network.from_message(message)) == nn.Linear(8)


def test_fractional_number_value_for_an_int_argument_is_refused():
    """A double 8.5 for an integer argument is refused at that argument."""
    message = network.factory_to_message(nn.Linear(8))
    message.root.args["out_features"].number_value = 8.5
    with pytest.raises(SpecError, match="whole number") as caught:
        spec.from_spec(network.from_message(message))
    assert caught.value.path == "root.args.out_features"
