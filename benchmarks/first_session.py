"""How long ``python -m server`` takes to become healthy, and its first CreateSession against the
next ones (a benchmark, not a test).

    .venv/bin/python benchmarks/first_session.py

The server runs in a child process (CPU, no checkpoints, no metrics); the network is
``Sequential(nn.Linear(1000), snn.LIF())`` on 100 inputs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from client.__main__ import health  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402


def main() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [sys.executable, "-m", "server", "--address", address, "--device", "cpu"]
    command += ["--checkpoint-dir", "", "--metrics-port", "-1", "--log-level", "WARNING"]
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        while health(address, "", 1.0) != "SERVING":
            if server.poll() is not None:
                raise SystemExit("the server exited")
            time.sleep(0.05)
        print(f"healthy after {time.perf_counter() - started:.2f} s")
        with Client(address) as c:
            for i in range(3):
                began = time.perf_counter()
                c.create_session(rb.Sequential(nn.Linear(1000), snn.LIF()), input_shape=(100,)).close()
                print(f"CreateSession {i + 1}: {(time.perf_counter() - began) * 1e3:.0f} ms")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
