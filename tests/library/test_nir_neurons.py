"""NIR's neuron family (``rnnbuilder.snn.Integrator`` ... ``Threshold``): forward-Euler steps with
per-neuron parameters, the fused sequence equal to the step loop, surrogate gradients, the spec.

The hand-computed expectations use NIR's equations: ``v += dt / tau * (v_leak - v + r * x)``,
``i += dt / tau_syn * (w_in * x - i)`` before the membrane, spike where ``v > v_threshold``, and
reset to ``v_reset`` in the step of the spike.
"""

from __future__ import annotations

import json

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import ShapeError, nn, snn, spec
from rnnbuilder.snn import fused
from rnnbuilder.snn import nir_functional as N

STATEFUL = [
    lambda: snn.Integrator(r=torch.tensor([0.5, 1.0, 2.0]), dt=0.5),
    lambda: snn.IntegrateAndFire(r=0.8, v_threshold=torch.tensor([0.5, 1.0, 1.5]), v_reset=-0.2),
    lambda: snn.LeakyIntegrator(tau=torch.tensor([2.0, 5.0, 10.0]), r=3.0, v_leak=0.1, dt=0.7),
    lambda: snn.LeakyIntegrateAndFire(tau=torch.tensor([2.0, 5.0, 10.0]), r=4.0, v_leak=0.1, v_reset=0.2),
    lambda: snn.CubaLeakyIntegrator(tau_syn=torch.tensor([2.0, 3.0, 4.0]), tau_mem=5.0, r=2.0, w_in=1.5, dt=0.5),
    lambda: snn.CubaLeakyIntegrateAndFire(
        tau_syn=3.0, tau_mem=torch.tensor([4.0, 6.0, 8.0]), r=3.0, v_leak=0.05, v_threshold=0.8, w_in=2.0
    ),
]
SPIKING = (snn.IntegrateAndFire, snn.LeakyIntegrateAndFire, snn.CubaLeakyIntegrateAndFire)
names = [
    "Integrator",
    "IntegrateAndFire",
    "LeakyIntegrator",
    "LeakyIntegrateAndFire",
    "CubaLeakyIntegrator",
    "CubaLeakyIntegrateAndFire",
]
stateful = pytest.mark.parametrize("make", STATEFUL, ids=names)


