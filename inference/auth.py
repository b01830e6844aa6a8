"""Bearer tokens for the HTTP service, one per scope: ``predict``, ``metrics``, ``admin``.

A scope is protected when its token is set, and open otherwise (``/health`` is always
open: orchestrators probe it). The admin routes (promote, rollback) exist only when the
admin token is set, so they are never reachable without it. A request to a protected scope
without a bearer token, or with one that is no scope's token, gets 401; with another
scope's token, 403 (authenticated, not allowed). Tokens are compared in constant time
(``hmac.compare_digest``), against every configured token whatever matched, and never
appear in a repr, a log line or a response.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fastapi import HTTPException, Request

Scope = Literal["predict", "metrics", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "metrics", "admin")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="featflow"'}


@dataclass(frozen=True)
class Tokens:
    """The configured token of each scope (None: the scope is open)."""

    predict: str | None = field(default=None, repr=False)
    metrics: str | None = field(default=None, repr=False)
    admin: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for scope in SCOPES:
            token = getattr(self, scope)
            if token is not None and (len(token) < 16 or token != token.strip()):
                raise ValueError(
                    f"the {scope} token must be at least 16 characters, without surrounding "
                    "whitespace"
                )

    def protects(self, scope: Scope) -> bool:
        """Whether ``scope`` needs a token."""
        return getattr(self, scope) is not None

    def guard(self, scope: Scope) -> Callable[[Request], None]:
        """A FastAPI dependency that lets a request into ``scope`` or raises 401/403."""
        configured = [(s, getattr(self, s).encode()) for s in SCOPES if getattr(self, s)]

        def check(request: Request) -> None:
            if not self.protects(scope):
                return
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                raise HTTPException(401, f"{scope} needs a bearer token", headers=_CHALLENGE)
            offered = given.strip().encode()
            # compare with every token, always: the time taken says nothing of which matched
            matched = [s for s, token in configured if hmac.compare_digest(offered, token)]
            if scope in matched:
                return
            if matched:
                raise HTTPException(403, f"this token is not allowed to {scope}")
            raise HTTPException(401, "unknown bearer token", headers=_CHALLENGE)

        return check


#: No scope protected: every route open but the admin ones, which do not exist.
OPEN = Tokens()
