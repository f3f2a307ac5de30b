"""Load on loopback: 32 clients at once, each streaming 200 timesteps through its own session.

Under load nothing fails and nothing mixes: every client's outputs equal a local model built with
its session's seed and stepped over the same input. The latency distribution is printed (no timing
is asserted: the machine is shared). ``benchmarks/load.py`` runs the same load as a benchmark.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from benchmarks.load import INPUT_SHAPE, run_load, small_lif
from client import Client
from server import ServerConfig
from tests.server_fixture import running_server

CLIENTS, STEPS = 32, 200


def local_model(seed: int):
    """The network built locally with ``seed``, as the server builds a session's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return small_lif().make_model(INPUT_SHAPE).eval()


def local_outputs(seed: int, inputs: np.ndarray) -> np.ndarray:
    """The local model with ``seed``, stepped over ``inputs``."""
    model = local_model(seed)
    outputs, state = [], None
    with torch.no_grad():
        for x_t in inputs:
            out, state = model(torch.from_numpy(x_t[None]), state)
            outputs.append(out[0].numpy())
    return np.stack(outputs)


@pytest.fixture(scope="module")
def load():
    """The load, run once against a fresh server; its latency table goes to the terminal."""
    with running_server(ServerConfig(device="cpu", workers=4)) as (address, _):
        return run_load(address, clients=CLIENTS, steps=STEPS, mode="stream")


def test_load_has_no_errors(load, capsys):
    """32 clients x 200 streamed timesteps at once: every call succeeds and every step is answered."""
    with capsys.disabled():
        print(f"\n{load.table()}")
    assert load.errors == 0, [run.error for run in load.runs if run.error]
    assert [len(run.outputs) for run in load.runs] == [STEPS] * CLIENTS


def test_every_client_under_load_equals_its_local_model(load):
    """Each client's outputs are bit-identical to a local model with its seed, stepped over its input."""
    assert load.errors == 0
    spikes = 0
    for run in load.runs:
        remote = np.stack(run.outputs)
        want = local_outputs(run.seed, run.inputs)
        assert remote.shape == want.shape == (STEPS, 1, 10)
        assert np.array_equal(remote, want), f"client {run.seed} differs from its local model"
        spikes += remote.sum()
    assert 0 < spikes < CLIENTS * STEPS * 10


def test_sessions_created_at_once_get_their_seeds_parameters(server_address):
    """16 sessions created at the same moment each get exactly the parameters their seed gives locally."""
    clients = 16
    barrier = threading.Barrier(clients)

    def create(seed: int) -> dict[str, np.ndarray]:
        with Client(server_address) as c:
            barrier.wait(timeout=30)
            session = c.create_session(small_lif(), INPUT_SHAPE, batch_size=1, seed=seed)
            parameters = session.parameters()
            session.close()
            return parameters

    with ThreadPoolExecutor(clients) as pool:
        remote = list(pool.map(create, range(clients)))
    wrong = [
        seed
        for seed, parameters in enumerate(remote)
        if not all(np.array_equal(parameters[k], v.numpy()) for k, v in local_model(seed).state_dict().items())
    ]
    assert wrong == [], f"sessions with seeds {wrong} got other parameters"
