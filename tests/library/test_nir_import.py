"""``rnnbuilder.nir.from_nir``: graphs exported by snnTorch 1.0 and Norse 1.1 run as in the library
that exported them; hand-built graphs of every NIR node type give the outputs computed here with
NumPy; files; cycles; and the errors that name what can't be imported.

snnTorch settings that match exactly: ``reset_mechanism="zero"`` (NIR neurons reset to ``v_reset``;
the exporter writes the subtractive reset as a reset to zero, silently) and per-neuron ``beta`` and
``threshold`` tensors (scalars give a graph that fails NIR's type check). Spikes agree for either
``reset_delay``; the membrane agrees with ``reset_delay=False``, which reports it after the reset,
as NIR does (``reset_delay=True`` reports it before). ``RLeaky`` needs ``reset_delay=False``: with
the delayed reset-to-zero it zeroes the whole next update, input included.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnbuilder import GraphError, ShapeError, nn
from rnnbuilder.spec import from_spec, to_spec

nir = pytest.importorskip("nir")
from rnnbuilder.nir import from_nir, input_shape  # noqa: E402  (after the skip: the nir extra is optional)

# snnTorch's exporter calls nirtorch's extract_nir_graph, which warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:nirtorch.extract_nir_graph:DeprecationWarning")

T, B = 25, 3
ATOL = 1e-5


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def drive(shape, seed=0, scale=1.5) -> torch.Tensor:
    """A (time, batch, *shape) input."""
    return torch.rand(T, B, *shape, generator=torch.Generator().manual_seed(seed)) * scale


def run(graph, x: torch.Tensor, dt: float, record=()):
    """The imported graph's output on x, and the recorded layer values."""
    model = from_nir(graph, dt=dt).make_model(tuple(x.shape[2:]))
    with torch.no_grad():
        out, _, recordings = model.record(x, list(record))
    return out, recordings


def chain(*nodes, shape) -> "nir.NIRGraph":
    """Input(shape) -> nodes -> Output, named as ``NIRGraph.from_list`` names them."""
    return nir.NIRGraph.from_list(nir.Input(np.array(shape)), *nodes, type_check=False)


# -- NumPy references: forward Euler, as NIR's equations discretised with one step of dt ---------


