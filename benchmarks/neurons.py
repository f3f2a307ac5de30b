"""Neuron benchmark: rnnbuilder's fused LIF (and its NIR LIF) against snnTorch, Norse and SpikingJelly.

The Open Neuromorphic SNN-library benchmark setup: one Linear layer plus one LIF layer, batch 16,
T = 500 timesteps, N in {4096, 8192, 16384} neurons (``--full``, the default on a GPU); ``--quick``
(the default on a CPU) uses smaller sizes. For every size all frameworks run in the same process,
interleaved repeat by repeat; the table gives the median time of

- forward: inference, under ``torch.no_grad()``;
- forward+backward: forward with autograd, then ``out.sum().backward()``;

and memory: on a GPU the peak ``torch.cuda.max_memory_allocated`` above what was allocated before
the forward+backward call; everywhere, the bytes autograd keeps for the backward pass (distinct
tensors saved through ``saved_tensors_hooks``), which is what grows with T x batch x N. (CPU peak
memory isn't measured: tracemalloc doesn't see torch's allocations and RSS only ever grows.)

Then a recurrent network (a placeholder cycle in rnnbuilder; snnTorch ``RLeaky``, Norse
``LIFRecurrent`` and SpikingJelly ``LinearRecurrentContainer``), with the same ops as a hand-written
loop for the floor, which gives the cycle's overhead per timestep (on a GPU also that loop with each
timestep replayed from a CUDA graph, forward only: the most that graphing a cycle's step could
save); on a GPU the fused kernel's memory bandwidth against a device-to-device copy, and the CPU
goal case: the neuron layer alone at (T=100, B=16, N=1024), forward+backward, rnnbuilder against
snnTorch's ``Leaky``.

A peer that isn't installed is skipped with a note (``pip install 'rnnbuilder-sim[bench]'``).
Usage: ``python benchmarks/neurons.py [--quick | --full] [--repeats R] [--sections ff,rec,bw,cpu]
[--sizes N1,N2] [--steps T] [--threads K] [--compile-peers] [--out results.md]``. Norse under ``torch.compile`` is
left out unless ``--compile-peers`` is given: compiling the unrolled T-step loop takes minutes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnbuilder as rb  # noqa: E402
from rnnbuilder import nn as rnn  # noqa: E402
from rnnbuilder import snn  # noqa: E402
from rnnbuilder.snn import fused  # noqa: E402

TAU = 5.0
BETA = math.exp(-1.0 / TAU)


class Skip(Exception):
    """A framework or variant that can't run here; the message says why."""


@dataclass
class Case:
    """One framework's model at one size: ``run(x) -> output`` and the parameters it trains."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    params: list[torch.Tensor]
    peer: bool = True
    forward_only: bool = False
    """No backward to time (its forward has no autograd graph)."""
    fwd: list[float] = field(default_factory=list)
    fwd_bwd: list[float] = field(default_factory=list)
    saved_bytes: int | None = None
    peak_bytes: int | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------------
# Framework adapters
# ------------------------------------------------------------------------------------------------


def _params(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p for m in modules for p in m.parameters()]


def rnnbuilder_feedforward(n: int, device, backend: str = "auto") -> Case:
    model = rb.Sequential(rnn.Linear(n), snn.LIF(tau=TAU)).make_model((n,)).to(device)

    def run(x):
        with fused.use_backend(backend):
            return model(x)[0]

    label = "rnnbuilder (fused)" if backend == "auto" else f"rnnbuilder ({backend} loop)"
    return Case(label, run, _params(model), peer=False)


def rnnbuilder_nir_feedforward(n: int, device) -> Case:
    """The NIR neuron that is snnTorch's Leaky with a reset to zero: ``v = beta * v + x`` with
    ``tau = 1 / (1 - beta)`` and ``r = tau`` (dt = 1), per-neuron tensors as NIR graphs carry them."""
    tau = torch.full((n,), 1.0 / (1.0 - BETA))
    model = rb.Sequential(rnn.Linear(n), snn.LeakyIntegrateAndFire(tau=tau, r=tau)).make_model((n,)).to(device)
    return Case("rnnbuilder NIR LIF (fused)", lambda x: model(x)[0], _params(model), peer=False)


def rnnbuilder_recurrent(n: int, device, backend: str = "auto") -> Case:
    net = rb.Network()
    net.output = rb.Placeholder()
    # The input's Linear sits outside the cycle, so it runs once over all T; only the recurrent one steps.
    net.current = net.input.apply(rnn.Linear(n))
    net.output = net.current.sum(net.output.apply(rnn.Linear(n, bias=False))).apply(snn.LIF(tau=TAU))
    model = net.make_model((n,)).to(device)

    def run(x):
        with fused.use_backend(backend):
            return model(x)[0]

    return Case("rnnbuilder (placeholder cycle)", run, _params(model), peer=False)


class PlainSpike(torch.autograd.Function):
    """The spike a user would write by hand: Heaviside forward, SpikeLinear's triangle backward."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * 0.3 * torch.clamp(1 - v.abs(), min=0)


