"""The client's behaviours, each checked on both clients with one body: ``client.Client`` and
``client.aio.AsyncClient`` (through ``conftest.Blocking``), against a real server.

Remote equals local: outputs are compared with the session's network run locally
(``Session.to_local()``), bit for bit. The replica hand-over test runs two replicas behind nginx
(tests/e2e/test_scale_out.py) and is skipped without nginx, unless REQUIRE_NGINX=1.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import InvalidArgumentError, NotFoundError, Recording, ResourceExhaustedError
from rnnbuilder import encode, nn, snn
from rnnbuilder_sim.wire.tensors import TensorError
from server import Limits, ServerConfig
from tests.e2e.test_scale_out import logs_on_failure, scale_out, sessions_on  # noqa: F401 (a fixture)
from tests.helpers import local_outputs, recurrent_readout_net
from tests.server_fixture import running_server

T, B, IN_SHAPE = 24, 4, (16,)


def network() -> rb.Network:
    """A recurrent spiking network: its state matters from one call to the next."""
    return recurrent_readout_net(32, snn.LIF(tau=3))


def spiky_input(seed: int = 0, timesteps: int = T, batch: int = B) -> np.ndarray:
    """Input currents strong enough to make the network spike."""
    return np.random.default_rng(seed).random((timesteps, batch, *IN_SHAPE), dtype=np.float32) * 4


def dataset(seed: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Input spikes (samples, time, *IN_SHAPE) and labels of 10 classes."""
    rng = np.random.default_rng(seed)
    return (rng.random((samples, 12, *IN_SHAPE)) < 0.3).astype(np.float32), rng.integers(0, 10, samples)


@pytest.fixture
def session(client):
    """A session of ``network()`` with batch B, closed after the test."""
    s = client.create_session(network(), input_shape=IN_SHAPE, batch_size=B, seed=3)
    yield s
    with contextlib.suppress(NotFoundError):  # the test closed it
        s.close()


def assert_spiking_equal(remote: list[np.ndarray], local: list[np.ndarray]) -> None:
    assert len(remote) == len(local)
    for i, (r, want) in enumerate(zip(remote, local)):
        assert r.dtype == np.float32 and np.array_equal(r, want), f"chunk {i} differs"
    assert 0 < sum(r.sum() for r in remote) < sum(r.size for r in remote)


# Simulating


def test_run_equals_local(session):
    """run(x) gives the local model's outputs on x; the state carries over to the next run."""
    first, second = spiky_input(1), spiky_input(2)
    remote = [session.run(first), session.run(torch.from_numpy(second))]
    assert_spiking_equal(remote, local_outputs(session.to_local(), [first, second]))


def test_stream_equals_local(session):
    """stream yields one output per chunk, in order, each the local model's on that chunk."""
    chunks = np.split(spiky_input(), [5, 6, 13])
    remote = list(session.stream(iter(chunks)))
    assert_spiking_equal(remote, local_outputs(session.to_local(), chunks))
    assert session.timesteps_simulated == T


def test_step_equals_local(session):
    """step maps (batch, *in) to (batch, *out) as the local model does timestep by timestep."""
    x = spiky_input(timesteps=6)
    remote = [session.step(x_t)[None] for x_t in x]
    assert_spiking_equal(remote, local_outputs(session.to_local(), np.split(x, 6)))


def test_record_and_stream_record_equal_local_record(session):
    """record and stream_record give the output and each asked layer as the local model.record does."""
    x = spiky_input()
    layers = ["hidden", "output"]
    model = session.to_local()
    recorded = session.record(x[:10], layers)
    (streamed,) = session.stream_record([x[10:]], layers)
    with torch.no_grad():
        out, _, local = model.record(torch.from_numpy(x), layers)
    for rec, part in ((recorded, slice(0, 10)), (streamed, slice(10, T))):
        assert isinstance(rec, Recording) and np.array_equal(rec.output, out.numpy()[part])
        assert all(np.array_equal(rec[name], local[name].numpy()[part]) for name in layers)


