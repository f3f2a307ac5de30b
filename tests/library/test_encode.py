"""rnnbuilder.encode against snntorch.spikegen: latency and delta give its exact spikes, rate its draws
from a generator in the same state, with the right mean; encoder types describe and rebuild as data."""

import pytest
import torch
from snntorch import spikegen

from rnnbuilder import RnnbuilderError, ShapeError, SpecError, encode, spec


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DATA = torch.rand(4, 3, 5, generator=seeded(1))  # (batch, *features), in [0, 1]
SERIES = torch.randn(20, 4, 6, generator=seeded(2)).cumsum(0)  # (time, batch, features)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tau": 3.0},
        {"normalize": True},
        {"linear": True, "tau": 10.0},
        {"linear": True, "normalize": True},
        {"normalize": True, "first_spike_time": 4},
        {"linear": True, "normalize": True, "first_spike_time": 3, "threshold": 0.3, "clip": True},
        {"threshold": 0.2, "clip": True, "on_target": 0.8, "off_target": 0.1, "normalize": True},
        {"tau": 2.0, "first_spike_time": 2, "epsilon": 1e-3, "threshold": 0.05},
    ],
)
def test_latency_equals_snntorch(kwargs):
    """latency gives exactly snntorch.spikegen.latency's spikes, for each option."""
    ours = encode.latency(DATA, num_steps=25, **kwargs)
    theirs = spikegen.latency(DATA, num_steps=25, **kwargs)
    assert ours.shape == (25, 4, 3, 5)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 1.0},
        {"padding": True},
        {"off_spike": True},
        {"threshold": 0.5, "padding": True, "off_spike": True},
    ],
)
def test_delta_equals_snntorch(kwargs):
    """delta gives exactly snntorch.spikegen.delta's spikes, for each option."""
    assert torch.equal(encode.delta(SERIES, **kwargs), spikegen.delta(SERIES, **kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_steps": 30},
        {"num_steps": 30, "gain": 0.5, "offset": 0.1},
        {"num_steps": 30, "first_spike_time": 7},
        {"time_var_input": True, "first_spike_time": 3},
    ],
)
def test_rate_draws_what_snntorch_draws_from_the_same_state(kwargs):
    """rate with a generator seeded s gives snntorch's spikes after torch.manual_seed(s)."""
    data = DATA if "num_steps" in kwargs else torch.rand(10, 4, 5, generator=seeded(3))
    with torch.random.fork_rng():
        torch.manual_seed(5)
        theirs = spikegen.rate(data, **kwargs)
    assert torch.equal(encode.rate(data, **kwargs, generator=seeded(5)), theirs)


def test_rate_is_reproducible_under_a_seed():
    """The same generator seed gives the same spikes; another seed, others."""
    first, again = (encode.rate(DATA, num_steps=50, generator=seeded(9)) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, encode.rate(DATA, num_steps=50, generator=seeded(10)))


def test_rate_fires_with_the_value_as_probability():
    """Bernoulli rate code: the mean spike count per step is the clipped value gain * data + offset."""
    data = torch.tensor([-0.5, 0.0, 0.1, 0.5, 0.9, 1.0, 2.0]).expand(200, 7)  # (batch, features)
    spikes = encode.rate(data, num_steps=500, generator=seeded(0))  # 100,000 draws per feature
    expected = torch.tensor([0.0, 0.0, 0.1, 0.5, 0.9, 1.0, 1.0])
    # Standard error at most 0.5 / sqrt(1e5) = 0.0016: 0.01 is over six of them.
    torch.testing.assert_close(spikes.mean((0, 1)), expected, atol=0.01, rtol=0)


def test_poisson_rate_fires_once_at_least_as_often_as_a_poisson_process():
    """poisson=True: a timestep spikes with probability 1 - exp(-count), count the expected spikes per step."""
    counts = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0])
    spikes = encode.rate(counts.expand(200, 5), num_steps=500, poisson=True, generator=seeded(0))
    torch.testing.assert_close(spikes.mean((0, 1)), 1 - torch.exp(-counts), atol=0.01, rtol=0)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "encoder, data",
    [
        (encode.Rate(num_steps=12, gain=0.7), DATA),
        (encode.Rate(time_var_input=True, first_spike_time=2), torch.rand(9, 4, 5)),
        (encode.Latency(num_steps=12, linear=True, normalize=True), DATA),
        (encode.Delta(threshold=0.5, off_spike=True), SERIES),
    ],
)
def test_encoder_types_call_their_function(encoder, data):
    """An encoder type gives its function's spikes, of the shape encoded_shape says."""
    function = {encode.Rate: encode.rate, encode.Latency: encode.latency, encode.Delta: encode.delta}[type(encoder)]
    expected = function(data, **encoder.arguments(), **({"generator": seeded(4)} if function is encode.rate else {}))
    spikes = encoder(data, generator=seeded(4))
    assert torch.equal(spikes, expected)
    assert tuple(spikes.shape) == encoder.encoded_shape(tuple(data.shape))