def drive(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -0.3 + 1.2 * torch.rand(shape, generator=g)


def run(factory, xs, in_shape=(3,)):
    return factory.make_model(in_shape)(xs)


# The documented formulas, on values computed by hand


def test_integrator_adds_dt_r_x():
    """Integrator: v = v + dt * r * x, and the output is v."""
    out, state = run(snn.Integrator(r=2.0, dt=0.25), torch.tensor([[[1.0]], [[2.0]], [[-1.0]]]), (1,))
    assert out.flatten().tolist() == [0.5, 1.5, 1.0]
    assert state.v.item() == 1.0


def test_integrate_and_fire_resets_to_v_reset_in_the_step_of_the_spike():
    """IntegrateAndFire: v = v + dt * r * x; spike where v > v_threshold; then v = v_reset."""
    factory = snn.IntegrateAndFire(r=1.0, v_threshold=1.0, v_reset=-0.5)
    out, state = run(factory, torch.tensor([0.75, 0.5, 0.5, 1.0]).reshape(4, 1, 1), (1,))
    # v: 0.75, 1.25 -> spike -> -0.5, 0.0, 1.0 (not above 1: no spike)
    assert out.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert state.v.item() == 1.0


def test_leaky_integrator_is_forward_euler():
    """LeakyIntegrator: v = v + dt / tau * (v_leak - v + r * x)."""
    out, _ = run(
        snn.LeakyIntegrator(tau=4.0, r=2.0, v_leak=1.0, dt=2.0), torch.tensor([1.0, 0.0]).reshape(2, 1, 1), (1,)
    )
    # v = 0 + 0.5 * (1 - 0 + 2) = 1.5; then 1.5 + 0.5 * (1 - 1.5 + 0) = 1.25
    assert out.flatten().tolist() == [1.5, 1.25]


def test_leaky_integrate_and_fire_is_forward_euler_with_reset():
    """LeakyIntegrateAndFire: the leaky step, a spike above v_threshold, the reset to v_reset."""
    factory = snn.LeakyIntegrateAndFire(tau=2.0, r=2.0, v_threshold=1.0, v_reset=0.25)
    out, state = run(factory, torch.tensor([0.75, 0.75, 0.5]).reshape(3, 1, 1), (1,))
    # v = 0.5 v + x: 0.75, 1.125 -> spike -> 0.25, 0.625
    assert out.flatten().tolist() == [0.0, 1.0, 0.0]
    assert state.v.item() == 0.625


def test_cuba_leaky_integrator_drives_the_membrane_with_the_new_current():
    """CubaLeakyIntegrator: i += dt / tau_syn * (w_in * x - i) first, then the membrane on the new i."""
    factory = snn.CubaLeakyIntegrator(tau_syn=2.0, tau_mem=4.0, r=4.0, w_in=4.0, v_leak=0.0)
    out, state = run(factory, torch.tensor([1.0, 0.0]).reshape(2, 1, 1), (1,))
    # i = 0.5 i + 2 x: 2, 1; v = 0.75 v + i: 2, 2.5
    assert out.flatten().tolist() == [2.0, 2.5]
    assert state.i.item() == 1.0


def test_cuba_leaky_integrate_and_fire_spikes_and_keeps_its_current():
    """CubaLeakyIntegrateAndFire: the reset sets the membrane only; the current goes on."""
    factory = snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=2.0, r=2.0, w_in=2.0, v_threshold=1.5)
    out, state = run(factory, torch.tensor([1.0, 1.0, 0.0]).reshape(3, 1, 1), (1,))
    # i = 0.5 i + x: 1, 1.5, 0.75; v = 0.5 v + i: 1, 2 -> spike -> 0, 0.75
    assert out.flatten().tolist() == [0.0, 1.0, 0.0]
    assert (state.v.item(), state.i.item()) == (0.75, 0.75)


def test_threshold_spikes_strictly_above():
    """Threshold: 1 where x > v_threshold (not at equality), per neuron."""
    out, _ = run(snn.Threshold(v_threshold=torch.tensor([0.0, 0.5, 1.0])), torch.tensor([[[0.0, 0.6, 1.0]]]))
    assert out.flatten().tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "snntorch_like, decay",
    [(snn.LeakyIntegrateAndFire(tau=5.0, r=5.0), 0.8), (snn.LeakyIntegrateAndFire(tau=5e-3, r=50.0, dt=1e-4), 0.98)],
    ids=["dt=1", "dt=1e-4"],
)
def test_r_equal_to_tau_over_dt_gives_the_unit_input_weight(snntorch_like, decay):
    """With r = tau / dt the step is v = (1 - dt / tau) v + x: the input weight is exactly 1."""
    runner = snntorch_like.make_model((1,)).net
    assert runner.gain.item() == 1.0
    assert runner.decay.item() == torch.tensor(decay, dtype=torch.float32).item()


# Per-neuron parameters


def test_vector_parameters_give_each_neuron_its_own_dynamics():
    """A tensor argument with one value per neuron equals separate layers of one value each."""
    taus = [2.0, 5.0, 10.0]
    xs = drive((12, 2, 3))
    out, _ = run(snn.LeakyIntegrateAndFire(tau=torch.tensor(taus), r=3.0), xs)
    for k, tau in enumerate(taus):
        single, _ = run(snn.LeakyIntegrateAndFire(tau=tau, r=3.0), xs[..., k : k + 1], (1,))
        assert torch.equal(out[..., k : k + 1], single)