def test_bitpacked_equals_raw(client):
    """bitpacked=True gives the spikes raw gives, for run, stream and step."""
    raw, packed = (client.create_session(network(), IN_SHAPE, batch_size=B, seed=4) for _ in range(2))
    x = spiky_input(5)
    assert np.array_equal(packed.run(x[:10], bitpacked=True), raw.run(x[:10]))
    assert_spiking_equal(list(packed.stream([x[10:20]], bitpacked=True)), list(raw.stream([x[10:20]])))
    assert np.array_equal(packed.step(x[20], bitpacked=True), raw.step(x[20]))


def test_run_encodes_analog_data_on_the_server(client):
    """run(data, encode=Rate(...)) equals the local model on the spikes encode draws from the session's seed."""
    s = client.create_session(rb.Sequential(nn.Linear(8), snn.LIF(tau=4)), (6,), batch_size=3, seed=5)
    data, encoder = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)), encode.Rate(num_steps=30)
    out = s.run(data.numpy(), encode=encoder)
    spikes = encoder(data, generator=torch.Generator().manual_seed(5))
    assert_spiking_equal([out], local_outputs(s.to_local(), [spikes.numpy()]))


def test_a_nir_graph_runs_as_a_session_and_exports_its_current_weights(client, tmp_path):
    """create_session takes a NIR graph, or its file, with nir_dt: the session computes what the
    imported model computes; to_nir gives the graph with the session's current weights."""
    nir = pytest.importorskip("nir")
    from rnnbuilder.nir import from_nir, to_nir

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        graph = to_nir(rb.Sequential(nn.Linear(8), snn.LeakyIntegrateAndFire(tau=5.0)).make_model((4,)))
    nir.write(tmp_path / "net.nir", graph)
    x = np.random.default_rng(0).random((T, 2, 4), dtype=np.float32) * 3
    expected = local_outputs(from_nir(graph, dt=1.0).make_model((4,)).eval(), [x])
    for source in (graph, tmp_path / "net.nir", str(tmp_path / "net.nir")):
        s = client.create_session(source, batch_size=2, nir_dt=1.0)  # the graph declares its input shape
        assert s.input_shape == (4,)
        assert_spiking_equal([s.run(x)], expected)
    weights = s.parameters()
    name = next(k for k in weights if k.endswith("weight"))
    s.load_parameters({name: weights[name] * 2})
    exported = s.to_nir()
    assert np.array_equal(exported.nodes["0"].weight, graph.nodes["0"].weight * 2)
    s.close()


# Sessions


def test_info_describes_the_server_and_every_type(client):
    """info() gives the version, device, limits, and every factory, surrogate and encoder type described."""
    info = client.info()
    assert info.version == rb.__version__ and info.device == "cpu" and info.limits["max_sessions"] > 0
    assert [d.name for d in info.factories] == info.factory_types
    assert [d.name for d in info.surrogates] == info.surrogate_types
    linear = next(d for d in info.factories if d.name == "nn.Linear")
    assert [a.name for a in linear.arguments][:2] == ["out_features", "bias"] and linear.arguments[0].required
    assert {"encode.Rate", "encode.Latency", "encode.Delta"} <= {d.name for d in info.encoders}


def test_a_session_is_created_attached_listed_and_closed(client, session):
    """A new session describes itself; get_session (by id or name) and list_sessions find it; after
    close, it is gone."""
    local = session.to_local()
    assert (session.input_shape, session.output_shape, session.batch_size, session.seed) == (IN_SHAPE, (10,), B, 3)
    assert session.parameter_count == sum(p.numel() for p in local.parameters())
    assert session.recordable_layers == local.record_names() and session.timesteps_simulated == 0
    session.run(spiky_input(timesteps=3))
    for key in (session.id, session.name):
        assert client.get_session(key).timesteps_simulated == 3
    assert session.id in [s.id for s in client.list_sessions()]
    session.close()
    assert session.id not in [s.id for s in client.list_sessions()]
    with pytest.raises(NotFoundError, match=session.id):
        client.get_session(session.id)


