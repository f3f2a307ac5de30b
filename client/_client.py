"""``Client`` and ``Session``: the Python face of the simulation service."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from rnnbuilder import Model, ModuleFactory, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

from . import network, tensors
from .errors import from_rpc_error

__all__ = ["Client", "Session", "ServerInfo", "Recording"]

_PREFIX = "sessions/"
_MAX_MESSAGE = 256 * 1024 * 1024


def _rpc(method):
    """Raise ``SimulatorError`` subclasses instead of raw ``grpc.RpcError``s."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    return call


@dataclass(frozen=True)
class ServerInfo:
    """What a server runs: its version and device, the types a network may use, and its limits."""

    version: str
    device: str
    factory_types: list[str]
    surrogate_types: list[str]
    limits: dict[str, int]


class Recording(dict):
    """Recorded layers by name, each (time, batch, ...); ``output`` is the network's output."""

    def __init__(self, output: np.ndarray, layers: Mapping[str, np.ndarray]):
        super().__init__(layers)
        self.output = output


class Client:
    """A connection to a simulation server.

    ``token`` is sent as a bearer token. ``tls``: ``None`` or ``False`` for plain TCP, ``True`` for
    TLS with the system's roots, or the path (or PEM bytes) of a root certificate.
    """

    def __init__(self, address: str, token: str | None = None, tls: bool | str | bytes | Path | None = None):
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
        if tls:
            roots = None if tls is True else (tls if isinstance(tls, bytes) else Path(tls).read_bytes())
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.SimulatorServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the server keeps the sessions."""
        self._channel.close()

    def _call(self, name: str, request, **kwargs):
        return getattr(self._stub, name)(request, metadata=self._metadata, **kwargs)

    @_rpc
    def info(self) -> ServerInfo:
        """The server's version, device, accepted factory and surrogate types, and limits."""
        reply = self._call("GetServerInfo", pb.GetServerInfoRequest())
        limits = {field.name: getattr(reply.limits, field.name) for field in reply.limits.DESCRIPTOR.fields}
        return ServerInfo(reply.version, reply.device, list(reply.factory_types), list(reply.surrogate_types), limits)

    @_rpc
    def create_session(self, net: ModuleFactory | dict, input_shape, batch_size: int = 1, seed: int = 0) -> Session:
        """Build ``net`` (a factory, or a ``rnnbuilder.spec`` description) on the server for inputs of
        ``input_shape`` (no time or batch dims), simulating ``batch_size`` sequences side by side."""
        description = net if isinstance(net, dict) else spec.to_spec(net)
        requested = pb.Session(
            network=network.to_message(description),
            input_shape=[input_shape] if isinstance(input_shape, int) else list(input_shape),
            batch_size=batch_size,
            seed=seed,
        )
        reply = self._call("CreateSession", pb.CreateSessionRequest(session=requested))
        return Session(self, reply.session)

    @_rpc
    def get_session(self, session_id: str) -> Session:
        """Attach to an existing session by id (or ``sessions/<id>``), from any connection."""
        name = session_id if session_id.startswith(_PREFIX) else _PREFIX + session_id
        return Session(self, self._call("GetSession", pb.GetSessionRequest(name=name)).session)

    @_rpc
    def list_sessions(self) -> list[Session]:
        """Every session on the server, oldest first."""
        sessions, token = [], ""
        while True:
            reply = self._call("ListSessions", pb.ListSessionsRequest(page_token=token))
            sessions.extend(Session(self, s) for s in reply.sessions)
            token = reply.next_page_token
            if not token:
                return sessions


