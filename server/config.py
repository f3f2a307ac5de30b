"""Server settings: from flags, from environment variables, or built-in defaults."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields

import torch

from .scheduler import POLICIES

__all__ = ["Limits", "ServerConfig", "resolve_device"]


@dataclass(frozen=True)
class Limits:
    """What one server accepts; requests over a limit get RESOURCE_EXHAUSTED with the numbers."""

    max_sessions: int = 64
    max_parameters_per_session: int = 50_000_000
    max_state_elements_per_session: int = 100_000_000
    max_timesteps_times_batch: int = 1_000_000
    max_batch_size: int = 4096
    max_message_bytes: int = 256 * 1024 * 1024
    max_memory_mb: int = 0
    """Device memory all sessions and calls may hold; 0: 90% of a CUDA device's memory, none on the CPU."""
    max_network_nodes: int = 10_000
    """Factories and nodes a network description may hold: a huge one is refused before it is read
    (100,000 chained nodes took a minute to build)."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``create_server`` needs besides the address."""

    device: str = "auto"
    server_id: str = field(default_factory=socket.gethostname)
    """This replica's name in logs, GetServerInfo, every response's ``rnnsim-server-id`` metadata and
    the leases of a checkpoint folder. Replicas sharing a folder need different ones; a replica
    restarted under the same one takes its sessions back at once."""
    limits: Limits = field(default_factory=Limits)
    workers: int = 8
    """Scheduler slots: calls that run at once; the others wait their turn, fairly across tenants."""
    scheduling: str = "fair"
    """``fair`` across tenants by device time, or ``fifo`` (arrival order)."""
    evict_idle_after_s: float = 0.0
    """Sessions unused this long leave device memory for their checkpoint (0: never; needs checkpoint_dir)."""
    session_ttl_s: float = 0.0
    """Sessions no call has named for this long are deleted with their checkpoint (0: never); a
    tenant's ``session_ttl_s`` in the auth file overrides it."""
    torch_threads: int = 0
    """Torch's intra-op threads; 0 keeps torch's default. 1 suits many small sessions on a CPU."""
    checkpoint_dir: str | None = None
    """Where session checkpoints live; None keeps sessions in memory only."""
    checkpoint_interval_s: float = 60.0
    """Seconds between periodic checkpoints (there is always one on graceful shutdown)."""
    metrics_port: int | None = None
    """Where to expose Prometheus metrics (0: a free port); None exposes none."""
    metrics_host: str = "0.0.0.0"
    """The address the metrics endpoint listens on. It has no authentication and its labels name
    tenants: keep it on a network only the operator's scraper reaches, or bind it to 127.0.0.1."""
    auth_file: str | None = None
    """A TOML file of tenants and their tokens; None runs open, single-tenant."""
    tls_cert: str | None = None
    """PEM certificate chain: with ``tls_key``, the server speaks TLS."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """PEM root certificate for client certificates: mutual TLS."""
    batching: bool | None = None
    """Cross-session batching: single timesteps of sessions with the same network, shapes and device
    that are ready at the same moment run as one batched computation (calls that ask to be exact
    never do). None (auto): on with a CUDA device; off on the CPU, where it measured no faster
    (docs/batching.md). False runs every call on its own."""
    processes: int = 1
    """Server processes on this one's address and checkpoint folder, this one among them
    (``server.processes``): they share the session limits, and each has 1/processes of the
    memory budgets."""
    batch_window_us: int = 0
    """How long a ready call may wait for others of its cohort, in microseconds; 0 batches only what
    is already waiting (a lone call runs at once)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags for every setting; each defaults to its environment variable RNNSIM_<NAME>."""
        parser.add_argument("--device", default=_env("device", cls.device), help="auto, cpu, cuda or cuda:N")
        parser.add_argument(
            "--server-id",
            default=os.environ.get("RNNSIM_SERVER_ID"),
            help="this replica's name in logs, response metadata and checkpoint leases; replicas sharing a"
            " checkpoint folder need different ones (default: the host name)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=int(_env("workers", cls.workers)),
            help="calls that run at once; the others wait their turn, fairly across tenants",
        )
        parser.add_argument(
            "--scheduling",
            choices=POLICIES,
            default=_env("scheduling", cls.scheduling),
            help="fair: across tenants by device time (default); fifo: in arrival order",
        )
        parser.add_argument(
            "--evict-idle-after",
            type=float,
            default=float(_env("evict_idle_after", 900)),
            help="seconds after which an unused session leaves device memory for its checkpoint and comes"
            " back on its next call (default 900; 0: never)",
        )
        parser.add_argument(
            "--session-ttl",
            type=float,
            default=float(_env("session_ttl", cls.session_ttl_s)),
            help="seconds after which a session no call has named is deleted with its checkpoint; its id"
            " then answers SESSION_EXPIRED (default 0: never; tenants' session_ttl_s override it)",
        )
        parser.add_argument(
            "--torch-threads",
            type=int,
            default=int(_env("torch_threads", cls.torch_threads)),
            help="torch intra-op threads; 0 keeps torch's default, 1 suits many small sessions on a CPU",
        )
        parser.add_argument(
            "--checkpoint-dir",
            default=_env("checkpoint_dir", "checkpoints"),
            help="folder of session checkpoints, restored at start-up (default ./checkpoints; '' keeps none)",
        )
        parser.add_argument(
            "--checkpoint-interval",
            type=float,
            default=float(_env("checkpoint_interval", 60)),
            help="seconds between periodic checkpoints (default 60); one is always written on shutdown",
        )
        metrics = _env("metrics_port", 9464)
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=int(metrics) if metrics else None,
            help="port of the Prometheus /metrics endpoint (default 9464; -1 turns it off)",
        )
        parser.add_argument(
            "--metrics-host",
            default=_env("metrics_host", cls.metrics_host),
            help="address of the /metrics endpoint (default 0.0.0.0; it has no authentication and names tenants,"
            " so keep it off networks tenants reach, or use 127.0.0.1)",
        )
        parser.add_argument(
            "--batching",
            choices=("auto", "on", "off"),
            default=_env("batching", "auto"),
            help="on: single timesteps of sessions with the same network that are ready together run as one"
            " batched computation; off: each call on its own; auto (default): on with a CUDA device, off on the CPU",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=int(_env("processes", cls.processes)),
            help="server processes on the same address, each with sessions of its own, so that a busy server"
            " uses that many cores (default 1; more need --checkpoint-dir)",
        )
        parser.add_argument(
            "--batch-window-us",
            type=int,
            default=int(_env("batch_window_us", cls.batch_window_us)),
            help="microseconds a ready call may wait for others of its cohort (default 0: batch only what"
            " is already waiting)",
        )
        for name, text in (
            ("auth_file", "a TOML file of tenants and bearer tokens; without it the server is open, single-tenant"),
            ("tls_cert", "PEM certificate chain; with --tls-key the server speaks TLS"),
            ("tls_key", "PEM private key of --tls-cert"),
            ("tls_client_ca", "PEM root certificate that client certificates must chain to (mutual TLS)"),
        ):
            parser.add_argument(
                "--" + name.replace("_", "-"), default=os.environ.get(f"RNNSIM_{name.upper()}"), help=text
            )
        for f in fields(Limits):
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, type=int, default=int(_env(f.name, f.default)), help=f"(default {f.default:,})")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ServerConfig:
        limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
        named = {"server_id": args.server_id} if args.server_id else {}
        return cls(
            **named,
            device=args.device,
            limits=limits,
            workers=args.workers,
            scheduling=args.scheduling,
            evict_idle_after_s=args.evict_idle_after,
            session_ttl_s=args.session_ttl,
            torch_threads=args.torch_threads,
            checkpoint_dir=args.checkpoint_dir or None,
            checkpoint_interval_s=args.checkpoint_interval,
            metrics_port=None if args.metrics_port is None or args.metrics_port < 0 else args.metrics_port,
            metrics_host=args.metrics_host,
            auth_file=args.auth_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            batching={"on": True, "off": False}.get(args.batching),
            batch_window_us=args.batch_window_us,
            processes=args.processes,
        )


def _env(name: str, default) -> str:
    return os.environ.get(f"RNNSIM_{name.upper()}", str(default))


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return resolved
