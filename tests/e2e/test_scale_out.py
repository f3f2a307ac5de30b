"""Scale-out: replicas behind nginx (deploy/nginx/nginx.conf), each session kept on one replica.

The proxy test runs two ``python -m server`` replicas sharing one checkpoint folder and a real nginx
on loopback, with the production config's upstream servers and listen address replaced. It is
skipped when no nginx binary is found, unless REQUIRE_NGINX=1 (CI), which makes that a failure.
A stream resumed across its replica's stop, and a call retried while its replica hands its session
over, are tested for both clients, with this module's ``scale_out`` fixture, in
tests/client/test_clients.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

import client
import rnnbuilder as rb
from client import SERVER_ID_HEADER, SESSION_HEADER, Client
from client.__main__ import health
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import names
from server import ServerConfig
from tests.helpers import recurrent_net
from tests.server_fixture import running_server

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
SESSIONS = 16
STEPS = 12  # per session: half before the replica stops, half after


def test_header_names_are_the_servers():
    """The client's header constants are public and are the wire layer's, which the server sends."""
    assert {"SESSION_HEADER", "SERVER_ID_HEADER"} <= set(client.__all__)
    assert (SERVER_ID_HEADER, SESSION_HEADER) == (names.SERVER_ID_HEADER, names.SESSION_HEADER)
    assert re.fullmatch(r"[a-z0-9-]+", SESSION_HEADER)  # gRPC metadata keys are lower case; no "_" for nginx


class _Recorder(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor
):
    """Notes each call's method and session header."""

    def __init__(self):
        self.calls: list[tuple[str, str | None]] = []

    def _note(self, details):
        session = dict(details.metadata or ()).get(SESSION_HEADER)
        self.calls.append((details.method.rsplit("/", 1)[-1], session))

    def intercept_unary_unary(self, continuation, details, request):
        self._note(details)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self._note(details)
        return continuation(details, request)

    def intercept_stream_stream(self, continuation, details, requests):
        self._note(details)
        return continuation(details, requests)


