"""A local GitHub: the OAuth web flow and the REST endpoints a sign-in uses, with switches for failures.

In-process::

    fake = FakeGitHub(GitHubState.from_config(config))
    base = await fake.start()            # http://127.0.0.1:<port>
    fake.web_url, fake.api_url           # what GitHubProvider is configured with
    fake.state.remove_member("acme", "alice")
    await fake.stop()

As a process (for end-to-end sign-in next to a gateway)::

    python tests/auth/github_api.py --port 0 --users users.json [--api-prefix /api/v3]

prints one JSON line `{"event": "listening", "port": N, "base_url": ..., "web_url": ...,
"api_url": ...}` and serves until SIGTERM/SIGINT. The users file::

    {"client_id": "gh-client", "client_secret": "gh-secret", "current_user": "alice",
     "users": [{"login": "Alice", "id": 1001, "name": "Alice A", "avatar_url": "https://...",
                "emails": [{"email": "alice@example.com", "primary": true, "verified": true}]}],
     "orgs": {"Acme": ["alice", "bob"]},
     "teams": {"Acme/backend": ["alice"]}}

Control endpoints (test-only, JSON bodies, answer the changed state summary):
`POST /_control/current_user {"login"}`, `POST /_control/remove_member {"org", "login"}`,
`POST /_control/add_member {"org", "login"}` (`org` may be `Org/team`), `POST /_control/revoke
{"login"?}`, `POST /_control/switches {"api_status", "token_status", "malformed", "delay",
"deny", "next_link"}`, `GET /_control/requests`.

Shapes follow GitHub's documentation: `Link` pagination (`per_page` up to 100),
`{"message": "Bad credentials"}` with 401, and a token endpoint that answers 200
with `{"error": "bad_verification_code", ...}` when it refuses a code, JSON only
when asked with `Accept: application/json` (form-encoded otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode

from aiohttp import web
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from yarl import URL

CODE_LIFETIME = 600.0


# --- shared by the fakes -------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request a fake received (control requests excluded)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str = ""


@dataclass
class Grant:
    """An issued authorization code, bound as RFC 6749 and RFC 7636 require."""

    login: str
    client_id: str
    redirect_uri: str
    scopes: frozenset[str]
    challenge: str
    expires: float


@dataclass
class Switches:
    """Failure switches; `api_status`/`malformed`/`delay`/`next_link` apply to API requests only."""

    api_status: int | None = None
    token_status: int | None = None
    malformed: bool = False
    delay: float = 0.0
    deny: bool = False
    next_link: str | None = None  # forced `next` on every page: another origin, or a loop

    def update(self, payload: dict[str, Any]) -> None:
        for key, value in payload.items():
            if not hasattr(self, key):
                raise web.HTTPBadRequest(text=f"unknown switch {key}")
            setattr(self, key, value)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(client_id, client_secret) from `Authorization: Basic`, form-decoded as RFC 6749 section 2.3.1 says."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (unquote_plus(user), unquote_plus(password)) if sep else None


def split_scopes(raw: str) -> frozenset[str]:
    return frozenset(s for s in raw.replace(",", " ").split() if s)


def bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "token") else ""


def page_bounds(request: web.Request, size_param: str, default: int, total: int) -> tuple[int, int, int]:
    """(page, per_page, last_page) from the query, clamped the way the real APIs clamp."""
    try:
        per_page = max(1, min(100, int(request.query.get(size_param, default))))
    except ValueError:
        per_page = default
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    return page, per_page, max(1, math.ceil(total / per_page))


class FakeServer:
    """Start/stop on a free loopback port, request log, delays that end when the server stops."""

    # Where the API lives under base_url (the web/OAuth endpoints are at the root).
    api_prefix = ""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def control(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def is_api(self, path: str) -> bool:
        raise NotImplementedError

    @property
    def switches(self) -> Switches:
        raise NotImplementedError

    @property
    def web_url(self) -> str:
        return self.base_url

    @property
    def api_url(self) -> str:
        return self.base_url + self.api_prefix

    def api_requests(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == self.api_prefix + path]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/_control/{action}", self._control)
        app.router.add_get("/_control/requests", self._requests)
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return int(URL(self.base_url).port or 0)

    async def _pause(self, seconds: float) -> None:
        if seconds > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_control/"):
            return await handler(request)
        body = (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
        self.requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers), body))
        if self.is_api(request.path):
            sw = self.switches
            await self._pause(float(sw.delay))
            if sw.api_status is not None:
                return web.json_response({"message": "Server Error"}, status=int(sw.api_status))
            if sw.malformed:
                return web.Response(text='{"login": "truncat', content_type="application/json")
        return await handler(request)

    async def _control(self, request: web.Request) -> web.Response:
        payload = await request.json() if request.can_read_body else {}
        return web.json_response(await self.control(request.match_info["action"], payload))

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"method": r.method, "path": r.path, "query": r.query} for r in self.requests]
        )


def run_cli(description: str, make: Callable[[dict[str, Any], argparse.Namespace], FakeServer],
            extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """`--host/--port/--users`, one `listening` JSON line on stdout, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--users", type=Path, required=True, help="JSON file: users, groups, client credentials")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    config = json.loads(args.users.read_text())

    async def main() -> None:
        fake = make(config, args)
        await fake.start(args.host, args.port)
        info = {"event": "listening", "port": fake.port, "base_url": fake.base_url}
        info.update({k: getattr(fake, k) for k in ("web_url", "api_url") if hasattr(fake, k)})
        print(json.dumps(info), flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await fake.stop()

    asyncio.run(main())


# --- GitHub -----------------------------------------------------------------------


@dataclass
class GitHubUser:
    login: str
    id: int
    name: str = ""
    avatar_url: str = ""
    emails: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GitHubState:
    """Everything the fake knows; tests mutate it directly, other processes through /_control."""

    client_id: str = "gh-client"
    client_secret: str = "gh-secret"
    users: dict[str, GitHubUser] = field(default_factory=dict)  # key: login.lower()
    orgs: dict[str, list[str]] = field(default_factory=dict)  # org login -> member logins (lower)
    teams: dict[str, list[str]] = field(default_factory=dict)  # "Org/slug" -> member logins (lower)
    current_user: str = ""
    switches: Switches = field(default_factory=Switches)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # token -> (login, scopes)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GitHubState:
        state = cls(
            client_id=config.get("client_id", "gh-client"),
            client_secret=config.get("client_secret", "gh-secret"),
            current_user=config.get("current_user", "").lower(),
        )
        for u in config.get("users", []):
            state.add_user(GitHubUser(u["login"], int(u["id"]), u.get("name", ""), u.get("avatar_url", ""),
                                      list(u.get("emails", []))))
        for org, members in config.get("orgs", {}).items():
            state.orgs[org] = [m.lower() for m in members]
        for team, members in config.get("teams", {}).items():
            state.teams[team] = [m.lower() for m in members]
        if not state.current_user and state.users:
            state.current_user = next(iter(state.users))
        return state

    def add_user(self, user: GitHubUser) -> GitHubUser:
        self.users[user.login.lower()] = user
        return user

    def add_member(self, group: str, login: str) -> None:
        """`group` is an org login or `Org/team-slug` (the org is created if missing)."""
        target = self.teams if "/" in group else self.orgs
        members = target.setdefault(group, [])
        if login.lower() not in members:
            members.append(login.lower())

    def remove_member(self, org: str, login: str) -> None:
        """Removing someone from an org also removes them from its teams, as on GitHub."""
        who = login.lower()
        for name, members in self.orgs.items():
            if name.lower() == org.lower() and who in members:
                members.remove(who)
        for name, members in self.teams.items():
            if name.split("/", 1)[0].lower() == org.lower() and who in members:
                members.remove(who)

    def revoke(self, login: str | None = None) -> int:
        doomed = [t for t, (who, _) in self.tokens.items() if login is None or who == login.lower()]
        for t in doomed:
            del self.tokens[t]
        return len(doomed)


class FakeGitHub(FakeServer):
    """github.com (api_prefix "") or a GitHub Enterprise Server (api_prefix "/api/v3") on one port."""

    def __init__(self, state: GitHubState | None = None, *, api_prefix: str = "") -> None:
        super().__init__()
        self.state = state or GitHubState()
        self.api_prefix = api_prefix.rstrip("/")

    @property
    def switches(self) -> Switches:
        return self.state.switches

    def is_api(self, path: str) -> bool:
        return path.startswith(self.api_prefix + "/user")

    def routes(self, app: web.Application) -> None:
        p = self.api_prefix
        app.router.add_get("/login/oauth/authorize", self.authorize)
        app.router.add_post("/login/oauth/access_token", self.access_token)
        app.router.add_get(p + "/user", self.user)
        app.router.add_get(p + "/user/emails", self.emails)
        app.router.add_get(p + "/user/orgs", self.orgs)
        app.router.add_get(p + "/user/teams", self.teams)

    async def control(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        if action == "current_user":
            s.current_user = str(payload["login"]).lower()
        elif action == "remove_member":
            s.remove_member(payload["org"], payload["login"])
        elif action == "add_member":
            s.add_member(payload["org"], payload["login"])
        elif action == "revoke":
            return {"revoked": s.revoke(payload.get("login"))}
        elif action == "switches":
            s.switches.update(payload)
        else:
            raise web.HTTPNotFound(text=f"unknown control action {action}")
        return {"current_user": s.current_user, "orgs": s.orgs, "teams": s.teams}

    # OAuth web flow

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        s = self.state
        if q.get("client_id") != s.client_id:
            raise web.HTTPNotFound(text="unknown OAuth application")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri:
            raise web.HTTPBadRequest(text="redirect_uri missing (the fake has no registered callback)")
        if q.get("code_challenge_method", "S256") != "S256" or not q.get("code_challenge"):
            raise web.HTTPBadRequest(text="this fake requires PKCE S256")
        state = q.get("state", "")
        if s.switches.deny:
            params = {"error": "access_denied", "error_description": "The user has denied your application access.",
                      "state": state}
            raise web.HTTPFound(str(URL(redirect_uri).update_query(params)))
        user = s.users.get(s.current_user)
        if user is None:
            raise web.HTTPForbidden(text="no current user to approve as")
        code = generate_token(20)
        s.codes[code] = Grant(user.login.lower(), s.client_id, redirect_uri, split_scopes(q.get("scope", "")),
                              q["code_challenge"], time.monotonic() + CODE_LIFETIME)
        raise web.HTTPFound(str(URL(redirect_uri).update_query({"code": code, "state": state})))

    async def access_token(self, request: web.Request) -> web.Response:
        s = self.state
        if s.switches.token_status is not None:
            return web.Response(status=int(s.switches.token_status), text="unavailable")
        form = await request.post()
        client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        basic = basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if client_id != s.client_id or client_secret != s.client_secret:
            return self._token_reply(request, error="incorrect_client_credentials",
                                     description="The client_id and/or client_secret passed are incorrect.")
        grant = s.codes.pop(str(form.get("code", "")), None)  # single use, whatever happens next
        if grant is None or grant.expires < time.monotonic() or grant.client_id != client_id:
            return self._token_reply(request, error="bad_verification_code",
                                     description="The code passed is incorrect or expired.")
        if "redirect_uri" in form and form["redirect_uri"] != grant.redirect_uri:
            return self._token_reply(request, error="redirect_uri_mismatch",
                                     description="The redirect_uri MUST match the registered callback URL.")
        if not compare_s256_code_challenge(str(form.get("code_verifier", "")), grant.challenge):
            return self._token_reply(request, error="bad_verification_code",
                                     description="The code_verifier does not match the code_challenge.")
        token = "gho_" + generate_token(36)
        s.tokens[token] = (grant.login, grant.scopes)
        return self._token_reply(request, token=token, scope=",".join(sorted(grant.scopes)))

    @staticmethod
    def _token_reply(request: web.Request, *, token: str = "", scope: str = "", error: str = "",
                     description: str = "") -> web.Response:
        if error:
            body = {"error": error, "error_description": description,
                    "error_uri": "https://docs.github.com/apps/troubleshooting-oauth-app-access-token-request-errors"}
        else:
            body = {"access_token": token, "token_type": "bearer", "scope": scope}
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(body)
        return web.Response(text=urlencode(body), content_type="application/x-www-form-urlencoded")

    # REST API

    def _auth(self, request: web.Request) -> tuple[GitHubUser, frozenset[str]]:
        entry = self.state.tokens.get(bearer(request))
        user = self.state.users.get(entry[0]) if entry else None
        if entry is None or user is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
                                 "status": "401"}),
                content_type="application/json",
            )
        return user, entry[1]

    def _paged(self, request: web.Request, items: list[Any]) -> web.Response:
        page, per_page, last = page_bounds(request, "per_page", 30, len(items))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        nxt = self.switches.next_link
        if nxt is None and page < last:
            nxt = str(request.url.update_query(per_page=per_page, page=page + 1))
        if nxt is not None:
            links.append(f'<{nxt}>; rel="next"')
        if last > 1:
            links.append(f'<{request.url.update_query(per_page=per_page, page=last)}>; rel="last"')
        if page > 1:
            links.append(f'<{request.url.update_query(per_page=per_page, page=page - 1)}>; rel="prev"')
            links.append(f'<{request.url.update_query(per_page=per_page, page=1)}>; rel="first"')
        headers = {"Link": ", ".join(links)} if links else {}
        return web.json_response(chunk, headers=headers)

    def _org(self, login: str) -> dict[str, Any]:
        oid = 5000 + list(self.state.orgs).index(login) if login in self.state.orgs else 4999
        return {"login": login, "id": oid, "url": f"{self.api_url}/orgs/{login}", "description": ""}

    async def user(self, request: web.Request) -> web.Response:
        user, _ = self._auth(request)
        primary = next((e["email"] for e in user.emails if e.get("primary") and e.get("verified")), None)
        return web.json_response({
            "login": user.login, "id": user.id, "node_id": f"U_{user.id}", "avatar_url": user.avatar_url,
            "type": "User", "site_admin": False, "name": user.name or None, "email": primary,
        })

    async def emails(self, request: web.Request) -> web.Response:
        user, scopes = self._auth(request)
        if not scopes & {"user", "user:email"}:
            return web.json_response({"message": "Not Found", "documentation_url": "https://docs.github.com/rest",
                                      "status": "404"}, status=404)
        items = [{"email": e["email"], "primary": bool(e.get("primary")), "verified": bool(e.get("verified")),
                  "visibility": e.get("visibility")} for e in user.emails]
        return self._paged(request, items)

    async def orgs(self, request: web.Request) -> web.Response:
        user, _ = self._auth(request)
        who = user.login.lower()
        return self._paged(request, [self._org(o) for o, members in self.state.orgs.items() if who in members])

    async def teams(self, request: web.Request) -> web.Response:
        user, _ = self._auth(request)
        who = user.login.lower()
        items = []
        for i, (name, members) in enumerate(self.state.teams.items()):
            if who in members:
                org, slug = name.split("/", 1)
                items.append({"id": 9000 + i, "slug": slug, "name": slug, "privacy": "closed",
                              "organization": self._org(org)})
        return self._paged(request, items)


def _main() -> None:
    def make(config: dict[str, Any], args: argparse.Namespace) -> FakeServer:
        return FakeGitHub(GitHubState.from_config(config), api_prefix=args.api_prefix or config.get("api_prefix", ""))

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api-prefix", default="", help='"/api/v3" to look like GitHub Enterprise Server')

    run_cli("A local GitHub for wsgate tests.", make, extra)


if __name__ == "__main__":
    _main()
