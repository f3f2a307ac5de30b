"""The Python client of rnnbuilder-sim.

>>> from client import Client              # doctest: +SKIP
>>> with Client("127.0.0.1:50051") as c:   # doctest: +SKIP
...     s = c.create_session(net, input_shape=(64,), batch_size=8, seed=0)
...     out = s.run(x)                      # (T, 8, 64) -> (T, 8, *output_shape)

Arrays and rnnbuilder networks become messages through ``rnnbuilder_sim.wire``, the converters the
server uses too. Every call about a session carries its id in the ``SESSION_HEADER`` metadata, so a
proxy in front of several replicas can route by it (``deploy/``); ``Session.server_id`` names the
replica that answered.

``client.aio.AsyncClient`` is the same client for asyncio. The two share everything but their I/O:
what each call sends and how its reply converts (``_calls``, ``_convert``), the routing metadata
(``_routing``), retries and stream resumption (``_retry``) and the errors (``errors``).
"""

from rnnbuilder_sim.wire.names import SERVER_ID_HEADER, SESSION_HEADER

from ._client import Client, Recording, ServerInfo, Session
from .errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SimulatorError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "Client",
    "Session",
    "ServerInfo",
    "Recording",
    "SESSION_HEADER",
    "SERVER_ID_HEADER",
    "SimulatorError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