def test_every_session_call_names_its_session():
    """Each call about a session sends its id in SESSION_HEADER; CreateSession and ImportSession send
    a fresh id; GetServerInfo and ListSessions send none. ``server_id`` names who answered."""
    config = ServerConfig(device="cpu", workers=2, server_id="replica-x")
    with running_server(config) as (address, _), Client(address) as c:
        recorder = _Recorder()
        c._stub = pb_grpc.SimulatorServiceStub(grpc.intercept_channel(c._channel, recorder))
        c.info()
        c.list_sessions()
        s = c.create_session(rb.Sequential(nn.Linear(4), snn.LIF()), input_shape=(3,), batch_size=2)
        assert s.server_id == "replica-x"
        x = np.ones((5, 2, 3), np.float32)
        y = np.array([0, 1])
        s.refresh()
        s.run(x)
        list(s.stream([x, x]))
        s.reset()
        s.set_state(s.get_state())
        s.load_parameters(s.parameters())
        s.train_step(x, y)
        s.fit(np.ones((4, 5, 3), np.float32), np.array([0, 1, 2, 3]), batch_size=2)
        s.evaluate(np.ones((4, 5, 3), np.float32), np.array([0, 1, 2, 3]))
        copy = c.restore(s.save())
        assert c.get_session(s.id).server_id == "replica-x"
        copy.close()
        s.close()
    by_method = {}
    for method, session in recorder.calls:
        by_method.setdefault(method, set()).add(session)
    keyless = {"GetServerInfo", "ListSessions"}
    fresh = {"CreateSession", "ImportSession"}
    assert set(by_method) == set(pb.DESCRIPTOR.services_by_name["SimulatorService"].methods_by_name)
    for method in keyless:
        assert by_method[method] == {None}, method
    proposed = by_method["CreateSession"] | by_method["ImportSession"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", p or "") for p in proposed) and len(proposed) == 2
    for method, sessions in by_method.items():
        if method not in keyless | fresh:
            assert sessions <= {s.id, copy.id}, method
            assert None not in sessions, method


# The proxy test: two replicas and nginx, as subprocesses.


def _nginx() -> str | None:
    found = shutil.which("nginx")
    candidates = [found] if found else []
    candidates += ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(until, what: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up in {seconds:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def start_replica(server_id: str, checkpoints: Path, folder: Path) -> tuple[str, subprocess.Popen, Path]:
    address = f"127.0.0.1:{_free_port()}"
    log = folder / f"{server_id}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", address, "--server-id", server_id]
        + ["--checkpoint-dir", str(checkpoints), "--checkpoint-interval", "3600", "--metrics-port", "-1"]
        + ["--device", "cpu", "--grace", "30", "--workers", "2", "--torch-threads", "1"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    _wait(lambda: health(address, "", 1.0) == "SERVING", f"replica {server_id}", process, log)
    return address, process, log


def proxy_config(listen: str, replicas: list[str], folder: Path) -> str:
    """deploy/nginx/nginx.conf with the replicas' addresses, ``listen`` and files in ``folder``."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^( *)server [\w.-]+:\d+( .*)?;\n", text, flags=re.M)
    assert len(servers) >= 2, "deploy/nginx/nginx.conf lists its replicas as 'server host:port ...;' lines"
    indent, options = servers[0]
    lines = "".join(f"{indent}server {address}{options};\n" for address in replicas)
    text = re.sub(r"(^ *server [\w.-]+:\d+( .*)?;\n)+", lambda _: lines, text, count=1, flags=re.M)
    text, listens = re.subn(r"^( *)listen \d+ http2;", rf"\1listen {listen} http2;", text, flags=re.M)
    text, logs = re.subn(r"access_log /dev/stdout", f"access_log {folder / 'access.log'}", text)
    temporary = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy"))
    text, http = re.subn(r"^http \{\n", "http {\n" + temporary, text, flags=re.M)
    assert listens == logs == http == 1, "deploy/nginx/nginx.conf changed shape; update proxy_config"
    return text


def start_proxy(replicas: list[str], folder: Path) -> tuple[str, subprocess.Popen, Path]:
    nginx = _nginx()
    listen = f"127.0.0.1:{_free_port()}"
    config = folder / "nginx.conf"
    config.write_text(proxy_config(listen, replicas, folder))
    log = folder / "nginx.log"
    process = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
        + ["-g", f"daemon off; pid {folder / 'nginx.pid'};"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    _wait(lambda: health(listen, "", 1.0) == "SERVING", "nginx", process, folder / "error.log")
    return listen, process, folder / "error.log"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (nginx's master then stops its workers, which a SIGKILL would leave behind), else SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(30)


@pytest.fixture
def scale_out(tmp_path):
    """``(proxy address, {server id: (address, process, log)}, checkpoint folder, logs)``."""
    if _nginx() is None:
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("REQUIRE_NGINX=1 but no nginx binary was found (apt-get install nginx-light)")
        pytest.skip("no nginx binary found (apt-get install nginx-light); REQUIRE_NGINX=1 makes this a failure")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    processes, replicas = [], {}
    try:
        for server_id in ("replica-a", "replica-b"):
            replicas[server_id] = start_replica(server_id, checkpoints, tmp_path)
            processes.append(replicas[server_id][1])
        proxy, nginx, nginx_log = start_proxy([address for address, _, _ in replicas.values()], tmp_path)
        processes.append(nginx)
        yield proxy, replicas, checkpoints, [log for _, _, log in replicas.values()] + [nginx_log]
    finally:
        for process in processes:
            _stop(process)


@contextlib.contextmanager
def logs_on_failure(logs):
    """Print the end of each replica's and the proxy's log if the block fails, then let it fail."""
    try:
        yield
    except BaseException:
        for log in logs:
            print(f"==== {log.name}\n{log.read_text()[-6000:]}")
        raise


def sessions_on(client: Client, replica: str, count: int) -> list:
    """``count`` new sessions that the proxy routes to ``replica``. Ids are random, so any few sessions
    may all land on the other replica: make them until enough haven't (the others stay open)."""
    found = []
    for seed in range(64):
        session = client.create_session(recurrent_net(), (3,), batch_size=2, seed=seed)
        if session.refresh().server_id == replica:
            found.append(session)
            if len(found) == count:
                return found
    raise AssertionError(f"64 sessions and fewer than {count} on {replica}: is the proxy hashing?")


def test_sessions_stay_on_their_replica_and_move_exactly_when_it_stops(scale_out):
    """Through nginx: every call of a session lands on one replica, the sessions spread over both,
    and a listing gives them all. After one replica stops gracefully (SIGTERM: it checkpoints), its
    sessions continue on the other from the shared checkpoints, exactly as a local model computes
    them, and the first call after the stop needs no retry by the client (nginx retries the refused
    connection on the next replica)."""
    proxy, replicas, checkpoints, logs = scale_out
    x = (np.random.default_rng(0).random((SESSIONS, STEPS, 2, 3)) * 2).astype(np.float32)
    half = STEPS // 2
    with logs_on_failure(logs):
        with Client(proxy) as c:
            sessions = [c.create_session(recurrent_net(), (3,), batch_size=2, seed=i) for i in range(SESSIONS)]
            models, outputs, home = [], [], {}
            for i, s in enumerate(sessions):
                answered = [s.server_id]
                models.append(s.to_local())
                answered.append(s.server_id)
                outputs.append(list(s.stream([x[i, :2], x[i, 2:half]])))  # a bidirectional stream
                answered.append(s.server_id)
                answered.append(s.refresh().server_id)
                assert s.timesteps_simulated == half
                assert len(set(answered)) == 1, f"session {s.id} was answered by {answered}"
                home[s.id] = answered[0]
            assert set(home.values()) == set(replicas), f"the sessions did not spread: {home}"
            with Client(proxy) as other:  # another connection attaching by id reaches the same replica
                assert all(other.get_session(s.id).server_id == home[s.id] for s in sessions)
                # Listing reaches one replica, which lists both replicas' sessions from the folder.
                assert [s.id for s in other.list_sessions()] == [s.id for s in sessions]

            _, stopped, _ = replicas["replica-a"]
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(60) == 0
            moved = [s for s in sessions if home[s.id] == "replica-a"]
            assert all(list(checkpoints.glob(f"{s.id}.*.snapshot")) for s in moved)

            for i, s in enumerate(sessions):
                outputs[i] += s.stream([x[i, half : half + 3], x[i, half + 3 :]])
                assert s.server_id == "replica-b"
                assert s.refresh().timesteps_simulated == STEPS
                with torch.no_grad():
                    expected, _ = models[i](torch.from_numpy(x[i]))
                assert np.array_equal(np.concatenate(outputs[i]), expected.numpy()), f"session {i} diverged"
                assert expected.sum() > 0  # it spiked: the comparison means something
            for s in sessions:
                s.close()
        assert not list(checkpoints.glob("*.snapshot")), "closed sessions leave no checkpoint"


def test_calls_keep_succeeding_while_their_replica_stops(scale_out):
    """Clients stepping their sessions without pause while one replica stops see no error, and every session ends
    exactly where a local model does: no step lost, none applied twice."""
    proxy, replicas, checkpoints, logs = scale_out
    with logs_on_failure(logs), Client(proxy) as c:
        sessions = [c.create_session(recurrent_net(), (3,), batch_size=2, seed=i) for i in range(8)]
        x = (np.random.default_rng(3).random((400, 2, 3)) * 2).astype(np.float32)
        models = {s.id: s.to_local() for s in sessions}
        outputs = {s.id: [] for s in sessions}
        errors: list[BaseException] = []

        def step_all(session):
            try:
                with Client(proxy) as own:
                    mine = own.get_session(session.id)
                    for t in range(len(x)):
                        outputs[session.id].append(mine.run(x[t : t + 1]))
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=step_all, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        replicas["replica-a"][1].send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        assert any(s.server_id == "replica-a" for s in sessions), "no session was on the stopped replica"
        for s in sessions:
            with torch.no_grad():
                expected, _ = models[s.id](torch.from_numpy(x))
            assert np.array_equal(np.concatenate(outputs[s.id]), expected.numpy()), f"session {s.id} diverged"
