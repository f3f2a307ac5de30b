"""Messages to domain values and back: the one place the server converts.

Requests become session ids, tensors, ``TrainingOptions``, ``Dataset``\\ s and ``Snapshot``\\ s;
sessions, ``Scores``, training progress and snapshots become messages. Tensors and networks go
through the converters the client shares (``rnnbuilder_sim.wire``).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable

import torch
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2

from rnnbuilder import SpecError, spec
from rnnbuilder.describe import describe
from rnnbuilder.encode import Encoder
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import descriptions, names, networks, tensors

from .config import Limits
from .errors import InvalidRequest, LimitExceeded
from .operations import Simulation
from .session import Session
from .snapshot import Snapshot
from .training import (
    OPTIMIZERS,
    BatchProgress,
    Dataset,
    OptimizerConfig,
    OptimizerSnapshot,
    Progress,
    Scores,
    TrainingOptions,
    loss_names,
)

__all__ = [
    "describable",
    "session_id",
    "network",
    "session_message",
    "server_info",
    "required_tensor",
    "encoder",
    "bitpacked",
    "run_response",
    "simulate_response",
    "named_tensors",
    "decode_named",
    "carry",
    "training_options",
    "dataset",
    "validation",
    "scores_message",
    "progress_message",
    "snapshot_to_message",
    "snapshot_from_message",
    "imported_snapshot",
]


def describable(description: dict) -> None:
    """Raise InvalidRequest unless the server's own description of a network (every default filled
    in, so deeper than what the client sent) fits in the deepest messages that carry it: a listing
    and an imported snapshot. Protobuf parses at most 100 nested messages; a session whose
    description can't be parsed back could be made but never listed, exported or checkpointed."""
    network = networks.to_message(description)
    try:
        for carrier in (
            pb.ListSessionsResponse(sessions=[pb.Session(network=network)]),
            pb.ImportSessionRequest(snapshot=pb.SessionSnapshot(network=network)),
        ):
            type(carrier).FromString(carrier.SerializeToString())
    except (protobuf_message.DecodeError, protobuf_message.EncodeError, RecursionError):
        raise InvalidRequest(
            "the network is nested too deeply to be described: with its defaults filled in it passes the "
            "wire format's limit of 100 nested messages; flatten nested Sequentials and Networks"
        ) from None


_CARRIES = {0: "none", 1: "none", 2: "start", 3: "continue"}
"""``TrainStepRequest.carry`` (unspecified, none, start, continue) as ``operations.train_step`` takes it."""


def session_id(name: str) -> str:
    """The id in a session's resource name, or InvalidRequest showing the form.

    >>> session_id("sessions/3f2a")
    '3f2a'
    >>> session_id("3f2a")
    Traceback (most recent call last):
    server.errors.InvalidRequest: a session name looks like 'sessions/<id>', got '3f2a'
    """
    found = names.session_id(name)
    if found is None:
        raise InvalidRequest(f"a session name looks like 'sessions/<id>', got {name!r}")
    return found


def network(session: pb.Session, limits: Limits) -> dict:
    """The description of the network a CreateSession request asks for."""
    if not session.HasField("network"):
        raise InvalidRequest("session.network is missing: describe the network to simulate")
    return _description(session.network, limits)


def _description(message: pb.NetworkSpec, limits: Limits | None) -> dict:
    """A network's description; with ``limits`` (a caller's network), its size is checked first,
    before reading it takes time (100,000 chained nodes took 1.7 s to read)."""
    if limits is not None:
        most = limits.max_network_nodes
        size = networks.network_size(message, stop=most)
        if size.nodes > most:
            raise LimitExceeded("max_network_nodes", size.nodes, most, "factories and nodes in the network (or more)")
        # Tensor arguments are read into the description as numbers, each a Python object: bounded
        # like the parameters they become before they are read.
        most = limits.max_parameters_per_session
        if size.tensor_elements > most:
            raise LimitExceeded(
                "max_parameters_per_session", size.tensor_elements, most, "elements of the network's tensor arguments"
            )
    return networks.from_message(message)


def session_message(session: Session, device: str) -> pb.Session:
    return pb.Session(
        name=names.session_name(session.id),
        network=networks.to_message(session.description),
        input_shape=session.input_shape,
        batch_size=session.batch_size,
        seed=session.seed,
        output_shape=session.output_shape,
        parameter_count=session.parameter_count,
        timesteps_simulated=session.timesteps,
        device=device,
        recordable_layers=session.recordable_layers,
        create_time=_timestamp(session.create_time),
    )


def server_info(
    version: str, device: str, server_id: str, limits: Limits, registry: spec.Registry, batching: bool
) -> pb.GetServerInfoResponse:
    factory_types, surrogate_types = registry.factory_names(), registry.surrogate_names()
    response = pb.GetServerInfoResponse(
        version=version,
        device=device,
        factory_types=factory_types,
        surrogate_types=surrogate_types,
        limits=pb.Limits(**{f: getattr(limits, f) for f in pb.Limits.DESCRIPTOR.fields_by_name}),
        losses=loss_names(),
        optimizers=sorted(OPTIMIZERS),
        server_id=server_id,
        batching=batching,
    )
    response.MergeFrom(_type_descriptions(registry, (*factory_types, *surrogate_types, *registry.encoder_names())))
    return response


