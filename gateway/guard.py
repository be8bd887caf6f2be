"""Who may pass: the auth checks the proxy runs on every host but the main domain.

The main domain's app reads its own session cookie; every other host (workspace
ports, admin-routed services) is checked here before a byte goes upstream:

- `/.wsgate/auth?ticket=...` swaps a ticket minted by the main domain for a
  host-only cookie on this one host;
- a gateway token (`Authorization: Bearer wsg_...`) or that host cookie says
  who is asking; the policy says whether they may;
- anonymous browsers are sent to sign in, everyone refused gets the very 404
  that a host that does not exist gets (the router hands the guard a route
  owned by nobody for those, so the two cannot differ);
- cookie-authenticated WebSocket upgrades must come from the host's own origin.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, quote, urlsplit

from auth.policy import PUBLIC
from auth.principal import Principal
from auth.redirects import safe_path
from auth.service import COOKIE_PREFIX, HANDOFF_COOKIE, HANDOFF_TTL, HOST_COOKIE, AuthService
from auth.store import StoreError, digest
from auth.store import now as _now
from auth.tokens import PREFIX as TOKEN_PREFIX
from gateway import http1
from routing.table import RULE, WORKSPACE, Route, parse_workspace_label

if TYPE_CHECKING:
    from auth.assertions import AssertionSigner

if TYPE_CHECKING:
    from gateway.proxy import Exchange

log = logging.getLogger("wsgate.guard")

NOT_FOUND_MESSAGE: Final = "There is nothing at this address."
TOKEN_PREFIX_BYTES: Final = TOKEN_PREFIX.encode()
# Lower-case: cookie names are compared with it lower-cased (a `__HOST-WSGATE-x` is one too).
COOKIE_PREFIX_BYTES: Final = COOKIE_PREFIX.lower().encode()
_HOST_COOKIE: Final = HOST_COOKIE.encode()
_HANDOFF_COOKIE: Final = HANDOFF_COOKIE.encode()
ASSERTION_HEADER_BYTES: Final = b"X-Wsgate-Assertion"


# Plain classes rather than dataclasses: compiled, their constructors are native calls
# (a dataclass's generated __init__ stays interpreted), and one is made per request.
class Answer:
    """A response the gateway gives instead of forwarding."""

    __slots__ = ("headers", "message", "status")

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.message = message
        self.headers = headers

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.message!r})"


class Pass:
    """Forward, adding these headers (identity for services behind admin rules)."""

    __slots__ = ("headers", "principal")

    def __init__(self, headers: list[tuple[bytes, bytes]], principal: Principal | None = None) -> None:
        self.headers = headers
        self.principal = principal


def _not_found() -> Answer:
    return Answer(404, NOT_FOUND_MESSAGE, [])


class Guard:
    def __init__(
        self,
        auth: AuthService,
        *,
        domain: str,
        public_port: int,
        allowed_origins: tuple[str, ...],
        signer: AssertionSigner | None = None,
    ) -> None:
        self.auth = auth
        # Read on every request: one attribute lookup each, not two.
        self.host_cache = auth.host_cache
        self.policy = auth.policy
        self.signer = signer
        self.domain = domain
        self.port_suffix = "" if public_port == 443 else f":{public_port}"
        self.allowed_origins = frozenset(o.lower().rstrip("/").encode() for o in allowed_origins)

    def origin_of(self, host: str) -> str:
        return f"https://{host}{self.port_suffix}"

    async def check(self, ex: Exchange, route: Route) -> Answer | Pass:
        try:
            return await self._check(ex, route)
        except StoreError as e:
            log.error("state store unavailable: %s", e)
            return Answer(503, "Sign-in is unavailable for a moment; try again shortly.", [])

    async def _check(self, ex: Exchange, route: Route) -> Answer | Pass:
        path = ex.target
        if path.startswith(b"/.wsgate/"):
            return await self._redeem(ex, route)
        if route.access.level == PUBLIC:
            return Pass([])
        auth = self.auth
        principal: Principal | None = None
        by_cookie = False
        bearer = _bearer(ex.headers)
        if bearer is not None:
            found = await auth.bearer(bearer, "workspace")
            if found is None:
                return Answer(
                    401,
                    "The access token is invalid, expired or revoked.",
                    [(b"WWW-Authenticate", b'Bearer realm="wsgate", error="invalid_token"')],
                )
            principal = found[1]
        else:
            grant = http1.cookie_value(ex.headers, _HOST_COOKIE)
            if grant is not None:
                session = await auth.host_session(grant.decode("ascii", "replace"), route.host)
                if session is not None:
                    principal = session.principal
                    by_cookie = True
        if principal is None:
            return self._sign_in(ex, route)
        return self._decide(ex, route, principal, by_cookie=by_cookie)

    def quick(self, ex: Exchange, route: Route) -> Answer | Pass | None:
        """The verdict without waiting on the store, or None when only `check` can tell.

        The common case on a busy workspace host: a browser whose host cookie's session, or a
        client whose bearer token, was looked up a moment ago (the caches' rules are in
        auth/revocation.py).
        """
        if ex.target.startswith(b"/.wsgate/"):
            return None
        if route.access.level == PUBLIC:
            return Pass([])
        bearer = _bearer(ex.headers)
        if bearer is not None:
            found = self.auth.token_cache.get(bearer)
            if found is None or "workspace" not in found[0].scopes:
                return None
            return self._decide(ex, route, found[1], by_cookie=False)
        grant = http1.cookie_value(ex.headers, _HOST_COOKIE)
        if grant is None:
            return None
        session = self.host_cache.get(grant.decode("ascii", "replace"), route.host)
        if session is None:
            return None
        return self._decide(ex, route, session.principal, by_cookie=True)

    def _decide(self, ex: Exchange, route: Route, principal: Principal, *, by_cookie: bool) -> Answer | Pass:
        if not self.policy.allows(route.access, principal):
            return _not_found()
        if by_cookie:
            if ex.upgrade is not None:
                if not self._origin_ok(ex, route.host):
                    return Answer(403, "This WebSocket was opened from another site.", [])
            elif not self._fetch_ok(ex, route):
                return Answer(403, "This request came from another site.", [])
        if route.kind == RULE:
            return Pass(self._rule_headers(principal, route), principal)
        return Pass([], principal)

    def _rule_headers(self, p: Principal, route: Route) -> list[tuple[bytes, bytes]]:
        """A signed assertion of who this is for the service behind the rule (plus plain headers if asked)."""
        rule = route.rule
        plain = rule is None or rule.identity_headers
        out = _identity_headers(p) if plain else []
        if self.signer is not None:
            teams = sorted(t.name for t in self.policy.teams.values() if t.has(p))
            token = self.signer.sign(
                audience=route.host, subject=p.identity, email=p.email, name=p.name, login=p.login,
                groups=p.qualified_groups(), teams=teams,
            )
            out.append((ASSERTION_HEADER_BYTES, token.encode()))
        return out

    def _sign_in(self, ex: Exchange, route: Route) -> Answer:
        if not self.auth.enabled:
            return _not_found()
        if ex.method not in (b"GET", b"HEAD") or ex.upgrade is not None:
            return Answer(401, "Sign in to use this address.", [(b"WWW-Authenticate", b'Bearer realm="wsgate"')])
        here = self.origin_of(route.host) + safe_path(ex.target.decode("latin-1"))
        # The ticket that comes back must be redeemed by this browser: it carries the hash of a
        # nonce that only this browser holds, in a cookie of this host (no ticket can be pushed
        # into someone else's browser to sign them in as the attacker).
        nonce = secrets.token_urlsafe(24)
        location = (
            f"https://{self.domain}{self.port_suffix}/auth/host?next={quote(here, safe='')}&bind={digest(nonce)}"
        )
        cookie = f"{HANDOFF_COOKIE}={nonce}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={int(HANDOFF_TTL)}"
        return Answer(
            302, "Sign in to continue.", [(b"Location", location.encode()), (b"Set-Cookie", cookie.encode())]
        )

    def _fetch_ok(self, ex: Exchange, route: Route) -> bool:
        """Cross-site request forgery between hosts of the same site (every workspace is same-site
        with every other): a cookie-authenticated request from another host is let through only as
        a plain navigation, or from another port of the same workspace, or from an allowed origin."""
        site = mode = origin = None
        for name, value in ex.headers:
            n = len(name)
            if n == 14 and name.lower() == b"sec-fetch-site":
                site = value.strip().lower()
            elif n == 14 and name.lower() == b"sec-fetch-mode":
                mode = value.strip().lower()
            elif n == 6 and name.lower() == b"origin":
                origin = value.strip().lower().rstrip(b"/")
        if site in (None, b"same-origin", b"none"):
            # Older browsers send no Sec-Fetch-*: judge unsafe requests by Origin when they carry one.
            if site is None and origin is not None and ex.method not in (b"GET", b"HEAD", b"OPTIONS"):
                return self._origin_allowed(origin, route)
            return True
        if mode == b"navigate" and ex.method in (b"GET", b"HEAD"):
            return True
        return origin is not None and self._origin_allowed(origin, route)

    def _origin_allowed(self, origin: bytes, route: Route) -> bool:
        if origin == self.origin_of(route.host).encode() or origin in self.allowed_origins:
            return True
        if route.kind != WORKSPACE or not origin.startswith(b"https://"):
            return False
        # Another port of the same workspace: the same owner's code.
        host = origin[8:].decode("latin-1")
        if self.port_suffix and host.endswith(self.port_suffix):
            host = host[: -len(self.port_suffix)]
        elif ":" in host:
            return False
        suffix = ".ws." + self.domain
        if not host.endswith(suffix):
            return False
        parsed = parse_workspace_label(host[: -len(suffix)])
        return parsed is not None and parsed[0] == route.workspace_id

    def _origin_ok(self, ex: Exchange, host: str) -> bool:
        origin = None
        for name, value in ex.headers:
            if len(name) == 6 and name.lower() == b"origin":
                if origin is not None:
                    return False
                origin = value.strip().lower().rstrip(b"/")
        if origin is None:
            return False
        return origin == self.origin_of(host).encode() or origin in self.allowed_origins

    async def _redeem(self, ex: Exchange, route: Route) -> Answer:
        """`/.wsgate/auth?ticket=...`: the last leg of the sign-in handoff to a workspace host."""
        parts = urlsplit(ex.target.decode("latin-1"))
        if parts.path != "/.wsgate/auth" or ex.method != b"GET":
            return _not_found()
        tickets = parse_qs(parts.query).get("ticket", [])
        invalid = Answer(400, "This sign-in link is invalid, expired or already used. Open the address again.", [])
        if len(tickets) != 1:
            return invalid
        auth = self.auth
        ticket = await auth.tickets.redeem(tickets[0], route.host)
        if ticket is None:
            return invalid
        nonce = http1.cookie_value(ex.headers, _HANDOFF_COOKIE)
        if nonce is None or not hmac.compare_digest(digest(nonce.decode("ascii")), ticket.bind):
            log.warning("ticket refused: not redeemed by the browser that asked for it")
            return invalid
        session = await auth.sessions.get_by_key(ticket.session_key)
        if session is None:
            return invalid
        session = await auth.fresh(session)
        if session is None:
            return invalid
        if not auth.policy.allows(route.access, session.principal):
            return _not_found()
        grant = await auth.sessions.grant(session, route.host)
        max_age = int(max(1.0, session.created + auth.sessions.lifetime - _now()))
        cookie = f"{HOST_COOKIE}={grant}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
        return Answer(
            303,
            "Signed in.",
            [
                (b"Location", safe_path(ticket.path).encode()),
                (b"Set-Cookie", cookie.encode()),
                (b"Set-Cookie", f"{HANDOFF_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0".encode()),
                (b"Referrer-Policy", b"no-referrer"),
            ],
        )


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if len(name) == 13 and name.lower() == b"authorization":
            parts = value.split(None, 1)
            if len(parts) == 2 and parts[0].lower() == b"bearer" and parts[1].strip().startswith(TOKEN_PREFIX_BYTES):
                return parts[1].strip().decode("ascii", "replace")
    return None


def _header_safe(value: str) -> bytes | None:
    data = value.encode("utf-8", "replace")
    return data if data and all(32 <= c < 127 for c in data) else None


def _identity_headers(p: Principal) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for name, value in ((b"X-Wsgate-User", p.identity), (b"X-Wsgate-Login", p.login), (b"X-Wsgate-Email", p.email)):
        safe = _header_safe(value)
        if safe is not None:
            out.append((name, safe))
    return out
