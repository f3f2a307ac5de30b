"""Device-memory budgets per tenant and per server: estimated before allocating, refused with the
numbers, or met by evicting idle sessions when there is a checkpoint folder."""

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client, ResourceExhaustedError
from rnnbuilder import nn, snn
from server import Limits, ServerConfig
from tests.server_fixture import running_server

BIG = rb.Sequential(nn.Linear(1000), snn.LIF())
"""About 4 MB of float32 parameters on 1000 inputs."""
SMALL = rb.Sequential(nn.Linear(4), snn.LIF())
AUTH = """
[tenants.alice]
token = "alice-secret-token"
max_memory_mb = 10

[tenants.bob]
token = "bob-secret-token"
"""


def write_auth(folder) -> str:
    path = folder / "auth.toml"
    path.write_text(AUTH)
    return str(path)


@pytest.fixture
def budget_server(tmp_path):
    with running_server(ServerConfig(device="cpu", auth_file=write_auth(tmp_path))) as (address, server):
        yield address, server


def test_tenant_over_its_memory_budget_is_refused_with_the_numbers(budget_server):
    """A session that would take a tenant over max_memory_mb is RESOURCE_EXHAUSTED, with MB requested and allowed."""
    address, _ = budget_server
    with Client(address, token="alice-secret-token") as alice:
        alice.create_session(BIG, input_shape=(1000,))
        alice.create_session(BIG, input_shape=(1000,))
        with pytest.raises(ResourceExhaustedError, match=r"device memory of alice in MB") as caught:
            alice.create_session(BIG, input_shape=(1000,))
        assert caught.value.metadata["limit"] == "tenant max_memory_mb"
        assert caught.value.metadata["allowed"] == "10" and int(caught.value.metadata["requested"]) > 10
        assert len(alice.list_sessions()) == 2


def test_one_tenants_budget_does_not_limit_another(budget_server):
    """Bob, without a budget of his own, is not refused because alice is full."""
    address, _ = budget_server
    with Client(address, token="alice-secret-token") as alice, Client(address, token="bob-secret-token") as bob:
        alice.create_session(BIG, input_shape=(1000,))
        alice.create_session(BIG, input_shape=(1000,))
        sessions = [bob.create_session(BIG, input_shape=(1000,)) for _ in range(3)]
        assert len(sessions) == 3


def test_a_call_whose_activations_exceed_the_budget_is_refused_and_changes_nothing(budget_server):
    """A Run whose timesteps x batch would need more than the tenant's room is refused before it runs."""
    address, _ = budget_server
    with Client(address, token="alice-secret-token") as alice:
        s = alice.create_session(BIG, input_shape=(1000,), batch_size=4)
        with pytest.raises(ResourceExhaustedError, match="this call needing"):
            s.run(np.ones((500, 4, 1000), np.float32))
        assert s.run(np.ones((2, 4, 1000), np.float32)).shape == (2, 4, 1000)
        assert alice.get_session(s.id).timesteps_simulated == 2


def test_server_budget_applies_across_tenants(tmp_path):
    """--max-memory-mb bounds all tenants together: a tenant with no budget of its own is refused too."""
    config = ServerConfig(device="cpu", auth_file=write_auth(tmp_path), limits=Limits(max_memory_mb=10))
    with running_server(config) as (address, _), Client(address, token="bob-secret-token") as bob:
        bob.create_session(BIG, input_shape=(1000,))
        bob.create_session(BIG, input_shape=(1000,))
        with pytest.raises(ResourceExhaustedError, match="device memory of the server") as caught:
            bob.create_session(BIG, input_shape=(1000,))
        assert caught.value.metadata["limit"] == "server max_memory_mb"
        assert bob.info().limits["max_memory_mb"] == 10


def test_with_checkpoints_the_least_recently_used_session_is_evicted_instead(tmp_path):
    """With a checkpoint folder, a session over the budget evicts the tenant's least recently used one, which comes
    back exactly on its next call."""
    config = ServerConfig(device="cpu", auth_file=write_auth(tmp_path), checkpoint_dir=str(tmp_path / "checkpoints"))
    x = (np.random.default_rng(0).random((6, 1, 1000)) * 0.1).astype(np.float32)
    with running_server(config) as (address, server), Client(address, token="alice-secret-token") as alice:
        first = alice.create_session(BIG, input_shape=(1000,), seed=1)
        local = first.to_local()
        early = first.run(x[:3])
        alice.create_session(BIG, input_shape=(1000,))
        alice.create_session(BIG, input_shape=(1000,))  # over 10 MB: evicts the first
        assert server.sessions.evictions["memory"] == 1
        assert not server.sessions.get(first.id, "alice").resident
        late = first.run(x[3:])  # loads it back, evicting the least recently used other
        assert server.sessions.restores == 1 and server.sessions.evictions["memory"] == 2
    with torch.no_grad():
        expected, _ = local(torch.from_numpy(x))
    assert np.array_equal(np.concatenate([early, late]), expected.numpy())


def test_memory_budget_in_auth_file_must_be_a_positive_integer(tmp_path):
    """A malformed max_memory_mb is refused at start-up with the key named."""
    from server.auth import Authenticator

    path = tmp_path / "auth.toml"
    path.write_text("[tenants.a]\ntoken = 'long-enough-1'\nmax_memory_mb = -5\n")
    with pytest.raises(ValueError, match="tenants.a.max_memory_mb must be a positive integer"):
        Authenticator.from_file(path)


def test_small_sessions_fit_many_times_in_a_budget(budget_server):
    """The estimate is not crude: a small network's sessions fit by the dozen in 10 MB."""
    address, _ = budget_server
    with Client(address, token="alice-secret-token") as alice:
        sessions = [alice.create_session(SMALL, input_shape=(3,), batch_size=8) for _ in range(30)]
        assert all(s.run(np.ones((5, 8, 3), np.float32)).shape == (5, 8, 4) for s in sessions)
