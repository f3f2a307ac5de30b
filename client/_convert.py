"""Requests built from Python values and replies turned back into them, for ``Client`` and
``AsyncClient`` alike: arrays through ``rnnbuilder_sim.wire.tensors``, networks through
``rnnbuilder.spec`` and ``rnnbuilder_sim.wire.networks``, metrics into dicts, a ``fit``'s replies
into its history and progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from rnnbuilder import Model, ModuleFactory, spec
from rnnbuilder.describe import TypeDescription
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import descriptions, networks, tensors

__all__ = [
    "Recording",
    "ServerInfo",
    "Training",
    "batches",
    "config",
    "decoded",
    "evaluate_request",
    "local_model",
    "metrics",
    "named",
    "network_message",
    "output",
    "recording",
    "run_request",
    "server_info",
    "simulate_request",
    "snapshot",
    "train_request",
    "train_step_request",
]

_RAW, _BITPACKED = pb.TENSOR_ENCODING_RAW, pb.TENSOR_ENCODING_BITPACKED
_FLOAT32 = np.dtype(np.float32)
_CARRIES = {"none": pb.STATE_CARRY_NONE, "start": pb.STATE_CARRY_START, "continue": pb.STATE_CARRY_CONTINUE}


@dataclass(frozen=True)
class ServerInfo:
    """What a server runs: its version and device, the types a network may use, and its limits."""

    version: str
    device: str
    factory_types: list[str]
    surrogate_types: list[str]
    limits: dict[str, int]
    server_id: str = ""
    """Which replica answered: behind a proxy, each may differ."""
    batching: bool = False
    """Whether timesteps of sessions with the same network that are ready together may run as one
    batched computation (a session asks not to be: ``Session.exact``)."""
    factories: tuple[TypeDescription, ...] = ()
    """Every type of ``factory_types`` with its arguments (``rnnbuilder.describe.TypeDescription``):
    their kinds, defaults and meaning, enough to build any network."""
    surrogates: tuple[TypeDescription, ...] = ()
    """Every type of ``surrogate_types`` with its arguments."""
    encoders: tuple[TypeDescription, ...] = ()
    """The spike encoders ``Session.run(x, encode=...)`` takes, with their arguments."""


class Recording(dict):
    """Recorded layers by name, each (time, batch, ...); ``output`` is the network's output."""

    def __init__(self, output: np.ndarray, layers: Mapping[str, np.ndarray]):
        super().__init__(layers)
        self.output = output


def server_info(reply: pb.GetServerInfoResponse) -> ServerInfo:
    limits = {field.name: getattr(reply.limits, field.name) for field in reply.limits.DESCRIPTOR.fields}
    described = descriptions.from_server_info(reply)
    return ServerInfo(
        reply.version,
        reply.device,
        list(reply.factory_types),
        list(reply.surrogate_types),
        limits,
        reply.server_id,
        reply.batching,
        described.factories,
        described.surrogates,
        described.encoders,
    )


def network_message(net, nir_dt: float | None) -> pb.NetworkSpec:
    """The message of a network: a factory, a ``rnnbuilder.spec`` description, or a NIR graph (a
    ``nir.NIRGraph`` or the path of a ``.nir`` file, imported with timestep ``nir_dt``)."""
    if isinstance(net, ModuleFactory | dict):
        if nir_dt is not None:
            raise ValueError("nir_dt is the timestep of a NIR graph; this network is a factory or a spec")
        return networks.to_message(net if isinstance(net, dict) else spec.to_spec(net))
    if nir_dt is None:
        raise ValueError(
            f"a network is a factory, a spec or a NIR graph (with nir_dt, its timestep), got {type(net).__name__}"
        )
    from rnnbuilder.nir import from_nir  # NIR support is optional (the "nir" extra)

    return networks.to_message(spec.to_spec(from_nir(net, dt=nir_dt)))


def declared_input_shape(net) -> tuple[int, ...]:
    """The input shape a NIR graph (or its file) declares; a factory or a spec declares none."""
    if isinstance(net, ModuleFactory | dict):
        raise TypeError("create_session needs input_shape for a factory or a spec (only a NIR graph declares its own)")
    from rnnbuilder.nir import input_shape  # NIR support is optional (the "nir" extra)

    return input_shape(net)


def snapshot(blob: bytes) -> pb.SessionSnapshot:
    """``Session.save()``'s bytes, read back."""
    try:
        return pb.SessionSnapshot.FromString(blob)
    except Exception as e:  # protobuf's DecodeError, or a wrong type
        raise ValueError(f"not a saved session: {e}") from None


def run_request(name: str, x, layers: Iterable[str], bitpacked: bool, exact: bool, encode=None) -> pb.RunRequest:
    """A RunRequest of ``x``; with ``encode`` (an encoder such as ``rnnbuilder.encode.Rate``), x is
    the analog data the server draws the input spikes from."""
    request = pb.RunRequest(input=_input_fields(x, bitpacked), **_request_fields(name, layers, bitpacked, exact))
    if encode is not None:
        request.encoder.CopyFrom(networks.encoder_to_message(encode))
    return request


def simulate_request(name: str, layers: Iterable[str], bitpacked: bool, exact: bool) -> Callable:
    """The maker of a stream's requests: chunk -> (SimulateRequest, its timesteps)."""
    fields = _request_fields(name, layers, bitpacked, exact)

    def request(chunk) -> tuple[pb.SimulateRequest, int]:
        x = _input_fields(chunk, bitpacked)
        return pb.SimulateRequest(input=x, **fields), x["shape"][0]

    return request


