"""Names on the wire: the metadata headers and the resource names both sides use.

A session is the resource ``sessions/<id>`` (Google AIP-122); its id travels alone in the
``SESSION_HEADER`` metadata of every call about it, so that a proxy in front of several replicas
can route by it, and every answer carries the replica's name in ``SERVER_ID_HEADER``.

>>> session_name("3f2a")
'sessions/3f2a'
>>> session_id("sessions/3f2a")
'3f2a'
>>> session_id("3f2a") is None
True
"""

from __future__ import annotations

__all__ = ["SESSION_HEADER", "SERVER_ID_HEADER", "SESSION_COLLECTION", "session_name", "session_id"]

SESSION_HEADER = "rnnsim-session"
"""Request metadata: the id of the session a call is about (routing key of ``deploy/nginx``)."""
SERVER_ID_HEADER = "rnnsim-server-id"
"""Response metadata (initial, and trailing on a failed call): the name of the replica that answered."""
SESSION_COLLECTION = "sessions"
"""The collection of session resources: a session's name is ``sessions/<id>``."""

_PREFIX = SESSION_COLLECTION + "/"


def session_name(session_id: str) -> str:
    """The resource name of the session ``session_id``: ``sessions/<id>``."""
    return _PREFIX + session_id


def session_id(name: str) -> str | None:
    """The id in a session's resource name ``sessions/<id>``; None if ``name`` isn't one."""
    if not name.startswith(_PREFIX) or len(name) == len(_PREFIX) or "/" in name[len(_PREFIX) :]:
        return None
    return name[len(_PREFIX) :]
