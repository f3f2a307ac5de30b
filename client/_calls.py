"""What a client and a session do, written once for ``Client`` and ``AsyncClient``: each method
builds its request and says how its reply converts (a ``Call``); the client's ``_do`` makes the
call, blocking (``Client``) or awaitable (``AsyncClient``). Streams and ``fit``, which read many
replies, go through the session's ``_stream`` and ``_train``, written per kind of I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np

from rnnbuilder import Model, ModuleFactory
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks, tensors
from rnnbuilder_sim.wire.names import session_id as session_id_of
from rnnbuilder_sim.wire.names import session_name

from . import _convert as convert
from ._convert import Recording, ServerInfo
from ._routing import Route, credentials, new_session_id

__all__ = ["Call", "ClientCalls", "SessionCalls"]


class Call(NamedTuple):
    """One call: the method's name, its request, the session it is about (routed by its id, or
    None), and ``convert(reply, server_id)``, what the caller gets."""

    method: str
    request: Any
    session_id: str | None
    convert: Callable[[Any, str], Any]


class ClientCalls:
    """The calls of a connection to a simulation server (``Client``, ``AsyncClient``)."""

    _session_type: type[SessionCalls]

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls: bool | str | bytes | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
    ):
        self.address = address
        self._route = Route(token)
        self._connect(credentials(tls, client_cert, client_key))

    def _connect(self, tls: grpc.ChannelCredentials | None) -> None:
        """Open (or prepare) the channel to ``address``: TLS with ``tls``, plain TCP if None."""
        raise NotImplementedError

    def _do(self, call: Call):
        """Make ``call``; what its ``convert`` gives (or, for ``AsyncClient``, an awaitable of it)."""
        raise NotImplementedError

    def info(self) -> ServerInfo:
        """The server's version, device, limits, and the factory, surrogate and encoder types it
        accepts, each described with its arguments."""
        return self._do(Call("GetServerInfo", pb.GetServerInfoRequest(), None, _reply(convert.server_info)))

    def create_session(
        self,
        net: ModuleFactory | dict | Any,
        input_shape=None,
        batch_size: int = 1,
        seed: int = 0,
        exact: bool = False,
        nir_dt: float | None = None,
    ) -> SessionCalls:
        """Build ``net`` on the server for inputs of ``input_shape`` (no time or batch dims),
        simulating ``batch_size`` sequences side by side. ``exact``: see ``Session.exact``.

        ``net`` is a factory, a ``rnnbuilder.spec`` description, or a NIR graph: a ``nir.NIRGraph``
        or the path of a ``.nir`` file, imported by ``rnnbuilder.nir.from_nir`` with ``nir_dt``, one
        timestep in the graph's time unit (required with a graph; needs the ``nir`` extra). A graph
        declares its input shape: ``input_shape`` may then be left out.
        """
        session_id = new_session_id()
        if input_shape is None:
            input_shape = convert.declared_input_shape(net)
        requested = pb.Session(
            network=convert.network_message(net, nir_dt),
            input_shape=[input_shape] if isinstance(input_shape, int) else list(input_shape),
            batch_size=batch_size,
            seed=seed,
        )
        request = pb.CreateSessionRequest(session=requested, session_id=session_id)
        return self._do(Call("CreateSession", request, session_id, self._session(exact)))

    def get_session(self, session_id: str) -> SessionCalls:
        """Attach to an existing session by id (or ``sessions/<id>``), from any connection."""
        bare = session_id_of(session_id) or session_id
        return self._do(Call("GetSession", pb.GetSessionRequest(name=session_name(bare)), bare, self._session()))

    def restore(self, blob: bytes) -> SessionCalls:
        """A new session from ``Session.save()``'s bytes, exactly as saved (weights, state, optimizer)."""
        session_id = new_session_id()
        request = pb.ImportSessionRequest(snapshot=convert.snapshot(blob), session_id=session_id)
        return self._do(Call("ImportSession", request, session_id, self._session()))

    def list_sessions(self) -> list[SessionCalls]:
        """Every session on the server, oldest first."""
        return self._list()

    def _list(self):
        """Every page of ``ListSessions``, one ``_page`` after another."""
        raise NotImplementedError

    def _page(self, token: str) -> Call:
        """A ``ListSessions`` page: converts to its sessions and the next page's token ("" at the end)."""

        def page(reply: pb.ListSessionsResponse, server_id: str):
            return [self._session_type(self, s) for s in reply.sessions], reply.next_page_token

        return Call("ListSessions", pb.ListSessionsRequest(page_token=token), None, page)

    def _session(self, exact: bool = False) -> Callable:
        return lambda reply, server_id: self._session_type(self, reply.session, server_id, exact)


