"""Training through the service against the same training done locally, side by side (a benchmark, not a test).

    .venv/bin/python benchmarks/training.py --quick     # about 20 s on a laptop CPU
    .venv/bin/python benchmarks/training.py             # tighter numbers, about a minute
    .venv/bin/python benchmarks/training.py --address HOST:PORT --device cpu   # an external server

The network and data of the digits example (``examples/train_digits.py``):
``Sequential(nn.Linear(128), snn.LIF(), nn.Linear(10), snn.LIF())`` on 64 input channels, T = 25
timesteps, 1,347 training sequences (the digits' 75 % split) of Bernoulli spikes, cross-entropy on
the output spike counts, Adam (lr 2e-3), batches of 64. Synthetic spikes of that size stand in for
the digits: the work doesn't depend on the values.

- ``fit``: one ``Session.fit`` call of 1 epoch, and one of ``--epochs`` (5) epochs (the dataset
  goes up once per call, as it does for a user), against the same epochs locally: the same batches
  (a fresh ``randperm`` per epoch), forward, loss, ``backward``, ``Adam.step`` and ``loss.item()``
  per batch on the session's own network rebuilt here (``Session.to_local()``), with the dataset
  already a tensor on the device.
- ``train_step``: ``--steps`` ``Session.train_step`` calls on a batch of 64, against as many local
  steps on the same batch; the overhead per call is the difference.

Service and local runs alternate, repeat by repeat, so that drift on the machine hits both alike;
the tables give medians. The goal is a service time of at most 1.2x the local time. With the server
in this process, the last column compares CPU time (client, server and gRPC threads together),
which other load on a shared machine disturbs less than wall time; ``--threads 1`` steadies the
numbers further on a busy machine with few cores.

The server runs in this process on 127.0.0.1 (port 0, an event loop in a background thread, as in
``server.background``): client, server and the local baseline share one interpreter and its
torch threads. ``--address`` targets an external server instead; ``--device`` must then name the
device that server trains on, so that the local baseline runs on the same one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: client, server and tests import

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from neurons import cpu_name  # noqa: E402 (this folder is on the path of a script run from it)

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402

SAMPLES = 1347  # the digits' training split
TIMESTEPS = 25
FEATURES = 64
CLASSES = 10
BATCH = 64
LR = 2e-3
GOAL = 1.2


def build_network() -> rb.Sequential:
    return rb.Sequential(nn.Linear(128), snn.LIF(), nn.Linear(CLASSES), snn.LIF())


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (samples, time, features) of 0/1 spikes, each channel at its own rate; labels (samples,)."""
    rng = np.random.default_rng(seed)
    rates = rng.random((SAMPLES, 1, FEATURES), dtype=np.float32) ** 2
    x = (rng.random((SAMPLES, TIMESTEPS, FEATURES), dtype=np.float32) < rates).astype(np.float32)
    return x, rng.integers(0, CLASSES, SAMPLES)


