"""``rnnbuilder.nir.to_nir``: what each layer becomes, the errors and the lossy export, round trips
through ``from_nir``, and the exported graph read by snnTorch and Norse."""

import math

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import GraphError, ShapeError, nn, snn

nir = pytest.importorskip("nir")
from rnnbuilder.nir import from_nir, to_nir  # noqa: E402  (after the skip: the nir extra is optional)

T, B = 20, 3


def _types(graph) -> dict[str, str]:
    return {name: type(node).__name__ for name, node in graph.nodes.items()}


def _recurrent(neuron) -> rb.Network:
    """A recurrent layer written as NIR draws it: input weights and recurrent weights summed into ``neuron``."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.apply(nn.Linear(6)).sum(n.output.apply(nn.Linear(6, bias=False))).apply(neuron)
    return n


def _drive(shape=(4,), seed=0) -> torch.Tensor:
    return torch.rand(T, B, *shape, generator=torch.Generator().manual_seed(seed)) * 1.5


# -- what the graph holds ----------------------------------------------------------------------


def test_feed_forward_nodes_carry_the_model_weights():
    """A built model's Linear becomes an Affine with its weight and bias, its neurons their NIR kind."""
    model = rb.Sequential(nn.Linear(5), snn.LeakyIntegrateAndFire(tau=4.0, v_threshold=0.5)).make_model((3,))
    graph = to_nir(model)
    assert _types(graph) == {"0": "Affine", "1": "LIF", "input": "Input", "output": "Output"}
    assert graph.edges == [("input", "0"), ("0", "1"), ("1", "output")]
    linear = model.net.runners[0].module
    assert np.array_equal(graph.nodes["0"].weight, linear.weight.detach().numpy())
    assert np.array_equal(graph.nodes["0"].bias, linear.bias.detach().numpy())
    lif = graph.nodes["1"]
    assert lif.tau.tolist() == [4.0] * 5 and lif.v_threshold.tolist() == [0.5] * 5 and lif.v_reset.tolist() == [0.0] * 5


