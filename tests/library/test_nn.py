"""Spec of the stateless layers (``rnnbuilder.nn``) and the classic recurrent ones (``rnnbuilder.rnn``).

Each factory is built from an input shape alone (sizes inferred) and must compute what the
corresponding ``torch.nn`` module computes with the same weights, on every (time, batch) sample.
"""

from __future__ import annotations

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, rnn


class ScaleReference(torch.nn.Module):
    """x * scale: what nn.Scale computes (torch.nn has no such module)."""

    def __init__(self, shape):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return x * self.scale


# (factory, data in_shape, reference torch module for that in_shape, expected out_shape)
TABLE = [
    (nn.Linear(6), (5,), lambda: torch.nn.Linear(5, 6), (6,)),
    (
        nn.Linear(4, bias=False),
        (2, 3, 4),
        lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 4, bias=False)),
        (4,),
    ),
    (nn.Conv1d(4, 3, stride=2, padding=1), (2, 9), lambda: torch.nn.Conv1d(2, 4, 3, stride=2, padding=1), (4, 5)),
    (nn.Conv2d(6, 3, padding=1, groups=2), (4, 5, 6), lambda: torch.nn.Conv2d(4, 6, 3, padding=1, groups=2), (6, 5, 6)),
    (
        nn.Conv2d(3, (2, 3), dilation=2, bias=False),
        (2, 7, 8),
        lambda: torch.nn.Conv2d(2, 3, (2, 3), dilation=2, bias=False),
        (3, 5, 4),
    ),
    (nn.Conv3d(3, 2), (2, 4, 4, 4), lambda: torch.nn.Conv3d(2, 3, 2), (3, 3, 3, 3)),
    (nn.ConvTranspose1d(3, 3, stride=2), (2, 5), lambda: torch.nn.ConvTranspose1d(2, 3, 3, stride=2), (3, 11)),
    (
        nn.ConvTranspose2d(2, 2, stride=2, padding=1),
        (3, 4, 5),
        lambda: torch.nn.ConvTranspose2d(3, 2, 2, stride=2, padding=1),
        (2, 6, 8),
    ),
    (nn.MaxPool1d(2), (3, 8), lambda: torch.nn.MaxPool1d(2), (3, 4)),
    (nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 7), lambda: torch.nn.MaxPool2d(3, stride=2, padding=1), (2, 4, 4)),
    (nn.AvgPool1d(3, stride=1), (3, 8), lambda: torch.nn.AvgPool1d(3, stride=1), (3, 6)),
    (nn.AvgPool2d(2), (2, 6, 4), lambda: torch.nn.AvgPool2d(2), (2, 3, 2)),
    (nn.AdaptiveAvgPool1d(3), (2, 10), lambda: torch.nn.AdaptiveAvgPool1d(3), (2, 3)),
    (nn.AdaptiveAvgPool2d((2, 3)), (2, 7, 9), lambda: torch.nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 3)),
    (nn.AdaptiveMaxPool2d(2), (3, 5, 5), lambda: torch.nn.AdaptiveMaxPool2d(2), (3, 2, 2)),
    (nn.BatchNorm1d(), (6,), lambda: torch.nn.BatchNorm1d(6), (6,)),
    (nn.BatchNorm1d(momentum=0.3), (4, 5), lambda: torch.nn.BatchNorm1d(4, momentum=0.3), (4, 5)),
    (nn.BatchNorm2d(eps=1e-3), (3, 4, 4), lambda: torch.nn.BatchNorm2d(3, eps=1e-3), (3, 4, 4)),
    (nn.LayerNorm(), (3, 4, 5), lambda: torch.nn.LayerNorm((3, 4, 5)), (3, 4, 5)),
    (nn.GroupNorm(2), (4, 3, 3), lambda: torch.nn.GroupNorm(2, 4), (4, 3, 3)),
    (nn.Dropout(0.3), (5,), lambda: torch.nn.Dropout(0.3), (5,)),
    (nn.Dropout2d(0.3), (3, 4, 4), lambda: torch.nn.Dropout2d(0.3), (3, 4, 4)),
    (nn.Flatten(), (2, 3, 4), lambda: torch.nn.Flatten(), (24,)),
    (nn.Unflatten(0, (4, 4, 4)), (64,), lambda: torch.nn.Unflatten(1, (4, 4, 4)), (4, 4, 4)),
    (nn.Unflatten(-1, (2, 3)), (4, 6), lambda: torch.nn.Unflatten(-1, (2, 3)), (4, 2, 3)),
    (nn.Upsample(scale_factor=2), (2, 3, 4), lambda: torch.nn.Upsample(scale_factor=2), (2, 6, 8)),
    (
        nn.Upsample(scale_factor=2, mode="bilinear"),
        (2, 3, 4),
        lambda: torch.nn.Upsample(scale_factor=2, mode="bilinear"),
        (2, 6, 8),
    ),
    (nn.ReLU(), (2, 5), lambda: torch.nn.ReLU(), (2, 5)),
    (nn.LeakyReLU(0.2), (5,), lambda: torch.nn.LeakyReLU(0.2), (5,)),
    (nn.ELU(0.5), (5,), lambda: torch.nn.ELU(0.5), (5,)),
    (nn.GELU("tanh"), (5,), lambda: torch.nn.GELU("tanh"), (5,)),
    (nn.SiLU(), (5,), lambda: torch.nn.SiLU(), (5,)),
    (nn.Sigmoid(), (5,), lambda: torch.nn.Sigmoid(), (5,)),
    (nn.Tanh(), (5,), lambda: torch.nn.Tanh(), (5,)),
    (nn.Hardtanh(-0.5, 0.25), (5,), lambda: torch.nn.Hardtanh(-0.5, 0.25), (5,)),
    (nn.Softplus(2.0, 1.0), (5,), lambda: torch.nn.Softplus(2.0, 1.0), (5,)),
    (nn.Softmax(0), (3, 4), lambda: torch.nn.Softmax(1), (3, 4)),
    (nn.Softmax(-1), (3, 4), lambda: torch.nn.Softmax(-1), (3, 4)),
    (nn.LogSoftmax(1), (3, 4), lambda: torch.nn.LogSoftmax(2), (3, 4)),
    (nn.Identity(), (2, 3), lambda: torch.nn.Identity(), (2, 3)),
    (
        nn.Affine(torch.ones(4, 6), torch.zeros(4)),
        (2, 3),
        lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4)),
        (4,),
    ),
    (nn.Scale(torch.ones(3, 1)), (3, 4), lambda: ScaleReference((3, 1)), (3, 4)),
    (nn.SumPool2d(2), (2, 6, 4), lambda: torch.nn.AvgPool2d(2, divisor_override=1), (2, 3, 2)),
]
IDS = [f"{i}-{factory!r}" for i, (factory, *_) in enumerate(TABLE)]
PARAMETERISED = [row for row in TABLE if list(row[2]().parameters())]


