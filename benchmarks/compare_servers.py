"""The same client against the servers of two checkouts, side by side (a benchmark, not a test).

    git worktree add /tmp/before 2ece50c
    .venv/bin/python benchmarks/compare_servers.py /tmp/before . --rounds 4

Each checkout's server runs in a child process (CPU, ``--torch-threads 1``, no checkpoints); the
client is this checkout's. In every round each server in turn gets a fresh session of
``Sequential(nn.Linear(1000), snn.LIF())`` (100 inputs, batch 1) and measures: a stream of 1,500
single timesteps sent at once (pipelined), a closed-loop stream (one timestep in flight, 2 s) and
``step`` latency (2 s). Medians over the rounds; the servers alternate, so drift hits both.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402

_SERVE = """
import asyncio, sys
sys.path.insert(0, {root!r})
import torch
from server import ServerConfig, create_server
torch.set_num_threads(1)
async def main():
    server, port = create_server("127.0.0.1:0", ServerConfig(device="cpu"))
    await server.start()
    print(f"listening 127.0.0.1:{{port}}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(1.0)
asyncio.run(main())
"""


def _start(root: Path) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVE.format(root=str(root))],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = child.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"the server of {root} did not start")
    return child, line.split()[1]


def _fed(chunks: queue.Queue):
    """The chunks put in ``chunks``, until None."""
    while (chunk := chunks.get()) is not None:
        yield chunk


def _measure(address: str, x: np.ndarray) -> tuple[float, float, float]:
    """(pipelined timesteps/s, closed-loop timesteps/s, step p50 µs) of one fresh session."""
    with Client(address) as c:
        session = c.create_session(rb.Sequential(nn.Linear(1000), snn.LIF()), input_shape=(100,), batch_size=1)
        for _ in range(50):
            session.step(x[0])
        sent, started = 1500, time.perf_counter()
        for _ in session.stream(x for _ in range(sent)):
            pass
        pipelined = sent / (time.perf_counter() - started)
        chunks: queue.Queue = queue.Queue(maxsize=1)
        replies = session.stream(_fed(chunks))
        chunks.put(x)
        next(replies)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2:
            chunks.put(x)
            next(replies)
            count += 1
        closed = count / (time.perf_counter() - started)
        chunks.put(None)
        for _ in replies:
            pass
        latencies, started = [], time.perf_counter()
        while time.perf_counter() - started < 2:
            begin = time.perf_counter_ns()
            session.step(x[0])
            latencies.append(time.perf_counter_ns() - begin)
        session.close()
    return pipelined, closed, float(np.percentile(latencies, 50)) / 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs=2, type=Path, help="the two source trees, before and after")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    x = np.random.default_rng(0).random((1, 1, 100), dtype=np.float32)
    servers = [_start(root.resolve()) for root in args.checkouts]
    results: list[list[tuple[float, float, float]]] = [[] for _ in servers]
    try:
        for _ in range(args.rounds):
            for i, (_, address) in enumerate(servers):
                results[i].append(_measure(address, x))
    finally:
        for child, _ in servers:
            child.stdin.close()
            child.wait(30)
    print("| checkout | pipelined stream, timesteps/s | closed-loop stream, timesteps/s | step p50, µs |")
    print("| --- | ---: | ---: | ---: |")
    for root, runs in zip(args.checkouts, results, strict=True):
        pipelined, closed, step = (float(np.median(column)) for column in zip(*runs, strict=True))
        print(f"| {root} | {pipelined:,.0f} | {closed:,.0f} | {step:,.0f} |")


if __name__ == "__main__":
    main()