def euler(x, dt, *, tau=None, r=1.0, v_leak=0.0, v_threshold=None, v_reset=0.0, tau_syn=None, w_in=1.0):
    """Spikes (or the membrane, for integrators) and membranes of a NIR neuron over x (time, batch, n).

    The current, where there is one, is updated first and drives the membrane in the same step; a
    membrane above ``v_threshold`` spikes and is set to ``v_reset`` in the same step."""
    x = np.asarray(x, dtype=np.float64)
    v, i = np.zeros(x.shape[1:]), np.zeros(x.shape[1:])
    outs, membranes = [], []
    for x_t in x:
        drive = x_t
        if tau_syn is not None:
            i = i + dt / tau_syn * (-i + w_in * x_t)
            drive = i
        v = v + (dt * r * drive if tau is None else dt / tau * (v_leak - v + r * drive))
        if v_threshold is None:
            outs.append(v)
        else:
            s = (v > v_threshold).astype(np.float64)
            v = np.where(s > 0, v_reset, v)
            outs.append(s)
        membranes.append(v)
    return np.stack(outs), np.stack(membranes)


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0), groups=1):
    """x (batch, c, h, w), w (out, c // groups, kh, kw): cross-correlation, as torch and NIR define it."""
    x = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out_c, per_group, kh, kw = w.shape
    h = (x.shape[2] - kh) // stride[0] + 1
    wd = (x.shape[3] - kw) // stride[1] + 1
    y = np.zeros((x.shape[0], out_c, h, wd))
    for o in range(out_c):
        g = o // (out_c // groups)
        for p in range(h):
            for q in range(wd):
                patch = x[:, g * per_group : (g + 1) * per_group, p * stride[0] : p * stride[0] + kh]
                y[:, o, p, q] = (patch[..., q * stride[1] : q * stride[1] + kw] * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def pool2d(x, k, reduce):
    """Non-overlapping k x k pooling of x (..., h, w) with ``reduce`` (np.sum or np.mean)."""
    *lead, h, w = x.shape
    return reduce(x.reshape(*lead, h // k, k, w // k, k), axis=(-3, -1))


# -- hand-built graphs, one per node type ------------------------------------------------------


def test_affine_and_linear_apply_their_weights():
    """Affine gives W x + b and Linear W x, with the graph's weights."""
    rng = np.random.default_rng(0)
    w1, b1, w2 = f32(rng.normal(size=(5, 4))), f32(rng.normal(size=5)), f32(rng.normal(size=(2, 5)))
    x = drive((4,))
    out, _ = run(chain(nir.Affine(w1, b1), nir.Linear(w2), shape=(4,)), x, dt=1.0)
    expected = (x.numpy() @ w1.T + b1) @ w2.T
    np.testing.assert_allclose(out.numpy(), expected, atol=ATOL)


def test_scale_multiplies_each_feature():
    """Scale multiplies feature-wise."""
    x = drive((3,))
    out, _ = run(chain(nir.Scale(f32([2.0, -1.0, 0.5])), shape=(3,)), x, dt=1.0)
    np.testing.assert_allclose(out.numpy(), x.numpy() * [2.0, -1.0, 0.5], atol=ATOL)


def test_conv1d_with_stride_padding_and_groups():
    """Conv1d keeps the graph's weight, bias, stride, padding, dilation and groups."""
    rng = np.random.default_rng(1)
    w, b = f32(rng.normal(size=(4, 1, 3))), f32(rng.normal(size=4))
    node = nir.Conv1d(input_shape=7, weight=w, stride=2, padding=1, dilation=1, groups=2, bias=b)
    x = drive((2, 7))
    out, _ = run(chain(node, shape=(2, 7)), x, dt=1.0)
    flat = x.numpy().reshape(T * B, 2, 1, 7)
    expected = conv2d(flat, w[:, :, None, :], b, stride=(1, 2), padding=(0, 1), groups=2)
    np.testing.assert_allclose(out.numpy(), expected.reshape(T, B, 4, 4), atol=ATOL)


def test_conv2d_with_stride_and_padding():
    """Conv2d keeps the graph's weight, bias, stride and padding."""
    rng = np.random.default_rng(2)
    w, b = f32(rng.normal(size=(3, 2, 3, 3))), f32(rng.normal(size=3))
    node = nir.Conv2d(input_shape=(6, 5), weight=w, stride=(2, 1), padding=(1, 0), dilation=1, groups=1, bias=b)
    x = drive((2, 6, 5))
    out, _ = run(chain(node, shape=(2, 6, 5)), x, dt=1.0)
    expected = conv2d(x.numpy().reshape(T * B, 2, 6, 5), w, b, stride=(2, 1), padding=(1, 0))
    np.testing.assert_allclose(out.numpy(), expected.reshape(T, B, 3, 3, 3), atol=ATOL)


@pytest.mark.parametrize(("node_type", "reduce"), [("SumPool2d", np.sum), ("AvgPool2d", np.mean)])
def test_pooling(node_type, reduce):
    """SumPool2d sums and AvgPool2d averages each window."""
    node = getattr(nir, node_type)(np.array([2, 2]), np.array([2, 2]), np.array([0, 0]))
    x = drive((2, 4, 6))
    out, _ = run(chain(node, shape=(2, 4, 6)), x, dt=1.0)
    np.testing.assert_allclose(out.numpy(), pool2d(x.numpy(), 2, reduce), atol=ATOL)


def test_flatten_counts_data_dims_from_zero():
    """NIR's Flatten(start_dim=1) keeps the channels and flattens the rest."""
    node = nir.Flatten(input_type={"input": np.array([2, 3, 4])}, start_dim=1, end_dim=-1)
    x = drive((2, 3, 4))
    out, _ = run(chain(node, shape=(2, 3, 4)), x, dt=1.0)
    assert torch.equal(out, x.reshape(T, B, 2, 12))


def test_delay_in_time_units_becomes_whole_timesteps():
    """Delay.delay / dt timesteps per neuron, zeros before the first input."""
    dt = 1e-3
    x = drive((3,))
    out, _ = run(chain(nir.Delay(f32([0.0, 2e-3, 5e-3])), shape=(3,)), x, dt=dt)
    expected = np.zeros((T, B, 3), dtype=np.float32)
    for i, steps in enumerate((0, 2, 5)):
        expected[steps:, :, i] = x.numpy()[: T - steps, :, i]
    assert np.array_equal(out.numpy(), expected)


def test_delay_that_is_no_whole_number_of_timesteps_is_refused():
    """A delay of 1.5 timesteps is an error naming the node."""
    graph = chain(nir.Delay(f32([1.5e-3])), shape=(1,))
    with pytest.raises(GraphError, match=r"'delay'.*whole number of timesteps"):
        from_nir(graph, dt=1e-3)


def test_threshold_spikes_above_it():
    """Threshold gives H(x - threshold) per neuron."""
    x = drive((3,))
    out, _ = run(chain(nir.Threshold(f32([0.2, 0.7, 1.2])), shape=(3,)), x, dt=1.0)
    assert torch.equal(out, (x > torch.tensor([0.2, 0.7, 1.2])).float())


NEURONS = {  # NIR node -> the keyword arguments of ``euler`` for its parameters
    "I": (lambda: nir.I(r=f32([1.0, 2.0, 0.5])), dict(r=f32([1.0, 2.0, 0.5]))),
    "IF": (
        lambda: nir.IF(r=f32([20.0, 40.0, 10.0]), v_threshold=f32([0.02, 0.05, 0.01]), v_reset=f32([0.0, -0.01, 0.0])),
        dict(r=f32([20.0, 40.0, 10.0]), v_threshold=f32([0.02, 0.05, 0.01]), v_reset=f32([0.0, -0.01, 0.0])),
    ),
    "LI": (
        lambda: nir.LI(tau=f32([0.01, 0.02, 0.05]), r=f32([1.0, 2.0, 1.0]), v_leak=f32([0.0, 0.1, -0.2])),
        dict(tau=f32([0.01, 0.02, 0.05]), r=f32([1.0, 2.0, 1.0]), v_leak=f32([0.0, 0.1, -0.2])),
    ),
    "LIF": (
        lambda: nir.LIF(
            tau=f32([0.01, 0.02, 0.05]),
            r=f32([3.0, 4.0, 5.0]),
            v_leak=f32([0.0, 0.1, -0.2]),
            v_threshold=f32([1.0, 0.8, 0.5]),
            v_reset=f32([0.0, -0.1, 0.2]),
        ),
        dict(
            tau=f32([0.01, 0.02, 0.05]),
            r=f32([3.0, 4.0, 5.0]),
            v_leak=f32([0.0, 0.1, -0.2]),
            v_threshold=f32([1.0, 0.8, 0.5]),
            v_reset=f32([0.0, -0.1, 0.2]),
        ),
    ),
    "CubaLI": (
        lambda: nir.CubaLI(
            tau_syn=f32([0.005, 0.01, 0.02]),
            tau_mem=f32([0.01, 0.02, 0.05]),
            r=f32([2.0, 3.0, 4.0]),
            v_leak=f32([0.0, 0.1, 0.0]),
            w_in=f32([2.0, 1.0, 3.0]),
        ),
        dict(
            tau_syn=f32([0.005, 0.01, 0.02]),
            tau=f32([0.01, 0.02, 0.05]),
            r=f32([2.0, 3.0, 4.0]),
            v_leak=f32([0.0, 0.1, 0.0]),
            w_in=f32([2.0, 1.0, 3.0]),
        ),
    ),
    "CubaLIF": (
        lambda: nir.CubaLIF(
            tau_syn=f32([0.005, 0.01, 0.02]),
            tau_mem=f32([0.01, 0.02, 0.05]),
            r=f32([4.0, 5.0, 6.0]),
            v_leak=f32([0.0, 0.1, 0.0]),
            v_threshold=f32([1.0, 0.8, 0.5]),
            v_reset=f32([0.0, 0.0, -0.1]),
            w_in=f32([2.0, 1.0, 3.0]),
        ),
        dict(
            tau_syn=f32([0.005, 0.01, 0.02]),
            tau=f32([0.01, 0.02, 0.05]),
            r=f32([4.0, 5.0, 6.0]),
            v_leak=f32([0.0, 0.1, 0.0]),
            v_threshold=f32([1.0, 0.8, 0.5]),
            v_reset=f32([0.0, 0.0, -0.1]),
            w_in=f32([2.0, 1.0, 3.0]),
        ),
    ),
}


@pytest.mark.parametrize("kind", NEURONS)
def test_neuron_follows_forward_euler(kind):
    """Each NIR neuron gives the spikes (or membrane) and membrane of NIR's equation stepped with dt."""
    make, params = NEURONS[kind]
    dt = 1e-3
    x = drive((3,), seed=3)
    out, rec = run(chain(make(), shape=(3,)), x, dt=dt, record=[f"{kind.lower()}.v"])
    expected, membrane = euler(x.numpy(), dt, **params)
    if "v_threshold" in params:
        assert np.array_equal(out.numpy(), expected) and expected.any()
    else:
        np.testing.assert_allclose(out.numpy(), expected, atol=ATOL)
    np.testing.assert_allclose(rec[f"{kind.lower()}.v"].numpy(), membrane, atol=ATOL)


def test_spike_function_goes_to_every_spiking_layer():
    """from_nir(..., spike_function=) gives each spiking layer that surrogate, and the rest none."""
    from rnnbuilder import snn

    lif = nir.LIF(tau=f32([1.0] * 2), r=f32([1.0] * 2), v_leak=f32([0.0] * 2), v_threshold=f32([1.0] * 2))
    graph = chain(
        lif, nir.Threshold(f32([0.5, 0.5])), nir.LI(f32([1.0] * 2), f32([1.0] * 2), f32([0.0] * 2)), shape=(2,)
    )
    net = from_nir(graph, dt=0.1, spike_function=snn.ATan(alpha=3.0))
    assert [net.layers[name].factories[0].spike_function for name in ("lif", "threshold")] == [snn.ATan(alpha=3.0)] * 2
    assert not hasattr(net.layers["li"].factories[0], "spike_function")


def test_scalar_parameters_apply_to_every_neuron():
    """A parameter of one element (Norse writes such) is one value for the whole layer."""
    node = nir.LIF(tau=f32(0.01), r=f32(5.0), v_leak=f32(0.0), v_threshold=f32(0.5), v_reset=f32(0.0))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "lif": node, "output": nir.Output(np.array([3]))},
        edges=[("input", "lif"), ("lif", "output")],
        type_check=False,
    )
    x = drive((3,), seed=4)
    out, _ = run(graph, x, dt=1e-3)
    expected, _ = euler(x.numpy(), 1e-3, tau=0.01, r=5.0, v_threshold=0.5)
    assert np.array_equal(out.numpy(), expected)


def recurrent_graph(w_in, b_in, w_rec, b_rec, lif, names=("fc", "rec.lif", "rec.w_rec")) -> "nir.NIRGraph":
    """Input -> Affine -> LIF, with the LIF's spikes fed back through another Affine: as snnTorch's RLeaky."""
    fc, neuron, back = names
    return nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([w_in.shape[1]])),
            fc: nir.Affine(w_in, b_in),
            neuron: lif,
            back: nir.Affine(w_rec, b_rec),
            "output": nir.Output(np.array([w_in.shape[0]])),
        },
        edges=[("input", fc), (fc, neuron), (neuron, back), (back, neuron), (neuron, "output")],
    )


