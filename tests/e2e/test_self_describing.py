"""The contract describes itself: a client that knows only the generated stubs and GetServerInfo's
answer builds a network of every factory type the server lists, and simulates it.

This module imports nothing of rnnbuilder: each type's arguments, their kinds and which are required
come from ``GetServerInfoResponse.factories``. Values follow a small rule per argument type
(``value``); a tensor's shape is read from its description ("shape (out_features, in_features)").
A type goes into a ``Network`` (input -> layer of a ``Sequential`` holding it -> output), so every
network uses those two as well. Its input shape is read from its description's "(channels, ...)"
dims; the few types whose description names no such shape have theirs in ``INPUT_SHAPES``. Every
described spike encoder likewise turns a Run's data into the session's input.
"""

from __future__ import annotations

import math
import re

import grpc
import numpy as np
import pytest

from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

T, BATCH = 3, 2
VECTOR = (4,)
"""The input of a type whose description names no shape: a few features."""
CHANNELS, SIZE = 2, 6
"""The input of a type that takes (channels, length, ...) dims: this many channels, each other dim this long."""
INPUT_SHAPES = {
    "nn.Upsample": (CHANNELS, SIZE),  # "(channels, ...)": at least one dim after the channels
    "nn.Unflatten": (3, 3, 4),  # splits its (rule-given) dim 2 into two of size 2
}
LIST_INPUTS = {"nn.Bilinear"}
"""Types that take a list of two vectors (``Node.list``), as their descriptions say."""
STRUCTURAL = {"Sequential", "Network"}
"""Types built from nodes and factories, not arguments; they hold every other type here."""


@pytest.fixture(scope="module")
def stub(server_address):
    """A bare stub on the module's server."""
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.SimulatorServiceStub(channel)


@pytest.fixture(scope="module")
def info(stub) -> pb.GetServerInfoResponse:
    """The server's GetServerInfo answer: all the test knows of the types."""
    return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)


def described(info: pb.GetServerInfoResponse, name: str) -> pb.FactoryDescription:
    """The description of the type ``name``."""
    return next(d for d in (*info.factories, *info.surrogates, *info.encoders) if d.type == name)


def argument(description: pb.FactoryDescription, name: str) -> pb.ArgumentDescription:
    """The described argument ``name`` of a type."""
    return next(a for a in description.arguments if a.name == name)


def input_shape(description: pb.FactoryDescription) -> tuple[int, ...]:
    """The data shape a type takes, from the "(channels, ...)" its description names first."""
    if description.type in INPUT_SHAPES:
        return INPUT_SHAPES[description.type]
    dims = re.search(r"\(channels((?:, \w+)*)\)", description.description)
    return VECTOR if dims is None else (CHANNELS, *[SIZE] * dims.group(1).count(","))


def tensor_shape(argument: pb.ArgumentDescription, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an argument's description gives ("shape (out_features, in_features)"), a size per
    name: the input's for in_features and in_channels, 2 for others; no shape named: a scalar."""
    found = re.search(r"shape \((\w+(?:, \w+)*),?\)", argument.description)
    names = found.group(1).split(", ") if found else []
    sizes = {"in_features": math.prod(in_shape), "in_channels": in_shape[0]}
    return tuple(int(n) if n.isdigit() else sizes.get(n, 2) for n in names)


def value(kind: int, argument: pb.ArgumentDescription, info, in_shape) -> pb.Value:
    """A value of ``kind`` for ``argument`` by the rule: small positive numbers, true, lists of two
    items, a tensor shaped as described, and a surrogate that needs no arguments."""
    if kind == pb.ARGUMENT_TYPE_INTEGER:
        return pb.Value(int_value=2)
    if kind == pb.ARGUMENT_TYPE_REAL:
        return pb.Value(number_value=0.5)
    if kind == pb.ARGUMENT_TYPE_BOOLEAN:
        return pb.Value(bool_value=True)
    if kind == pb.ARGUMENT_TYPE_LIST:
        item = value(argument.item_types[0], argument, info, in_shape)
        return pb.Value(list_value=pb.ValueList(values=[item, item]))
    if kind == pb.ARGUMENT_TYPE_TENSOR:
        shape = tensor_shape(argument, in_shape)
        data = np.full(shape, 0.5, dtype="<f4").tobytes()
        return pb.Value(tensor_value=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, data=data))
    if kind == pb.ARGUMENT_TYPE_FACTORY:
        surrogate = next(s for s in info.surrogates if not any(a.required for a in s.arguments))
        return pb.Value(factory_value=pb.Factory(type=surrogate.type))
    pytest.fail(f"no rule gives a {pb.ArgumentType.Name(kind)} value for {argument.name}")


