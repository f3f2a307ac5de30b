"""Export to NIR: ``to_nir(model_or_factory, in_shape=None, *, dt=None, lossy=False) -> nir.NIRGraph``.

The graph is read off the built model, so it carries the model's current weights (trained, or
loaded from a session's ``state_dict``). Given a factory, ``to_nir`` builds it for ``in_shape``
first, with freshly initialised weights.

How the parts of a network become NIR:

==========================================  ===============================================================
rnnbuilder                                  NIR
==========================================  ===============================================================
``nn.Linear``                               ``Affine`` (``Linear`` without bias), after a ``Flatten`` when
                                            its input has several data dims
``nn.Conv1d``, ``nn.Conv2d``                ``Conv1d``, ``Conv2d`` (``padding_mode='zeros'`` only)
``nn.AvgPool2d``, ``nn.SumPool2d``          ``AvgPool2d``, ``SumPool2d``
``nn.Flatten``                              ``Flatten`` (data dims counted from 0, as here)
``nn.Scale``, ``nn.Delay``                  ``Scale``, ``Delay``
``nn.Identity``                             nothing: an edge
``snn.Integrator``, ``IntegrateAndFire``,   ``I``, ``IF``, ``LI``, ``LIF``, ``CubaLI``, ``CubaLIF``, one to one:
``LeakyIntegrator``, ...                    the same arguments under the same names
``snn.Threshold``, ``snn.Discontinuous``    ``Threshold``
``snn.NoReset``                             ``LI`` then ``Threshold``: the same membrane (see ``snn.LIF``),
                                            which never resets
``snn.LIF``                                 ``LIF`` resetting to zero, only with ``lossy=True`` (below)
a ``Sum``                                   several edges into one node: NIR sums a node's inputs
a ``Stack`` read by ``nn.Linear``           one ``Affine``/``Linear`` per stacked input (the columns of the
                                            weight that read it; the bias goes with the first), all
                                            into the next node
a ``Placeholder`` in a cycle                an edge back to the node that reads it: a cycle in the graph,
                                            read one timestep late, as NIR simulators do
a ``Placeholder`` outside any cycle         a ``Delay`` of one timestep
a nested ``Network`` or ``Sequential``      its nodes, inlined under its path
==========================================  ===============================================================

Time: a NIR graph is continuous; ``dt`` is the length of one timestep in the graph's time unit.
By default it is the neurons' own ``dt`` (they must agree), or 1.0 where no layer has one (time
constants in timesteps, as ``snn.LIF``'s ``tau``). Given another ``dt``, every time constant and
delay is rescaled so that one timestep lasts ``dt``: snnTorch's importer assumes
``dt = 1e-4``, so ``to_nir(model, dt=1e-4)`` is the graph it reads as this model.

``snn.LIF`` (``v = beta * v + x``, ``s = H(v - 1)``, ``v = v - s``, ``beta = exp(-1 / tau)``)
resets by subtracting the threshold; NIR neurons reset to ``v_reset``. With ``lossy=True`` it is
exported as the NIR ``LIF`` with the same membrane between spikes (``tau = dt / (1 - beta)``,
``r = 1 / (1 - beta)``, ``v_leak = 0``, ``v_threshold = 1``, ``v_reset = 0``: the forward-Euler
update ``v + dt / tau * (v_leak - v + r * x)`` is ``beta * v + x``), the mapping snnTorch's own
exporter uses for its subtract-reset ``Leaky``; a warning says so. Without ``lossy`` it is a
``GraphError`` naming the layer. NIR neurons start at rest: a learnable initial membrane or a
placeholder's initial value that is not zero is lossy in the same way.

Layers without a NIR form (``snn.Adaptive``, ``snn.Cooldown``, ``rnn.LSTM``, custom modules, ...)
raise a ``GraphError`` naming the layer by its path (``"hidden.1"``, as ``Model.record_names``).

>>> import rnnbuilder as rb
>>> from rnnbuilder import nn, snn
>>> graph = to_nir(rb.Sequential(nn.Linear(4), snn.LeakyIntegrateAndFire(tau=5.0)), (3,))
>>> sorted(graph.nodes), graph.edges
(['0', '1', 'input', 'output'], [('input', '0'), ('0', '1'), ('1', 'output')])
>>> type(graph.nodes["1"]).__name__, graph.nodes["1"].tau.tolist()
('LIF', [5.0, 5.0, 5.0, 5.0])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import nir
import numpy as np
import torch

from .. import snn
from .._factory import Model, ModuleFactory, as_shape
from .._graph.network_runner import NetworkRunner
from .._runner import Runner, SequentialRunner, Shape, StatelessRunner, numel
from ..errors import GraphError, ShapeError
from ..nn import _DelayRunner, _Scale
from ..snn.neurons import NeuronRunner, _Threshold
from ..snn.nir_neurons import _ThresholdModule
from ._neurons import NEURONS, parameter_names

__all__ = ["to_nir"]


def to_nir(
    model_or_factory: Model | ModuleFactory,
    in_shape: Shape | int | None = None,
    *,
    dt: float | None = None,
    lossy: bool = False,
) -> nir.NIRGraph:
    """The NIR graph of a built model (its current weights), or of a factory built for ``in_shape``.

    ``in_shape`` is the data shape (no time or batch dims): required with a factory, optional with
    a model (it must then be the model's). ``dt`` is the timestep in the graph's time unit (see the
    module docs); ``lossy=True`` allows the approximations listed there, each with a warning.
    The graph's ``"input"`` node has ``in_shape``, its ``"output"`` node the model's output shape.
    """
    model = _model(model_or_factory, in_shape)
    exporter = _Exporter(_step_length(model.net, dt), lossy)
    with torch.no_grad():
        out = exporter.runner("", model.net, _Value(("input",), model.in_shape))
    exporter.nodes["input"] = nir.Input(input_type=np.array(model.in_shape))
    exporter.nodes["output"] = nir.Output(output_type=np.array(model.out_shape))
    exporter.connect(exporter.single(out, "output"), "output")
    graph = exporter.graph()
    for loss in exporter.losses:
        warnings.warn(f"to_nir: {loss}", stacklevel=2)
    return graph


def _model(model_or_factory, in_shape) -> Model:
    if isinstance(model_or_factory, ModuleFactory):
        if in_shape is None:
            raise ShapeError("to_nir(factory) needs in_shape to build the factory, e.g. to_nir(factory, (64,))")
        return model_or_factory.make_model(as_shape(in_shape))
    if isinstance(model_or_factory, Model):
        if in_shape is not None and as_shape(in_shape) != model_or_factory.in_shape:
            raise ShapeError(f"in_shape {in_shape!r} is not the model's input shape {model_or_factory.in_shape}")
        return model_or_factory
    raise TypeError(f"to_nir takes a factory or a model built by make_model, got {type(model_or_factory).__name__}")


@dataclass(frozen=True)
class _Value:
    """What a node of the walk gives: the sum of ``sources``' outputs (NIR sums the edges into a
    node), or a stack of ``parts``. A source may be a placeholder's symbol, resolved at the end."""

    sources: tuple[str, ...]
    shape: Shape
    parts: tuple[_Value, ...] = ()


