"""Shared fixtures, and the switch that runs the tests' servers on a GPU.

``RNNSIM_TEST_DEVICE=cuda pytest tests`` (used by ``benchmarks/gpu_check.sh``): every server
(``create_server``, so ``running_server`` too) and every ``SessionManager`` a test creates in this
process with device ``cpu`` runs on ``cuda`` instead, exactly as ``--device cuda`` would. Nothing
else moves: local reference models stay on the CPU and results are compared on the host, and
servers started as subprocesses (``python -m server --device cpu``) stay on the CPU. Unset (or
``cpu``) changes nothing; ``cuda`` without a CUDA device is a usage error, not a silent CPU run.
"""

import os

import pytest
import torch

from tests.server_fixture import running_server

TEST_DEVICE = os.environ.get("RNNSIM_TEST_DEVICE", "cpu")


def pytest_configure(config):
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"RNNSIM_TEST_DEVICE={TEST_DEVICE!r}: use cpu (the default) or cuda")
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("RNNSIM_TEST_DEVICE=cuda, but torch sees no CUDA device")


def pytest_report_header(config):
    if TEST_DEVICE == "cuda":
        return f"rnnsim test servers and session managers on cuda ({torch.cuda.get_device_name()})"


@pytest.fixture(scope="session", autouse=True)
def rnnsim_test_device():
    """With ``RNNSIM_TEST_DEVICE=cuda``, servers and session managers asked for ``cpu`` get ``cuda``
    (see the module docstring): ``server.app.resolve_device``, the name ``create_server`` calls, and
    ``SessionManager.__init__`` are wrapped for the whole session. Otherwise nothing is patched."""
    if TEST_DEVICE != "cuda":
        yield torch.device("cpu")
        return
    from server import app
    from server.config import resolve_device
    from server.manager import SessionManager

    cuda = resolve_device("cuda")
    manager_init = SessionManager.__init__

    def on_cuda(device):
        return cuda if torch.device(device).type == "cpu" else device

    def init(self, device, *args, **kwargs):
        manager_init(self, on_cuda(device), *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "resolve_device", lambda device: on_cuda(resolve_device(device)))
        patch.setattr(SessionManager, "__init__", init)
        yield cuda


@pytest.fixture(scope="module")
def server_address():
    """The address of a real server shared by one test module."""
    with running_server() as (address, _):
        yield address


@pytest.fixture
def stub(server_address):
    """A raw generated stub on the module's server, for messages the client would never send."""
    import grpc

    from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.SimulatorServiceStub(channel)


@pytest.fixture
def client(server_address):
    """A real client connected to the module's server."""
    from client import Client

    with Client(server_address) as c:
        yield c
