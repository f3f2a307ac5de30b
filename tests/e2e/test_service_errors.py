"""Bad requests: each gets its canonical status code, an ErrorInfo reason and a message that says
what to fix; afterwards the server still serves and the session is exactly as it was.

"As it was" is checked against a reference session with the same seed that got the same good calls
but not the bad one: same state, same timestep count, same parameters, and the same output on the
next input.
"""

from __future__ import annotations

import contextlib

import grpc
import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import AlreadyExistsError, Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from client.errors import from_rpc_error
from rnnbuilder import nn, snn, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks as wire
from rnnbuilder_sim.wire.tensors import TensorError
from server import Limits, ServerConfig
from tests.helpers import recurrent_readout_net
from tests.server_fixture import running_server

T, B, IN_SHAPE = 12, 4, (16,)
UNKNOWN = "sessions/0123456789abcdef"


def network():
    return recurrent_readout_net(24, snn.Adaptive())


def spiky_input(seed: int = 0, timesteps: int = T, batch: int = B) -> np.ndarray:
    return np.random.default_rng(seed).random((timesteps, batch, *IN_SHAPE), dtype=np.float32) * 4


def raw_tensor(array: np.ndarray, **fields) -> pb.Tensor:
    """A float32 Tensor message, with any field overridden."""
    message = pb.Tensor(
        dtype=pb.DATA_TYPE_FLOAT32,
        shape=array.shape,
        data=array.astype("<f4").tobytes(),
        encoding=pb.TENSOR_ENCODING_RAW,
    )
    for name, value in fields.items():
        if name == "shape":
            del message.shape[:]
            message.shape.extend(value)
        else:
            setattr(message, name, value)
    return message


def rpc_error(call, request):
    """The client error a raw gRPC call fails with."""
    with pytest.raises(grpc.RpcError) as caught:
        reply = call(request, timeout=30)
        if hasattr(reply, "__next__"):  # a stream: read its replies to the end
            list(reply)
    return from_rpc_error(caught.value)


def assert_error(error, kind, reason: str, *fragments: str) -> None:
    """``error`` is a ``kind`` with ``reason`` whose message contains every fragment."""
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    assert error.reason == reason, str(error)
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"


def assert_undisturbed(target, reference) -> None:
    """target is in the state reference is in: same state, count and parameters, same next output."""
    state, want_state = target.get_state(), reference.get_state()
    assert state.keys() == want_state.keys()
    assert all(np.array_equal(state[k], want_state[k]) for k in state)
    params, want_params = target.parameters(), reference.parameters()
    assert all(np.array_equal(params[k], want_params[k]) for k in want_params)
    assert target.refresh().timesteps_simulated == reference.refresh().timesteps_simulated
    x = spiky_input(seed=99)
    out = target.run(x)
    assert out.sum() > 0
    assert np.array_equal(out, reference.run(x))


@pytest.fixture
def pair(client):
    """(target, reference): two identical sessions that have simulated the same input."""
    sessions = [client.create_session(network(), input_shape=IN_SHAPE, batch_size=B, seed=1) for _ in range(2)]
    for s in sessions:
        s.run(spiky_input())
    yield sessions
    for s in sessions:
        with contextlib.suppress(NotFoundError):
            s.close()


def simulate_requests(name: str, *inputs: pb.Tensor):
    """A Simulate stream's requests: one chunk per input, all naming ``name``."""
    return iter([pb.SimulateRequest(name=name, input=t) for t in inputs])


# Unknown sessions: NOT_FOUND


SESSION_CALLS = {
    "get": lambda c, s: c.get_session(s.id),
    "run": lambda c, s: s.run(spiky_input()),
    "stream": lambda c, s: list(s.stream([spiky_input()])),
    "step": lambda c, s: s.step(spiky_input()[0]),
    "record": lambda c, s: s.record(spiky_input(), ["hidden"]),
    "delete": lambda c, s: s.close(),
    "reset": lambda c, s: s.reset(),
    "get_state": lambda c, s: s.get_state(),
    "set_state": lambda c, s: s.set_state({}),
    "parameters": lambda c, s: s.parameters(),
    "load_parameters": lambda c, s: s.load_parameters({}),
}