def test_cycle_reads_the_neurons_previous_spikes():
    """In an Affine/LIF cycle the LIF gets W_rec s[t-1] + b_rec, s[-1] = 0 (so b_rec from the start)."""
    rng = np.random.default_rng(5)
    n, dt = 4, 1e-4
    w_in, b_in = f32(rng.normal(size=(n, 3))), f32(rng.normal(size=n) * 0.1)
    w_rec, b_rec = f32(rng.normal(size=(n, n)) * 0.5), f32(rng.normal(size=n) * 0.1)
    lif = nir.LIF(tau=f32([1e-3] * n), r=f32([10.0] * n), v_leak=f32([0.0] * n), v_threshold=f32([1.0] * n))
    x = drive((3,), seed=6)
    out, rec = run(recurrent_graph(w_in, b_in, w_rec, b_rec, lif), x, dt=dt, record=["rec_lif.v"])
    v, s = np.zeros((B, n)), np.zeros((B, n))
    spikes, membranes = [], []
    for x_t in x.numpy():
        v = 0.9 * v + x_t @ w_in.T + b_in + s @ w_rec.T + b_rec
        s = (v > 1.0).astype(np.float64)
        v = np.where(s > 0, 0.0, v)
        spikes.append(s)
        membranes.append(v)
    assert np.array_equal(out.numpy(), np.stack(spikes)) and np.stack(spikes).any()
    np.testing.assert_allclose(rec["rec_lif.v"].numpy(), np.stack(membranes), atol=ATOL)