@pytest.mark.parametrize(
    "encoder",
    [encode.Rate(num_steps=5, poisson=True), encode.Latency(num_steps=9, tau=2.0), encode.Delta(padding=True)],
)
def test_encoder_types_are_described_as_data(encoder):
    """Each registered encoder type travels as JSON and comes back equal."""
    description = spec.encoder_to_spec(encoder)
    assert description["type"] == f"encode.{type(encoder).__name__}"
    assert spec.encoder_from_spec(description) == encoder


def test_the_registry_names_the_encoders():
    """builtin_registry lists the three encoder types, apart from factories and surrogates."""
    registry = spec.builtin_registry()
    assert registry.encoder_names() == ["encode.Delta", "encode.Latency", "encode.Rate"]
    assert not set(registry.encoder_names()) & set(registry.factory_names() + registry.surrogate_names())


def test_a_factory_is_no_encoder():
    """A description naming a factory where an encoder goes is refused."""
    with pytest.raises(SpecError, match="unknown encoder type"):
        spec.encoder_from_spec({"type": "nn.Linear", "args": {"out_features": 3}})


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: encode.Rate(), "num_steps"),
        (lambda: encode.Rate(num_steps=0), "num_steps"),
        (lambda: encode.Rate(num_steps=5, time_var_input=True), "num_steps"),
        (lambda: encode.Rate(num_steps=5, first_spike_time=5), "first_spike_time"),
        (lambda: encode.Rate(num_steps=5, gain=float("nan")), "gain"),
        (lambda: encode.Latency(num_steps=5, threshold=1.0), "threshold"),
        (lambda: encode.Latency(num_steps=5, tau=0.0), "tau"),
        (lambda: encode.Latency(num_steps=2.5), "num_steps"),
        (lambda: encode.Delta(threshold=0.0), "threshold"),
        (lambda: encode.rate(DATA, num_steps=-1), "num_steps"),
        (lambda: encode.latency(DATA, num_steps=3, first_spike_time=-1), "first_spike_time"),
    ],
)
def test_bad_arguments_name_the_argument(make, argument):
    """A bad argument raises RnnbuilderError naming it."""
    with pytest.raises(RnnbuilderError, match=argument):
        make()


def test_a_bad_argument_in_a_description_is_a_spec_error():
    """A description with a bad argument raises SpecError at the encoder, naming the argument."""
    with pytest.raises(SpecError, match="tau must be positive") as error:
        spec.encoder_from_spec({"type": "encode.Latency", "args": {"num_steps": 5, "tau": -1}})
    assert error.value.path == "encoder"


@pytest.mark.parametrize("code", [encode.Rate(num_steps=3), encode.Latency(num_steps=3), encode.Delta()])
def test_non_finite_data_is_refused(code):
    """Data with NaN raises RnnbuilderError saying so."""
    with pytest.raises(RnnbuilderError, match="NaN"):
        code(torch.tensor([[0.5, float("nan")]]))


def test_latency_needs_data_in_the_unit_interval():
    """latency refuses data outside [0, 1], saying to scale it."""
    with pytest.raises(RnnbuilderError, match=r"\[0, 1\]"):
        encode.latency(torch.tensor([0.5, 1.5]), num_steps=5, normalize=True)


def test_latency_refuses_spike_times_past_the_end():
    """A spike time past num_steps raises, naming tau and normalize as the way out."""
    with pytest.raises(RnnbuilderError, match="normalize=True"):
        encode.latency(torch.tensor([0.0, 1.0]), num_steps=5)


@pytest.mark.parametrize("kwargs", [{"epsilon": 1e-30}, {"tau": 1e300}, {"epsilon": 1e-30, "normalize": True}])
def test_latency_refuses_spike_times_that_overflow(kwargs):
    """An epsilon below float32's resolution or a huge tau raises, naming them, rather than indexing garbage."""
    with pytest.raises(RnnbuilderError, match="epsilon"):
        encode.latency(torch.tensor([0.0, 0.5]), num_steps=5, **kwargs)


def test_delta_needs_a_time_axis():
    """delta of a 0-d tensor raises ShapeError."""
    with pytest.raises(ShapeError, match="time axis"):
        encode.delta(torch.tensor(1.0))


def test_integer_data_becomes_float32_spikes():
    """Integer data is encoded as float32."""
    assert encode.delta(torch.tensor([[0], [2], [2]]), threshold=1).dtype == torch.float32
