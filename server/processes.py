"""``python -m server --processes N``: N server processes on one address, one core's worth of Python
each. Knows nothing of gRPC beyond the address.

The processes bind the same port (SO_REUSEPORT, which grpcio sets), and the kernel gives each new
connection to one of them: a client's calls go to the process its connection reached, where the
sessions it created live. They share the checkpoint folder, so a session asked for through
another process's connection moves there (its holder checkpoints it and lets go of its lease, as
replicas behind a proxy do), and session counts are read from the folder. Memory budgets are split
among them. This process only starts them, passes SIGTERM and SIGINT on, and exits with the worst
of their exit codes; if one of them dies, it stops the others, for the orchestrator to restart all.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["supervise", "child_command"]

log = logging.getLogger("rnnsim")


def child_command(argv: Sequence[str], processes: int, index: int, address: str, server_id: str, metrics_port: int):
    """The command line of process ``index``: the supervisor's own flags, then its part (argparse
    takes the last of a repeated flag)."""
    return [
        sys.executable,
        "-m",
        "server",
        *argv,
        "--processes",
        str(processes),
        "--process-index",
        str(index),
        "--address",
        address,
        "--server-id",
        f"{server_id}-{index}",
        "--metrics-port",
        str(metrics_port),
    ]


def supervise(
    argv: Sequence[str],
    processes: int,
    address: str,
    checkpoint_dir: str | None,
    server_id: str,
    metrics_port: int | None,
) -> int:
    """Run ``processes`` server processes on ``address``; returns the exit code (the worst of theirs)."""
    if address.startswith("unix:"):
        raise SystemExit("--processes above 1 needs a HOST:PORT address: a Unix domain socket has one listener")
    if not checkpoint_dir:
        raise SystemExit("--processes above 1 needs --checkpoint-dir: the processes find each other's sessions there")
    host, port = address.rsplit(":", 1)
    if int(port) == 0:  # one port for all: chosen here (another program could take it before they bind)
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
            probe.bind((host.strip("[]"), 0))
            port = str(probe.getsockname()[1])
    address = f"{host}:{port}"
    ports = [-1 if metrics_port is None else metrics_port and metrics_port + i for i in range(processes)]
    children = [
        subprocess.Popen(child_command(argv, processes, i, address, server_id, ports[i])) for i in range(processes)
    ]
    names = ", ".join(f"{server_id}-{i}" for i in range(processes))
    log.info("%d server processes on %s: %s", processes, address, names)
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    codes: list[int] = []
    while len(codes) < len(children):
        for child in children:
            if child.returncode is None and _exited(child):
                codes.append(child.returncode)
                if not stopping:
                    log.error("server process %d exited with %d: stopping the others", child.pid, child.returncode)
                    stop(signal.SIGTERM, None)
    return max(codes, key=abs)


def _exited(child: subprocess.Popen) -> bool:
    try:
        child.wait(0.2)
    except subprocess.TimeoutExpired:
        return False
    return True