@pytest.mark.parametrize("call", SESSION_CALLS)
def test_unknown_session_is_not_found(client, pair, call):
    """Every call on a closed session fails with NOT_FOUND naming it; other sessions keep working."""
    gone = client.create_session(network(), input_shape=IN_SHAPE, batch_size=B)
    gone.close()
    with pytest.raises(NotFoundError) as caught:
        SESSION_CALLS[call](client, gone)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert_error(caught.value, NotFoundError, "SESSION_NOT_FOUND", gone.name, "ListSessions")
    assert caught.value.metadata["session"] == gone.name
    assert_undisturbed(*pair)


def test_unknown_session_id_is_not_found(client, pair):
    """get_session of an id that never existed is NOT_FOUND."""
    with pytest.raises(NotFoundError) as caught:
        client.get_session(UNKNOWN)
    assert_error(caught.value, NotFoundError, "SESSION_NOT_FOUND", UNKNOWN)
    assert_undisturbed(*pair)


def test_not_found_and_already_exists_name_the_session_alike(stub, pair):
    """NOT_FOUND and ALREADY_EXISTS name a session the same way: its resource name, under the
    ErrorInfo metadata key "session" (not the bare id in one and the name in the other)."""
    session_id = "named-alike"
    name = f"sessions/{session_id}"
    request = pb.CreateSessionRequest(
        session=pb.Session(network=wire.to_message(spec.to_spec(network())), input_shape=IN_SHAPE, batch_size=B),
        session_id=session_id,
    )
    stub.CreateSession(request, timeout=30)
    try:
        taken = rpc_error(stub.CreateSession, request)
        assert_error(taken, AlreadyExistsError, "SESSION_EXISTS", session_id)
    finally:
        stub.DeleteSession(pb.DeleteSessionRequest(name=name), timeout=30)
    missing = rpc_error(stub.GetSession, pb.GetSessionRequest(name=name))
    assert_error(missing, NotFoundError, "SESSION_NOT_FOUND", name)
    assert taken.metadata == missing.metadata == {"session": name}
    assert_undisturbed(*pair)


# Malformed requests: INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["", "sessions/", "sessions/a/b", "session/abc", "abc"])
def test_malformed_session_name_is_invalid(stub, pair, name):
    """A name that isn't 'sessions/<id>' is INVALID_ARGUMENT, and the message shows the form."""
    error = rpc_error(stub.GetSession, pb.GetSessionRequest(name=name))
    assert_error(error, InvalidArgumentError, "INVALID_REQUEST", "sessions/<id>", repr(name))
    assert_undisturbed(*pair)


def test_malformed_session_name_in_run_is_invalid(stub, pair):
    """Run with a malformed name is INVALID_ARGUMENT too."""
    request = pb.RunRequest(name="sessions/a/b", input=raw_tensor(spiky_input()))
    assert_error(rpc_error(stub.Run, request), InvalidArgumentError, "INVALID_REQUEST", "sessions/<id>")
    assert_undisturbed(*pair)


@pytest.mark.parametrize(
    "shape",
    [(T, B, 15), (T, B, 16, 1), (B, 16), (T, B, 4, 4)],
    ids=["wrong_size", "extra_dim", "no_time_dim", "wrong_dims"],
)
def test_wrong_input_shape_is_invalid(pair, shape):
    """An input not shaped (time, batch, *input_shape) is INVALID_ARGUMENT naming the shape to send."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.run(np.ones(shape, dtype=np.float32))
    assert_error(caught.value, InvalidArgumentError, "INVALID_SHAPE", "(time, 4, 16)", str(shape))
    assert_undisturbed(target, reference)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_wrong_batch_size_is_invalid(pair, batch):
    """An input whose batch isn't the session's batch size is INVALID_ARGUMENT."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.run(spiky_input(batch=batch))
    assert_error(caught.value, InvalidArgumentError, "INVALID_SHAPE", "(time, 4, 16)")
    assert_undisturbed(target, reference)


