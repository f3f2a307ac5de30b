"""Cross-session batching: ``rnnbuilder.Stacked`` against each model stepped alone, on the CPU.

Two tables (Markdown), for ``docs/batching.md``:

1. Exactness. For ``Sequential(nn.Linear(1000), snn.LIF())`` on 100 inputs and a convolutional net
   (``Sequential(nn.Conv2d(8, 3), snn.LIF())`` on (4, 16, 16)), K sessions with different random
   weights, at several batch sizes: after 20 timesteps (each fed its own random input and its
   state back), are the batched outputs and states bit-for-bit those of each model stepped alone
   (``model(x, state)``, one timestep)? If not, the largest absolute difference of the membranes,
   and of the first layer's outputs (the Linear or Conv2d alone, stacked against alone, on the same
   inputs).
2. Speed. The Linear(1000) + LIF net at batch 1, microseconds per timestep of all K sessions:
   ``Stacked.step`` over all members; K separate ``model.net.stepper()`` calls; and the floor, the
   same work written by hand on the stacked weights (one ``torch.baddbmm`` and the LIF update on
   preallocated tensors). Median of several rounds, the variants alternating within each round.

Usage: ``python benchmarks/batching.py [--quick] [--threads N] [--rounds R]``; one thread by default.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurons import cpu_name  # noqa: E402 (this folder is on the path of a script run from it)

import rnnbuilder as rb  # noqa: E402
from rnnbuilder import nn, snn  # noqa: E402
from rnnbuilder._tree import tree_leaves  # noqa: E402

TAU = 5.0
BETA = math.exp(-1.0 / TAU)
STEPS = 20

NETS = {
    "Linear(1000)+LIF on (100,)": (lambda: nn.Linear(1000), (100,)),
    "Conv2d(8, 3)+LIF on (4, 16, 16)": (lambda: nn.Conv2d(8, 3), (4, 16, 16)),
}


def build(first_layer, shape, count: int, seed: int) -> tuple[list[rb.Model], list[rb.Model]]:
    """``count`` models of first_layer + LIF with different random weights, and the first layer
    alone with the same weights (to compare the layer's outputs)."""
    torch.manual_seed(seed)
    models, layers = [], []
    for _ in range(count):
        model = rb.Sequential(first_layer(), snn.LIF(tau=TAU)).make_model(shape).eval()
        layer = first_layer().make_model(shape).eval()
        layer.net.load_state_dict(model.net.runners[0].state_dict())
        models.append(model)
        layers.append(layer)
    return models, layers


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max().item() for x, y in zip(a, b, strict=True)), default=0.0)


@torch.no_grad()
def exactness(name: str, count: int, batch: int) -> dict:
    first_layer, shape = NETS[name]
    models, layers = build(first_layer, shape, count, seed=count * 100 + batch)
    stacked, stacked_layers = rb.Stacked(models), rb.Stacked(layers)
    members = list(range(count))
    ours = theirs = [m.get_initial_state(batch) for m in models]
    no_states = [() for _ in layers]
    generator = torch.Generator().manual_seed(7)
    equal, v_diff, layer_diff, spikes_equal = True, 0.0, 0.0, True
    for _ in range(STEPS):
        x = torch.rand((count, batch, *shape), generator=generator) * 0.3
        y, ours = stacked.step(members, x, ours)
        own_y, new = [], []
        for model, x_i, state in zip(models, x, theirs, strict=True):
            out, state = model(x_i.unsqueeze(0), state)
            own_y.append(out[0])
            new.append(state)
        theirs = new
        own_y = torch.stack(own_y)
        spikes_equal &= torch.equal(y, own_y)
        ours_leaves = [leaf for s in ours for leaf in tree_leaves(s)]
        theirs_leaves = [leaf for s in theirs for leaf in tree_leaves(s)]
        equal &= torch.equal(y, own_y) and all(torch.equal(a, b) for a, b in zip(ours_leaves, theirs_leaves))
        v_diff = max(v_diff, max_diff(ours_leaves, theirs_leaves))
        z, _ = stacked_layers.step(members, x, no_states)
        own_z = [layer(x_i.unsqueeze(0))[0][0] for layer, x_i in zip(layers, x, strict=True)]
        layer_diff = max(layer_diff, max_diff(list(z), own_z))
    return {"equal": equal, "spikes_equal": spikes_equal, "v_diff": v_diff, "layer_diff": layer_diff}


