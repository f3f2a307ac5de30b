"""Fair sharing of one device: a streaming session's step latency while another tenant trains
(a benchmark, not a test).

    .venv/bin/python benchmarks/fairness.py --quick     # about a minute
    .venv/bin/python benchmarks/fairness.py             # tighter numbers

Two tenants on one server (a child process, ``python -m server``, as deployed):

- ``streamer`` steps a small LIF session (``Sequential(nn.Linear(100), snn.LIF())``, 20 inputs,
  batch 1) one timestep per call, and we time each call;
- ``trainer`` runs ``Session.fit`` without pause (``Linear(256), LIF, Linear(10), LIF`` on 64
  inputs, T=25, batches of 32), and in the heaviest case also keeps 4 long ``run`` calls of a
  recurrent network in flight: a backlog.

Each server is measured alone first, then with the trainer, then with trainer and backlog. The
fair scheduler (the default) is set against FIFO order with the same slots, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from client.__main__ import health  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402
from tests.helpers import recurrent_net  # noqa: E402

AUTH = """
[tenants.streamer]
token = "streamer-secret-token"

[tenants.trainer]
token = "trainer-secret-token"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(auth: Path, workers: int, scheduling: str, threads: int):
    """``python -m server`` in a child process; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    flags = ["--workers", str(workers), "--scheduling", scheduling, "--torch-threads", str(threads)]
    flags += ["--auth-file", str(auth), "--checkpoint-dir", "", "--metrics-port", "-1", "--log-level", "WARNING"]
    child = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", address, "--device", "cpu", *flags], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while health(address, "", 1.0) != "SERVING":
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield address
    finally:
        child.terminate()
        child.wait(60)


def steps(address: str, count: int) -> np.ndarray:
    """Milliseconds of each of ``count`` single-timestep calls of the streamer."""
    with Client(address, token="streamer-secret-token") as c:
        session = c.create_session(rb.Sequential(nn.Linear(100), snn.LIF()), input_shape=(20,))
        x = np.ones((1, 20), np.float32)
        for _ in range(20):
            session.step(x)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            session.step(x)
            times.append((time.perf_counter() - started) * 1e3)
        session.close()
    return np.array(times)


@contextlib.contextmanager
def trainer(address: str, backlog: int):
    """The other tenant: fit without pause, and ``backlog`` long runs always in flight."""
    stop = threading.Event()
    rng = np.random.default_rng(0)
    x = (rng.random((256, 25, 64)) < 0.2).astype(np.float32)
    y = rng.integers(0, 10, 256)

    def train():
        with Client(address, token="trainer-secret-token") as c:
            session = c.create_session(
                rb.Sequential(nn.Linear(256), snn.LIF(), nn.Linear(10), snn.LIF()), input_shape=(64,), batch_size=32
            )
            while not stop.is_set():
                session.fit(x, y, epochs=1, batch_size=32, progress=False, on_batch=lambda _: not stop.is_set())

    def flood():
        with Client(address, token="trainer-secret-token") as c:
            session = c.create_session(recurrent_net(256), input_shape=(3,), batch_size=16)
            while not stop.is_set():
                session.run(np.ones((200, 16, 3), np.float32))

    threads = [threading.Thread(target=train)] + [threading.Thread(target=flood) for _ in range(backlog)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # let training get going
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--workers", type=int, default=2, help="scheduler slots of the servers compared")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    count = 150 if args.quick else 600
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        auth = Path(folder) / "auth.toml"
        auth.write_text(AUTH)
        for scheduling in ("fair", "fifo"):
            with server(auth, args.workers, scheduling, args.torch_threads) as address:
                alone = steps(address, count)
                for label, backlog in (("while another tenant trains", 0), ("... and keeps 4 long runs queued", 4)):
                    with trainer(address, backlog):
                        loaded = steps(address, count)
                    rows.append((scheduling, label, alone, loaded))
    print(f"\nstep latency of a streaming session, {count} steps, {args.workers} slots, CPU, {os.cpu_count()} cores\n")
    print("| scheduler | condition | alone p50 / p99 (ms) | loaded p50 / p99 (ms) | p50 ratio | p99 ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for scheduling, label, alone, loaded in rows:
        a50, a99, l50, l99 = (float(np.percentile(t, q)) for t in (alone, loaded) for q in (50, 99))
        print(
            f"| {scheduling} | {label} | {a50:.2f} / {a99:.2f} | {l50:.2f} / {l99:.2f} "
            f"| {l50 / a50:.1f}x | {l99 / a99:.1f}x |"
        )


if __name__ == "__main__":
    main()