def arguments(description, info, in_shape, optional_null: bool) -> dict[str, pb.Value]:
    """Values for the required arguments; with ``optional_null`` also for the first argument that
    defaults to null (a type such as one needing "size or scale_factor" needs one of them)."""
    chosen = [a for a in description.arguments if a.required]
    if optional_null:
        chosen += [a for a in description.arguments if a.default_value.WhichOneof("kind") == "null_value"][:1]
    return {a.name: value(next(t for t in a.types if t != pb.ARGUMENT_TYPE_NULL), a, info, in_shape) for a in chosen}


def network(layer: pb.Factory, list_input: bool) -> pb.NetworkSpec:
    """input -> (a list of the input twice) -> a layer of Sequential(layer), named output."""
    nodes = [pb.Node(input=pb.InputNode())]
    if list_input:
        nodes.append(pb.Node(list=pb.CombineNode(input_indices=[0, 0])))
    sequential = pb.Factory(type="Sequential", factories=[layer])
    nodes.append(pb.Node(layer=pb.LayerNode(input_index=len(nodes) - 1, factories=[sequential])))
    root = pb.Factory(type="Network", layers=nodes, names=[pb.LayerName(name="output", node_index=len(nodes) - 1)])
    return pb.NetworkSpec(root=root)


def simulate(stub, description: pb.FactoryDescription, info) -> list[int] | str:
    """The output shape of a Run of a session with the type, or why no try made one."""
    in_shape = input_shape(description)
    errors = []
    for optional_null in (False, True):
        layer = pb.Factory(type=description.type, args=arguments(description, info, in_shape, optional_null))
        session = pb.Session(
            network=network(layer, description.type in LIST_INPUTS), input_shape=in_shape, batch_size=BATCH
        )
        try:
            created = stub.CreateSession(pb.CreateSessionRequest(session=session), timeout=30).session
        except grpc.RpcError as error:
            errors.append(error.details())
            continue
        data = np.random.default_rng(0).random((T, BATCH, *in_shape), dtype=np.float32)
        tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=data.shape, data=data.astype("<f4").tobytes())
        try:
            return list(stub.Run(pb.RunRequest(name=created.name, input=tensor), timeout=30).output.shape)
        except grpc.RpcError as error:
            return f"Run: {error.details()}"
        finally:
            stub.DeleteSession(pb.DeleteSessionRequest(name=created.name), timeout=30)
    return "; ".join(errors)


def test_every_factory_type_builds_from_its_description(stub, info):
    """Every described factory type, given values by the rule alone, makes a session that runs."""
    results = {d.type: simulate(stub, d, info) for d in info.factories if d.type not in STRUCTURAL}
    failed = {name: result for name, result in results.items() if not isinstance(result, list)}
    assert failed == {}
    assert all(shape[:2] == [T, BATCH] for shape in results.values())


