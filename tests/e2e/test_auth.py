"""Tenants, bearer tokens and TLS: each tenant sees only its own sessions."""

import shutil
import subprocess

import grpc
import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, NotFoundError, ResourceExhaustedError, SimulatorError, UnauthenticatedError
from client.__main__ import health
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from server import ServerConfig
from server.auth import Authenticator
from tests.server_fixture import running_server

NET = rb.Sequential(nn.Linear(4), snn.LIF())
AUTH = """
[tenants.alice]
token = "alice-secret-token"
max_sessions = 2

[tenants.bob]
token = "bob-secret-token"
"""


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "auth.toml"
    path.write_text(AUTH)
    with running_server(ServerConfig(device="cpu", auth_file=str(path))) as (address, _):
        yield address


def test_call_without_token_is_unauthenticated(auth_server):
    """With an auth file, a call without a token gets UNAUTHENTICATED and says how to send one."""
    with Client(auth_server) as c, pytest.raises(UnauthenticatedError, match="token="):
        c.list_sessions()


def test_call_with_wrong_token_is_unauthenticated(auth_server):
    """An unknown token gets UNAUTHENTICATED."""
    with Client(auth_server, token="not-a-valid-token") as c, pytest.raises(UnauthenticatedError):
        c.create_session(NET, input_shape=(3,))


def test_health_needs_no_token(auth_server):
    """Health probes work without a token."""
    assert health(auth_server, "", 3.0) == "SERVING"


def test_tenants_see_only_their_own_sessions(auth_server):
    """Another tenant's session is NOT_FOUND for every call and absent from its list."""
    with Client(auth_server, token="alice-secret-token") as alice, Client(auth_server, token="bob-secret-token") as bob:
        s = alice.create_session(NET, input_shape=(3,))
        try:
            assert s.id not in [x.id for x in bob.list_sessions()]
            assert s.id in [x.id for x in alice.list_sessions()]
            with pytest.raises(NotFoundError):
                bob.get_session(s.id)
            theirs = alice.get_session(s.id)
            theirs._client = bob  # the same session name, sent with bob's token
            for call in (lambda: theirs.run(np.ones((2, 1, 3), np.float32)), theirs.get_state, theirs.close):
                with pytest.raises(NotFoundError):
                    call()
            assert s.run(np.ones((2, 1, 3), np.float32)).shape == (2, 1, 4)
        finally:
            s.close()


def test_tenant_session_limit(auth_server):
    """A tenant over its own max_sessions gets RESOURCE_EXHAUSTED with the numbers."""
    with Client(auth_server, token="alice-secret-token") as alice:
        sessions = [alice.create_session(NET, input_shape=(3,)) for _ in range(2)]
        try:
            with pytest.raises(ResourceExhaustedError) as error:
                alice.create_session(NET, input_shape=(3,))
            assert error.value.metadata["allowed"] == "2"
        finally:
            for s in sessions:
                s.close()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[tenants.a]\ntoken = 'short'\n", "8 or more"),
        ("[tenants.a]\ntoken = 'same-token-1'\n[tenants.b]\ntoken = 'same-token-1'\n", "reuses"),
        ("[tenants.a]\ntoken = 'long-enough-1'\nmax_sessions = 0\n", "max_sessions"),
        ("[other]\nx = 1\n", "no \\[tenants"),
    ],
)
def test_malformed_auth_file_says_what_to_fix(tmp_path, text, problem):
    """A malformed auth file is refused with the problem named."""
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        Authenticator.from_file(path)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


def test_tls_server_serves_a_tls_client(certificate):
    """With --tls-cert/--tls-key, a client that trusts the certificate simulates over TLS."""
    cert, key = certificate
    with running_server(ServerConfig(device="cpu", tls_cert=str(cert), tls_key=str(key))) as (address, _):
        with Client(address, tls=cert) as c:
            s = c.create_session(NET, input_shape=(3,))
            assert s.run(np.ones((3, 1, 3), np.float32)).shape == (3, 1, 4)
        with Client(address) as plain, pytest.raises(SimulatorError):
            plain.info()


def test_mutual_tls_needs_a_client_certificate(certificate):
    """With --tls-client-ca, only clients presenting a certificate from that CA get through."""
    cert, key = certificate
    config = ServerConfig(device="cpu", tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(cert))
    with running_server(config) as (address, _):
        with Client(address, tls=cert, client_cert=cert, client_key=key) as c:
            assert c.info().device == "cpu"
        with Client(address, tls=cert) as anonymous, pytest.raises(SimulatorError):
            anonymous.info()


def test_two_authorization_headers_are_unauthenticated(auth_server):
    """A call with two bearer tokens is refused, whichever of them is valid: no header silently wins."""
    with grpc.insecure_channel(auth_server) as channel:
        stub = pb_grpc.SimulatorServiceStub(channel)
        metadata = [("authorization", "Bearer alice-secret-token"), ("authorization", "Bearer bob-secret-token")]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListSessions(pb.ListSessionsRequest(), metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "one authorization header" in caught.value.details()
