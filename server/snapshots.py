"""Session snapshots as messages: what ExportSession sends, ImportSession takes and checkpoints hold."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks, tensors

from . import training
from .errors import InvalidRequest

__all__ = ["to_message", "from_message", "named_tensors", "decode_named", "optimizer_config", "timestamp"]


def to_message(snapshot: dict) -> pb.SessionSnapshot:
    """A ``SessionManager.export`` dict as a ``SessionSnapshot`` message."""
    optimizer = snapshot["optimizer"]
    return pb.SessionSnapshot(
        network=networks.to_message(snapshot["description"]),
        input_shape=snapshot["input_shape"],
        batch_size=snapshot["batch_size"],
        seed=snapshot["seed"],
        timesteps_simulated=snapshot["timesteps"],
        parameters=named_tensors(snapshot["parameters"]),
        state=named_tensors(snapshot["state"]),
        optimizer=None
        if optimizer is None
        else pb.OptimizerSnapshot(
            config=optimizer_message(optimizer["config"]), tensors=named_tensors(optimizer["tensors"])
        ),
        random_state=tensors.encode(snapshot["rng"]),
        carried_state=named_tensors(snapshot["carried"] or {}),
        carried_batch_size=snapshot["carried_batch"],
        create_time=timestamp(snapshot["create_time"]),
    )


def from_message(message: pb.SessionSnapshot) -> dict:
    """A ``SessionSnapshot`` message as the dict ``SessionManager.import_`` takes."""
    if not message.HasField("network"):
        raise InvalidRequest("the snapshot has no network: send what ExportSession gave")
    return {
        "description": networks.from_message(message.network),
        "input_shape": list(message.input_shape),
        "batch_size": message.batch_size,
        "seed": message.seed,
        "timesteps": message.timesteps_simulated,
        "parameters": decode_named(message.parameters),
        "state": decode_named(message.state),
        "optimizer": None
        if not message.HasField("optimizer")
        else {
            "config": optimizer_config(message.optimizer.config),
            "tensors": decode_named(message.optimizer.tensors),
        },
        "rng": tensors.decode_torch(message.random_state) if message.HasField("random_state") else None,
        "carried": decode_named(message.carried_state) if message.carried_state else None,
        "carried_batch": message.carried_batch_size,
        "create_time": message.create_time.ToDatetime(dt.UTC) if message.HasField("create_time") else None,
    }


def timestamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """``moment`` as a protobuf Timestamp (None stays None)."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def named_tensors(values: dict, packed: bool = False) -> list[pb.NamedTensor]:
    return [pb.NamedTensor(name=name, tensor=tensors.encode(value, packed)) for name, value in values.items()]


def decode_named(items) -> dict:
    decoded = {}
    for item in items:
        if item.name in decoded:
            raise InvalidRequest(f"tensor {item.name!r} is given twice")
        decoded[item.name] = tensors.decode_torch(item.tensor)
    return decoded


def optimizer_config(message: pb.OptimizerConfig) -> training.OptimizerConfig:
    return training.OptimizerConfig(
        name=message.name or "adam",
        lr=message.learning_rate,
        weight_decay=message.weight_decay,
        momentum=message.momentum,
    )


def optimizer_message(config: training.OptimizerConfig) -> pb.OptimizerConfig:
    return pb.OptimizerConfig(
        name=config.name, learning_rate=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