def test_reset_and_state_rewind_the_session(session):
    """reset() restarts the simulation; set_state(get_state()) taken earlier repeats what followed."""
    first, second = spiky_input(1, 12), spiky_input(2, 12)
    fresh = session.run(first)
    saved = session.get_state()
    once = session.run(second)
    session.set_state(saved)
    assert np.array_equal(session.run(second), once)
    session.reset()
    assert np.array_equal(session.run(first), fresh)


def test_loaded_parameters_take_effect(session):
    """load_parameters changes what parameters() gives and what the session computes."""
    parameters = session.parameters()
    name = next(k for k in parameters if k.endswith("weight"))
    parameters[name] = parameters[name] * 2
    session.load_parameters({name: parameters[name]})
    assert np.array_equal(session.parameters()[name], parameters[name])
    x = spiky_input()
    assert_spiking_equal([session.run(x)], local_outputs(session.to_local(), [x]))


def test_saved_session_restores_exactly(client, session):
    """restore(save()) is a new session with the same parameters, state and timestep count."""
    first, second = spiky_input(1, 10), spiky_input(2, 10)
    session.run(first)
    copy = client.restore(session.save())
    try:
        assert copy.id != session.id and copy.timesteps_simulated == 10
        assert np.array_equal(copy.run(second), session.run(second))
    finally:
        copy.close()


# Errors


def test_bad_calls_raise_the_errors_that_say_what_to_fix(client, session):
    """A wrong shape is InvalidArgumentError with the server's reason; a closed session NotFoundError;
    what the client can tell itself (a dtype, a carry mode, bytes that aren't a session) fails before sending."""
    with pytest.raises(InvalidArgumentError, match=r"\(time, 4, 16\)") as caught:
        session.run(np.ones((T, B, 15), np.float32))
    assert caught.value.reason == "INVALID_SHAPE"
    with pytest.raises(TensorError, match="complex64"):
        session.run(np.ones((T, B, 16), np.complex64))
    with pytest.raises(ValueError, match="carry"):
        session.train_step(spiky_input(), np.zeros(B, np.int64), carry="sometimes")
    with pytest.raises(ValueError, match="not a saved session"):
        client.restore(b"not a snapshot")
    with pytest.raises(ValueError, match="nir_dt"):
        client.create_session(network(), IN_SHAPE, nir_dt=1.0)
    with pytest.raises(TypeError, match="input_shape"):
        client.create_session(network())
    session.close()
    with pytest.raises(NotFoundError, match=session.id):
        session.run(spiky_input())


def test_limits_are_resource_exhausted_with_the_numbers(connect):
    """A call over a server limit is ResourceExhaustedError whose metadata has requested and allowed."""
    config = ServerConfig(device="cpu", workers=1, limits=Limits(max_timesteps_times_batch=40))
    with running_server(config) as (address, _):
        c = connect(address)
        s = c.create_session(network(), IN_SHAPE, batch_size=B)
        with pytest.raises(ResourceExhaustedError) as caught:
            s.run(spiky_input(timesteps=11))
        assert caught.value.metadata == {"limit": "max_timesteps_times_batch", "requested": "44", "allowed": "40"}
        with pytest.raises(ResourceExhaustedError):
            list(s.stream([spiky_input(timesteps=5), spiky_input(timesteps=11)]))
        assert s.refresh().timesteps_simulated == 5  # the chunk before the bad one took effect


# Training


def test_train_step_fit_and_evaluate(client, capsys):
    """train_step reports its metrics; fit trains epochs with a progress bar and validation; evaluate
    agrees with fit's last validation."""
    x, y = dataset(0, 20)
    x_val, y_val = dataset(1, 8)
    s = client.create_session(network(), IN_SHAPE, batch_size=B, seed=2)
    step = s.train_step(x[:B].transpose(1, 0, 2), y[:B], lr=1e-2)
    assert {"loss", "grad_norm", "accuracy"} <= step.keys()
    history = s.fit(x, y, epochs=2, batch_size=8, lr=1e-2, validation=(x_val, y_val), progress=True)
    assert [h["epoch"] for h in history] == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_second"} <= history[-1].keys()
    assert history[-1]["val_loss"] == pytest.approx(s.evaluate(x_val, y_val)["loss"], abs=1e-6)
    assert "6/6" in capsys.readouterr().err  # 2 epochs x ceil(20 / 8) batches
    s.close()


