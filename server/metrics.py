"""Prometheus metrics of one server: RPC latency and errors by method, timesteps simulated,
sessions per tenant and the memory they hold, evictions and restores, and the scheduler's queues.
Each server has its own registry."""

from __future__ import annotations

from collections import Counter as Tally

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .manager import SessionManager
from .scheduler import FairScheduler

__all__ = ["Metrics"]


class Metrics:
    """The server's metrics; ``serve(port)`` exposes them over HTTP for Prometheus to scrape."""

    def __init__(self, manager: SessionManager, scheduler: FairScheduler):
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "rnnsim_rpc_duration_seconds", "RPC latency by method (streams: the whole stream)", ["method"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "rnnsim_rpc_errors", "Failed RPCs by method and status code", ["method", "code"], registry=self.registry
        )
        self.timesteps = Counter("rnnsim_timesteps", "Timesteps simulated by Run and Simulate", registry=self.registry)
        self.batched_timesteps = Counter(
            "rnnsim_batched_timesteps",
            "Timesteps simulated in one computation with other sessions' (cross-session batching)",
            registry=self.registry,
        )
        self.registry.register(_SessionCollector(manager, scheduler))
        self._rpc_seconds_of: dict = {}

    def observe(self, method: str, seconds: float, code: str) -> None:
        """Record one finished RPC; ``code`` is its status code name (``"OK"`` when it succeeded)."""
        by_method = self._rpc_seconds_of.get(method)
        if by_method is None:  # a label lookup takes a lock and checks the names: once per method
            by_method = self._rpc_seconds_of[method] = self.rpc_seconds.labels(method)
        by_method.observe(seconds)
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
    """Sessions, memory, evictions, restores and queues, read at scrape time."""

    def __init__(self, manager: SessionManager, scheduler: FairScheduler):
        self.manager = manager
        self.scheduler = scheduler

    def collect(self):
        sessions = self.manager.list()
        per_tenant = GaugeMetricFamily("rnnsim_sessions", "Open sessions by tenant", labels=["tenant"])
        resident = GaugeMetricFamily(
            "rnnsim_resident_sessions", "Sessions in device memory (the others are evicted)", labels=["tenant"]
        )
        for tenant, count in sorted(Tally(s.owner for s in sessions).items()):
            per_tenant.add_metric([tenant], count)
            resident.add_metric([tenant], sum(s.resident for s in sessions if s.owner == tenant))
        yield per_tenant
        yield resident
        device = self.manager.device
        used = torch.cuda.memory_allocated(device) if device.type == "cuda" else self.manager.resident_bytes()
        yield GaugeMetricFamily(
            "rnnsim_device_memory_bytes",
            "Device memory in use: CUDA's allocated bytes, or on the CPU the resident sessions' bytes",
            value=used,
        )
        evictions = CounterMetricFamily(
            "rnnsim_evictions", "Sessions evicted from device memory, by reason", labels=["reason"]
        )
        for reason in ("idle", "memory"):
            evictions.add_metric([reason], self.manager.evictions[reason])
        yield evictions
        expiries = CounterMetricFamily(
            "rnnsim_session_expiries", "Sessions deleted for going unused past their time-to-live", labels=["tenant"]
        )
        for tenant, count in sorted(self.manager.expiries.items()):
            expiries.add_metric([tenant], count)
        yield expiries
        yield CounterMetricFamily(
            "rnnsim_restores", "Sessions loaded back from their checkpoints", value=self.manager.restores
        )
        yield CounterMetricFamily(
            "rnnsim_checkpoint_failures",
            "Checkpoints that could not be written (logged; the session stayed in memory)",
            value=self.manager.checkpoint_failures,
        )
        queued = GaugeMetricFamily("rnnsim_queued_calls", "Calls waiting for a scheduler slot", labels=["tenant"])
        for tenant, count in sorted(self.scheduler.queued().items()):
            queued.add_metric([tenant], count)
        yield queued
        running = GaugeMetricFamily("rnnsim_running_calls", "Calls on a scheduler slot now", labels=["tenant"])
        for tenant, count in sorted(self.scheduler.running().items()):
            running.add_metric([tenant], count)
        yield running
        seconds = CounterMetricFamily(
            "rnnsim_device_seconds", "Slot time each tenant has had from the scheduler", labels=["tenant"]
        )
        for tenant, value in sorted(self.scheduler.device_seconds().items()):
            seconds.add_metric([tenant], value)
        yield seconds