class Session:
    """A network simulated on the server; its parameters and state live there between calls.

    Arrays in: numpy arrays or torch tensors, (time, batch, *input_shape). Arrays out: numpy.
    """

    def __init__(self, client: Client, message: pb.Session):
        self._client = client
        self._update(message)

    def _update(self, message: pb.Session) -> None:
        self.name = message.name
        self.id = message.name[len(_PREFIX) :]
        self.input_shape = tuple(message.input_shape)
        self.output_shape = tuple(message.output_shape)
        self.batch_size = message.batch_size
        self.seed = message.seed
        self.parameter_count = message.parameter_count
        self.timesteps_simulated = message.timesteps_simulated
        self.device = message.device
        self.recordable_layers = list(message.recordable_layers)
        self.description = network.from_message(message.network)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, input_shape={self.input_shape}, output_shape={self.output_shape})"

    @_rpc
    def refresh(self) -> Session:
        """Re-read the session from the server (e.g. ``timesteps_simulated``)."""
        self._update(self._client._call("GetSession", pb.GetSessionRequest(name=self.name)).session)
        return self

    @_rpc
    def run(self, x, bitpacked: bool = False) -> np.ndarray:
        """Simulate x (time, batch, *input_shape) -> (time, batch, *output_shape); the state carries over.

        ``bitpacked=True`` sends binary inputs and receives binary outputs as bits (32x less traffic).
        """
        return self._run(x, (), bitpacked).output

    @_rpc
    def record(self, x, layers: Iterable[str], bitpacked: bool = False) -> Recording:
        """Like ``run``, and also the chosen inner layers (``recordable_layers``): spike rasters,
        membranes. Returns a mapping name -> (time, batch, ...) array, with ``.output``."""
        return self._run(x, list(layers), bitpacked)

    @_rpc
    def step(self, x_t, bitpacked: bool = False) -> np.ndarray:
        """One timestep: x_t (batch, *input_shape) -> (batch, *output_shape)."""
        return self._run(np.asarray(_numpy(x_t))[None], (), bitpacked).output[0]

    def stream(self, chunks: Iterable, bitpacked: bool = False) -> Iterator[np.ndarray]:
        """Simulate chunks (each (time_i, batch, *input_shape)) over one bidirectional stream.

        Yields each chunk's outputs in order as they arrive; chunks are sent as the iterable gives them.
        """
        return (recording.output for recording in self._stream(chunks, (), bitpacked))

    def stream_record(self, chunks: Iterable, layers: Iterable[str], bitpacked: bool = False) -> Iterator[Recording]:
        """Like ``stream``, and also each chunk's recorded layers, as ``record`` gives them."""
        return self._stream(chunks, list(layers), bitpacked)

    def _stream(self, chunks: Iterable, layers, bitpacked: bool) -> Iterator[Recording]:
        encoding = pb.TENSOR_ENCODING_BITPACKED if bitpacked else pb.TENSOR_ENCODING_RAW

        def requests():
            for chunk in chunks:
                yield pb.SimulateRequest(
                    name=self.name,
                    input=_encode_input(chunk, bitpacked),
                    record_layers=layers,
                    output_encoding=encoding,
                )

        try:
            for reply in self._client._call("Simulate", requests()):
                yield _recording(reply)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    @_rpc
    def reset(self, batch_indices: Iterable[int] | None = None) -> None:
        """Restart the state of all batch entries, or only of ``batch_indices`` (episodes that end)."""
        indices = list(batch_indices or [])
        self._client._call("ResetState", pb.ResetStateRequest(name=self.name, batch_indices=indices))

    @_rpc
    def get_state(self) -> dict[str, np.ndarray]:
        """The state by dotted name (``layers.hidden.1.v`` is a membrane)."""
        reply = self._client._call("GetState", pb.GetStateRequest(name=self.name))
        return {t.name: tensors.decode(t.tensor) for t in reply.tensors}

    @_rpc
    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the whole state, named and shaped as ``get_state`` gives it."""
        self._client._call("SetState", pb.SetStateRequest(name=self.name, tensors=_named(state)))

    @_rpc
    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters and buffers, named as in the model's ``state_dict``."""
        reply = self._client._call("GetParameters", pb.GetParametersRequest(name=self.name))
        return {t.name: tensors.decode(t.tensor) for t in reply.parameters}

    @_rpc
    def load_parameters(self, parameters: Mapping[str, np.ndarray]) -> None:
        """Replace some or all parameters and buffers."""
        self._client._call("SetParameters", pb.SetParametersRequest(name=self.name, parameters=_named(parameters)))

    def to_local(self) -> Model:
        """A local rnnbuilder model with this session's network and current weights, in eval mode."""
        import torch

        model = spec.from_spec(self.description).make_model(self.input_shape)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.parameters().items()})
        return model.eval()

    @_rpc
    def close(self) -> None:
        """Delete the session on the server."""
        self._client._call("DeleteSession", pb.DeleteSessionRequest(name=self.name))

    def _run(self, x, layers, bitpacked: bool) -> Recording:
        encoding = pb.TENSOR_ENCODING_BITPACKED if bitpacked else pb.TENSOR_ENCODING_RAW
        request = pb.RunRequest(
            name=self.name, input=_encode_input(x, bitpacked), record_layers=layers, output_encoding=encoding
        )
        return _recording(self._client._call("Run", request))


def _recording(reply: pb.RunResponse | pb.SimulateResponse) -> Recording:
    return Recording(tensors.decode(reply.output), {t.name: tensors.decode(t.tensor) for t in reply.recordings})


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _encode_input(x, bitpacked: bool) -> pb.Tensor:
    array = _numpy(x)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)  # the server simulates in float32
    return tensors.encode(array, bitpacked)


def _named(values: Mapping) -> list[pb.NamedTensor]:
    return [pb.NamedTensor(name=name, tensor=tensors.encode(_numpy(value))) for name, value in values.items()]
