"""Checkpoint folder costs: what a session's checkpoint costs at creation, and what stored sessions
cost a server that starts or lists them (a benchmark, not a test).

    .venv/bin/python benchmarks/checkpoints.py                      # 20 sessions of Linear(2000) + LIF
    .venv/bin/python benchmarks/checkpoints.py --sessions 50 --neurons 1000

With a checkpoint folder a new session is written as it is made; the floor is the same create
without a folder. A server with stored sessions describes each from its checkpoint without reading
its tensors (``CheckpointStore.describe``); the floor it replaced is reading each whole
(``CheckpointStore.read``), as start-up did before. Both are timed in alternating rounds over the
same files (warm page cache: on a cold or network disk, reading whole costs more). Then the time
from a server's start to a listing of all the stored sessions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: client and server import

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402
from server import ServerConfig  # noqa: E402
from server.background import running_server  # noqa: E402
from server.checkpoints import CheckpointStore  # noqa: E402


def config(folder: str | None) -> ServerConfig:
    return ServerConfig(device="cpu", checkpoint_dir=folder, checkpoint_interval_s=3600)


def creates(folder: str | None, neurons: int, count: int) -> list[float]:
    """Seconds per CreateSession of ``Sequential(nn.Linear(neurons), snn.LIF())``, after 3 warm-ups."""
    network = rb.Sequential(nn.Linear(neurons), snn.LIF())
    times = []
    with running_server(config(folder)) as (address, _), Client(address) as client:
        for _ in range(count + 3):
            started = time.perf_counter()
            client.create_session(network, input_shape=(neurons,))
            times.append(time.perf_counter() - started)
    return times[3:]


def reads(store: CheckpointStore, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds to describe every stored session, and to read every one whole, in alternating rounds."""
    index = [key for key, _ in store.index()]
    described, whole = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        assert all(store.describe(*key) for key in index)
        described.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert all(store.read(*key) for key in index)
        whole.append(time.perf_counter() - started)
    return described, whole


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="stored sessions")
    parser.add_argument("--neurons", type=int, default=2000, help="N of each session's Linear(N) + LIF on N inputs")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of describing and reading")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="rnnsim-bench-")
    with_folder = creates(folder, args.neurons, args.sessions)
    without = creates(None, args.neurons, args.sessions)
    files = list(Path(folder).glob("*.snapshot"))
    size = sum(f.stat().st_size for f in files) / len(files)
    described, whole = reads(CheckpointStore(folder), args.rounds)
    started = time.perf_counter()
    with running_server(config(folder)) as (address, _), Client(address) as client:
        listed = len(client.list_sessions())
        to_listing = time.perf_counter() - started

    def ms(seconds: list[float]) -> str:
        return f"{1e3 * statistics.median(seconds):,.1f} ms"

    params = args.neurons * args.neurons + args.neurons
    print(f"### Checkpoint folder: {len(files)} sessions of {params:,} parameters, {size / 2**20:.1f} MiB each\n")
    print("| what | this | floor | ratio |")
    print("|---|---|---|---|")
    print(
        f"| create a session (p50) | {ms(with_folder)} (written at once) | {ms(without)} (no folder) "
        f"| {statistics.median(with_folder) / statistics.median(without):.2f}× |"
    )
    print(
        f"| describe all stored sessions (median of {args.rounds}) | {ms(described)} | {ms(whole)} (read whole) "
        f"| {statistics.median(whole) / statistics.median(described):.0f}× faster |"
    )
    print(f"| server start to a listing of all {listed} | {1e3 * to_listing:,.0f} ms | | |")
    if listed != len(files):
        raise SystemExit(f"listed {listed} sessions, but {len(files)} are stored")


if __name__ == "__main__":
    main()