def test_wrong_step_shape_is_invalid(pair):
    """step with a (batch, *input_shape) of the wrong size is INVALID_ARGUMENT."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.step(np.ones((B, 17), dtype=np.float32))
    assert_error(caught.value, InvalidArgumentError, "INVALID_SHAPE", "(time, 4, 16)")
    assert_undisturbed(target, reference)


MALFORMED_TENSORS = {
    "unspecified_dtype": ({"dtype": pb.DATA_TYPE_UNSPECIFIED}, "DATA_TYPE_FLOAT32"),
    "unknown_dtype": ({"dtype": 42}, "DATA_TYPE_FLOAT32"),
    "data_too_short": ({"data": b"\0" * 12}, "needs"),
    "data_too_long": ({"data": b"\0" * (T * B * 16 * 4 + 4)}, "needs"),
    "shape_not_matching_data": ({"shape": [T, B, 8]}, "needs"),
    "negative_dim": ({"shape": [-T, B, 16]}, "negative"),
    "unknown_encoding": ({"encoding": 7}, "encoding"),
    "bitpacked_wrong_length": ({"encoding": pb.TENSOR_ENCODING_BITPACKED}, "bit-packed"),
    "bool_byte_not_0_or_1": ({"dtype": pb.DATA_TYPE_BOOL, "data": b"\2" * (T * B * 16)}, "0 or 1"),
}


@pytest.mark.parametrize("case", MALFORMED_TENSORS)
def test_malformed_input_tensor_is_invalid_in_run(stub, pair, case):
    """A Tensor message with a bad dtype, shape, data length or encoding is INVALID_ARGUMENT in Run."""
    target, reference = pair
    fields, fragment = MALFORMED_TENSORS[case]
    request = pb.RunRequest(name=target.name, input=raw_tensor(spiky_input(), **fields))
    assert_error(rpc_error(stub.Run, request), InvalidArgumentError, "INVALID_TENSOR", fragment)
    assert_undisturbed(target, reference)


@pytest.mark.parametrize("case", ["unspecified_dtype", "data_too_short"])
def test_malformed_input_tensor_is_invalid_in_simulate(stub, pair, case):
    """A malformed chunk fails the Simulate stream with INVALID_ARGUMENT."""
    target, reference = pair
    fields, fragment = MALFORMED_TENSORS[case]
    requests = simulate_requests(target.name, raw_tensor(spiky_input(), **fields))
    assert_error(rpc_error(stub.Simulate, requests), InvalidArgumentError, "INVALID_TENSOR", fragment)
    assert_undisturbed(target, reference)


@pytest.mark.parametrize("dtype", [np.complex64, np.uint32])
def test_input_dtype_the_contract_lacks_is_refused_before_sending(pair, dtype):
    """An input of a dtype the wire can't carry raises TensorError in the client, naming the dtype."""
    target, reference = pair
    with pytest.raises(TensorError, match=np.dtype(dtype).name):
        target.run(spiky_input().astype(dtype))
    assert_undisturbed(target, reference)


def test_integer_and_bool_inputs_are_simulated_as_float32(pair):
    """Inputs of int or bool dtype are accepted and simulated as their float32 values."""
    target, reference = pair
    x = spiky_input().astype(np.int64)
    assert np.array_equal(target.run(x), reference.run(x.astype(np.float32)))
    spikes = spiky_input() > 2
    assert np.array_equal(target.run(spikes), reference.run(spikes.astype(np.float32)))


def test_missing_input_is_invalid(stub, pair):
    """A Run without an input tensor is INVALID_ARGUMENT."""
    target, reference = pair
    error = rpc_error(stub.Run, pb.RunRequest(name=target.name))
    assert_error(error, InvalidArgumentError, "INVALID_REQUEST", "input is missing")
    assert_undisturbed(target, reference)


def test_zero_timesteps_is_invalid(pair):
    """An input with no timesteps is INVALID_ARGUMENT: send at least one."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.run(np.zeros((0, B, *IN_SHAPE), dtype=np.float32))
    assert_error(caught.value, InvalidArgumentError, "INVALID_REQUEST", "at least one")
    assert_undisturbed(target, reference)


def test_zero_timestep_chunk_fails_the_stream(pair):
    """An empty chunk in a stream is INVALID_ARGUMENT."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        list(target.stream([np.zeros((0, B, *IN_SHAPE), dtype=np.float32)]))
    assert_error(caught.value, InvalidArgumentError, "INVALID_REQUEST", "at least one")
    assert_undisturbed(target, reference)