class Floor:
    """Linear + LIF for all K by hand: ``v = beta * v + (x @ W^T + b)``; ``s = (v > 1)``; ``v -= s``,
    on preallocated stacked tensors, four in-place ops a step."""

    def __init__(self, models: list[rb.Model], batch: int):
        weights = torch.stack([m.net.runners[0].module.weight.detach() for m in models])  # (K, out, in)
        self.w_t = weights.transpose(1, 2)  # (K, in, out), a view: the layout Linear itself reads
        self.b = torch.stack([m.net.runners[0].module.bias.detach() for m in models]).unsqueeze(1)  # (K, 1, out)
        count, out = weights.shape[0], weights.shape[1]
        self.v = torch.zeros(count, batch, out)
        self.s = torch.zeros(count, batch, out)
        self.cur = torch.empty(count, batch, out)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        torch.baddbmm(self.b, x, self.w_t, out=self.cur)
        torch.add(self.cur, self.v, alpha=BETA, out=self.v)
        torch.gt(self.v, 1.0, out=self.s)
        self.v.sub_(self.s)
        return self.s


@torch.no_grad()
def speed(count: int, rounds: int, steps: int) -> dict[str, float]:
    first_layer, shape = NETS["Linear(1000)+LIF on (100,)"]
    models, _ = build(first_layer, shape, count, seed=count)
    batch = 1
    x = torch.rand(count, batch, *shape) * 0.3
    xs = list(x)
    members = list(range(count))
    stacked = rb.Stacked(models)
    steppers = [m.net.stepper() for m in models]
    floor = Floor(models, batch)

    def run_stacked():
        states = [m.get_initial_state(batch) for m in models]
        start = time.perf_counter()
        for _ in range(steps):
            _, states = stacked.step(members, x, states)
        return time.perf_counter() - start

    def run_separate():
        states = [m.get_initial_state(batch) for m in models]
        start = time.perf_counter()
        for _ in range(steps):
            states = [fn(x_i, s)[1] for fn, x_i, s in zip(steppers, xs, states)]
        return time.perf_counter() - start

    def run_floor():
        floor.v.zero_()
        start = time.perf_counter()
        for _ in range(steps):
            floor.step(x)
        return time.perf_counter() - start

    variants = {"stacked": run_stacked, "separate": run_separate, "floor": run_floor}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(variants[name]() / steps * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, --quick 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 7)
    steps = 20 if args.quick else 50

    print(
        f"Device: {cpu_name()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s). Command: python benchmarks/batching.py{' --quick' if args.quick else ''}"
    )
    print()
    print(f"Exactness after {STEPS} timesteps (K sessions with different random weights, float32):")
    print()
    print(
        "| network | K | batch | bit-equal | spikes equal | max abs diff, state (membranes) "
        "| max abs diff, first layer |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in NETS:
        for count in (8, 32, 64):
            for batch in (1, 4, 16):
                r = exactness(name, count, batch)
                print(
                    f"| {name} | {count} | {batch} | {'yes' if r['equal'] else 'no'} | "
                    f"{'yes' if r['spikes_equal'] else 'no'} | {r['v_diff']:.3g} | {r['layer_diff']:.3g} |"
                )
    print()
    print(
        f"Speed: Linear(1000)+LIF on (100,), batch 1, µs per timestep of all K sessions "
        f"(median of {rounds} alternating rounds of {steps} steps):"
    )
    print()
    print("| K | Stacked.step | K separate steppers | floor (baddbmm + LIF) | floor / Stacked | separate / Stacked |")
    print("|---|---|---|---|---|---|")
    for count in (1, 8, 32, 64):
        t = speed(count, rounds, steps)
        print(
            f"| {count} | {t['stacked']:.0f} | {t['separate']:.0f} | {t['floor']:.0f} | "
            f"{t['floor'] / t['stacked']:.2f} | {t['separate'] / t['stacked']:.2f} |"
        )


if __name__ == "__main__":
    main()