@contextmanager
def simulation_server(address: str | None, device: str):
    """The address of an external server, or of one started in this process."""
    if address:
        yield address
        return
    from server import ServerConfig
    from server.background import running_server

    with running_server(ServerConfig(device=device, workers=4)) as (local, _):
        yield local


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Local:
    """The same training in this process: the session's network, plain torch, Adam."""

    def __init__(self, model: rb.Model, x: np.ndarray, y: np.ndarray, device: torch.device, seed: int):
        self.device = device
        self.model = model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.x = torch.from_numpy(x).transpose(0, 1).contiguous().to(device)  # (time, samples, features)
        self.y = torch.from_numpy(y).long().to(device)
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        out, _ = self.model(x)
        loss = F.cross_entropy(out.sum(0), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def fit(self, epochs: int) -> None:
        for _ in range(epochs):
            for index in torch.randperm(SAMPLES, generator=self.generator).to(self.device).split(BATCH):
                self.step(self.x[:, index], self.y[index])
        _sync(self.device)


@dataclass
class Scenario:
    name: str
    samples: int  # per run
    batches: int  # optimizer steps per run
    local: Callable[[], None]
    service: Callable[[], None]
    wall: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "service": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "service": []})

    def run(self, where: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        (self.local if where == "local" else self.service)()
        self.wall[where].append(time.perf_counter() - wall)
        self.cpu[where].append(time.process_time() - cpu)

    def median(self, where: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[where])


def measure(address: str, device: torch.device, repeats: int, epochs: int, steps: int, seed: int):
    """The scenarios, each run ``repeats`` times locally and through the service, alternating."""
    x, y = make_data(seed)
    batch_x = np.ascontiguousarray(x[:BATCH].transpose(1, 0, 2))  # (time, batch, features)
    batch_y = y[:BATCH]
    per_epoch = -(-SAMPLES // BATCH)
    with Client(address) as client:
        info = client.info()
        session = client.create_session(build_network(), input_shape=(FEATURES,), batch_size=BATCH, seed=seed)
        try:
            local = Local(session.to_local(), x, y, device, seed)
            local_batch = (torch.from_numpy(batch_x).to(device), torch.from_numpy(batch_y).long().to(device))

            def fit(n):
                return lambda: session.fit(x, y, epochs=n, batch_size=BATCH, loss="ce_count", optimizer="adam", lr=LR)

            def steps_service():
                for _ in range(steps):
                    session.train_step(batch_x, batch_y, loss="ce_count", optimizer="adam", lr=LR)

            def steps_local():
                for _ in range(steps):
                    local.step(*local_batch)
                _sync(device)

            scenarios = [
                Scenario("`fit`, 1 epoch per call", SAMPLES, per_epoch, lambda: local.fit(1), fit(1)),
                Scenario(
                    f"`fit`, {epochs} epochs per call",
                    SAMPLES * epochs,
                    per_epoch * epochs,
                    lambda: local.fit(epochs),
                    fit(epochs),
                ),
                Scenario(f"`train_step` x {steps}", BATCH * steps, steps, steps_local, steps_service),
            ]
            for scenario in scenarios:  # warm-up: optimizers, caches, connections
                scenario.local(), scenario.service()
            for r in range(repeats):
                for scenario in scenarios:
                    for where in ("local", "service") if r % 2 == 0 else ("service", "local"):
                        scenario.run(where)
        finally:
            session.close()
    return info.device, scenarios


def report(server_device: str, scenarios: list[Scenario], args, device: torch.device, where: str) -> str:
    cpu_note = not args.address  # in-process: the process's CPU time is client plus server
    header = "| scenario | local samples/s | service samples/s | service / local time | goal <= 1.2x |"
    rule = "| --- | ---: | ---: | ---: | --- |"
    if cpu_note:
        header, rule = header + " service / local CPU time |", rule + " ---: |"
    rows = []
    for s in scenarios:
        local, service = s.median("local"), s.median("service")
        ratio = service / local
        row = f"| {s.name} | {s.samples / local:,.0f} | {s.samples / service:,.0f} | {ratio:.2f}x | "
        row += "met |" if ratio <= GOAL else "missed |"
        if cpu_note:
            row += f" {s.median('service', True) / s.median('local', True):.2f}x |"
        rows.append(row)
    fit, step = scenarios[1], scenarios[2]
    per_step = [
        "| per optimizer step (batch 64) | local | service | overhead |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, s in (("`train_step` call", step), (f"a batch in a {args.epochs}-epoch `fit`", fit)):
        local_ms, service_ms = s.median("local") / s.batches * 1e3, s.median("service") / s.batches * 1e3
        per_step.append(f"| {label} | {local_ms:.2f} ms | {service_ms:.2f} ms | {service_ms - local_ms:+.2f} ms |")
    lines = [
        f"## Training through the service vs locally ({args.repeats} interleaved repeats, medians)",
        "",
        *machine_info(device, server_device, where),
        "",
        header,
        rule,
        *rows,
        "",
        *per_step,
    ]
    return "\n".join(lines)


def machine_info(device: torch.device, server_device: str, where: str) -> list[str]:
    cpu = cpu_name()
    if device.type == "cuda":
        cpu += f"; GPU {torch.cuda.get_device_name(device)}"
    return [
        f"- machine: {cpu}; {os.cpu_count()} CPUs; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op "
        f"threads), grpcio {grpc.__version__}",
        f"- server: {where}, training on {server_device}; local baseline on {device}",
        f"- network: Sequential(nn.Linear(128), snn.LIF(), nn.Linear(10), snn.LIF()), {FEATURES} inputs, "
        f"T={TIMESTEPS}, {SAMPLES:,} samples, batch {BATCH}, Adam lr {LR}, loss ce_count",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--address", help="an external server (HOST:PORT) instead of one in this process")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (the server's and the local)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 15, --quick 5)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per call in the longer fit scenario")
    parser.add_argument("--steps", type=int, help="train_step calls per repeat (default 40, --quick 20)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.steps = args.steps or (20 if args.quick else 40)

    if args.threads:
        torch.set_num_threads(args.threads)  # every thread's, the in-process server's workers included
    from server.config import resolve_device

    device = resolve_device(args.device)
    where = f"external at {args.address}" if args.address else "in this process (127.0.0.1, port 0)"
    with simulation_server(args.address, str(device)) as address:
        server_device, scenarios = measure(address, device, args.repeats, args.epochs, args.steps, args.seed)
    table = report(server_device, scenarios, args, device, where)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
