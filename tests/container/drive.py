"""The client side of scripts/container_test.sh: the real client against the server in a container.

    python tests/container/drive.py first  ADDRESS TOKEN STATE_FILE [METRICS_PORT]
    python tests/container/drive.py second ADDRESS TOKEN STATE_FILE

``first`` checks that calls need the token, creates a session of a recurrent spiking network, streams the first
chunks of a spike-rich input and compares every chunk with the same network built and run locally from the same
seed; it writes the session id to STATE_FILE. ``second`` runs against a new container on the same checkpoint
volume: the session is there under the same id and the next chunks equal the local model continued.
Exits non-zero with the reason on any mismatch.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np
import torch

import rnnbuilder as rb
from client import Client, UnauthenticatedError
from rnnbuilder import nn, snn

SEED, BATCH, IN_SHAPE = 7, 4, (16,)
CHUNKS = (5, 1, 7, 3, 8, 2, 6, 4)
FIRST = 4  # chunks streamed before the restart; the others after it


def network() -> rb.Network:
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(32), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(10), snn.Adaptive(tau=5, tau_thr=20))
    return n


def chunks() -> list[np.ndarray]:
    x = np.random.default_rng(SEED).random((sum(CHUNKS), BATCH, *IN_SHAPE), dtype=np.float32) * 4
    return np.split(x, np.cumsum(CHUNKS)[:-1])


def local_outputs() -> list[np.ndarray]:
    """The whole input chunk by chunk through the network made locally with the session's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = network().make_model(IN_SHAPE).eval()
    outputs, state = [], None
    with torch.no_grad():
        for chunk in chunks():
            out, state = model(torch.from_numpy(np.ascontiguousarray(chunk)), state)
            outputs.append(out.numpy())
    return outputs


def compare(remote: list[np.ndarray], local: list[np.ndarray], what: str) -> None:
    spikes = np.concatenate(remote)
    if not set(np.unique(spikes)) <= {0.0, 1.0} or not 0 < spikes.mean() < 1:
        sys.exit(f"{what}: the outputs are not spike trains with some spikes (mean {spikes.mean():.3f})")
    for i, (got, want) in enumerate(zip(remote, local, strict=True)):
        if got.shape != want.shape or not np.array_equal(got, want):
            differing = int((got != want).sum())
            sys.exit(f"{what}: chunk {i} differs from the local model ({differing} of {want.size} values)")
    print(f"{what}: {len(remote)} chunks, {spikes.shape[0]} timesteps, {int(spikes.sum())} spikes, equal to local")


def first(address: str, token: str, state_file: str, metrics_port: str | None = None) -> None:
    with Client(address) as anonymous:
        try:
            anonymous.list_sessions()
            sys.exit("a call without a token was accepted; the auth file is not in force")
        except UnauthenticatedError:
            print("a call without a token: UNAUTHENTICATED, as it should be")
    with Client(address, token=token) as c:
        info = c.info()
        print(f"server {info.server_id} version {info.version} on {info.device}")
        s = c.create_session(network(), input_shape=IN_SHAPE, batch_size=BATCH, seed=SEED)
        remote = list(s.stream(iter(chunks()[:FIRST])))
        compare(remote, local_outputs()[:FIRST], f"session {s.id} before the restart (stream)")
        with open(state_file, "w") as f:
            json.dump({"session": s.id, "server_id": info.server_id, "timesteps": sum(CHUNKS[:FIRST])}, f)
    if metrics_port:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        if reply.status != 200 or "rnnsim" not in body:
            sys.exit(f"metrics endpoint on port {metrics_port}: status {reply.status}, no rnnsim metrics")
        samples = sum(1 for line in body.splitlines() if line.startswith("rnnsim"))
        print(f"metrics on port {metrics_port}: {samples} rnnsim samples")


def second(address: str, token: str, state_file: str) -> None:
    with open(state_file) as f:
        before = json.load(f)
    with Client(address, token=token) as c:
        info = c.info()
        print(f"server {info.server_id} (before the restart: {before['server_id']})")
        ids = [s.id for s in c.list_sessions()]
        if ids != [before["session"]]:
            sys.exit(f"after the restart the sessions are {ids}, not [{before['session']!r}]")
        s = c.get_session(before["session"])
        if s.timesteps_simulated != before["timesteps"]:
            sys.exit(f"restored session has simulated {s.timesteps_simulated} timesteps, not {before['timesteps']}")
        rest = chunks()[FIRST:]
        remote = list(s.stream(iter(rest[:-1])))
        remote.append(s.run(rest[-1]) if len(rest[-1]) > 1 else s.step(rest[-1][0])[None])
        compare(remote, local_outputs()[FIRST:], f"session {s.id} after the restart (stream, run)")


if __name__ == "__main__":
    phases = {"first": first, "second": second}
    if len(sys.argv) < 5 or sys.argv[1] not in phases:
        sys.exit(__doc__)
    phases[sys.argv[1]](*sys.argv[2:])
