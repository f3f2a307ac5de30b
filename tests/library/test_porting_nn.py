"""Arguments of ``rnnbuilder.nn`` factories and ``rnn.TempConvPlus2d``, as torch and rnnbuilder 0.1.1 have them.

Every factory takes the arguments of the ``torch.nn`` module it wraps (same names, order and
defaults), less the sizes inferred from the input and ``device``/``dtype``; rnnbuilder 0.1.1's
positional order is kept. String values torch would only refuse later, and ``return_indices=True``
(which can't flow through a layer), raise ``ValueError`` at construction.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

import rnnbuilder as rb
from rnnbuilder import nn, rnn, snn, spec
from rnnbuilder_sim.wire import networks as wire

# The factories that wrap a torch.nn module; Affine, Scale, SumPool2d and Delay (for NIR graphs) wrap none.
FACTORIES = [name for name in nn.__all__ if hasattr(torch.nn, name)]

INFERRED = {  # constructor arguments that come from the input shape
    "Linear": {"in_features"},
    "Bilinear": {"in1_features", "in2_features"},
    **{name: {"in_channels"} for name in FACTORIES if name.startswith("Conv")},
    "BatchNorm1d": {"num_features"},
    "BatchNorm2d": {"num_features"},
    "LayerNorm": {"normalized_shape"},
    "GroupNorm": {"num_channels"},
}
ADDED = {  # taken after torch's arguments: the initial weights (a NIR graph's, say)
    **{name: ["weight"] for name in FACTORIES if name.startswith("Conv") and "Transpose" not in name},
}
LEFT_OUT = {  # not taken on purpose: device/dtype (models move with .to()), deprecated spellings
    "Hardtanh": {"min_value", "max_value"},
}
DEFAULTS_DIFFER = {  # data dims count from 0, after time and batch; torch's Softmax dim=None is deprecated
    ("Flatten", "start_dim"): 0,
    ("Softmax", "dim"): 0,
    ("LogSoftmax", "dim"): 0,
}
ORIGINAL = {  # rnnbuilder 0.1.1's positional arguments of the factories it had
    "Linear": ["out_features", "bias"],
    "Conv2d": ["out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"],
    "ReLU": ["inplace"],
    "Sigmoid": [],
    "Tanh": [],
    "BatchNorm2d": ["eps", "momentum", "affine", "track_running_stats"],
    "MaxPool2d": ["kernel_size", "stride", "padding", "dilation"],
}
INPLACE = [
    (nn.ReLU(inplace=True), (5,)),
    (nn.LeakyReLU(0.1, inplace=True), (5,)),
    (nn.ELU(inplace=True), (5,)),
    (nn.SiLU(inplace=True), (5,)),
    (nn.Hardtanh(inplace=True), (5,)),
    (nn.Dropout(0.2, inplace=True), (5,)),
    (nn.Dropout2d(0.2, inplace=True), (2, 3, 3)),
]


def torch_parameters(name: str) -> list[inspect.Parameter]:
    """torch.nn.<name>'s named constructor parameters, less the inferred ones and device/dtype."""
    skip = INFERRED.get(name, set()) | LEFT_OUT.get(name, set()) | {"device", "dtype"}
    parameters = inspect.signature(getattr(torch.nn, name)).parameters.values()
    return [p for p in parameters if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def positional(cls) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Copy a's parameters and buffers into b, in order."""
    with torch.no_grad():
        for x, y in zip([*a.parameters(), *a.buffers()], [*b.parameters(), *b.buffers()], strict=True):
            y.copy_(x)


def per_frame(model, ref, x):
    """model's output and ref applied to each (batch) frame of x, stacked."""
    out, _ = model(x)
    return out, torch.stack([ref(x_t) for x_t in x])


# --------------------------------------------------------------------------------------------
# The contract: torch's arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_arguments_are_torchs_less_the_inferred_ones(name):
    """A factory's arguments are torch's (names, order, keyword-only) less inferred sizes and device/dtype."""
    ours = [(p.name, p.kind == p.KEYWORD_ONLY) for p in inspect.signature(getattr(nn, name)).parameters.values()]
    theirs = [(p.name, p.kind == p.KEYWORD_ONLY) for p in torch_parameters(name)]
    assert ours == theirs + [(added, False) for added in ADDED.get(name, [])]


@pytest.mark.parametrize("name", FACTORIES)
def test_defaults_are_torchs(name):
    """A factory's defaults are torch's, except the dims that count data dims."""
    ours = inspect.signature(getattr(nn, name)).parameters
    for p in torch_parameters(name):
        assert ours[p.name].default == DEFAULTS_DIFFER.get((name, p.name), p.default), p.name


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_positional_order_is_kept(name):
    """Factories rnnbuilder 0.1.1 had take its positional arguments first, in its order."""
    assert positional(getattr(nn, name))[: len(ORIGINAL[name])] == ORIGINAL[name]


def test_tempconv_arguments():
    """TempConvPlus2d takes the original's 2-D arguments positionally after dilation; time_dilation by keyword."""
    assert positional(rnn.TempConvPlus2d) == [
        "out_channels",
        "kernel_size",
        "time_kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "bias",
        "padding_mode",
    ]
    assert inspect.signature(rnn.TempConvPlus2d).parameters["time_dilation"].kind == inspect.Parameter.KEYWORD_ONLY


# --------------------------------------------------------------------------------------------
# inplace
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "in_shape"), INPLACE, ids=repr)
def test_inplace_builds_an_inplace_module(factory, in_shape):
    """inplace=True builds the torch module with inplace=True."""
    model = factory.make_model(in_shape)
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == [True]


