"""The rnnbuilder-sim simulation server: ``python -m server`` or ``create_server(address)``.

Layers: the contract (``proto/``), its generated code (``rnnbuilder_sim``), the servicer
(``servicer.py``: convert and delegate), and the session manager (``sessions.py``: no gRPC).
Errors map to status codes in ``errors.py``.
"""

from .app import SERVICE_NAME, SimulatorServer, create_server
from .config import Limits, ServerConfig
from .errors import InvalidRequest, LimitExceeded, SessionNotFound
from .sessions import Session, SessionManager

__all__ = [
    "create_server",
    "SimulatorServer",
    "SERVICE_NAME",
    "ServerConfig",
    "Limits",
    "SessionManager",
    "Session",
    "SessionNotFound",
    "LimitExceeded",
    "InvalidRequest",
]