def copy_weights(model: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Copy the model's parameters and buffers into ``ref``, in order, checking shapes."""
    with torch.no_grad():
        for kind in ("parameters", "buffers"):
            ours, theirs = list(getattr(model, kind)()), list(getattr(ref, kind)())
            assert len(ours) == len(theirs), kind
            for a, b in zip(ours, theirs):
                assert a.shape == b.shape
                b.copy_(a)


def randomize_(module: torch.nn.Module) -> None:
    """Give every floating parameter and buffer random values (norm layers start at 1 and 0)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def make(factory, in_shape, train=False):
    model = factory.make_model(in_shape)
    randomize_(model)
    return model.train(train)


# --------------------------------------------------------------------------------------------
# Equality with torch.nn
# --------------------------------------------------------------------------------------------


def test_table_covers_every_factory():
    """Every factory exported by rnnbuilder.nn is checked against torch.nn below."""
    # Delay keeps state (tested with NIR import, tests/library/test_nir_import.py); the rest is no factory.
    exported = set(nn.__all__) - {"StatelessFactory", "Bilinear", "Delay", "DelayState", "delay_step"}
    covered = {type(factory).__name__ for factory, *_ in TABLE}
    assert exported == covered


@pytest.mark.parametrize(("factory", "in_shape", "reference", "out_shape"), TABLE, ids=IDS)
def test_out_shape_is_inferred(factory, in_shape, reference, out_shape):
    """out_shape(in_shape), model.out_shape and the real output shape agree with torch."""
    assert factory.out_shape(in_shape) == out_shape
    model = factory.make_model(in_shape)
    assert model.out_shape == out_shape
    out, state = model(torch.randn(3, 2, *in_shape))
    assert out.shape == (3, 2, *out_shape)
    assert state == ()


@pytest.mark.parametrize(("factory", "in_shape", "reference", "out_shape"), TABLE, ids=IDS)
def test_equals_torch_module_per_timestep(factory, in_shape, reference, out_shape):
    """In eval mode, output at time t equals the torch.nn module (same weights) applied to x[t]."""
    model = make(factory, in_shape)
    ref = reference().eval()
    copy_weights(model, ref)
    x = torch.randn(4, 3, *in_shape, generator=torch.Generator().manual_seed(1))
    out, _ = model(x)
    expected = torch.stack([ref(x_t) for x_t in x])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(("factory", "in_shape", "reference", "out_shape"), TABLE, ids=IDS)
def test_time_and_batch_are_independent_samples(factory, in_shape, reference, out_shape):
    """Changing the input at one (t, b) changes the output there and nowhere else (eval mode)."""
    model = make(factory, in_shape)
    x = torch.randn(4, 3, *in_shape, generator=torch.Generator().manual_seed(2))
    out, _ = model(x)
    x2 = x.clone()
    x2[2, 1] = torch.randn(in_shape, generator=torch.Generator().manual_seed(3)) * 3
    out2, _ = model(x2)
    changed = (out2 != out).flatten(2).any(-1)
    assert changed[2, 1]
    changed[2, 1] = False
    assert not changed.any()
    # and each sample alone gives the same output as within the sequence
    torch.testing.assert_close(model(x[2:3, 1:2])[0][0, 0], out[2, 1])


@pytest.mark.parametrize(
    ("factory", "in_shape", "reference"), [row[:3] for row in TABLE if "BatchNorm" in repr(row[0])]
)
def test_batchnorm_training_statistics_over_time_and_batch(factory, in_shape, reference):
    """In training mode BatchNorm normalizes over time and batch together and updates running stats."""
    model = make(factory, in_shape, train=True)
    ref = reference().train()
    copy_weights(model, ref)
    x = torch.randn(5, 4, *in_shape, generator=torch.Generator().manual_seed(4))
    out, _ = model(x)
    expected = ref(x.reshape(20, *in_shape)).reshape(out.shape)
    torch.testing.assert_close(out, expected)
    for ours, theirs in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_training_zeroes_and_rescales(p):
    """Dropout in training mode keeps x / (1 - p) or 0, with a fresh mask at every timestep."""
    model = nn.Dropout(p).make_model((200,)).train()
    x = torch.rand(6, 2, 200) + 1
    torch.manual_seed(0)
    out, _ = model(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    assert abs(1 - kept.float().mean().item() - p) < 0.05
    assert not torch.equal(kept[0], kept[1])


def test_dropout2d_training_zeroes_whole_channels():
    """Dropout2d in training mode zeroes whole channels of (C, H, W)."""
    model = nn.Dropout2d(0.5).make_model((16, 3, 3)).train()
    torch.manual_seed(0)
    out, _ = model(torch.rand(4, 2, 16, 3, 3) + 1)
    per_channel = (out != 0).flatten(3)
    assert (per_channel.all(-1) | ~per_channel.any(-1)).all()
    assert per_channel.any() and not per_channel.all()


def test_bilinear_on_a_list_input():
    """Bilinear takes a two-vector list (a.append(b)) and equals torch.nn.Bilinear."""
    n = rb.Network()
    n.a = n.input.apply(nn.Tanh())
    n.output = n.input.append(n.a).apply(nn.Bilinear(3))
    model = n.make_model((5,))
    assert model.out_shape == (3,)
    ref = torch.nn.Bilinear(5, 5, 3)
    copy_weights(model, ref)
    x = torch.randn(4, 2, 5)
    out, _ = model(x)
    torch.testing.assert_close(out, ref(x, torch.tanh(x)))


def test_bilinear_rejects_a_tensor_input():
    """Bilinear on a plain tensor input raises ShapeError pointing to append."""
    with pytest.raises(rb.ShapeError, match="append"):
        nn.Bilinear(3).make_model((5,))


# --------------------------------------------------------------------------------------------
# Shapes and errors
# --------------------------------------------------------------------------------------------


def test_linear_flattens_images():
    """Linear on (C, H, W) is a Linear on the flattened C*H*W features."""
    model = make(nn.Linear(7), (2, 3, 4))
    weight, bias = model.parameters()
    assert weight.shape == (7, 24)
    x = torch.randn(3, 2, 2, 3, 4)
    out, _ = model(x)
    torch.testing.assert_close(out, x.reshape(3, 2, 24) @ weight.T + bias)


def test_conv2d_on_a_vector_raises_shape_error():
    """Conv2d on a (64,) input raises ShapeError saying it wants (channels, height, width)."""
    for attempt in (lambda: nn.Conv2d(8, 3).make_model((64,)), lambda: nn.Conv2d(8, 3).out_shape((64,))):
        with pytest.raises(rb.ShapeError) as info:
            attempt()
        message = str(info.value)
        assert "(channels, height, width)" in message
        assert "(64,)" in message


@pytest.mark.parametrize(
    ("factory", "dims"),
    [
        (nn.Conv1d(8, 3), "(channels, length)"),
        (nn.Conv2d(8, 3), "(channels, height, width)"),
        (nn.Conv3d(8, 3), "(channels, depth, height, width)"),
        (nn.ConvTranspose1d(8, 3), "(channels, length)"),
        (nn.ConvTranspose2d(8, 3), "(channels, height, width)"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, rb.ModuleFactory) else None,
)
def test_conv_shape_error_names_the_expected_dims(factory, dims):
    """A convolution given the wrong rank names the dims it expects, as its docstring does."""
    assert dims in type(factory).__doc__
    with pytest.raises(rb.ShapeError) as info:
        factory.make_model((64,))
    assert dims in str(info.value)
    assert "(64,)" in str(info.value)


@pytest.mark.parametrize(
    ("factory", "in_shape"),
    [
        (nn.Linear(8), (5,)),
        (nn.Conv2d(4, 3), (2, 6, 6)),
        (nn.BatchNorm1d(), (5,)),
        (rnn.LSTM(4), (3,)),
        (rnn.TempConvPlus2d(2, 3, 2), (1, 5, 5)),
    ],
    ids=repr,
)
def test_out_shape_leaves_the_rng_alone(factory, in_shape):
    """out_shape infers shapes without drawing from the global random number generator."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    factory.out_shape(in_shape)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_shape_error_names_the_layer_in_a_network():
    """A shape mismatch inside a Network names the offending layer."""
    n = rb.Network()
    n.features = n.input.apply(nn.Linear(64))
    n.output = n.features.apply(nn.Conv2d(8, 3))
    with pytest.raises(rb.ShapeError, match="output"):
        n.make_model((10,))


def test_kernel_larger_than_input_raises_shape_error():
    """A kernel bigger than the image raises ShapeError, not a torch RuntimeError."""
    with pytest.raises(rb.ShapeError, match=r"\(1, 2, 2\)"):
        nn.Conv2d(4, 5).make_model((1, 2, 2))


@pytest.mark.parametrize("make_bad", [lambda: nn.Linear(0), lambda: nn.Conv2d(-1, 3), lambda: nn.Dropout(1.5)])
def test_invalid_arguments_raise_value_error(make_bad):
    """Non-positive sizes and out-of-range probabilities are rejected at construction."""
    with pytest.raises(ValueError):
        make_bad()


# --------------------------------------------------------------------------------------------
# Independence of built models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "in_shape", "reference", "out_shape"), PARAMETERISED, ids=repr)
def test_every_make_model_has_its_own_parameters(factory, in_shape, reference, out_shape):
    """Two make_model calls give distinct parameter tensors; changing one leaves the other alone."""
    a, b = factory.make_model(in_shape), factory.make_model(in_shape)
    pa, pb = list(a.parameters()), list(b.parameters())
    assert pa and len(pa) == len(pb)
    assert not {t.data_ptr() for t in pa} & {t.data_ptr() for t in pb}
    before = [t.detach().clone() for t in pb]
    with torch.no_grad():
        for t in pa:
            t.add_(1.0)
    assert all(torch.equal(t, c) for t, c in zip(pb, before))


def test_factories_hold_no_parameters():
    """A factory is a plain specification: weights are initialised afresh by each make_model."""
    factory = nn.Linear(16)
    a, b = factory.make_model((8,)), factory.make_model((8,))
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    assert not isinstance(factory, torch.nn.Module)


# --------------------------------------------------------------------------------------------
# rnn.LSTM / rnn.GRU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "torch_class"), [(rnn.LSTM(8, num_layers=2), torch.nn.LSTM), (rnn.GRU(8, num_layers=2), torch.nn.GRU)]
)
def test_rnn_equals_torch_rnn_on_a_sequence(factory, torch_class):
    """LSTM/GRU on a (2, 3) input equal torch's on the flattened 6 features, outputs and state."""
    model = factory.make_model((2, 3))
    assert model.out_shape == (8,)
    ref = torch_class(6, 8, 2)
    copy_weights(model, ref)
    x = torch.randn(7, 4, 2, 3)
    out, state = model(x)
    ref_out, ref_state = ref(x.reshape(7, 4, 6))
    torch.testing.assert_close(out, ref_out)
    if torch_class is torch.nn.LSTM:
        assert state[0].shape == state[1].shape == (2, 4, 8)
        torch.testing.assert_close(state[0], ref_state[0])
        torch.testing.assert_close(state[1], ref_state[1])
    else:
        assert state.shape == (2, 4, 8)
        torch.testing.assert_close(state, ref_state)


