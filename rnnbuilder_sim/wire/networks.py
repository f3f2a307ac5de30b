"""Networks on the wire: rnnbuilder's data description (``rnnbuilder.spec``) as ``NetworkSpec``
messages and back. The one place that converts networks, for the client and the server alike."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rnnbuilder import ModuleFactory, SpecError, spec
from rnnbuilder.encode import Encoder
from rnnbuilder_sim.v1 import simulator_pb2 as pb

from . import tensors

__all__ = [
    "to_message",
    "from_message",
    "factory_to_message",
    "network_size",
    "NetworkSize",
    "encoder_to_message",
    "encoder_from_message",
]

_COMBINE = ("stack", "sum", "list")


def factory_to_message(factory: ModuleFactory, registry: spec.Registry | None = None) -> pb.NetworkSpec:
    """The ``NetworkSpec`` of an rnnbuilder factory."""
    return to_message(spec.to_spec(factory, registry))


def to_message(description: dict) -> pb.NetworkSpec:
    """A ``NetworkSpec`` from a ``rnnbuilder.spec`` description (a JSON-compatible dict).

    >>> from rnnbuilder import nn, snn, Sequential
    >>> message = factory_to_message(Sequential(nn.Linear(4), snn.LIF()))
    >>> message.root.factories[1].args["spike_function"].factory_value.type
    'snn.SpikeLinear'
    >>> spec.from_spec(from_message(message))
    Sequential(Linear(out_features=4, bias=True), LIF(tau=5.0, spike_function=SpikeLinear(gradient_factor=0.3)))
    """
    return pb.NetworkSpec(root=_factory(description["root"]))


def from_message(message: pb.NetworkSpec) -> dict:
    """The ``rnnbuilder.spec`` description a ``NetworkSpec`` holds; ``SpecError`` names what's malformed."""
    if not message.HasField("root"):
        raise SpecError("network.root", "missing: set the network's root factory")
    return {"format": spec.FORMAT, "root": _read_factory(message.root, "root")}


def encoder_to_message(encoder: Encoder, registry: spec.Registry | None = None) -> pb.Factory:
    """The ``Factory`` message of a spike encoder (``rnnbuilder.encode``), as ``RunRequest.encoder`` takes it.

    >>> from rnnbuilder import encode
    >>> message = encoder_to_message(encode.Rate(num_steps=20, gain=0.5))
    >>> message.type, message.args["num_steps"].int_value, message.args["gain"].number_value
    ('encode.Rate', 20, 0.5)
    >>> encoder_from_message(message)
    Rate(num_steps=20, gain=0.5, offset=0.0, first_spike_time=0, time_var_input=False, poisson=False)
    """
    return _factory(spec.encoder_to_spec(encoder, registry))


def encoder_from_message(message: pb.Factory, registry: spec.Registry | None = None) -> Encoder:
    """The spike encoder a ``Factory`` message names, built only from the encoder types in
    ``registry`` (the default registry when None); ``SpecError`` names what is wrong, under
    ``encoder``."""
    return spec.encoder_from_spec(_read_factory(message, "encoder"), registry)


class NetworkSize(NamedTuple):
    """How big a ``NetworkSpec`` is, counted without converting it (``network_size``)."""

    nodes: int
    """Its factories and nodes, counted up to one past the ``stop`` asked for."""
    tensor_elements: int
    """The elements its tensor arguments hold (weights, per-neuron coefficients), among those nodes."""


def network_size(message: pb.NetworkSpec, stop: int) -> NetworkSize:
    """The factories and nodes a ``NetworkSpec`` holds and its tensor arguments' elements, counted
    without converting it; the count stops once the nodes pass ``stop``, so that a huge network
    costs no more than a limit's worth.

    >>> from rnnbuilder import nn, snn, Sequential
    >>> network_size(factory_to_message(Sequential(nn.Linear(4), snn.LIF())), stop=100)  # + the surrogate
    NetworkSize(nodes=4, tensor_elements=0)
    """
    count, elements, todo = 0, 0, [message.root]
    while todo and count <= stop:
        factory = todo.pop()
        count += 1 + len(factory.layers)
        if count > stop:
            break
        todo.extend(factory.factories)
        todo.extend(f for node in factory.layers if node.HasField("layer") for f in node.layer.factories)
        values = list(factory.args.values())
        while values:
            value = values.pop()
            if value.HasField("factory_value"):
                todo.append(value.factory_value)
            elif value.HasField("list_value"):
                values.extend(value.list_value.values)
            elif value.HasField("tensor_value"):
                elements += math.prod(value.tensor_value.shape)
    return NetworkSize(count, elements)


