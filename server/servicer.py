"""The gRPC servicer: converts messages, delegates to the SessionManager, maps errors to statuses."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import rnnbuilder as rb
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks, tensors
from rnnbuilder_sim.wire.names import SERVER_ID_HEADER, session_name
from rnnbuilder_sim.wire.names import session_id as session_id_of

from . import snapshots, training
from .auth import Authenticator, Tenant
from .config import ServerConfig
from .errors import DOMAIN, InvalidRequest, SessionNotFound, status_of
from .metrics import Metrics
from .scheduler import FairScheduler
from .sessions import Session, SessionManager, WouldBlock

__all__ = ["SimulatorServicer", "VERSION", "add_to_server"]

VERSION = rb.__version__
log = logging.getLogger("rnnsim.rpc")
RUN_HERE_ELEMENTS = 1 << 16
"""A simulation this small (timesteps x batch x elements per batch entry) runs on the event loop
when a slot is free and nobody waits: two thread hand-offs (0.3-0.5 ms) cost more than it does,
and the loop is held no longer than such a call takes."""


class _Malformed:
    """Request bytes that don't parse as the method's message: the method answers INVALID_ARGUMENT
    (grpc's own deserializer would fail the call with UNKNOWN, naming an internal exception)."""

    def __init__(self, message: str, error: Exception):
        self.problem = f"the request is not a valid {message} message: {error}"


def _parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as error:  # protobuf's DecodeError, and invalid UTF-8 in string fields
            return _Malformed(message_class.DESCRIPTOR.full_name, error)

    return parse


def _checked(request):
    if isinstance(request, _Malformed):
        raise InvalidRequest(request.problem)
    return request


def add_to_server(servicer: SimulatorServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s methods, as the generated ``add_SimulatorServiceServicer_to_server``
    does, but with request parsing that turns malformed bytes into INVALID_ARGUMENT."""
    service = pb.DESCRIPTOR.services_by_name["SimulatorService"]
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
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _handled(method):
    """Turn exceptions into their canonical status with an ErrorInfo detail; the server goes on."""

    @functools.wraps(method)
    async def unary(self, request, context):
        started, code = time.perf_counter(), "OK"
        try:
            tenant = self.authenticator.tenant_for(context.invocation_metadata())
            response = await method(self, _checked(request), context, tenant)
            await context.send_initial_metadata(self.identity)
            return response
        except Exception as error:  # every error becomes a status, none takes the server down
            code = _code_name(error)
            await _abort(context, error, method.__name__, self.identity)
        finally:
            self.metrics.observe(method.__name__, time.perf_counter() - started, code)

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
    """Each method: decode the request, run the manager call in a worker thread, encode the answer."""

    def __init__(self, manager: SessionManager, config: ServerConfig, device_name: str, authenticator: Authenticator):
        self.manager = manager
        self.authenticator = authenticator
        self.device_name = device_name
        self.server_id = config.server_id
        self.identity = ((SERVER_ID_HEADER, config.server_id),)
        self.scheduler = FairScheduler(config.workers, config.scheduling)
        self.metrics = Metrics(manager, self.scheduler)
        # Training and evaluation loops wait here between batches; each batch takes a scheduler turn.
        self._loops = ThreadPoolExecutor(max_workers=config.limits.max_sessions, thread_name_prefix="rnnsim-loop")

    async def in_worker(self, tenant: Tenant, fn, *args):
        """``fn(*args)`` in the tenant's turn on a scheduler slot, so the event loop keeps serving.
        A call cancelled (or past its deadline) before its turn comes never runs."""
        return await asyncio.wrap_future(self.scheduler.submit(tenant.name, functools.partial(fn, *args)))

    async def in_turns(self, tenant: Tenant, loop_fn, **kwargs):
        """``loop_fn(..., schedule=...)`` on a loop thread, each of its batches in the tenant's turn."""
        fn = functools.partial(loop_fn, schedule=functools.partial(self.scheduler.call, tenant.name), **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._loops, fn)

    def close(self) -> None:
        self._loops.shutdown(wait=True)
        self.scheduler.close()

    @_handled
    async def GetServerInfo(self, request, context, tenant):
        limits = self.manager.limits
        registry = self.manager.registry
        return pb.GetServerInfoResponse(
            version=VERSION,
            device=self.device_name,
            factory_types=registry.factory_names(),
            surrogate_types=registry.surrogate_names(),
            limits=pb.Limits(**{f: getattr(limits, f) for f in pb.Limits.DESCRIPTOR.fields_by_name}),
            losses=training.loss_names(),
            optimizers=sorted(training.OPTIMIZERS),
            server_id=self.server_id,
        )

    @_handled
    async def CreateSession(self, request, context, tenant):
        requested = request.session
        if not requested.HasField("network"):
            raise InvalidRequest("session.network is missing: describe the network to simulate")
        description = networks.from_message(requested.network)
        session = await self.in_worker(
            tenant,
            self.manager.create,
            description,
            list(requested.input_shape),
            requested.batch_size,
            requested.seed,
            tenant.name,
            request.session_id or None,
        )
        return pb.CreateSessionResponse(session=self._session(session))

    @_handled
    async def GetSession(self, request, context, tenant):
        session_id = await self._owned(request.name, tenant)
        return pb.GetSessionResponse(session=self._session(self.manager.get(session_id)))

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
        return pb.ListSessionsResponse(sessions=[self._session(s) for s in page], next_page_token=next_token)

    @_handled
    async def DeleteSession(self, request, context, tenant):
        await self.in_worker(tenant, self.manager.delete, await self._owned(request.name, tenant))
        return pb.DeleteSessionResponse()

    @_handled
    async def ResetState(self, request, context, tenant):
        session_id = await self._owned(request.name, tenant)
        await self.in_worker(tenant, self.manager.reset, session_id, list(request.batch_indices))
        return pb.ResetStateResponse()

    @_handled
    async def GetState(self, request, context, tenant):
        state = await self.in_worker(tenant, self.manager.get_state, await self._owned(request.name, tenant))
        return pb.GetStateResponse(tensors=snapshots.named_tensors(state))

    @_handled
    async def SetState(self, request, context, tenant):
        session_id = await self._owned(request.name, tenant)
        await self.in_worker(tenant, self.manager.set_state, session_id, snapshots.decode_named(request.tensors))
        return pb.SetStateResponse()

    @_handled
    async def GetParameters(self, request, context, tenant):
        parameters = await self.in_worker(tenant, self.manager.get_parameters, await self._owned(request.name, tenant))
        return pb.GetParametersResponse(parameters=snapshots.named_tensors(parameters))

    @_handled
    async def SetParameters(self, request, context, tenant):
        await self.in_worker(
            tenant,
            self.manager.set_parameters,
            await self._owned(request.name, tenant),
            snapshots.decode_named(request.parameters),
        )
        return pb.SetParametersResponse()

    @_handled
    async def Run(self, request, context, tenant):
        out, recordings, _ = await self._simulate(request, tenant)
        packed = request.output_encoding == pb.TENSOR_ENCODING_BITPACKED
        return pb.RunResponse(
            output=tensors.encode(out, packed), recordings=snapshots.named_tensors(recordings, packed)
        )

    async def Simulate(self, request_iterator, context):
        name, started, code = None, time.perf_counter(), "OK"
        try:
            await context.send_initial_metadata(self.identity)
            tenant = self.authenticator.tenant_for(context.invocation_metadata())
            async for request in request_iterator:
                request = _checked(request)
                if name is not None and request.name != name:
                    raise InvalidRequest(
                        f"every chunk of a stream must name the same session: {name!r}, then {request.name!r}"
                    )
                name = request.name
                out, recordings, first = await self._simulate(request, tenant)
                packed = request.output_encoding == pb.TENSOR_ENCODING_BITPACKED
                yield pb.SimulateResponse(
                    output=tensors.encode(out, packed),
                    recordings=snapshots.named_tensors(recordings, packed),
                    first_timestep=first,
                )
        except Exception as error:  # as in _handled, for a stream
            code = _code_name(error)
            await _abort(context, error, "Simulate", self.identity)
        finally:
            self.metrics.observe("Simulate", time.perf_counter() - started, code)

    @_handled
    async def TrainStep(self, request, context, tenant):
        carry = {0: "none", 1: "none", 2: "start", 3: "continue"}.get(request.carry)
        if carry is None:
            raise InvalidRequest(f"unknown carry {request.carry}")
        loss, optimizer, clip = _training_config(request.config)
        result = await self.in_worker(
            tenant,
            functools.partial(
                self.manager.train_step,
                await self._owned(request.name, tenant),
                _required_tensor(request, "input"),
                _required_tensor(request, "targets"),
                loss,
                optimizer,
                clip_norm=clip,
                carry=carry,
            ),
        )
        return pb.TrainStepResponse(metrics=_metrics(result.metrics()))

    async def Train(self, request, context):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        started, code = time.perf_counter(), "OK"
        try:
            await context.send_initial_metadata(self.identity)
            tenant = self.authenticator.tenant_for(context.invocation_metadata())
            request = _checked(request)
            validation = None
            if request.HasField("validation_inputs") or request.HasField("validation_targets"):
                validation = (
                    _required_tensor(request, "validation_inputs"),
                    _required_tensor(request, "validation_targets"),
                )
            loss, optimizer, clip = _training_config(request.config)
            fit = functools.partial(
                self.manager.fit,
                await self._owned(request.name, tenant),
                _required_tensor(request, "inputs"),
                _required_tensor(request, "targets"),
                loss,
                optimizer,
                epochs=request.epochs,
                batch_size=request.batch_size,
                clip_norm=clip,
                shuffle=not request.keep_order,
                validation=validation,
                tbptt_steps=request.tbptt_steps,
                report=lambda progress: loop.call_soon_threadsafe(queue.put_nowait, progress),
                cancelled=cancel.is_set,
            )
            done = loop.create_task(self.in_turns(tenant, fit))
            done.add_done_callback(lambda _: queue.put_nowait(None))
            try:
                while (progress := await queue.get()) is not None:
                    yield _progress(progress)
                await done
            finally:
                cancel.set()  # a client that went away stops the training at the next batch boundary
        except Exception as error:  # as in _handled, for a stream
            code = _code_name(error)
            await _abort(context, error, "Train", self.identity)
        finally:
            self.metrics.observe("Train", time.perf_counter() - started, code)

    @_handled
    async def Evaluate(self, request, context, tenant):
        metrics = await self.in_turns(
            tenant,
            self.manager.evaluate,
            session_id=await self._owned(request.name, tenant),
            x=_required_tensor(request, "inputs"),
            y=_required_tensor(request, "targets"),
            loss=request.loss or "ce_count",
            batch_size=request.batch_size or 256,
        )
        return pb.EvaluateResponse(metrics=_metrics(metrics))

    @_handled
    async def ExportSession(self, request, context, tenant):
        snapshot = await self.in_worker(tenant, self.manager.export, await self._owned(request.name, tenant))
        return pb.ExportSessionResponse(snapshot=snapshots.to_message(snapshot))

    @_handled
    async def ImportSession(self, request, context, tenant):
        if not request.HasField("snapshot") or not request.snapshot.HasField("network"):
            raise InvalidRequest("snapshot is missing or has no network: send what ExportSession gave")
        snapshot = snapshots.from_message(request.snapshot)
        session = await self.in_worker(tenant, self.manager.import_, snapshot, tenant.name, request.session_id or None)
        return pb.ImportSessionResponse(session=self._session(session))

    async def _simulate(self, request, tenant: Tenant):
        session_id = await self._owned(request.name, tenant)
        if not request.HasField("input"):
            raise InvalidRequest("input is missing: send a (time, batch, *input_shape) tensor")
        x = tensors.decode_torch(request.input)
        packed = request.output_encoding == pb.TENSOR_ENCODING_BITPACKED
        wanted = threading.Event()
        wanted.set()
        run = functools.partial(
            self.manager.run, session_id, x, list(request.record_layers), packed, wanted=wanted.is_set
        )
        work = x.shape[0] * x.shape[1] * self.manager.get(session_id).entry_elements if x.dim() >= 2 else 0
        result = await self._run_soon(tenant, run, wanted, small=work <= RUN_HERE_ELEMENTS)
        self.metrics.timesteps.inc(x.shape[0])
        return result

    async def _run_soon(self, tenant: Tenant, run, wanted: threading.Event, small: bool):
        """``run()``: right here on the event loop if ``small`` and a slot is free (``run(wait=False)``,
        which never waits), else in the tenant's turn on a slot; ``wanted`` is cleared if the call
        goes away meanwhile, so that its result isn't kept."""
        if small:
            try:
                ran, result = self.scheduler.run_here(tenant.name, functools.partial(run, wait=False))
                if ran:
                    return result
            except WouldBlock:
                pass
        try:
            return await self.in_worker(tenant, run)
        except asyncio.CancelledError:
            wanted.clear()
            raise

    async def _owned(self, name: str, tenant: Tenant) -> str:
        """The id of the session ``name`` if ``tenant`` owns it; others get NOT_FOUND. A session this
        replica hasn't registered is looked for in the checkpoint folder on a thread: that reads
        files, which the event loop mustn't wait for."""
        session_id = _session_id(name)
        try:
            return self.manager.get(session_id, tenant.name, discover=False).id
        except SessionNotFound:
            return (await asyncio.to_thread(self.manager.get, session_id, tenant.name)).id

    def _session(self, session: Session) -> pb.Session:
        return pb.Session(
            name=session_name(session.id),
            network=networks.to_message(session.description),
            input_shape=session.input_shape,
            batch_size=session.batch_size,
            seed=session.seed,
            output_shape=session.output_shape,
            parameter_count=session.parameter_count,
            timesteps_simulated=session.timesteps,
            device=self.device_name,
            recordable_layers=session.recordable_layers,
            create_time=snapshots.timestamp(session.create_time),
        )


def _session_id(name: str) -> str:
    session_id = session_id_of(name)
    if session_id is None:
        raise InvalidRequest(f"a session name looks like 'sessions/<id>', got {name!r}")
    return session_id


def _required_tensor(request, field: str):
    if not request.HasField(field):
        raise InvalidRequest(f"{field} is missing")
    return tensors.decode_torch(getattr(request, field))


def _training_config(message: pb.TrainingConfig) -> tuple[str, training.OptimizerConfig, float]:
    if not (message.grad_clip_norm >= 0):
        raise InvalidRequest(f"grad_clip_norm must be >= 0, got {message.grad_clip_norm}")
    return message.loss or "ce_count", snapshots.optimizer_config(message.optimizer), message.grad_clip_norm


def _metrics(values: dict) -> pb.Metrics:
    return pb.Metrics(loss=values["loss"], grad_norm=values.get("grad_norm", 0.0), accuracy=values.get("accuracy"))


def _progress(progress: dict) -> pb.TrainResponse:
    if progress["kind"] == "batch":
        batch = pb.BatchProgress(
            epoch=progress["epoch"], batch=progress["batch"], batches=progress["batches"], metrics=_metrics(progress)
        )
        return pb.TrainResponse(batch=batch)
    validation = {k[4:]: v for k, v in progress.items() if k.startswith("val_")}
    epoch = pb.EpochSummary(
        epoch=progress["epoch"],
        metrics=_metrics(progress),
        validation_metrics=_metrics(validation) if validation else None,
        samples_per_second=progress["samples_per_second"],
    )
    return pb.TrainResponse(epoch=epoch)