@functools.lru_cache(maxsize=4)
def _type_descriptions(registry: spec.Registry, names: tuple[str, ...]) -> pb.GetServerInfoResponse:
    """The descriptions of every type ``registry`` allows, made on a server's first GetServerInfo
    and again only when types were registered since (a registry only grows: ``names`` tells)."""
    return descriptions.to_server_info(describe(registry))


def required_tensor(request, field: str, fits: Callable[[tuple[int, ...]], None], hint: str = "") -> torch.Tensor:
    """The tensor in ``request.<field>``, decoded once ``fits(shape)`` has accepted its shape (it
    raises what doesn't fit); InvalidRequest if it is missing, with ``hint`` on what to send."""
    if not request.HasField(field):
        raise InvalidRequest(f"{field} is missing: {hint}" if hint else f"{field} is missing")
    checked = tensors.check(getattr(request, field))
    fits(checked.shape)
    return checked.to_torch()


def encoder(request: pb.RunRequest, registry: spec.Registry) -> Encoder | None:
    """The spike encoder a Run names in ``encoder``, if any, of the types in ``registry``;
    InvalidRequest says what is wrong with it (an unknown type, a bad argument)."""
    if not request.HasField("encoder"):
        return None
    try:
        return networks.encoder_from_message(request.encoder, registry)
    except SpecError as e:
        raise InvalidRequest(str(e)) from None


def bitpacked(request: pb.RunRequest | pb.SimulateRequest) -> bool:
    """Whether the reply is to carry binary values as bits."""
    return request.output_encoding == pb.TENSOR_ENCODING_BITPACKED


def run_response(simulation: Simulation, packed: bool) -> pb.RunResponse:
    output, recordings = tensors.encode(simulation.output, packed), named_tensors(simulation.recordings, packed)
    return pb.RunResponse(output=output, recordings=recordings)


def simulate_response(simulation: Simulation, packed: bool) -> pb.SimulateResponse:
    output, recordings = tensors.encode(simulation.output, packed), named_tensors(simulation.recordings, packed)
    return pb.SimulateResponse(output=output, recordings=recordings, first_timestep=simulation.first_timestep)


def named_tensors(values: dict[str, torch.Tensor], packed: bool = False) -> list[pb.NamedTensor]:
    return [pb.NamedTensor(name=name, tensor=tensors.encode(value, packed)) for name, value in values.items()]


def decode_named(items, most: int | None, what: str = "tensors") -> dict[str, torch.Tensor]:
    """``NamedTensor`` messages by name; InvalidRequest if a name comes twice, or if they hold more
    than ``most`` elements together (None: no bound), checked before anything is decoded."""
    checked = {}
    for item in items:
        if item.name in checked:
            raise InvalidRequest(f"tensor {item.name!r} is given twice")
        checked[item.name] = tensors.check(item.tensor)
    count = sum(c.count for c in checked.values())
    if most is not None and count > most:
        raise InvalidRequest(f"the {what} hold {count:,} elements, more than fit ({most:,} at most)")
    return {name: c.to_torch() for name, c in checked.items()}


def carry(value: int) -> str:
    try:
        return _CARRIES[value]
    except KeyError:
        raise InvalidRequest(f"unknown carry {value}") from None


def training_options(message: pb.TrainingConfig) -> TrainingOptions:
    if not (message.grad_clip_norm >= 0):
        raise InvalidRequest(f"grad_clip_norm must be >= 0, got {message.grad_clip_norm}")
    return TrainingOptions(message.loss or "ce_count", _optimizer_config(message.optimizer), message.grad_clip_norm)


def dataset(
    request, fits: Callable[[tuple[int, ...], tuple[int, ...]], None], inputs: str = "inputs", targets: str = "targets"
) -> Dataset:
    """The dataset in ``request``'s ``inputs`` and ``targets`` fields, both required, decoded once
    ``fits(inputs_shape, targets_shape)`` has accepted their shapes."""
    for field in (inputs, targets):
        if not request.HasField(field):
            raise InvalidRequest(f"{field} is missing")
    x, y = tensors.check(getattr(request, inputs)), tensors.check(getattr(request, targets))
    fits(x.shape, y.shape)
    return Dataset(x.to_torch(), y.to_torch())


def validation(request: pb.TrainRequest, fits: Callable[[tuple[int, ...], tuple[int, ...]], None]) -> Dataset | None:
    """A TrainRequest's validation set, if it has one (then it needs both halves); ``fits`` as in ``dataset``."""
    if request.HasField("validation_inputs") or request.HasField("validation_targets"):
        return dataset(request, fits, "validation_inputs", "validation_targets")
    return None


def scores_message(scores: Scores) -> pb.Metrics:
    return pb.Metrics(loss=scores.loss, grad_norm=scores.grad_norm, accuracy=scores.accuracy)