@dataclass
class _Placeholder:
    """A placeholder met in the walk: the value it holds (its layer's) and whether a cycle runs through it."""

    shape: Shape
    in_cycle: bool
    layer: _Value = _Value((), ())


class _Exporter:
    """Walks the runners of a model and collects NIR nodes and edges."""

    def __init__(self, dt: float, lossy: bool):
        self.dt = dt
        self.lossy = lossy
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.placeholders: dict[str, _Placeholder] = {}
        self.losses: list[str] = []
        """What ``lossy`` let through, one line a layer, for the warnings."""

    # -- the graph ----------------------------------------------------------------------------

    def add(self, path: str, node: nir.NIRNode, value: _Value, shape: Shape) -> _Value:
        """Add ``node``, named after ``path``, reading ``value``; its output has ``shape``.

        The node's types are set from the shapes the model has: NIR's own inference gets some
        wrong (a convolution's output from the first kernel dim only) and leaves pools' unset."""
        name = self.name(path)
        node.input_type = {"input": np.array(value.shape)}
        node.output_type = {"output": np.array(shape)}
        self.nodes[name] = node
        self.connect(self.single(value, path), name)
        return _Value((name,), tuple(shape))

    def name(self, path: str) -> str:
        """A fresh node name for ``path``: dots become underscores (torch module names have none)."""
        name = path.replace(".", "_") or "layer"
        if name in ("input", "output"):
            name += "_layer"
        unique, count = name, 0
        while unique in self.nodes:
            count += 1
            unique = f"{name}_{count}"
        return unique

    def connect(self, value: _Value, target: str) -> None:
        self.edges.extend((source, target) for source in value.sources)

    def single(self, value: _Value, path: str) -> _Value:
        """``value``, which must not be a stack."""
        if value.parts:
            raise GraphError(
                f"layer {path!r} reads a stack; NIR has no concatenation, so a stack can only be read by "
                "nn.Linear (exported as one weight block per stacked input)"
            )
        return value

    def graph(self) -> nir.NIRGraph:
        resolved: dict[str, tuple[str, ...]] = {}
        for symbol in list(self.placeholders):
            self.resolve(symbol, resolved, ())
        edges: list[tuple[str, str]] = []
        for source, target in self.edges:
            for s in resolved.get(source, (source,)):
                if (s, target) in edges:
                    raise GraphError(f"node {target!r} reads {s!r} twice; NIR sums distinct edges only")
                edges.append((s, target))
        return nir.NIRGraph(nodes=self.nodes, edges=edges, metadata={}, type_check=False)

    def resolve(self, symbol: str, resolved: dict, seen: tuple[str, ...]) -> tuple[str, ...]:
        """The nodes a placeholder's symbol stands for: its layer's in a cycle, else a ``Delay`` of it."""
        if symbol in resolved:
            return resolved[symbol]
        if symbol in seen:
            raise GraphError(f"placeholders {', '.join(map(repr, seen))} hold only each other")
        info = self.placeholders[symbol]
        sources = tuple(
            node
            for source in info.layer.sources
            for node in (self.resolve(source, resolved, (*seen, symbol)) if source in self.placeholders else (source,))
        )
        if not info.in_cycle:
            delay = self.name(f"{symbol.removeprefix(_SYMBOL)}.delay")
            self.nodes[delay] = nir.Delay(delay=_full(info.shape, self.dt))
            self.edges.extend((s, delay) for s in sources)
            sources = (delay,)
        resolved[symbol] = sources
        return sources

    # -- runners ------------------------------------------------------------------------------

    def runner(self, path: str, runner: Runner, value: _Value) -> _Value:
        if isinstance(runner, NetworkRunner):
            return self.network(path, runner, value)
        if isinstance(runner, SequentialRunner):
            for i, child in enumerate(runner.runners):
                value = self.runner(_join(path, str(i)), child, value)
            return value
        if isinstance(runner, StatelessRunner):
            return self.stateless(path, runner, value)
        if isinstance(runner, NeuronRunner):
            return self.neuron(path, runner, value)
        if isinstance(runner, _DelayRunner):
            delay = _array(runner.steps.double()).reshape(runner.in_shape) * self.dt
            return self.add(path, nir.Delay(delay=delay), value, runner.out_shape)
        raise _no_form(path, _describe(runner), "it has no NIR counterpart")

    def network(self, path: str, runner: NetworkRunner, value: _Value) -> _Value:
        cyclic = {i for block in runner.plan if len(block) > 1 for i in block}
        initial = runner.initial_state(1, torch.device("cpu"), torch.get_default_dtype())["placeholders"]
        values: dict[int, _Value] = {}
        symbols: dict[int, str] = {}
        for info in runner.nodes:
            where = _join(path, info.name)
            if info.kind == "input":
                values[info.index] = value
            elif info.kind == "layer":
                values[info.index] = self.runner(where, runner.layers[info.name], values[info.inputs[0]])
            elif info.kind == "placeholder":
                if bool(initial[info.name].any()):
                    self.lose(where, "its initial value is not zero; NIR starts every node at zero")
                symbols[info.index] = _SYMBOL + where
                self.placeholders[symbols[info.index]] = _Placeholder(tuple(info.shape), info.index in cyclic)
                values[info.index] = _Value((symbols[info.index],), tuple(info.shape))
            elif info.kind == "sum":
                parts = [self.single(values[i], where) for i in info.inputs]
                values[info.index] = _Value(tuple(s for p in parts for s in p.sources), tuple(info.shape))
            elif info.kind == "stack":
                parts = (p for i in info.inputs for p in (values[i].parts or (values[i],)))
                values[info.index] = _Value((), tuple(info.shape), tuple(parts))
            else:
                raise _no_form(where, "a list input", "NIR nodes take one input")
        for index, symbol in symbols.items():
            held = runner.nodes[runner.nodes[index].layer]
            self.placeholders[symbol].layer = self.single(values[held.index], _join(path, held.name))
        return values[runner.output]

    def stateless(self, path: str, runner: StatelessRunner, value: _Value) -> _Value:
        module, shape = runner.module, runner.out_shape
        if isinstance(module, torch.nn.Identity):
            return value
        if isinstance(module, torch.nn.Linear):
            return self.linear(path, module, value)
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
            return self.add(path, self.conv(path, module, runner.in_shape), value, shape)
        if isinstance(module, torch.nn.AvgPool2d):
            return self.add(path, self.pool(path, module), value, shape)
        if isinstance(module, _Scale):
            scale = np.broadcast_to(_array(module.scale), runner.in_shape).copy()
            return self.add(path, nir.Scale(scale=scale), value, shape)
        if isinstance(module, torch.nn.Flatten):
            return self.add(path, _flatten(runner.in_shape, module.start_dim, module.end_dim), value, shape)
        if isinstance(module, _Threshold):
            return self.add(path, nir.Threshold(_full(shape, module.p.threshold)), value, shape)
        if isinstance(module, _ThresholdModule):
            return self.add(path, nir.Threshold(_array(module.v_threshold)), value, shape)
        raise _no_form(path, _describe(runner), "it has no NIR counterpart")

    def linear(self, path: str, module: torch.nn.Linear, value: _Value) -> _Value:
        """One ``Affine``/``Linear`` node, or one per stacked input, each with its columns of the weight."""
        weight = _array(module.weight)
        bias = None if module.bias is None else _array(module.bias)
        parts = value.parts or (value,)
        start, pieces = 0, []
        for i, part in enumerate(parts):
            where = _join(path, f"part{i}") if value.parts else path
            if len(part.shape) > 1:
                part = self.add(_join(where, "flatten"), _flatten(part.shape, 1, -1), part, (numel(part.shape),))
            block = weight[:, start : start + numel(part.shape)]
            start += numel(part.shape)
            node = nir.Affine(weight=block, bias=bias) if bias is not None and i == 0 else nir.Linear(weight=block)
            pieces.extend(self.add(where, node, part, (weight.shape[0],)).sources)
        return _Value(tuple(pieces), (weight.shape[0],))

    def conv(self, path: str, module: torch.nn.Conv1d | torch.nn.Conv2d, in_shape: Shape) -> nir.NIRNode:
        if module.padding_mode != "zeros":
            raise _no_form(path, _describe_module(module), f"NIR pads with zeros only, not {module.padding_mode!r}")
        bias = _array(module.bias) if module.bias is not None else np.zeros(module.out_channels, np.float32)
        weight = _array(module.weight)
        if isinstance(module, torch.nn.Conv1d):
            padding = module.padding if isinstance(module.padding, str) else module.padding[0]
            return nir.Conv1d(
                input_shape=in_shape[1],
                weight=weight,
                stride=module.stride[0],
                padding=padding,
                dilation=module.dilation[0],
                groups=module.groups,
                bias=bias,
            )
        return nir.Conv2d(
            input_shape=tuple(in_shape[1:]),
            weight=weight,
            stride=tuple(module.stride),
            padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
            dilation=tuple(module.dilation),
            groups=module.groups,
            bias=bias,
        )

    def pool(self, path: str, module: torch.nn.AvgPool2d) -> nir.NIRNode:
        """``AvgPool2d``, or ``SumPool2d`` where the divisor is 1 (``nn.SumPool2d`` is built so)."""
        padding = _pair(module.padding)
        summing = module.divisor_override == 1
        if (
            module.ceil_mode
            or module.divisor_override not in (None, 1)
            or (any(padding) and not module.count_include_pad)
        ):
            raise _no_form(
                path,
                "AvgPool2d",
                "NIR pools with ceil_mode=False and count_include_pad=True, dividing by the window size or by 1",
            )
        stride = module.kernel_size if module.stride is None else module.stride
        pooling = nir.SumPool2d if summing else nir.AvgPool2d
        return pooling(
            kernel_size=np.array(_pair(module.kernel_size)), stride=np.array(_pair(stride)), padding=np.array(padding)
        )

    # -- neurons ------------------------------------------------------------------------------

    def neuron(self, path: str, runner: NeuronRunner, value: _Value) -> _Value:
        factory, shape = runner.factory, runner.out_shape
        if isinstance(factory, (snn.Adaptive, snn.Cooldown)):
            raise _no_form(path, _describe(runner), _NO_NIR_NEURON[type(factory)])
        if bool(runner.initial_v.any()):
            self.lose(path, "its learnable initial membrane is not zero; NIR neurons start at zero")
        if isinstance(factory, (snn.LIF, snn.NoReset)):
            return self.seed_neuron(path, factory, value, shape)
        nir_class = _NIR_NEURONS.get(type(factory))
        if nir_class is None:
            raise _no_form(path, _describe(runner), "its dynamics have no NIR neuron")
        arguments = parameter_names(type(factory))
        values = {name: _argument(runner, name, shape) for name in arguments}
        scale = self.dt / _argument(runner, "dt", shape)
        if (scale != 1.0).any():
            values.update({name: values[name] * scale for name in arguments if name in _TIMES})
            if nir_class in (nir.I, nir.IF):  # dv/dt = r * x: r is per time unit
                values["r"] = values["r"] / scale
        return self.add(path, nir_class(**values), value, shape)

    def seed_neuron(self, path: str, factory: snn.LIF | snn.NoReset, value: _Value, shape: Shape) -> _Value:
        """``snn.LIF`` (lossy) and ``snn.NoReset``: the NIR membrane with the same update between spikes."""
        beta = math.exp(-1.0 / factory.tau)
        tau, r, zero, one = (_full(shape, x) for x in (self.dt / (1 - beta), 1 / (1 - beta), 0.0, 1.0))
        if isinstance(factory, snn.NoReset):
            membrane = self.add(_join(path, "membrane"), nir.LI(tau=tau, r=r, v_leak=zero), value, shape)
            return self.add(path, nir.Threshold(one), membrane, shape)
        self.lose(
            path,
            "snn.LIF resets by subtracting the threshold, NIR's LIF to zero: the membrane left above the "
            "threshold after a spike is dropped",
        )
        return self.add(path, nir.LIF(tau=tau, r=r, v_leak=zero, v_threshold=one, v_reset=zero), value, shape)

    def lose(self, path: str, why: str) -> None:
        """Go on with an approximation where ``lossy`` allows it (with a warning), else refuse."""
        if not self.lossy:
            raise GraphError(f"layer {path!r} has no exact NIR form: {why}. Pass lossy=True to export it anyway")
        self.losses.append(f"layer {path!r}: {why}")


