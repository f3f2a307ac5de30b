"""How a call reaches its session: the channel's options and credentials, the metadata every call
carries (the bearer token, and the ``SESSION_HEADER`` a proxy routes by), and the replica that
answered (``SERVER_ID_HEADER``). ``Client`` and ``AsyncClient`` open their channels with these."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc

from rnnbuilder_sim.wire.names import SERVER_ID_HEADER, SESSION_HEADER

from ._retry import service_config

__all__ = ["Route", "channel_options", "credentials", "new_session_id", "server_id"]

_MAX_MESSAGE = 256 * 1024 * 1024


def channel_options() -> list[tuple[str, object]]:
    """The options of a client's channel: message limits, the retry policy, a connection of its own."""
    return [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.service_config", service_config()),
        # A connection of its own: grpcio would otherwise share one among a process's clients of
        # the same address, which puts them all on one of a server's processes (--processes).
        ("grpc.use_local_subchannel_pool", 1),
    ]


def credentials(
    tls: bool | str | bytes | Path | None, client_cert: str | Path | None, client_key: str | Path | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials (see ``Client``), or None for plain TCP."""
    if not tls:
        return None
    roots = None if tls is True else (tls if isinstance(tls, bytes) else Path(tls).read_bytes())
    key = Path(client_key).read_bytes() if client_key else None
    cert = Path(client_cert).read_bytes() if client_cert else None
    return grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=cert)


class Route:
    """The metadata of a client's calls: its token, and the id of the session a call is about."""

    def __init__(self, token: str | None):
        self._token = (("authorization", f"Bearer {token}"),) if token else ()

    def metadata(self, session_id: str | None) -> tuple[tuple[str, str], ...]:
        """A call's metadata; ``session_id`` (None for calls about no session) in ``SESSION_HEADER``."""
        return self._token if session_id is None else (*self._token, (SESSION_HEADER, session_id))


def server_id(initial_metadata) -> str:
    """The replica that answered, from a call's initial metadata (pairs, or None)."""
    return dict(initial_metadata or ()).get(SERVER_ID_HEADER, "")


def new_session_id() -> str:
    """A new session's id, chosen here so that the proxy can route its creation (the server's own look the same)."""
    return secrets.token_hex(8)
