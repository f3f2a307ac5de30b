"""Fuzzing every RPC with malformed requests (hypothesis) through a raw generated stub.

Every request gets OK or a clean canonical error (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
FAILED_PRECONDITION, OUT_OF_RANGE): never UNKNOWN or INTERNAL, and never a hang (each call has a
deadline). Afterwards the server still answers its health check SERVING, and a reference session,
created before the fuzz and named by no request, has the state it had and simulates on exactly as a
local model does.

Requests target a "victim" session, unknown sessions and malformed names, with tensors of wrong
shapes, dtypes, encodings and data lengths, huge and negative sizes, bogus names, random NetworkSpec
trees (mutated valid layers, random types and arguments, broken Network graphs) and random
protobuf wire bytes merged into valid requests. The examples are derandomized: every run sends the
same requests (RNNSIM_FUZZ_SCALE=10 sends ten times as many). Each fuzz test collects every bad
answer, one per method, status and server-side error, before it fails, so that one bug doesn't hide
another; the explicit tests at the end pin the bugs the fuzz found, one input each.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import rnnbuilder as rb
from client import Client
from client.__main__ import health
from rnnbuilder import nn, rnn, snn, spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks as wire
from server import Limits, ServerConfig
from tests.server_fixture import running_server

SERVICE = "rnnbuilder_sim.v1.SimulatorService"
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
TIMEOUT = 10.0
SCALE = float(os.environ.get("RNNSIM_FUZZ_SCALE", "1"))
LIMITS = Limits(
    max_sessions=32,
    max_parameters_per_session=200_000,
    max_state_elements_per_session=200_000,
    max_timesteps_times_batch=20_000,
    max_batch_size=64,
    max_message_bytes=4 << 20,
)
IN_SHAPE, B, OUT = (6,), 2, 4
UNKNOWN = "sessions/0123456789abcdef"
MALFORMED_NAMES = ["", "sessions/", "sessions/a/b", "session/abc", "abc", "sessions/" + "x" * 300, "sessions/\x00"]


def network():
    """A recurrent spiking network (a placeholder cycle): the victim's and the reference's."""
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(12), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(OUT), snn.LIF())
    return n


def spiky_input(seed: int, timesteps: int) -> np.ndarray:
    return np.random.default_rng(seed).random((timesteps, B, *IN_SHAPE), dtype=np.float32) * 4


# The server, the victim the requests target and the reference none of them names


@pytest.fixture(scope="module")
def address():
    with running_server(ServerConfig(device="cpu", workers=2, limits=LIMITS)) as (address, _):
        yield address


@pytest.fixture(scope="module")
def stub(address):
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.SimulatorServiceStub(channel)


class Reference:
    """A session that no fuzzed request names, mirrored by a local model and its state."""

    def __init__(self, client: Client):
        self.session = client.create_session(network(), IN_SHAPE, batch_size=B, seed=3)
        self.model = self.session.to_local()
        self.parameters = {k: v.numpy().copy() for k, v in self.model.state_dict().items()}
        self.state, self.timesteps, self.spikes = None, 0, 0.0
        self.advance()
        assert self.spikes > 0

    def advance(self) -> None:
        """Run 5 timesteps remotely and locally: the outputs are equal."""
        x = spiky_input(seed=self.timesteps, timesteps=5)
        out = self.session.run(x)
        self.timesteps += 5
        with torch.no_grad():
            want, self.state = self.model(torch.from_numpy(x), self.state)
        assert np.array_equal(out, want.numpy()), "the reference session no longer simulates as the local model"
        self.spikes += out.sum()

    def assert_undisturbed(self) -> None:
        """Same state, parameters and timestep count as the local mirror; then it still runs."""
        remote, local = self.session.get_state(), {k: v.numpy() for k, v in rb.named_leaves(self.state).items()}
        assert remote.keys() == local.keys()
        assert all(np.array_equal(remote[k], local[k]) for k in local), "the reference session's state changed"
        params = self.session.parameters()
        assert all(np.array_equal(params[k], v) for k, v in self.parameters.items())
        assert self.session.refresh().timesteps_simulated == self.timesteps
        self.advance()


@pytest.fixture(scope="module")
def reference(address):
    with Client(address) as c:
        yield Reference(c)


class Victim:
    """The session the fuzzed requests target, with what valid requests to it look like."""

    def __init__(self, client: Client):
        s = client.create_session(network(), IN_SHAPE, batch_size=B, seed=5)
        s.run(spiky_input(seed=1, timesteps=4))
        s.train_step(spiky_input(seed=2, timesteps=4), np.array([0, 3]), carry="start")  # optimizer and carry
        self.name, self.id = s.name, s.id
        self.recordable = s.recordable_layers
        self.state_shapes = {k: v.shape for k, v in s.get_state().items()}
        self.parameter_shapes = {k: v.shape for k, v in s.parameters().items()}
        self.snapshot = pb.SessionSnapshot.FromString(s.save())


@pytest.fixture(scope="module")
def victim(address, reference):
    with Client(address) as c:
        return Victim(c)


@pytest.fixture(scope="module")
def server_errors():
    """Server-side errors logged (with their exception) while the module's requests ran."""
    handler = _ErrorLog()
    logger = logging.getLogger("rnnsim")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class _ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        self.lines.append(f"{type(error).__name__}: {error}" if error else record.getMessage())


# Sending, and collecting bad answers

STREAMING = {
    m.name: (m.client_streaming, m.server_streaming) for m in pb.DESCRIPTOR.services_by_name["SimulatorService"].methods
}


