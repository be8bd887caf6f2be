"""A local Bitbucket Cloud: the OAuth 2 consumer flow and the REST 2.0 endpoints a sign-in uses.

In-process::

    fake = FakeBitbucket(BitbucketState.from_config(config))
    await fake.start()
    fake.web_url, fake.api_url           # http://127.0.0.1:<port>, .../2.0
    fake.state.remove_member("acme", "alice")
    await fake.stop()

As a process::

    python tests/auth/bitbucket_api.py --port 0 --users users.json

prints `{"event": "listening", "port": N, "base_url": ..., "web_url": ..., "api_url": ...}`
and serves until SIGTERM/SIGINT. The users file::

    {"client_id": "bb-client", "client_secret": "bb-secret", "current_user": "alice",
     "users": [{"nickname": "alice", "uuid": "{0d5e...}", "account_id": "557058:...",
                "display_name": "Alice A", "avatar": "https://...",
                "emails": [{"email": "alice@example.com", "is_primary": true, "is_confirmed": true}]}],
     "workspaces": {"acme": ["alice", "bob"]}}

Control endpoints: as in `github_api` (`current_user`, `remove_member {"workspace" or "org",
"login"}`, `add_member`, `revoke`, `switches`, `GET /_control/requests`).

Shapes follow Bitbucket's documentation: client credentials only through HTTP
Basic on the token endpoint, RFC 6749 JSON errors (`invalid_grant`,
`invalid_client`), paginated collections `{"values": [...], "next": <absolute URL>,
"page", "pagelen", "size"}` (`pagelen` up to 100), `/2.0/user/workspaces` values of
type `workspace_access` with a nested `workspace`, `{"type": "error", ...}` bodies
with 401/403, and scopes: `account` for the profile and workspaces, `email` for
`/user/emails`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from yarl import URL

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from github_api import (
    CODE_LIFETIME,
    FakeServer,
    Grant,
    Switches,
    basic_credentials,
    bearer,
    page_bounds,
    run_cli,
    split_scopes,
)


@dataclass
class BitbucketUser:
    nickname: str
    uuid: str
    account_id: str
    display_name: str = ""
    avatar: str = ""
    emails: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BitbucketState:
    client_id: str = "bb-client"
    client_secret: str = "bb-secret"
    users: dict[str, BitbucketUser] = field(default_factory=dict)  # key: nickname.lower()
    workspaces: dict[str, list[str]] = field(default_factory=dict)  # slug -> member nicknames (lower)
    admins: set[tuple[str, str]] = field(default_factory=set)  # (slug, nickname)
    current_user: str = ""
    switches: Switches = field(default_factory=Switches)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BitbucketState:
        state = cls(
            client_id=config.get("client_id", "bb-client"),
            client_secret=config.get("client_secret", "bb-secret"),
            current_user=config.get("current_user", "").lower(),
        )
        for u in config.get("users", []):
            state.add_user(BitbucketUser(
                u["nickname"], u.get("uuid") or "{" + str(uuidlib.uuid4()) + "}",
                u.get("account_id") or "557058:" + str(uuidlib.uuid4()), u.get("display_name", ""),
                u.get("avatar", ""), list(u.get("emails", [])),
            ))
        for slug, members in config.get("workspaces", {}).items():
            state.workspaces[slug] = [m.lower() for m in members]
        if not state.current_user and state.users:
            state.current_user = next(iter(state.users))
        return state

    def add_user(self, user: BitbucketUser) -> BitbucketUser:
        self.users[user.nickname.lower()] = user
        return user

    def add_member(self, workspace: str, login: str) -> None:
        members = self.workspaces.setdefault(workspace, [])
        if login.lower() not in members:
            members.append(login.lower())

    def remove_member(self, workspace: str, login: str) -> None:
        for slug, members in self.workspaces.items():
            if slug.lower() == workspace.lower() and login.lower() in members:
                members.remove(login.lower())

    def revoke(self, login: str | None = None) -> int:
        doomed = [t for t, (who, _) in self.tokens.items() if login is None or who == login.lower()]
        for t in doomed:
            del self.tokens[t]
        return len(doomed)


def _error(status: int, message: str, **detail: Any) -> web.HTTPException:
    body: dict[str, Any] = {"type": "error", "error": {"message": message}}
    if detail:
        body["error"]["detail"] = detail
    cls = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}.get(status, web.HTTPBadRequest)
    return cls(text=json.dumps(body), content_type="application/json")


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="Bitbucket.org HTTP"'} if status == 401 else {}
    return web.json_response({"error": error, "error_description": description}, status=status, headers=headers)


class FakeBitbucket(FakeServer):
    """bitbucket.org (web) and api.bitbucket.org/2.0 (API) on one port."""

    api_prefix = "/2.0"

    def __init__(self, state: BitbucketState | None = None) -> None:
        super().__init__()
        self.state = state or BitbucketState()

    @property
    def switches(self) -> Switches:
        return self.state.switches

    def is_api(self, path: str) -> bool:
        return path.startswith(self.api_prefix + "/")

    def routes(self, app: web.Application) -> None:
        p = self.api_prefix
        app.router.add_get("/site/oauth2/authorize", self.authorize)
        app.router.add_post("/site/oauth2/access_token", self.access_token)
        app.router.add_get(p + "/user", self.user)
        app.router.add_get(p + "/user/emails", self.emails)
        app.router.add_get(p + "/user/workspaces", self.user_workspaces)

    async def control(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        group = payload.get("workspace", payload.get("org", ""))
        if action == "current_user":
            s.current_user = str(payload["login"]).lower()
        elif action == "remove_member":
            s.remove_member(group, payload["login"])
        elif action == "add_member":
            s.add_member(group, payload["login"])
        elif action == "revoke":
            return {"revoked": s.revoke(payload.get("login"))}
        elif action == "switches":
            s.switches.update(payload)
        else:
            raise web.HTTPNotFound(text=f"unknown control action {action}")
        return {"current_user": s.current_user, "workspaces": s.workspaces}

    # OAuth 2

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        s = self.state
        if q.get("client_id") != s.client_id:
            raise web.HTTPBadRequest(text="Invalid client_id")
        if q.get("response_type") != "code":
            raise web.HTTPBadRequest(text="unsupported response_type")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri:
            raise web.HTTPBadRequest(text="redirect_uri missing (the fake has no registered callback)")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            raise web.HTTPBadRequest(text="this fake requires PKCE S256")
        state = q.get("state", "")
        if s.switches.deny:
            raise web.HTTPFound(str(URL(redirect_uri).update_query(
                {"error": "access_denied", "error_description": "The user denied access.", "state": state})))
        user = s.users.get(s.current_user)
        if user is None:
            raise web.HTTPForbidden(text="no current user to approve as")
        code = generate_token(24)
        s.codes[code] = Grant(user.nickname.lower(), s.client_id, redirect_uri, split_scopes(q.get("scope", "")),
                              q["code_challenge"], time.monotonic() + CODE_LIFETIME)
        raise web.HTTPFound(str(URL(redirect_uri).update_query({"code": code, "state": state})))

    async def access_token(self, request: web.Request) -> web.Response:
        s = self.state
        if s.switches.token_status is not None:
            return web.Response(status=int(s.switches.token_status), text="<html>unavailable</html>",
                                content_type="text/html")
        form = await request.post()
        creds = basic_credentials(request)
        if creds != (s.client_id, s.client_secret):
            return _oauth_error(401, "invalid_client", "Invalid OAuth client credentials")
        if form.get("grant_type") != "authorization_code":
            return _oauth_error(400, "unsupported_grant_type", "Unsupported grant type")
        grant = s.codes.pop(str(form.get("code", "")), None)  # single use, whatever happens next
        if grant is None or grant.expires < time.monotonic() or grant.client_id != s.client_id:
            return _oauth_error(400, "invalid_grant", "The specified code is not valid.")
        if form.get("redirect_uri", grant.redirect_uri) != grant.redirect_uri:
            return _oauth_error(400, "invalid_grant", "The redirect_uri does not match.")
        if not compare_s256_code_challenge(str(form.get("code_verifier", "")), grant.challenge):
            return _oauth_error(400, "invalid_grant", "The code_verifier is not valid.")
        token = generate_token(48)
        s.tokens[token] = (grant.login, grant.scopes)
        return web.json_response({
            "access_token": token, "scopes": " ".join(sorted(grant.scopes)), "expires_in": 7200,
            "refresh_token": generate_token(24), "token_type": "bearer", "state": "authorization_code",
        })

    # REST 2.0

    def _auth(self, request: web.Request, scope: str) -> BitbucketUser:
        entry = self.state.tokens.get(bearer(request))
        user = self.state.users.get(entry[0]) if entry else None
        if entry is None or user is None:
            raise _error(401, "Token is invalid, expired, or not supported for this endpoint.")
        if scope not in entry[1]:
            raise _error(403, "Your credentials lack one or more required privilege scopes.",
                         granted=sorted(entry[1]), required=[scope])
        return user

    def _paged(self, request: web.Request, items: list[Any]) -> web.Response:
        page, pagelen, last = page_bounds(request, "pagelen", 10, len(items))
        body: dict[str, Any] = {"size": len(items), "page": page, "pagelen": pagelen,
                                "values": items[(page - 1) * pagelen : page * pagelen]}
        nxt = self.switches.next_link
        if nxt is None and page < last:
            nxt = str(request.url.update_query(pagelen=pagelen, page=page + 1))
        if nxt is not None:
            body["next"] = nxt
        if page > 1:
            body["previous"] = str(request.url.update_query(pagelen=pagelen, page=page - 1))
        return web.json_response(body)

    def _user_json(self, user: BitbucketUser) -> dict[str, Any]:
        return {
            "type": "user", "uuid": user.uuid, "account_id": user.account_id, "nickname": user.nickname,
            "display_name": user.display_name, "account_status": "active", "has_2fa_enabled": None,
            "links": {"avatar": {"href": user.avatar}, "html": {"href": f"{self.web_url}/{user.uuid}/"},
                      "self": {"href": f"{self.api_url}/users/{user.uuid}"}},
        }

    async def user(self, request: web.Request) -> web.Response:
        return web.json_response(self._user_json(self._auth(request, "account")))

    async def emails(self, request: web.Request) -> web.Response:
        user = self._auth(request, "email")
        items = [{"type": "email", "email": e["email"], "is_primary": bool(e.get("is_primary")),
                  "is_confirmed": bool(e.get("is_confirmed"))} for e in user.emails]
        return self._paged(request, items)

    async def user_workspaces(self, request: web.Request) -> web.Response:
        user = self._auth(request, "account")
        who = user.nickname.lower()
        items = []
        for i, (slug, members) in enumerate(self.state.workspaces.items()):
            if who in members:
                ws_uuid = "{" + str(uuidlib.UUID(int=i + 1)) + "}"
                items.append({
                    "type": "workspace_access",
                    "administrator": (slug, who) in self.state.admins,
                    "workspace": {"type": "workspace_base", "uuid": ws_uuid, "slug": slug,
                                  "links": {"self": {"href": f"{self.api_url}/workspaces/{slug}"}}},
                    "links": {"self": {"href": f"{self.api_url}/user/workspaces/{slug}"}},
                })
        return self._paged(request, items)


def _main() -> None:
    run_cli("A local Bitbucket Cloud for wsgate tests.", lambda config, _args: FakeBitbucket(
        BitbucketState.from_config(config)))


if __name__ == "__main__":
    _main()