def progress_message(progress: Progress) -> pb.TrainResponse:
    if isinstance(progress, BatchProgress):
        batch = pb.BatchProgress(
            epoch=progress.epoch,
            batch=progress.batch,
            batches=progress.batches,
            metrics=scores_message(progress.scores),
        )
        return pb.TrainResponse(batch=batch)
    epoch = pb.EpochSummary(
        epoch=progress.epoch,
        metrics=scores_message(progress.scores),
        validation_metrics=None if progress.validation is None else scores_message(progress.validation),
        samples_per_second=progress.samples_per_second,
    )
    return pb.TrainResponse(epoch=epoch)


def snapshot_to_message(snapshot: Snapshot) -> pb.SessionSnapshot:
    optimizer = None
    if snapshot.optimizer is not None:
        config, tensors_ = _optimizer_message(snapshot.optimizer.config), named_tensors(snapshot.optimizer.tensors)
        optimizer = pb.OptimizerSnapshot(config=config, tensors=tensors_)
    return pb.SessionSnapshot(
        network=networks.to_message(snapshot.description),
        input_shape=snapshot.input_shape,
        batch_size=snapshot.batch_size,
        seed=snapshot.seed,
        timesteps_simulated=snapshot.timesteps,
        parameters=named_tensors(snapshot.parameters),
        state=named_tensors(snapshot.state),
        optimizer=optimizer,
        random_state=tensors.encode(snapshot.rng),
        carried_state=named_tensors(snapshot.carried or {}),
        carried_batch_size=snapshot.carried_batch,
        create_time=_timestamp(snapshot.create_time),
    )


def snapshot_from_message(message: pb.SessionSnapshot, limits: Limits | None = None) -> Snapshot:
    """The snapshot ``message`` holds. With ``limits`` (a snapshot from a caller, not the server's
    own checkpoint), each part's elements are checked against what a session within them can hold
    before anything is decoded: a bit-packed tensor is up to 64 times its message."""
    if not message.HasField("network"):
        raise InvalidRequest("the snapshot has no network: send what ExportSession gave")
    most = _snapshot_bounds(message, limits)
    rng = carried = None
    if message.HasField("random_state"):
        rng = required_tensor(message, "random_state", functools.partial(_rng_fits, most["random_state"]))
    if message.carried_state:
        carried = decode_named(message.carried_state, most["carried"], "carried state")
    return Snapshot(
        description=_description(message.network, limits),
        input_shape=tuple(message.input_shape),
        batch_size=message.batch_size,
        seed=message.seed,
        timesteps=message.timesteps_simulated,
        parameters=decode_named(message.parameters, most["parameters"], "parameters"),
        state=decode_named(message.state, most["state"], "state tensors"),
        optimizer=None
        if not message.HasField("optimizer")
        else OptimizerSnapshot(
            _optimizer_config(message.optimizer.config),
            decode_named(message.optimizer.tensors, most["optimizer"], "optimizer tensors"),
        ),
        rng=rng,
        carried=carried,
        carried_batch=message.carried_batch_size,
        create_time=message.create_time.ToDatetime(dt.UTC) if message.HasField("create_time") else None,
    )


def imported_snapshot(request: pb.ImportSessionRequest, limits: Limits) -> Snapshot:
    if not request.HasField("snapshot") or not request.snapshot.HasField("network"):
        raise InvalidRequest("snapshot is missing or has no network: send what ExportSession gave")
    return snapshot_from_message(request.snapshot, limits)


_RNG_ELEMENTS = 1 << 16
"""A random generator's state is a few kB (a CPU generator's: 5,056 bytes)."""


def _snapshot_bounds(message: pb.SessionSnapshot, limits: Limits | None) -> dict[str, int | None]:
    """The most elements each part of a snapshot may hold under ``limits`` (None: no bounds)."""
    if limits is None:
        return dict.fromkeys(("parameters", "state", "optimizer", "carried", "random_state"))
    state = limits.max_state_elements_per_session
    carried_batch = min(message.carried_batch_size, limits.max_batch_size)
    return {
        "parameters": limits.max_parameters_per_session,
        "state": state,
        # Adam's two moments per element, and a step count per parameter.
        "optimizer": 3 * limits.max_parameters_per_session,
        # The state per batch entry, at the batch size of the carried state.
        "carried": state * carried_batch // max(message.batch_size, 1),
        "random_state": _RNG_ELEMENTS,
    }


def _rng_fits(most: int | None, shape: tuple[int, ...]) -> None:
    if most is not None and math.prod(shape) > most:
        raise InvalidRequest(f"the random generator state holds {math.prod(shape):,} elements; at most {most:,} fit")


def _timestamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _optimizer_config(message: pb.OptimizerConfig) -> OptimizerConfig:
    return OptimizerConfig(
        name=message.name or "adam",
        lr=message.learning_rate,
        weight_decay=message.weight_decay,
        momentum=message.momentum,
    )


def _optimizer_message(config: OptimizerConfig) -> pb.OptimizerConfig:
    return pb.OptimizerConfig(
        name=config.name, learning_rate=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