def test_relu_inplace_after_linear_trains():
    """Sequential(Linear, ReLU(inplace=True)) gives the out-of-place outputs and gradients, and trains."""
    torch.manual_seed(0)
    inplace = rb.Sequential(nn.Linear(6), nn.ReLU(inplace=True)).make_model((4,))
    plain = rb.Sequential(nn.Linear(6), nn.ReLU()).make_model((4,))
    same_weights(inplace, plain)
    x, target = torch.randn(5, 3, 4), torch.rand(5, 3, 6)
    for model in (inplace, plain):
        F.mse_loss(model(x)[0], target).backward()
    torch.testing.assert_close(inplace(x)[0], plain(x)[0])
    for a, b in zip(inplace.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    optimizer = torch.optim.SGD(inplace.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.mse_loss(inplace(x)[0], target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_relu_inplace_in_a_network_with_a_cycle():
    """ReLU(inplace=True) after a Linear layer in a Network, inside and before a cycle, matches out-of-place."""

    def network(inplace: bool) -> rb.Network:
        n = rb.Network()
        n.h = rb.Placeholder()
        n.a = n.input.apply(nn.Linear(4))
        n.b = n.a.apply(nn.ReLU(inplace=inplace))
        n.h = n.b.stack(n.h).apply(nn.Linear(4), nn.ReLU(inplace=inplace), snn.LIF(spike_function=snn.ATan()))
        n.output = n.h.apply(nn.Linear(2))
        return n

    torch.manual_seed(1)
    inplace, plain = network(True).make_model((3,)), network(False).make_model((3,))
    same_weights(inplace, plain)
    x = torch.randn(6, 2, 3) * 3
    outs = []
    for model in (inplace, plain):
        out, state = model(x)
        out.square().sum().backward()
        outs.append((out, state))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(rb.named_leaves(outs[0][1]), rb.named_leaves(outs[1][1]))
    for a, b in zip(inplace.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_inplace_on_the_network_input_overwrites_it():
    """As in torch, an in-place first layer overwrites the caller's input tensor."""
    x = torch.randn(3, 2, 5)
    out, _ = nn.ReLU(inplace=True).make_model((5,))(x)
    assert torch.equal(x, out) and (x >= 0).all()


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_padding_mode_equals_torch(mode):
    """Conv2d(padding_mode=...) equals torch.nn.Conv2d with the same weights."""
    model = nn.Conv2d(4, 3, padding=(1, 2), groups=2, padding_mode=mode).make_model((2, 5, 6))
    ref = torch.nn.Conv2d(2, 4, 3, padding=(1, 2), groups=2, padding_mode=mode)
    same_weights(model, ref)
    out, expected = per_frame(model, ref, torch.randn(3, 2, 2, 5, 6))
    assert out.shape == (3, 2, 4, 5, 8)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("factory", "ref", "in_shape", "out_shape"),
    [
        (
            nn.Conv2d(3, (3, 4), padding="same", dilation=2),
            torch.nn.Conv2d(2, 3, (3, 4), padding="same", dilation=2),
            (2, 7, 8),
            (3, 7, 8),
        ),
        (nn.Conv1d(3, 3, padding="valid"), torch.nn.Conv1d(2, 3, 3, padding="valid"), (2, 9), (3, 7)),
        (
            nn.Conv3d(2, 2, padding="same", padding_mode="circular"),
            torch.nn.Conv3d(1, 2, 2, padding="same", padding_mode="circular"),
            (1, 3, 4, 4),
            (2, 3, 4, 4),
        ),
    ],
    ids=["2d-same", "1d-valid", "3d-same-circular"],
)
def test_conv_string_padding_equals_torch(factory, ref, in_shape, out_shape):
    """padding='same'/'valid' gives torch's output and shape."""
    model = factory.make_model(in_shape)
    assert model.out_shape == out_shape
    same_weights(model, ref)
    torch.testing.assert_close(*per_frame(model, ref, torch.randn(2, 3, *in_shape)))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Conv2d(4, 3, padding="full"), "'valid', 'same'"),
        (lambda: nn.Conv1d(4, 3, stride=2, padding="same"), "needs stride 1"),
        (lambda: nn.Conv2d(4, 3, stride=(1, 2), padding="same"), "needs stride 1"),
        (lambda: nn.Conv2d(4, 3, padding_mode="wrap"), "'zeros', 'reflect', 'replicate', 'circular'"),
        (lambda: nn.ConvTranspose2d(4, 3, padding_mode="circular"), "padding_mode must be one of 'zeros'"),
        (lambda: nn.ConvTranspose1d(4, 3, padding="same"), "padding must be ints"),
    ],
    ids=["bad-string", "same-strided", "same-strided-pair", "bad-mode", "transpose-mode", "transpose-same"],
)
def test_conv_refuses_what_torch_refuses(make, match):
    """Padding strings and modes torch refuses raise ValueError at construction, listing the valid ones."""
    with pytest.raises(ValueError, match=match):
        make()