def answer(stub, method: str, request, timeout: float = TIMEOUT) -> tuple[grpc.StatusCode, str]:
    """The status of one call (a stream is read to its end), within ``timeout`` seconds."""
    try:
        reply = getattr(stub, method)(iter(request) if STREAMING[method][0] else request, timeout=timeout)
        if STREAMING[method][1]:
            for _ in reply:
                pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details() or ""


class Findings:
    """Bad answers, the smallest request kept for each method, status and server-side error."""

    def __init__(self, stub, errors: _ErrorLog):
        self.stub, self.errors, self.found = stub, errors, {}
        self.counts: collections.Counter = collections.Counter()  # (method, status): how deep the fuzz got

    def send(self, method: str, request, shown=None) -> grpc.StatusCode:
        """Send ``request``; a bad answer is kept with ``shown`` (default: the request) as its cause."""
        logged = len(self.errors.lines)
        code, details = answer(self.stub, method, request)
        self.counts[method, code.name] += 1
        if code not in CLEAN:
            cause = "; ".join(self.errors.lines[logged:]) or details
            key = (method, code.name, cause[:160])
            shown = request if shown is None else shown
            size = sum(r.ByteSize() for r in shown) if isinstance(shown, list) else shown.ByteSize()
            if key not in self.found or size < self.found[key][0]:
                self.found[key] = (size, shown)
        return code

    def report(self) -> str:
        lines = [f"{len(self.found)} bad answers; all answers: {dict(self.counts)}"]
        for (method, code, cause), (_, request) in sorted(self.found.items()):
            shown = " | ".join(str(r) for r in request) if isinstance(request, list) else str(request)
            shown = " ".join(shown.split())
            lines.append(f"- {method} -> {code} ({cause}); request: {shown[:700]}")
        return "\n".join(lines)


def fuzz(findings: Findings, strategy, examples: int, send) -> None:
    """Draw ``examples`` values of ``strategy`` and ``send(findings, value)`` each."""

    @settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value):
        send(findings, value)

    run()


@pytest.fixture
def findings(stub, server_errors):
    return Findings(stub, server_errors)


def assert_unharmed(address: str, reference: Reference) -> None:
    assert health(address, "", 10.0) == "SERVING"
    assert health(address, SERVICE, 10.0) == "SERVING"
    reference.assert_undisturbed()


# Strategies: values


def rarely(draw, n: int) -> bool:
    """True about once in ``n`` draws (hypothesis favours the ends of a range, so not 0 or n - 1)."""
    return draw(st.integers(0, n - 1)) == n // 2


SIZES = [-(2**63), -(2**31), -1, 0, 1, 2, 3, 4, 8, 2**31 - 1, 2**62, 2**63 - 1]
ints = st.one_of(st.integers(-2, 8), st.sampled_from(SIZES))
uint32s = st.sampled_from([0, 1, 2, 3, 4, 5, 2**31, 2**32 - 1])
floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 0.5, 1.0, 2.0, 1e30])
DTYPES = sorted(pb.DataType.values())
ENCODINGS = sorted(pb.TensorEncoding.values())
NUMPY = {
    pb.DATA_TYPE_FLOAT32: "<f4",
    pb.DATA_TYPE_FLOAT64: "<f8",
    pb.DATA_TYPE_FLOAT16: "<f2",
    pb.DATA_TYPE_BFLOAT16: "<u2",
    pb.DATA_TYPE_INT64: "<i8",
    pb.DATA_TYPE_INT32: "<i4",
    pb.DATA_TYPE_INT16: "<i2",
    pb.DATA_TYPE_INT8: "i1",
    pb.DATA_TYPE_UINT8: "u1",
    pb.DATA_TYPE_BOOL: "?",
}


def _data_bytes(shape, dtype: int, encoding: int) -> int | None:
    """The data length a well-formed tensor of this shape, dtype and encoding has; None if none does."""
    if dtype not in NUMPY or any(d < 0 for d in shape) or encoding not in ENCODINGS:
        return None
    count = math.prod(shape)
    return (count + 7) // 8 if encoding == pb.TENSOR_ENCODING_BITPACKED else count * np.dtype(NUMPY[dtype]).itemsize