def plain_recurrent(n: int, device) -> Case:
    """rnnbuilder's placeholder cycle written out by hand: the floor its per-step overhead is measured against."""
    linear, recurrent = torch.nn.Linear(n, n).to(device), torch.nn.Linear(n, n, bias=False).to(device)

    def run(x):
        v = torch.zeros(x.shape[1], n, device=x.device)
        s = torch.zeros_like(v)
        spikes = []
        for current in linear(x).unbind(0):
            v = BETA * v + (current + recurrent(s))
            s = PlainSpike.apply(v - 1)
            v = v - s
            spikes.append(s)
        return torch.stack(spikes)

    return Case("hand-written loop, same ops (floor)", run, _params(linear, recurrent), peer=False)


def graphed_recurrent(n: int, device) -> Case:
    """The floor's forward with each timestep replayed from a CUDA graph: one launch a step instead
    of one per op and no Python per op, the most a graphed cycle step could save. CUDA only, and
    forward only: the captured step has no autograd."""
    linear, recurrent = torch.nn.Linear(n, n).to(device), torch.nn.Linear(n, n, bias=False).to(device)
    captured: dict[int, tuple] = {}

    def capture(batch: int) -> tuple:
        current, v, s = (torch.zeros(batch, n, device=device) for _ in range(3))

        def step():  # reads and writes the static tensors, which the graph keeps the addresses of
            u = BETA * v + (current + recurrent(s))
            spikes = (u - 1 > 0).to(u.dtype)
            v.copy_(u - spikes)
            s.copy_(spikes)

        # Warm up off the default stream, on the stream that then captures: handles and workspaces
        # that ops create on first use on a stream must exist before the capture.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            step()
        return graph, current, v, s

    def run(x):
        if torch.is_grad_enabled():
            raise RuntimeError("forward only")
        if x.shape[1] not in captured:
            captured[x.shape[1]] = capture(x.shape[1])
        graph, current, v, s = captured[x.shape[1]]
        v.zero_()
        s.zero_()
        currents = linear(x)
        spikes = torch.empty_like(currents)
        for t, current_t in enumerate(currents.unbind(0)):
            current.copy_(current_t)
            graph.replay()
            spikes[t].copy_(s)
        return spikes

    name = "hand-written loop, each step one CUDA graph (forward only)"
    return Case(name, run, _params(linear, recurrent), peer=False, forward_only=True)


def snntorch_feedforward(n: int, device) -> Case:
    snntorch = _import("snntorch")
    linear, lif = torch.nn.Linear(n, n).to(device), snntorch.Leaky(beta=BETA).to(device)

    def run(x):
        mem = lif.init_leaky()
        spikes = []
        for current in linear(x).unbind(0):
            s, mem = lif(current, mem)
            spikes.append(s)
        return torch.stack(spikes)

    return Case("snnTorch Leaky", run, _params(linear, lif))


def snntorch_recurrent(n: int, device) -> Case:
    snntorch = _import("snntorch")
    linear = torch.nn.Linear(n, n).to(device)
    lif = snntorch.RLeaky(beta=BETA, linear_features=n).to(device)

    def run(x):
        spk, mem = lif.init_rleaky()
        spikes = []
        for current in linear(x).unbind(0):
            spk, mem = lif(current, spk, mem)
            spikes.append(spk)
        return torch.stack(spikes)

    return Case("snnTorch RLeaky", run, _params(linear, lif))


def norse_feedforward(n: int, device, compiled: bool = False) -> Case:
    norse = _import("norse.torch")
    linear, lif = torch.nn.Linear(n, n).to(device), norse.LIF().to(device)

    def run(x):
        return lif(linear(x))[0]

    if compiled:
        run = _compile(run)
    return Case("Norse LIF" + (" (torch.compile)" if compiled else ""), run, _params(linear, lif))