def test_conv_transpose_takes_torchs_arguments():
    """ConvTranspose2d with output_padding, groups, no bias and dilation equals torch's."""
    factory = nn.ConvTranspose2d(4, 3, 2, 1, 1, 2, False, 2)
    assert (factory.output_padding, factory.groups, factory.bias, factory.dilation) == (1, 2, False, 2)
    model = factory.make_model((2, 4, 5))
    ref = torch.nn.ConvTranspose2d(2, 4, 3, 2, 1, 1, 2, False, 2)
    same_weights(model, ref)
    out, expected = per_frame(model, ref, torch.randn(2, 3, 2, 4, 5))
    assert out.shape[2:] == model.out_shape == (4, 10, 12)
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------------------------
# Pools, norms, shapes, activations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.MaxPool1d(2, return_indices=True),
        lambda: nn.MaxPool2d(2, None, 0, 1, True),
        lambda: nn.AdaptiveMaxPool2d(2, True),
    ],
)
def test_return_indices_is_refused(make):
    """return_indices=True raises ValueError: a layer can't pass on (values, indices)."""
    with pytest.raises(ValueError, match="return_indices=True is not supported"):
        make()


def test_avgpool_divisor_override_equals_torch():
    """AvgPool2d(divisor_override=...) equals torch's; a non-positive divisor is refused."""
    model = nn.AvgPool2d(2, padding=1, divisor_override=3).make_model((2, 5, 5))
    torch.testing.assert_close(
        *per_frame(model, torch.nn.AvgPool2d(2, padding=1, divisor_override=3), torch.rand(2, 3, 2, 5, 5))
    )
    with pytest.raises(ValueError, match="divisor_override"):
        nn.AvgPool2d(2, divisor_override=0)


