"""Load on one server: many clients at once, each stepping its own session (a benchmark, not a test;
tests/e2e/test_load.py runs it and checks every output).

    .venv/bin/python benchmarks/load.py                       # 32 clients x 200 steps, in-process server
    .venv/bin/python benchmarks/load.py --mode stream         # the same over one Simulate stream each
    .venv/bin/python benchmarks/load.py --address HOST:PORT --clients 64 --steps 1000

Each client is a thread with its own connection (``client.Client``) and session of a small LIF
network (``Sequential(nn.Linear(32), snn.LIF(), nn.Linear(10), snn.LIF())``, 16 input features,
batch 1, seed = client index). The clients wait at a barrier after creating their sessions, then
each sends ``steps`` timesteps one at a time and times every round trip: ``Session.step`` (one unary
Run each) or, with ``--mode stream``, one Simulate stream per client that sends the next timestep as
soon as the previous one's output arrived. Printed: a markdown table of the round-trip latency
distribution (p50/p90/p99/max over all clients' steps), the errors and the throughput (timesteps
per second over all clients, from the barrier to the last reply).

Without ``--address`` the server runs in this process on 127.0.0.1 (``server.background``), as in
the test suite: client threads and server share one interpreter and its GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: client and server import

import numpy as np  # noqa: E402

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402

__all__ = ["INPUT_SHAPE", "ClientRun", "LoadResult", "client_inputs", "run_load", "small_lif"]

INPUT_SHAPE = (16,)


def small_lif() -> rb.Sequential:
    """The load's network: two LIF layers, 16 -> 32 -> 10."""
    return rb.Sequential(nn.Linear(32), snn.LIF(), nn.Linear(10), snn.LIF())


def client_inputs(seed: int, steps: int, batch_size: int = 1, input_shape=INPUT_SHAPE) -> np.ndarray:
    """Client ``seed``'s input, (steps, batch, *input_shape): currents strong enough to spike."""
    return np.random.default_rng(seed).random((steps, batch_size, *input_shape), dtype=np.float32) * 4


@dataclass
class ClientRun:
    """One client: its session's seed, what it sent and got, each step's round trip, and its error."""

    seed: int
    inputs: np.ndarray
    outputs: list[np.ndarray] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class LoadResult:
    """Every client's run, and the wall time from the barrier to the last reply."""

    runs: list[ClientRun]
    wall_s: float
    mode: str

    @property
    def latencies_s(self) -> np.ndarray:
        """Every step's round trip, all clients together, in seconds."""
        return np.array([t for run in self.runs for t in run.latencies_s])

    @property
    def errors(self) -> int:
        """The clients that failed (each stops at its first error)."""
        return sum(run.error is not None for run in self.runs)

    @property
    def steps_per_second(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> str:
        """The latency distribution and throughput as a markdown table."""
        lat = self.latencies_s * 1e3
        p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (np.nan,) * 3
        worst = lat.max() if lat.size else np.nan
        return "\n".join(
            [
                "| mode | clients | round trips | errors | p50 ms | p90 ms | p99 ms | max ms | steps/s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {self.mode} | {len(self.runs)} | {lat.size} | {self.errors} | {p50:.2f} | {p90:.2f} | {p99:.2f} "
                f"| {worst:.2f} | {self.steps_per_second:.0f} |",
            ]
        )


def run_load(
    address: str,
    clients: int = 32,
    steps: int = 200,
    mode: str = "step",
    network: Callable[[], rb.ModuleFactory] = small_lif,
    input_shape=INPUT_SHAPE,
    batch_size: int = 1,
    timeout_s: float = 300.0,
) -> LoadResult:
    """``clients`` threads, each with its own connection and session (seed = its index), send ``steps``
    timesteps one at a time (``mode``: ``"step"``, unary calls, or ``"stream"``, one Simulate stream)
    and time every round trip. Sessions are closed at the end."""
    if mode not in ("step", "stream"):
        raise ValueError(f"mode must be 'step' or 'stream', got {mode!r}")
    runs = [ClientRun(i, client_inputs(i, steps, batch_size, input_shape)) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)
    done = [0.0] * clients

    def work(i: int) -> None:
        run, waited = runs[i], False
        try:
            with Client(address) as c:
                session = c.create_session(network(), input_shape, batch_size=batch_size, seed=run.seed)
                try:
                    barrier.wait(timeout_s)
                    waited = True
                    (_steps if mode == "step" else _stream)(session, run)
                finally:
                    done[i] = time.perf_counter()
                    session.close()
        except threading.BrokenBarrierError:
            run.error = "another client failed before the start"
        except Exception as error:  # counted and reported; the other clients go on
            run.error = f"{type(error).__name__}: {error}"
            if not waited:
                barrier.abort()  # nobody waits for a client that won't come

    threads = [threading.Thread(target=work, args=(i,), name=f"load-client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: the others go on
        barrier.wait(timeout_s)
    started = time.perf_counter()
    for t in threads:
        t.join(timeout_s)
    finished = max([d for d in done if d] or [started])
    return LoadResult(runs, max(finished - started, 0.0), mode)


def _steps(session, run: ClientRun) -> None:
    for x_t in run.inputs:
        sent = time.perf_counter()
        out = session.step(x_t)
        run.latencies_s.append(time.perf_counter() - sent)
        run.outputs.append(out)


def _stream(session, run: ClientRun) -> None:
    """One stream in lockstep: each timestep goes once the previous one's output is back."""
    replied = threading.Semaphore(1)
    sent: list[float] = []

    def chunks():
        for x_t in run.inputs:
            replied.acquire()
            sent.append(time.perf_counter())
            yield x_t[None]

    try:
        for out in session.stream(chunks()):
            run.latencies_s.append(time.perf_counter() - sent[len(run.outputs)])
            run.outputs.append(out[0])
            replied.release()
    finally:
        replied.release()  # a stream that failed doesn't leave its request thread waiting


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="HOST:PORT of a running server (default: one in this process)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mode", choices=("step", "stream"), default="step")
    parser.add_argument("--device", default="cpu", help="the in-process server's device (default cpu)")
    parser.add_argument("--workers", type=int, default=8, help="the in-process server's worker threads")
    args = parser.parse_args(argv)

    def report(address: str) -> int:
        result = run_load(address, args.clients, args.steps, args.mode)
        print(result.table())
        for run in result.runs:
            if run.error:
                print(f"client {run.seed}: {run.error}", file=sys.stderr)
        return 1 if result.errors else 0

    if args.address:
        return report(args.address)
    from server import ServerConfig
    from server.background import running_server

    with running_server(ServerConfig(device=args.device, workers=args.workers)) as (address, _):
        return report(address)


if __name__ == "__main__":
    sys.exit(main())