def test_bad_chunk_mid_stream_keeps_the_chunks_before_it(pair):
    """A stream fails at its bad chunk: the chunks before it were answered and took effect, nothing after."""
    target, reference = pair
    good = spiky_input(seed=5)
    answered = []
    with pytest.raises(InvalidArgumentError) as caught:
        for out in target.stream([good[:4], good[4:], np.ones((3, B, 15), np.float32), good]):
            answered.append(out)
    assert_error(caught.value, InvalidArgumentError, "INVALID_SHAPE", "(time, 4, 16)")
    assert len(answered) == 2
    assert np.array_equal(np.concatenate(answered), reference.run(good))
    assert_undisturbed(target, reference)


def test_stream_naming_two_sessions_is_invalid(client, stub, pair):
    """A stream whose chunks name different sessions fails at the second name; that session is untouched."""
    target, reference = pair
    first = client.create_session(network(), input_shape=IN_SHAPE, batch_size=B)
    try:
        chunk = raw_tensor(spiky_input())
        requests = [pb.SimulateRequest(name=first.name, input=chunk), pb.SimulateRequest(name=target.name, input=chunk)]
        answered = []
        with pytest.raises(grpc.RpcError) as caught:
            for reply in stub.Simulate(iter(requests), timeout=30):
                answered.append(reply)
        error = from_rpc_error(caught.value)
        assert_error(error, InvalidArgumentError, "INVALID_REQUEST", "same session", first.name, target.name)
        assert len(answered) == 1
    finally:
        first.close()
    assert_undisturbed(target, reference)


