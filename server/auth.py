"""Tenants and their bearer tokens, from an auth file; without one the server is open to one tenant.

The file is TOML::

    [tenants.alice]
    token = "..."
    max_sessions = 4          # optional
    max_memory_mb = 8000      # optional: device memory its sessions and calls may hold
    session_ttl_s = 604800    # optional: seconds unused before a session expires (0: never)
"""

from __future__ import annotations

import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tenant", "Authenticator", "Unauthenticated", "OPEN_TENANT"]


class Unauthenticated(Exception):
    """The call has no valid bearer token."""


@dataclass(frozen=True)
class Tenant:
    """A user or lab: its own sessions, its own limits (None: the server's)."""

    name: str
    token: str
    max_sessions: int | None = None
    max_memory_mb: int | None = None
    session_ttl_s: float | None = None
    """Seconds its sessions may go unused before they expire (0: never; None: ``--session-ttl``)."""


OPEN_TENANT = Tenant("default", "")
"""The only tenant of a server without an auth file."""


class Authenticator:
    """Maps ``authorization: Bearer <token>`` metadata to tenants; ``None`` tenants: open mode."""

    def __init__(self, tenants: list[Tenant] | None = None):
        self.tenants = tenants

    @property
    def open(self) -> bool:
        return self.tenants is None

    @classmethod
    def from_file(cls, path: str | Path) -> Authenticator:
        """Read the tenants of an auth file; a malformed file raises ValueError saying what to fix."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"auth file {path}: {e}") from None
        entries = data.get("tenants")
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"auth file {path}: no [tenants.<name>] tables")
        tenants, tokens = [], set()
        for name, entry in entries.items():
            token = entry.get("token") if isinstance(entry, dict) else None
            if not isinstance(token, str) or len(token) < 8:
                raise ValueError(f"auth file {path}: tenants.{name}.token must be a string of 8 or more characters")
            if token in tokens:
                raise ValueError(f"auth file {path}: tenants.{name} reuses another tenant's token")
            unknown = set(entry) - {"token", "max_sessions", "max_memory_mb", "session_ttl_s"}
            if unknown:
                raise ValueError(f"auth file {path}: tenants.{name} has unknown keys {sorted(unknown)}")
            for key in ("max_sessions", "max_memory_mb"):
                limit = entry.get(key)
                if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
                    raise ValueError(f"auth file {path}: tenants.{name}.{key} must be a positive integer")
            ttl = entry.get("session_ttl_s")
            if ttl is not None and not (isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl >= 0):
                raise ValueError(
                    f"auth file {path}: tenants.{name}.session_ttl_s must be a number of seconds, 0 or more"
                )
            tokens.add(token)
            tenants.append(
                Tenant(
                    name,
                    token,
                    entry.get("max_sessions"),
                    entry.get("max_memory_mb"),
                    None if ttl is None else float(ttl),
                )
            )
        return cls(tenants)

    def tenant_for(self, metadata) -> Tenant:
        """The tenant whose token the call's metadata carries; Unauthenticated if none matches."""
        if self.tenants is None:
            return OPEN_TENANT
        headers = [value for key, value in metadata or () if key == "authorization"]
        if len(headers) > 1:  # which one counts would depend on the proxies in between: refuse both
            raise Unauthenticated(f"send one authorization header, not {len(headers)}")
        scheme, _, token = (headers[0] if headers else "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("this server needs a bearer token: Client(address, token=...)")
        for tenant in self.tenants:
            if hmac.compare_digest(tenant.token.encode(), token.encode()):
                return tenant
        raise Unauthenticated("the bearer token is not valid on this server")
