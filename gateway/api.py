"""The REST API under /api/v1 (JSON only): who am I, and personal access tokens.

Callers authenticate with the session cookie (browsers; unsafe methods need
the session's CSRF token in `X-CSRF-Token`) or with a gateway token in
`Authorization: Bearer` (scripts and IDE clients; needs the `api` scope, skips
CSRF since no browser attaches it on its own).
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from auth.principal import Principal
from auth.service import SESSION_COOKIE
from auth.sessions import Session
from auth.tokens import DEFAULT_SCOPES, TokenError
from gateway.logs import event
from gateway.signin import gateway_cookie

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.api")

DEFAULT_TOKEN_LIFETIME = 90 * 86400.0
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="wsgate"'
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def json_body(request: web.Request, what: str = "the request") -> dict[str, Any] | web.Response:
    """The request's JSON object, or the 4xx answer that says what is wrong with it."""
    if request.content_type != "application/json":
        return error(415, f"send {what} as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"{what} is larger than {request.client_max_size} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return error(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "expected a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    session: Session | None  # None when authenticated by a token
    scopes: tuple[str, ...] = ()  # the token's scopes; () for a session


def audit_entry(c: Caller, action: str, kind: str, doc_id: str, before: Any, after: Any) -> dict[str, Any]:
    """Who changed what (the store adds seq, time and version), for /api/v1/audit."""
    return {
        "actor": c.principal.identity,
        "via": "session" if c.session is not None else "token",
        "action": action,
        "kind": kind,
        "id": doc_id,
        "before": before,
        "after": after,
    }


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(request: web.Request) -> int | web.Response | None:
    """The version an If-Match header names (None when absent), or the 4xx answer to a malformed one.

    `If-Match: *` means "it must exist", which the caller checks; it maps to None here.
    """
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/")
    digits = value[1:-1]
    if len(value) < 3 or value[0] != '"' or value[-1] != '"' or not (digits.isascii() and digits.isdigit()):
        return error(400, 'If-Match: expected an ETag this API sent, such as "3"', field="If-Match")
    if len(digits) > 18:
        return error(400, 'If-Match: expected an ETag this API sent, such as "3"', field="If-Match")
    return int(digits)


class API:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/me", self.me)
        r.add_get("/api/v1/tokens", self.list_tokens)
        r.add_post("/api/v1/tokens", self.create_token)
        r.add_delete("/api/v1/tokens/{id}", self.revoke_token)

    async def caller(self, request: web.Request) -> Caller | web.Response:
        auth = self.gw.auth
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return error(401, "unsupported Authorization scheme (use Bearer with a wsgate token)")
            found = await auth.bearer(token.strip(), "api")
            if found is None:
                return error(401, "the token is invalid, expired, revoked or lacks the 'api' scope")
            return Caller(found[1], None, found[0].scopes)
        sid = gateway_cookie(request, SESSION_COOKIE)
        session = await auth.session(sid) if sid else None
        if session is None:
            return error(401, "sign in or send a token")
        if request.method in _UNSAFE:
            sent = request.headers.get("X-CSRF-Token", "")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return error(403, "missing or wrong X-CSRF-Token header")
        return Caller(session.principal, session)

    def is_admin(self, c: Caller) -> bool:
        """Admin rights: an admin's session, or an admin's token that carries the 'admin' scope."""
        return self.gw.auth.policy.is_admin(c.principal) and (c.session is not None or "admin" in c.scopes)

    async def me(self, request: web.Request) -> web.Response:
        c = await self.caller(request)
        if isinstance(c, web.Response):
            return c
        p = c.principal
        data: dict[str, Any] = {
            "identity": p.identity,
            "provider": p.provider,
            "id": p.user_id,
            "login": p.login,
            "name": p.name,
            "email": p.email,
            "avatar": p.avatar,
            "groups": sorted(p.groups),
            "admin": self.gw.auth.policy.is_admin(p),
        }
        if c.session is not None:
            # Same-origin scripts read it here to send unsafe requests (CORS keeps others out).
            data["csrf_token"] = c.session.csrf
        return ok(data)

    async def list_tokens(self, request: web.Request) -> web.Response:
        c = await self.caller(request)
        if isinstance(c, web.Response):
            return c
        tokens = await self.gw.auth.tokens.list(c.principal.identity)
        return ok({"tokens": [t.public() for t in tokens]})

    async def create_token(self, request: web.Request) -> web.Response:
        c = await self.caller(request)
        if isinstance(c, web.Response):
            return c
        body = await json_body(request, "the token request")
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - {"name", "scopes", "expires_in"})
        if unknown:
            return error(400, f"{unknown[0]}: unknown field", field=unknown[0])
        scopes = body.get("scopes", list(DEFAULT_SCOPES))
        if not isinstance(scopes, list):
            return error(400, "scopes: expected a list of strings", field="scopes")
        if "admin" in scopes and not self.gw.auth.policy.is_admin(c.principal):
            return error(403, "scopes: only admins may create tokens with the 'admin' scope", field="scopes")
        try:
            token, info = await self.gw.auth.tokens.create(
                c.principal.identity, body.get("name", ""), scopes, body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
            )
        except TokenError as e:
            field = str(e).split(":", 1)[0]
            return error(400, str(e), field=field)
        event(log, logging.INFO, "token created", owner=info.owner, token_id=info.id, scopes=",".join(info.scopes))
        return ok({**info.public(), "token": token}, 201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        c = await self.caller(request)
        if isinstance(c, web.Response):
            return c
        tid = request.match_info["id"]
        if not await self.gw.auth.tokens.revoke(tid, c.principal.identity):
            return error(404, "no such token")
        await self.gw.auth.revoked()  # no worker or replica may answer from a cached lookup of it
        event(log, logging.INFO, "token revoked", owner=c.principal.identity, token_id=tid)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