_SYMBOL = "\0placeholder "
"""Starts the name a placeholder goes by until the walk knows what it holds; never a node's name."""

_NO_NIR_NEURON = {
    snn.Adaptive: "its threshold adapts, and NIR's thresholds are fixed",
    snn.Cooldown: "its input is exponentiated and half its neurons spike below the threshold; NIR has neither",
}


_NIR_NEURONS = {factory: kind for kind, factory in NEURONS.items()}
"""The NIR neuron family: factory class -> NIR class (the arguments both have: ``parameter_names``)."""

_TIMES = ("tau", "tau_syn", "tau_mem")
"""Arguments in the time unit: rescaled by the graph's dt over the layer's."""


def _step_length(net: Runner, dt: float | None) -> float:
    """``dt`` if given, else the neurons' common ``dt``, else 1.0 (time in timesteps)."""
    if dt is not None:
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number, got {dt!r}")
        return float(dt)
    steps = {
        float(step)
        for m in net.modules()
        if isinstance(m, NeuronRunner) and hasattr(m.factory, "dt")
        for step in torch.as_tensor(m.factory.dt).unique().tolist()
    }
    if len(steps) > 1:
        raise GraphError(f"the neurons have different dt {sorted(steps)}; pass to_nir(..., dt=...) for the graph")
    return steps.pop() if steps else 1.0


