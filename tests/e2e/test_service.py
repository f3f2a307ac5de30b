"""The simulation service end to end: a real server on 127.0.0.1 and the real client.

Remote equals local: every way of simulating a session (``run``, ``stream``, ``step``, ``record``)
gives bit-identical outputs to the session's network run locally (``Session.to_local()``) over the
same input, split the same way, with the state carried from call to call.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import rnnbuilder as rb
from client import Client, NotFoundError
from rnnbuilder import nn, snn
from tests.helpers import interlocking_cycles, local_outputs

SERVICE = "rnnbuilder_sim.v1.SimulatorService"
T, B, IN_SHAPE = 24, 4, (16,)


def feed_forward_lif():
    return rb.Sequential(nn.Linear(32), snn.LIF(), nn.Linear(10), snn.LIF())


def adaptive():
    return rb.Sequential(nn.Linear(32), snn.Adaptive(), nn.Linear(10), snn.Adaptive())


def recurrent():
    """A Network whose hidden layer sees its own previous spikes through a placeholder."""
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(32), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(10), snn.LIF(tau=3))
    return n


NETWORKS = {"feed_forward_lif": feed_forward_lif, "adaptive": adaptive, "recurrent": recurrent}
CHUNKINGS = {
    "one_chunk": (T,),
    "single_timesteps": (1,) * T,
    "uneven": (5, 1, 7, 2, 9),
    "equal": (8, 8, 8),
}
network_names = pytest.mark.parametrize("net", NETWORKS)


def spiky_input(seed: int = 0, timesteps: int = T) -> np.ndarray:
    """Input currents strong enough to make every network spike."""
    return np.random.default_rng(seed).random((timesteps, B, *IN_SHAPE), dtype=np.float32) * 4


def split(x: np.ndarray, sizes) -> list[np.ndarray]:
    assert sum(sizes) == len(x)
    return np.split(x, np.cumsum(sizes)[:-1])


def assert_spiking(out: np.ndarray) -> None:
    """Binary, and neither silent nor saturated."""
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert 0 < out.sum() < out.size


def assert_all_equal(remote: list[np.ndarray], local: list[np.ndarray]) -> None:
    assert len(remote) == len(local)
    for i, (r, want) in enumerate(zip(remote, local)):
        assert r.shape == want.shape, f"chunk {i}"
        assert np.array_equal(r, want), f"chunk {i} differs"


@pytest.fixture
def open_session(client):
    """Opens sessions on the module's server; closes them after the test."""
    opened = []

    def open_(net="feed_forward_lif", seed=0, batch_size=B, on=client):
        session = on.create_session(NETWORKS[net](), input_shape=IN_SHAPE, batch_size=batch_size, seed=seed)
        opened.append(session)
        return session

    yield open_
    for session in opened:  # through the fixture's client: the session's own may be closed
        with contextlib.suppress(NotFoundError):
            client.get_session(session.id).close()


# Remote equals local


@network_names
def test_run_equals_local(open_session, net):
    """run(x) is bit-identical to the local model on x, and the network spikes."""
    s = open_session(net)
    x = spiky_input()
    out = s.run(x)
    assert out.dtype == np.float32 and out.shape == (T, B, 10)
    assert_spiking(out)
    assert_all_equal([out], local_outputs(s.to_local(), [x]))


@network_names
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_stream_equals_local(open_session, net, chunking):
    """stream yields one output per chunk, each bit-identical to the local model run chunk by chunk."""
    s = open_session(net)
    chunks = split(spiky_input(), CHUNKINGS[chunking])
    remote = list(s.stream(iter(chunks)))
    assert_spiking(np.concatenate(remote))
    assert_all_equal(remote, local_outputs(s.to_local(), chunks))


@network_names
def test_step_equals_local(open_session, net):
    """step maps one timestep (batch, *in) to (batch, *out), bit-identical to local stepping."""
    s = open_session(net)
    x = spiky_input()
    remote = [s.step(x_t) for x_t in x]
    assert remote[0].shape == (B, 10)
    local = [out[0] for out in local_outputs(s.to_local(), split(x, (1,) * T))]
    assert_spiking(np.stack(remote))
    assert_all_equal(remote, local)


