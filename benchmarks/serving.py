"""The serving path against the transport floor, side by side in one run (a benchmark, not a test).

    .venv/bin/python benchmarks/serving.py --quick      # about 30 s
    .venv/bin/python benchmarks/serving.py              # a few minutes, tighter numbers
    .venv/bin/python benchmarks/serving.py --closed-loop --quick   # closed-loop users, 1-2 minutes

The floor is a raw grpcio echo: generic bytes handlers (no protobuf, no torch) on a grpc.aio
server in a background event loop, driven by the same synchronous grpcio client the ``client``
package uses, with requests and replies of exactly the serialized sizes of the real messages. The
serving path is the real thing: ``client.Client`` and ``Session.step`` / ``Session.stream``
against ``server.create_server``, with a 1,000-neuron LIF network at batch 1
(``Sequential(nn.Linear(1000), snn.LIF())``, 100 input features).

Scenarios, each with 1 session and with 16 concurrent ones (16 threads, each with its own client,
session and echo channel): ``step`` round-trip latency p50/p99 against unary echo, and pipelined
``stream`` throughput with chunks of 1 and of 100 timesteps against the echo stream's messages/s.
Floor and serving path alternate in rounds so that drift on the machine hits both alike. The
model's forward alone, in this process with no server, is reported too: the compute part.

Where the servers run:

- by default both in this process on 127.0.0.1 (port 0), each in a background event loop, as in
  the test suite (``server.background.running_server``): client and servers share one Python
  interpreter and its GIL, which slows the busier serving path more than the echo;
- ``--processes``: each in a child process (this script with ``--serve``), as deployed;
- ``--address HOST:PORT``: an external simulation server; the echo then runs in a child process.

``--batching on|off`` sets the cross-session batching of a simulation server started here.

``--closed-loop`` runs, instead, a scenario set of its own: K closed-loop users (``--users``, default
1,8,32,64), each with its own client sending one timestep over one bidirectional stream and waiting
for the reply before sending the next, spread over client processes (``--client-processes``), for
a fixed window (``--seconds``), against three child-process servers alternating in rounds: the raw
echo (K streams, the Simulate messages' sizes, with the faster of a sync and a grpc.aio client),
ours with batching on and ours with batching off. ``--server-processes N`` (N > 1) adds a fourth,
in the same rounds and tables ("off, N processes"): ours with batching off as deployed on several
cores, ``python -m server --processes N`` (a supervisor starting N server processes on one port
with SO_REUSEPORT, each client connection, so each user's sessions, going to one of them, and a
temporary checkpoint folder), started and stopped (SIGTERM) here; its CPU is the sum over its N
server processes (the supervisor only waits).

    .venv/bin/python benchmarks/serving.py --closed-loop --quick --server-processes 2 --users 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: client, server and tests import

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from neurons import cpu_name  # noqa: E402 (this folder is on the path of a script run from it)

import rnnbuilder as rb  # noqa: E402
from client import Client  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402
from rnnbuilder_sim.v1 import simulator_pb2 as pb  # noqa: E402
from rnnbuilder_sim.wire import tensors  # noqa: E402
from server.background import in_background, listening_address  # noqa: E402

NEURONS = 1000
FEATURES = 100
BATCH = 1
CONCURRENT = 16
# The client's channel options (client/_client.py), so the echo channels behave the same way.
_MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
ECHO_SERVICE = "rnnsim.bench.Echo"


# -- the floor: a raw bytes echo ------------------------------------------------------------------


def _reply_for(request: bytes, _cache: dict[int, bytes] = {}) -> bytes:  # noqa: B006 (a deliberate cache)
    """The reply to an echo request: the first 4 bytes name the reply's size (the real reply's)."""
    size = struct.unpack_from("<I", request)[0]
    reply = _cache.get(size)
    if reply is None:
        reply = _cache[size] = bytes(size)
    return reply


async def _echo_unary(request: bytes, context) -> bytes:
    return _reply_for(request)


async def _echo_stream(request_iterator, context):
    async for request in request_iterator:
        yield _reply_for(request)


def _echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_echo_unary),
            "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )


def echo_payload(request_size: int, reply_size: int) -> bytes:
    """An echo request of ``request_size`` bytes whose reply has ``reply_size`` bytes."""
    return struct.pack("<I", reply_size) + bytes(max(0, request_size - 4))


@contextmanager
def running_echo_server():
    """A grpc.aio server with the bytes echo on 127.0.0.1:0 in a background event loop; yields its address."""

    async def start():
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers((_echo_handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    with in_background(start, "echo server") as (address, _):
        yield address


def _serve_forever(
    kind: str, device: str, workers: int, listen: str, batching: bool = True, max_sessions: int | None = None
) -> None:
    """The child-process mode (``--serve``): start one server on ``listen`` (127.0.0.1:0, or a
    ``unix:/path`` socket), print where it listens, and serve until stdin closes. ``batching`` and
    ``max_sessions`` (None: the default limit) set the simulation server's ``ServerConfig``."""

    async def serve():
        if kind == "echo":
            server = grpc.aio.server(options=CHANNEL_OPTIONS)
            server.add_generic_rpc_handlers((_echo_handler(),))
            port = server.add_insecure_port(listen)
            await server.start()
            stop = server.stop
        else:
            from server import ServerConfig, create_server
            from server.config import Limits

            limits = Limits() if max_sessions is None else Limits(max_sessions=max_sessions)
            config = ServerConfig(device=device, workers=workers, limits=limits, batching=batching)
            sim, port = create_server(listen, config)
            await sim.start()
            stop = sim.stop
        print(f"listening {listening_address(listen, port)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
        await stop(1.0)

    asyncio.run(serve())


@contextmanager
def child_server(
    kind: str,
    device: str,
    workers: int,
    listen: str = "127.0.0.1:0",
    batching: bool = True,
    max_sessions: int | None = None,
):
    """A server of ``kind`` (``echo`` or ``sim``) in a child process on ``listen``; yields its address."""
    with child_server_process(kind, device, workers, listen, batching, max_sessions) as (address, _):
        yield address


@contextmanager
def child_server_process(
    kind: str,
    device: str,
    workers: int,
    listen: str = "127.0.0.1:0",
    batching: bool = True,
    max_sessions: int | None = None,
):
    """Like ``child_server``; yields ``(address, pid)`` (the pid for its CPU time). The child exits
    when its stdin closes, here on leaving (killed if it takes over 30 s)."""
    command = [sys.executable, __file__, "--serve", kind, "--device", device, "--workers", str(workers)]
    command += ["--torch-threads", str(torch.get_num_threads()), "--listen", listen]
    command += ["--batching", "on" if batching else "off"]
    if max_sessions is not None:
        command += ["--max-sessions", str(max_sessions)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"the {kind} server process did not start (it said {line!r})")
        yield line.split(maxsplit=1)[1].strip(), child.pid
    finally:
        child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def free_port() -> int:
    """A port free on 127.0.0.1 now (as ``tests/e2e/test_server_process.py`` picks them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc: its threads' ``children`` lists, else a scan of
    every process's parent)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        found = []
    if found:
        return sorted(set(found))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(found)


@contextmanager
def server_processes_process(
    processes: int,
    device: str,
    workers: int,
    checkpoint_dir: str,
    batching: bool = False,
    max_sessions: int | None = None,
    timeout: float = 120.0,
):
    """``python -m server --processes N`` on 127.0.0.1 at a free port, with ``checkpoint_dir``, as
    deployed; yields ``(address, pids)``: the pids of its N server processes (the supervisor's
    children: the supervisor itself only waits), once each has logged "serving on". On leaving, the
    supervisor gets SIGTERM, which it passes on, and is waited for (killed, with them, after 60 s)."""
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "server", "--processes", str(processes), "--address", address]
    command += ["--checkpoint-dir", checkpoint_dir, "--device", device, "--batching", "on" if batching else "off"]
    command += ["--checkpoint-interval", "3600"]  # the other servers write no periodic checkpoints either
    command += ["--metrics-port", "-1", "--workers", str(workers), "--torch-threads", str(torch.get_num_threads())]
    if max_sessions is not None:
        command += ["--max-sessions", str(max_sessions)]
    command += ["--log-format", "text", "--log-level", "INFO"]
    supervisor = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.SimpleQueue = queue.SimpleQueue()
    tail: deque[str] = deque(maxlen=20)  # the last lines the processes logged, for errors

    def drain() -> None:  # always read their output, so that no process blocks on a full pipe
        for line in supervisor.stdout:
            tail.append(line.rstrip())
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name="server-processes-log", daemon=True).start()
    pids: list[int] = []
    try:
        ready, deadline = 0, time.monotonic() + timeout
        while ready < processes:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if not line:
                said = "\n".join(tail)
                why = "exited" if line is None else f"did not log 'serving on' {processes} times in {timeout:.0f} s"
                raise RuntimeError(f"the server with --processes {processes} {why}; it said:\n{said}")
            ready += "serving on" in line
        pids = _children(supervisor.pid)
        if len(pids) != processes:
            raise RuntimeError(f"the supervisor {supervisor.pid} has {len(pids)} child processes, not {processes}")
        yield address, pids
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
        try:
            code = supervisor.wait(60)
            if code:
                said = "\n".join(tail)
                print(f"the server with --processes {processes} exited with {code}:\n{said}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            for pid in pids or _children(supervisor.pid):
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            supervisor.kill()
            supervisor.wait()


@contextmanager
def echo_server(in_process: bool):
    if in_process:
        with running_echo_server() as address:
            yield address
    else:
        with child_server("echo", "cpu", 1) as address:
            yield address


@contextmanager
def simulation_server(address: str | None, in_process: bool, device: str, workers: int, batching: bool = True):
    """Yields the address of the simulation server: an external one, one in a child process, or
    one started in this process (``server.background.running_server``)."""
    if address:
        yield address
    elif not in_process:
        with child_server("sim", device, workers, batching=batching) as child:
            yield child
    else:
        from server import ServerConfig
        from server.background import running_server

        with running_server(ServerConfig(device=device, workers=workers, batching=batching)) as (local, _):
            yield local


# -- measurements ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """What one scenario run measured: latencies (ns) of unary calls and/or messages over time."""

    latencies_ns: list[int]
    messages: int
    seconds: float


def _run_threads(count: int, prepare: Callable[[int], Callable[[], Sample]]) -> Sample:
    """Run ``count`` workers at once (``prepare(i)`` builds each one's job outside the timing);
    the aggregate throughput is all messages over the time from the common start to the last end."""
    jobs = [prepare(i) for i in range(count)]
    if count == 1:
        return jobs[0]()
    barrier = threading.Barrier(count + 1)
    results: list[Sample | None] = [None] * count
    errors: list[BaseException] = []

    def work(i):
        try:
            barrier.wait()
            results[i] = jobs[i]()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    latencies = [ns for result in results for ns in result.latencies_ns]
    return Sample(latencies, sum(result.messages for result in results), seconds)


def _unary_job(call: Callable[[int], object], warmup: int, count: int) -> Callable[[], Sample]:
    def job() -> Sample:
        for i in range(warmup):
            call(i)
        latencies = []
        clock = time.perf_counter_ns
        start = clock()
        for i in range(count):
            t0 = clock()
            call(i)
            latencies.append(clock() - t0)
        return Sample(latencies, count, (clock() - start) / 1e9)

    return job


def _stream_job(open_stream: Callable[[Callable[[], object]], object], items: list, warmup: int, count: int):
    """Pipelined: the request iterator runs ahead (gRPC's flow control bounds it); replies are counted."""

    def job() -> Sample:
        for _ in open_stream(lambda: (items[i % len(items)] for i in range(warmup))):
            pass
        received = 0
        start = time.perf_counter()
        for _ in open_stream(lambda: (items[i % len(items)] for i in range(count))):
            received += 1
        seconds = time.perf_counter() - start
        if received != count:
            raise RuntimeError(f"stream returned {received} replies for {count} requests")
        return Sample([], count, seconds)

    return job


class Bench:
    """Holds the two servers' addresses and builds jobs for the floor and for the serving path."""

    def __init__(self, sim_address: str, echo_address: str, inputs: np.ndarray, net):
        self.sim_address, self.echo_address = sim_address, echo_address
        self.inputs = inputs  # (pool, batch, features) float32, cycled through
        self.net = net
        self._sessions: list = []  # (client, session), created once and reused across rounds
        self._echo_channels: list[grpc.Channel] = []

    def close(self) -> None:
        for client, session in self._sessions:
            session.close()
            client.close()
        for channel in self._echo_channels:
            channel.close()

    def session(self, i: int):
        while len(self._sessions) <= i:
            client = Client(self.sim_address)
            self._sessions.append((client, client.create_session(self.net, (FEATURES,), batch_size=BATCH, seed=0)))
        return self._sessions[i][1]

    def echo_channel(self, i: int) -> grpc.Channel:
        while len(self._echo_channels) <= i:
            channel = grpc.insecure_channel(self.echo_address, CHANNEL_OPTIONS)
            grpc.channel_ready_future(channel).result(timeout=10)
            self._echo_channels.append(channel)
        return self._echo_channels[i]

    def step_sizes(self) -> tuple[int, int]:
        """Serialized sizes of the real request and reply of one ``step`` (a Run of one timestep)."""
        session = self.session(0)
        out = np.zeros((1, BATCH, *session.output_shape), np.float32)
        raw = pb.TENSOR_ENCODING_RAW
        request = pb.RunRequest(name=session.name, input=tensors.encode(self.inputs[:1]), output_encoding=raw)
        return request.ByteSize(), pb.RunResponse(output=tensors.encode(out)).ByteSize()

    def stream_sizes(self, timesteps: int) -> tuple[int, int]:
        """Serialized sizes of the real Simulate request and reply for a chunk of ``timesteps``."""
        session = self.session(0)
        x = self.inputs[:timesteps]
        out = np.zeros((timesteps, BATCH, *session.output_shape), np.float32)
        raw = pb.TENSOR_ENCODING_RAW
        request = pb.SimulateRequest(name=session.name, input=tensors.encode(x), output_encoding=raw)
        reply = pb.SimulateResponse(output=tensors.encode(out), first_timestep=10**9)
        return request.ByteSize(), reply.ByteSize()

    # floor
    def echo_unary(self, i: int, warmup: int, count: int):
        call = self.echo_channel(i).unary_unary(f"/{ECHO_SERVICE}/Unary")
        payload = echo_payload(*self.step_sizes())
        return _unary_job(lambda _: call(payload), warmup, count)

    def echo_stream(self, i: int, timesteps: int, warmup: int, count: int):
        call = self.echo_channel(i).stream_stream(f"/{ECHO_SERVICE}/Stream")
        payload = echo_payload(*self.stream_sizes(timesteps))
        return _stream_job(lambda requests: call(requests()), [payload], warmup, count)

    # serving path
    def step(self, i: int, warmup: int, count: int):
        session, inputs = self.session(i), self.inputs
        return _unary_job(lambda k: session.step(inputs[k % len(inputs)]), warmup, count)

    def stream(self, i: int, timesteps: int, warmup: int, count: int):
        session = self.session(i)
        chunks = [self.inputs[k : k + timesteps] for k in range(0, len(self.inputs) - timesteps + 1, timesteps)]
        return _stream_job(lambda requests: session.stream(requests()), chunks, warmup, count)


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    ours: str
    floor: str
    ratio: float
    goal: str
    met: bool | None


def _percentile_us(latencies_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_ns, dtype=np.float64), q)) / 1e3


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def machine_info(device: str, servers: str, loads: tuple[float, float]) -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return [
        f"- machine: {cpu_name()}; {os.cpu_count()} CPUs ({usable} usable); {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op "
        f"threads), grpcio {grpc.__version__}, protobuf {_protobuf_version()}, numpy {np.__version__}",
        f"- servers: {servers}; simulation device {device}",
        f"- 1-minute load average at the start and the end: {loads[0]:.1f}, {loads[1]:.1f} (other work on the "
        "machine slows both sides; compare ratios from quiet runs)",
        f"- network: Sequential(nn.Linear({NEURONS}), snn.LIF()), {FEATURES} input features, batch {BATCH}",
    ]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _protobuf_version() -> str:
    from google import protobuf

    return protobuf.__version__


def local_compute_us(net, inputs: np.ndarray, timesteps: int, count: int, rounds: int = 5) -> float:
    """The model's forward over one chunk in this process, with no server: the compute part. The
    lowest of ``rounds`` medians, so that a stall of the machine doesn't pass for compute."""
    model = net.make_model((FEATURES,)).eval()
    state = model.get_initial_state(BATCH)
    x = torch.from_numpy(np.ascontiguousarray(inputs[:timesteps]))
    medians = []
    with torch.no_grad():
        for _ in range(max(1, count // 10)):
            model(x, state)
        for _ in range(rounds):
            times = []
            for _ in range(max(1, count // rounds)):
                t0 = time.perf_counter_ns()
                model(x, state)
                times.append(time.perf_counter_ns() - t0)
            medians.append(_percentile_us(times, 50))
    return min(medians)


def _merge(samples: list[Sample]) -> Sample:
    return Sample(
        [ns for s in samples for ns in s.latencies_ns],
        sum(s.messages for s in samples),
        sum(s.seconds for s in samples),
    )


# -- closed-loop users (--closed-loop) ------------------------------------------------------------
#
# K users, each with its own client and one bidirectional stream, each sending one timestep and
# waiting for its reply before sending the next. The users are spread over client processes
# (threads in each; the grpc.aio echo client: coroutines on one event loop per process), which the
# parent steers over pipes: "prepare" (sessions / channels, kept across rounds), "run" (streams
# opened, then "ready"; the parent answers with the common window), "close".

USERS = (1, 8, 32, 64)
ECHO_CLIENTS = ("sync", "aio")


class _Window:
    """The measured window (``time.monotonic``, system-wide on Linux, so common to all processes);
    None until the parent sends it. Users warm up until it starts and stop at its end."""

    start: float | None = None
    end: float | None = None


def _count_replies(window: _Window, clock=time.monotonic) -> Callable[[], bool]:
    """A per-user tally: call it after each reply; it returns False once the window has ended.
    ``tally.count`` holds the replies received inside the window."""

    def tally() -> bool:
        now, end = clock(), window.end
        if end is not None:
            if now >= end:
                return False
            if now >= window.start:
                tally.count += 1
        return True

    tally.count = 0
    return tally


def _sync_user(open_stream, item, window: _Window, opened: threading.Event, results: list, errors: list, i: int):
    """A closed-loop user on a synchronous grpcio stream fed one request at a time by a queue."""
    feed: queue.SimpleQueue = queue.SimpleQueue()

    def requests():
        while (request := feed.get()) is not None:
            yield request

    replies = open_stream(requests())
    try:
        tally = _count_replies(window)
        feed.put(item)
        next(replies)  # the stream is open: one round trip done
        opened.set()
        while True:
            feed.put(item)
            next(replies)
            if not tally():
                break
        results[i] = tally.count
    except BaseException as error:  # reported by the process
        errors.append(error)
        opened.set()
    finally:
        feed.put(None)  # the end of the requests: the stream ends once the server answered them
        try:
            for _ in replies:
                pass
        except Exception:  # already reported, or the stream is gone
            pass


async def _aio_user(
    address: str, payload: bytes, window: _Window, opened: asyncio.Event, results: list, errors: list, i: int
):
    """A closed-loop echo user on grpc.aio: ``await call.write(); await call.read()``."""
    try:
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            call = channel.stream_stream(f"/{ECHO_SERVICE}/Stream")()
            tally = _count_replies(window)
            await call.write(payload)
            await call.read()
            opened.set()
            while True:
                await call.write(payload)
                await call.read()
                if not tally():
                    break
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
            results[i] = tally.count
    except BaseException as error:  # reported by the process
        errors.append(error)
        opened.set()
        raise


def _measure_window(conn, window: _Window, wait_done: Callable[[], None]) -> tuple[list, float]:
    """Tell the parent the users are ready, take the window it sends, and this process's CPU time
    within it; ``wait_done`` waits for the users to stop."""
    conn.send(("ready", None))
    _, (start, end) = conn.recv()
    window.start, window.end = start, end
    time.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu = time.process_time() - cpu
    wait_done()
    return cpu


def _client_process(conn) -> None:
    """A client process of the closed-loop scenario (multiprocessing, spawned): runs the parent's
    commands until "close", then deletes its sessions and closes its channels."""
    torch.set_num_threads(1)
    net = rb.Sequential(nn.Linear(NEURONS), snn.LIF())
    chunk = (np.random.default_rng(0).random((1, BATCH, FEATURES), dtype=np.float32) * np.float32(0.2)).copy()
    sessions: dict[str, list] = {}  # address -> [(client, session)], user j of this process uses the j-th
    channels: dict[str, list[grpc.Channel]] = {}  # address -> echo channels, one per user

    def prepare(kind: str, address: str, users: int) -> None:
        if kind == "sim":
            entries = sessions.setdefault(address, [])
            while len(entries) < users:
                client = Client(address)
                entries.append((client, client.create_session(net, (FEATURES,), batch_size=BATCH, seed=0)))
        else:
            entries = channels.setdefault(address, [])
            while len(entries) < users:
                channel = grpc.insecure_channel(address, CHANNEL_OPTIONS)
                grpc.channel_ready_future(channel).result(timeout=10)
                entries.append(channel)

    def run(kind: str, address: str, client: str, users: int, sizes: tuple[int, int]):
        prepare(kind, address, users)
        window, results = _Window(), [0] * users
        payload = echo_payload(*sizes)
        if kind == "echo" and client == "aio":

            async def main():
                opened, errors = [asyncio.Event() for _ in range(users)], []
                tasks = [
                    asyncio.create_task(_aio_user(address, payload, window, opened[i], results, errors, i))
                    for i in range(users)
                ]
                try:
                    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), 60)
                    if errors:
                        raise errors[0]
                    cpu = await asyncio.get_running_loop().run_in_executor(
                        None, _measure_window, conn, window, lambda: None
                    )
                    await asyncio.gather(*tasks)
                    return cpu
                finally:
                    for task in tasks:
                        task.cancel()

            return results, asyncio.run(main())
        if kind == "sim":
            streams = [session.stream for _, session in sessions[address][:users]]
            item = chunk
        else:
            streams = [channel.stream_stream(f"/{ECHO_SERVICE}/Stream") for channel in channels[address][:users]]
            item = payload
        opened, errors = [threading.Event() for _ in range(users)], []
        threads = [
            threading.Thread(
                target=_sync_user, args=(streams[i], item, window, opened[i], results, errors, i), name=f"user-{i}"
            )
            for i in range(users)
        ]
        for thread in threads:
            thread.start()
        try:
            for event in opened:
                event.wait(60)
            if errors:
                raise errors[0]

            def done():
                for thread in threads:
                    thread.join()

            cpu = _measure_window(conn, window, done)
        finally:
            if window.end is None:  # an error before the window: stop the users now
                window.start = window.end = 0.0
            for thread in threads:
                thread.join(60)
        if errors:
            raise errors[0]
        return results, cpu

    try:
        while True:
            command, *args = conn.recv()
            if command == "close":
                break
            try:
                reply = prepare(*args) if command == "prepare" else run(*args)
                conn.send(("ok", reply))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
    finally:
        closed = 0
        for entries in sessions.values():
            for client, session in entries:
                try:
                    session.close()
                    closed += 1
                except Exception as error:
                    print(f"a session was not deleted: {error}", file=sys.stderr, flush=True)
                client.close()
        for entries in channels.values():
            for channel in entries:
                channel.close()
        conn.send(("closed", closed))


class ClientProcesses:
    """The client processes of the closed-loop scenario; users are dealt out to them round-robin."""

    def __init__(self, count: int, timeout: float):
        context = multiprocessing.get_context("spawn")  # no forked grpc or torch state
        self.timeout = timeout
        self.conns, self.processes = [], []
        for i in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_client_process, args=(child,), name=f"clients-{i}", daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)
        self.sessions_closed = 0
        self.closed = False

    def split(self, users: int) -> list[int]:
        """Users per process (the first ``users % count`` get one more); zeros left out."""
        count = len(self.conns)
        return [n for n in (users // count + (p < users % count) for p in range(count)) if n]

    def _reply(self, conn, expect: str = "ok"):
        if not conn.poll(self.timeout):
            raise RuntimeError(f"a client process did not answer within {self.timeout:.0f} s")
        status, value = conn.recv()
        if status == "error":
            raise RuntimeError(f"a client process failed:\n{value}")
        if status != expect:
            raise RuntimeError(f"a client process said {status!r}, expected {expect!r}")
        return value

    def prepare(self, kind: str, address: str, users: int) -> None:
        shares = self.split(users)
        for conn, n in zip(self.conns, shares):
            conn.send(("prepare", kind, address, n))
        for conn in self.conns[: len(shares)]:
            self._reply(conn)

    def run(
        self,
        kind: str,
        address: str,
        client: str,
        users: int,
        sizes,
        warmup: float,
        seconds: float,
        server_pids: Sequence[int],
    ) -> LoopSample:
        """One closed-loop run: every user's replies within a common window of ``seconds`` that
        starts ``warmup`` s after the last stream opened; CPU time of clients and server in it (the
        sum over ``server_pids``, the server's processes)."""
        shares = self.split(users)
        conns = self.conns[: len(shares)]
        for conn, n in zip(conns, shares):
            conn.send(("run", kind, address, client, n, sizes))
        for conn in conns:
            self._reply(conn, "ready")
        start = time.monotonic() + warmup
        end = start + seconds
        for conn in conns:
            conn.send(("go", (start, end)))
        time.sleep(max(0.0, start - time.monotonic()))
        server_cpu = sum(_cpu_seconds(pid) for pid in server_pids)
        time.sleep(max(0.0, end - time.monotonic()))
        server_cpu = sum(_cpu_seconds(pid) for pid in server_pids) - server_cpu
        counts, client_cpu = [], 0.0
        for conn in conns:
            replies, cpu = self._reply(conn)
            counts += replies
            client_cpu += cpu
        return LoopSample(counts, seconds, client_cpu, server_cpu)

    def close(self) -> None:
        """Each process deletes its sessions and exits (terminated if it hangs); once."""
        if self.closed:
            return
        self.closed = True
        for conn, process in zip(self.conns, self.processes):
            try:
                if process.is_alive():
                    conn.send(("close",))
                    self.sessions_closed += self._reply(conn, "closed")
            except Exception as error:
                print(f"a client process did not close cleanly: {error}", file=sys.stderr, flush=True)
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(10)


@dataclass
class LoopSample:
    """One closed-loop run: replies per user within the window, and CPU seconds spent in it."""

    counts: list[int]
    seconds: float
    client_cpu_s: float
    server_cpu_s: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loop_rate(samples: list[LoopSample]) -> float:
    """Aggregate timesteps (messages) per second over the runs: all replies over all windows."""
    return sum(sum(s.counts) for s in samples) / sum(s.seconds for s in samples)


def _cores(samples: list[LoopSample], which: str) -> float:
    return sum(getattr(s, which) for s in samples) / sum(s.seconds for s in samples)


def closed_loop(args, argv) -> None:
    """The closed-loop users scenario: echo, ours with batching on and ours with batching off,
    each in a child process, and with ``--server-processes N`` ours with batching off as
    ``python -m server --processes N``; K users each, alternating in rounds."""
    users_list = sorted({int(u) for u in args.users.split(",")})
    if not users_list or users_list[0] < 1:
        raise SystemExit("--users: positive numbers, e.g. 1,8,32,64")
    if args.server_processes < 0:
        raise SystemExit("--server-processes: 0 (off) or a number of server processes above 1")
    multi = args.server_processes if args.server_processes > 1 else 0  # N > 1: the fourth server
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    warmup = 0.5 if args.quick else 1.0
    rounds = args.rounds or (2 if args.quick else 3)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    processes = args.client_processes or max(2, usable)
    most = max(users_list)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rng = np.random.default_rng(0)
    inputs = rng.random((200, BATCH, FEATURES), dtype=np.float32) * np.float32(0.2)
    net = rb.Sequential(nn.Linear(NEURONS), snn.LIF())
    began, load_start = time.perf_counter(), _load()
    servers = ("echo", "on", "off") + (("multi",) if multi else ())
    short = {"echo": "echo", "on": "on", "off": "off", "multi": f"off ×{multi}"}  # in progress lines
    label = {"echo": "echo", "on": "on", "off": "off", "multi": f"off, {multi} processes"}  # in the tables
    samples: dict[tuple[str, int], list[LoopSample]] = {(s, k): [] for s in servers for k in users_list}
    calibration: dict[int, dict[str, float]] = {}
    echo_client: dict[int, str] = {}
    with ExitStack() as stack:
        progress(f"starting {len(servers)} servers and {processes} client processes")
        clients = ClientProcesses(processes, timeout=warmup + seconds + 120)  # they start up meanwhile
        stack.callback(clients.close)  # should a server not start
        started = {  # name -> (address, the pids of its server processes)
            name: (address, [pid])
            for name, (address, pid) in {
                "echo": stack.enter_context(child_server_process("echo", "cpu", 1)),
                "on": stack.enter_context(
                    child_server_process("sim", args.device, args.workers, batching=True, max_sessions=most + 8)
                ),
                "off": stack.enter_context(
                    child_server_process("sim", args.device, args.workers, batching=False, max_sessions=most + 8)
                ),
            }.items()
        }
        if multi:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rnnsim-bench-"))
            started["multi"] = stack.enter_context(
                server_processes_process(multi, args.device, args.workers, folder, False, max_sessions=most + 8)
            )
        stack.callback(clients.close)  # before the servers stop: the sessions are deleted first
        bench = Bench(started["on"][0], started["echo"][0], inputs, net)
        try:
            device = bench.session(0).device
            sizes = bench.stream_sizes(1)
        finally:
            bench.close()
        progress(f"payloads (request, reply bytes) of a Simulate of 1 timestep: {sizes}; preparing {most} users")
        for name in servers:
            clients.prepare("echo" if name == "echo" else "sim", started[name][0], most)

        def once(name: str, k: int, client: str = "sync", window: float = seconds) -> LoopSample:
            address, pids = started[name]
            kind = "echo" if name == "echo" else "sim"
            sample = clients.run(kind, address, client, k, sizes, warmup, window, pids)
            return sample

        for k in users_list:  # the echo's cheapest closed-loop client, at each K
            rates = {}
            for client in ECHO_CLIENTS:
                rates[client] = _loop_rate([once("echo", k, client, seconds / 2)])
            calibration[k] = rates
            echo_client[k] = max(rates, key=rates.get)
            progress(
                f"echo client, {k} users: sync stream {rates['sync']:,.0f}/s, grpc.aio {rates['aio']:,.0f}/s"
                f" -> {echo_client[k]}"
            )
        for r in range(rounds):
            for k in users_list:
                line = []
                for name in servers:
                    sample = once(name, k, echo_client[k] if name == "echo" else "sync")
                    samples[name, k].append(sample)
                    line.append(f"{short[name]} {_loop_rate([sample]):,.0f}/s")
                progress(f"round {r + 1}/{rounds}, {k} users: " + ", ".join(line))
    compute_1 = local_compute_us(net, inputs, 1, 2000)
    load_end = _load()
    elapsed = time.perf_counter() - began

    command = "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(f"Closed-loop users: each sends 1 timestep and waits for its reply (`{command.strip()}`, {elapsed:.0f} s):")
    print()
    ours = servers[1:]
    heads = ["ours, batching on", "ours, batching off"] + ([f"ours, {label['multi']}"] if multi else [])
    heads += [f"{label[name]} / echo" for name in ours]
    print("| users | echo msgs/s | " + " | ".join(heads) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in heads) + " |")
    rates = {key: _loop_rate(value) for key, value in samples.items()}
    for k in users_list:
        echo = rates["echo", k]
        cells = [f"{_fmt_rate(rates[name, k])} timesteps/s" for name in ours]
        cells += [f"{rates[name, k] / echo:.2f}×" for name in ours]
        print(f"| {k} | {_fmt_rate(echo)} | " + " | ".join(cells) + " |")
    print()
    print(
        "Time per message per user (K / aggregate rate: one user's round trip) and our overhead: ours − echo − "
        f"compute of 1 timestep ({compute_1:,.0f} µs):"
    )
    print()
    heads = [f"{label[name]} µs" for name in servers] + [f"overhead {label[name]} µs" for name in ours]
    print("| users | " + " | ".join(heads) + " |")
    print("| ---: | " + " | ".join("---:" for _ in heads) + " |")
    for k in users_list:
        per_user = {name: k / rates[name, k] * 1e6 for name in servers}
        cells = [f"{per_user[name]:,.0f}" for name in servers]
        cells += [f"{per_user[name] - per_user['echo'] - compute_1:,.0f}" for name in ours]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print(
        "Where the CPU went (cores busy during the windows: client processes / the server measured"
        + (f"; for off, {multi} processes: the sum over its {multi} server processes" if multi else "")
        + "):"
    )
    print()
    print("| users | " + " | ".join(f"{label[name]}: clients / server" for name in servers) + " |")
    print("| ---: | " + " | ".join("---" for _ in servers) + " |")
    for k in users_list:
        cells = [
            f"{_cores(samples[name, k], 'client_cpu_s'):.2f} / {_cores(samples[name, k], 'server_cpu_s'):.2f}"
            for name in servers
        ]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    where = "echo, ours with batching on, ours with batching off: each in a child process on 127.0.0.1"
    if multi:
        where += (
            f"; off, {multi} processes: ours with batching off as `python -m server --processes {multi}` on "
            f"127.0.0.1 (a supervisor, idle, and {multi} server processes on one port with SO_REUSEPORT, each "
            "client connection, so each user's sessions, in one of them; a temporary checkpoint folder)"
        )
    for line in machine_info(device, where, (load_start, load_end)):
        print(line)
    print(
        f"- clients: {processes} client processes (multiprocessing, spawned), users dealt out round-robin "
        f"(at {most} users: {', '.join(map(str, clients.split(most)))} per process), each user with its own "
        "client (channel) and one bidirectional stream; ours through `client.Session.stream` fed one chunk "
        "at a time by a queue-driven generator, one thread per user. Clients and the "
        f"{'three' if not multi else 'four'} servers share "
        f"this machine's {usable} usable cores, so at many users the clients' own CPU (table above) is taken "
        "from the server"
    )
    chosen = ", ".join(
        f"{k}: {echo_client[k]} ({calibration[k]['sync']:,.0f} sync vs {calibration[k]['aio']:,.0f} aio msgs/s)"
        for k in users_list
    )
    print(
        "- echo floor: the same message sizes as a Simulate of 1 timestep "
        f"({sizes[0]} B → {sizes[1]} B, raw bytes), K streams; its client is the faster of a sync grpcio "
        "stream fed by a queue-driven generator and a grpc.aio client (`await call.write(); await call.read()`, "
        f"all of a process's users on one event loop), measured first at each K: {chosen}"
    )
    print(
        f"- {rounds} round(s) of {seconds:g} s windows per server and K after {warmup:g} s of warm-up with every "
        f"stream open, servers alternating {', '.join(short[name] for name in servers)}; aggregate = all replies "
        "in the windows / their time"
    )
    print(
        f"- compute alone: the model's forward of 1 timestep in this process, no server (best p50 of 5 rounds): "
        f"{compute_1:,.0f} µs; at K > 1 a user's time per message also holds the other users' turns"
    )
    print(
        f"- at the end the client processes deleted their {clients.sessions_closed} sessions and exited; "
        "the child servers stopped"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s run with fewer samples")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run the simulation and echo servers in child processes (no GIL shared with the client, as deployed)",
    )
    parser.add_argument(
        "--address", help="HOST:PORT of an external simulation server (the echo floor then runs in a child process)"
    )
    parser.add_argument("--device", default="auto", help="device of a server started here: auto, cpu, cuda")
    parser.add_argument("--workers", type=int, default=8, help="worker threads of a server started here")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads here and in child servers (default: torch's)"
    )
    parser.add_argument("--concurrent", type=int, default=CONCURRENT, help="sessions in the concurrent scenarios")
    parser.add_argument(
        "--rounds", type=int, help="floor/ours alternations per scenario (default 2, quick 1; closed loop: 3, quick 2)"
    )
    parser.add_argument(
        "--batching",
        choices=("on", "off"),
        default="on",
        help="cross-session batching of a simulation server started here (ServerConfig.batching; default on)",
    )
    parser.add_argument(
        "--closed-loop",
        action="store_true",
        help="only the closed-loop users scenario: K users each sending 1 timestep and waiting for its reply, "
        "against the echo, ours with batching on and ours with batching off, each in a child process "
        "(and see --server-processes)",
    )
    parser.add_argument(
        "--users", default=",".join(map(str, USERS)), help="closed loop: the numbers of users K (default 1,8,32,64)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        help="closed loop: client processes the users are spread over (default: the usable CPUs, at least 2)",
    )
    parser.add_argument(
        "--seconds", type=float, help="closed loop: the measured window per server, K and round (default 5, quick 1.5)"
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=0,
        metavar="N",
        help="closed loop: with N > 1, a fourth server, ours with batching off as `python -m server --processes N` "
        "(N server processes on one port, a temporary checkpoint folder; its CPU: the sum over the N), "
        "alternating with the others (default 0: off)",
    )
    parser.add_argument("--serve", choices=("echo", "sim"), help=argparse.SUPPRESS)  # the child-process mode
    parser.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)  # where a child server listens
    parser.add_argument("--max-sessions", type=int, help=argparse.SUPPRESS)  # a child simulation server's limit
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.serve:
        _serve_forever(args.serve, args.device, args.workers, args.listen, args.batching == "on", args.max_sessions)
        return
    if args.closed_loop:
        closed_loop(args, argv)
        return

    # per thread: (warmup, measured) counts; --quick is ~30 s on 2 CPUs, the default a few minutes
    scale = 1 if args.quick else 3
    rounds = args.rounds or (1 if args.quick else 2)
    n = args.concurrent
    plan = {
        "step, 1 session": (300, 1500 * scale),
        "stream chunk 1, 1 session": (300, 2000 * scale),
        "stream chunk 100, 1 session": (20, 150 * scale),
        f"step, {n} sessions": (30, 150 * scale),
        f"stream chunk 1, {n} sessions": (30, 250 * scale),
        f"stream chunk 100, {n} sessions": (3, 15 * scale),
    }

    rng = np.random.default_rng(0)
    inputs = rng.random((200, BATCH, FEATURES), dtype=np.float32) * np.float32(0.2)
    net = rb.Sequential(nn.Linear(NEURONS), snn.LIF())
    in_process = not (args.processes or args.address)
    if args.address:
        servers = f"external simulation server at {args.address}, echo in a child process"
    elif args.processes:
        servers = "simulation and echo servers each in a child process on 127.0.0.1"
    else:
        servers = "simulation and echo servers in this process (background event loops) on 127.0.0.1"

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows: list[Row] = []
    began = time.perf_counter()
    load_start = _load()
    with (
        echo_server(in_process) as echo_address,
        simulation_server(args.address, in_process, args.device, args.workers, args.batching == "on") as sim_address,
    ):
        bench = Bench(sim_address, echo_address, inputs, net)
        try:
            for i in range(n):
                bench.session(i), bench.echo_channel(i)
            device = bench.session(0).device
            step_sizes, s1_sizes, s100_sizes = bench.step_sizes(), bench.stream_sizes(1), bench.stream_sizes(100)
            progress(f"payloads (request, reply bytes): step {step_sizes}, chunk 1 {s1_sizes}, chunk 100 {s100_sizes}")
            progress("warming up both paths (2 s)")
            deadline = time.perf_counter() + 2
            while time.perf_counter() < deadline:
                bench.echo_unary(0, 0, 50)(), bench.step(0, 0, 50)()

            def measure(label: str, threads: int, floor_job, ours_job) -> tuple[Sample, Sample]:
                warmup, count = plan[label]
                floors, ours = [], []
                for r in range(rounds):
                    floors.append(_run_threads(threads, lambda i: floor_job(i, warmup, count)))
                    ours.append(_run_threads(threads, lambda i: ours_job(i, warmup, count)))
                    f, o = floors[-1], ours[-1]
                    progress(
                        f"{label}, round {r + 1}/{rounds}: floor {f.messages / f.seconds:,.0f}/s, "
                        f"ours {o.messages / o.seconds:,.0f}/s"
                    )
                return _merge(floors), _merge(ours)

            for threads in (1, n):
                tag = "1 session" if threads == 1 else f"{threads} sessions"
                floor, ours = measure(f"step, {tag}", threads, bench.echo_unary, bench.step)
                for q in (50, 99):
                    f_us, o_us = _percentile_us(floor.latencies_ns, q), _percentile_us(ours.latencies_ns, q)
                    goal = q == 50
                    rows.append(
                        Row(
                            f"`step` latency p{q}, {tag}",
                            f"{o_us:,.0f} µs",
                            f"{f_us:,.0f} µs (unary echo)",
                            o_us / f_us,
                            "≤ 1.5×" if goal else "",
                            (o_us / f_us <= 1.5) if goal else None,
                        )
                    )
                f_rate, o_rate = floor.messages / floor.seconds, ours.messages / ours.seconds
                rows.append(
                    Row(
                        f"`step` throughput, {tag}" + (" (aggregate)" if threads > 1 else " (sequential calls)"),
                        f"{_fmt_rate(o_rate)} steps/s",
                        f"{_fmt_rate(f_rate)} calls/s",
                        o_rate / f_rate,
                        "",
                        None,
                    )
                )
                for timesteps in (1, 100):
                    floor, ours = measure(
                        f"stream chunk {timesteps}, {tag}",
                        threads,
                        lambda i, w, c, t=timesteps: bench.echo_stream(i, t, w, c),
                        lambda i, w, c, t=timesteps: bench.stream(i, t, w, c),
                    )
                    f_rate, o_rate = floor.messages / floor.seconds, ours.messages / ours.seconds
                    ours_text = f"{_fmt_rate(o_rate * timesteps)} timesteps/s"
                    floor_text = f"{_fmt_rate(f_rate)} msgs/s"
                    if timesteps > 1:
                        ours_text += f" ({_fmt_rate(o_rate)} chunks/s)"
                        floor_text += f" (= {_fmt_rate(f_rate * timesteps)} timesteps/s)"
                    rows.append(
                        Row(
                            f"`stream` chunks of {timesteps}, {tag}" + (" (aggregate)" if threads > 1 else ""),
                            ours_text,
                            floor_text,
                            o_rate / f_rate,
                            "≥ 0.8×",
                            o_rate / f_rate >= 0.8,
                        )
                    )
        finally:
            bench.close()
    compute_1 = local_compute_us(net, inputs, 1, 2000)
    compute_100 = local_compute_us(net, inputs, 100, 200)
    load_end = _load()

    elapsed = time.perf_counter() - began
    flags = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    command = f"python benchmarks/serving.py {flags}".strip()
    print()
    print(f"Serving path vs raw grpcio echo (`{command}`, {elapsed:.0f} s):")
    print()
    print("| scenario | ours | floor | ratio (ours/floor) | goal | met? |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        print(f"| {row.scenario} | {row.ours} | {row.floor} | {row.ratio:.2f}× | {row.goal} | {met} |")
    print()
    for line in machine_info(device, servers, (load_start, load_end)):
        print(line)
    print(
        f"- payloads (serialized request → reply): step {step_sizes[0]} B → {step_sizes[1]} B; stream chunk of 1: "
        f"{s1_sizes[0]} B → {s1_sizes[1]} B; chunk of 100: {s100_sizes[0]:,} B → {s100_sizes[1]:,} B; the echo "
        "sends and returns exactly these sizes (raw bytes, no protobuf)"
    )
    print(
        "- compute alone (the model's forward in this process, no server; best p50 of 5 rounds): "
        f"1 timestep {compute_1:,.0f} µs, a chunk of 100 {compute_100:,.0f} µs"
    )
    counts = "; ".join(f"{label} {w}+{c}" for label, (w, c) in plan.items())
    print(f"- per thread, warmup+measured calls or chunks: {counts}; {rounds} round(s), floor and ours alternating")
    print(
        "- ratios: latency lower is better, throughput higher is better; a stream is compared per message "
        "(chunk) with the echo stream of the same payload sizes"
    )


if __name__ == "__main__":
    main()