def test_exports_the_weights_the_model_has_now():
    """Weights loaded into the model (from a session's state_dict, say) are the ones exported."""
    model = rb.Sequential(nn.Linear(2, bias=False), snn.Integrator()).make_model((3,))
    state = {k: torch.full_like(v, 0.25) if k.endswith("weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    graph = to_nir(model)
    assert _types(graph)["0"] == "Linear" and graph.nodes["0"].weight.tolist() == [[0.25] * 3] * 2


def test_a_factory_is_built_for_in_shape():
    """Given a factory, to_nir builds it for in_shape; the graph's input and output have the shapes."""
    graph = to_nir(rb.Sequential(nn.Conv2d(4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(10)), (2, 8, 8))
    assert _types(graph) == {
        "0": "Conv2d",
        "1": "AvgPool2d",
        "2": "Flatten",
        "3": "Affine",
        "input": "Input",
        "output": "Output",
    }
    assert graph.nodes["input"].input_type["input"].tolist() == [2, 8, 8]
    assert graph.nodes["output"].output_type["output"].tolist() == [10]
    assert graph.nodes["0"].input_shape == (8, 8) and graph.nodes["2"].start_dim == 0


def test_every_node_is_typed_with_the_model_shapes():
    """Each node's input and output types are the model's shapes (where NIR's own inference errs, as with a
    non-square kernel), so the graph passes NIR's type check."""
    factory = rb.Sequential(nn.Conv2d(2, (2, 3), stride=(1, 2), dilation=2), nn.SumPool2d(2), nn.Linear(3))
    graph = to_nir(factory, (1, 9, 9))
    assert graph.nodes["0"].output_type["output"].tolist() == list(
        nn.Conv2d(2, (2, 3), (1, 2), dilation=2).out_shape((1, 9, 9))
    )
    assert graph.nodes["1"].output_type["output"].tolist() == [2, 3, 1]
    assert graph.check_types()


def test_a_factory_without_in_shape_is_refused():
    """A factory can't be built without an input shape."""
    with pytest.raises(ShapeError, match="in_shape"):
        to_nir(nn.Linear(3))


def test_linear_after_a_multi_dim_input_flattens_first():
    """nn.Linear flattens its input implicitly; the graph says so with a Flatten node."""
    graph = to_nir(rb.Sequential(nn.Conv1d(2, 3), nn.Linear(4)), (1, 6))
    assert _types(graph) == {"0": "Conv1d", "1_flatten": "Flatten", "1": "Affine", "input": "Input", "output": "Output"}


def test_a_placeholder_cycle_is_a_cycle_of_edges():
    """A recurrent network's placeholder becomes an edge from the neurons back to the recurrent weights."""
    graph = to_nir(_recurrent(snn.LeakyIntegrateAndFire(tau=5.0)), (4,))
    assert sorted(graph.edges) == sorted(
        [
            ("input", "_layer0"),
            ("_layer0", "output_layer"),
            ("_layer1", "output_layer"),
            ("output_layer", "_layer1"),
            ("output_layer", "output"),
        ]
    )


def test_a_stack_read_by_linear_splits_the_weight():
    """A stack into nn.Linear becomes one node per stacked input holding its columns; the bias goes with the first."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(6), snn.LeakyIntegrateAndFire(tau=5.0))
    model = n.make_model((3,))
    graph = to_nir(model)
    weight = model.net.layers["output"].runners[0].module.weight.detach().numpy()
    x_part, h_part = graph.nodes["output_0_part0"], graph.nodes["output_0_part1"]
    assert type(x_part).__name__ == "Affine" and type(h_part).__name__ == "Linear"
    assert np.array_equal(x_part.weight, weight[:, :3]) and np.array_equal(h_part.weight, weight[:, 3:])
    assert {("output_1", "output_0_part1"), ("output_0_part1", "output_1")} <= set(graph.edges)


def test_a_stack_into_anything_but_linear_is_refused():
    """NIR has no concatenation: a stack read by another layer is an error naming the layer."""
    n = rb.Network()
    n.output = n.input.stack(n.input).apply(snn.LeakyIntegrateAndFire(tau=5.0))
    with pytest.raises(GraphError, match="'output'.*stack"):
        to_nir(n, (3,))


def test_a_placeholder_outside_a_cycle_is_a_delay():
    """A placeholder that no cycle runs through delays by one timestep: a NIR Delay of dt."""
    n = rb.Network()
    n.late = rb.Placeholder()
    n.output = n.late.apply(nn.Linear(2))
    n.late = n.input.apply(nn.Linear(3))
    graph = to_nir(n, (4,))
    assert graph.nodes["late_delay"].delay.tolist() == [1.0] * 3
    assert {("late", "late_delay"), ("late_delay", "output_layer")} <= set(graph.edges)


def test_dt_rescales_the_time_constants():
    """With dt given, one timestep lasts dt in the graph: taus (in units of the layer's own dt) are rescaled."""
    node = to_nir(snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=4.0), (2,), dt=1e-3).nodes["layer"]
    assert np.allclose(node.tau_syn, 2e-3) and np.allclose(node.tau_mem, 4e-3)


def test_a_graph_in_another_time_unit_imports_as_the_same_model():
    """Exported with dt=0.5 and imported with dt=0.5, a network steps as before (an integrator's r is per time unit)."""
    torch.manual_seed(0)
    model = rb.Sequential(
        nn.Linear(5), snn.IntegrateAndFire(r=2.0, v_threshold=3.0), nn.Linear(2), snn.LeakyIntegrator(tau=4.0)
    ).make_model((3,))
    graph = to_nir(model, dt=0.5)
    assert graph.nodes["1"].r.tolist() == [4.0] * 5 and graph.nodes["3"].tau.tolist() == [2.0] * 2
    x = _drive((3,))
    assert torch.equal(from_nir(graph, dt=0.5).make_model((3,))(x)[0], model(x)[0])


def test_the_graph_survives_a_file(tmp_path):
    """The exported graph is written and read back by nir.write and nir.read, cycle included."""
    graph = to_nir(_recurrent(snn.LeakyIntegrateAndFire(tau=5.0)), (4,))
    nir.write(tmp_path / "net.nir", graph)
    back = nir.read(tmp_path / "net.nir")
    assert sorted(back.edges) == sorted(graph.edges) and _types(back) == _types(graph)


def test_layers_with_different_dt_need_one_for_the_graph():
    """Neurons stepping with different dt have no common timestep: the graph's dt must be given."""
    factory = rb.Sequential(snn.LeakyIntegrator(tau=4.0, dt=1.0), snn.LeakyIntegrator(tau=4.0, dt=0.5))
    with pytest.raises(GraphError, match="different dt"):
        to_nir(factory, (2,))
    assert np.allclose(to_nir(factory, (2,), dt=1.0).nodes["1"].tau, 8.0)


# -- refusals and the lossy export --------------------------------------------------------------


def test_subtractive_lif_needs_lossy():
    """The seed's snn.LIF resets by subtraction, which NIR can't say: an error naming the layer."""
    with pytest.raises(GraphError, match="layer '1'.*subtract.*lossy=True"):
        to_nir(rb.Sequential(nn.Linear(3), snn.LIF(tau=5.0)), (2,))


def test_lossy_lif_becomes_a_reset_to_zero_lif_with_a_warning():
    """With lossy=True snn.LIF is NIR's LIF with the same membrane between spikes, and a warning."""
    with pytest.warns(UserWarning, match="layer '1'.*reset"):
        graph = to_nir(rb.Sequential(nn.Linear(3), snn.LIF(tau=5.0)), (2,), lossy=True)
    lif, beta = graph.nodes["1"], math.exp(-1 / 5.0)
    assert np.allclose(lif.tau, 1 / (1 - beta)) and np.allclose(lif.r, 1 / (1 - beta))
    assert lif.v_threshold.tolist() == [1.0] * 3 and lif.v_reset.tolist() == [0.0] * 3


@pytest.mark.parametrize("neuron", [snn.Adaptive(), snn.Cooldown()], ids=["Adaptive", "Cooldown"])
def test_neurons_without_a_nir_form_are_refused(neuron):
    """snn.Adaptive and snn.Cooldown are errors naming the layer and why."""
    n = rb.Network()
    n.hidden = n.input.apply(nn.Linear(4), neuron)
    n.output = n.hidden.apply(nn.Linear(2))
    with pytest.raises(GraphError, match=f"layer 'hidden.1' \\({type(neuron).__name__}\\).*NIR"):
        to_nir(n, (3,))


def test_other_layers_without_a_nir_form_are_refused():
    """An LSTM (or any layer NIR lacks) is an error naming the layer."""
    with pytest.raises(GraphError, match="layer '1' \\(LSTM\\)"):
        to_nir(rb.Sequential(nn.Linear(3), rb.rnn.LSTM(4)), (2,))


def test_a_trained_initial_membrane_is_lossy():
    """NIR neurons start at rest: a learnt initial membrane that isn't zero needs lossy=True."""
    model = rb.Sequential(nn.Linear(3), snn.LeakyIntegrateAndFire(tau=5.0)).make_model((2,))
    with torch.no_grad():
        model.net.runners[1].initial_v.fill_(0.3)
    with pytest.raises(GraphError, match="layer '1'.*initial membrane"):
        to_nir(model)
    with pytest.warns(UserWarning, match="initial membrane"):
        to_nir(model, lossy=True)


# -- round trips: here -> NIR -> here ------------------------------------------------------------

# Dyadic constants (tau = 4, 8; r = 1, 2; ...) keep every per-step coefficient exact in float32, so
# a neuron rebuilt from the graph's arrays computes exactly what the original computes.


def _round_trip(model: rb.Model) -> rb.Model:
    return from_nir(to_nir(model), dt=1.0).make_model(model.in_shape)


def _parameter_values(model: rb.Model) -> list:
    return sorted((tuple(p.shape), p.detach().flatten().tolist()) for p in model.parameters())


def _assert_identical(model: rb.Model, x: torch.Tensor) -> None:
    back = _round_trip(model)
    assert torch.equal(back(x)[0], model(x)[0])
    assert _parameter_values(back) == _parameter_values(model)


def test_round_trip_feed_forward():
    """Linear layers and LIF neurons come back with the same parameters and the same spikes, bit for bit."""
    torch.manual_seed(1)
    model = rb.Sequential(
        nn.Linear(8), snn.LeakyIntegrateAndFire(tau=4.0, v_threshold=0.5), nn.Linear(3), snn.LeakyIntegrator(tau=8.0)
    ).make_model((4,))
    _assert_identical(model, _drive())


def test_round_trip_conv():
    """Conv2d, pooling and Flatten come back as they were: same outputs bit for bit."""
    torch.manual_seed(2)
    model = rb.Sequential(
        nn.Conv2d(3, 3, padding=1),
        snn.IntegrateAndFire(v_threshold=0.5),
        nn.SumPool2d(2),
        nn.Flatten(),
        nn.Linear(5),
        snn.LeakyIntegrateAndFire(tau=2.0),
    ).make_model((2, 6, 6))
    _assert_identical(model, _drive((2, 6, 6)))


def test_round_trip_recurrent():
    """A placeholder cycle comes back as a cycle: same spikes bit for bit over many timesteps."""
    torch.manual_seed(3)
    _assert_identical(_recurrent(snn.LeakyIntegrateAndFire(tau=4.0, v_threshold=0.5)).make_model((4,)), _drive())


def test_round_trip_current_based():
    """Current-based neurons (CubaLIF into a CubaLI readout) come back with their synapses."""
    torch.manual_seed(4)
    model = rb.Sequential(
        nn.Linear(6),
        snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=4.0, r=2.0, v_threshold=0.25),
        nn.Linear(2),
        snn.CubaLeakyIntegrator(tau_syn=2.0, tau_mem=8.0),
    ).make_model((4,))
    _assert_identical(model, _drive())


def test_round_trip_keeps_any_neuron_constant():
    """Constants that float32 can't hold (tau = 9.9, r = 1.7) come back exactly: the graph holds them as float64."""
    model = rb.Sequential(
        nn.Linear(3), snn.LeakyIntegrateAndFire(tau=9.9, r=1.7, v_leak=0.1, v_threshold=0.3)
    ).make_model((2,))
    ours, theirs = model.state_dict(), _round_trip(model).state_dict()
    assert [k.rsplit(".", 1)[1] for k in theirs] == [k.rsplit(".", 1)[1] for k in ours]
    assert {k.rsplit(".", 1)[1]: torch.equal(t, theirs[j]) for (k, t), j in zip(ours.items(), theirs)} == {
        k.rsplit(".", 1)[1]: True for k in ours
    }


def test_round_trip_scale_delay_threshold():
    """NIR's Scale, Delay and Threshold layers come back as they were: same outputs bit for bit."""
    torch.manual_seed(5)
    model = rb.Sequential(
        nn.Linear(4), nn.Scale(torch.tensor([0.5, 2.0, -1.0, 1.0])), nn.Delay(2), snn.Threshold(v_threshold=0.25)
    ).make_model((3,))
    _assert_identical(model, _drive((3,)))


# -- read by snnTorch and Norse ------------------------------------------------------------------


def _snntorch_run(graph, x: torch.Tensor) -> torch.Tensor:
    """snnTorch's importer gives a module whose neurons keep their own state (init_hidden): reset, then step."""
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir
    from snntorch.utils import reset

    module = import_from_nir(graph)
    reset(module)
    with torch.no_grad():
        return torch.stack([module(x_t)[0] for x_t in x])


def _norse_run(graph, x: torch.Tensor, dt: float) -> torch.Tensor:
    norse = pytest.importorskip("norse.torch")
    module, state, out = norse.from_nir(graph, dt=dt), None, []
    with torch.no_grad():
        for x_t in x:
            y, state = module(x_t, state)
            out.append(y)
    return torch.stack(out)


def test_snntorch_reads_leaky_layers_with_the_same_spikes():
    """snnTorch's import_from_nir (with nirtorch 2.6) gives the same spikes for Linear and LIF layers.

    snnTorch assumes dt = 1e-4 (so export with dt=1e-4) and builds ``Leaky(beta=1 - dt/tau,
    reset_mechanism="zero", reset_delay=False)``, adding the input unscaled: it matches where
    ``r * dt / tau == 1`` (here r = tau in timesteps); otherwise it divides the threshold by
    ``r * dt / tau`` instead, the same spikes up to rounding. Membranes agree to float rounding.
    """
    torch.manual_seed(5)
    model = rb.Sequential(
        nn.Linear(8), snn.LeakyIntegrateAndFire(tau=4.0, r=4.0), nn.Linear(3), snn.LeakyIntegrateAndFire(tau=8.0, r=8.0)
    ).make_model((4,))
    x = _drive()
    assert torch.equal(_snntorch_run(to_nir(model, dt=1e-4), x), model(x)[0])


def test_snntorch_reads_current_based_layers_with_the_same_spikes():
    """snnTorch reads CubaLIF as ``Synaptic(alpha=1 - dt/tau_syn, beta=1 - dt/tau_mem)``: the same spikes.

    Like rnnbuilder, its membrane reads the current of the same timestep. It needs
    ``r == tau_mem / dt`` (an assertion) and adds the input unscaled where ``w_in * dt / tau_syn == 1``.
    """
    torch.manual_seed(6)
    model = rb.Sequential(
        nn.Linear(8), snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=4.0, r=4.0, w_in=2.0, v_threshold=0.5)
    ).make_model((4,))
    x = _drive()
    assert torch.equal(_snntorch_run(to_nir(model, dt=1e-4), x), model(x)[0])


@pytest.mark.xfail(raises=AttributeError, strict=True, reason="snnTorch 1.0 + nirtorch 2.6 can't import cycles")
def test_snntorch_cannot_read_a_recurrent_graph():
    """snnTorch 1.0's importer can't run a LIF <-> Affine cycle with nirtorch 2.6 (snnTorch's limit, not the graph's).

    It wraps the cycle into a nested NIRGraph meant for ``RLeaky``, named after the LIF node's key
    up to its first dot, but gives ``nirtorch.nir_to_torch`` no mapping for NIRGraph, so nirtorch
    recurses into the subgraph itself. Where the LIF's key has no ``"<group>."`` prefix (as here:
    the subgraph takes the LIF's own name) that fails with ``AttributeError: 'GraphModule' object
    has no attribute 'items'``; with snnTorch's own names (``"1.lif"``, ``"1.w_rec"``) it runs, but
    nirtorch times the cycle differently from RLeaky, NIR simulators and Norse: about one output
    spike in ten differs. Norse reads the same graph spike for spike (below).
    """
    graph = to_nir(_recurrent(snn.LeakyIntegrateAndFire(tau=4.0, r=4.0)).make_model((4,)), dt=1e-4)
    _snntorch_run(graph, _drive())


def test_norse_reads_leaky_layers_with_the_same_spikes():
    """Norse's from_nir gives the same spikes for Linear and LIF layers with r = 1.

    Norse integrates ``v + dt / tau * (v_leak - v + x)`` and resets to v_reset in the same step, as
    rnnbuilder does, but ignores a LIF's ``r`` (it warns): it matches where r = 1. Give it the same
    ``dt`` as the layers (``from_nir(graph, dt=...)``; its default is 1e-3).
    """
    torch.manual_seed(7)
    model = rb.Sequential(
        nn.Linear(8),
        snn.LeakyIntegrateAndFire(tau=4.0),
        nn.Linear(3),
        snn.LeakyIntegrateAndFire(tau=2.0, v_threshold=0.25),
    ).make_model((4,))
    x = _drive() * 4
    assert torch.equal(_norse_run(to_nir(model), x, dt=1.0), model(x)[0])


def test_norse_reads_a_recurrent_graph_with_the_same_spikes():
    """Norse runs the cycle reading the neurons' previous output, as a placeholder does: the same spikes."""
    torch.manual_seed(8)
    model = _recurrent(snn.LeakyIntegrateAndFire(tau=4.0, v_threshold=0.5)).make_model((4,))
    x = _drive() * 4
    assert torch.equal(_norse_run(to_nir(model), x, dt=1.0), model(x)[0])


def test_norse_reads_current_based_layers_with_the_same_spikes():
    """Norse reads CubaLIF as w_in, a leaky synapse, r and a LIF: the same spikes (its CubaLIF does read r)."""
    torch.manual_seed(9)
    model = rb.Sequential(
        nn.Linear(8), snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=4.0, r=2.0, v_threshold=0.25)
    ).make_model((4,))
    x = _drive() * 4
    assert torch.equal(_norse_run(to_nir(model), x, dt=1.0), model(x)[0])


