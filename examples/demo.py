"""Demo client: a recurrent spiking network simulated on an rnnbuilder-sim server.

Builds a ``Network`` with a recurrent LIF population (a placeholder cycle) and an adaptive
readout, opens a session on the server, streams Poisson spike trains (``rnnbuilder.encode.rate``)
to it chunk by chunk over one bidirectional stream (the state stays on the server), records the
hidden layer's spikes, checks the result against the same network run locally with the session's
weights, prints a summary with a terminal spike raster and saves the raster as a PNG
(``rnnbuilder.plot.raster``).

Usage: python examples/demo.py --address HOST:PORT [--steps 200] [--chunk 25] [--out out/raster.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import rnnbuilder as rb
from client import Client
from rnnbuilder import encode, nn, plot, snn


def build_network() -> rb.Network:
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(100), snn.LIF(tau=10))
    n.output = n.hidden.apply(nn.Linear(10), snn.Adaptive(tau=20, tau_thr=50))
    return n


def poisson(steps: int, batch: int, channels: int, rate: float, seed: int) -> np.ndarray:
    """Spike trains (time, batch, channels), each channel firing with probability ``rate`` per step."""
    generator = torch.Generator().manual_seed(seed)
    return encode.rate(torch.full((batch, channels), rate), num_steps=steps, generator=generator).numpy()


def terminal_raster(spikes: np.ndarray, rows: int = 10, width: int = 100) -> str:
    """(time, neurons) spikes as text: one line per neuron, '|' for a spike."""
    lines = []
    for neuron in range(min(rows, spikes.shape[1])):
        lines.append(f"  n{neuron:<3}" + "".join("|" if s else "." for s in spikes[:width, neuron]))
    return "\n".join(lines)


def save_raster(hidden: np.ndarray, output: np.ndarray, path: Path) -> None:
    """Rasters of sequence 0 of the hidden and output spikes (time, batch, neurons), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    plot.raster(hidden, ax=axes[0], title="hidden LIF (recurrent)")
    plot.raster(output, ax=axes[1], title="output Adaptive")
    axes[0].set_xlabel("")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("out/raster.png"))
    args = parser.parse_args()

    x = poisson(args.steps, batch=4, channels=40, rate=0.2, seed=1)
    with Client(args.address) as client:
        info = client.info()
        print(f"server {args.address}: version {info.version}, device {info.device}")
        session = client.create_session(build_network(), input_shape=(40,), batch_size=4, seed=0)
        print(f"session {session.id}: {session.parameter_count:,} parameters, output {session.output_shape}")
        weights = session.parameters()
        hidden_weight = next(k for k in weights if k.startswith("net.layers.hidden.") and k.endswith(".weight"))
        session.load_parameters({hidden_weight: weights[hidden_weight] * 3})  # a stronger drive, to see activity

        chunks = (x[i : i + args.chunk] for i in range(0, args.steps, args.chunk))
        recorded = list(session.stream_record(chunks, ["hidden"], bitpacked=True))
        output = np.concatenate([r.output for r in recorded])
        hidden = np.concatenate([r["hidden"] for r in recorded])

        with torch.no_grad():
            local, _ = session.to_local()(torch.from_numpy(x))
        session.close()

    print(f"streamed {args.steps} steps of {tuple(x.shape[1:])} Poisson input (rate 0.2) in chunks of {args.chunk}")
    print(f"server output equals the local model's: {np.array_equal(local.numpy(), output)}")
    print(f"hidden firing rate: {hidden.mean():.3f} spikes/step/neuron; output: {output.mean():.3f}")
    print("hidden spikes, batch 0, first 10 neurons, first 100 steps:")
    print(terminal_raster(hidden[:, 0]))
    save_raster(hidden, output, args.out)
    print(f"raster saved to {args.out}")


if __name__ == "__main__":
    main()
