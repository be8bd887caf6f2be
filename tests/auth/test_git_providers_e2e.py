"""GitHub and Bitbucket sign-in end to end: a real gateway and the fake providers, each its own process.

The fakes (`github_api.py`, `bitbucket_api.py`) run as subprocesses and speak the
providers' OAuth and REST APIs over loopback; the gateway is configured with their
URLs like it would be with github.com or bitbucket.org. A browser (no JavaScript)
follows every redirect: gateway -> fake authorize (approves at once) -> gateway
callback -> the page first asked for. State changes at the provider (members
removed, logins reused, failures) go through the fakes' control endpoints, and
every check is on what the browser or the upstream saw.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from signin_client import Browser, Visit
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway
from yarl import URL

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "__Host-wsgate-session"
TTL = 1.0  # [auth] membership_ttl in the membership tests
PAST_TTL = TTL + 0.4

APP_HOST = f"app.{DOMAIN}"  # admin route for org members
BACKEND_HOST = f"backend.{DOMAIN}"  # admin route for one team
NOWHERE_HOST = f"nothing.{DOMAIN}"  # under the domain, routed nowhere
WS_HOST = f"8080-abc.ws.{DOMAIN}"  # a workspace port with an owner
MISSING_WS_HOST = f"8080-nope.ws.{DOMAIN}"  # a workspace that does not exist

BB_UUID = "{6d0c4e4a-8f5c-4d2e-9b1a-0123456789ab}"
BB_BOB_UUID = "{c1a5e0b2-77d1-4f0e-8d3c-ba9876543210}"


# --- the fakes as processes ------------------------------------------------------------


@dataclass
class FakeProcess:
    """One fake provider subprocess: `python tests/auth/<kind>_api.py --port N --users file`."""

    kind: str  # "github" | "bitbucket"
    dir: Path
    users: dict[str, Any]
    port: int = 0
    base_url: str = ""
    web_url: str = ""
    api_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _stderr: list[Any] = field(default_factory=list)

    @property
    def script(self) -> Path:
        return HERE / f"{self.kind}_api.py"

    def start(self, port: int = 0) -> FakeProcess:
        users_file = self.dir / f"{self.kind}-users-{self.starts}.json"
        users_file.write_text(json.dumps(self.users))
        err_path = self.dir / f"{self.kind}-{self.starts}.stderr"
        err = open(err_path, "wb")  # noqa: SIM115 - closed in stop()
        self._stderr.append(err)
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), "--port", str(port), "--users", str(users_file)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"{self.kind} fake did not start:\n{err_path.read_text(errors='replace')}")
        info = json.loads(line)
        assert info["event"] == "listening", info
        self.port, self.base_url = int(info["port"]), str(info["base_url"])
        self.web_url, self.api_url = str(info["web_url"]), str(info["api_url"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        for f in self._stderr:
            f.close()
        self._stderr.clear()

    def restart_as(self, users: dict[str, Any]) -> None:
        """The provider's data changes under the same URL (same port): what the gateway talks to stays put."""
        port = self.port
        self.stop()
        self.users = users
        self.start(port)

    async def control(self, action: str, **payload: Any) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.base_url}/_control/{action}", json=payload
        ) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def requests(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.base_url}/_control/requests") as resp:
            assert resp.status == 200
            data: list[dict[str, Any]] = await resp.json()
            return data

    def provider_toml(self, name: str, extra: str = "") -> str:
        return f"""
[[auth.providers]]
name = "{name}"
type = "{self.kind}"
client_id = "{self.users['client_id']}"
client_secret = "{self.users['client_secret']}"
web_url = "{self.web_url}"
api_url = "{self.api_url}"
{extra}
"""


MakeFake = Callable[[str, dict[str, Any]], FakeProcess]


@pytest.fixture
def fake_factory(tmp_path: Path) -> Iterator[MakeFake]:
    started: list[FakeProcess] = []

    def make(kind: str, users: dict[str, Any]) -> FakeProcess:
        fake = FakeProcess(kind, tmp_path, users)
        started.append(fake)
        return fake.start()

    yield make
    for fake in started:
        fake.stop()