def test_cycle_without_a_neuron_is_refused():
    """A cycle of Affine nodes has nothing to read one step late: an error names its nodes."""
    eye = f32(np.eye(2))
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([2])),
            "a": nir.Linear(eye),
            "b": nir.Linear(eye),
            "output": nir.Output(np.array([2])),
        },
        edges=[("input", "a"), ("a", "b"), ("b", "a"), ("a", "output")],
        type_check=False,
    )
    with pytest.raises(GraphError, match=r"cycle through NIR nodes 'a', 'b' has no neuron"):
        from_nir(graph, dt=1.0)


def test_nested_subgraph_is_inlined():
    """A NIRGraph node (as snnTorch's importer nests RLeaky) runs as its nodes would, inlined."""
    rng = np.random.default_rng(7)
    n = 3
    w_in, b_in = f32(rng.normal(size=(n, 2))), f32(np.zeros(n))
    w_rec, b_rec = f32(rng.normal(size=(n, n))), f32(np.zeros(n))
    lif = lambda: nir.LIF(tau=f32([1e-3] * n), r=f32([10.0] * n), v_leak=f32([0.0] * n), v_threshold=f32([1.0] * n))  # noqa: E731
    flat = recurrent_graph(w_in, b_in, w_rec, b_rec, lif())
    inner = recurrent_graph(np.eye(n, dtype=np.float32), np.zeros(n, dtype=np.float32), w_rec, b_rec, lif())
    inner.nodes.pop("fc")
    inner.edges = [("input", "rec.lif")] + [e for e in inner.edges if "fc" not in e]
    nested = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([2])),
            "fc": nir.Affine(w_in, b_in),
            "rnn": inner,
            "output": nir.Output(np.array([n])),
        },
        edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")],
        type_check=False,
    )
    x = drive((2,), seed=8)
    expected, _ = run(flat, x, dt=1e-4)
    out, _ = run(nested, x, dt=1e-4)
    assert torch.equal(out, expected) and expected.any()


def test_edges_into_one_node_are_summed():
    """Two edges into a node add, as NIR defines."""
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([2])),
            "a": nir.Scale(f32([1.0, 2.0])),
            "b": nir.Scale(f32([3.0, 4.0])),
            "sum": nir.Scale(f32([1.0, 1.0])),
            "output": nir.Output(np.array([2])),
        },
        edges=[("input", "a"), ("input", "b"), ("a", "sum"), ("b", "sum"), ("sum", "output")],
    )
    x = drive((2,))
    out, _ = run(graph, x, dt=1.0)
    np.testing.assert_allclose(out.numpy(), x.numpy() * [4.0, 6.0], atol=ATOL)


def test_graph_read_from_a_file(tmp_path):
    """A graph written with nir.write imports from its path as from the graph."""
    rng = np.random.default_rng(9)
    graph = chain(
        nir.Affine(f32(rng.normal(size=(3, 4))), f32(rng.normal(size=3))),
        nir.LIF(tau=f32([1e-3] * 3), r=f32([10.0] * 3), v_leak=f32([0.0] * 3), v_threshold=f32([1.0] * 3)),
        shape=(4,),
    )
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    x = drive((4,))
    from_graph, _ = run(graph, x, dt=1e-4)
    from_file, _ = run(str(path), x, dt=1e-4)
    assert torch.equal(from_file, from_graph) and from_graph.any()


def test_imported_network_travels_as_a_spec():
    """The factory holds the weights as tensors, so it survives rnnbuilder.spec unchanged."""
    rng = np.random.default_rng(10)
    graph = chain(
        nir.Conv2d(
            input_shape=(4, 4),
            weight=f32(rng.normal(size=(2, 1, 3, 3))),
            stride=1,
            padding=1,
            dilation=1,
            groups=1,
            bias=f32(rng.normal(size=2)),
        ),
        nir.LIF(
            tau=f32(np.full((2, 4, 4), 1e-3)),
            r=f32(np.full((2, 4, 4), 10.0)),
            v_leak=f32(np.zeros((2, 4, 4))),
            v_threshold=f32(np.ones((2, 4, 4))),
        ),
        nir.Delay(f32(np.full((2, 4, 4), 1e-4))),
        shape=(1, 4, 4),
    )
    net = from_nir(graph, dt=1e-4)
    again = from_spec(to_spec(net))
    x = drive((1, 4, 4))
    out = net.make_model((1, 4, 4))(x)[0]
    assert torch.equal(again.make_model((1, 4, 4))(x)[0], out) and out.any()


# -- what is refused -----------------------------------------------------------------------------


def test_unknown_node_type_names_the_node():
    """A node type rnnbuilder has no layer for is an error naming the node and its type."""
    from nir.ir.graph import Identity

    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([2])),
            "mystery": Identity({"input": np.array([2])}),
            "output": nir.Output(np.array([2])),
        },
        edges=[("input", "mystery"), ("mystery", "output")],
        type_check=False,
    )
    with pytest.raises(GraphError, match=r"NIR node 'mystery' is a Identity, which rnnbuilder does not import"):
        from_nir(graph, dt=1.0)


