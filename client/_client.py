"""``Client`` and ``Session``: the Python face of the simulation service."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from rnnbuilder import Model, ModuleFactory, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks, tensors
from rnnbuilder_sim.wire.names import SERVER_ID_HEADER, SESSION_HEADER, session_name
from rnnbuilder_sim.wire.names import session_id as session_id_of

from ._feed import ChunkFeed
from .errors import from_rpc_error

__all__ = ["Client", "Session", "ServerInfo", "Recording"]

_SERVICE = pb.DESCRIPTOR.services_by_name["SimulatorService"].full_name
_RETRY = {"maxAttempts": 5, "initialBackoff": "0.25s", "maxBackoff": "2s", "backoffMultiplier": 2}
RETRY_POLICY = [
    {"name": [{"service": _SERVICE}], "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}},
    {
        "name": [{"service": _SERVICE, "method": "TrainStep"}],
        "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE"]},
    },
]
"""gRPC's own retries, for calls the server answered without doing anything: UNAVAILABLE (a session
moving between replicas) and CANCELLED (a server that is stopping refuses new calls so, and drops
the result of a simulation it cut off). A TrainStep cut off may have stepped its optimizer, so it
is retried on UNAVAILABLE only."""
STREAM_RESUMES = 3
"""How often ``Session.stream`` opens a new stream after one was cut off by a server that let go of
its session (UNAVAILABLE) or stopped (CANCELLED)."""
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
_MAX_MESSAGE = 256 * 1024 * 1024
_RAW, _BITPACKED = pb.TENSOR_ENCODING_RAW, pb.TENSOR_ENCODING_BITPACKED
_FLOAT32 = np.dtype(np.float32)


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
    server_id: str = ""
    """Which replica answered: behind a proxy, each may differ."""
    batching: bool = False
    """Whether timesteps of sessions with the same network that are ready together may run as one
    batched computation (a session asks not to be: ``Session.exact``)."""


class Recording(dict):
    """Recorded layers by name, each (time, batch, ...); ``output`` is the network's output."""

    def __init__(self, output: np.ndarray, layers: Mapping[str, np.ndarray]):
        super().__init__(layers)
        self.output = output