@network_names
def test_run_stream_and_step_share_the_state(open_session, net):
    """Mixing run, stream, step and torch input on one session continues one simulation."""
    s = open_session(net)
    x = spiky_input()
    sizes = (5, 3, 4, 1, 1, 10)
    chunks = split(x, sizes)
    remote = [s.run(chunks[0])]
    remote += list(s.stream(chunks[1:3]))
    remote += [s.step(torch.from_numpy(chunks[3][0]))[None], s.step(chunks[4][0])[None]]
    remote += [s.run(torch.from_numpy(chunks[5]))]
    assert_all_equal(remote, local_outputs(s.to_local(), chunks))
    assert s.refresh().timesteps_simulated == T


@network_names
def test_record_equals_local_record(open_session, net):
    """record returns every requested layer, (time, batch, ...), equal to the local model.record."""
    s = open_session(net)
    x = spiky_input()
    layers = s.recordable_layers
    rec = s.record(x, layers=layers)
    with torch.no_grad():
        out, _, local = s.to_local().record(torch.from_numpy(x), layers)
    assert np.array_equal(rec.output, out.numpy())
    assert sorted(rec) == sorted(layers)
    for name in layers:
        assert rec[name].shape[:2] == (T, B), name
        assert np.array_equal(rec[name], local[name].numpy()), name
    assert_spiking(rec[layers[1] if net != "recurrent" else "hidden"])


def test_interlocking_cycles_run_remotely_as_locally(client):
    """A network with interlocking placeholder cycles runs locally and remotely, with equal outputs."""
    net = interlocking_cycles(32, 10)
    x = spiky_input()
    local_outputs(net.make_model(IN_SHAPE), [x])  # runs locally
    s = client.create_session(net, input_shape=IN_SHAPE, batch_size=B, seed=0)
    try:
        out = s.run(x)
        assert_spiking(out)
        assert_all_equal([out], local_outputs(s.to_local(), [x]))
    finally:
        s.close()


def test_record_continues_the_state_like_run(open_session):
    """A record call moves the state on like run: the next run continues after it."""
    recorded, plain = open_session(seed=1), open_session(seed=1)
    first, second = split(spiky_input(), (10, 14))
    assert np.array_equal(recorded.record(first, ["1.v"]).output, plain.run(first))
    assert np.array_equal(recorded.run(second), plain.run(second))


@network_names
def test_bitpacked_outputs_equal_raw(open_session, net):
    """bitpacked=True gives the same outputs as raw, for run, stream and step."""
    raw, packed = open_session(net, seed=2), open_session(net, seed=2)
    first, second, third = split(spiky_input(), (10, 13, 1))
    assert_all_equal([packed.run(first, bitpacked=True)], [raw.run(first)])
    assert_all_equal(
        list(packed.stream([second[:6], second[6:]], bitpacked=True)), list(raw.stream([second[:6], second[6:]]))
    )
    assert_all_equal([packed.step(third[0], bitpacked=True)], [raw.step(third[0])])


def test_bitpacked_record_equals_raw(open_session):
    """With bitpacked=True, spike rasters and membranes are recorded as with raw."""
    raw, packed = open_session(seed=3), open_session(seed=3)
    x = spiky_input()
    want, got = raw.record(x, ["1", "1.v", "3"]), packed.record(x, ["1", "1.v", "3"], bitpacked=True)
    assert np.array_equal(got.output, want.output)
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name


def test_binary_input_bitpacked_equals_local(open_session):
    """Spike-train input (0/1) sent bit-packed simulates as the same input locally."""
    s = open_session(seed=4)
    x = (np.random.default_rng(5).random((T, B, *IN_SHAPE)) < 0.5).astype(np.float32)
    out = s.run(x, bitpacked=True)
    assert_spiking(out)
    assert_all_equal([out], local_outputs(s.to_local(), [x]))


# Sessions


def test_info_reports_version_device_types_and_limits(client):
    """info() names the version, the device, the accepted factory and surrogate types and the limits."""
    info = client.info()
    assert info.version == rb.__version__
    assert info.device == "cpu"
    assert {"Sequential", "Network", "nn.Linear", "snn.LIF", "snn.Adaptive", "rnn.LSTM"} <= set(info.factory_types)
    assert {"snn.SpikeLinear", "snn.FastSigmoid"} <= set(info.surrogate_types)
    assert info.limits["max_sessions"] > 0 and info.limits["max_timesteps_times_batch"] > 0


