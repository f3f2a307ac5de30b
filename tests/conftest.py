import pytest

from tests.server_fixture import running_server


@pytest.fixture(scope="module")
def server_address():
    """The address of a real server shared by one test module."""
    with running_server() as (address, _):
        yield address


@pytest.fixture
def client(server_address):
    """A real client connected to the module's server."""
    from client import Client

    with Client(server_address) as c:
        yield c
