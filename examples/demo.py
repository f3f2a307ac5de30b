"""Demo: a recurrent spiking network built with rnnbuilder, streamed in chunks.

Builds ``Network`` with a recurrent LIF population (a placeholder cycle) and an adaptive readout,
feeds it Poisson spike trains chunk by chunk (the state carries over), checks that chunked and
whole-sequence runs agree bit for bit, prints a summary with a terminal spike raster and saves the
raster as a PNG.

Usage: python examples/demo.py [--steps 200] [--out out/raster.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn


def build_network() -> rb.Network:
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(100), snn.LIF(tau=10))
    n.output = n.hidden.apply(nn.Linear(10), snn.Adaptive(tau=20, tau_thr=50))
    return n


def poisson(steps: int, batch: int, channels: int, rate: float, seed: int) -> torch.Tensor:
    """Spike trains (time, batch, channels), each channel firing with probability ``rate`` per step."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, channels, generator=generator) < rate).float()


def terminal_raster(spikes: torch.Tensor, rows: int = 10, width: int = 100) -> str:
    """(time, neurons) spikes as text: one line per neuron, '|' for a spike."""
    lines = []
    for neuron in range(min(rows, spikes.shape[1])):
        train = spikes[:width, neuron]
        lines.append(f"  n{neuron:<3}" + "".join("|" if s else "." for s in train.tolist()))
    return "\n".join(lines)


def save_raster(hidden: torch.Tensor, output: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    for ax, spikes, title in ((axes[0], hidden, "hidden LIF (recurrent)"), (axes[1], output, "output Adaptive")):
        t, neuron = torch.nonzero(spikes, as_tuple=True)
        ax.scatter(t.numpy(), neuron.numpy(), s=2, marker="|", color="black")
        ax.set_ylabel("neuron")
        ax.set_title(title, fontsize=10)
    axes[1].set_xlabel("timestep")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("out/raster.png"))
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_network()
    model = net.make_model((40,))
    with torch.no_grad():
        model.net.layers["hidden"].runners[0].module.weight.mul_(3)
    x = poisson(args.steps, batch=4, channels=40, rate=0.2, seed=1)

    # Record the hidden layer too: a second model output is the network's state, full over time.
    model.configure(full_state=True)
    state, outputs, hidden = None, [], []
    with torch.no_grad():
        for chunk in x.split(args.chunk):
            out, states = model(chunk, state)
            outputs.append(out)
            hidden.append(states["placeholders"]["hidden"])
            state = rb.last_state(states)
        whole, _ = model.configure(full_state=False)(x)
    output, hidden = torch.cat(outputs), torch.cat(hidden)

    print(f"network: {net}  cycles run step by step: {model.net.cycles}")
    print(f"input {tuple(x.shape)} (time, batch, channels), Poisson rate 0.2, in chunks of {args.chunk}")
    print(f"chunked run equals the whole-sequence run: {torch.equal(output, whole)}")
    print(f"hidden firing rate: {hidden.mean().item():.3f} spikes/step/neuron")
    print(f"output firing rate: {output.mean().item():.3f} spikes/step/neuron")
    print("hidden spikes, batch 0, first 10 neurons, first 100 steps:")
    print(terminal_raster(hidden[:, 0]))
    save_raster(hidden[:, 0], output[:, 0], args.out)
    print(f"raster saved to {args.out}")


if __name__ == "__main__":
    main()