@pytest.mark.parametrize(("factory", "torch_class"), [(rnn.LSTM(5), torch.nn.LSTM), (rnn.GRU(5), torch.nn.GRU)])
def test_rnn_step_by_step_equals_torch_rnn(factory, torch_class):
    """Stepping one timestep at a time ('batch' mode) equals torch's whole-sequence output."""
    model = factory.make_model((3,), input_mode="batch")
    ref = torch_class(3, 5)
    copy_weights(model, ref)
    x = torch.randn(6, 2, 3)
    state, outs = None, []
    for x_t in x:
        y, state = model(x_t, state)
        outs.append(y)
    ref_out, _ = ref(x)
    torch.testing.assert_close(torch.stack(outs), ref_out)


@pytest.mark.parametrize("factory", [rnn.LSTM(4), rnn.GRU(4)], ids=repr)
def test_rnn_chunked_equals_unchunked(factory):
    """LSTM/GRU over 30 steps equals 12 then 18 with the state carried."""
    model = factory.make_model((3,))
    x = torch.randn(30, 2, 3)
    whole, _ = model(x)
    first, state = model(x[:12])
    second, _ = model(x[12:], state)
    torch.testing.assert_close(whole, torch.cat([first, second]))


# --------------------------------------------------------------------------------------------
# rnn.TempConvPlus2d
# --------------------------------------------------------------------------------------------