def test_created_session_describes_itself(open_session):
    """A new session reports its shapes, batch size, seed, parameter count and recordable layers."""
    s = open_session("feed_forward_lif", seed=7)
    local = s.to_local()
    assert len(s.id) > 0 and s.name == f"sessions/{s.id}"
    assert (s.input_shape, s.output_shape, s.batch_size, s.seed) == (IN_SHAPE, (10,), B, 7)
    assert s.parameter_count == sum(p.numel() for p in local.parameters())
    assert s.recordable_layers == local.record_names()
    assert s.device == "cpu" and s.timesteps_simulated == 0


def test_timesteps_simulated_counts_every_call(open_session):
    """timesteps_simulated grows by each run, stream chunk and step."""
    s = open_session()
    x = spiky_input()
    s.run(x[:5])
    list(s.stream([x[5:7], x[7:10]]))
    s.step(x[10])
    assert s.refresh().timesteps_simulated == 11


def test_same_seed_gives_same_parameters(open_session):
    """Sessions created with the same seed start with the same parameters; another seed differs."""
    a, b, c = open_session(seed=11), open_session(seed=11), open_session(seed=12)
    pa, pb, pc = a.parameters(), b.parameters(), c.parameters()
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert not all(np.array_equal(pa[k], pc[k]) for k in pa)


def test_get_session_returns_the_same_session(client, open_session):
    """get_session by id or by resource name describes the session that was created."""
    s = open_session("recurrent")
    for key in (s.id, s.name):
        again = client.get_session(key)
        assert (again.id, again.output_shape, again.recordable_layers) == (s.id, s.output_shape, s.recordable_layers)
        assert rb.spec.to_spec(rb.spec.from_spec(again.description)) == rb.spec.to_spec(recurrent())


def test_list_sessions_lists_open_sessions_oldest_first(client, open_session):
    """list_sessions includes every open session in creation order, and not closed ones."""
    a, b, c = open_session(), open_session(), open_session()
    b.close()
    ids = [s.id for s in client.list_sessions()]
    assert a.id in ids and c.id in ids and b.id not in ids
    assert ids.index(a.id) < ids.index(c.id)


def test_reset_restarts_every_batch_entry(open_session):
    """After reset(), the session simulates as if freshly created."""
    s = open_session("recurrent")
    x = spiky_input()
    fresh = s.run(x)
    s.reset()
    assert np.array_equal(s.run(x), fresh)


@network_names
def test_reset_some_batch_entries_equals_local_reset_state(open_session, net):
    """reset(batch_indices) equals the local model's reset_state for those entries."""
    s = open_session(net)
    first, second = split(spiky_input(), (12, 12))
    model = s.to_local()
    s.run(first)
    s.reset([1, 3])
    with torch.no_grad():
        _, state = model(torch.from_numpy(first))
        state = model.reset_state(state, [1, 3])
    assert_all_equal([s.run(second)], local_outputs(model, [second], state))


@network_names
def test_get_state_equals_local_state(open_session, net):
    """get_state names and values every state tensor as the local model's state after the same input."""
    s = open_session(net)
    x = spiky_input()
    s.run(x)
    with torch.no_grad():
        _, state = s.to_local()(torch.from_numpy(x))
    local = {name: t.numpy() for name, t in rb.named_leaves(state).items()}
    remote = s.get_state()
    assert remote.keys() == local.keys()
    for name in local:
        assert np.array_equal(remote[name], local[name]), name


def test_set_state_rewinds_the_session(open_session):
    """set_state(get_state()) taken earlier makes the session repeat what it did from there."""
    s = open_session("adaptive")
    first, second = split(spiky_input(), (12, 12))
    s.run(first)
    saved = s.get_state()
    once = s.run(second)
    s.set_state(saved)
    assert np.array_equal(s.run(second), once)


def test_set_state_moves_state_between_sessions(open_session):
    """A state read from one session continues in another session with the same parameters."""
    a, b = open_session("recurrent", seed=5), open_session("recurrent", seed=5)
    first, second = split(spiky_input(), (12, 12))
    a.run(first)
    b.set_state(a.get_state())
    assert np.array_equal(b.run(second), a.run(second))


