"""The gRPC servicer: each method converts its request (``convert``), has the session manager or an
operation (``operations``) do the work where ``placement`` puts it, and converts the answer.
Errors become statuses in one decorator, for unary and streaming methods alike."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
from collections.abc import AsyncIterator

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import rnnbuilder as rb
from rnnbuilder.encode import Encoder
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire.names import SERVER_ID_HEADER

from . import convert, operations
from .auth import Authenticator, Tenant
from .batching import Batcher
from .errors import DOMAIN, InvalidRequest, SessionNotFound, status_of
from .manager import SessionManager
from .metrics import Metrics
from .placement import Placement
from .session import Session

__all__ = ["SimulatorServicer", "VERSION", "add_to_server"]

VERSION = rb.__version__
_END = object()
log = logging.getLogger("rnnsim.rpc")
_SERVICE = pb.DESCRIPTOR.services_by_name["SimulatorService"]


class _Received:
    """A request's bytes, parsed only once its caller is authenticated (an unauthenticated call
    costs only the bytes received). Bytes that don't parse as the method's message get
    INVALID_ARGUMENT (grpc's own deserializer would fail the call with UNKNOWN, naming an internal
    exception)."""

    def __init__(self, message_class, data: bytes):
        self.message_class, self.data = message_class, data

    def parsed(self):
        message_class, data = self.message_class, self.data
        self.data = None  # grpc holds the bytes until the call ends; the message is what the call keeps
        try:
            return message_class.FromString(data)
        except Exception as error:  # protobuf's DecodeError, and invalid UTF-8 in string fields
            problem = f"the request is not a valid {message_class.DESCRIPTOR.full_name} message: {error}"
        raise InvalidRequest(problem)


def _parser(message_class):
    return functools.partial(_Received, message_class)


async def _each_parsed(requests: AsyncIterator[_Received]) -> AsyncIterator:
    async for request in requests:
        yield request.parsed()


def add_to_server(servicer: SimulatorServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s methods, as the generated ``add_SimulatorServiceServicer_to_server``
    does, but with request parsing that turns malformed bytes into INVALID_ARGUMENT."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        method.name: kinds[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in _SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))


def _handled(method):
    """The method with its tenant and checked request(s), every exception turned into its canonical
    status with an ErrorInfo detail (the server goes on), and its latency and status in the metrics.

    A streaming method sends the replica's identity first; a unary one only with its answer, so
    that a failed call ends trailers-only (which a client may retry, when the code allows).
    """
    name = method.__name__
    described = _SERVICE.methods_by_name[name]
    parsed = _each_parsed if described.client_streaming else _Received.parsed

    # The wrappers below hand the request to a coroutine and drop it: a failed call's abort
    # exception keeps the wrapper's frame (grpc holds that exception in a reference cycle until the
    # garbage collector runs), and must not keep the request with it. Frames the error passed
    # through are cleared in ``_answering``.
    def authenticated(self, request, context):
        tenant = self.authenticator.tenant_for(context.invocation_metadata())
        return tenant, parsed(request)

    if described.server_streaming:

        async def responses(self, request, context):
            tenant, request = authenticated(self, request, context)
            async for response in method(self, request, context, tenant):
                yield response

        @functools.wraps(method)
        async def stream(self, request, context):
            answers = responses(self, request, context)
            del request
            async with self._answering(context, name), contextlib.aclosing(answers):
                await context.send_initial_metadata(self.identity)
                async for response in answers:
                    yield response

        return stream

    async def answer(self, request, context):
        tenant, request = authenticated(self, request, context)
        return await method(self, request, context, tenant)

    @functools.wraps(method)
    async def unary(self, request, context):
        answered = answer(self, request, context)
        del request
        async with self._answering(context, name):
            response = await answered
            await context.send_initial_metadata(self.identity)
            return response

    return unary


def _code_name(error: Exception) -> str:
    if isinstance(error, grpc.aio.AbortError):
        return "ABORTED"
    return status_of(error)[0].name


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str, identity: tuple):
    """End the call with ``error``'s status, trailers only (so that a client may retry it when the
    code allows), the replica's identity among them."""
    if isinstance(error, grpc.aio.AbortError):
        raise error
    code, reason, metadata = status_of(error)
    message = str(error) if code != grpc.StatusCode.INTERNAL else "internal error; the server log has the details"
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    trailers = rpc_status.to_status(status).trailing_metadata
    await context.abort(code, message, (*trailers, *identity))


