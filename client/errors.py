"""Errors the client raises: one class per canonical status code the server uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "SimulatorError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
    "translated",
]


class SimulatorError(Exception):
    """A call failed. ``code`` is the gRPC status code; ``reason`` and ``metadata`` come from the
    server's ``google.rpc.ErrorInfo`` when it sent one."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message, self.reason, self.metadata = code, message, reason, dict(metadata or {})


class InvalidArgumentError(SimulatorError):
    """The request is wrong: a shape, a dtype, the network description. The message says what to fix."""


class NotFoundError(SimulatorError):
    """No such session (or it belongs to someone else)."""


class AlreadyExistsError(SimulatorError):
    """A new session asked for an id that is taken."""


class ResourceExhaustedError(SimulatorError):
    """Over a server limit; ``metadata`` has ``requested`` and ``allowed``."""


class UnauthenticatedError(SimulatorError):
    """No valid token."""


class UnavailableError(SimulatorError):
    """The server can't be reached or is shutting down."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> SimulatorError:
    """The ``SimulatorError`` subclass for a failed call, with its ErrorInfo if any."""
    code, message = error.code(), error.details() or ""
    reason, metadata = "", {}
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    return _BY_CODE.get(code, SimulatorError)(code, message, reason, metadata)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise ``SimulatorError`` subclasses instead of the raw ``grpc.RpcError``s (and grpc.aio's)
    of the calls made within."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