def test_unknown_recorded_layer_is_invalid(pair):
    """Recording a layer the network doesn't have is INVALID_ARGUMENT listing the recordable ones."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.record(spiky_input(), ["hidden", "hiden.1.v"])
    assert_error(caught.value, InvalidArgumentError, "INVALID_REQUEST", "'hiden.1.v'", "hidden.1.v", "output.1.a")
    assert_undisturbed(target, reference)


def test_reset_out_of_range_batch_index_is_invalid(pair):
    """reset with a batch index outside [0, batch_size) is INVALID_ARGUMENT."""
    target, reference = pair
    with pytest.raises(InvalidArgumentError) as caught:
        target.reset([1, B])
    assert_error(caught.value, InvalidArgumentError, "INVALID_SHAPE", "[0, 4)")
    assert_undisturbed(target, reference)


# State and parameters


def bad_state(state: dict, case: str) -> dict:
    first = next(iter(state))
    if case == "unknown_name":
        return {**state, "layers.nope.v": state[first]}
    if case == "missing_name":
        return {k: v for k, v in state.items() if k != first}
    if case == "wrong_shape":
        return {**state, first: state[first][:, :-1]}
    if case == "nan":
        return {**state, first: np.full_like(state[first], np.nan)}
    if case == "infinity":
        return {**state, first: np.full_like(state[first], np.inf)}
    raise AssertionError(case)


STATE_CASES = {
    "unknown_name": ("INVALID_SHAPE", "unknown ['layers.nope.v']"),
    "missing_name": ("INVALID_SHAPE", "missing ['layers.hidden.1.v']"),
    "wrong_shape": ("INVALID_SHAPE", "must have shape (4, 24)"),
    "nan": ("INVALID_REQUEST", "NaN"),
    "infinity": ("INVALID_REQUEST", "infinity"),
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_bad_set_state_is_invalid(pair, case):
    """set_state with wrong names, a wrong shape or non-finite values is INVALID_ARGUMENT and changes nothing."""
    target, reference = pair
    reason, fragment = STATE_CASES[case]
    with pytest.raises(InvalidArgumentError) as caught:
        target.set_state(bad_state(target.get_state(), case))
    assert_error(caught.value, InvalidArgumentError, reason, fragment)
    assert_undisturbed(target, reference)


WEIGHT = "net.layers.hidden.runners.0.module.weight"
PARAMETER_CASES = {
    "unknown_name": ("INVALID_REQUEST", "unknown parameters ['nope']"),
    "wrong_shape": ("INVALID_SHAPE", "must have shape (24, 40)"),
    "nan": ("INVALID_REQUEST", "NaN"),
}


def bad_parameters(params: dict, case: str) -> dict:
    params = {**params, WEIGHT: params[WEIGHT] * 2}  # a valid change, which must not be applied either
    if case == "unknown_name":
        return {**params, "nope": np.zeros(3, np.float32)}
    if case == "wrong_shape":
        return {**params, WEIGHT: params[WEIGHT][:, :-1]}
    if case == "nan":
        last = list(params)[-1]
        return {**params, last: np.full_like(params[last], np.nan)}
    raise AssertionError(case)


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_bad_load_parameters_is_invalid(pair, case):
    """load_parameters with an unknown name, a wrong shape or NaN is INVALID_ARGUMENT and loads nothing."""
    target, reference = pair
    params = target.parameters()
    assert WEIGHT in params
    reason, fragment = PARAMETER_CASES[case]
    with pytest.raises(InvalidArgumentError) as caught:
        target.load_parameters(bad_parameters(params, case))
    assert_error(caught.value, InvalidArgumentError, reason, fragment)
    assert_undisturbed(target, reference)


def test_tensor_named_twice_is_invalid(stub, pair):
    """A SetParameters naming one tensor twice is INVALID_ARGUMENT."""
    target, reference = pair
    weight = target.parameters()[WEIGHT]
    named = pb.NamedTensor(name=WEIGHT, tensor=raw_tensor(weight))
    request = pb.SetParametersRequest(name=target.name, parameters=[named, named])
    assert_error(rpc_error(stub.SetParameters, request), InvalidArgumentError, "INVALID_REQUEST", "twice")
    assert_undisturbed(target, reference)


# Malformed networks: INVALID_ARGUMENT naming the place


def described(factory) -> dict:
    return spec.to_spec(factory)


def linear_args(args: dict) -> dict:
    description = described(rb.Sequential(nn.Linear(8), snn.LIF()))
    description["root"]["factories"][0]["args"] = args
    return description


def dangling_placeholder() -> dict:
    description = described(network())
    layers = description["root"]["layers"]
    index = next(i for i, node in enumerate(layers) if node["kind"] == "placeholder")
    layers[index]["layer"] = 17
    return description


def unknown_type() -> dict:
    description = described(rb.Sequential(nn.Linear(8), snn.LIF()))
    description["root"]["factories"][1]["type"] = "snn.LIFF"
    return description


def unknown_surrogate() -> dict:
    description = described(rb.Sequential(nn.Linear(8), snn.LIF()))
    description["root"]["factories"][1]["args"]["spike_function"]["type"] = "snn.Nope"
    return description


def with_lif_tau(tau) -> dict:
    description = described(rb.Sequential(nn.Linear(8), snn.LIF()))
    description["root"]["factories"][1]["args"]["tau"] = tau
    return description


def no_output() -> dict:
    description = described(network())
    description["root"]["names"] = [n for n in description["root"]["names"] if n["name"] != "output"]
    return description


LINEAR = "root.factories[0].args"
NETWORK_CASES = {
    "unknown_factory_type": (unknown_type, "root.factories[1].type", "did you mean snn.LIF"),
    "unknown_surrogate_type": (unknown_surrogate, "root.factories[1].args.spike_function.type", "snn.SpikeLinear"),
    "missing_required_argument": (lambda: linear_args({"bias": True}), f"{LINEAR}.out_features", "missing required"),
    "bad_argument_type": (lambda: linear_args({"out_features": "8"}), f"{LINEAR}.out_features", "expected integer"),
    "unknown_argument": (lambda: linear_args({"out_features": 8, "size": 3}), f"{LINEAR}.size", "unknown argument"),
    "non_finite_argument": (lambda: with_lif_tau(float("nan")), "root.factories[1].args.tau", "finite number"),
    "out_of_range_argument": (lambda: with_lif_tau(-1.0), "root.factories[1]", "tau must be a positive number"),
    "dangling_placeholder": (dangling_placeholder, "root.layers[1].layer", "doesn't exist"),
    "no_output_layer": (no_output, "root.names", "'output'"),
}


@pytest.mark.parametrize("case", NETWORK_CASES)
def test_malformed_network_is_invalid_and_names_the_path(client, case):
    """A malformed network is INVALID_ARGUMENT whose message and ErrorInfo name the place to fix."""
    make, path, fragment = NETWORK_CASES[case]
    before = len(client.list_sessions())
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_session(make(), input_shape=IN_SHAPE, batch_size=B)
    assert_error(caught.value, InvalidArgumentError, "INVALID_NETWORK", path, fragment)
    assert caught.value.metadata["path"] == path
    assert len(client.list_sessions()) == before
    client.create_session(network(), input_shape=IN_SHAPE, batch_size=B).close()


def test_network_that_does_not_fit_its_input_is_invalid(client):
    """A network whose shapes don't fit (a sum of different sizes) is INVALID_ARGUMENT."""
    n = rb.Network()
    n.a = n.input.apply(nn.Linear(3))
    n.output = n.a.sum(n.input)
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_session(n, input_shape=IN_SHAPE, batch_size=B)
    assert caught.value.reason in {"INVALID_SHAPE", "INVALID_NETWORK"}
    assert "(3,)" in caught.value.message and "(16,)" in caught.value.message


