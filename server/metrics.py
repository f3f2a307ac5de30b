"""Prometheus metrics of one server: RPC latency and errors by method, timesteps simulated,
sessions per tenant and the memory they hold. Each server has its own registry."""

from __future__ import annotations

from collections import Counter as Tally

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .sessions import SessionManager

__all__ = ["Metrics"]


class Metrics:
    """The server's metrics; ``serve(port)`` exposes them over HTTP for Prometheus to scrape."""

    def __init__(self, manager: SessionManager):
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "rnnsim_rpc_duration_seconds", "RPC latency by method (streams: the whole stream)", ["method"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "rnnsim_rpc_errors", "Failed RPCs by method and status code", ["method", "code"], registry=self.registry
        )
        self.timesteps = Counter("rnnsim_timesteps", "Timesteps simulated by Run and Simulate", registry=self.registry)
        self.registry.register(_SessionCollector(manager))

    def observe(self, method: str, seconds: float, code: str) -> None:
        """Record one finished RPC; ``code`` is its status code name (``"OK"`` when it succeeded)."""
        self.rpc_seconds.labels(method).observe(seconds)
        if code != "OK":
            self.errors.labels(method, code).inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Expose ``/metrics`` on ``port`` (0 picks a free one) in a background thread; returns the port."""
        server, _ = start_http_server(port, address, registry=self.registry)
        return server.server_port

    def text(self) -> str:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry).decode()


class _SessionCollector:
    """Sessions per tenant and the bytes their parameters and states hold, read at scrape time."""

    def __init__(self, manager: SessionManager):
        self.manager = manager

    def collect(self):
        sessions = self.manager.list()
        per_tenant = GaugeMetricFamily("rnnsim_sessions", "Open sessions by tenant", labels=["tenant"])
        for tenant, count in sorted(Tally(s.owner for s in sessions).items()):
            per_tenant.add_metric([tenant], count)
        yield per_tenant
        device = self.manager.device
        if device.type == "cuda":
            used = torch.cuda.memory_allocated(device)
        else:
            used = sum(self.manager.memory_bytes(s) for s in sessions)
        yield GaugeMetricFamily(
            "rnnsim_device_memory_bytes",
            "Device memory in use: CUDA's allocated bytes, or on the CPU the sessions' parameters and states",
            value=used,
        )
