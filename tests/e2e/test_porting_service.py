"""Networks written for rnnbuilder 0.1.1 as sessions: a real server on 127.0.0.1 and the real client."""

from __future__ import annotations

import numpy as np
import pytest

import rnnbuilder as rb
from rnnbuilder import nn, snn
from tests.helpers import CONV_IN, conv_input, defined_apart_from_topology, local_outputs, spiking_convolution


def test_spiking_convolution_session_equals_local(client):
    """The spiking-convolution example with its flattening stack runs remotely as to_local() does, chunk by chunk."""
    s = client.create_session(spiking_convolution(), input_shape=CONV_IN, batch_size=2, seed=0)
    try:
        assert s.output_shape == (3,)
        x = conv_input(7).numpy()
        remote = [s.run(x[:4]), s.run(x[4:])]
        local = local_outputs(s.to_local(), [x[:4], x[4:]])
        assert all(np.array_equal(r, want) for r, want in zip(remote, local))
    finally:
        s.close()


def test_session_builds_layers_in_definition_order(client):
    """A session lists its parameters in the order its layers were defined, as the local model does."""
    s = client.create_session(defined_apart_from_topology(), input_shape=(4,), seed=0)
    try:
        local = defined_apart_from_topology().make_model((4,))
        assert list(s.parameters()) == list(local.state_dict())
    finally:
        s.close()


def test_network_in_a_cycle_runs_as_a_session(client):
    """A Network closing a placeholder cycle is accepted by the server with its inferred output size."""
    inner = rb.Network()
    inner.output = inner.input.apply(nn.Linear(5))
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(inner)
    s = client.create_session(n, input_shape=(3,), batch_size=2)
    try:
        assert s.output_shape == (5,)
        assert s.run(np.ones((4, 2, 3), np.float32)).shape == (4, 2, 5)
    finally:
        s.close()


def test_create_session_refuses_a_custom_spike_function(client):
    """A layer with a custom spike function can't travel: the error names it and the surrogates to use."""
    net = rb.Sequential(nn.Linear(4), snn.LIF(spike_function=lambda v: (v > 0).float()))
    with pytest.raises(rb.SpecError, match=r"root\.factories\[1\]\.args\.spike_function.*snn\.SpikeLinear"):
        client.create_session(net, input_shape=(3,))