def test_node_that_is_no_nir_node_names_it():
    """A node an exporter left empty (Norse 1.1 writes torch.nn.Flatten as None) is an error naming it."""
    graph = chain(nir.Scale(f32([1.0, 1.0])), shape=(2,))
    graph.nodes["scale"] = None
    with pytest.raises(GraphError, match=r"NIR node 'scale' is None, not a NIR node"):
        from_nir(graph, dt=1.0)


def test_unknown_parameter_names_the_node_and_the_field():
    """A field rnnbuilder doesn't know (here a padding mode on a Conv2d) is refused, never ignored."""
    from dataclasses import dataclass

    @dataclass(eq=False)
    class PaddedConv2d(nir.Conv2d):
        padding_mode: str = "circular"

    rng = np.random.default_rng(11)
    conv = PaddedConv2d(
        input_shape=(4, 4),
        weight=f32(rng.normal(size=(2, 1, 3, 3))),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=f32(np.zeros(2)),
    )
    graph = chain(conv, shape=(1, 4, 4))
    graph.nodes["conv"] = graph.nodes.pop("paddedconv2d")
    graph.edges = [tuple("conv" if e == "paddedconv2d" else e for e in edge) for edge in graph.edges]
    with pytest.raises(GraphError, match=r"NIR node 'conv' \(PaddedConv2d\) has 'padding_mode'"):
        from_nir(graph, dt=1.0)


def test_input_type_that_disagrees_with_the_weights_names_the_node():
    """An Input of 5 features into an Affine that takes 4 is a ShapeError naming the Affine."""
    graph = chain(nir.Affine(f32(np.ones((3, 4))), f32(np.zeros(3))), shape=(5,))
    with pytest.raises(ShapeError, match=r"'affine'.*4 input features"):
        from_nir(graph, dt=1.0)


def test_declared_type_that_disagrees_names_the_node():
    """A Flatten that declares input (2, 3, 4), fed (4, 3, 2), is a ShapeError naming it."""
    flatten = nir.Flatten(input_type={"input": np.array([2, 3, 4])}, start_dim=0, end_dim=-1)
    graph = chain(flatten, shape=(4, 3, 2))
    with pytest.raises(
        ShapeError,
        match=r"NIR node 'flatten' \(Flatten\) declares input shape \(2, 3, 4\), but its inputs give \(4, 3, 2\)",
    ):
        from_nir(graph, dt=1.0)


def test_neuron_parameters_for_another_layer_size_name_the_node():
    """LIF parameters for 3 neurons after a layer of 2 is a ShapeError naming the node."""
    lif = nir.LIF(tau=f32([1.0] * 3), r=f32([1.0] * 3), v_leak=f32([0.0] * 3), v_threshold=f32([1.0] * 3))
    graph = chain(nir.Affine(f32(np.ones((2, 4))), f32(np.zeros(2))), lif, shape=(4,))
    with pytest.raises(ShapeError, match=r"'lif'.*tau has shape \(3,\)"):
        from_nir(graph, dt=1.0)


def test_graph_with_two_inputs_is_refused():
    """rnnbuilder networks have one input: a second Input node is an error naming both."""
    graph = nir.NIRGraph(
        nodes={
            "a": nir.Input(np.array([2])),
            "b": nir.Input(np.array([2])),
            "s": nir.Scale(f32([1.0, 1.0])),
            "output": nir.Output(np.array([2])),
        },
        edges=[("a", "s"), ("b", "s"), ("s", "output")],
        type_check=False,
    )
    with pytest.raises(GraphError, match=r"2 Input nodes \('a', 'b'\)"):
        from_nir(graph, dt=1.0)


def test_node_off_the_path_to_the_output_is_refused():
    """A node whose output goes nowhere is not dropped silently: an error names it."""
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([2])),
            "used": nir.Scale(f32([1.0, 1.0])),
            "dangling": nir.Scale(f32([1.0, 1.0])),
            "output": nir.Output(np.array([2])),
        },
        edges=[("input", "used"), ("input", "dangling"), ("used", "output")],
        type_check=False,
    )
    with pytest.raises(GraphError, match=r"'dangling' are not on a path"):
        from_nir(graph, dt=1.0)


def test_dt_must_be_positive():
    """dt is a positive time step."""
    with pytest.raises(ValueError, match="dt must be a positive number"):
        from_nir(chain(nir.Scale(f32([1.0])), shape=(1,)), dt=0.0)


def test_importing_rnnbuilder_does_not_import_nir():
    """nir is an optional extra: only rnnbuilder.nir imports it."""
    code = "import sys, rnnbuilder, rnnbuilder.spec; assert 'nir' not in sys.modules; import rnnbuilder.nir"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the weight-carrying layers --------------------------------------------------------------------


def test_factories_with_equal_tensors_are_equal():
    """Factories holding tensors compare and hash by the values."""
    w = torch.randn(3, 2)
    assert nn.Affine(w, torch.zeros(3)) == nn.Affine(w.clone(), torch.zeros(3))
    assert hash(nn.Affine(w)) == hash(nn.Affine(w.clone()))
    assert nn.Affine(w) != nn.Affine(w + 1)
    assert nn.Conv2d(2, 1, weight=torch.ones(2, 1, 1, 1)) == nn.Conv2d(2, 1, weight=torch.ones(2, 1, 1, 1))


def test_conv_weight_must_match_its_arguments():
    """A Conv2d weight whose shape disagrees with out_channels and kernel_size is refused."""
    with pytest.raises(ValueError, match=r"Conv2d.weight must have shape \(4, in_channels // groups, 3, 3\)"):
        nn.Conv2d(4, 3, weight=torch.zeros(4, 1, 2, 2))