def _factory(description: dict) -> pb.Factory:
    message = pb.Factory(type=description["type"])
    if "factories" in description:
        message.factories.extend(_factory(f) for f in description["factories"])
    if "layers" in description:
        message.layers.extend(_node(node) for node in description["layers"])
        message.names.extend(pb.LayerName(name=n["name"], node_index=n["node"]) for n in description["names"])
    for name, value in description.get("args", {}).items():
        message.args[name].CopyFrom(_value(value))
    return message


def _tensor(description: dict) -> pb.Tensor:
    """The ``Tensor`` message of a description's ``{"tensor": {"dtype", "shape", "data"}}``."""
    body = description["tensor"]
    try:
        array = np.asarray(body["data"], dtype=body["dtype"]).reshape(body["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise SpecError("tensor", f'malformed tensor argument; expected {{"dtype", "shape", "data"}}: {e}') from None
    return tensors.encode(array)


def _value(value) -> pb.Value:
    if value is None:
        return pb.Value(null_value=True)
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(number_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, list):
        return pb.Value(list_value=pb.ValueList(values=[_value(v) for v in value]))
    if "tensor" in value and "type" not in value:
        return pb.Value(tensor_value=_tensor(value))
    return pb.Value(factory_value=_factory(value))


def _node(node: dict) -> pb.Node:
    kind = node["kind"]
    if kind == "input":
        return pb.Node(input=pb.InputNode())
    if kind == "layer":
        return pb.Node(
            layer=pb.LayerNode(input_index=node["input"], factories=[_factory(f) for f in node["factories"]])
        )
    if kind in _COMBINE:
        return pb.Node(**{kind: pb.CombineNode(input_indices=node["inputs"])})
    initial = node["initial_value"]
    placeholder = pb.PlaceholderNode(layer_index=node["layer"], hint=node["hint"] or "")
    if initial is not None:
        placeholder.initial_value.CopyFrom(
            pb.InitialValue(**({initial: True} if isinstance(initial, str) else {"constant": initial}))
        )
    return pb.Node(placeholder=placeholder)


def _read_factory(message: pb.Factory, path: str) -> dict:
    description: dict = {"type": message.type}
    if message.factories:
        description["factories"] = [_read_factory(f, f"{path}.factories[{i}]") for i, f in enumerate(message.factories)]
    if message.layers or message.names:
        description["layers"] = [_read_node(n, f"{path}.layers[{i}]") for i, n in enumerate(message.layers)]
        description["names"] = [{"name": n.name, "node": n.node_index} for n in message.names]
    if message.type == "Sequential":
        description.setdefault("factories", [])
    if message.args or message.type not in ("Sequential", "Network"):  # args where they mean nothing: spec refuses
        description["args"] = {name: _read_value(v, f"{path}.args.{name}") for name, v in sorted(message.args.items())}
    return description


def _read_value(message: pb.Value, path: str):
    kind = message.WhichOneof("kind")
    if kind is None:
        raise SpecError(path, "empty value: set one of bool_value, int_value, number_value, string_value, ...")
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [_read_value(v, f"{path}[{i}]") for i, v in enumerate(message.list_value.values)]
    if kind == "factory_value":
        return _read_factory(message.factory_value, path)
    if kind == "tensor_value":
        try:
            array = tensors.decode(message.tensor_value)
        except tensors.TensorError as e:
            raise SpecError(path, str(e)) from None
        return {"tensor": {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.ravel().tolist()}}
    return getattr(message, kind)


def _read_node(message: pb.Node, path: str) -> dict:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise SpecError(path, "empty node: set one of input, layer, stack, sum, list, placeholder")
    if kind == "input":
        return {"kind": "input"}
    if kind == "layer":
        factories = [_read_factory(f, f"{path}.factories[{i}]") for i, f in enumerate(message.layer.factories)]
        return {"kind": "layer", "input": message.layer.input_index, "factories": factories}
    if kind in _COMBINE:
        return {"kind": kind, "inputs": list(getattr(message, kind).input_indices)}
    placeholder = message.placeholder
    initial = None
    if placeholder.HasField("initial_value"):
        which = placeholder.initial_value.WhichOneof("kind")
        initial = placeholder.initial_value.constant if which == "constant" else which
    return {
        "kind": "placeholder",
        "layer": placeholder.layer_index,
        "hint": placeholder.hint or None,
        "initial_value": initial,
    }
