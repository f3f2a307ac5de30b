"""NIR neurons with per-neuron tensor arguments through the service: a real server on 127.0.0.1 and
the real client. The tensors travel as ``Value.tensor_value``; the session equals the local model,
trains with ``fit``, and a tensor whose bytes don't fit its shape is INVALID_ARGUMENT naming it."""

from __future__ import annotations

import numpy as np
import torch

import rnnbuilder as rb
from client import InvalidArgumentError
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import networks as wire
from tests.e2e.test_service_errors import rpc_error
from tests.e2e.test_training import spikes
from tests.helpers import local_outputs

T, B, FEATURES, HIDDEN, CLASSES = 20, 8, 12, 16, 4


def network():
    """Per-neuron time constants and thresholds in both spiking layers."""
    return rb.Sequential(
        nn.Linear(HIDDEN),
        snn.CubaLeakyIntegrateAndFire(
            tau_syn=torch.linspace(2.0, 4.0, HIDDEN), tau_mem=5.0, r=5.0, w_in=2.0, v_threshold=0.5
        ),
        nn.Linear(CLASSES),
        snn.LeakyIntegrateAndFire(tau=torch.tensor([3.0, 4.0, 5.0, 6.0]), r=torch.tensor([3.0, 4.0, 5.0, 6.0])),
    )


def test_session_with_tensor_arguments_equals_the_local_model(client):
    """A network with tensor arguments is created over the wire, and run gives the local model's output."""
    session = client.create_session(network(), input_shape=(FEATURES,), batch_size=B, seed=0)
    x = spikes(0, (T, B, FEATURES)) * 2
    out = session.run(x)
    (local,) = local_outputs(session.to_local(), [x])
    session.close()
    assert np.array_equal(out, local)
    assert 0 < out.sum() < out.size


def test_fit_trains_a_network_of_nir_neurons(client):
    """fit lowers the loss of a network of NIR neurons (surrogate gradients through the fused sequence)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, CLASSES, 64)
    rates = np.where(np.arange(FEATURES) // 3 == y[:, None], 0.6, 0.05)
    x = (rng.random((64, T, FEATURES)) < rates[:, None, :]).astype(np.float32)
    session = client.create_session(network(), input_shape=(FEATURES,), batch_size=16, seed=0)
    history = session.fit(x, y, epochs=6, batch_size=16, loss="ce_count", optimizer="adam", lr=1e-2)
    session.close()
    assert history[-1]["loss"] < history[0]["loss"]


def test_tensor_argument_whose_bytes_do_not_fit_its_shape_is_invalid(client, stub):
    """A tensor_value with the wrong byte count is INVALID_ARGUMENT naming the argument's path."""
    message = wire.factory_to_message(network())
    message.root.factories[3].args["tau"].tensor_value.data = b"\x00" * 12
    before = [s.id for s in client.list_sessions()]
    request = pb.CreateSessionRequest(session=pb.Session(network=message, input_shape=[FEATURES], batch_size=B))
    error = rpc_error(stub.CreateSession, request)
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "INVALID_NETWORK"
    assert error.metadata["path"] == "root.factories[3].args.tau"
    assert "needs 16 bytes, got 12" in error.message
    assert [s.id for s in client.list_sessions()] == before