def encode(stub, session: str, description: pb.FactoryDescription, info) -> list[int] | str:
    """The output shape of a Run whose input the encoder of ``description`` turns into spikes, or why
    no try made one: data without a time axis (for encoders that add one) or with one."""
    errors = []
    for optional_null in (False, True):
        encoder = pb.Factory(type=description.type, args=arguments(description, info, VECTOR, optional_null))
        for shape in ((BATCH, *VECTOR), (T, BATCH, *VECTOR)):
            data = np.random.default_rng(0).random(shape, dtype=np.float32)
            tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, data=data.astype("<f4").tobytes())
            try:
                return list(
                    stub.Run(pb.RunRequest(name=session, input=tensor, encoder=encoder), timeout=30).output.shape
                )
            except grpc.RpcError as error:
                errors.append(error.details())
    return "; ".join(errors)


def test_every_encoder_encodes_from_its_description(stub, info):
    """Every described spike encoder, given values by the rule alone, turns a Run's data into spikes."""
    some_type = next(d for d in info.factories if d.type not in STRUCTURAL and input_shape(d) == VECTOR)
    layer = pb.Factory(type=some_type.type, args=arguments(some_type, info, VECTOR, optional_null=False))
    session = pb.Session(network=network(layer, some_type.type in LIST_INPUTS), input_shape=VECTOR, batch_size=BATCH)
    name = stub.CreateSession(pb.CreateSessionRequest(session=session), timeout=30).session.name
    try:
        results = {d.type: encode(stub, name, d, info) for d in info.encoders}
    finally:
        stub.DeleteSession(pb.DeleteSessionRequest(name=name), timeout=30)
    assert results and {name: r for name, r in results.items() if not isinstance(r, list)} == {}


def test_every_listed_type_is_described(info):
    """factory_types and surrogate_types name exactly the described factories and surrogates."""
    assert [d.type for d in info.factories] == list(info.factory_types)
    assert [d.type for d in info.surrogates] == list(info.surrogate_types)


def test_every_description_and_argument_has_text(info):
    """Every type and every argument comes with a one-line description."""
    types = (*info.factories, *info.surrogates, *info.encoders)
    assert [d.type for d in types if not d.description] == []
    assert [f"{d.type}.{a.name}" for d in types for a in d.arguments if not a.description] == []
    assert all("\n" not in a.description for d in types for a in d.arguments)


def test_linear_arguments(info):
    """nn.Linear: out_features is a required integer, bias a boolean defaulting to true."""
    linear = described(info, "nn.Linear")
    out_features, bias = linear.arguments
    assert (out_features.name, list(out_features.types), out_features.required) == (
        "out_features",
        [pb.ARGUMENT_TYPE_INTEGER],
        True,
    )
    assert not out_features.HasField("default_value")
    assert (bias.name, list(bias.types), bias.required, bias.default_value) == (
        "bias",
        [pb.ARGUMENT_TYPE_BOOLEAN],
        False,
        pb.Value(bool_value=True),
    )
    assert linear.description.startswith("Fully connected layer")


def test_kernel_size_is_integer_or_list_of_integers(info):
    """A convolution's kernel size takes an integer or a list of integers."""
    kernel = argument(described(info, "nn.Conv2d"), "kernel_size")
    assert (list(kernel.types), list(kernel.item_types)) == (
        [pb.ARGUMENT_TYPE_INTEGER, pb.ARGUMENT_TYPE_LIST],
        [pb.ARGUMENT_TYPE_INTEGER],
    )


def test_spike_function_defaults_to_a_described_surrogate(info):
    """LIF's spike_function is a FACTORY whose default names a surrogate GetServerInfo describes."""
    spike_function = argument(described(info, "snn.LIF"), "spike_function")
    assert list(spike_function.types) == [pb.ARGUMENT_TYPE_FACTORY]
    assert spike_function.default_value.factory_value.type in info.surrogate_types


def test_structural_types_take_no_arguments(info):
    """Sequential and Network are described without arguments: their messages have fields instead."""
    assert [list(described(info, name).arguments) for name in sorted(STRUCTURAL)] == [[], []]