def norse_recurrent(n: int, device) -> Case:
    norse = _import("norse.torch")
    lif = norse.LIFRecurrent(n, n).to(device)
    return Case("Norse LIFRecurrent", lambda x: lif(x)[0], _params(lif))


def spikingjelly_feedforward(n: int, device, fastest: bool) -> Case:
    """``fastest``: multi-step mode, where SpikingJelly picks its fastest implementation for the
    device (CUDA/Triton kernels on a GPU, a fused loop on the CPU; ``backend='cupy'`` in older
    releases). Otherwise its plain torch path, stepped one timestep at a time."""
    neuron = _import("spikingjelly.activation_based.neuron")
    surrogate = _import("spikingjelly.activation_based.surrogate")
    functional = _import("spikingjelly.activation_based.functional")
    kwargs = dict(tau=1.0 / (1.0 - BETA), decay_input=False, v_reset=None, surrogate_function=surrogate.ATan())
    linear = torch.nn.Linear(n, n).to(device)
    label = "SpikingJelly " + ("multi-step (auto)" if fastest else "torch (single-step)")
    try:  # releases before 2.0 choose the backend by name
        backend = ("cupy" if device.type == "cuda" else "torch") if fastest else "torch"
        lif = neuron.LIFNode(step_mode="m", backend=backend, **kwargs)
        label = f"SpikingJelly {backend}"
        fastest = True
    except TypeError:
        lif = neuron.LIFNode(step_mode="m" if fastest else "s", **kwargs)
    lif = lif.to(device)

    def run(x):
        functional.reset_net(lif)
        current = linear(x)
        if fastest:
            return lif(current)
        return torch.stack([lif(c) for c in current.unbind(0)])

    return Case(label, run, _params(linear))


def spikingjelly_recurrent(n: int, device) -> Case:
    neuron = _import("spikingjelly.activation_based.neuron")
    layer = _import("spikingjelly.activation_based.layer")
    functional = _import("spikingjelly.activation_based.functional")
    lif = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_reset=None, step_mode="s")
    rc = layer.LinearRecurrentContainer(lif, in_features=n, out_features=n, step_mode="s").to(device)

    def run(x):
        functional.reset_net(rc)
        return torch.stack([rc(c) for c in x.unbind(0)])

    return Case("SpikingJelly LinearRecurrentContainer", run, _params(rc))


def _import(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as e:
        raise Skip(f"{name.split('.')[0]} is not installed ({e.__class__.__name__})") from None


def _compile(fn):
    try:
        return torch.compile(fn)
    except Exception as e:  # pragma: no cover - depends on the machine
        raise Skip(f"torch.compile failed: {e}") from None


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clear_grads(case: Case) -> None:
    for p in case.params:
        p.grad = None


def time_forward(case: Case, x, device) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        case.run(x)
    sync(device)
    return time.perf_counter() - start


def time_forward_backward(case: Case, x, device) -> float:
    clear_grads(case)
    sync(device)
    start = time.perf_counter()
    case.run(x).float().sum().backward()
    sync(device)
    return time.perf_counter() - start


def measure_memory(case: Case, x, device) -> None:
    """Bytes of the distinct tensors autograd saves for backward (a view counts its own elements, an
    expanded tensor its storage); on a GPU also the peak above the baseline."""
    clear_grads(case)
    saved: dict[tuple, int] = {}

    def pack(t):
        nbytes = t.numel() * t.element_size()
        if 0 in t.stride():
            nbytes = min(nbytes, t.untyped_storage().nbytes())
        saved[(t.data_ptr(), t.numel(), t.element_size())] = nbytes
        return t

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = case.run(x)
    case.saved_bytes = sum(saved.values())
    out.float().sum().backward()
    del out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        case.peak_bytes = torch.cuda.max_memory_allocated(device) - base
    clear_grads(case)


def benchmark(cases: list[Case], x, device, repeats: int, warmup: int = 2) -> list[Case]:
    """Warm every case up, then interleave them repeat by repeat (all forwards, then all
    forward+backwards); failures turn into notes."""
    alive = []
    for case in cases:
        try:
            for _ in range(warmup):
                time_forward(case, x, device)
                if not case.forward_only:
                    time_forward_backward(case, x, device)
            if not case.forward_only:
                measure_memory(case, x, device)
            alive.append(case)
        except Exception as e:  # a peer that breaks here must not stop the benchmark
            case.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    for _ in range(repeats):
        for case in alive:
            case.fwd.append(time_forward(case, x, device))
    for _ in range(repeats):
        for case in alive:
            if not case.forward_only:
                case.fwd_bwd.append(time_forward_backward(case, x, device))
    return cases


def build(makers: list[Callable[[], Case]], skipped: list[str]) -> list[Case]:
    cases = []
    for make in makers:
        try:
            cases.append(make())
        except Skip as e:
            skipped.append(str(e))
    return cases


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.0f}"