def create_raw(stub, client, network_message: pb.NetworkSpec | None, input_shape=IN_SHAPE, batch_size=B):
    """The error of a raw CreateSession, checked to have created nothing."""
    before = [s.id for s in client.list_sessions()]
    session = pb.Session(input_shape=input_shape, batch_size=batch_size)
    if network_message is not None:
        session.network.CopyFrom(network_message)
    error = rpc_error(stub.CreateSession, pb.CreateSessionRequest(session=session))
    assert [s.id for s in client.list_sessions()] == before
    return error


def lif_message() -> pb.NetworkSpec:
    return wire.factory_to_message(rb.Sequential(nn.Linear(8), snn.LIF()))


def test_empty_argument_value_is_invalid(client, stub):
    """An argument Value with nothing set is INVALID_ARGUMENT naming the argument."""
    message = lif_message()
    message.root.factories[1].args["tau"].Clear()
    error = create_raw(stub, client, message)
    assert_error(error, InvalidArgumentError, "INVALID_NETWORK", "root.factories[1].args.tau", "empty value")
    assert error.metadata["path"] == "root.factories[1].args.tau"


def test_empty_network_node_is_invalid(client, stub):
    """A Network node with no kind set is INVALID_ARGUMENT naming the node."""
    message = wire.factory_to_message(network())
    message.root.layers[2].Clear()
    error = create_raw(stub, client, message)
    assert_error(error, InvalidArgumentError, "INVALID_NETWORK", "root.layers[2]", "empty node")


@pytest.mark.parametrize("message", [None, pb.NetworkSpec()], ids=["no_network", "no_root"])
def test_missing_network_is_invalid(client, stub, message):
    """CreateSession without a network (or without its root factory) is INVALID_ARGUMENT."""
    error = create_raw(stub, client, message)
    assert isinstance(error, InvalidArgumentError) and "network" in error.message


@pytest.mark.parametrize("input_shape", [[], [0], [16, -1]], ids=["empty", "zero", "negative"])
def test_bad_input_shape_is_invalid(client, stub, input_shape):
    """CreateSession with no or non-positive input sizes is INVALID_ARGUMENT."""
    error = create_raw(stub, client, lif_message(), input_shape=input_shape)
    assert_error(error, InvalidArgumentError, "INVALID_REQUEST", "input_shape", "positive")


@pytest.mark.parametrize("batch_size", [0, -2])
def test_bad_batch_size_is_invalid(client, stub, batch_size):
    """CreateSession with a batch size below 1 is INVALID_ARGUMENT."""
    error = create_raw(stub, client, lif_message(), batch_size=batch_size)
    assert_error(error, InvalidArgumentError, "INVALID_REQUEST", "batch_size must be positive")