def test_load_parameters_changes_the_simulation(open_session):
    """Loaded parameters take effect: the session equals a local model with those parameters."""
    s = open_session()
    params = s.parameters()
    params["net.runners.0.module.weight"] = params["net.runners.0.module.weight"] * 2
    s.load_parameters(params)
    loaded = s.parameters()
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    x = spiky_input()
    assert_all_equal([s.run(x)], local_outputs(s.to_local(), [x]))


def test_load_some_parameters_keeps_the_others(open_session):
    """load_parameters with a subset replaces only those; the rest keep their values."""
    s = open_session()
    before = s.parameters()
    bias = np.full_like(before["net.runners.2.module.bias"], 0.5)
    s.load_parameters({"net.runners.2.module.bias": bias})
    after = s.parameters()
    assert np.array_equal(after["net.runners.2.module.bias"], bias)
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "net.runners.2.module.bias")


# Reconnecting


def test_state_survives_a_reconnect(server_address, open_session):
    """A session continued from a new connection gives what an uninterrupted run gives."""
    first, second = split(spiky_input(), (9, 15))
    with Client(server_address) as reference_client:
        reference = open_session("recurrent", seed=6, on=reference_client)
        uninterrupted = np.concatenate([reference.run(first), reference.run(second)])
    with Client(server_address) as c1:
        s = open_session("recurrent", seed=6, on=c1)
        out_first = s.run(first)
    with Client(server_address) as c2:
        again = c2.get_session(s.id)
        assert again.timesteps_simulated == 9
        out_second = again.run(second)
    assert_spiking(uninterrupted)
    assert np.array_equal(np.concatenate([out_first, out_second]), uninterrupted)


def test_list_sessions_sees_sessions_of_other_connections(server_address):
    """A session created on one connection is listed, with its shapes, from a new connection."""
    with Client(server_address) as c1:
        s = c1.create_session(feed_forward_lif(), input_shape=IN_SHAPE, batch_size=B)
        s.run(spiky_input(timesteps=3))
    with Client(server_address) as c2:
        listed = {x.id: x for x in c2.list_sessions()}
        assert s.id in listed
        assert (listed[s.id].output_shape, listed[s.id].timesteps_simulated) == ((10,), 3)
        c2.get_session(s.id).close()


# Many clients at once


def test_eight_concurrent_clients_stream_correct_results(server_address):
    """Eight clients in threads stream into their own sessions at once; every result equals a local run."""
    workers = 8
    barrier = threading.Barrier(workers)

    def work(i: int):
        with Client(server_address) as c:
            s = c.create_session(NETWORKS[list(NETWORKS)[i % 3]](), input_shape=IN_SHAPE, batch_size=B, seed=i)
            chunks = split(spiky_input(seed=i), (1, 3, 8, 2, 10))
            barrier.wait(timeout=30)
            outputs = list(s.stream(chunks))
            model = s.to_local()
            s.close()
            return chunks, outputs, model

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, range(workers)))
    for chunks, outputs, model in results:
        assert_all_equal(outputs, local_outputs(model, chunks))
    assert sum(np.concatenate(outputs).sum() for _, outputs, _ in results) > 0


# Standard tools: health and reflection


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check_is_serving(server_address, service):
    """The standard grpc.health.v1 Check answers SERVING for the server and for the simulator service."""
    with grpc.insecure_channel(server_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def reflect(server_address: str, **request) -> reflection_pb2.ServerReflectionResponse:
    with grpc.insecure_channel(server_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)
    return reply


def test_reflection_lists_the_services(server_address):
    """Server reflection lists the simulator and health services."""
    reply = reflect(server_address, list_services="")
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_reflection_serves_the_contract(server_address):
    """Reflection gives the simulator's .proto file, so tools like grpcurl can call it."""
    from google.protobuf import descriptor_pb2

    reply = reflect(server_address, file_containing_symbol=SERVICE)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto
    ]
    contract = next(f for f in files if f.name == "rnnbuilder_sim/v1/simulator.proto")
    assert "SimulatorService" in [s.name for s in contract.service]