def _argument(runner: NeuronRunner, name: str, shape: Shape) -> np.ndarray:
    """A neuron's argument as an array of the layer's shape: a number as float64 (exact), a tensor in its dtype."""
    value = getattr(runner.factory, name)
    if isinstance(value, torch.Tensor):
        return np.broadcast_to(_array(value), shape).copy()
    return _full(shape, float(value))


def _full(shape: Shape, value: float) -> np.ndarray:
    return np.full(shape, value, dtype=np.float64)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _flatten(in_shape: Shape, start_dim: int, end_dim: int) -> nir.Flatten:
    """NIR's ``Flatten`` counts data dims from 0; torch's (and this module's input) from the batch dim."""
    rank = len(in_shape)
    start = start_dim - 1 if start_dim > 0 else rank + start_dim
    end = end_dim - 1 if end_dim > 0 else rank + end_dim
    return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start, end_dim=end)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _describe(runner: Runner) -> str:
    factory = getattr(runner, "factory", None)
    if factory is not None:
        return type(factory).__name__
    module = getattr(runner, "module", None)
    return _describe_module(module) if module is not None else type(runner).__name__


def _describe_module(module: torch.nn.Module) -> str:
    return type(module).__name__.lstrip("_")


def _no_form(path: str, what: str, why: str) -> GraphError:
    return GraphError(f"layer {path!r} ({what}) can't be exported to NIR: {why}")
