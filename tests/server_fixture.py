"""A real server on 127.0.0.1 (port 0), run by an event loop in a background thread."""

from server.background import running_server

__all__ = ["running_server"]
