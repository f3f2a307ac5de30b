"""Fair sharing of the device over gRPC: one tenant's backlog doesn't starve another tenant, and a call
whose deadline passes while it waits for its turn never runs."""

import threading
import time

import grpc
import numpy as np
import pytest

import rnnbuilder as rb
from client import Client
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from server import ServerConfig
from tests.helpers import recurrent_net, wait_until
from tests.server_fixture import running_server

AUTH = """
[tenants.trainer]
token = "trainer-secret-token"

[tenants.streamer]
token = "streamer-secret-token"
"""


LIGHT = rb.Sequential(nn.Linear(4), snn.LIF())


@pytest.fixture
def one_slot(tmp_path):
    """A server that runs one call at a time, so that every other call waits its turn."""
    path = tmp_path / "auth.toml"
    path.write_text(AUTH)
    with running_server(ServerConfig(device="cpu", workers=1, auth_file=str(path))) as running:
        yield running


def test_a_step_is_served_before_another_tenants_backlog(one_slot):
    """With 7 or more heavy calls of one tenant queued, another tenant's step runs next, not last."""
    address, server = one_slot
    done: list[str] = []
    with Client(address, token="trainer-secret-token") as trainer, Client(address, token="streamer-secret-token") as s:
        heavy = trainer.create_session(recurrent_net(256), input_shape=(3,), batch_size=16)
        light = s.create_session(LIGHT, input_shape=(3,))
        x = np.ones((300, 16, 3), np.float32)
        backlog = [threading.Thread(target=lambda: (heavy.run(x), done.append("heavy"))) for _ in range(9)]
        for thread in backlog:
            thread.start()
        wait_until(lambda: server.scheduler.queued().get("trainer", 0) >= 7)
        light.step(np.ones((1, 3), np.float32))
        done.append("step")
        for thread in backlog:
            thread.join(120)
    assert done.index("step") <= 2, done


def test_a_call_past_its_deadline_while_queued_never_runs(one_slot):
    """A call that times out waiting for a slot gets DEADLINE_EXCEEDED and leaves its session untouched."""
    address, server = one_slot
    with Client(address, token="trainer-secret-token") as trainer, Client(address, token="streamer-secret-token") as s:
        heavy = trainer.create_session(recurrent_net(256), input_shape=(3,), batch_size=16)
        light = s.create_session(LIGHT, input_shape=(3,))
        busy = threading.Thread(target=heavy.run, args=(np.ones((5000, 16, 3), np.float32),))
        busy.start()
        wait_until(lambda: server.scheduler.running() == {"trainer": 1})
        stub = pb_grpc.SimulatorServiceStub(s._channel)
        request = pb.RunRequest(name=light.name, input=_tensor(np.ones((5, 1, 3), np.float32)))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Run(request, timeout=0.2, metadata=(("authorization", "Bearer streamer-secret-token"),))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        busy.join(120)
        assert s.get_session(light.id).timesteps_simulated == 0
        assert server.scheduler.queued() == {}


def _tensor(array: np.ndarray) -> pb.Tensor:
    from rnnbuilder_sim.wire import tensors

    return tensors.encode(array)


def test_a_step_on_a_busy_session_waits_without_holding_up_the_server():
    """A small call on a session busy with a long one waits on a slot, not on the event loop: others get answers."""
    with running_server(ServerConfig(device="cpu", workers=2)) as (address, server), Client(address) as c:
        session = c.create_session(recurrent_net(256), input_shape=(3,), batch_size=16)
        busy = threading.Thread(target=session.run, args=(np.ones((10000, 16, 3), np.float32),))
        busy.start()
        wait_until(lambda: sum(server.scheduler.running().values()) == 1)
        step = threading.Thread(target=session.step, args=(np.ones((16, 3), np.float32),))
        step.start()  # a slot is free, but the session is not: the step must not wait on the event loop
        time.sleep(0.2)
        started = time.perf_counter()
        c.info()
        answered = time.perf_counter() - started
        assert busy.is_alive(), "the long call ended too soon to tell; make it longer"
        busy.join(120)
        step.join(120)
        assert session.refresh().timesteps_simulated == 10001
    assert answered < 1.0