def test_snntorch_reads_convolutions_with_the_same_spikes():
    """snnTorch reads Conv2d and a LIF over (channels, height, width): the same spikes.

    Not its Flatten: snnTorch builds ``torch.nn.Flatten(start_dim, end_dim)`` from NIR's dims,
    which count from the first data dim, so on its batched input it flattens one dim too early.
    """
    torch.manual_seed(10)
    model = rb.Sequential(nn.Conv2d(3, 3, padding=1), snn.LeakyIntegrateAndFire(tau=4.0, r=4.0)).make_model((2, 5, 5))
    x = _drive((2, 5, 5))
    assert torch.equal(_snntorch_run(to_nir(model, dt=1e-4), x), model(x)[0])


@pytest.mark.xfail(raises=AssertionError, strict=True, reason="snnTorch 1.0 reads NIR's IF as a leaky neuron")
def test_snntorch_reads_integrate_and_fire_with_a_leak():
    """snnTorch 1.0 imports NIR's IF as ``Leaky(beta=0.9, init_hidden=False)``: its membrane decays,
    NIR's IF doesn't, and the layer gives (spikes, membrane) where the others give spikes."""
    from snntorch.import_nir import import_from_nir
    from snntorch.utils import reset

    torch.manual_seed(11)
    model = rb.Sequential(nn.Linear(8), snn.IntegrateAndFire(v_threshold=2.0)).make_model((4,))
    module, x = import_from_nir(to_nir(model)), _drive()
    reset(module)
    with torch.no_grad():
        spikes = torch.stack([module(x_t)[0][0] for x_t in x])
    assert torch.equal(spikes, model(x)[0])


def test_norse_reads_convolutions_and_integrate_and_fire_with_the_same_spikes():
    """Norse reads Conv2d, IF (as ``v + x``: it ignores dt, r and v_reset) and SumPool2d: the same spikes.

    Not AvgPool2d: Norse 1.1's importer has no mapping for it (only SumPool2d, as LPPool2d(1)).
    """
    torch.manual_seed(12)
    model = rb.Sequential(
        nn.Conv2d(3, 3, padding=1), snn.IntegrateAndFire(v_threshold=1.5), nn.SumPool2d(2)
    ).make_model((2, 6, 6))
    x = _drive((2, 6, 6))
    assert torch.equal(_norse_run(to_nir(model), x, dt=1.0), model(x)[0])
