"""Train a spiking network on the server: scikit-learn's digits, rate-coded into spike trains.

Loads the 8x8 digits bundled with scikit-learn (no download), scales the pixels to [0, 1] and
rate-codes each image into a Bernoulli spike train of 25 timesteps with ``rnnbuilder.encode.rate``
(a pixel of intensity p spikes with probability p at every step, from a seeded generator), splits
75/25 stratified, and trains ``Sequential(nn.Linear(128), snn.LIF(), nn.Linear(10), snn.LIF())``
through the service with surrogate-gradient BPTT: ``Session.fit`` with Adam (lr 2e-3, batches of
64), cross-entropy on the output spike counts, the held-out split as validation after every epoch,
and a progress bar. Then it prints the test accuracy, and saves two PNGs: the learning curve (loss
and accuracy per epoch) and a spike raster of the trained network on one test digit
(``rnnbuilder.plot.raster``), recorded on a second session of batch size 1 that got the trained
weights through ``parameters()`` / ``load_parameters``.

Usage: python examples/train_digits.py --address HOST:PORT [--epochs 15] [--out out/]
       python examples/train_digits.py --local-server      # an in-process server on a free port
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import rnnbuilder as rb
from client import Client
from rnnbuilder import encode, nn, plot, snn

TIMESTEPS = 25
HIDDEN = 128
CLASSES = 10


def build_network() -> rb.Sequential:
    return rb.Sequential(nn.Linear(HIDDEN), snn.LIF(), nn.Linear(CLASSES), snn.LIF())


def load_data(seed: int = 0, timesteps: int = TIMESTEPS):
    """Digits as spike trains: x (samples, time, 64) float32 of 0/1, labels (samples,) int64;
    returned as ``(x_train, y_train), (x_test, y_test), test_images`` (the test images in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)  # (1797, 64), pixels 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    generator = torch.Generator().manual_seed(seed)
    spikes = encode.rate(torch.from_numpy(images), num_steps=timesteps, generator=generator)  # (time, samples, 64)
    spikes = spikes.transpose(0, 1).numpy()
    train, test = train_test_split(np.arange(len(images)), test_size=0.25, stratify=labels, random_state=seed)
    return (spikes[train], labels[train]), (spikes[test], labels[test]), images[test]


def save_learning_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [h[key] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label="validation (held-out 25%)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylim(0, 1.02)
    fig.suptitle("Digits through the service: Linear(128), LIF, Linear(10), LIF; Adam lr 2e-3, batch 64")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_raster(
    image: np.ndarray, inputs: np.ndarray, hidden: np.ndarray, output: np.ndarray, label: int, path: Path
) -> None:
    """One digit: its image, and the input, hidden and output spikes (time, neurons) as rasters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = int(output.sum(0).argmax())
    fig = plt.figure(figsize=(11, 8))
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 4], height_ratios=[2, 4, 1.6])
    picture = fig.add_subplot(grid[0, 0])
    picture.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    picture.set_title(f"digit (true {label})", fontsize=10)
    picture.axis("off")
    counts = fig.add_subplot(grid[2, 0])
    counts.barh(range(CLASSES), output.sum(0), color=["C3" if k == predicted else "C0" for k in range(CLASSES)])
    counts.set_yticks(range(CLASSES))
    counts.invert_yaxis()
    counts.set_xlabel("output spikes (prediction in red)")
    counts.tick_params(labelsize=7)
    panels = (
        (grid[0, 1], inputs, f"input: {inputs.shape[1]} pixels, Bernoulli rate code"),
        (grid[1, 1], hidden, f"hidden LIF: {hidden.shape[1]} neurons"),
        (grid[2, 1], output, "output LIF: one neuron per class"),
    )
    axes = []
    for spec, spikes, title in panels:
        ax = fig.add_subplot(spec, sharex=axes[0] if axes else None)
        plot.raster(spikes[:, None], ax=ax, title=f"{title} ({int(spikes.sum())} spikes)")  # (time, batch 1, neurons)
        axes.append(ax)
    for ax in axes[:-1]:
        ax.set_xlabel("")
    axes[-1].set_yticks(range(CLASSES))
    axes[-1].tick_params(axis="y", labelsize=7)
    verdict = "correct" if predicted == label else "wrong"
    fig.suptitle(f"Trained network on a test digit: true class {label}, predicted {predicted} ({verdict})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@contextmanager
def local_server():
    """A server on 127.0.0.1 (a free port) in this process, run by an event loop in a thread."""
    from server import ServerConfig
    from server.background import running_server

    with running_server(ServerConfig(device="auto")) as (address, _):
        yield address


def train(address: str, epochs: int, out: Path, seed: int, progress: bool) -> float:
    (x_train, y_train), (x_test, y_test), test_images = load_data(seed)
    print(f"digits: {len(x_train)} training and {len(x_test)} test spike trains of {x_train.shape[1:]} (time, pixels)")
    with Client(address) as client:
        info = client.info()
        print(f"server {address}: version {info.version}, device {info.device}")
        session = client.create_session(build_network(), input_shape=(64,), batch_size=64, seed=seed)
        viewer = None
        try:
            print(f"session {session.id}: {session.parameter_count:,} parameters")
            history = session.fit(
                x_train,
                y_train,
                epochs=epochs,
                batch_size=64,
                loss="ce_count",
                optimizer="adam",
                lr=2e-3,
                validation=(x_test, y_test),
                progress=progress,
            )
            test = session.evaluate(x_test, y_test)
            print(f"test accuracy {test['accuracy']:.2%} (loss {test['loss']:.4f}) after {len(history)} epochs")
            rate = np.median([h["samples_per_second"] for h in history])
            print(f"server training throughput: {rate:,.0f} samples/s (median over epochs)")

            # The raster: the trained weights go into a batch-1 session, which records one digit.
            viewer = client.create_session(build_network(), input_shape=(64,), batch_size=1, seed=seed)
            viewer.load_parameters(session.parameters())
            pick = int(np.flatnonzero(y_test == 3)[0]) if (y_test == 3).any() else 0
            x = x_test[pick][:, None]  # (time, 1, 64)
            recording = viewer.record(x, layers=["1"])  # layer 1: the hidden LIF's spikes
        finally:
            session.close()
            if viewer is not None:
                viewer.close()

    curve, raster = out / "digits_learning_curve.png", out / "digits_raster.png"
    save_learning_curve(history, curve)
    save_raster(test_images[pick], x[:, 0], recording["1"][:, 0], recording.output[:, 0], int(y_test[pick]), raster)
    print(f"learning curve saved to {curve}, spike raster to {raster}")
    return test["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--address", default="127.0.0.1:50051", help="the server, HOST:PORT")
    where.add_argument("--local-server", action="store_true", help="start a server in this process instead")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the two PNGs")
    parser.add_argument("--seed", type=int, default=0, help="for the spike trains, the split and the weights")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()

    if args.local_server:
        with local_server() as address:
            train(address, args.epochs, args.out, args.seed, not args.no_progress)
    else:
        train(args.address, args.epochs, args.out, args.seed, not args.no_progress)


if __name__ == "__main__":
    main()