class Client:
    """A connection to a simulation server.

    ``token`` is sent as a bearer token. ``tls``: ``None`` or ``False`` for plain TCP, ``True`` for
    TLS with the system's roots, or the path (or PEM bytes) of a root certificate;
    ``client_cert`` and ``client_key`` (PEM paths) for mutual TLS.

    A call the server answered without doing anything (UNAVAILABLE: a replica shutting down hands
    its sessions over; CANCELLED: a stopping server refuses new calls) is retried by gRPC itself, up
    to 5 tries within about 4 s (``RETRY_POLICY``).
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls: bool | str | bytes | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
    ):
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.service_config", json.dumps({"methodConfig": RETRY_POLICY})),
            # A connection of its own: grpcio would otherwise share one among a process's clients of
            # the same address, which puts them all on one of a server's processes (--processes).
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls:
            roots = None if tls is True else (tls if isinstance(tls, bytes) else Path(tls).read_bytes())
            key = Path(client_key).read_bytes() if client_key else None
            cert = Path(client_cert).read_bytes() if client_cert else None
            credentials = grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=cert)
            self._channel = grpc.secure_channel(address, credentials, options)
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
        return self._routed(name, request, None, **kwargs)[0]

    def _routed(self, name: str, request, session_id: str | None, **kwargs):
        """The reply (or the stream of replies) of ``name`` and the id of the replica that answered;
        ``session_id`` goes in ``SESSION_HEADER``."""
        metadata = self._metadata if session_id is None else (*self._metadata, (SESSION_HEADER, session_id))
        method = getattr(self._stub, name)
        if hasattr(method, "with_call"):  # one reply
            reply, call = method.with_call(request, metadata=metadata, **kwargs)
        else:  # a stream of replies is itself the call; the server sends its headers first
            reply = call = method(request, metadata=metadata, **kwargs)
        return reply, dict(call.initial_metadata() or ()).get(SERVER_ID_HEADER, "")

    @_rpc
    def info(self) -> ServerInfo:
        """The server's version, device, accepted factory and surrogate types, and limits."""
        reply = self._call("GetServerInfo", pb.GetServerInfoRequest())
        limits = {field.name: getattr(reply.limits, field.name) for field in reply.limits.DESCRIPTOR.fields}
        return ServerInfo(
            reply.version,
            reply.device,
            list(reply.factory_types),
            list(reply.surrogate_types),
            limits,
            reply.server_id,
            reply.batching,
        )

    @_rpc
    def create_session(
        self, net: ModuleFactory | dict, input_shape, batch_size: int = 1, seed: int = 0, exact: bool = False
    ) -> Session:
        """Build ``net`` (a factory, or a ``rnnbuilder.spec`` description) on the server for inputs of
        ``input_shape`` (no time or batch dims), simulating ``batch_size`` sequences side by side.
        ``exact``: see ``Session.exact``."""
        description = net if isinstance(net, dict) else spec.to_spec(net)
        requested = pb.Session(
            network=networks.to_message(description),
            input_shape=[input_shape] if isinstance(input_shape, int) else list(input_shape),
            batch_size=batch_size,
            seed=seed,
        )
        session_id = _new_id()
        request = pb.CreateSessionRequest(session=requested, session_id=session_id)
        reply, server_id = self._routed("CreateSession", request, session_id)
        return Session(self, reply.session, server_id, exact)

    @_rpc
    def get_session(self, session_id: str) -> Session:
        """Attach to an existing session by id (or ``sessions/<id>``), from any connection."""
        bare = session_id_of(session_id) or session_id
        reply, server_id = self._routed("GetSession", pb.GetSessionRequest(name=session_name(bare)), bare)
        return Session(self, reply.session, server_id)

    @_rpc
    def restore(self, blob: bytes) -> Session:
        """A new session from ``Session.save()``'s bytes, exactly as saved (weights, state, optimizer)."""
        try:
            snapshot = pb.SessionSnapshot.FromString(blob)
        except Exception as e:  # protobuf's DecodeError, or a wrong type
            raise ValueError(f"not a saved session: {e}") from None
        session_id = _new_id()
        request = pb.ImportSessionRequest(snapshot=snapshot, session_id=session_id)
        reply, server_id = self._routed("ImportSession", request, session_id)
        return Session(self, reply.session, server_id)

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

    def __init__(self, client: Client, message: pb.Session, server_id: str = "", exact: bool = False):
        self._client = client
        self.server_id = server_id
        """The replica that answered this session's latest call (behind a proxy: the one that holds it)."""
        self.exact = exact
        """True: this handle's ``run``, ``step``, ``record`` and ``stream`` calls are never batched with
        other sessions' (see ``ServerInfo.batching``), so that their results are bit for bit what
        the session's model computes alone; batched matrix products may round differently."""
        self._update(message)

    def _call(self, name: str, request):
        """Every call about this session: routed by its id, noting which replica answered."""
        reply, self.server_id = self._client._routed(name, request, self.id)
        return reply

    def _update(self, message: pb.Session) -> None:
        self.name = message.name
        self.id = session_id_of(message.name)
        self.input_shape = tuple(message.input_shape)
        self.output_shape = tuple(message.output_shape)
        self.batch_size = message.batch_size
        self.seed = message.seed
        self.parameter_count = message.parameter_count
        self.timesteps_simulated = message.timesteps_simulated
        self.device = message.device
        self.create_time = message.create_time.ToDatetime(dt.UTC)
        self.recordable_layers = list(message.recordable_layers)
        self.description = networks.from_message(message.network)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, input_shape={self.input_shape}, output_shape={self.output_shape})"

    @_rpc
    def refresh(self) -> Session:
        """Re-read the session from the server (e.g. ``timesteps_simulated``)."""
        self._update(self._call("GetSession", pb.GetSessionRequest(name=self.name)).session)
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
        request = self._request(pb.RunRequest, tensors.to_numpy(x_t)[None], (), bitpacked)
        return _output(self._call("Run", request))[0]

    def stream(self, chunks: Iterable, bitpacked: bool = False) -> Iterator[np.ndarray]:
        """Simulate chunks (each (time_i, batch, *input_shape)) over one bidirectional stream.

        Yields each chunk's outputs in order as they arrive; chunks are sent as the iterable gives them.
        """
        return self._stream(chunks, (), bitpacked, _output)

    def stream_record(self, chunks: Iterable, layers: Iterable[str], bitpacked: bool = False) -> Iterator[Recording]:
        """Like ``stream``, and also each chunk's recorded layers, as ``record`` gives them."""
        return self._stream(chunks, list(layers), bitpacked, _recording)

    def _stream(self, chunks: Iterable, layers, bitpacked: bool, reading) -> Iterator:
        """``reading(reply)`` of each reply, over one stream, or more: a stream cut off with UNAVAILABLE
        or CANCELLED (its session moving to another replica) is resumed where the session is, if that
        is where the last reply left it."""
        fields = _request_fields(self.name, layers, bitpacked, self.exact)

        def request(chunk) -> tuple[pb.SimulateRequest, int]:
            x = _input_fields(chunk, bitpacked)
            return pb.SimulateRequest(input=x, **fields), x["shape"][0]

        feed, expected = ChunkFeed(chunks, request), self.timesteps_simulated
        for resumes in range(STREAM_RESUMES + 1):
            try:
                for reply in self._call("Simulate", feed.requests()):
                    expected = reply.first_timestep + feed.answered()
                    self.timesteps_simulated = expected
                    yield reading(reply)
                return
            except grpc.RpcError as error:
                if error.code() not in _RESUMABLE or resumes == STREAM_RESUMES:
                    raise from_rpc_error(error) from None
                feed.restart()
                self.refresh()  # waits (retrying) until the session is served again
                if self.timesteps_simulated != expected:  # a chunk went through unanswered: can't resume exactly
                    raise from_rpc_error(error) from None

    @_rpc
    def reset(self, batch_indices: Iterable[int] | None = None) -> None:
        """Restart the state of all batch entries, or only of ``batch_indices`` (episodes that end)."""
        indices = list(batch_indices or [])
        self._call("ResetState", pb.ResetStateRequest(name=self.name, batch_indices=indices))

    @_rpc
    def get_state(self) -> dict[str, np.ndarray]:
        """The state by dotted name (``layers.hidden.1.v`` is a membrane)."""
        return _decoded(self._call("GetState", pb.GetStateRequest(name=self.name)).tensors)

    @_rpc
    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the whole state, named and shaped as ``get_state`` gives it."""
        self._call("SetState", pb.SetStateRequest(name=self.name, tensors=_named(state)))

    @_rpc
    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters and buffers, named as in the model's ``state_dict``."""
        return _decoded(self._call("GetParameters", pb.GetParametersRequest(name=self.name)).parameters)

    @_rpc
    def load_parameters(self, parameters: Mapping[str, np.ndarray]) -> None:
        """Replace some or all parameters and buffers."""
        self._call("SetParameters", pb.SetParametersRequest(name=self.name, parameters=_named(parameters)))

    @_rpc
    def train_step(
        self,
        x,
        y,
        loss: str = "ce_count",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        grad_clip_norm: float = 0.0,
        carry: str = "none",
    ) -> dict[str, float]:
        """One optimizer step on a batch x (time, batch, *input_shape) with targets y: labels (batch,)
        or (time, batch), or targets (batch, ...) / (time, batch, ...) as the loss needs.

        Returns the batch's ``loss``, ``grad_norm`` (before clipping) and, for class losses,
        ``accuracy``. ``carry``: ``"none"`` (a fresh state), or ``"start"`` then ``"continue"`` for
        truncated BPTT over consecutive chunks of a stream.
        """
        carries = {"none": pb.STATE_CARRY_NONE, "start": pb.STATE_CARRY_START, "continue": pb.STATE_CARRY_CONTINUE}
        if carry not in carries:
            raise ValueError(f"carry must be one of {', '.join(carries)}, got {carry!r}")
        request = pb.TrainStepRequest(
            name=self.name,
            input=_encode_input(x, True),
            targets=tensors.encode(y),
            config=_config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm),
            carry=carries[carry],
        )
        return _metrics(self._call("TrainStep", request).metrics)

    def fit(
        self,
        x,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        loss: str = "ce_count",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        grad_clip_norm: float = 0.0,
        validation: tuple | None = None,
        shuffle: bool = True,
        tbptt_steps: int = 0,
        progress: bool = False,
        on_batch=None,
    ) -> list[dict[str, float]]:
        """Train on a dataset x (samples, time, *input_shape) with targets y (samples, ...).

        Each batch starts from a fresh state (the streaming state is not touched); the optimizer
        state stays in the session. ``validation=(x_val, y_val)`` is evaluated after each epoch.
        ``progress=True`` shows a progress bar. ``on_batch(progress)`` is called after every batch
        with its epoch, batch, loss and metrics; returning ``False`` stops the training at that
        batch boundary (so does Ctrl-C, which then propagates). Returns one dict per finished
        epoch: ``loss``, ``accuracy``, ``grad_norm``, ``val_loss``, ``val_accuracy``, ``samples_per_second``.
        """
        request = pb.TrainRequest(
            name=self.name,
            inputs=_encode_input(x, True),
            targets=tensors.encode(y),
            config=_config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm),
            epochs=epochs,
            batch_size=batch_size,
            keep_order=not shuffle,
            tbptt_steps=tbptt_steps,
        )
        if validation is not None:
            request.validation_inputs.CopyFrom(_encode_input(validation[0], True))
            request.validation_targets.CopyFrom(tensors.encode(validation[1]))
        history: list[dict[str, float]] = []
        replies = self._call("Train", request)
        bar = _progress_bar(epochs * math.ceil(len(tensors.to_numpy(y)) / batch_size)) if progress else None
        try:
            for reply in replies:
                if reply.HasField("batch"):
                    step = {"epoch": reply.batch.epoch, "batch": reply.batch.batch, **_metrics(reply.batch.metrics)}
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.4g}" for k, v in step.items() if k in ("loss", "accuracy")})
                    if on_batch is not None and on_batch(step) is False:
                        replies.cancel()
                        break
                else:
                    epoch = reply.epoch
                    summary = {
                        "epoch": epoch.epoch,
                        **_metrics(epoch.metrics),
                        "samples_per_second": epoch.samples_per_second,
                    }
                    if epoch.HasField("validation_metrics"):
                        summary.update(
                            {f"val_{k}": v for k, v in _metrics(epoch.validation_metrics).items() if k != "grad_norm"}
                        )
                    history.append(summary)
                    if bar is not None:
                        bar.write(", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        except KeyboardInterrupt:
            replies.cancel()
            raise
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            if bar is not None:
                bar.close()
        return history

    @_rpc
    def evaluate(self, x, y, loss: str = "ce_count", batch_size: int = 256) -> dict[str, float]:
        """``loss`` (and ``accuracy`` for class losses) on x (samples, time, ...), in eval mode."""
        request = pb.EvaluateRequest(
            name=self.name,
            inputs=_encode_input(x, True),
            targets=tensors.encode(y),
            loss=loss,
            batch_size=batch_size,
        )
        metrics = _metrics(self._call("Evaluate", request).metrics)
        metrics.pop("grad_norm")
        return metrics

    @_rpc
    def save(self) -> bytes:
        """The whole session (network, parameters, state, optimizer state, generator) as bytes;
        ``Client.restore`` makes a new session from them. A serialized ``SessionSnapshot`` message."""
        return self._call("ExportSession", pb.ExportSessionRequest(name=self.name)).snapshot.SerializeToString()

    def to_local(self) -> Model:
        """A local rnnbuilder model with this session's network and current weights, in eval mode."""
        import torch

        model = spec.from_spec(self.description).make_model(self.input_shape)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.parameters().items()})
        return model.eval()

    @_rpc
    def close(self) -> None:
        """Delete the session on the server."""
        self._call("DeleteSession", pb.DeleteSessionRequest(name=self.name))

    def _run(self, x, layers, bitpacked: bool) -> Recording:
        return _recording(self._call("Run", self._request(pb.RunRequest, x, layers, bitpacked)))

    def _request(self, kind, x, layers, bitpacked: bool):
        """A ``kind`` (RunRequest, SimulateRequest) of ``x`` for this session."""
        return kind(input=_input_fields(x, bitpacked), **_request_fields(self.name, layers, bitpacked, self.exact))