class SessionCalls:
    """The calls of a session (``Session``, ``AsyncSession``)."""

    def __init__(self, client: ClientCalls, message: pb.Session, server_id: str = "", exact: bool = False):
        self._client = client
        self.server_id = server_id
        """The replica that answered this session's latest call (behind a proxy: the one that holds it)."""
        self.exact = exact
        """True: this handle's ``run``, ``step``, ``record`` and ``stream`` calls are never batched with
        other sessions' (see ``ServerInfo.batching``), so that their results are bit for bit what
        the session's model computes alone; batched matrix products may round differently."""
        self._update(message)

    def _call(self, method: str, request, convert_reply: Callable = lambda reply: None):
        """A call about this session: routed by its id, noting which replica answered."""

        def answered(reply, server_id: str):
            self.server_id = server_id
            return convert_reply(reply)

        return self._client._do(Call(method, request, self.id, answered))

    def _update(self, message: pb.Session) -> SessionCalls:
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
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, input_shape={self.input_shape}, output_shape={self.output_shape})"

    def refresh(self) -> SessionCalls:
        """Re-read the session from the server (e.g. ``timesteps_simulated``)."""
        return self._call("GetSession", pb.GetSessionRequest(name=self.name), lambda r: self._update(r.session))

    def run(self, x, bitpacked: bool = False, encode=None) -> np.ndarray:
        """Simulate x (time, batch, *input_shape) -> (time, batch, *output_shape); the state carries over.

        ``bitpacked=True`` sends binary inputs and receives binary outputs as bits (32x less traffic).
        ``encode``: a spike encoder (``rnnbuilder.encode.Rate``, ``Latency``, ``Delta``); x is then
        the analog data that encoder takes (``Rate(num_steps=50)``: (batch, *input_shape); data that
        varies in time: (time, batch, *input_shape)), sent once, and the server draws the input
        spikes from it with the session's random generator (reproducible under the session's seed).
        """
        request = convert.run_request(self.name, x, (), bitpacked, self.exact, encode)
        return self._call("Run", request, convert.output)

    def record(self, x, layers: Iterable[str], bitpacked: bool = False, encode=None) -> Recording:
        """Like ``run``, and also the chosen inner layers (``recordable_layers``): spike rasters,
        membranes. Returns a mapping name -> (time, batch, ...) array, with ``.output``."""
        request = convert.run_request(self.name, x, list(layers), bitpacked, self.exact, encode)
        return self._call("Run", request, convert.recording)

    def step(self, x_t, bitpacked: bool = False) -> np.ndarray:
        """One timestep: x_t (batch, *input_shape) -> (batch, *output_shape)."""
        request = convert.run_request(self.name, tensors.to_numpy(x_t)[None], (), bitpacked, self.exact)
        return self._call("Run", request, lambda reply: convert.output(reply)[0])

    def stream(self, chunks, bitpacked: bool = False):
        """Simulate chunks (each (time_i, batch, *input_shape)) over one bidirectional stream.

        Yields each chunk's outputs in order as they arrive; chunks are sent as the iterable gives them.
        A stream cut off because its session moved to another replica (UNAVAILABLE, CANCELLED) is
        resumed there, the unanswered chunks sent again, if the session is where the last reply
        left it (``STREAM_RESUMES`` times at most).
        """
        return self._stream(chunks, (), bitpacked, convert.output)

    def stream_record(self, chunks, layers: Iterable[str], bitpacked: bool = False):
        """Like ``stream``, and also each chunk's recorded layers, as ``record`` gives them."""
        return self._stream(chunks, list(layers), bitpacked, convert.recording)

    def _stream(self, chunks, layers: list[str], bitpacked: bool, reading: Callable):
        """``reading(reply)`` of each ``Simulate`` reply, resumed as ``stream`` says."""
        raise NotImplementedError

    def reset(self, batch_indices: Iterable[int] | None = None) -> None:
        """Restart the state of all batch entries, or only of ``batch_indices`` (episodes that end)."""
        indices = list(batch_indices or [])
        return self._call("ResetState", pb.ResetStateRequest(name=self.name, batch_indices=indices))

    def get_state(self) -> dict[str, np.ndarray]:
        """The state by dotted name (``layers.hidden.1.v`` is a membrane)."""
        return self._call("GetState", pb.GetStateRequest(name=self.name), lambda r: convert.decoded(r.tensors))

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the whole state, named and shaped as ``get_state`` gives it."""
        return self._call("SetState", pb.SetStateRequest(name=self.name, tensors=convert.named(state)))

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters and buffers, named as in the model's ``state_dict``."""
        return self._call("GetParameters", pb.GetParametersRequest(name=self.name), _parameters)

    def load_parameters(self, parameters: Mapping[str, np.ndarray]) -> None:
        """Replace some or all parameters and buffers."""
        request = pb.SetParametersRequest(name=self.name, parameters=convert.named(parameters))
        return self._call("SetParameters", request)

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
        config = convert.config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm)
        request = convert.train_step_request(self.name, x, y, config, carry)
        return self._call("TrainStep", request, lambda reply: convert.metrics(reply.metrics))

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
        config = convert.config(loss, optimizer, lr, weight_decay, momentum, grad_clip_norm)
        request = convert.train_request(
            self.name,
            x,
            y,
            config,
            validation,
            epochs=epochs,
            batch_size=batch_size,
            keep_order=not shuffle,
            tbptt_steps=tbptt_steps,
        )
        return self._train(request, convert.Training(convert.batches(request), progress, on_batch))

    def _train(self, request: pb.TrainRequest, training: convert.Training):
        """``training.history`` once every reply of ``Train`` was taken (or ``training`` stopped it)."""
        raise NotImplementedError

    def evaluate(self, x, y, loss: str = "ce_count", batch_size: int = 256) -> dict[str, float]:
        """``loss`` (and ``accuracy`` for class losses) on x (samples, time, ...), in eval mode."""
        request = convert.evaluate_request(self.name, x, y, loss, batch_size)
        return self._call("Evaluate", request, _evaluated)

    def save(self) -> bytes:
        """The whole session (network, parameters, state, optimizer state, generator) as bytes;
        ``Client.restore`` makes a new session from them. A serialized ``SessionSnapshot`` message."""
        request = pb.ExportSessionRequest(name=self.name)
        return self._call("ExportSession", request, lambda reply: reply.snapshot.SerializeToString())

    def to_local(self) -> Model:
        """A local rnnbuilder model with this session's network and current weights, in eval mode."""
        return self._call("GetParameters", pb.GetParametersRequest(name=self.name), self._local)

    def to_nir(self, dt: float | None = None, lossy: bool = False):
        """The session's network with its current weights as a NIR graph (``nir.NIRGraph``):
        ``rnnbuilder.nir.to_nir`` of ``to_local()``, ``dt`` (one timestep in the graph's time unit)
        and ``lossy`` as ``to_nir`` takes them. Needs the ``nir`` extra."""
        from rnnbuilder.nir import to_nir  # NIR support is optional (the "nir" extra)

        def exported(reply: pb.GetParametersResponse):
            return to_nir(self._local(reply), dt=dt, lossy=lossy)

        return self._call("GetParameters", pb.GetParametersRequest(name=self.name), exported)

    def close(self) -> None:
        """Delete the session on the server."""
        return self._call("DeleteSession", pb.DeleteSessionRequest(name=self.name))

    def _local(self, reply: pb.GetParametersResponse) -> Model:
        return convert.local_model(self.description, self.input_shape, _parameters(reply))


def _reply(convert_reply: Callable) -> Callable:
    """A ``Call.convert`` that needs the reply alone."""
    return lambda reply, server_id: convert_reply(reply)


def _parameters(reply: pb.GetParametersResponse) -> dict[str, np.ndarray]:
    return convert.decoded(reply.parameters)


def _evaluated(reply: pb.EvaluateResponse) -> dict[str, float]:
    metrics = convert.metrics(reply.metrics)
    metrics.pop("grad_norm")
    return metrics