def test_channel_parameters_broadcast_over_a_convolution_output():
    """A (C, 1, 1) tensor gives each channel of a (C, H, W) layer its own value."""
    thresholds = torch.tensor([0.2, 0.6]).reshape(2, 1, 1)
    xs = drive((6, 1, 2, 3, 3))
    out, _ = run(snn.IntegrateAndFire(v_threshold=thresholds), xs, (2, 3, 3))
    for c, threshold in enumerate([0.2, 0.6]):
        single, _ = run(snn.IntegrateAndFire(v_threshold=threshold), xs[:, :, c], (3, 3))
        assert torch.equal(out[:, :, c], single)


def test_coefficients_are_buffers_in_the_state_dict_not_parameters():
    """The per-neuron coefficients are state_dict buffers of the layer's shape; only the initial membrane trains."""
    model = snn.CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=torch.ones(2, 1, 1) * 4).make_model((2, 3, 3))
    keys = set(model.state_dict())
    coefficients = {"syn_decay", "syn_gain", "decay", "leak", "gain", "v_threshold", "v_reset"}
    assert {f"net.{name}" for name in coefficients} <= keys
    assert model.state_dict()["net.decay"].shape == (2, 3, 3)
    assert [name for name, _ in model.named_parameters()] == ["net.initial_v"]