@st.composite
def tensors(draw, like=None, dtype=None):
    """A Tensor: of shape ``like`` (mostly well-formed, as float32 unless ``dtype`` says otherwise) or of
    a random shape, with a random dtype, encoding, data length and data."""
    shape = list(like) if like is not None and not rarely(draw, 4) else draw(st.lists(ints, max_size=5))
    if like is not None and rarely(draw, 3):
        dtype = draw(st.sampled_from([*DTYPES, 11, 99]))
    dtype = pb.DATA_TYPE_FLOAT32 if dtype is None else dtype
    encoding = draw(st.sampled_from([*ENCODINGS, 3, -1])) if rarely(draw, 4) else pb.TENSOR_ENCODING_RAW
    exact = _data_bytes(shape, dtype, encoding)
    if exact is not None and exact <= 1 << 16 and not rarely(draw, 4):
        length = max(0, exact + draw(st.sampled_from([-1, 1, -exact]))) if rarely(draw, 5) else exact
    else:
        length = draw(st.integers(0, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(["labels", "bytes", "zeros", "nan"])) if rarely(draw, 3) else "values"
    if fill in ("values", "labels", "nan") and dtype in NUMPY and encoding != pb.TENSOR_ENCODING_BITPACKED:
        item = np.dtype(NUMPY[dtype]).itemsize
        values = rng.random(length // item + 1) * (OUT if fill == "labels" else 4)
        if fill == "nan":
            values[0] = math.nan
        with np.errstate(invalid="ignore", over="ignore"):  # NaN or 4.0 into an int or bool: any bits will do
            data = values.astype(NUMPY[dtype]).tobytes()[:length]
        data += bytes(length - len(data))
    else:
        data = rng.bytes(length) if fill != "zeros" else bytes(length)
    return pb.Tensor(dtype=dtype, shape=shape, data=data, encoding=encoding)


@st.composite
def names(draw, victim: Victim):
    """Session names: mostly the victim's; else unknown, malformed or random."""
    if not rarely(draw, 3):
        return victim.name
    return draw(
        st.one_of(
            st.sampled_from([UNKNOWN, victim.name + "0", victim.name.upper(), *MALFORMED_NAMES]),
            st.text(max_size=12).map(lambda s: "sessions/" + s),
        )
    )


def chunk_shapes(draw):
    return (draw(st.sampled_from([1, 1, 2, 3])), B, *IN_SHAPE)


@st.composite
def inputs(draw, dtype=None):
    """An input chunk for the victim, (t, B, *IN_SHAPE) or wrong."""
    return draw(tensors(like=chunk_shapes(draw), dtype=dtype))


# Strategies: networks

FEATURES = (8,)
LAYERS = {  # input shape -> layers that take it, with every argument written out
    FEATURES: [
        nn.Linear(8),
        snn.LIF(),
        snn.Adaptive(),
        snn.Cooldown(),
        snn.NoReset(),
        snn.Discontinuous(),
        rnn.LSTM(8),
        rnn.GRU(8),
        nn.Softmax(),
        nn.LogSoftmax(),
        nn.LayerNorm(),
        nn.Dropout(),
        nn.Hardtanh(),
        nn.LeakyReLU(),
        nn.Softplus(),
        nn.Unflatten(0, (2, 4)),
        nn.Flatten(),
    ],
    (2, 8): [
        nn.Conv1d(4, 3),
        nn.ConvTranspose1d(2, 3),
        nn.MaxPool1d(2),
        nn.AvgPool1d(2),
        nn.AdaptiveAvgPool1d(4),
        nn.Upsample(scale_factor=2.0),
        nn.GroupNorm(2),
        nn.BatchNorm1d(),
        snn.LIF(),
        nn.Flatten(),
    ],
    (2, 6, 6): [
        nn.Conv2d(3, 3),
        nn.ConvTranspose2d(2, 3),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(3),
        nn.AdaptiveMaxPool2d(3),
        nn.Dropout2d(),
        nn.BatchNorm2d(),
        rnn.TempConvPlus2d(2, 3, 2),
        snn.Adaptive(),
        nn.Flatten(),
    ],
    (1, 2, 4, 4): [nn.Conv3d(2, 2), snn.LIF(), nn.Flatten()],
}
TEMPLATES = {shape: list(wire.factory_to_message(rb.Sequential(*ls)).root.factories) for shape, ls in LAYERS.items()}
LAYER_TYPES: dict[str, tuple] = {}  # each type once: (an input shape it takes, its template)
for _shape, _factories in TEMPLATES.items():
    for _factory in _factories:
        LAYER_TYPES.setdefault(_factory.type, (_shape, _factory))
FACTORY_TYPES = [t for t in spec.default_registry.factory_names() if t not in ("Sequential", "Network")]
SURROGATE_TYPES = spec.default_registry.surrogate_names()
ARG_NAMES = sorted({key for fs in TEMPLATES.values() for f in fs for key in f.args} | {"nope", ""})

values = st.recursive(
    st.one_of(
        st.builds(pb.Value, bool_value=st.booleans()),
        st.builds(pb.Value, int_value=ints),
        st.builds(pb.Value, number_value=floats),
        st.builds(pb.Value, string_value=st.sampled_from(["", "nearest", "bilinear", "tanh", "none", "nope"])),
        st.builds(pb.Value, null_value=st.booleans()),
        st.just(pb.Value()),  # nothing set
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda vs: pb.Value(list_value=pb.ValueList(values=vs))),
        st.builds(
            lambda t, args: pb.Value(factory_value=pb.Factory(type=t, args=args)),
            st.sampled_from([*SURROGATE_TYPES, "snn.LIF", "nope"]),
            st.dictionaries(st.sampled_from(ARG_NAMES), inner, max_size=2),
        ),
    ),
    max_leaves=6,
)


@st.composite
def similar_values(draw, value: pb.Value):
    """A value of the kind ``value`` has (an int, a size tuple, a number...) that may be out of range."""
    kind = value.WhichOneof("kind")
    if kind == "int_value" and not rarely(draw, 4):
        return pb.Value(int_value=draw(ints))
    if kind in ("int_value", "list_value"):
        return pb.Value(
            list_value=pb.ValueList(values=[pb.Value(int_value=i) for i in draw(st.lists(ints, max_size=4))])
        )
    if kind == "number_value":
        return pb.Value(number_value=draw(st.one_of(floats, st.floats(-10, 10))))
    if kind == "string_value":
        return pb.Value(string_value=draw(st.sampled_from(["", "nearest", "bilinear", "linear", "tanh", "none", "x"])))
    return draw(values)


def mutate_arguments(draw, factory: pb.Factory, count: int) -> None:
    """Replace ``count`` arguments (mostly its own, with values of their kind), or drop one."""
    for _ in range(count):
        if factory.args and rarely(draw, 8):
            del factory.args[draw(st.sampled_from(sorted(factory.args)))]
        elif factory.args and not rarely(draw, 4):
            key = draw(st.sampled_from(sorted(factory.args)))
            factory.args[key].CopyFrom(draw(values if rarely(draw, 4) else similar_values(factory.args[key])))
        else:
            factory.args[draw(st.sampled_from(ARG_NAMES))].CopyFrom(draw(values))


@st.composite
def layer_factories(draw, shape):
    """Mostly a layer that takes ``shape`` with some arguments replaced, added or dropped; else any
    registered (or unknown) type with random arguments."""
    if not rarely(draw, 6):
        factory = pb.Factory()
        factory.CopyFrom(draw(st.sampled_from(TEMPLATES[shape])))
        mutate_arguments(draw, factory, draw(st.sampled_from([0, 1, 1, 2])))
        return factory
    kind = draw(st.sampled_from([*FACTORY_TYPES, *SURROGATE_TYPES, "", "nope", "Sequential", "Network"]))
    return pb.Factory(type=kind, args=draw(st.dictionaries(st.sampled_from(ARG_NAMES), values, max_size=3)))


@st.composite
def sequentials(draw, shape):
    factories = draw(st.lists(layer_factories(shape), min_size=0 if rarely(draw, 6) else 1, max_size=3))
    if rarely(draw, 6):
        factories.append(pb.Factory(type="Sequential", factories=draw(st.lists(layer_factories(shape), max_size=2))))
    return pb.Factory(type="Sequential", factories=factories)


RECURRENT = wire.factory_to_message(network()).root


@st.composite
def graphs(draw, shape):
    """A Network: the recurrent one with nodes, indices and names broken, or random nodes."""
    root = pb.Factory()
    if draw(st.booleans()):
        root.CopyFrom(RECURRENT)
        for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
            node = root.layers[draw(st.integers(0, len(root.layers) - 1))]
            edit = draw(st.sampled_from(["index", "clear", "placeholder", "factories", "names", "append"]))
            if edit == "index":
                kind = node.WhichOneof("kind")
                if kind == "layer":
                    node.layer.input_index = draw(uint32s)
                elif kind == "placeholder":
                    node.placeholder.layer_index = draw(uint32s)
                elif kind in ("stack", "sum", "list"):
                    _replace(getattr(node, kind).input_indices, draw(st.lists(uint32s, max_size=3)))
            elif edit == "clear":
                node.Clear()
            elif edit == "placeholder":
                node.placeholder.hint = draw(st.text(max_size=8))
                which = draw(st.sampled_from(["zeros", "ones", "constant", "none"]))
                if which == "constant":
                    node.placeholder.initial_value.constant = draw(floats)
                elif which != "none":
                    setattr(node.placeholder.initial_value, which, draw(st.booleans()))
            elif edit == "factories" and node.WhichOneof("kind") == "layer":
                _replace(node.layer.factories, draw(st.lists(layer_factories(FEATURES), max_size=2)))
            elif edit == "names":
                layer_names = st.builds(
                    pb.LayerName,
                    name=st.sampled_from(["output", "hidden", "input", "", "x y", "1a"]),
                    node_index=uint32s,
                )
                _replace(root.names, draw(st.lists(layer_names, max_size=3)))
            else:
                root.layers.append(draw(nodes(shape)))
        return root
    root.type = "Network"
    root.layers.extend(draw(st.lists(nodes(shape), max_size=5)))
    root.names.extend(
        draw(
            st.lists(st.builds(pb.LayerName, name=st.sampled_from(["output", "a", ""]), node_index=uint32s), max_size=2)
        )
    )
    return root


def _replace(repeated, items) -> None:
    del repeated[:]
    repeated.extend(items)


@st.composite
def nodes(draw, shape):
    kind = draw(st.sampled_from(["input", "layer", "stack", "sum", "list", "placeholder", "empty"]))
    if kind == "input":
        return pb.Node(input=pb.InputNode())
    if kind == "layer":
        factories = draw(st.lists(layer_factories(shape), max_size=2))
        return pb.Node(layer=pb.LayerNode(input_index=draw(uint32s), factories=factories))
    if kind == "placeholder":
        return pb.Node(placeholder=pb.PlaceholderNode(layer_index=draw(uint32s), hint=draw(st.text(max_size=6))))
    if kind == "empty":
        return pb.Node()
    return pb.Node(**{kind: pb.CombineNode(input_indices=draw(st.lists(uint32s, max_size=3)))})


@st.composite
def network_specs(draw, shape):
    """A NetworkSpec for inputs of ``shape``, or none at all."""
    if rarely(draw, 12):
        return pb.NetworkSpec()
    if rarely(draw, 10):
        return pb.NetworkSpec(root=draw(layer_factories(shape)))
    return pb.NetworkSpec(root=draw(graphs(shape) if rarely(draw, 3) else sequentials(shape)))


def without_known_hangs(message) -> None:
    """Caps num_layers: a huge one makes CreateSession hang (see test_huge_num_layers_is_refused_promptly)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = value if field.is_repeated else [value]
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if key == "num_layers" and item.WhichOneof("kind") == "int_value" and item.int_value > 3:
                    item.int_value = 3
                without_known_hangs(item)
            continue
        for item in items:
            without_known_hangs(item)


@st.composite
def create_requests(draw):
    shape = draw(st.sampled_from(sorted(LAYERS)))
    input_shape = list(shape) if not rarely(draw, 8) else draw(st.lists(ints, max_size=4))
    session = pb.Session(
        network=draw(network_specs(shape)),
        input_shape=input_shape,
        batch_size=draw(ints) if rarely(draw, 6) else draw(st.integers(1, 3)),
        seed=draw(ints),
    )
    if rarely(draw, 6):  # output-only fields, which the server ignores
        session.name, session.timesteps_simulated, session.device = UNKNOWN, draw(ints), "cuda:7"
    if not session.network.HasField("root") and draw(st.booleans()):
        session.ClearField("network")
    without_known_hangs(session)
    return pb.CreateSessionRequest(session=session)


@st.composite
def layer_requests(draw, shape, template: pb.Factory):
    """CreateSession of ``template`` (a layer that takes ``shape``) with 1-2 arguments replaced."""
    factory = pb.Factory()
    factory.CopyFrom(template)
    mutate_arguments(draw, factory, 2 if rarely(draw, 4) else 1)
    without_known_hangs(factory)
    network = pb.NetworkSpec(root=pb.Factory(type="Sequential", factories=[factory]))
    return pb.CreateSessionRequest(session=pb.Session(network=network, input_shape=shape, batch_size=B, seed=1))


# Strategies: requests of the other RPCs

LOSSES = ["ce_count", "ce_sum", "ce_last", "ce_per_step", "mse_rate", "mse", "", "nope"]


@st.composite
def training_configs(draw):
    """Mostly a valid loss and optimizer; now and then a bogus name or a bad number."""

    def number(good: float) -> float:
        return draw(floats) if rarely(draw, 4) else good

    optimizer = pb.OptimizerConfig(
        name=draw(st.sampled_from(["", "adam", "adamw", "sgd", "nope"])),
        learning_rate=number(1e-3),
        weight_decay=number(0.0),
        momentum=number(0.0),
    )
    return pb.TrainingConfig(loss=draw(st.sampled_from(LOSSES)), optimizer=optimizer, grad_clip_norm=number(1.0))


@st.composite
def odd_or(draw, usual, odd, one_in: int = 4):
    """A value of ``odd`` about once in ``one_in``, else of ``usual``."""
    return draw(odd if rarely(draw, one_in) else usual)


@st.composite
def maybe(draw, strategy, missing_one_in: int = 6):
    """A value of ``strategy``, or None (the field unset) about once in ``missing_one_in``."""
    return None if rarely(draw, missing_one_in) else draw(strategy)


def target_shapes(batch_like):
    return st.sampled_from([(batch_like,), (2, batch_like), (batch_like, OUT), (2, batch_like, OUT), (), (OUT,)])


@st.composite
def targets(draw, batch_like=B):
    dtype = draw(st.sampled_from([pb.DATA_TYPE_INT64, pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_INT32, pb.DATA_TYPE_BOOL]))
    return draw(tensors(like=draw(target_shapes(batch_like)), dtype=dtype))


@st.composite
def named_tensors(draw, given):
    """``given`` NamedTensors (or ``{name: shape}``, filled with well-formed values), with 0-2 of them
    dropped, doubled, renamed or replaced by a random tensor, or a stray one added."""
    if isinstance(given, dict):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        given = [pb.NamedTensor(name=k, tensor=_float_tensor(rng.random(s) * 2 - 1)) for k, s in given.items()]
    items = list(given)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        edit = draw(st.sampled_from(["drop", "double", "rename", "replace", "replace", "add"]))
        if edit == "add" or not items:
            items.append(pb.NamedTensor(name=draw(st.sampled_from(["", "nope", "1.v"])), tensor=draw(tensors())))
            continue
        i = draw(st.integers(0, len(items) - 1))
        if edit == "drop":
            items.pop(i)
        elif edit == "double":
            items.append(items[i])
        elif edit == "rename":
            items[i] = pb.NamedTensor(
                name=items[i].name + draw(st.sampled_from(["x", ".", " "])), tensor=items[i].tensor
            )
        else:
            tensor = draw(tensors(like=tuple(items[i].tensor.shape), dtype=items[i].tensor.dtype))
            items[i] = pb.NamedTensor(name=items[i].name, tensor=tensor)
    return items


def _float_tensor(array: np.ndarray) -> pb.Tensor:
    return pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=array.shape, data=array.astype("<f4").tobytes())


def run_requests(victim: Victim):
    return st.builds(
        pb.RunRequest,
        name=names(victim),
        input=maybe(inputs()),
        record_layers=st.lists(st.sampled_from([*victim.recordable, "", "nope", "output.9"]), max_size=3),
        output_encoding=st.sampled_from([*ENCODINGS, 7]),
    )


@st.composite
def simulate_streams(draw, victim: Victim):
    first = draw(names(victim))
    chunks = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(names(victim)) if rarely(draw, 5) else first
        chunks.append(
            pb.SimulateRequest(
                name=name,
                input=draw(maybe(inputs(), missing_one_in=12)),
                record_layers=draw(st.lists(st.sampled_from([*victim.recordable, "nope"]), max_size=2)),
                output_encoding=draw(st.sampled_from([*ENCODINGS, 7])),
            )
        )
    return chunks


def train_step_requests(victim: Victim):
    return st.builds(
        pb.TrainStepRequest,
        name=names(victim),
        input=maybe(inputs()),
        targets=maybe(targets()),
        config=training_configs(),
        carry=odd_or(st.sampled_from([0, 1, 2, 3]), st.sampled_from([4, -1])),
    )


@st.composite
def datasets(draw):
    samples = draw(st.sampled_from([1, 3, 4]))
    x = draw(tensors(like=(samples, draw(st.sampled_from([1, 3])), *IN_SHAPE)))
    return x, draw(targets(batch_like=samples))


@st.composite
def train_requests(draw, victim: Victim):
    x, y = draw(datasets())
    request = pb.TrainRequest(
        name=draw(names(victim)),
        inputs=x,
        targets=y,
        config=draw(training_configs()),
        epochs=draw(odd_or(st.sampled_from([1, 2]), st.sampled_from([-1, 0]))),
        batch_size=draw(odd_or(st.sampled_from([1, 2, 3]), st.sampled_from([-1, 0, 2**31 - 1]))),
        keep_order=draw(st.booleans()),
        tbptt_steps=draw(odd_or(st.sampled_from([0, 1, 2]), st.sampled_from([-1, 2**31 - 1]))),
    )
    if draw(st.booleans()):
        vx, vy = draw(datasets())
        request.validation_inputs.CopyFrom(vx)
        if not rarely(draw, 4):
            request.validation_targets.CopyFrom(vy)
    return request


@st.composite
def evaluate_requests(draw, victim: Victim):
    x, y = draw(datasets())
    return pb.EvaluateRequest(
        name=draw(names(victim)),
        inputs=x,
        targets=y,
        loss=draw(st.sampled_from(LOSSES)),
        batch_size=draw(odd_or(st.sampled_from([0, 1, 2]), st.sampled_from([-(2**31), -1, 2**31 - 1]))),
    )


@st.composite
def import_requests(draw, victim: Victim):
    """The victim's snapshot with 1-3 parts replaced, dropped or broken."""
    snapshot = pb.SessionSnapshot()
    snapshot.CopyFrom(victim.snapshot)
    for _ in range(draw(st.sampled_from([1, 1, 2]))):
        edit = draw(
            st.sampled_from(
                [
                    "network",
                    "no_network",
                    "input_shape",
                    "batch_size",
                    "seed",
                    "timesteps",
                    "carried_batch",
                    "parameters",
                    "state",
                    "carried",
                    "random_state",
                    "optimizer",
                    "optimizer_tensors",
                    "no_optimizer",
                ]
            )
        )
        if edit == "network":
            snapshot.network.CopyFrom(draw(network_specs(FEATURES)))
        elif edit == "no_network":
            snapshot.ClearField("network")
        elif edit == "input_shape":
            _replace(snapshot.input_shape, draw(st.lists(ints, max_size=3)))
        elif edit in ("batch_size", "seed"):
            setattr(snapshot, edit, draw(ints))
        elif edit == "timesteps":
            snapshot.timesteps_simulated = draw(ints)
        elif edit == "carried_batch":
            # Not 5..2**31-2: a carried state that big is allocated before it is checked (a memory hazard).
            snapshot.carried_batch_size = draw(st.sampled_from([-(2**63), -3, -1, 0, 1, 3, 4, 2**62]))
        elif edit in ("parameters", "state", "carried"):
            field = getattr(snapshot, {"carried": "carried_state"}.get(edit, edit))
            _replace(field, draw(named_tensors(list(field))))
        elif edit == "random_state":
            snapshot.random_state.CopyFrom(
                draw(tensors(like=tuple(snapshot.random_state.shape), dtype=pb.DATA_TYPE_UINT8))
            )
        elif edit == "optimizer":
            snapshot.optimizer.config.CopyFrom(draw(training_configs()).optimizer)
        elif edit == "optimizer_tensors":
            _replace(snapshot.optimizer.tensors, draw(named_tensors(list(snapshot.optimizer.tensors))))
        else:
            snapshot.ClearField("optimizer")
    without_known_hangs(snapshot)
    return pb.ImportSessionRequest(snapshot=snapshot)


# Strategies: random protobuf wire bytes


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def wire_fields(draw, depth: int = 2):
    """Random protobuf fields (numbers 1-12, every wire type), nested messages included."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        number, kind = draw(st.integers(1, 12)), draw(st.sampled_from([0, 0, 1, 2, 2, 2, 5]))
        if kind == 0:
            payload = _varint(draw(st.sampled_from([*SIZES, 5, 7, 11, 99])))
        elif kind in (1, 5):
            payload = draw(st.binary(min_size=8 if kind == 1 else 4, max_size=8 if kind == 1 else 4))
        else:
            body = draw(
                st.one_of(
                    st.text(max_size=12).map(str.encode),
                    wire_fields(depth - 1) if depth else st.binary(max_size=8),
                    st.binary(max_size=12),
                )
            )
            payload = _varint(len(body)) + body
        out += _varint(number << 3 | kind) + payload
    return out


def valid_requests(victim: Victim) -> dict:
    """A valid request of every method, for the victim where it names a session."""
    x = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=(2, B, *IN_SHAPE), data=spiky_input(seed=7, timesteps=2).tobytes())
    dataset = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=(B, 2, *IN_SHAPE), data=x.data)
    labels = pb.Tensor(dtype=pb.DATA_TYPE_INT64, shape=(B,), data=np.array([1, 2], "<i8").tobytes())
    name = victim.name
    return {
        "GetServerInfo": pb.GetServerInfoRequest(),
        "CreateSession": pb.CreateSessionRequest(
            session=pb.Session(network=wire.factory_to_message(network()), input_shape=IN_SHAPE, batch_size=B)
        ),
        "GetSession": pb.GetSessionRequest(name=name),
        "ListSessions": pb.ListSessionsRequest(page_size=2),
        "DeleteSession": pb.DeleteSessionRequest(name=UNKNOWN),
        "ResetState": pb.ResetStateRequest(name=name, batch_indices=[1]),
        "GetState": pb.GetStateRequest(name=name),
        "SetState": pb.SetStateRequest(
            name=name, tensors=[pb.NamedTensor(name=k, tensor=_zeros(s)) for k, s in victim.state_shapes.items()]
        ),
        "GetParameters": pb.GetParametersRequest(name=name),
        "SetParameters": pb.SetParametersRequest(
            name=name, parameters=[pb.NamedTensor(name=k, tensor=_zeros(s)) for k, s in victim.parameter_shapes.items()]
        ),
        "Run": pb.RunRequest(name=name, input=x),
        "Simulate": pb.SimulateRequest(name=name, input=x),
        "TrainStep": pb.TrainStepRequest(name=name, input=x, targets=labels),
        "Train": pb.TrainRequest(name=name, inputs=dataset, targets=labels, epochs=1, batch_size=2),
        "Evaluate": pb.EvaluateRequest(name=name, inputs=dataset, targets=labels),
        "ExportSession": pb.ExportSessionRequest(name=name),
        "ImportSession": pb.ImportSessionRequest(snapshot=victim.snapshot),
    }


def _zeros(shape) -> pb.Tensor:
    return pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, data=bytes(4 * math.prod(shape)))


# Sending, and cleaning up what the accepted requests created


def send_create(findings: Findings, request) -> None:
    """CreateSession; a session it creates gets one Run of ones (its network must run), then is deleted."""
    stub = findings.stub
    try:
        created = stub.CreateSession(request, timeout=TIMEOUT).session
    except grpc.RpcError:
        findings.send("CreateSession", request)  # again, to record its status
        return
    try:
        shape = (1, created.batch_size, *created.input_shape)
        if math.prod(shape) <= 100_000:
            x = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, data=np.ones(shape, "<f4").tobytes())
            findings.send("Run", pb.RunRequest(name=created.name, input=x), shown=request)  # shown with its network
    finally:
        _delete(stub, created.name)


def send_import(findings: Findings, request) -> None:
    try:
        created = findings.stub.ImportSession(request, timeout=TIMEOUT).session
    except grpc.RpcError:
        findings.send("ImportSession", request)
        return
    _delete(findings.stub, created.name)


def _delete(stub, name: str) -> None:
    try:
        stub.DeleteSession(pb.DeleteSessionRequest(name=name), timeout=TIMEOUT)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error


def sender(method: str):
    return lambda findings, request: findings.send(method, request)


# The fuzz


def test_fuzzed_create_session_gets_clean_statuses(address, reference, victim, findings):
    """CreateSession with random networks, graphs, shapes and sizes: clean statuses, and what it creates runs."""
    fuzz(findings, create_requests(), 30, send_create)

    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_layer_arguments_get_clean_statuses(address, reference, victim, findings):
    """Every layer type with 1-2 arguments out of range or of another kind: clean statuses, and it runs if created."""
    for shape, template in LAYER_TYPES.values():
        fuzz(findings, layer_requests(shape, template), 3, send_create)
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_import_session_gets_clean_statuses(address, reference, victim, findings):
    """ImportSession of broken snapshots: clean statuses."""
    fuzz(findings, import_requests(victim), 15, send_import)
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_run_gets_clean_statuses(address, reference, victim, findings):
    """Run with wrong shapes, dtypes, encodings, data lengths and record layers: clean statuses."""
    fuzz(findings, run_requests(victim), 20, sender("Run"))
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_simulate_streams_get_clean_statuses(address, reference, victim, findings):
    """Simulate streams of malformed chunks, or chunks naming different sessions: clean statuses."""
    fuzz(findings, simulate_streams(victim), 12, sender("Simulate"))
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_training_gets_clean_statuses(address, reference, victim, findings):
    """TrainStep, Train and Evaluate with malformed data, targets, losses and optimizers: clean statuses."""
    fuzz(findings, train_step_requests(victim), 15, sender("TrainStep"))
    fuzz(findings, train_requests(victim), 8, sender("Train"))
    fuzz(findings, evaluate_requests(victim), 8, sender("Evaluate"))
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_state_and_parameters_get_clean_statuses(address, reference, victim, findings):
    """SetState, SetParameters and ResetState with broken names, shapes, dtypes and indices: clean statuses."""
    state = st.builds(pb.SetStateRequest, name=names(victim), tensors=named_tensors(victim.state_shapes))
    parameters = st.builds(
        pb.SetParametersRequest, name=names(victim), parameters=named_tensors(victim.parameter_shapes)
    )
    resets = st.builds(pb.ResetStateRequest, name=names(victim), batch_indices=st.lists(ints, max_size=3))
    fuzz(findings, state, 10, sender("SetState"))
    fuzz(findings, parameters, 10, sender("SetParameters"))
    fuzz(findings, resets, 6, sender("ResetState"))
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_names_and_pages_get_clean_statuses(address, reference, victim, findings):
    """Session names (get, state, parameters, export, delete) and ListSessions pages: clean statuses."""
    by_name = st.tuples(
        st.sampled_from(["GetSession", "GetState", "GetParameters", "ExportSession", "DeleteSession"]),
        st.one_of(st.sampled_from([UNKNOWN, *MALFORMED_NAMES]), st.text(max_size=16).map(lambda s: "sessions/" + s)),
    )
    requests = {
        "GetSession": pb.GetSessionRequest,
        "GetState": pb.GetStateRequest,
        "GetParameters": pb.GetParametersRequest,
        "ExportSession": pb.ExportSessionRequest,
        "DeleteSession": pb.DeleteSessionRequest,
    }
    pages = st.builds(
        pb.ListSessionsRequest,
        page_size=st.sampled_from([-(2**31), -1, 0, 1, 2, 2**31 - 1]),
        page_token=st.one_of(st.sampled_from(["", victim.id, UNKNOWN]), st.text(max_size=10)),
    )
    fuzz(findings, by_name, 10, lambda f, pair: f.send(pair[0], requests[pair[0]](name=pair[1])))
    fuzz(findings, pages, 6, sender("ListSessions"))
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


def test_fuzzed_wire_bytes_get_clean_statuses(address, reference, victim, findings):
    """Every RPC with random protobuf fields merged into a valid request: clean statuses."""
    valid = valid_requests(victim)

    def send(f: Findings, drawn) -> None:
        method, tail = drawn
        base = valid[method]
        try:
            request = type(base).FromString(base.SerializeToString() + tail)
        except Exception:  # protobuf's DecodeError: not a message; test_unparseable_request_is_invalid has those
            assume(False)
        if method == "Train":
            request.epochs = min(request.epochs, 2)  # a legitimately long training is no hang
        without_known_hangs(request)
        if method == "CreateSession":
            send_create(f, request)
        elif method == "ImportSession":
            send_import(f, request)
        else:
            f.send(method, [request] if method == "Simulate" else request)

    fuzz(findings, st.tuples(st.sampled_from(sorted(valid)), wire_fields()), 30, send)
    assert not findings.found, findings.report()
    assert_unharmed(address, reference)


# The bugs the fuzz found, one input each


def code_of(stub, method: str, request) -> grpc.StatusCode:
    return answer(stub, method, request)[0]


def created_and_run(stub, layer, input_shape) -> list[grpc.StatusCode]:
    """The status of CreateSession of ``Sequential(layer)``, and of a Run on it if it was created."""
    session = pb.Session(network=wire.factory_to_message(rb.Sequential(layer)), input_shape=input_shape, batch_size=B)
    try:
        created = stub.CreateSession(pb.CreateSessionRequest(session=session), timeout=TIMEOUT).session
    except grpc.RpcError as error:
        return [error.code()]
    x = np.ones((1, B, *input_shape), "<f4")
    request = pb.RunRequest(
        name=created.name, input=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=x.shape, data=x.tobytes())
    )
    codes = [grpc.StatusCode.OK, code_of(stub, "Run", request)]
    _delete(stub, created.name)
    return codes


def test_unparseable_request_is_invalid(address, stub, reference):
    """Request bytes that aren't a valid message get INVALID_ARGUMENT (not UNKNOWN)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/GetSession")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\x03\xff\xfe\xfd", timeout=TIMEOUT)  # field 1 (name): 3 bytes that aren't UTF-8
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert_unharmed(address, reference)


def test_softmax_over_a_missing_dim_is_invalid(stub):
    """A Softmax over a dim the input doesn't have is INVALID_ARGUMENT (at CreateSession or Run), not INTERNAL."""
    codes = created_and_run(stub, nn.Softmax(dim=1), [8])
    assert codes[-1] == grpc.StatusCode.INVALID_ARGUMENT, codes


def test_conv_with_a_padding_of_the_wrong_length_is_invalid(stub):
    """A Conv1d whose padding has 3 sizes for 1 spatial dim is INVALID_ARGUMENT, not INTERNAL."""
    codes = created_and_run(stub, nn.Conv1d(2, kernel_size=1, padding=(1, 1, 1)), [2, 8])
    assert codes[-1] == grpc.StatusCode.INVALID_ARGUMENT, codes


def test_hardtanh_with_min_above_max_is_invalid(stub):
    """A Hardtanh with min_val above max_val is INVALID_ARGUMENT, not INTERNAL."""
    codes = created_and_run(stub, nn.Hardtanh(min_val=7.0), [8])
    assert codes[-1] == grpc.StatusCode.INVALID_ARGUMENT, codes


def test_group_norm_of_zero_groups_is_invalid(stub):
    """A GroupNorm of 0 groups is INVALID_ARGUMENT, not INTERNAL."""
    codes = created_and_run(stub, nn.GroupNorm(0), [2, 8])
    assert codes[-1] == grpc.StatusCode.INVALID_ARGUMENT, codes


@pytest.mark.parametrize(
    "args",
    [
        {"kernel_size": 7},  # larger than the 6 x 6 input: RuntimeError at CreateSession
        {"stride": 0},  # ZeroDivisionError at CreateSession
        {"dilation": 0},  # RuntimeError at Run
        {"out_channels": 2**62},  # "Storage size calculation overflowed" at CreateSession
    ],
    ids=["kernel_over_input", "zero_stride", "zero_dilation", "huge_out_channels"],
)
def test_temporal_conv_with_bad_arguments_is_invalid(stub, args):
    """A TempConvPlus2d with arguments that don't fit its input is refused cleanly, not INTERNAL."""
    layer = rnn.TempConvPlus2d(**{"out_channels": 2, "kernel_size": 3, "time_kernel_size": 2, **args})
    codes = created_and_run(stub, layer, [2, 6, 6])
    assert codes[-1] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), codes