def test_conv_weight_must_match_the_input_channels():
    """A weight for 2 input channels on a 3-channel input is a ShapeError."""
    with pytest.raises(ShapeError, match=r"weight has shape \(4, 2, 3, 3\), but this input needs \(4, 3, 3, 3\)"):
        nn.Conv2d(4, 3, weight=torch.zeros(4, 2, 3, 3)).make_model((3, 5, 5))


def test_each_model_starts_from_the_given_weights():
    """Two models of one Affine factory start equal, and training one leaves the factory's tensor alone."""
    w = torch.randn(2, 3)
    a, b = nn.Affine(w).make_model((3,)), nn.Affine(w).make_model((3,))
    a(torch.ones(1, 1, 3))[0].sum().backward()
    with torch.no_grad():
        a.net.module.weight.add_(1.0)
    assert torch.equal(b.net.module.weight, w) and not torch.equal(a.net.module.weight, w)


def test_delay_keeps_its_state_across_calls():
    """A Delay continued from its state gives what one call over the whole sequence gives."""
    model = nn.Delay(torch.tensor([1, 3])).make_model((2,))
    x = drive((2,))
    whole, _ = model(x)
    first, state = model(x[:10])
    rest, _ = model(x[10:], state)
    assert torch.equal(torch.cat([first, rest]), whole)


def test_delay_steps_must_be_whole():
    """Delay.steps of 1.5 is refused."""
    with pytest.raises(ValueError, match="Delay.steps must be a non-negative int"):
        nn.Delay(torch.tensor([1.5]))


# -- graphs exported by snnTorch 1.0 -------------------------------------------------------------

SNNTORCH_DT = 1e-4
"""The timestep snnTorch's exporter writes its time constants for (``tau = dt / (1 - beta)``)."""


def snntorch_run(net, x: torch.Tensor, neurons: list[int]):
    """snnTorch's own simulation of a Sequential of init_hidden layers: outputs, and the membranes
    of the neuron layers at ``neurons`` (their ``mem`` after each step)."""
    utils = pytest.importorskip("snntorch.utils")
    utils.reset(net)
    outs, mems = [], {i: [] for i in neurons}
    with torch.no_grad():
        for x_t in x:
            outs.append(net(x_t))
            for i in neurons:
                mems[i].append(net[i].mem.clone())
    return torch.stack(outs), {i: torch.stack(m) for i, m in mems.items()}


def leaky(shape, beta, reset_delay=False):
    snn = pytest.importorskip("snntorch")
    return snn.Leaky(
        beta=torch.full(shape, beta),
        threshold=torch.ones(shape),
        init_hidden=True,
        reset_mechanism="zero",
        reset_delay=reset_delay,
    )


@pytest.mark.parametrize("reset_delay", [False, True])
def test_snntorch_feed_forward(reset_delay):
    """Linear + Leaky, twice, exported by snnTorch: the spikes are snnTorch's, and so is the membrane
    (after the reset, as snnTorch reports it with reset_delay=False)."""
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), leaky((6,), 0.9, reset_delay), torch.nn.Linear(6, 3), leaky((3,), 0.8, reset_delay)
    )
    graph = export_to_nir(net, torch.zeros(4))
    x = drive((4,), scale=2.0)
    spikes, mems = snntorch_run(net, x, [1, 3])
    out, rec = run(graph, x, dt=SNNTORCH_DT, record=["1.v", "3.v"])
    assert torch.equal(out, spikes) and spikes.any()
    if not reset_delay:
        for i in (1, 3):
            torch.testing.assert_close(rec[f"{i}.v"], mems[i], atol=ATOL, rtol=0)


def test_snntorch_convolutional():
    """Conv2d + Leaky + AvgPool2d + Flatten + Linear + Leaky exported by snnTorch (sample data with a
    batch dim and ignore_dims=[0], so that Flatten sees one): spikes and membranes are snnTorch's."""
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1),
        leaky((2, 6, 6), 0.9),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(18, 3),
        leaky((3,), 0.8),
    )
    with torch.no_grad():
        net[4].weight.mul_(4.0)  # enough drive for the output layer to spike
    graph = export_to_nir(net, torch.zeros(1, 1, 6, 6), ignore_dims=[0])
    assert [type(graph.nodes[k]).__name__ for k in "012345"] == [
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Flatten",
        "Affine",
        "LIF",
    ]
    x = drive((1, 6, 6), scale=3.0)
    spikes, mems = snntorch_run(net, x, [1, 5])
    out, rec = run(graph, x, dt=SNNTORCH_DT, record=["1.v", "5.v"])
    assert torch.equal(out, spikes) and spikes.any()
    for i in (1, 5):  # a neuron layer's state holds its neurons flattened
        torch.testing.assert_close(rec[f"{i}.v"], mems[i].flatten(2), atol=ATOL, rtol=0)


def test_snntorch_recurrent():
    """RLeaky (all-to-all) exported by snnTorch as a LIF and an Affine in a cycle ("1.lif", "1.w_rec"):
    the spikes and membrane are snnTorch's with reset_delay=False."""
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(2)
    rleaky = snn.RLeaky(
        beta=torch.full((5,), 0.9),
        threshold=torch.ones(5),
        linear_features=5,
        init_hidden=True,
        reset_mechanism="zero",
        reset_delay=False,
    )
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), rleaky)
    graph = export_to_nir(net, torch.zeros(4))
    assert sorted(graph.nodes) == ["0", "1.lif", "1.w_rec", "input", "output"]
    assert {("1.lif", "1.w_rec"), ("1.w_rec", "1.lif")} <= set(graph.edges)
    x = drive((4,), scale=2.0)
    spikes, mems = snntorch_run(net, x, [1])
    out, rec = run(graph, x, dt=SNNTORCH_DT, record=["1_lif.v"])
    assert torch.equal(out, spikes) and spikes.any()
    torch.testing.assert_close(rec["1_lif.v"], mems[1], atol=ATOL, rtol=0)