def train_step_request(name: str, x, y, config: pb.TrainingConfig, carry: str) -> pb.TrainStepRequest:
    if carry not in _CARRIES:
        raise ValueError(f"carry must be one of {', '.join(_CARRIES)}, got {carry!r}")
    return pb.TrainStepRequest(
        name=name, input=_input_fields(x, True), targets=tensors.encode_fields(y), config=config, carry=_CARRIES[carry]
    )


def train_request(name: str, x, y, config: pb.TrainingConfig, validation, **fields) -> pb.TrainRequest:
    """A TrainRequest; ``fields`` are its epochs, batch_size, keep_order and tbptt_steps."""
    if validation is not None:
        x_val, y_val = validation
        fields.update(validation_inputs=_input_fields(x_val, True), validation_targets=tensors.encode_fields(y_val))
    return pb.TrainRequest(
        name=name, inputs=_input_fields(x, True), targets=tensors.encode_fields(y), config=config, **fields
    )


def evaluate_request(name: str, x, y, loss: str, batch_size: int) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        name=name, inputs=_input_fields(x, True), targets=tensors.encode_fields(y), loss=loss, batch_size=batch_size
    )


class Training:
    """What a ``fit``'s replies add up to: one summary per epoch, an optional progress bar, and the
    ``on_batch`` callback, which may stop the training."""

    def __init__(self, batches: int | None, progress: bool, on_batch: Callable | None):
        self.history: list[dict[str, float]] = []
        self._bar = _progress_bar(batches) if progress else None
        self._on_batch = on_batch

    def take(self, reply: pb.TrainResponse) -> bool:
        """Note a reply; False once ``on_batch`` asks to stop."""
        if reply.HasField("batch"):
            step = {"epoch": reply.batch.epoch, "batch": reply.batch.batch, **metrics(reply.batch.metrics)}
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in step.items() if k in ("loss", "accuracy")})
            return self._on_batch is None or self._on_batch(step) is not False
        epoch = reply.epoch
        summary = {"epoch": epoch.epoch, **metrics(epoch.metrics), "samples_per_second": epoch.samples_per_second}
        if epoch.HasField("validation_metrics"):
            validation = metrics(epoch.validation_metrics)
            summary.update({f"val_{k}": v for k, v in validation.items() if k != "grad_norm"})
        self.history.append(summary)
        if self._bar is not None:
            self._bar.write(", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def batches(request: pb.TrainRequest) -> int | None:
    """How many batches a ``Train`` request trains on; None where the server will refuse it (it
    says why), so that the progress bar has no total."""
    samples, epochs, batch_size = request.targets.shape[:1], request.epochs, request.batch_size
    if batch_size <= 0 or epochs <= 0 or not samples:
        return None
    return epochs * math.ceil(samples[0] / batch_size)


def local_model(description: dict, input_shape: tuple, parameters: Mapping[str, np.ndarray]) -> Model:
    """The local rnnbuilder model of ``description`` with ``parameters``, in eval mode."""
    import torch

    model = spec.from_spec(description).make_model(input_shape)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in parameters.items()})
    return model.eval()


def metrics(message: pb.Metrics) -> dict[str, float]:
    found = {"loss": message.loss, "grad_norm": message.grad_norm}
    if message.HasField("accuracy"):
        found["accuracy"] = message.accuracy
    return found


def recording(reply: pb.RunResponse | pb.SimulateResponse) -> Recording:
    return Recording(tensors.decode(reply.output), decoded(reply.recordings))


def output(reply: pb.RunResponse | pb.SimulateResponse) -> np.ndarray:
    """The output alone, when no layer was asked for."""
    return tensors.decode(reply.output)


def decoded(items) -> dict[str, np.ndarray]:
    return {item.name: tensors.decode(item.tensor) for item in items}


def named(values: Mapping) -> list[pb.NamedTensor]:
    return [pb.NamedTensor(name=name, tensor=tensors.encode_fields(value)) for name, value in values.items()]


def config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm) -> pb.TrainingConfig:
    return pb.TrainingConfig(
        loss=loss,
        optimizer=pb.OptimizerConfig(name=optimizer, learning_rate=lr, weight_decay=weight_decay, momentum=momentum),
        grad_clip_norm=grad_clip_norm,
    )


def _progress_bar(total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", desc="training")


def _request_fields(name: str, layers, bitpacked: bool, exact: bool) -> dict:
    """A RunRequest's or SimulateRequest's fields but its input; record_layers and exact only if
    set (an empty list costs a field conversion, per request)."""
    fields = {"name": name, "output_encoding": _BITPACKED if bitpacked else _RAW}
    if layers:
        fields["record_layers"] = list(layers)
    if exact:
        fields["exact"] = True
    return fields


def _input_fields(x, bitpacked: bool) -> dict:
    """An input's ``Tensor`` fields (``tensors.encode_fields``): a request made with them holds the
    tensor without copying a message into it."""
    array = tensors.to_numpy(x)
    if array.dtype.kind == "f" and array.dtype != _FLOAT32:
        array = array.astype(np.float32)  # the server simulates in float32
    return tensors.encode_fields(array, bitpacked)