class SimulatorServicer(pb_grpc.SimulatorServiceServicer):
    """Each method: convert the request, delegate, convert the answer. ``create_server`` hands in
    the collaborators: the session manager, where work runs, the metrics and the authenticator."""

    def __init__(
        self,
        manager: SessionManager,
        placement: Placement,
        metrics: Metrics,
        authenticator: Authenticator,
        server_id: str,
        batcher: Batcher | None = None,
    ):
        self.manager = manager
        self.placement = placement
        self.metrics = metrics
        self.authenticator = authenticator
        self.server_id = server_id
        self.batcher = batcher
        """Batches single timesteps of sessions alike; None: every call runs on its own."""
        self.device_name = str(manager.device)
        self.identity = ((SERVER_ID_HEADER, server_id),)

    @contextlib.asynccontextmanager
    async def _answering(self, context: grpc.aio.ServicerContext, method: str):
        started, code = time.perf_counter(), "OK"
        try:
            yield
        except Exception as error:  # every error becomes a status, none takes the server down
            code = _code_name(error)
            # What the failed call decoded is in the locals of the frames the error passed through;
            # whoever keeps the error (a future, grpc) mustn't keep them too.
            traceback.clear_frames(error.__traceback__)
            await _abort(context, error, method, self.identity)
        finally:
            self.metrics.observe(method, time.perf_counter() - started, code)

    @_handled
    async def GetServerInfo(self, request, context, tenant):
        return self.server_info()

    def server_info(self) -> pb.GetServerInfoResponse:
        """What GetServerInfo answers: version, device, the types with their arguments, limits."""
        manager = self.manager
        return convert.server_info(
            VERSION, self.device_name, self.server_id, manager.limits, manager.registry, self.batcher is not None
        )

    @_handled
    async def CreateSession(self, request, context, tenant):
        requested = request.session
        description = convert.network(requested, self.manager.limits)
        session = await self.placement.in_turn(
            tenant.name,
            self.manager.create,
            description,
            list(requested.input_shape),
            requested.batch_size,
            requested.seed,
            tenant.name,
            request.session_id or None,
        )
        return pb.CreateSessionResponse(session=self._message(session))

    @_handled
    async def GetSession(self, request, context, tenant):
        return pb.GetSessionResponse(session=self._message(await self._owned(request.name, tenant)))

    @_handled
    async def ListSessions(self, request, context, tenant):
        if request.page_size < 0:
            raise InvalidRequest(f"page_size must not be negative, got {request.page_size}")
        if self.manager.store is not None:  # sessions other replicas made or closed, from the shared folder
            await asyncio.to_thread(self.manager.register_stored, tenant.name)
        sessions = self.manager.list(tenant.name)
        start = 0
        if request.page_token:
            ids = [s.id for s in sessions]
            if request.page_token not in ids:
                raise InvalidRequest("page_token is stale or invalid; list again from the start")
            start = ids.index(request.page_token)
        size = request.page_size or 100
        page = sessions[start : start + size]
        next_token = sessions[start + size].id if start + size < len(sessions) else ""
        return pb.ListSessionsResponse(sessions=[self._message(s) for s in page], next_page_token=next_token)

    @_handled
    async def DeleteSession(self, request, context, tenant):
        await self.placement.in_turn(tenant.name, self.manager.delete, await self._owned(request.name, tenant))
        return pb.DeleteSessionResponse()

    @_handled
    async def ResetState(self, request, context, tenant):
        await self._operation(request, tenant, operations.reset, list(request.batch_indices))
        return pb.ResetStateResponse()

    @_handled
    async def GetState(self, request, context, tenant):
        state = await self._operation(request, tenant, operations.get_state)
        return pb.GetStateResponse(tensors=convert.named_tensors(state))

    @_handled
    async def SetState(self, request, context, tenant):
        session = await self._owned(request.name, tenant)
        # No state holds more elements than the session has bytes: a bound known before decoding.
        state = convert.decode_named(request.tensors, session.bytes, "state tensors")
        await self._in_turn(tenant, operations.set_state, session, state)
        return pb.SetStateResponse()

    @_handled
    async def GetParameters(self, request, context, tenant):
        parameters = await self._operation(request, tenant, operations.get_parameters)
        return pb.GetParametersResponse(parameters=convert.named_tensors(parameters))

    @_handled
    async def SetParameters(self, request, context, tenant):
        session = await self._owned(request.name, tenant)
        parameters = convert.decode_named(request.parameters, session.bytes, "parameters")  # as in SetState
        await self._in_turn(tenant, operations.set_parameters, session, parameters)
        return pb.SetParametersResponse()

    @_handled
    async def Run(self, request, context, tenant):
        encoder = convert.encoder(request, self.manager.registry)
        simulation = await self._simulate(request, tenant, await self._owned(request.name, tenant), encoder)
        return convert.run_response(simulation, convert.bitpacked(request))

    @_handled
    async def Simulate(self, requests, context, tenant):
        # The next chunk is read and simulated while the previous reply is being sent: one ahead.
        replies: asyncio.Queue = asyncio.Queue(maxsize=1)
        ahead = asyncio.get_running_loop().create_task(self._simulate_stream(requests, tenant, replies))
        try:
            while (reply := await replies.get()) is not _END:
                if isinstance(reply, Exception):
                    raise reply
                yield reply
        finally:
            ahead.cancel()

    async def _simulate_stream(self, requests, tenant: Tenant, replies: asyncio.Queue) -> None:
        """Each chunk's reply into ``replies``, then _END; or the error that ended the stream."""
        name = session = None
        try:
            async for request in requests:
                if session is None:  # once per stream: later chunks name the same session
                    name, session = request.name, await self._owned(request.name, tenant)
                elif request.name != name:
                    raise InvalidRequest(
                        f"every chunk of a stream must name the same session: {name!r}, then {request.name!r}"
                    )
                simulation = await self._simulate(request, tenant, session)
                await replies.put(convert.simulate_response(simulation, convert.bitpacked(request)))
                del request, simulation  # while waiting for room, hold no chunk
            await replies.put(_END)
        except Exception as error:  # the stream's status: raised where the replies are sent
            await replies.put(error)

    @_handled
    async def TrainStep(self, request, context, tenant):
        carry = convert.carry(request.carry)
        options = convert.training_options(request.config)
        session = await self._owned(request.name, tenant)
        limits = self.manager.limits
        x = convert.required_tensor(request, "input", functools.partial(operations.input_fits, limits, session))
        y = convert.required_tensor(
            request, "targets", functools.partial(operations.targets_fit, session, x.shape[0], x.shape[1])
        )
        result = await self._in_turn(tenant, operations.train_step, session, x, y, options, carry)
        return pb.TrainStepResponse(metrics=convert.scores_message(result.scores()))

    @_handled
    async def Train(self, request, context, tenant):
        session = await self._owned(request.name, tenant)
        fits = functools.partial(operations.dataset_fits, self.manager.limits, session, request.batch_size)
        validation = convert.validation(request, fits)
        options = convert.training_options(request.config)
        fit = functools.partial(
            operations.fit,
            self.manager,
            session,
            convert.dataset(request, fits),
            options,
            epochs=request.epochs,
            batch_size=request.batch_size,
            shuffle=not request.keep_order,
            validation=validation,
            tbptt_steps=request.tbptt_steps,
        )
        async with contextlib.aclosing(self.placement.reported(tenant.name, fit)) as progress:
            async for event in progress:
                yield convert.progress_message(event)

    @_handled
    async def Evaluate(self, request, context, tenant):
        session, batch_size = await self._owned(request.name, tenant), request.batch_size or 256
        fits = functools.partial(operations.dataset_fits, self.manager.limits, session, batch_size)
        evaluate = functools.partial(
            operations.evaluate,
            self.manager,
            session,
            convert.dataset(request, fits),
            request.loss or "ce_count",
            batch_size,
        )
        scores = await self.placement.in_turns(tenant.name, evaluate())
        return pb.EvaluateResponse(metrics=convert.scores_message(scores))

    @_handled
    async def ExportSession(self, request, context, tenant):
        snapshot = await self._operation(request, tenant, operations.export)
        return pb.ExportSessionResponse(snapshot=convert.snapshot_to_message(snapshot))

    @_handled
    async def ImportSession(self, request, context, tenant):
        snapshot = convert.imported_snapshot(request, self.manager.limits)
        session_id = request.session_id or None
        session = await self.placement.in_turn(tenant.name, self.manager.import_, snapshot, tenant.name, session_id)
        return pb.ImportSessionResponse(session=self._message(session))

    async def _simulate(
        self,
        request: pb.RunRequest | pb.SimulateRequest,
        tenant: Tenant,
        session: Session,
        encoder: Encoder | None = None,
    ) -> operations.Simulation:
        """What Run and each chunk of Simulate do, on the session the request names; with an
        ``encoder``, the input is analog data that the session's generator encodes into spikes."""
        limits = self.manager.limits
        if encoder is None:
            fits = functools.partial(operations.input_fits, limits, session, batch=session.batch_size)
            x = convert.required_tensor(request, "input", fits, "send a (time, batch, *input_shape) tensor")
            timesteps, batch = x.shape[:2]
        else:
            fits = functools.partial(operations.encoded_input_fits, limits, session, encoder)
            x = convert.required_tensor(request, "input", fits, "send the analog data the encoder takes")
            timesteps, batch = encoder.encoded_shape(tuple(x.shape))[:2]  # the spikes' shape
        record, packed = list(request.record_layers), convert.bitpacked(request)
        run = functools.partial(operations.run, self.manager, session, x, record, packed, encoder=encoder)
        alone = functools.partial(self.placement.run_soon, tenant.name, session, timesteps * batch, run)
        # An encoded call draws from its session's generator under the session's lock: never batched.
        if self.batcher is not None and x.shape[0] == 1 and not record and not request.exact and encoder is None:
            simulation = await self.batcher.run(tenant.name, session, x, packed, alone)
        else:
            simulation = await alone()
        self.metrics.timesteps.inc(timesteps)
        if simulation.batch > 1:
            self.metrics.batched_timesteps.inc()
        return simulation

    async def _operation(self, request, tenant: Tenant, operation, *args):
        """``operation(manager, session, *args)`` on the session the request names, in the tenant's turn."""
        return await self._in_turn(tenant, operation, await self._owned(request.name, tenant), *args)

    async def _in_turn(self, tenant: Tenant, operation, session: Session, *args):
        return await self.placement.in_turn(tenant.name, operation, self.manager, session, *args)

    async def _owned(self, name: str, tenant: Tenant) -> Session:
        """The session ``name`` if ``tenant`` owns it; others get NOT_FOUND. A session this replica
        hasn't registered is looked for in the checkpoint folder on a thread: that reads files,
        which the event loop mustn't wait for."""
        session_id = convert.session_id(name)
        try:
            return self.manager.get(session_id, tenant.name, discover=False)
        except SessionNotFound:
            return await asyncio.to_thread(self.manager.get, session_id, tenant.name)

    def _message(self, session: Session) -> pb.Session:
        return convert.session_message(session, self.device_name)