def test_adaptive_pool_none_keeps_the_input_size():
    """AdaptiveAvgPool2d((None, 2)) keeps the height, as in torch."""
    model = nn.AdaptiveAvgPool2d((None, 2)).make_model((3, 5, 6))
    assert model.out_shape == (3, 5, 2)
    torch.testing.assert_close(*per_frame(model, torch.nn.AdaptiveAvgPool2d((None, 2)), torch.rand(2, 2, 3, 5, 6)))


def test_batchnorm_momentum_none_is_a_cumulative_average():
    """BatchNorm1d(momentum=None) updates its running stats as torch's does (cumulative average)."""
    model = nn.BatchNorm1d(momentum=None).make_model((4,)).train()
    ref = torch.nn.BatchNorm1d(4, momentum=None).train()
    for seed in range(3):
        x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(model(x)[0], ref(x.reshape(10, 4)).reshape(5, 2, 4))
    for a, b in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("factory", "ref", "in_shape"),
    [
        (nn.BatchNorm2d(bias=False), torch.nn.BatchNorm2d(2, bias=False), (2, 3, 3)),
        (nn.LayerNorm(bias=False), torch.nn.LayerNorm((2, 3), bias=False), (2, 3)),
        (nn.GroupNorm(2, bias=False), torch.nn.GroupNorm(2, 4, bias=False), (4, 3)),
    ],
    ids=["BatchNorm2d", "LayerNorm", "GroupNorm"],
)
def test_norm_without_bias_equals_torch(factory, ref, in_shape):
    """bias=False leaves out the shift, as in torch."""
    model = factory.make_model(in_shape).eval()
    assert [p.shape for p in model.parameters()] == [p.shape for p in ref.parameters()]
    assert len(list(ref.parameters())) == 1  # the scale alone
    same_weights(model, ref)
    torch.testing.assert_close(*per_frame(model, ref.eval(), torch.randn(2, 3, *in_shape)))


@pytest.mark.parametrize(
    ("factory", "torch_dims", "out_shape"),
    [
        (nn.Flatten(), (1, -1), (24,)),
        (nn.Flatten(1), (2, -1), (2, 12)),
        (nn.Flatten(0, 1), (1, 2), (6, 4)),
        (nn.Flatten(-2), (-2, -1), (2, 12)),
    ],
    ids=repr,
)
def test_flatten_dims_count_data_dims(factory, torch_dims, out_shape):
    """Flatten's start_dim/end_dim count data dims from 0: Flatten(1) is torch's Flatten(2) on a batch."""
    model = factory.make_model((2, 3, 4))
    assert model.out_shape == out_shape
    torch.testing.assert_close(*per_frame(model, torch.nn.Flatten(*torch_dims), torch.randn(2, 3, 2, 3, 4)))


@pytest.mark.parametrize(
    "args",
    [
        {"size": (5, 7)},
        {"size": 6, "mode": "bilinear", "align_corners": True},
        {"scale_factor": (1.5, 2.0), "mode": "bicubic", "recompute_scale_factor": True},
    ],
    ids=["size", "size-align", "scale-recompute"],
)
def test_upsample_arguments_equal_torch(args):
    """Upsample with size, align_corners and recompute_scale_factor equals torch's."""
    model = nn.Upsample(**args).make_model((2, 3, 4))
    torch.testing.assert_close(*per_frame(model, torch.nn.Upsample(**args), torch.randn(2, 3, 2, 3, 4)))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Upsample(), "exactly one of size and scale_factor"),
        (lambda: nn.Upsample(4, 2.0), "exactly one of size and scale_factor"),
        (lambda: nn.Upsample(2.0), r"scale_factor=2\.0"),
        (lambda: nn.Upsample(scale_factor=2, mode="cubic"), "'nearest', 'linear'"),
        (lambda: nn.Upsample(scale_factor=2, align_corners=True), "align_corners goes only with"),
    ],
    ids=["neither", "both", "positional-scale", "bad-mode", "align-nearest"],
)
def test_upsample_refuses_what_torch_refuses(make, match):
    """Upsample arguments torch would refuse when run raise ValueError at construction."""
    with pytest.raises(ValueError, match=match):
        make()