def test_snntorch_synaptic():
    """Synaptic, exported by snnTorch as CubaLIF (w_in = tau_syn / dt): spikes, current and membrane
    are snnTorch's."""
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(3)
    synaptic = snn.Synaptic(
        alpha=torch.full((4,), 0.7),
        beta=torch.full((4,), 0.9),
        threshold=torch.ones(4),
        init_hidden=True,
        reset_mechanism="zero",
        reset_delay=False,
    )
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), synaptic)
    graph = export_to_nir(net, torch.zeros(3))
    assert type(graph.nodes["1"]).__name__ == "CubaLIF"
    x = drive((3,), scale=1.0)
    pytest.importorskip("snntorch.utils").reset(net)
    spikes, syns, mems = [], [], []
    with torch.no_grad():
        for x_t in x:
            spikes.append(net(x_t))
            syns.append(synaptic.syn.clone())
            mems.append(synaptic.mem.clone())
    out, rec = run(graph, x, dt=SNNTORCH_DT, record=["1.v", "1.i"])
    assert torch.equal(out, torch.stack(spikes)) and out.any()
    torch.testing.assert_close(rec["1.i"], torch.stack(syns), atol=ATOL, rtol=0)
    torch.testing.assert_close(rec["1.v"], torch.stack(mems), atol=ATOL, rtol=0)


# -- graphs exported by Norse 1.1 ------------------------------------------------------------------
#
# Norse 1.1's to_nir writes every time constant as dt / tau_inv = dt * tau instead of tau, exports
# LIFCell's current, which it increments by the input unscaled, with w_in = 1 (NIR's equation needs
# w_in = tau_syn / dt for that), IAFCell, which adds the input unscaled, with r = 1 (NIR needs
# r = 1 / dt), drops v_reset (always 0), and exports torch.nn.Flatten as no node at all (None). The
# tests repair those parameters (after checking that the bug is there) and leave the rest as exported.

NORSE_DT = 1e-3


def norse_run(net, x: torch.Tensor):
    """Norse's own simulation of a SequentialState of cells: outputs, and the last cell's state after each step."""
    outs, states, state = [], [], None
    with torch.no_grad():
        for x_t in x:
            out, state = net(x_t, state)
            outs.append(out)
            states.append(state[-1])
    return torch.stack(outs), states


def repaired(node, **fields):
    """``node`` with Norse's exporter bugs undone: each field's exported value checked against the
    buggy formula ``bug(true value)``, then set to the true value."""
    for name, (true, bug) in fields.items():
        np.testing.assert_allclose(np.asarray(getattr(node, name)), bug(true), rtol=1e-6)
        setattr(node, name, f32(true))
    return node


def per_neuron(n, value):
    return torch.full((n,), float(value))


def test_norse_lif_box():
    """LIFBoxCell, exported as LIF: with tau repaired, the spikes and membrane are Norse's."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(4)
    tau_inv = torch.tensor([100.0, 50.0, 200.0, 80.0])
    p = norse.LIFBoxParameters(tau_mem_inv=tau_inv, v_leak=per_neuron(4, 0.0), v_th=per_neuron(4, 1.0))
    net = norse.SequentialState(torch.nn.Linear(3, 4), norse.LIFBoxCell(p, dt=NORSE_DT))
    graph = norse.to_nir(net, torch.zeros(3), dt=NORSE_DT)
    repaired(graph.nodes["1"], tau=(1 / tau_inv.numpy(), lambda tau: NORSE_DT * tau))
    x = drive((3,), scale=10.0)
    spikes, states = norse_run(net, x)
    out, rec = run(graph, x, dt=NORSE_DT, record=["1.v"])
    assert torch.equal(out, spikes) and spikes.any()
    torch.testing.assert_close(rec["1.v"], torch.stack([s.v for s in states]), atol=ATOL, rtol=0)


def test_norse_li_box():
    """LIBoxCell, exported as LI: with tau repaired, and started where Norse starts it (at v_leak;
    NIR neurons start at 0), the membrane (its output) is Norse's."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(5)
    tau_inv, v_leak = torch.tensor([100.0, 50.0, 200.0]), torch.tensor([0.0, 0.5, -0.5])
    net = norse.SequentialState(
        torch.nn.Linear(3, 3), norse.LIBoxCell(norse.LIBoxParameters(tau_mem_inv=tau_inv, v_leak=v_leak), dt=NORSE_DT)
    )
    graph = norse.to_nir(net, torch.zeros(3), dt=NORSE_DT)
    repaired(graph.nodes["1"], tau=(1 / tau_inv.numpy(), lambda tau: NORSE_DT * tau))
    x = drive((3,))
    expected, _ = norse_run(net, x)
    model = from_nir(graph, dt=NORSE_DT).make_model((3,))
    state = model.get_initial_state(B)
    state["layers"]["1"] = state["layers"]["1"]._replace(v=v_leak.expand(B, 3))
    with torch.no_grad():
        out, _ = model(x, state)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_norse_lif_cell():
    """LIFCell, exported as CubaLIF: with tau_syn, tau_mem and w_in repaired, the spikes, current and
    membrane are Norse's (Norse too updates the current first and drives the membrane with it)."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(6)
    syn_inv, mem_inv = torch.tensor([200.0, 100.0, 300.0, 250.0]), torch.tensor([100.0, 50.0, 200.0, 80.0])
    p = norse.LIFParameters(
        tau_syn_inv=syn_inv, tau_mem_inv=mem_inv, v_leak=per_neuron(4, 0.0), v_th=per_neuron(4, 1.0)
    )
    net = norse.SequentialState(torch.nn.Linear(3, 4), norse.LIFCell(p, dt=NORSE_DT))
    graph = norse.to_nir(net, torch.zeros(3), dt=NORSE_DT)
    tau_syn, tau_mem = 1 / syn_inv.numpy(), 1 / mem_inv.numpy()
    repaired(
        graph.nodes["1"],
        tau_syn=(tau_syn, lambda tau: NORSE_DT * tau),
        tau_mem=(tau_mem, lambda tau: NORSE_DT * tau),
        w_in=(tau_syn / NORSE_DT, lambda w_in: np.ones_like(w_in)),
    )
    x = drive((3,), scale=2.0)
    spikes, states = norse_run(net, x)
    out, rec = run(graph, x, dt=NORSE_DT, record=["1.v"])
    assert torch.equal(out, spikes) and spikes.any()
    torch.testing.assert_close(rec["1.v"], torch.stack([s.v for s in states]), atol=ATOL, rtol=0)


def test_norse_iaf():
    """IAFCell, exported as IF: with r repaired, the spikes and membrane are Norse's."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(7)
    p = norse.IAFParameters(v_th=torch.tensor([1.0, 2.0, 0.5]), v_reset=per_neuron(3, 0.0))
    net = norse.SequentialState(torch.nn.Linear(3, 3), norse.IAFCell(p, dt=NORSE_DT))
    graph = norse.to_nir(net, torch.zeros(3), dt=NORSE_DT)
    repaired(graph.nodes["1"], r=(np.full(3, 1 / NORSE_DT), np.ones_like))
    x = drive((3,))
    spikes, states = norse_run(net, x)
    out, rec = run(graph, x, dt=NORSE_DT, record=["1.v"])
    assert torch.equal(out, spikes) and spikes.any()
    torch.testing.assert_close(rec["1.v"], torch.stack([s.v for s in states]), atol=ATOL, rtol=0)