def table(title: str, rows: list[tuple[str, list[Case]]], gpu: bool) -> str:
    """Markdown: absolute medians and, per size, the speed-up over the fastest peer (>1: faster)."""
    head = ["size", "framework", "forward ms", "fwd+bwd ms", "fwd+bwd best ms", "saved for bwd MiB"]
    if gpu:
        head.append("peak MiB")
    head += ["forward: fastest peer / this", "fwd+bwd: fastest peer / this"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size, cases in rows:
        done = [c for c in cases if c.fwd]
        peers = [c for c in done if c.peer]
        best_f = min((ms(c.fwd) for c in peers), default=None)
        best_fb = min((ms(c.fwd_bwd) for c in peers), default=None)
        for c in cases:
            if not c.fwd:
                lines.append(f"| {size} | {c.name} | {c.note or 'skipped'} |" + " |" * (len(head) - 3))
                continue
            f = ms(c.fwd)
            if c.fwd_bwd:
                fb = ms(c.fwd_bwd)
                cells = [size, c.name, f"{f:,.2f}", f"{fb:,.2f}", f"{1e3 * min(c.fwd_bwd):,.2f}", mib(c.saved_bytes)]
            else:
                fb, cells = None, [size, c.name, f"{f:,.2f}", "–", "–", "–"]
            if gpu:
                cells.append(mib(c.peak_bytes))
            cells.append("–" if best_f is None else f"{best_f / f:.2f}×")
            cells.append("–" if best_fb is None or fb is None else f"{best_fb / fb:.2f}×")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def feedforward(device, sizes, steps, batch, repeats, skipped, compile_peers) -> str:
    rows = []
    for n in sizes:
        x = torch.rand(steps, batch, n, device=device)
        makers = [
            lambda n=n: rnnbuilder_feedforward(n, device),
            lambda n=n: rnnbuilder_feedforward(n, device, "reference"),
            lambda n=n: rnnbuilder_nir_feedforward(n, device),
            lambda n=n: snntorch_feedforward(n, device),
            lambda n=n: norse_feedforward(n, device),
            lambda n=n: spikingjelly_feedforward(n, device, fastest=False),
            lambda n=n: spikingjelly_feedforward(n, device, fastest=True),
        ]
        if compile_peers:
            makers.append(lambda n=n: norse_feedforward(n, device, compiled=True))
        rows.append((f"N={n}", benchmark(build(makers, skipped), x, device, repeats)))
        _free(device)
    return table(f"Linear + LIF, T={steps}, batch {batch}", rows, device.type == "cuda")


def recurrent(device, sizes, steps, batch, repeats, skipped) -> str:
    rows = []
    for n in sizes:
        x = torch.rand(steps, batch, n, device=device)
        makers = [
            lambda n=n: rnnbuilder_recurrent(n, device),
            lambda n=n: plain_recurrent(n, device),
            lambda n=n: snntorch_recurrent(n, device),
            lambda n=n: norse_recurrent(n, device),
            lambda n=n: spikingjelly_recurrent(n, device),
        ]
        if device.type == "cuda":
            makers.append(lambda n=n: graphed_recurrent(n, device))
        rows.append((f"N={n}", benchmark(build(makers, skipped), x, device, repeats)))
        _free(device)
    title = f"Recurrent LIF (all-to-all recurrent weights), T={steps}, batch {batch}"
    return table(title, rows, device.type == "cuda") + "\n\n" + cycle_overhead(rows, steps)


def cycle_overhead(rows: list[tuple[str, list[Case]]], steps: int) -> str:
    """The placeholder cycle's cost per timestep above the hand-written loop of the same ops."""
    lines = []
    for size, (ours, floor, *rest) in rows:
        if not (ours.fwd and floor.fwd):
            continue
        parts = [
            f"{what} {1e3 * (ms(a) - ms(b)) / steps:+.1f} µs/step ({ms(a) / ms(b):.2f}× the floor)"
            for what, a, b in (("forward", ours.fwd, floor.fwd), ("fwd+bwd", ours.fwd_bwd, floor.fwd_bwd))
        ]
        lines.append(f"{size}: placeholder cycle over the hand-written loop: " + ", ".join(parts) + ".")
        graphed = next((c for c in rest if c.forward_only and c.fwd), None)
        if graphed is not None:
            saved = 1e3 * (ms(floor.fwd) - ms(graphed.fwd)) / steps
            lines.append(
                f"{size}: a CUDA graph per step would save up to {saved:.1f} µs/step forward "
                f"(the floor is {ms(floor.fwd) / ms(graphed.fwd):.2f}× the graphed loop)."
            )
    return "\n".join(lines)


def neuron_only_cpu(repeats: int, skipped: list[str]) -> str:
    """The CPU goal: the LIF layer alone at (T=100, B=16, N=1024), fwd+bwd, interleaved."""
    steps, batch, n = 100, 16, 1024
    device = torch.device("cpu")
    x0 = torch.rand(steps, batch, n)

    def with_input_grad(fn):
        return lambda x: fn(x.detach().requires_grad_(True))

    ours = snn.LIF(tau=TAU).make_model((n,))

    def rb_run(backend):
        def run(x):
            with fused.use_backend(backend):
                return ours(x)[0]

        return run

    def plain_loop(x):
        v = torch.zeros_like(x[0])
        out = []
        for x_t in x.unbind(0):
            v = BETA * v + x_t
            s = PlainSpike.apply(v - 1)
            v = v - s
            out.append(s)
        return torch.stack(out)

    cases = [
        Case("rnnbuilder LIF (fused)", with_input_grad(rb_run("auto")), _params(ours), peer=False),
        Case("rnnbuilder LIF (reference loop)", with_input_grad(rb_run("reference")), _params(ours), peer=False),
        Case("plain PyTorch loop", with_input_grad(plain_loop), [], peer=False),
    ]
    try:
        snntorch = _import("snntorch")
        leaky = snntorch.Leaky(beta=BETA)

        def snn_run(x):
            mem = leaky.init_leaky()
            out = []
            for x_t in x.unbind(0):
                s, mem = leaky(x_t, mem)
                out.append(s)
            return torch.stack(out)

        cases.append(Case("snnTorch Leaky", with_input_grad(snn_run), _params(leaky)))
    except Skip as e:
        skipped.append(str(e))
    # The goal pair (rnnbuilder, snnTorch) interleaved on its own, then the loops for context.
    pair = [cases[0], *cases[3:]]
    before = cpu_seconds()
    benchmark(pair, x0, device, repeats, warmup=3)
    others = other_load(before, cpu_seconds())
    benchmark(cases[1:3], x0, device, max(5, repeats // 3), warmup=2)
    text = table(f"CPU goal: LIF layer alone, T={steps}, batch {batch}, N={n}", [("", cases)], gpu=False)
    snn_case = next((c for c in cases if c.name == "snnTorch Leaky" and c.fwd_bwd), None)
    if snn_case is not None and cases[0].fwd_bwd:
        ratio = ms(snn_case.fwd_bwd) / ms(cases[0].fwd_bwd)
        best = min(snn_case.fwd_bwd) / min(cases[0].fwd_bwd)
        verdict = "met" if ratio >= 4 else f"not met ({4 / ratio:.2f}× short)"
        text += (
            f"\n\nrnnbuilder is {ratio:.2f}× faster than snnTorch forward+backward, median against median "
            f"(goal ≥ 4×: {verdict}); {best:.2f}× best against best."
        )
    if others is not None:
        text += (
            f" Meanwhile other processes kept {others:.2f} of the {os.cpu_count()} CPUs busy on average "
            f"({torch.get_num_threads()} torch threads here)."
        )
    return text


def cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, seconds all CPUs were busy, seconds this process ran), from /proc/stat (Linux)."""
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def other_load(before, after) -> float | None:
    """How many CPUs other processes kept busy, on average, between two ``cpu_seconds()``: the load
    that makes the medians on a shared machine noisy."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0]))


def bandwidth(device, steps=500, batch=16, n=16384, repeats=20) -> str:
    """GPU only: bytes read + written per second by the fused LIF kernels, against a D2D copy."""
    from rnnbuilder.snn.fused import triton_impl as K

    if not fused.triton_available():
        return "### Kernel bandwidth\n\nskipped: triton is not installed"
    m = batch * n
    x = torch.rand(steps, batch, n, device=device)
    v0 = torch.zeros(batch, n, device=device)
    gs = torch.rand(steps, batch, n, device=device)

    def cuda_time(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(stop) / 1e3)
        return statistics.median(times)

    big = torch.empty(steps * m, device=device)
    copy_dst = torch.empty_like(big)
    copy_s = cuda_time(lambda: copy_dst.copy_(big))
    copy_bw = 2 * big.numel() * 4 / copy_s
    _, _, saved = K.lif_forward(x, v0, BETA, True, store=True)
    rows = [
        ("LIF forward (stores u for backward)", lambda: K.lif_forward(x, v0, BETA, True, store=True),
         K.kernel_bytes("lif_fwd", steps, m, True)),
        ("LIF forward (inference)", lambda: K.lif_forward(x, v0, BETA, True, store=False),
         K.kernel_bytes("lif_fwd", steps, m, False)),
        ("LIF backward", lambda: K.lif_backward(saved, gs, None, BETA, True, snn.SpikeLinear()),
         K.kernel_bytes("lif_bwd", steps, m)),
    ]  # fmt: skip
    lines = [
        f"### Kernel bandwidth, T={steps}, batch {batch}, N={n} (float32)",
        "",
        f"Device-to-device copy: {copy_bw / 1e9:,.0f} GB/s (read + written).",
        "",
        "| kernel | time ms | GB moved | GB/s | % of copy bandwidth |",
        "|---|---|---|---|---|",
    ]
    for name, fn, nbytes in rows:
        t = cuda_time(fn)
        rate = nbytes / t
        share = 100 * rate / copy_bw
        lines.append(f"| {name} | {t * 1e3:.3f} | {nbytes / 1e9:.2f} | {rate / 1e9:,.0f} | {share:.0f}% |")
    return "\n".join(lines)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    from importlib import metadata

    parts = [f"torch {torch.__version__}"]
    for name in ("triton", "snntorch", "norse", "spikingjelly"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (the default without a GPU)")
    size.add_argument("--full", action="store_true", help="the Open Neuromorphic sizes (the default on a GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median reported)")
    parser.add_argument("--sections", default="all", help="comma list of: ff, rec, cpu, bw (default: all)")
    parser.add_argument("--sizes", default=None, help="comma list of N for the Linear + LIF table (overrides preset)")
    parser.add_argument("--steps", type=int, default=None, help="timesteps T (overrides the preset)")
    parser.add_argument(
        "--compile-peers", action="store_true", help="also Norse under torch.compile (unrolls T steps: minutes)"
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every framework")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    full = args.full or (gpu and not args.quick)
    if full:
        steps, batch, sizes, rec_sizes, repeats = 500, 16, [4096, 8192, 16384], [1024, 4096], args.repeats or 10
    else:
        steps, batch, sizes, rec_sizes, repeats = 100, 16, [512, 1024, 2048], [256, 1024], args.repeats or 7
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
    steps = args.steps or steps
    sections = {"ff", "rec", "cpu", "bw"} if args.sections == "all" else set(args.sections.split(","))
    skipped: list[str] = []
    name = torch.cuda.get_device_name(device) if gpu else cpu_name()
    out = [
        f"## Neuron benchmark ({'full' if full else 'quick'}), {datetime.date.today()}",
        "",
        f"Device: {name}, {torch.get_num_threads()} CPU threads. {versions()}.",
        f"Median of {repeats} interleaved repeats after warm-up. Forward runs under no_grad; "
        "fwd+bwd is forward with autograd plus `out.sum().backward()`. 'saved for bwd' counts the distinct "
        "tensors autograd keeps for backward"
        + ("; 'peak' is max_memory_allocated above the baseline." if gpu else "."),
    ]
    print("\n".join(out), flush=True)

    def emit(text: str) -> None:
        out.extend(["", text])
        print("\n" + text, flush=True)

    if "ff" in sections:
        emit(feedforward(device, sizes, steps, batch, repeats, skipped, args.compile_peers))
    if "rec" in sections:
        emit(recurrent(device, rec_sizes, steps, batch, repeats, skipped))
    if "bw" in sections:
        emit(bandwidth(device) if gpu else "### Kernel bandwidth\n\nskipped: needs a CUDA GPU")
    if "cpu" in sections:
        emit(neuron_only_cpu(max(repeats, 25), skipped))
    if skipped:
        names = "; ".join(sorted(set(skipped)))
        emit(f"Skipped: {names}. Install them with `pip install 'rnnbuilder-sim[bench]'`.")
    if args.out:
        args.out.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