def causal_conv_reference(x, weight, bias, **conv_args):
    """y_t = b + sum_{k < K} conv2d(x_{t-k}, W_k), W_k = weight[:, :, K-1-k], zero frames before t=0."""
    frames = weight.shape[2]
    out = []
    for t in range(x.shape[0]):
        y = 0
        for k in range(frames):
            if t - k >= 0:
                y = y + torch.nn.functional.conv2d(x[t - k], weight[:, :, frames - 1 - k], **conv_args)
        out.append(y + bias.reshape(1, -1, 1, 1))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("factory", "conv_args", "out_shape"),
    [
        (rnn.TempConvPlus2d(4, 3, 3, padding=1), {"padding": 1}, (4, 6, 5)),
        (rnn.TempConvPlus2d(2, (3, 2), 2, stride=2), {"stride": 2}, (2, 2, 2)),
        (rnn.TempConvPlus2d(3, 1, 1), {}, (3, 6, 5)),
    ],
    ids=["k3-pad", "k2-stride", "k1"],
)
def test_tempconv_is_a_causal_sum_of_2d_convs(factory, conv_args, out_shape):
    """TempConvPlus2d output at t is the bias plus conv2d of frame t-k with weight slice K-1-k."""
    model = factory.make_model((2, 6, 5))
    assert model.out_shape == out_shape
    weight = next(p for p in model.parameters() if p.dim() == 5)
    bias = next(p for p in model.parameters() if p.dim() == 1)
    assert weight.shape[2] == factory.time_kernel_size
    x = torch.randn(7, 3, 2, 6, 5)
    out, state = model(x)
    assert out.shape == (7, 3, *out_shape)
    torch.testing.assert_close(out, causal_conv_reference(x, weight.detach(), bias.detach(), **conv_args))