def test_on_batch_stops_fit_at_a_batch_boundary(client):
    """on_batch returning False ends fit with the epochs done so far; the session then works on."""
    x, y = dataset(2, 16)
    s = client.create_session(network(), IN_SHAPE, batch_size=B, seed=2)
    seen = []
    history = s.fit(x, y, epochs=50, batch_size=4, on_batch=lambda p: seen.append(p) or len(seen) < 6)
    assert len(seen) == 6 and len(history) == 1 and seen[-1]["epoch"] == 1
    assert len(s.fit(x, y, epochs=1, batch_size=4)) == 1
    s.close()


# A replica stopping


def test_a_stream_goes_on_across_its_replicas_stop(connect, scale_out):  # noqa: F811 (the fixture)
    """Behind nginx, a Simulate stream whose replica stops mid-way goes on on the other replica: no
    chunk lost or applied twice, the outputs equal the local model's."""
    proxy, replicas, _, logs = scale_out
    with logs_on_failure(logs):
        c = connect(proxy)
        [s] = sessions_on(c, "replica-a", 1)
        local = s.to_local()
        x = (np.random.default_rng(2).random((40, 2, 2, 3)) * 2).astype(np.float32)
        stopped = replicas["replica-a"][1]

        def chunks():
            for i, chunk in enumerate(x):
                if i == 10:
                    stopped.send_signal(signal.SIGTERM)
                    time.sleep(0.3)
                yield chunk
                time.sleep(0.02)

        outputs = list(s.stream(chunks()))
        assert stopped.wait(60) == 0
        assert s.server_id == "replica-b"
        assert_spiking_equal([np.concatenate(outputs)], local_outputs(local, [x.reshape(80, 2, 3)]))


def test_a_call_waits_while_its_replica_hands_the_session_over(connect, scale_out):  # noqa: F811 (the fixture)
    """While a replica finishes a long call before it stops, calls for its other sessions wait (the
    client retries UNAVAILABLE) and then continue exactly on the other replica; so does the busy
    session, from the checkpoint written once its call ended, never from an older one."""
    proxy, replicas, checkpoints, logs = scale_out
    with logs_on_failure(logs):
        c, other = connect(proxy), connect(proxy)
        busy, idle = sessions_on(c, "replica-a", 2)
        x = np.ones((3, 2, 3), np.float32)
        for s in (busy, idle):
            s.run(x)
        models = {s.id: s.to_local() for s in (busy, idle)}
        long = (np.random.default_rng(1).random((20000, 2, 3)) * 2).astype(np.float32)
        done = {}
        in_flight = other.get_session(busy.id)
        thread = threading.Thread(target=lambda: done.update(out=in_flight.run(long)))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "the long call finished before SIGTERM; make it longer"
        replicas["replica-a"][1].send_signal(signal.SIGTERM)
        time.sleep(0.2)
        after = idle.run(x)  # refused while replica-a hands it over, then served by replica-b
        assert idle.server_id == "replica-b"
        thread.join(120)
        assert done["out"].shape == (20000, 2, 6), "the call in flight finished on replica-a"
        assert replicas["replica-a"][1].wait(60) == 0
        last = busy.run(x)
        assert busy.server_id == "replica-b"
        with torch.no_grad():
            expected_idle, _ = models[idle.id](torch.from_numpy(np.concatenate([x, x])))
            expected_busy, _ = models[busy.id](torch.from_numpy(np.concatenate([x, long, x])))
        assert np.array_equal(after, expected_idle.numpy()[3:])
        assert np.array_equal(last, expected_busy.numpy()[-3:])
        assert all(p.read_text() == "replica-b" for p in checkpoints.glob("*.lease")), "replica-a let go of all"
