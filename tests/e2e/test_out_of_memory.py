"""A failed allocation inside a call is RESOURCE_EXHAUSTED for that call only."""

import numpy as np
import pytest

import rnnbuilder as rb
from client import ResourceExhaustedError
from rnnbuilder import nn, snn


def test_allocation_failure_fails_only_that_call(client):
    """A call whose output can't be allocated gets RESOURCE_EXHAUSTED; that session and others go on."""
    # Upsampling (1, 10) by 1e5 takes 4 MB a timestep; 100,000 timesteps need 400 GB: the allocator refuses at once.
    huge = client.create_session(rb.Sequential(nn.Upsample(scale_factor=1e5)), input_shape=(1, 10))
    other = client.create_session(rb.Sequential(nn.Linear(3), snn.LIF()), input_shape=(2,))
    try:
        with pytest.raises(ResourceExhaustedError) as error:
            huge.run(np.ones((100_000, 1, 1, 10), np.float32))
        assert error.value.reason == "OUT_OF_MEMORY"
        assert huge.refresh().timesteps_simulated == 0
        assert other.run(np.ones((4, 1, 2), np.float32)).shape == (4, 1, 3)
        assert huge.run(np.ones((2, 1, 1, 10), np.float32)).shape == (2, 1, 1, 1_000_000)
    finally:
        huge.close()
        other.close()


def test_a_network_that_cannot_take_one_timestep_is_refused_at_creation(client):
    """A network whose first timestep can't be allocated is RESOURCE_EXHAUSTED at creation, not at its first Run."""
    with pytest.raises(ResourceExhaustedError) as error:
        client.create_session(rb.Sequential(nn.Upsample(scale_factor=1e10)), input_shape=(1, 10))
    assert error.value.reason == "OUT_OF_MEMORY"
    assert client.list_sessions() == []
