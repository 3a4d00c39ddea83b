"""API keys from settings: roles and the publisher scope.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
Roles: ``query`` (POST /v1/attributions), ``report`` (all sources and
reports), ``admin`` (everything, including reload) and ``publisher`` (a key
mapped to one source id: its own source and its own report line only).
A missing key answers 401; an unknown key, or one without the role, 403 —
the same body either way, so nothing tells which keys exist. With no key of
any kind configured the service is open (logged at startup).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from .errors import ApiError
from .settings import Settings


@dataclass(frozen=True)
class Principal:
    roles: frozenset[str]
    source: str | None = None  # set for publisher keys: the only source it may see
    id: str = "open"  # short hash of the key, to scope idempotency keys

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles

    def can_see(self, source_id: str) -> bool:
        return self.source is None or hmac.compare_digest(self.source, source_id)


OPEN = Principal(frozenset({"admin"}))


class KeyRing:
    """Key -> Principal, looked up in constant time per configured key."""

    def __init__(self, settings: Settings):
        self.enabled = settings.auth_enabled
        entries: dict[str, tuple[set[str], str | None]] = {}
        for role, keys in (("query", settings.query_keys), ("report", settings.report_keys),
                           ("admin", settings.admin_keys)):
            for k in keys:
                entries.setdefault(k, (set(), None))[0].add(role)
        for k, src in settings.publisher_keys.items():
            roles, _ = entries.get(k, (set(), None))
            entries[k] = (roles | {"publisher"}, src)
        self._keys = [(k.encode(), Principal(frozenset(r), s, hashlib.sha256(k.encode()).hexdigest()[:16]))
                      for k, (r, s) in entries.items() if k]

    def lookup(self, key: str) -> Principal | None:
        found, raw = None, key.encode()
        for k, p in self._keys:  # no early exit: timing does not depend on which key matched
            if hmac.compare_digest(k, raw):
                found = p
        return found


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def require(*roles: str):
    """FastAPI dependency: a Principal holding one of ``roles`` (or admin)."""

    async def dependency(request: Request) -> Principal:
        ring: KeyRing = request.app.state.keys
        if not ring.enabled:
            return OPEN
        key = presented_key(request)
        if key is None:
            raise ApiError(401, "unauthorized", "an API key is required", headers={"WWW-Authenticate": "Bearer"})
        p = ring.lookup(key)
        if p is None or not any(p.allows(r) for r in roles):
            raise ApiError(403, "forbidden", "forbidden")
        return p

    return dependency
