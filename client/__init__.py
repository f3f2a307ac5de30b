"""The Python client of rnnbuilder-sim.

>>> from client import Client              # doctest: +SKIP
>>> with Client("127.0.0.1:50051") as c:   # doctest: +SKIP
...     s = c.create_session(net, input_shape=(64,), batch_size=8, seed=0)
...     out = s.run(x)                      # (T, 8, 64) -> (T, 8, *output_shape)

``client.tensors`` and ``client.network`` convert arrays and rnnbuilder networks to messages.
"""

from ._client import Client, Recording, ServerInfo, Session
from .errors import (
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
    "SimulatorError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
