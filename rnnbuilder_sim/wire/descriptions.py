"""Type descriptions on the wire: ``rnnbuilder.describe``'s ``TypeDescription`` as the
``FactoryDescription`` messages of ``GetServerInfoResponse`` and back, for the server and the client.

>>> from rnnbuilder.describe import describe
>>> info = to_server_info(describe())
>>> linear = next(d for d in info.factories if d.type == "nn.Linear")
>>> [pb.ArgumentType.Name(t) for t in linear.arguments[0].types], linear.arguments[1].default_value.bool_value
(['ARGUMENT_TYPE_INTEGER'], True)
>>> from_server_info(info) == describe()
True
"""

from __future__ import annotations

from dataclasses import MISSING

from rnnbuilder.describe import ArgumentDescription, ArgumentKind, Descriptions, TypeDescription
from rnnbuilder_sim.v1 import simulator_pb2 as pb

from .networks import _read_value, _value

__all__ = ["to_message", "from_message", "to_server_info", "from_server_info"]

_TYPES = {kind: pb.ArgumentType.Value(f"ARGUMENT_TYPE_{kind.name}") for kind in ArgumentKind}
_KINDS = {number: kind for kind, number in _TYPES.items()}


def to_message(description: TypeDescription) -> pb.FactoryDescription:
    """The ``FactoryDescription`` of one type."""
    return pb.FactoryDescription(
        type=description.name,
        description=description.description,
        arguments=[_argument(a) for a in description.arguments],
    )


def from_message(message: pb.FactoryDescription) -> TypeDescription:
    """The ``TypeDescription`` a ``FactoryDescription`` holds; argument types this version doesn't know
    (a newer server's) are left out of ``kinds``."""
    return TypeDescription(message.type, message.description, tuple(_read_argument(a) for a in message.arguments))


def to_server_info(descriptions: Descriptions) -> pb.GetServerInfoResponse:
    """A ``GetServerInfoResponse`` with only ``factories``, ``surrogates`` and ``encoders`` set, to
    merge (``MergeFrom``) with the rest of a server's answer."""
    return pb.GetServerInfoResponse(
        factories=map(to_message, descriptions.factories),
        surrogates=map(to_message, descriptions.surrogates),
        encoders=map(to_message, descriptions.encoders),
    )


def from_server_info(message: pb.GetServerInfoResponse) -> Descriptions:
    """The descriptions a ``GetServerInfoResponse`` carries."""
    return Descriptions(
        tuple(map(from_message, message.factories)),
        tuple(map(from_message, message.surrogates)),
        tuple(map(from_message, message.encoders)),
    )


def _argument(argument: ArgumentDescription) -> pb.ArgumentDescription:
    message = pb.ArgumentDescription(
        name=argument.name,
        types=[_TYPES[k] for k in argument.kinds],
        item_types=[_TYPES[k] for k in argument.item_kinds],
        required=argument.required,
        description=argument.description,
    )
    if argument.default is not MISSING:
        message.default_value.CopyFrom(_value(argument.default))
    return message


def _read_argument(message: pb.ArgumentDescription) -> ArgumentDescription:
    default = _read_value(message.default_value, message.name) if message.HasField("default_value") else MISSING
    return ArgumentDescription(
        message.name,
        _kinds(message.types),
        _kinds(message.item_types),
        message.required,
        default,
        message.description,
    )


def _kinds(types) -> tuple[ArgumentKind, ...]:
    return tuple(_KINDS[t] for t in types if t in _KINDS)
