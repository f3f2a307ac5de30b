"""``python -m server``: run the simulation server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pythonjsonlogger.json import JsonFormatter

from .app import create_server
from .background import listening_address
from .config import ServerConfig
from .processes import supervise

__all__ = ["parse_args", "serve", "main"]

log = logging.getLogger("rnnsim")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="The rnnbuilder-sim simulation server.")
    parser.add_argument(
        "--address",
        default=os.environ.get("RNNSIM_ADDRESS", "127.0.0.1:50051"),
        help="HOST:PORT to listen on, or unix:/path for a Unix domain socket (clients on this host)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("RNNSIM_GRACE", 10.0)),
        help="seconds calls in flight get to finish on SIGTERM/SIGINT",
    )
    parser.add_argument("--log-level", default=os.environ.get("RNNSIM_LOG_LEVEL", "INFO"), help="DEBUG, INFO, ...")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=os.environ.get("RNNSIM_LOG_FORMAT", "json"),
        help="json: one JSON object per line and event, for log collectors (default); text: for people",
    )
    parser.add_argument(
        "--process-index",
        type=int,
        default=None,
        help="which of --processes this process is (set by the process that starts them)",
    )
    ServerConfig.add_arguments(parser)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    config = ServerConfig.from_arguments(args)
    server, port = create_server(args.address, config)
    await server.start(config.metrics_port, config.metrics_host)
    tenants = server.authenticator.tenants
    mode = "open single-tenant mode (no auth)" if tenants is None else f"{len(tenants)} tenants from {args.auth_file}"
    tls = "mutual TLS" if config.tls_client_ca else "TLS" if config.tls_cert else "plaintext"
    log.info(
        "server %s serving on %s (%s), device %s, %s, limits %s",
        config.server_id,
        listening_address(args.address, port),
        tls,
        server.sessions.device,
        mode,
        config.limits,
    )
    if server.metrics_port is not None:
        log.info("Prometheus metrics on port %d (/metrics)", server.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: health NOT_SERVING, letting calls in flight finish (up to %.0f s)", args.grace)
    await server.stop(args.grace)
    log.info("stopped")


def main(argv=None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    if args.processes > 1 and args.process_index is None:
        config = ServerConfig.from_arguments(args)
        argv = sys.argv[1:] if argv is None else list(argv)
        sys.exit(
            supervise(
                argv, config.processes, args.address, config.checkpoint_dir, config.server_id, config.metrics_port
            )
        )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
