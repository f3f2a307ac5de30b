"""The rnnbuilder-sim simulation server: ``python -m server`` or ``create_server(address)``.

Layers, as in MLServer: the contract (``proto/``), its generated code (``rnnbuilder_sim``), one
converter (``convert.py``: messages <-> domain values), the servicer (``servicer.py``: convert and
delegate), and below it nothing of gRPC:

- ``manager.py``: the ``SessionManager``: making, finding and closing sessions, holding one for a
  call (loading it, reserving memory, evicting others), and replicas' leases, hand-over and
  checkpoints;
- ``operations.py``: what a call does with the session it holds: run, train, evaluate, export,
  state and parameters;
- ``session.py`` (the ``Session`` type and the ``SessionStore`` protocol), ``snapshot.py`` (what a
  session saves and restores), ``planning.py`` (sizes and limits before allocating),
  ``training.py`` (losses, optimizers, BPTT), ``memory.py`` (budgets);
- ``placement.py``: where a call's work runs (the event loop, a scheduler slot: ``scheduler.py``);
- ``checkpoints.py``: the checkpoint folder, a ``SessionStore``.

``app.py``'s ``create_server`` builds these and hands them in. Errors map to status codes in
``errors.py``.
"""

from .app import SERVICE_NAME, SimulatorServer, create_server
from .config import Limits, ServerConfig
from .errors import InvalidRequest, LimitExceeded, SessionNotFound
from .manager import SessionManager
from .session import Session

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