def test_tempconv_state_is_the_last_frames():
    """The state is the last K-1 input frames as (batch, C, K-1, H, W), zeros at the start."""
    model = rnn.TempConvPlus2d(4, 3, 3).make_model((2, 5, 5))
    assert torch.equal(model.get_initial_state(3), torch.zeros(3, 2, 2, 5, 5))
    x = torch.randn(6, 3, 2, 5, 5)
    _, state = model(x)
    assert torch.equal(state, x[-2:].permute(1, 2, 0, 3, 4))


def test_tempconv_chunked_equals_unchunked():
    """TempConvPlus2d over 20 steps equals 1 + 7 + 12 steps with the state carried."""
    model = rnn.TempConvPlus2d(3, 3, 4, padding=1).make_model((2, 5, 5))
    x = torch.randn(20, 2, 2, 5, 5)
    whole, final = model(x)
    parts, state = [], None
    for chunk in (x[:1], x[1:8], x[8:]):
        y, state = model(chunk, state)
        parts.append(y)
    torch.testing.assert_close(whole, torch.cat(parts))
    torch.testing.assert_close(final, state)


def test_tempconv_needs_an_image_input():
    """TempConvPlus2d on a vector raises ShapeError naming (channels, height, width)."""
    with pytest.raises(rb.ShapeError, match=r"\(channels, height, width\)"):
        rnn.TempConvPlus2d(4, 3, 2).make_model((64,))


def test_lstm_layers_are_bounded():
    """An LSTM or GRU deeper than MAX_LAYERS is refused at once, with the bound."""
    from rnnbuilder import rnn

    with pytest.raises(ValueError, match=f"at most {rnn.MAX_LAYERS}"):
        rnn.GRU(4, num_layers=rnn.MAX_LAYERS + 1)