def github_user(login: str, uid: int, email: str = "", *, verified: bool = True) -> dict[str, Any]:
    emails = [{"email": email, "primary": True, "verified": verified}] if email else []
    return {"login": login, "id": uid, "name": f"{login} Example", "emails": emails}


def github_users(*users: dict[str, Any], current: str, orgs: dict[str, list[str]] | None = None,
                 teams: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"client_id": "gh-client", "client_secret": "gh-secret", "current_user": current,
            "users": list(users), "orgs": orgs or {}, "teams": teams or {}}


def bitbucket_users(current: str, workspaces: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "client_id": "bb-client", "client_secret": "bb-secret", "current_user": current,
        "users": [
            {"nickname": "alice", "uuid": BB_UUID, "account_id": "557058:aaaa", "display_name": "Alice Bitbucket",
             "emails": [{"email": "alice@bb.example", "is_primary": True, "is_confirmed": True}]},
            {"nickname": "bob", "uuid": BB_BOB_UUID, "account_id": "557058:bbbb", "display_name": "Bob",
             "emails": [{"email": "bob@bb.example", "is_primary": True, "is_confirmed": False}]},
        ],
        "workspaces": workspaces,
    }


# --- gateway and browser helpers -----------------------------------------------------------


def workspace_toml(upstream: int, owner: str) -> str:
    return f"""
[[workspaces]]
id = "abc"
port = 8080
upstream = "127.0.0.1:{upstream}"
owner = "{owner}"
"""


def route_toml(host: str, upstream: int, access: str) -> str:
    return f"""
[[routes]]
host = "{host}"
upstream = "http://127.0.0.1:{upstream}"
access = "{access}"
"""


def main_url(gw: Gateway, path: str = "/") -> str:
    return gw.url(DOMAIN, path)


async def sign_in(b: Browser, gw: Gateway, start_url: str, provider: str) -> Visit:
    """Opens `start_url`; on the gateway's provider list, picks `provider`; follows to the end."""
    first = await b.go(start_url)
    if urlsplit(first.url).path != "/auth/login":
        return first
    link = re.search(rf'href="(/auth/login/{re.escape(provider)}\?[^"]*)"', first.text)
    assert link, (first.urls(), first.text[:800])
    rest = await b.go(urljoin(first.url, html.unescape(link.group(1))))
    rest.hops = first.hops + rest.hops
    return rest


def went_through(visit: Visit, fake: FakeProcess, path: str) -> bool:
    return any(u.startswith(fake.web_url + path) for u in visit.urls())


def echoed(visit: Visit) -> dict[str, Any]:
    data = json.loads(visit.text)
    assert isinstance(data, dict)
    return data


def upstream_header(visit: Visit, name: str) -> list[str]:
    return [v for k, v in echoed(visit)["headers"] if k.lower() == name.lower()]


async def me(b: Browser, gw: Gateway) -> dict[str, Any]:
    visit = await b.go(main_url(gw, "/api/v1/me"))
    assert visit.status == 200, visit.text
    data: dict[str, Any] = json.loads(visit.text)
    return data


def normalised(visit: Visit) -> tuple[int, str, str]:
    """Status, content type and body with the request id taken out: what tells two refusals apart."""
    rid = visit.last.headers.get("X-Request-Id", "")
    body = visit.text.replace(rid, "RID") if rid else visit.text
    return visit.status, visit.last.headers.get("Content-Type", ""), body


def session_cookies_set(visit: Visit) -> list[str]:
    return [c for h in visit.hops for c in h.headers.getall("Set-Cookie", []) if c.startswith(SESSION_COOKIE + "=")]