def test_norse_convolutional():
    """Conv2d + LIFBoxCell (per-neuron parameters), exported by Norse from an unbatched sample: with
    tau repaired, the spikes are Norse's."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(8)
    shape = (2, 5, 5)
    p = norse.LIFBoxParameters(tau_mem_inv=torch.full(shape, 100.0), v_leak=torch.zeros(shape), v_th=torch.ones(shape))
    net = norse.SequentialState(torch.nn.Conv2d(1, 2, 3, padding=1), norse.LIFBoxCell(p, dt=NORSE_DT))
    graph = norse.to_nir(net, torch.zeros(1, 5, 5), dt=NORSE_DT)
    repaired(graph.nodes["1"], tau=(np.full(shape, 1e-2), lambda tau: NORSE_DT * tau))
    x = drive((1, 5, 5), scale=10.0)
    spikes, _ = norse_run(net, x)
    out, _ = run(graph, x, dt=NORSE_DT)
    assert torch.equal(out, spikes) and spikes.any()


# -- through the service ---------------------------------------------------------------------------


def test_imported_graph_runs_as_a_session(client):
    """An imported recurrent convolutional graph is created on a real server, its weights travelling
    as tensor arguments, and the session's output is the local model's."""
    rng = np.random.default_rng(12)
    shape = (2, 4, 4)
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([1, 4, 4])),
            "conv": nir.Conv2d(
                input_shape=(4, 4),
                weight=f32(rng.normal(size=(2, 1, 3, 3))),
                stride=1,
                padding=1,
                dilation=1,
                groups=1,
                bias=f32(np.zeros(2)),
            ),
            "rnn.lif": nir.LIF(
                tau=f32(np.full(shape, 1e-3)),
                r=f32(np.full(shape, 10.0)),
                v_leak=f32(np.zeros(shape)),
                v_threshold=f32(np.ones(shape)),
            ),
            "rnn.w_rec": nir.Scale(f32(np.full(shape, -0.5))),
            "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
            "output": nir.Output(np.array([2, 2, 2])),
        },
        edges=[
            ("input", "conv"),
            ("conv", "rnn.lif"),
            ("rnn.lif", "rnn.w_rec"),
            ("rnn.w_rec", "rnn.lif"),
            ("rnn.lif", "pool"),
            ("pool", "output"),
        ],
    )
    net = from_nir(graph, dt=1e-4)
    x = drive((1, 4, 4), scale=3.0).numpy()
    session = client.create_session(net, input_shape=(1, 4, 4), batch_size=B, seed=0)
    out = session.run(x)
    session.close()
    with torch.no_grad():
        local, _ = net.make_model((1, 4, 4))(torch.from_numpy(x))
    assert np.array_equal(out, local.numpy()) and local.any()


def test_input_shape_is_what_the_input_node_declares(tmp_path):
    """input_shape gives the shape a graph's Input declares, from the graph or its file."""
    graph = nir.NIRGraph.from_list(nir.Affine(np.ones((3, 5), dtype=np.float32), np.zeros(3, dtype=np.float32)))
    nir.write(tmp_path / "g.nir", graph)
    assert input_shape(graph) == input_shape(tmp_path / "g.nir") == (5,)


def test_input_shape_of_an_input_without_a_shape_is_refused():
    """An Input node that declares no shape gets a ShapeError saying to give the shape."""
    empty = {"input": np.array([])}
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=empty), "output": nir.Output(output_type={"output": np.array([])})},
        edges=[("input", "output")],
        type_check=False,
    )
    with pytest.raises(ShapeError, match="declares no shape"):
        input_shape(graph)
