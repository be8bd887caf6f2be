"""The main domain's sign-in pages: providers, callback, logout and the workspace-host handoff.

The flow's protocol (state, PKCE, nonce, the browser binding) is `auth.flow`;
this module turns it into pages, redirects and cookies.
"""

from __future__ import annotations

import hmac
import logging
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from auth import flow
from auth.flow import FlowError
from auth.principal import Principal
from auth.providers.dev import FORM_PATH as DEV_FORM_PATH
from auth.redirects import safe_next, safe_path
from auth.service import FLOW_COOKIE, SESSION_COOKIE, AuthService
from auth.sessions import Session
from gateway.http1 import cookie_value
from gateway.logs import event
from routing.table import NOWHERE

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.signin")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} · wsgate</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em;color:#222}}
a.button,button{{display:block;margin:.6em 0;padding:.7em 1em;border:1px solid #888;border-radius:6px;
background:#f6f6f6;color:#222;text-decoration:none;font:inherit;cursor:pointer;width:100%;text-align:left}}
input{{font:inherit;padding:.5em;width:100%;box-sizing:border-box}}.muted{{color:#666}}</style>
</head><body><h1>{title}</h1>
{body}
</body></html>
"""

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src https:; "
    "base-uri 'none'; frame-ancestors 'none'",
}


def page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=escape(title), body=body),
        status=status,
        content_type="text/html",
        headers={**PAGE_HEADERS, **(headers or {})},
    )


def gateway_cookie(request: web.Request, name: str) -> str:
    """A gateway cookie read strictly (see http1.cookie_value); "" when absent, doubled or malformed."""
    raw = [(b"Cookie", v.encode("latin-1")) for v in request.headers.getall("Cookie", [])]
    value = cookie_value(raw, name.encode())
    return value.decode("ascii") if value is not None else ""


def redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: float) -> None:
    # __Host- cookies: Secure, Path=/, no Domain, so only this exact host ever gets them.
    response.set_cookie(
        name, value, max_age=int(max_age), path="/", secure=True, httponly=True, samesite="Lax"
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.set_cookie(name, "", max_age=0, path="/", secure=True, httponly=True, samesite="Lax")


class SignIn:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        cfg = gw.config
        port = cfg.public_port
        self.domain = cfg.domain
        self.port = port
        self.base = f"https://{cfg.domain}" + ("" if port == 443 else f":{port}")

    @property
    def auth(self) -> AuthService:
        return self.gw.auth

    def next_url(self, raw: str | None) -> str:
        return safe_next(raw, domain=self.domain, port=self.port, extra_host=self.gw.router.is_rule_host)

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/auth/login", self.login_page)
        r.add_get("/auth/login/{provider}", self.start)
        r.add_get("/auth/callback/{provider}", self.callback)
        r.add_get(DEV_FORM_PATH, self.dev_form)
        r.add_post(DEV_FORM_PATH, self.dev_submit)
        r.add_get("/auth/logout", self.logout_page)
        r.add_post("/auth/logout", self.logout)
        r.add_get("/auth/host", self.host_ticket)

    async def current(self, request: web.Request) -> Session | None:
        sid = gateway_cookie(request, SESSION_COOKIE)
        if not sid:
            return None
        return await self.auth.session(sid)

    # --- pages -------------------------------------------------------------------------
    async def login_page(self, request: web.Request) -> web.Response:
        nxt = self.next_url(request.query.get("next"))
        providers = self.auth.providers
        if not providers:
            return page("Sign in", "<p>No sign-in provider is configured on this gateway.</p>", 503)
        session = await self.current(request)
        items = []
        if session is not None:
            items.append(
                f'<p>You are signed in as <b>{escape(session.principal.login)}</b>.'
                f' <a href="{escape(nxt)}">Continue</a></p>'
            )
        for name, provider in providers.items():
            href = f"/auth/login/{quote(name)}?{urlencode({'next': nxt})}"
            items.append(f'<a class="button" href="{escape(href)}">Continue with {escape(provider.display_name)}</a>')
        return page("Sign in", "\n".join(items))

    def failure(self, message: str, status: int, nxt: str = "") -> web.Response:
        again = "/auth/login" + (f"?{urlencode({'next': nxt})}" if nxt else "")
        body = (
            f'<p>{escape(message)}</p><p><a href="{escape(again)}">Try signing in again</a> · <a href="/">Home</a></p>'
        )
        return page("Sign-in failed", body, status)

    async def start(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        provider = self.auth.providers.get(name)
        if provider is None:
            return page("Not found", "<p>There is no such sign-in provider.</p>", 404)
        nxt = self.next_url(request.query.get("next"))
        try:
            # A store outage is answered by the app's store_unavailable middleware.
            started = await flow.begin(
                self.auth, provider, self.redirect_uri(name), nxt, gateway_cookie(request, FLOW_COOKIE)
            )
        except FlowError as e:
            return self.refused(e, name)
        response = redirect(started.url)
        set_cookie(response, FLOW_COOKIE, started.binding, flow.FLOW_TTL)
        return response

    def redirect_uri(self, provider: str) -> str:
        return f"{self.base}/auth/callback/{quote(provider)}"

    def refused(self, e: FlowError, provider: str) -> web.Response:
        if e.event:
            event(log, logging.WARNING, e.event, provider=provider, **e.fields)
        return self.failure(e.message, e.status, e.next_url)

    async def callback(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        provider = self.auth.providers.get(name)
        if provider is None:
            return page("Not found", "<p>There is no such sign-in provider.</p>", 404)
        try:
            done = await flow.finish(
                self.auth, provider, self.redirect_uri(name), request.query, gateway_cookie(request, FLOW_COOKIE)
            )
        except FlowError as e:
            return self.refused(e, name)
        principal = done.principal
        sid, _ = await self.auth.sign_in(principal, done.tokens, gateway_cookie(request, SESSION_COOKIE))
        event(log, logging.INFO, "signed in", identity=principal.identity, login=principal.login)
        response = redirect(done.next_url, 303)
        set_cookie(response, SESSION_COOKIE, sid, self.auth.sessions.lifetime)
        clear_cookie(response, FLOW_COOKIE)
        return response

    async def dev_form(self, request: web.Request) -> web.Response:
        if "dev" not in self.auth.providers:
            return page("Not found", "<p>Development sign-in is off.</p>", 404)
        state = request.query.get("state", "")
        body = (
            '<p class="muted">Development sign-in: pick any user name. Never enabled in production.</p>'
            f'<form method="post" action="{DEV_FORM_PATH}">'
            f'<input type="hidden" name="state" value="{escape(state)}">'
            '<label>User name <input name="login" autocomplete="username" required pattern="[a-zA-Z0-9\\-]{1,39}"'
            ' autofocus></label><button type="submit">Sign in</button></form>'
        )
        return page("Sign in", body)

    async def dev_submit(self, request: web.Request) -> web.Response:
        if "dev" not in self.auth.providers:
            return page("Not found", "<p>Development sign-in is off.</p>", 404)
        form = await request.post()
        state, login = str(form.get("state", "")), str(form.get("login", ""))
        return redirect("/auth/callback/dev?" + urlencode({"code": login, "state": state}), 303)

    async def logout_page(self, request: web.Request) -> web.Response:
        session = await self.current(request)
        if session is None:
            return page("Signed out", '<p>You are not signed in.</p><p><a href="/auth/login">Sign in</a></p>')
        return page("Sign out", logout_form(session))

    async def logout(self, request: web.Request) -> web.Response:
        form = await request.post()
        session = await self.current(request)
        if session is not None:
            token = str(form.get("csrf", ""))
            if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                event(log, logging.WARNING, "logout refused: CSRF token missing or wrong")
                return page("Sign out", "<p>This sign-out request did not come from this site.</p>", 403)
            await self.auth.sessions.end(session.key)
            event(log, logging.INFO, "signed out", identity=session.principal.identity)
        response = page("Signed out", '<p>You are signed out everywhere.</p><p><a href="/auth/login">Sign in</a></p>')
        clear_cookie(response, SESSION_COOKIE)
        return response

    async def host_ticket(self, request: web.Request) -> web.Response:
        """Mints a ticket for one workspace (or admin-routed) host after checking the policy."""
        nxt = self.next_url(request.query.get("next"))
        parts = urlsplit(nxt)
        host = parts.hostname or ""
        if host == self.domain:
            return redirect(nxt)
        session = await self.current(request)
        if session is None:
            here = "/auth/host?" + urlencode({"next": nxt, "bind": request.query.get("bind", "")[:64]})
            return redirect("/auth/login?" + urlencode({"next": self.base + here}))
        route = self.gw.router.match(host.encode())
        if isinstance(route, int) or route.upstream is NOWHERE or not self.allowed(route, session.principal):
            return not_found_page()
        bind = request.query.get("bind", "")
        if len(bind) != 64 or not all(c in "0123456789abcdef" for c in bind):
            # Not started by the host itself: let it start the handoff (it sets the binding cookie).
            return redirect(nxt)
        path = safe_path((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        ticket = await self.auth.tickets.mint(host, session.key, path, bind)
        return redirect(f"{parts.scheme}://{parts.netloc}/.wsgate/auth?{urlencode({'ticket': ticket})}")

    def allowed(self, route: Any, principal: Principal) -> bool:
        return self.auth.policy.allows(route.access, principal)


def not_found_page() -> web.Response:
    return page("404 Not Found", "<p>There is nothing at this address.</p>", 404)


def logout_form(session: Session) -> str:
    return (
        '<form method="post" action="/auth/logout">'
        f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
        f'<button type="submit">Sign out {escape(session.principal.login)}</button></form>'
    )
