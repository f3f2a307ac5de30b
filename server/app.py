"""``create_server``: the gRPC server with the simulator, health and reflection services."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

from .auth import Authenticator
from .checkpoints import CheckpointStore, checkpoint_all, restore_all
from .config import ServerConfig, resolve_device
from .servicer import SimulatorServicer
from .sessions import SessionManager

__all__ = ["SimulatorServer", "create_server", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SimulatorService"].full_name
log = logging.getLogger("rnnsim")


class SimulatorServer:
    """A started-on-demand grpc.aio server; ``stop`` turns health to NOT_SERVING, then lets calls finish."""

    def __init__(
        self,
        server: grpc.aio.Server,
        servicer: SimulatorServicer,
        health_servicer,
        checkpoints: CheckpointStore | None = None,
        checkpoint_interval_s: float = 60.0,
    ):
        self.grpc_server = server
        self.servicer = servicer
        self.sessions: SessionManager = servicer.manager
        self.authenticator = servicer.authenticator
        self.metrics = servicer.metrics
        self.metrics_port: int | None = None
        self.checkpoints = checkpoints
        self._interval = checkpoint_interval_s
        self._periodic: asyncio.Task | None = None
        self._health = health_servicer

    async def start(self, metrics_port: int | None = None) -> None:
        """Start serving; with ``metrics_port`` (0: a free one), also Prometheus' ``/metrics``."""
        await self.grpc_server.start()
        if metrics_port is not None:
            self.metrics_port = self.metrics.serve(metrics_port)
        if self.checkpoints is not None:
            self._periodic = asyncio.get_running_loop().create_task(self._checkpoint_periodically())
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful: new calls are refused, calls in flight get ``grace`` seconds to finish."""
        await self._health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self._periodic is not None:
            self._periodic.cancel()
        if self.checkpoints is not None:
            written = await self.servicer.in_worker(checkpoint_all, self.sessions, self.checkpoints)
            log.info("checkpointed %d sessions to %s", written, self.checkpoints.directory)
        self.servicer.close()

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.servicer.in_worker(checkpoint_all, self.sessions, self.checkpoints)

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
    manager = SessionManager(device, config.limits)
    options = [
        ("grpc.max_receive_message_length", config.limits.max_message_bytes),
        ("grpc.max_send_message_length", config.limits.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    authenticator = Authenticator.from_file(config.auth_file) if config.auth_file else Authenticator()
    checkpoints = CheckpointStore(config.checkpoint_dir) if config.checkpoint_dir else None
    if checkpoints is not None:
        log.info("restored %d sessions from %s", restore_all(manager, checkpoints), checkpoints.directory)
    servicer = SimulatorServicer(manager, config.workers, str(device), authenticator, checkpoints, config.server_id)
    pb_grpc.add_SimulatorServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(address, _tls(config)) if config.tls_cert else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return SimulatorServer(server, servicer, health_servicer, checkpoints, config.checkpoint_interval_s), port


def _tls(config: ServerConfig) -> grpc.ServerCredentials:
    if not config.tls_key:
        raise ValueError("--tls-cert needs --tls-key")
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)