def assert_clear_failure(visit: Visit, status: int, message: str) -> None:
    """A gateway page (not the provider's, not a traceback) that says what happened and links back."""
    assert visit.status == status, (visit.urls(), visit.text[:800])
    assert urlsplit(visit.url).hostname == DOMAIN and urlsplit(visit.url).path.startswith("/auth/callback/")
    assert visit.last.headers["Content-Type"].startswith("text/html")
    assert "Sign-in failed" in visit.text and message in visit.text, visit.text
    assert re.search(r'<a href="/auth/login[^"]*">Try signing in again</a>', visit.text), visit.text
    assert "Traceback" not in visit.text and "Error:" not in visit.text
    assert session_cookies_set(visit) == []


# --- 1. GitHub: sign-in, identity by numeric id, profile ----------------------------------


async def test_github_sign_in_lands_on_own_workspace_and_me_shows_profile_and_all_groups(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    many = {f"Org-{i:03d}": ["alice"] for i in range(120)}  # > 100: two pages of /user/orgs
    gh = fake_factory("github", github_users(
        {"login": "Alice", "id": 1001, "name": "Alice A", "avatar_url": "https://avatars.example/1001",
         "emails": [{"email": "alice@unverified.example", "primary": False, "verified": False},
                    {"email": "alice@example.com", "primary": True, "verified": True}]},
        current="alice",
        orgs={"Acme": ["alice"], **many, "Other": ["bob"]},
        teams={"Acme/backend": ["alice"], "Acme/Ops": ["alice"], "Other/x": ["bob"]},
    ))
    gw = gateway_factory(gh.provider_toml("github") + workspace_toml(echo_upstream.port, "github:1001"))
    async with Browser(str(gw.ca)) as b:
        visit = await sign_in(b, gw, gw.url(WS_HOST, "/hello?x=1"), "github")
        assert visit.status == 200 and visit.url == gw.url(WS_HOST, "/hello?x=1"), visit.urls()
        assert echoed(visit)["path"] == "/hello?x=1"
        assert went_through(visit, gh, "/login/oauth/authorize")
        assert any(u.startswith(main_url(gw, "/auth/callback/github?")) for u in visit.urls())
        profile = await me(b, gw)
        assert profile["identity"] == "github:1001" and profile["id"] == "1001"
        assert profile["provider"] == "github" and profile["login"] == "Alice" and profile["name"] == "Alice A"
        assert profile["email"] == "alice@example.com"  # the verified primary, never the unverified one
        expected = {"acme", "acme/backend", "acme/ops"} | {f"org-{i:03d}" for i in range(120)}
        assert set(profile["groups"]) == expected
    seen = await gh.requests()
    org_pages = {r["query"].get("page", "1") for r in seen if r["path"] == "/user/orgs"}
    assert org_pages == {"1", "2"}
    assert "Traceback" not in gw.logs()


async def test_a_reused_login_is_another_person_and_a_renamed_one_is_still_the_owner(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(github_user("alice", 1001, "alice@example.com"), current="alice"))
    gw = gateway_factory(gh.provider_toml("github") + workspace_toml(echo_upstream.port, "github:1001"))
    async with Browser(str(gw.ca)) as owner:
        first = await sign_in(owner, gw, gw.url(WS_HOST, "/"), "github")
        assert first.status == 200, first.urls()
        # At GitHub: the owner renames to alice-old, someone else registers "alice" (another numeric id).
        gh.restart_as(github_users(
            github_user("alice-old", 1001, "alice@example.com"),
            github_user("alice", 2002, "mallory@example.com"),
            current="alice",
        ))
        async with Browser(str(gw.ca)) as newcomer:
            theirs = await sign_in(newcomer, gw, gw.url(WS_HOST, "/secret"), "github")
            assert went_through(theirs, gh, "/login/oauth/authorize")
            profile = await me(newcomer, gw)
            assert (profile["identity"], profile["login"]) == ("github:2002", "alice")
            nothing = await newcomer.go(gw.url(MISSING_WS_HOST, "/secret"))
            assert theirs.status == nothing.status == 404
            assert normalised(theirs)[1:] == normalised(nothing)[1:]
            assert newcomer.cookie("__Host-wsgate-host") is None
        # The renamed owner signs in under the new login and is still the owner.
        await gh.control("current_user", login="alice-old")
        async with Browser(str(gw.ca)) as renamed:
            back = await sign_in(renamed, gw, gw.url(WS_HOST, "/again"), "github")
            assert back.status == 200 and echoed(back)["path"] == "/again"
            assert (await me(renamed, gw))["login"] == "alice-old"
        # The first session was never confused with the newcomer.
        assert (await owner.go(gw.url(WS_HOST, "/still"))).status == 200
        assert (await me(owner, gw))["identity"] == "github:1001"
    assert "Traceback" not in gw.logs()


# --- 2. membership changes at GitHub reach the routes within the TTL ------------------------


async def test_removed_org_or_team_member_loses_the_route_after_the_ttl_and_regains_it(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(
        github_user("alice", 1001, "alice@example.com"), github_user("bob", 1002, "bob@example.com"),
        current="alice", orgs={"Acme": ["alice", "bob"]}, teams={"Acme/backend": ["alice"]},
    ))
    gw = gateway_factory(
        f"[auth]\nmembership_ttl = {TTL}\n"
        + gh.provider_toml("github")
        + route_toml(APP_HOST, echo_upstream.port, "team:github:acme")
        + route_toml(BACKEND_HOST, echo_upstream.port, "team:github:acme/backend")
    )
    app, backend = gw.url(APP_HOST, "/a"), gw.url(BACKEND_HOST, "/b")
    async with Browser(str(gw.ca)) as alice, Browser(str(gw.ca)) as bob:
        visit = await sign_in(alice, gw, app, "github")
        assert visit.status == 200 and visit.url == app, visit.urls()
        assert upstream_header(visit, "X-Wsgate-User") == ["github:1001"]
        assert (await alice.go(backend)).status == 200
        # bob is in the org, not in the team.
        await gh.control("current_user", login="bob")
        assert (await sign_in(bob, gw, app, "github")).status == 200
        assert (await me(bob, gw))["groups"] == ["acme"]
        assert (await bob.go(backend)).status == 404

        unknown = await alice.go(gw.url(NOWHERE_HOST, "/a"))
        assert unknown.status == 404

        # Removed from the org at GitHub (which also drops the team): both routes close after the TTL.
        await gh.control("remove_member", org="Acme", login="alice")
        await asyncio.sleep(PAST_TTL)
        gone = await alice.go(app, follow=False)
        assert normalised(gone) == normalised(unknown)
        assert normalised(await alice.go(backend, follow=False)) == normalised(unknown)
        assert (await me(alice, gw))["groups"] == []

        # Back in the org: the org route opens again, the team route stays closed...
        await gh.control("add_member", org="Acme", login="alice")
        await asyncio.sleep(PAST_TTL)
        again = await alice.go(app, follow=False)
        assert again.status == 200 and echoed(again)["path"] == "/a"
        assert normalised(await alice.go(backend, follow=False)) == normalised(unknown)

        # ...until the team (read from /user/teams) has them again.
        await gh.control("add_member", org="Acme/backend", login="alice")
        await asyncio.sleep(PAST_TTL)
        team = await alice.go(backend, follow=False)
        assert team.status == 200 and echoed(team)["path"] == "/b"
        assert (await me(alice, gw))["groups"] == ["acme", "acme/backend"]
    teams_calls = [r for r in await gh.requests() if r["path"] == "/user/teams"]
    assert len(teams_calls) >= 5  # at sign-ins and at each refresh
    assert "Traceback" not in gw.logs()


# --- 3. allowed_groups at sign-in ---------------------------------------------------------------


async def test_non_member_of_allowed_groups_is_refused_at_sign_in_without_a_session(
    gateway_factory: Callable[..., Gateway], fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(
        github_user("mallory", 666, "mallory@example.com"), github_user("alice", 1001, "alice@example.com"),
        current="mallory", orgs={"Acme": ["alice"], "Elsewhere": ["mallory"]},
    ))
    gw = gateway_factory(gh.provider_toml("github", 'allowed_groups = ["acme"]'))
    async with Browser(str(gw.ca)) as b:
        visit = await sign_in(b, gw, main_url(gw, "/auth/login/github?next=/api/v1/me"), "github")
        assert went_through(visit, gh, "/login/oauth/authorize")
        assert visit.status == 403, (visit.urls(), visit.text[:500])
        assert "Sign-in failed" in visit.text and "not a member of a group allowed" in visit.text
        assert "Try signing in again" in visit.text
        assert session_cookies_set(visit) == []
        assert b.cookie(SESSION_COOKIE) is None
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 401
    # A member of the allowed org gets in through the same gateway.
    await gh.control("current_user", login="alice")
    async with Browser(str(gw.ca)) as b:
        visit = await sign_in(b, gw, main_url(gw, "/auth/login/github?next=/api/v1/me"), "github")
        assert visit.status == 200 and json.loads(visit.text)["identity"] == "github:1001"
        assert b.cookie(SESSION_COOKIE)
    logs = gw.logs()
    assert "not in an allowed group" in logs and "github:666" in logs
    assert "Traceback" not in logs


async def test_leaving_the_allowed_groups_ends_the_session_and_its_tokens_within_the_ttl(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(
        github_user("alice", 1001, "alice@example.com"), current="alice", orgs={"Acme": ["alice"]},
    ))
    gw = gateway_factory(
        f"[auth]\nmembership_ttl = {TTL}\n"
        + gh.provider_toml("github", 'allowed_groups = ["acme"]')
        + workspace_toml(echo_upstream.port, "github:1001")
    )
    ws = gw.url(WS_HOST, "/x")
    async with Browser(str(gw.ca)) as b:
        assert (await sign_in(b, gw, ws, "github")).status == 200
        csrf = (await me(b, gw))["csrf_token"]
        made = await b.go(
            main_url(gw, "/api/v1/tokens"), "POST", data=json.dumps({"name": "ide", "scopes": ["workspace"]}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        token = json.loads(made.text)["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await b.go(ws, headers=bearer, follow=False)).status == 200
        await gh.control("remove_member", org="Acme", login="alice")
        await asyncio.sleep(PAST_TTL)
        # The workspace cookie and the main-domain session both refer to the ended session.
        assert (await b.go(ws, follow=False)).status == 302
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 401
    async with Browser(str(gw.ca)) as ide:
        assert (await ide.go(ws, headers=bearer, follow=False)).status == 401
    assert "no longer in an allowed group" in gw.logs()


# --- 4. provider errors: a clear page, a way back, no traceback -----------------------------


async def test_provider_errors_give_a_clear_page_with_a_way_back(
    gateway_factory: Callable[..., Gateway], fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(github_user("alice", 1001, "alice@example.com"), current="alice"))
    gw = gateway_factory(gh.provider_toml("github"))
    start = main_url(gw, "/auth/login/github?next=/api/v1/me")
    async with Browser(str(gw.ca)) as b:
        # The person clicks "Cancel" at GitHub: error=access_denied comes back.
        await gh.control("switches", deny=True)
        denied = await b.go(start)
        assert any("error=access_denied" in u for u in denied.urls())
        assert_clear_failure(denied, 403, "You declined to sign in with GitHub.")
        await gh.control("switches", deny=False)

        # GitHub's API fails while the profile loads.
        await gh.control("switches", api_status=500)
        down = await b.go(start)
        assert_clear_failure(down, 502, "GitHub did not answer as expected")
        await gh.control("switches", api_status=None)

        # The token endpoint answers 5xx.
        await gh.control("switches", token_status=503)
        no_token = await b.go(start)
        assert_clear_failure(no_token, 502, "GitHub did not answer as expected")
        await gh.control("switches", token_status=None)

        # The token endpoint refuses the code (here: not the one GitHub issued).
        to_github = await b.go(start, follow=False)
        back = await b.go(to_github.last.headers["Location"], follow=False)
        callback = URL(back.last.headers["Location"])
        assert callback.query.get("code")
        refused = await b.go(str(callback.update_query(code="0" * 20)))
        assert_clear_failure(refused, 400, "GitHub refused the sign-in code")

        assert b.cookie(SESSION_COOKIE) is None
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 401

        # The link back works once GitHub does.
        link = re.search(r'<a href="(/auth/login[^"]*)">Try signing in again</a>', refused.text)
        assert link
        retry = await sign_in(b, gw, main_url(gw, html.unescape(link.group(1))), "github")
        assert retry.status == 200 and json.loads(retry.text)["identity"] == "github:1001"
    logs = gw.logs()
    assert "sign-in failed" in logs
    assert "Traceback" not in logs


# --- 5. Bitbucket -----------------------------------------------------------------------------


async def test_bitbucket_sign_in_uses_the_uuid_and_workspaces_as_groups(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    bb = fake_factory("bitbucket", bitbucket_users("alice", {"Acme-Dev": ["alice"], "side-gig": ["alice", "bob"]}))
    gw = gateway_factory(
        bb.provider_toml("bitbucket")
        + route_toml(APP_HOST, echo_upstream.port, "team:bitbucket:acme-dev")
        + workspace_toml(echo_upstream.port, f"bitbucket:{BB_UUID}")
    )
    async with Browser(str(gw.ca)) as alice:
        visit = await sign_in(alice, gw, gw.url(APP_HOST, "/x"), "bitbucket")
        assert went_through(visit, bb, "/site/oauth2/authorize")
        assert visit.status == 200 and visit.url == gw.url(APP_HOST, "/x"), visit.urls()
        assert upstream_header(visit, "X-Wsgate-User") == [f"bitbucket:{BB_UUID}"]
        assert upstream_header(visit, "X-Wsgate-Email") == ["alice@bb.example"]
        profile = await me(alice, gw)
        assert profile["identity"] == f"bitbucket:{BB_UUID}" and profile["provider"] == "bitbucket"
        assert profile["login"] == "alice" and profile["name"] == "Alice Bitbucket"
        assert profile["groups"] == ["acme-dev", "side-gig"]
        assert (await alice.go(gw.url(WS_HOST, "/mine"))).status == 200
    await bb.control("current_user", login="bob")
    async with Browser(str(gw.ca)) as bob:
        refused = await sign_in(bob, gw, gw.url(APP_HOST, "/x"), "bitbucket")
        assert refused.status == 404
        profile = await me(bob, gw)
        assert profile["identity"] == f"bitbucket:{BB_BOB_UUID}" and profile["groups"] == ["side-gig"]
        assert profile["email"] == ""  # bob's primary address is not confirmed
        assert (await bob.go(gw.url(WS_HOST, "/mine"))).status == 404
    assert "Traceback" not in gw.logs()


# --- 6. two providers at once -----------------------------------------------------------------


async def test_two_providers_are_listed_and_give_distinct_identities(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(github_user("alice", 1001, "alice@example.com"), current="alice",
                                             orgs={"Acme": ["alice"]}))
    bb = fake_factory("bitbucket", bitbucket_users("alice", {"acme": ["alice"]}))
    gw = gateway_factory(
        gh.provider_toml("github") + bb.provider_toml("bitbucket")
        + route_toml(APP_HOST, echo_upstream.port, "team:github:acme")
        + workspace_toml(echo_upstream.port, "github:1001")
    )
    async with Browser(str(gw.ca)) as b:
        page = await b.go(main_url(gw, "/auth/login"))
        assert page.status == 200
        assert re.search(r'href="/auth/login/github\?[^"]*">Continue with GitHub<', page.text), page.text
        assert re.search(r'href="/auth/login/bitbucket\?[^"]*">Continue with Bitbucket<', page.text), page.text
    async with Browser(str(gw.ca)) as on_github, Browser(str(gw.ca)) as on_bitbucket:
        via_gh = await sign_in(on_github, gw, gw.url(WS_HOST, "/"), "github")
        assert via_gh.status == 200 and went_through(via_gh, gh, "/login/oauth/authorize")
        via_bb = await sign_in(on_bitbucket, gw, gw.url(WS_HOST, "/"), "bitbucket")
        assert went_through(via_bb, bb, "/site/oauth2/authorize")
        assert not went_through(via_bb, gh, "/")
        assert via_bb.status == 404  # same login, another provider: not the owner
        gh_me, bb_me = await me(on_github, gw), await me(on_bitbucket, gw)
        assert gh_me["login"] == bb_me["login"] == "alice"
        assert (gh_me["identity"], bb_me["identity"]) == ("github:1001", f"bitbucket:{BB_UUID}")
        # Groups are qualified by provider: Bitbucket's "acme" is not GitHub's.
        assert bb_me["groups"] == ["acme"]
        assert (await on_github.go(gw.url(APP_HOST, "/"))).status == 200
        assert (await on_bitbucket.go(gw.url(APP_HOST, "/"))).status == 404
    assert "Traceback" not in gw.logs()


# --- teams from provider groups: prebuild logs follow the org within the TTL ------------------------


async def test_a_member_removed_from_the_org_loses_a_live_prebuild_log_within_the_ttl(
    gateway_factory: Callable[..., Gateway], fake_factory: MakeFake
) -> None:
    gh = fake_factory("github", github_users(
        github_user("alice", 1001), github_user("bob", 1002), github_user("carol", 1003),
        current="alice", orgs={"Acme-Inc": ["alice", "bob"]},
    ))
    gw = gateway_factory(
        f"[auth]\nmembership_ttl = {TTL}\n"
        "[launcher]\nstop_on_exit = true\nstop_grace = 1\n"
        "[prebuilds]\nrecheck_interval = 0.1\n"
        '[[teams]]\nname = "acme"\ngroups = ["github:acme-inc"]\n'
        + gh.provider_toml("github")
    )
    async with Browser(str(gw.ca)) as alice, Browser(str(gw.ca)) as bob, Browser(str(gw.ca)) as carol:
        assert (await sign_in(alice, gw, main_url(gw, "/auth/login/github?next=/api/v1/me"), "github")).status == 200
        csrf = (await me(alice, gw))["csrf_token"]
        started = await alice.go(main_url(gw, "/api/v1/prebuilds"), "POST", data=json.dumps(
            {"team": "acme", "command": "while true; do echo tick; sleep 0.1; done"}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert started.status == 201, started.text
        pid = json.loads(started.text)["id"]
        await gh.control("current_user", login="bob")
        assert (await sign_in(bob, gw, main_url(gw, "/auth/login/github?next=/api/v1/me"), "github")).status == 200
        await gh.control("current_user", login="carol")
        assert (await sign_in(carol, gw, main_url(gw, "/auth/login/github?next=/api/v1/me"), "github")).status == 200
        logs = main_url(gw, f"/prebuilds/{pid}/logs")
        refused = normalised(await carol.go(logs))
        assert refused[0] == 404
        assert normalised(await carol.go(main_url(gw, "/prebuilds/wnosuchprebuild22/logs"))) == refused

        got = b""
        async with bob.session.get(logs) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                got += chunk
                if got.count(b"tick") >= 2:
                    break
            await gh.control("remove_member", org="Acme-Inc", login="bob")
            removed = asyncio.get_running_loop().time()
            async for chunk in resp.content.iter_any():
                got += chunk
            cut = asyncio.get_running_loop().time() - removed
        assert got.endswith(b"[wsgate] stream closed: you can no longer read this prebuild's log\n")
        print(f"cut {cut * 1000:.0f} ms after the org removal (membership_ttl {TTL * 1000:.0f} ms)")
        assert cut < TTL + 0.5
        assert normalised(await bob.go(logs)) == refused
        # Added back to the org: readable again at the next refresh.
        await gh.control("add_member", org="Acme-Inc", login="bob")
        await asyncio.sleep(PAST_TTL)
        back = await bob.go(logs + "?follow=0")
        assert back.status == 200 and "tick" in back.text