@pytest.mark.parametrize(
    "request_",
    [pb.ListSessionsRequest(page_size=-1), pb.ListSessionsRequest(page_token="nope")],
    ids=["negative_page_size", "bad_page_token"],
)
def test_bad_list_sessions_request_is_invalid(stub, request_):
    """ListSessions with a negative page size or a made-up page token is INVALID_ARGUMENT."""
    assert isinstance(rpc_error(stub.ListSessions, request_), InvalidArgumentError)


# Limits: RESOURCE_EXHAUSTED with the numbers


LIMITS = Limits(
    max_timesteps_times_batch=40,
    max_parameters_per_session=2000,
    max_sessions=2,
    max_batch_size=4,
    max_message_bytes=20_000,
)


@pytest.fixture
def limited():
    """A client of a fresh server with small limits."""
    with running_server(ServerConfig(device="cpu", workers=2, limits=LIMITS)) as (address, _), Client(address) as c:
        yield c


def small_network():
    return rb.Sequential(nn.Linear(8), snn.LIF())  # 16 * 8 + 8 + 8 = 144 parameters


def assert_exhausted(error, limit: str, requested: int, allowed: int) -> None:
    assert isinstance(error, ResourceExhaustedError), f"{type(error).__name__}: {error}"
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "LIMIT_EXCEEDED"
    assert error.metadata == {"limit": limit, "requested": str(requested), "allowed": str(allowed)}
    assert f"{requested:,}" in error.message and f"{allowed:,}" in error.message


def test_info_reports_the_limits(limited):
    """info() reports the limits the server enforces."""
    limits = limited.info().limits
    assert (limits["max_timesteps_times_batch"], limits["max_sessions"], limits["max_batch_size"]) == (40, 2, 4)
    assert (limits["max_parameters_per_session"], limits["max_message_bytes"]) == (2000, 20_000)


def test_run_over_the_timestep_limit_is_exhausted(limited):
    """A run of more timesteps x batch than allowed is RESOURCE_EXHAUSTED; one at the limit runs."""
    target, reference = (limited.create_session(small_network(), IN_SHAPE, batch_size=4, seed=2) for _ in range(2))
    with pytest.raises(ResourceExhaustedError) as caught:
        target.run(spiky_input(timesteps=11))
    assert_exhausted(caught.value, "max_timesteps_times_batch", 44, 40)
    assert np.array_equal(target.run(spiky_input(timesteps=10)), reference.run(spiky_input(timesteps=10)))


def test_stream_chunk_over_the_timestep_limit_is_exhausted(limited):
    """A stream chunk over the limit is RESOURCE_EXHAUSTED; many chunks within it may add up to more."""
    target = limited.create_session(small_network(), IN_SHAPE, batch_size=4)
    x = spiky_input(timesteps=30)
    assert len(list(target.stream([x[:10], x[10:20], x[20:]]))) == 3
    with pytest.raises(ResourceExhaustedError) as caught:
        list(target.stream([x[:10], x]))
    assert_exhausted(caught.value, "max_timesteps_times_batch", 120, 40)


def test_batch_size_over_the_limit_is_exhausted(limited):
    """A session with a larger batch than allowed is RESOURCE_EXHAUSTED and isn't created."""
    with pytest.raises(ResourceExhaustedError) as caught:
        limited.create_session(small_network(), IN_SHAPE, batch_size=5)
    assert_exhausted(caught.value, "max_batch_size", 5, 4)
    assert limited.list_sessions() == []


def test_network_over_the_parameter_limit_is_exhausted(limited):
    """A network with more parameters than allowed is RESOURCE_EXHAUSTED and isn't created."""
    big = rb.Sequential(nn.Linear(200), snn.LIF())  # 16 * 200 + 200 + 200 = 3,600
    with pytest.raises(ResourceExhaustedError) as caught:
        limited.create_session(big, IN_SHAPE, batch_size=1)
    assert_exhausted(caught.value, "max_parameters_per_session", 3600, 2000)
    assert "parameters" in caught.value.message
    assert limited.list_sessions() == []


