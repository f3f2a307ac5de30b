"""Domain errors, and the one mapping from errors to gRPC status codes."""

from __future__ import annotations

import grpc
import torch

from rnnbuilder import RnnbuilderError, ShapeError
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
    "status_of",
    "is_out_of_memory",
]

DOMAIN = "rnnbuilder-sim"


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
    if isinstance(error, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", {}
    if is_out_of_memory(error):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", {}
    if isinstance(error, SessionExpired):
        return grpc.StatusCode.NOT_FOUND, "SESSION_EXPIRED", {"session": error.name}
    if isinstance(error, SessionNotFound):
        return grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", {"session": error.name}
    if isinstance(error, CallCancelled):
        return grpc.StatusCode.CANCELLED, "CANCELLED", {}
    if isinstance(error, SessionMoving):
        return grpc.StatusCode.UNAVAILABLE, "SESSION_MOVING", {"session": error.session_id}
    if isinstance(error, SessionExists):
        return grpc.StatusCode.ALREADY_EXISTS, "SESSION_EXISTS", {"session": error.session_id}
    if isinstance(error, LimitExceeded):
        metadata = {"limit": error.limit, "requested": str(error.requested), "allowed": str(error.allowed)}
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", metadata
    if isinstance(error, ShapeError):
        return grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHAPE", {}
    if isinstance(error, RnnbuilderError):
        path = getattr(error, "path", None)
        return grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NETWORK", ({"path": path} if path else {})
    if isinstance(error, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TENSOR", {}
    if isinstance(error, (InvalidRequest, ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", {}
    return grpc.StatusCode.INTERNAL, "INTERNAL", {}


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA or CPU allocation that failed: only that call fails, the server goes on."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))