def test_gelu_approximate_is_checked():
    """GELU's approximate is checked at construction, listing the valid values."""
    with pytest.raises(ValueError, match="'none', 'tanh'"):
        nn.GELU("exact")


# --------------------------------------------------------------------------------------------
# TempConvPlus2d
# --------------------------------------------------------------------------------------------


def tempconv_reference(x, weight, bias, padding, padding_mode, groups, time_dilation=1):
    """y_t = b + sum_k conv2d(pad(x_{t - k * time_dilation}), W[:, :, K-1-k]), space padded by
    padding_mode, frames before 0 zero."""
    frames = weight.shape[2]
    out = []
    for t in range(x.shape[0]):
        y = bias.reshape(1, -1, 1, 1)
        for k in range(frames):
            if t - k * time_dilation >= 0:
                x_t = x[t - k * time_dilation]
                if padding_mode == "zeros":
                    x_t = F.pad(x_t, (padding,) * 4)
                else:
                    x_t = F.pad(x_t, (padding,) * 4, mode=padding_mode)
                y = y + F.conv2d(x_t, weight[:, :, frames - 1 - k], groups=groups)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "zeros"])
def test_tempconv_groups_and_padding_mode_equal_a_reference(mode):
    """TempConvPlus2d(groups=2, padding_mode=...) pads space only and equals per-frame 2-D convs."""
    model = rnn.TempConvPlus2d(4, 3, 3, padding=1, groups=2, padding_mode=mode).make_model((2, 5, 6))
    weight, bias = (p.detach() for p in model.parameters())
    assert weight.shape == (4, 1, 3, 3, 3)
    x = torch.randn(7, 2, 2, 5, 6)
    out, _ = model(x)
    assert out.shape == (7, 2, 4, 5, 6)
    torch.testing.assert_close(out, tempconv_reference(x, weight, bias, 1, mode, 2))


@pytest.mark.parametrize("time_dilation", [1, 2, 3])
def test_tempconv_time_dilation_reaches_back_dilated_frames(time_dilation):
    """time_dilation=d sums frames t, t-d, ...; the state is the last (K-1)*d frames."""
    factory = rnn.TempConvPlus2d(3, 3, 3, padding=1, padding_mode="circular", time_dilation=time_dilation)
    model = factory.make_model((2, 4, 4))
    assert model.get_initial_state(5).shape == (5, 2, 2 * time_dilation, 4, 4)
    weight, bias = (p.detach() for p in model.parameters())
    x = torch.randn(9, 2, 2, 4, 4)
    out, state = model(x)
    torch.testing.assert_close(out, tempconv_reference(x, weight, bias, 1, "circular", 1, time_dilation))
    torch.testing.assert_close(state, x[-2 * time_dilation :].permute(1, 2, 0, 3, 4))


@pytest.mark.parametrize(
    "factory",
    [
        rnn.TempConvPlus2d(4, 3, 3, padding=1, groups=2, padding_mode="circular"),
        rnn.TempConvPlus2d(2, (3, 2), 2, 1, (1, 0), 1, 2, False, "reflect", time_dilation=3),
    ],
    ids=repr,
)
def test_tempconv_chunks_continue_exactly(factory):
    """With the new arguments, 1 + 4 + 9 frames with the state carried equal 14 frames at once."""
    model = factory.make_model((2, 5, 5))
    x = torch.randn(14, 2, 2, 5, 5)
    whole, final = model(x)
    parts, state = [], None
    for chunk in (x[:1], x[1:5], x[5:]):
        y, state = model(chunk, state)
        parts.append(y)
    torch.testing.assert_close(whole, torch.cat(parts))
    torch.testing.assert_close(final, state)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: rnn.TempConvPlus2d(4, 3, 2, padding_mode="wrap"), "padding_mode must be one of"),
        (lambda: rnn.TempConvPlus2d(4, 3, 2, groups=0), "groups must be a positive int"),
        (lambda: rnn.TempConvPlus2d(4, 3, 2, time_dilation=0), "time_dilation must be an int >= 1"),
    ],
    ids=["mode", "groups", "time_dilation"],
)
def test_tempconv_refuses_bad_arguments(make, match):
    """Bad padding_mode, groups or time_dilation raise ValueError at construction."""
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------------------------
# Networks as data
# --------------------------------------------------------------------------------------------