def _new_id() -> str:
    """A new session's id, chosen here so that the proxy can route its creation (the server's own look the same)."""
    return secrets.token_hex(8)


def _config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm) -> pb.TrainingConfig:
    return pb.TrainingConfig(
        loss=loss,
        optimizer=pb.OptimizerConfig(name=optimizer, learning_rate=lr, weight_decay=weight_decay, momentum=momentum),
        grad_clip_norm=grad_clip_norm,
    )


def _metrics(message: pb.Metrics) -> dict[str, float]:
    metrics = {"loss": message.loss, "grad_norm": message.grad_norm}
    if message.HasField("accuracy"):
        metrics["accuracy"] = message.accuracy
    return metrics


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", desc="training")


def _recording(reply: pb.RunResponse | pb.SimulateResponse) -> Recording:
    return Recording(tensors.decode(reply.output), _decoded(reply.recordings))


def _output(reply: pb.RunResponse | pb.SimulateResponse) -> np.ndarray:
    """The output alone, when no layer was asked for."""
    return tensors.decode(reply.output)


def _request_fields(name: str, layers, bitpacked: bool, exact: bool) -> dict:
    """A RunRequest's or SimulateRequest's fields but its input; record_layers and exact only if
    set (an empty list costs a field conversion, per request)."""
    fields = {"name": name, "output_encoding": _BITPACKED if bitpacked else _RAW}
    if layers:
        fields["record_layers"] = layers
    if exact:
        fields["exact"] = True
    return fields


def _decoded(items) -> dict[str, np.ndarray]:
    return {item.name: tensors.decode(item.tensor) for item in items}


def _encode_input(x, bitpacked: bool) -> pb.Tensor:
    return pb.Tensor(**_input_fields(x, bitpacked))


def _input_fields(x, bitpacked: bool) -> dict:
    """An input's ``Tensor`` fields (``tensors.encode_fields``): a request made with them holds the
    tensor without copying a message into it."""
    array = tensors.to_numpy(x)
    if array.dtype.kind == "f" and array.dtype != _FLOAT32:
        array = array.astype(np.float32)  # the server simulates in float32
    return tensors.encode_fields(array, bitpacked)


def _named(values: Mapping) -> list[pb.NamedTensor]:
    return [pb.NamedTensor(name=name, tensor=tensors.encode(value)) for name, value in values.items()]