def test_model_does_not_share_storage_with_the_tensor_argument():
    """Changing the tensor given to a factory, or a model's buffers, changes neither the factory nor the other."""
    tau = torch.tensor([2.0, 4.0])
    factory = snn.LeakyIntegrator(tau=tau)
    tau.fill_(100.0)
    assert factory.tau.tolist() == [2.0, 4.0]
    model = factory.make_model((2,))
    model.net.decay.fill_(0.0)
    assert factory.tau.tolist() == [2.0, 4.0]
    assert factory.make_model((2,)).net.decay.tolist() == [0.5, 0.75]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: snn.LeakyIntegrateAndFire(tau=0.0), "LeakyIntegrateAndFire.tau must be a positive number"),
        (lambda: snn.LeakyIntegrator(tau=torch.tensor([1.0, -2.0])), "LeakyIntegrator.tau must be positive"),
        (lambda: snn.CubaLeakyIntegrator(tau_syn=1.0, tau_mem=2.0, dt=-1.0), "CubaLeakyIntegrator.dt"),
        (lambda: snn.IntegrateAndFire(v_threshold=float("nan")), "IntegrateAndFire.v_threshold"),
        (lambda: snn.Integrator(r=torch.tensor([1.0, float("inf")])), "Integrator.r must be finite"),
    ],
    ids=["zero_tau", "negative_tensor_tau", "negative_dt", "nan_threshold", "infinite_r"],
)
def test_bad_values_are_refused_naming_the_argument(make, message):
    """A time constant or dt <= 0, or a value that isn't finite, raises ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        make()


def test_argument_of_the_wrong_type_is_refused():
    """A string or a bool where a number or tensor goes raises TypeError naming the argument."""
    with pytest.raises(TypeError, match="LeakyIntegrateAndFire.v_reset must be a number or a tensor"):
        snn.LeakyIntegrateAndFire(tau=2.0, v_reset="0")


def test_shape_that_does_not_broadcast_to_the_layer_is_refused():
    """A tensor argument that doesn't broadcast to the layer's shape raises ShapeError naming it."""
    with pytest.raises(ShapeError, match=r"LeakyIntegrateAndFire.tau has shape \(3,\).*\(4,\)"):
        snn.LeakyIntegrateAndFire(tau=torch.ones(3) * 2).make_model((4,))


# Fused sequence == step loop


@stateful
@pytest.mark.parametrize("in_shape", [(3,), (3, 2, 2)], ids=["flat", "conv"])
def test_fused_sequence_equals_step_loop(make, in_shape):
    """The fused sequence gives bit-identical outputs and states to the step loop, and gradients to tolerance."""
    factory = make()
    if len(in_shape) > 1:  # per-neuron values along the first axis
        factory = type(factory)(
            **{k: (v.reshape(3, 1, 1) if isinstance(v, torch.Tensor) else v) for k, v in vars(factory).items()}
        )
    model = factory.make_model(in_shape)
    xs = drive((20, 4, *in_shape))
    results = []
    for backend in ("torch", "reference"):
        x = xs.clone().requires_grad_()
        model.zero_grad()
        with fused.use_backend(backend):
            out, state = model(x)
        loss = (out * torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)).sum() + sum(
            s.square().sum() for s in state
        )
        loss.backward()
        results.append((out.detach(), [s.detach() for s in state], x.grad, model.net.initial_v.grad))
    (out, state, gx, gv0), (ref_out, ref_state, ref_gx, ref_gv0) = results
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(state, ref_state))
    if isinstance(factory, SPIKING):
        assert 0 < out.sum() < out.numel()
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-6)
    assert gv0 is None and ref_gv0 is None  # NIR neurons start at rest: their initial membrane isn't learnt


@stateful
def test_fused_sequence_without_gradients_equals_step_loop(make):
    """Under no_grad the fused forward equals the step loop bit for bit, from a given state."""
    model = make().make_model((3,))
    xs = drive((15, 2, 3), seed=1)
    _, start = model(drive((5, 2, 3), seed=2))
    with torch.no_grad():
        out, state = model(xs, start)
        with fused.use_backend("reference"):
            ref_out, ref_state = model(xs, start)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(state, ref_state))


def test_sequence_function_equals_unroll_with_number_coefficients():
    """The pure sequence function takes plain numbers as coefficients too."""
    p = N.CubaFireParameters(0.5, 1.0, 0.8, 0.0, 1.0, 1.0, 0.0, snn.ATan())
    xs = drive((10, 2, 4))
    state = N.CubaState(torch.zeros(2, 4), torch.zeros(2, 4))
    s, final = N.cuba_leaky_integrate_and_fire_sequence(xs, state, p)
    ref, ref_final = snn.functional.unroll(N.cuba_leaky_integrate_and_fire_step, xs, state, p)
    assert torch.equal(s, ref) and all(torch.equal(a, b) for a, b in zip(final, ref_final))


# Surrogate gradients and training


@pytest.mark.parametrize(
    "neuron",
    [make for make in STATEFUL if make().__class__ in SPIKING]
    + [lambda: snn.Threshold(v_threshold=torch.tensor([0.1, 0.2, 0.3]))],
    ids=[*(n for n in names if "Fire" in n), "Threshold"],
)
def test_surrogate_gradient_reaches_the_input_weights(neuron):
    """A spiking NIR neuron passes a nonzero surrogate gradient back to the Linear layer before it."""
    torch.manual_seed(0)
    model = rb.Sequential(nn.Linear(3), neuron()).make_model((5,))
    out, _ = model(torch.rand(10, 4, 5) * 2)
    out.sum().backward()
    weight = model.net.runners[0].module.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_recorded_membrane_is_the_state_after_reset():
    """Recording "<layer>.v" shows the membrane after each step, v_reset where it spiked."""
    model = rb.Sequential(nn.Identity(), snn.IntegrateAndFire(v_reset=-1.0)).make_model((1,))
    out, _, rec = model.record(torch.tensor([0.6, 0.6, 0.6]).reshape(3, 1, 1), ["1.v"])
    assert out.flatten().tolist() == [0.0, 1.0, 0.0]
    assert rec["1.v"].flatten().tolist() == pytest.approx([0.6, -1.0, -0.4])


# As data


@pytest.mark.parametrize(
    "make", [*STATEFUL, lambda: snn.Threshold(v_threshold=torch.tensor([0.1, 0.2, 0.3]))], ids=[*names, "Threshold"]
)
def test_spec_round_trip_gives_an_identical_model(make):
    """to_spec / JSON / from_spec gives an equal factory, and its model the same outputs."""
    factory = make()
    rebuilt = spec.from_spec(json.loads(json.dumps(spec.to_spec(factory))))
    assert rebuilt == factory and hash(rebuilt) == hash(factory)
    xs = drive((8, 2, 3))
    torch.manual_seed(0)
    out, _ = factory.make_model((3,))(xs)
    torch.manual_seed(0)
    assert torch.equal(rebuilt.make_model((3,))(xs)[0], out)


def test_registered_under_snn_names():
    """Every NIR neuron is a built-in spec type named "snn.<Name>"."""
    registered = set(spec.builtin_registry().factory_names())
    assert {f"snn.{name}" for name in [*names, "Threshold"]} <= registered


# snnTorch's neurons, as its NIR importer builds them


def snntorch_run(neuron, xs: torch.Tensor, states: int) -> tuple[torch.Tensor, ...]:
    """snnTorch ``neuron`` over xs (time, batch, n) from zero states -> (spikes, *states) per timestep."""
    state = [torch.zeros(xs.shape[1:]) for _ in range(states)]
    steps = []
    for x in xs:
        spikes, *state = neuron(x, *state)
        steps.append((spikes, *state))
    return tuple(torch.stack(values) for values in zip(*steps))


def test_leaky_integrate_and_fire_is_snntorch_leaky_bit_for_bit():
    """r = tau / dt, v_leak = 0: snnTorch's Leaky(beta=1 - dt / tau, reset "zero", no delay), spikes and membrane."""
    snntorch = pytest.importorskip("snntorch")
    dt, tau = 1e-4, torch.tensor([5e-4, 1e-3, 2e-3, 5e-3], dtype=torch.float64)
    xs = torch.rand(40, 3, 4, generator=torch.Generator().manual_seed(0)) * 0.6
    leaky = snntorch.Leaky(beta=(1 - dt / tau).float(), reset_mechanism="zero", reset_delay=False)
    spikes, v = snntorch_run(leaky, xs, states=1)
    model = snn.LeakyIntegrateAndFire(tau=tau, r=tau / dt, dt=dt).make_model((4,), full_state=True)
    with torch.no_grad():
        out, state = model(xs)
    assert 0 < spikes.sum() < spikes.numel()
    assert torch.equal(out, spikes) and torch.equal(state.v, v)


