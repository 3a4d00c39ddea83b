"""API keys from settings: roles and the publisher scope.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``;
surrounding whitespace is no part of a key, in either header or in the
settings (``" k1 "`` is ``k1``).
Roles: ``query`` (POST /v1/attributions), ``report`` (all sources and
reports), ``admin`` (everything, including reload) and ``publisher`` (a key
mapped to one source id: its own source and its own report line only).
A missing key answers 401; an unknown key, or one without the role, 403 —
the same body either way, so nothing tells which keys exist. With no key of
any kind configured the service is open (logged at startup).

The key is checked before anything else of a request: ``RequestGate`` (in
``middleware.py``) calls ``authorize`` with the roles of the matched route (the
``roles`` of its ``require`` dependency) before the body is read, its size
checked or it is parsed, so a request without a valid key gets its 401/403
whatever its body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

from .errors import ApiError, forbidden
from .settings import Settings


@dataclass(frozen=True)
class Principal:
    roles: frozenset[str]
    source: str | None = None  # set for publisher keys: the only source it may see
    id: str = "open"  # short hash of the key, to scope idempotency keys

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles

    def can_see(self, source_id: str) -> bool:
        # bytes: compare_digest refuses non-ASCII str (a path may hold any character)
        return self.source is None or hmac.compare_digest(self.source.encode(), source_id.encode())


OPEN = Principal(frozenset({"admin"}))


class KeyRing:
    """Key -> Principal, looked up in constant time per configured key."""

    def __init__(self, settings: Settings):
        self.enabled = settings.auth_enabled
        entries: dict[str, tuple[set[str], str | None]] = {}
        for role, keys in (("query", settings.query_keys), ("report", settings.report_keys),
                           ("admin", settings.admin_keys)):
            for k in keys:
                entries.setdefault(k.strip(), (set(), None))[0].add(role)
        for k, src in settings.publisher_keys.items():
            k = k.strip()
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


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (scheme in any case), else of
    ``X-API-Key``; surrounding whitespace stripped from either."""
    scheme, *cred = headers.get("authorization", "").split(None, 1) or [""]
    if scheme.lower() == "bearer":
        return cred[0].strip() if cred else None
    return headers.get("x-api-key", "").strip() or None


def authorize(ring: KeyRing, headers: Mapping[str, str], roles: tuple[str, ...]) -> Principal:
    """The Principal of the request's key if it holds one of ``roles`` (or
    admin); else ApiError 401 (no key) or 403 (unknown key, or lacking the role)."""
    if not ring.enabled:
        return OPEN
    key = presented_key(headers)
    if key is None:
        reason = "an API key is required (Authorization: Bearer <key>, or X-API-Key)"
        raise ApiError(401, "unauthorized", f"authorization: {reason}", [("authorization", reason)], "header",
                       {"WWW-Authenticate": "Bearer"})
    p = ring.lookup(key)
    if p is None or not any(p.allows(r) for r in roles):
        raise forbidden()
    return p


PRINCIPAL_SCOPE_KEY = "fa.principal"  # set by RequestGate for the matched route's roles


def require(*roles: str):
    """FastAPI dependency: a Principal holding one of ``roles`` (or admin).
    ``dependency.roles`` lets ``RequestGate`` check the key before the body."""

    async def dependency(request: Request) -> Principal:
        checked = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if checked is not None and checked[0] == roles:
            return checked[1]
        return authorize(request.app.state.keys, request.headers, roles)

    dependency.roles = roles
    return dependency
