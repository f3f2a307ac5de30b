"""Domain errors, and the one mapping from errors to gRPC status codes."""

from __future__ import annotations

import grpc
import torch

from rnnbuilder import RnnbuilderError, ShapeError
from rnnbuilder_sim.wire.names import session_id, session_name
from rnnbuilder_sim.wire.tensors import TensorError

from .auth import Unauthenticated

__all__ = [
    "SessionNotFound",
    "SessionExpired",
    "SessionExists",
    "SessionMoving",
    "CallCancelled",
    "LimitExceeded",
    "InvalidRequest",
    "DOMAIN",
    "REASONS",
    "status_of",
    "is_out_of_memory",
]

DOMAIN = "rnnbuilder-sim"
"""The ``google.rpc.ErrorInfo.domain`` of every error this server sends."""

REASONS: dict[str, tuple[grpc.StatusCode, tuple[str, ...]]] = {
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, ()),
    "OUT_OF_MEMORY": (grpc.StatusCode.RESOURCE_EXHAUSTED, ()),
    "SESSION_EXPIRED": (grpc.StatusCode.NOT_FOUND, ("session",)),
    "SESSION_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, ("session",)),
    "CANCELLED": (grpc.StatusCode.CANCELLED, ()),
    "SESSION_MOVING": (grpc.StatusCode.UNAVAILABLE, ("session",)),
    "SESSION_EXISTS": (grpc.StatusCode.ALREADY_EXISTS, ("session",)),
    "LIMIT_EXCEEDED": (grpc.StatusCode.RESOURCE_EXHAUSTED, ("limit", "requested", "allowed")),
    "INVALID_SHAPE": (grpc.StatusCode.INVALID_ARGUMENT, ()),
    "INVALID_NETWORK": (grpc.StatusCode.INVALID_ARGUMENT, ("path",)),
    "INVALID_TENSOR": (grpc.StatusCode.INVALID_ARGUMENT, ()),
    "INVALID_REQUEST": (grpc.StatusCode.INVALID_ARGUMENT, ()),
    "INTERNAL": (grpc.StatusCode.INTERNAL, ()),
}
"""Every ErrorInfo reason: its status code and the metadata keys it may carry. The contract lists
the same table (the ``.proto``'s comment above the service, and docs/contract.md); a test keeps
them equal. A session is always named by its resource name ``sessions/<id>`` under ``session``."""


class SessionNotFound(LookupError):
    """No session has this name."""

    def __init__(self, name: str):
        super().__init__(f"session {name!r} not found; list them with ListSessions or create one")
        self.name = name


class SessionExpired(SessionNotFound):
    """The session was deleted for going unused longer than its time-to-live (``--session-ttl``)."""

    def __init__(self, name: str):
        LookupError.__init__(
            self,
            f"session {name!r} expired: it went unused longer than this server's session time-to-live,"
            " and was deleted with its checkpoint; any call keeps a session alive",
        )
        self.name = name


class SessionExists(Exception):
    """A new session asked for an id that another session has."""

    def __init__(self, session_id: str):
        super().__init__(f"a session with id {session_id!r} exists already; choose another id or leave it empty")
        self.session_id = session_id


class CallCancelled(Exception):
    """The caller went away (cancelled, or the server cut the call off) before its result was kept."""


class SessionMoving(Exception):
    """The session is leaving this replica, or arriving from one that is shutting down: retry soon."""

    def __init__(self, session_id: str, why: str):
        super().__init__(f"session {session_id!r} {why}; retry in a moment (the client does, by itself)")
        self.session_id = session_id


class LimitExceeded(Exception):
    """A request would go over one of the server's limits; the message gives the numbers."""

    def __init__(self, limit: str, requested: int, allowed: int, what: str):
        super().__init__(f"{what}: {requested:,} requested, the server allows {allowed:,} ({limit})")
        self.limit, self.requested, self.allowed = limit, requested, allowed


class InvalidRequest(ValueError):
    """A request that is malformed for a reason other than its network or tensors."""


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, the ErrorInfo reason and its metadata for ``error``.

    Unknown errors are INTERNAL: the servicer logs them and sends no internals to the client.
    """
    reason, metadata = _reason_of(error)
    return REASONS[reason][0], reason, metadata


def _reason_of(error: BaseException) -> tuple[str, dict[str, str]]:
    """The reason (a key of ``REASONS``) and the metadata for ``error``."""
    if isinstance(error, Unauthenticated):
        return "UNAUTHENTICATED", {}
    if is_out_of_memory(error):
        return "OUT_OF_MEMORY", {}
    if isinstance(error, SessionExpired):
        return "SESSION_EXPIRED", _session(error.name)
    if isinstance(error, SessionNotFound):
        return "SESSION_NOT_FOUND", _session(error.name)
    if isinstance(error, CallCancelled):
        return "CANCELLED", {}
    if isinstance(error, SessionMoving):
        return "SESSION_MOVING", _session(error.session_id)
    if isinstance(error, SessionExists):
        return "SESSION_EXISTS", _session(error.session_id)
    if isinstance(error, LimitExceeded):
        metadata = {"limit": error.limit, "requested": str(error.requested), "allowed": str(error.allowed)}
        return "LIMIT_EXCEEDED", metadata
    if isinstance(error, ShapeError):
        return "INVALID_SHAPE", {}
    if isinstance(error, RnnbuilderError):
        path = getattr(error, "path", None)
        return "INVALID_NETWORK", ({"path": path} if path else {})
    if isinstance(error, TensorError):
        return "INVALID_TENSOR", {}
    if isinstance(error, (InvalidRequest, ValueError, TypeError)):
        return "INVALID_REQUEST", {}
    return "INTERNAL", {}


def _session(name_or_id: str) -> dict[str, str]:
    """The metadata naming a session: always its resource name ``sessions/<id>``, under ``session``,
    whether the error was raised with the name or the bare id."""
    return {"session": name_or_id if session_id(name_or_id) is not None else session_name(name_or_id)}


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA or CPU allocation that failed: only that call fails, the server goes on."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))
