"""Unix domain sockets against TCP loopback, side by side in one run (a benchmark, not a test).

    .venv/bin/python benchmarks/transport.py --quick      # about a minute

A client on the server's own host (a closed-loop rig next to the GPU server) can reach it over
``unix:/path`` instead of ``127.0.0.1:PORT``. For each transport, the simulation server and the raw
bytes echo of ``benchmarks/serving.py`` (the floor: the same message sizes, no protobuf, no torch)
run in child processes listening there; the client is this process. Measured: ``step`` latency
(p50, one session: ``Session.step`` of one timestep of the 1,000-neuron LIF network) and pipelined
``stream`` throughput of one-timestep chunks, each against the echo over the same transport. The
transports alternate in rounds, so that drift on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from serving import BATCH, FEATURES, NEURONS, Bench, _percentile_us, child_server

import rnnbuilder as rb
from rnnbuilder import nn, snn


@contextlib.contextmanager
def servers(transport: str, folder: Path):
    """The simulation server and the echo in child processes on ``transport``; yields a ``Bench``."""
    listen = {"tcp": ("127.0.0.1:0",) * 2, "unix": (f"unix:{folder}/sim.sock", f"unix:{folder}/echo.sock")}
    sim_at, echo_at = listen[transport]
    inputs = np.random.default_rng(0).random((200, BATCH, FEATURES), dtype=np.float32) * np.float32(0.2)
    with child_server("sim", "cpu", 8, sim_at) as sim, child_server("echo", "cpu", 1, echo_at) as echo:
        bench = Bench(sim, echo, inputs, rb.Sequential(nn.Linear(NEURONS), snn.LIF()))
        try:
            yield bench
        finally:
            bench.close()


def measure(bench: Bench, steps: int, chunks: int) -> dict[str, float]:
    """One round: step p50 (µs) and stream messages/s, ours and the echo's."""
    ours_step = bench.step(0, steps // 5, steps)()
    echo_step = bench.echo_unary(0, steps // 5, steps)()
    ours_stream = bench.stream(0, 1, chunks // 5, chunks)()
    echo_stream = bench.echo_stream(0, 1, chunks // 5, chunks)()
    return {
        "step p50 µs": _percentile_us(ours_step.latencies_ns, 50),
        "echo p50 µs": _percentile_us(echo_step.latencies_ns, 50),
        "stream msgs/s": ours_stream.messages / ours_stream.seconds,
        "echo stream msgs/s": echo_stream.messages / echo_stream.seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two transports")
    args = parser.parse_args(argv)
    steps, chunks = (1000, 2000) if args.quick else (3000, 6000)
    results: dict[str, list[dict[str, float]]] = {"tcp": [], "unix": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for transport in results:
                with servers(transport, Path(folder)) as bench:
                    results[transport].append(measure(bench, steps, chunks))
    median = {t: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for t, rs in results.items()}
    print(f"torch {torch.__version__}, {args.rounds} rounds, medians; servers in child processes, client here\n")
    print("| measure | TCP loopback | Unix socket | Unix / TCP |")
    print("| --- | ---: | ---: | ---: |")
    for key in median["tcp"]:
        tcp, unix = median["tcp"][key], median["unix"][key]
        print(f"| {key} | {tcp:,.0f} | {unix:,.0f} | {unix / tcp:.2f}× |")
    for transport, m in median.items():
        print(
            f"\n{transport}: step {m['step p50 µs'] / m['echo p50 µs']:.2f}× the echo's p50; "
            f"stream {m['stream msgs/s'] / m['echo stream msgs/s']:.2f}× the echo's rate"
        )


if __name__ == "__main__":
    main()