def test_tensor_arguments_over_the_parameter_limit_are_exhausted(limited):
    """Tensor arguments holding more elements than a session may have parameters are refused before
    they are read, and no session is created."""
    big = rb.Sequential(
        nn.Linear(1500), snn.LeakyIntegrateAndFire(tau=torch.full((1500,), 4.0), v_leak=torch.zeros(1500))
    )
    with pytest.raises(ResourceExhaustedError) as caught:
        limited.create_session(big, IN_SHAPE, batch_size=1)
    assert_exhausted(caught.value, "max_parameters_per_session", 3000, 2000)
    assert "tensor arguments" in caught.value.message
    assert limited.list_sessions() == []


def test_sessions_over_the_limit_are_exhausted(limited):
    """Opening more sessions than allowed is RESOURCE_EXHAUSTED; closing one makes room."""
    first, second = (limited.create_session(small_network(), IN_SHAPE, batch_size=2) for _ in range(2))
    with pytest.raises(ResourceExhaustedError) as caught:
        limited.create_session(small_network(), IN_SHAPE, batch_size=2)
    assert_exhausted(caught.value, "max_sessions", 3, 2)
    assert [s.id for s in limited.list_sessions()] == [first.id, second.id]
    first.close()
    third = limited.create_session(small_network(), IN_SHAPE, batch_size=2)
    assert third.run(spiky_input(batch=2, timesteps=2)).shape == (2, 2, 8)


def test_huge_network_is_refused_without_allocating(limited):
    """A network far too big to allocate is refused by counting, not by running out of memory."""
    huge = rb.Sequential(nn.Linear(10**6), nn.Linear(10**6))  # about 10**12 parameters
    with pytest.raises(ResourceExhaustedError) as caught:
        limited.create_session(huge, IN_SHAPE, batch_size=1)
    assert caught.value.metadata["limit"] == "max_parameters_per_session"
    assert int(caught.value.metadata["requested"]) > 10**12


def test_request_over_the_message_limit_is_exhausted(limited):
    """An input message larger than max_message_bytes is RESOURCE_EXHAUSTED with the numbers, and changes nothing."""
    net = rb.Sequential(nn.AvgPool1d(50), snn.LIF())  # (1, 1000) -> (1, 20); 16,000 bytes per timestep in
    target, reference = (limited.create_session(net, (1, 1000), batch_size=4) for _ in range(2))
    x = np.random.default_rng(0).random((2, 4, 1, 1000), dtype=np.float32) * 4
    with pytest.raises(ResourceExhaustedError) as caught:
        target.run(x)
    assert "20000" in caught.value.message.replace(",", "")
    assert target.refresh().timesteps_simulated == 0
    assert np.array_equal(target.run(x[:1]), reference.run(x[:1]))


def test_response_over_the_message_limit_leaves_the_session_unchanged(limited):
    """A run whose output would exceed max_message_bytes is RESOURCE_EXHAUSTED and doesn't advance the session."""
    net = rb.Sequential(
        nn.Upsample(scale_factor=64.0), snn.LIF()
    )  # (1, 16) -> (1, 1024); 16,384 bytes per timestep out
    target, reference = (limited.create_session(net, (1, 16), batch_size=4) for _ in range(2))
    x = np.random.default_rng(0).random((2, 4, 1, 16), dtype=np.float32) * 4
    with pytest.raises(ResourceExhaustedError) as caught:
        target.run(x)
    assert "20000" in caught.value.message.replace(",", "")
    assert target.refresh().timesteps_simulated == 0, "the failed run advanced the session"
    state, want = target.get_state(), reference.get_state()
    assert all(np.array_equal(state[k], want[k]) for k in want)
    assert np.array_equal(target.run(x[:1]), reference.run(x[:1]))


def test_bitpacked_reply_counts_its_packed_size_against_the_message_limit(limited):
    """A spike reply over max_message_bytes as float32 but under it as bits goes through with bitpacked=True."""
    net = rb.Sequential(nn.Upsample(scale_factor=64.0), snn.LIF())  # 32,768 bytes of spikes as float32, 1,024 as bits
    target, reference = (limited.create_session(net, (1, 16), batch_size=4) for _ in range(2))
    x = np.random.default_rng(0).random((2, 4, 1, 16), dtype=np.float32) * 4
    out = target.run(x, bitpacked=True)
    assert out.sum() > 0
    assert np.array_equal(out, np.concatenate([reference.run(x[:1]), reference.run(x[1:])]))