def test_cuba_leaky_integrate_and_fire_is_snntorch_synaptic_bit_for_bit():
    """w_in = tau_syn / dt, r = tau_mem / dt, v_leak = 0: snnTorch's Synaptic (reset "zero", no delay)."""
    snntorch = pytest.importorskip("snntorch")
    dt = 1e-4
    tau_syn = torch.tensor([3e-4, 6e-4, 1e-3, 2e-3], dtype=torch.float64)
    tau_mem = torch.tensor([5e-4, 1e-3, 2e-3, 5e-3], dtype=torch.float64)
    xs = torch.rand(40, 3, 4, generator=torch.Generator().manual_seed(1)) * 0.3
    synaptic = snntorch.Synaptic(
        alpha=(1 - dt / tau_syn).float(), beta=(1 - dt / tau_mem).float(), reset_mechanism="zero", reset_delay=False
    )
    spikes, i, v = snntorch_run(synaptic, xs, states=2)
    factory = snn.CubaLeakyIntegrateAndFire(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, w_in=tau_syn / dt, dt=dt)
    with torch.no_grad():
        out, state = factory.make_model((4,), full_state=True)(xs)
    assert 0 < spikes.sum() < spikes.numel()
    assert torch.equal(out, spikes) and torch.equal(state.v, v) and torch.equal(state.i, i)


def test_a_neuron_planned_on_the_meta_device_first_still_runs_on_the_cpu():
    """A server plans a network on the meta device before it runs it: constants cached while
    planning must not tie later runs to the meta device."""
    from rnnbuilder.snn.fused import torch_impl

    torch_impl._cached_scalar.cache_clear()  # as in a fresh process, whose first plan is on meta
    factory = rb.Sequential(nn.Linear(4), snn.LeakyIntegrateAndFire(tau=torch.tensor([2.0, 3.0, 4.0, 5.0])))
    with torch.device("meta"):
        planned = factory.make_model((3,))
        planned(torch.ones(1, 2, 3))
    out, _ = factory.make_model((3,))(torch.ones(5, 2, 3))
    assert out.device.type == "cpu" and out.shape == (5, 2, 4)
