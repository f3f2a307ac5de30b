"""Networks on the wire: rnnbuilder's data description (``rnnbuilder.spec``) as ``NetworkSpec``
messages and back. The one place that converts networks, for the client and the server alike."""

from __future__ import annotations

from rnnbuilder import ModuleFactory, SpecError, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb

__all__ = ["to_message", "from_message", "factory_to_message", "node_count"]

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


def node_count(message: pb.NetworkSpec, stop: int) -> int:
    """The factories and nodes a ``NetworkSpec`` holds, counted without converting it; the count
    stops once it passes ``stop``, so that a huge network costs no more than a limit's worth.

    >>> from rnnbuilder import nn, snn, Sequential
    >>> node_count(factory_to_message(Sequential(nn.Linear(4), snn.LIF())), stop=100)  # + the surrogate
    4
    """
    count, todo = 0, [message.root]
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
    return count


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
