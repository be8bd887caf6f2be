"""The main domain's own pages and API, an aiohttp app behind the proxy.

Requests reach this app only through the proxy, over an in-process socket
pair, so the X-Forwarded-* and X-Request-Id headers it sees were set by the
proxy from the real connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from auth.docstore import StoreUnavailable
from auth.store import StoreError
from gateway.admin_page import AdminPage
from gateway.api import API
from gateway.dashboard import Dashboard
from gateway.logs import event
from gateway.openapi import routes as openapi_routes
from gateway.prebuilds import Prebuilds
from gateway.routes_api import RoutesAPI
from gateway.signin import SignIn, page
from gateway.teams_api import TeamsAPI
from gateway.workspaces_api import WorkspacesAPI
from routing.table import normalise_host

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.app")

GATEWAY_KEY = web.AppKey("gateway", object)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
}


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]  # type: ignore[return-value]


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@web.middleware
async def store_unavailable(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The state store (Redis) out of reach: a 503 that says so, as the workspace hosts answer, not a 500."""
    try:
        return await handler(request)
    except (StoreError, StoreUnavailable) as e:
        event(log, logging.ERROR, "state store unavailable", error=str(e))
        message = "Sign-in is unavailable for a moment; try again shortly."
        if request.path.startswith("/api/"):
            return web.json_response({"error": message}, status=503, headers={"Cache-Control": "no-store"})
        return page("Unavailable", f"<p>{message}</p>", 503)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the worker's loop answers."""
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: listening and not draining."""
    gw = _gateway(request)
    if gw.draining or gw.server is None:
        return web.json_response({"status": "draining"}, status=503, headers={"Cache-Control": "no-store"})
    return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})


def build_app(gw: Gateway) -> web.Application:
    app = web.Application(middlewares=[security_headers, store_unavailable], client_max_size=1 << 20)
    app[GATEWAY_KEY] = gw
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    SignIn(gw).routes(app)
    api = API(gw)
    api.routes(app)
    workspaces = WorkspacesAPI(gw, api)
    workspaces.routes(app)
    TeamsAPI(gw, api).routes(app)
    RoutesAPI(gw, api).routes(app)
    openapi_routes(app)
    AdminPage(gw, api).routes(app)
    gw.prebuilds = Prebuilds(gw, api)
    gw.prebuilds.routes(app)
    # GET / is the dashboard: the sign-in link for anonymous visitors, the person's workspaces otherwise.
    Dashboard(gw, workspaces).routes(app)
    return app


def build_redirect_app(gw: Gateway) -> web.Application:
    """Plain HTTP answers only with a redirect to HTTPS on a host the gateway serves."""

    async def redirect(request: web.Request) -> web.Response:
        # Redirect to the same host only when it is one of ours by shape, so that the
        # answer reveals nothing about which workspaces exist.
        host = normalise_host(request.headers.get("Host", "")) or ""
        if not gw.router.is_gateway_host(host):
            host = gw.config.domain
        port = gw.config.public_port
        authority = host if port == 443 else f"{host}:{port}"
        raise web.HTTPPermanentRedirect(f"https://{authority}{request.rel_url}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app