def test_snapshot_with_a_negative_carried_batch_size_is_invalid(stub, victim):
    """ImportSession of a snapshot whose carried_batch_size is negative is INVALID_ARGUMENT, not INTERNAL."""
    snapshot = pb.SessionSnapshot()
    snapshot.CopyFrom(victim.snapshot)
    assert len(snapshot.carried_state) > 0
    snapshot.carried_batch_size = -1
    code = code_of(stub, "ImportSession", pb.ImportSessionRequest(snapshot=snapshot))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_huge_num_layers_is_refused_promptly():
    """CreateSession of an LSTM with 10**6 layers is refused within seconds, not left to hang a worker.

    Runs against a server process, killed afterwards: a hung worker thread can't be stopped in-process.
    """
    address = f"127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", address, "--device", "cpu", "--workers", "2"]
        + ["--metrics-port", "-1", "--checkpoint-dir", "", "--max-parameters-per-session", "200000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while health(address, "", 1.0) != "SERVING":
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        description = spec.to_spec(rb.Sequential(rnn.LSTM(4)))  # the client refuses to make such an LSTM
        description["root"]["factories"][0]["args"]["num_layers"] = 10**6
        session = pb.Session(network=wire.to_message(description), input_shape=[8], batch_size=1)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SimulatorServiceStub(channel)
            code = answer(stub, "CreateSession", pb.CreateSessionRequest(session=session), timeout=5.0)[0]
        assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), code
    finally:
        process.kill()
        process.wait(30)