def porting_network() -> rb.Network:
    n = rb.Network()
    n.h = rb.Placeholder()
    n.conv = n.input.apply(
        nn.Conv2d(4, 3, padding="same", padding_mode="circular"),
        nn.BatchNorm2d(momentum=None, bias=False),
        nn.ReLU(inplace=True),
    )
    n.time = n.conv.apply(
        rnn.TempConvPlus2d(4, 3, 2, padding=1, groups=2, padding_mode="reflect", time_dilation=2),
        nn.AdaptiveAvgPool2d((None, 3)),
        nn.Upsample(size=(6, 6), mode="bilinear", align_corners=True),
        nn.MaxPool2d(2, return_indices=False, ceil_mode=True),
        nn.Flatten(1),
    )
    n.h = (
        n.time.apply(nn.Flatten(), nn.Linear(8), nn.LayerNorm(bias=False))
        .stack(n.h)
        .apply(nn.Linear(8), nn.LeakyReLU(0.1, inplace=True), nn.Dropout(0.1, inplace=True), snn.LIF())
    )
    n.output = n.h.apply(nn.Unflatten(0, (2, 4)), nn.GroupNorm(2, bias=False), nn.Flatten())
    return n


def test_spec_round_trip_with_the_new_arguments():
    """A network using the new arguments travels as data (JSON and protobuf) and computes the same."""
    network = porting_network()
    description = spec.to_spec(network)
    factories = [f for node in description["root"]["layers"] for f in node.get("factories", [])]
    conv = next(f["args"] for f in factories if f["type"] == "nn.Conv2d")
    assert (conv["padding"], conv["padding_mode"]) == ("same", "circular")
    through_json = json.loads(json.dumps(description, allow_nan=False))
    rebuilt = spec.from_spec(through_json)
    assert spec.to_spec(rebuilt) == description
    assert wire.from_message(wire.factory_to_message(network)) == description
    a, b = network.make_model((2, 6, 6)).eval(), rebuilt.make_model((2, 6, 6)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3, 2, 6, 6)
    torch.testing.assert_close(a(x.clone())[0], b(x.clone())[0])


@pytest.mark.parametrize(
    ("factory", "arg", "value", "match"),
    [
        ("nn.Conv2d", "padding_mode", "wrap", "padding_mode must be one of"),
        ("nn.Conv2d", "padding", "full", "padding must be one of"),
        ("nn.MaxPool2d", "return_indices", True, "return_indices=True is not supported"),
        ("nn.BatchNorm2d", "momentum", "0.1", "root.args.momentum: expected number or null"),
        ("rnn.TempConvPlus2d", "time_dilation", 1.5, "root.args.time_dilation: expected integer"),
    ],
)
def test_spec_refuses_bad_new_values(factory, arg, value, match):
    """from_spec refuses bad values of the new arguments with a SpecError saying why."""
    required = {
        "nn.Conv2d": {"out_channels": 2, "kernel_size": 3},
        "nn.MaxPool2d": {"kernel_size": 2},
        "nn.BatchNorm2d": {},
        "rnn.TempConvPlus2d": {"out_channels": 2, "kernel_size": 3, "time_kernel_size": 2},
    }[factory]
    description = {"format": spec.FORMAT, "root": {"type": factory, "args": {**required, arg: value}}}
    with pytest.raises(rb.SpecError, match=match):
        spec.from_spec(description)
