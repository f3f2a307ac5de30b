"""``create_server``: the gRPC server with the simulator, health and reflection services."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from . import convert
from .auth import Authenticator
from .batching import Batcher
from .checkpoints import LEASE_RENEW_S, CheckpointStore
from .config import ServerConfig, resolve_device
from .manager import SessionManager
from .memory import MB, Quota
from .metrics import Metrics
from .placement import Placement
from .planning import warm_up
from .scheduler import FairScheduler
from .servicer import SimulatorServicer, add_to_server

__all__ = ["SimulatorServer", "create_server", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SimulatorService"].full_name
log = logging.getLogger("rnnsim")
RELEASE_STACKS_S = 30.0
"""How often batching's stacks let go of the parameters of sessions that left (``server.batching``)."""
EXPIRY_ROUND_S = 30.0
"""How often, at most, unused sessions are looked for and the last uses recorded (``--session-ttl``)."""


class SimulatorServer:
    """A started-on-demand grpc.aio server; ``stop`` turns health to NOT_SERVING, then lets calls finish."""

    def __init__(
        self,
        server: grpc.aio.Server,
        config: ServerConfig,
        health_servicer: health.aio.HealthServicer,
        *,
        sessions: SessionManager,
        placement: Placement,
        metrics: Metrics,
        authenticator: Authenticator,
        batcher: Batcher | None = None,
    ):
        self._interval = config.checkpoint_interval_s
        self._idle = config.evict_idle_after_s
        self._health = health_servicer
        self._periodic: list[asyncio.Task] = []
        self._leases: asyncio.Task | None = None
        self.grpc_server = server
        self.sessions = sessions
        self.placement = placement
        self.scheduler = placement.scheduler
        self.metrics = metrics
        self.authenticator = authenticator
        self.batcher = batcher
        self.metrics_port: int | None = None

    async def start(self, metrics_port: int | None = None, metrics_host: str = "0.0.0.0") -> None:
        """Start serving; with ``metrics_port`` (0: a free one), also Prometheus' ``/metrics`` on ``metrics_host``."""
        await asyncio.to_thread(warm_up)
        await self.grpc_server.start()
        if metrics_port is not None:
            self.metrics_port = self.metrics.serve(metrics_port, metrics_host)
        if self.sessions.store is not None:
            loop = asyncio.get_running_loop()
            self._leases = loop.create_task(self._every(LEASE_RENEW_S, self.sessions.tend_leases))
            self._periodic.append(loop.create_task(self._every(self._interval, self.sessions.checkpoint_all)))
            if self._idle > 0:
                evict = functools.partial(self.sessions.evict_idle, self._idle)
                self._periodic.append(loop.create_task(self._every(min(self._idle / 2, 30.0), evict)))
        ttl = self.sessions.shortest_ttl()
        if ttl > 0:  # a quarter of the shortest TTL: sessions go within 1.25 TTL of their last use
            loop = asyncio.get_running_loop()
            self._periodic.append(loop.create_task(self._every(min(ttl / 4, EXPIRY_ROUND_S), self.sessions.expire)))
        if self.batcher is not None:
            loop = asyncio.get_running_loop()
            release = self._every(RELEASE_STACKS_S, self.batcher.release_departed, on_loop=True)
            self._periodic.append(loop.create_task(release))
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful: health turns NOT_SERVING, new calls are refused, calls in flight get ``grace``
        seconds to finish. With a checkpoint folder, every session is handed over to it: idle
        ones at once, busy ones when their call ends; until then replicas sharing the folder
        answer their calls with UNAVAILABLE (clients retry) rather than load an older checkpoint."""
        await self._health.enter_graceful_shutdown()
        for task in self._periodic:
            task.cancel()
        store = self.sessions.store
        if store is None:
            await self.grpc_server.stop(grace)
        else:
            await asyncio.to_thread(self.sessions.begin_hand_over)
            _, handed = await asyncio.gather(
                self.grpc_server.stop(grace), asyncio.to_thread(self.sessions.hand_over, grace or 0.0)
            )
            late = await asyncio.to_thread(self.sessions.end_hand_over)
            if self.sessions.shortest_ttl() > 0:  # the last uses, for the restarted server's expiry
                await asyncio.to_thread(self.sessions.record_use)
            self._leases.cancel()
            log.info(
                "checkpointed %d sessions to %s",
                handed + late,
                store.directory,
                extra={"event": "shutdown_checkpoint", "sessions": handed + late},
            )
        self.placement.close()

    @staticmethod
    async def _every(seconds: float, job, on_loop: bool = False) -> None:
        """``job()`` every ``seconds``: on a thread (it reads files, or waits for locks), or
        ``on_loop`` for a short one that changes what only the loop may change."""
        while True:
            await asyncio.sleep(seconds)
            if on_loop:
                job()
            else:
                await asyncio.to_thread(job)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def create_server(address: str, config: ServerConfig | None = None) -> tuple[SimulatorServer, int]:
    """A server bound to ``address`` (port 0 picks a free port), not yet started, and its port.

    Call it inside a running event loop, then ``await server.start()``.
    """
    config = config or ServerConfig()
    device = resolve_device(config.device)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    authenticator = Authenticator.from_file(config.auth_file) if config.auth_file else Authenticator()
    share = max(1, config.processes)  # each of N processes gets 1/N of the memory budgets (whole MB)
    quotas = {
        t.name: Quota(
            t.max_sessions, None if t.max_memory_mb is None else max(1, t.max_memory_mb // share), t.session_ttl_s
        )
        for t in authenticator.tenants or ()
    }
    store = CheckpointStore(config.checkpoint_dir) if config.checkpoint_dir else None
    budget = _budget(config, device)
    budget = None if budget is None else budget // share
    manager = SessionManager(
        device,
        config.limits,
        None,
        store,
        quotas,
        budget,
        holder=config.server_id,
        describable=convert.describable,
        shared_store=config.processes > 1,
        session_ttl_s=config.session_ttl_s,
    )
    if store is not None:
        log.info("%d sessions in %s, each loaded on its first call", manager.register_stored(), store.directory)
    elif config.evict_idle_after_s > 0:
        log.warning("no checkpoint folder: idle sessions stay in memory")
    scheduler = FairScheduler(config.workers, config.scheduling)
    placement = Placement(scheduler)
    metrics = Metrics(manager, scheduler)
    batching = config.batching if config.batching is not None else device.type == "cuda"
    batcher = Batcher(manager, placement, config.batch_window_us) if batching else None
    servicer = SimulatorServicer(manager, placement, metrics, authenticator, config.server_id, batcher)
    # The server describes itself (every type and argument) even under a message limit smaller than
    # that description; replies of data keep within the limit (operations.checked_reply).
    described = servicer.server_info().ByteSize()
    options = [
        ("grpc.max_receive_message_length", config.limits.max_message_bytes),
        ("grpc.max_send_message_length", max(config.limits.max_message_bytes, described)),
    ]
    grpc_server = grpc.aio.server(options=options)
    add_to_server(servicer, grpc_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), grpc_server
    )
    port = (
        grpc_server.add_secure_port(address, _tls(config))
        if config.tls_cert
        else grpc_server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server = SimulatorServer(
        grpc_server,
        config,
        health_servicer,
        sessions=manager,
        placement=placement,
        metrics=metrics,
        authenticator=authenticator,
        batcher=batcher,
    )
    return server, port


def _budget(config: ServerConfig, device: torch.device) -> int | None:
    """The server's device-memory budget in bytes: as configured, else 90% of a CUDA device's."""
    if config.limits.max_memory_mb > 0:
        return config.limits.max_memory_mb * MB
    if device.type == "cuda":
        return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    return None


def _tls(config: ServerConfig) -> grpc.ServerCredentials:
    if not config.tls_key:
        raise ValueError("--tls-cert needs --tls-key")
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)
