"""GitHubProvider against a local GitHub that speaks the documented OAuth and REST shapes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from github_api import FakeGitHub, GitHubState, GitHubUser

from auth.principal import Principal
from auth.providers.base import ProviderError, Tokens
from auth.providers.github import GitHubProvider

REDIRECT = "https://wsgate.test/auth/callback/gh"


def alice_state() -> GitHubState:
    state = GitHubState()
    state.add_user(GitHubUser(
        "Alice", 1001, "Alice Liddell", "https://avatars.test/u/1001",
        [{"email": "old@example.com", "primary": False, "verified": True},
         {"email": "alice@example.com", "primary": True, "verified": True}],
    ))
    state.add_user(GitHubUser("bob", 1002, "Bob", "", [{"email": "bob@example.com", "primary": True,
                                                         "verified": False}]))
    state.orgs = {"Acme-Corp": ["alice", "bob"], "other": ["bob"], "Wonderland": ["alice"]}
    state.teams = {"Acme-Corp/backend": ["alice"], "Acme-Corp/frontend": ["bob"], "Wonderland/tea-party": ["alice"]}
    state.current_user = "alice"
    return state


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gh() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(alice_state())
    await fake.start()
    yield fake
    await fake.stop()


def make_provider(fake: FakeGitHub, http: aiohttp.ClientSession, **kw: Any) -> GitHubProvider:
    kw.setdefault("client_id", fake.state.client_id)
    kw.setdefault("client_secret", fake.state.client_secret)
    return GitHubProvider("gh", "GitHub", http, web_url=fake.web_url, api_url=fake.api_url, **kw)


@pytest.fixture
def provider(gh: FakeGitHub, http: aiohttp.ClientSession) -> GitHubProvider:
    return make_provider(gh, http)


async def authorize(provider: GitHubProvider, http: aiohttp.ClientSession) -> tuple[str, str]:
    """Drives the browser leg: returns (code, verifier) after the fake approved as its current user."""
    verifier = generate_token(48)
    state = generate_token(24)
    url = await provider.authorize_url(REDIRECT, state, create_s256_code_challenge(verifier), "")
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == [state]
    return params["code"][0], verifier


async def sign_in(provider: GitHubProvider, http: aiohttp.ClientSession) -> Tokens:
    code, verifier = await authorize(provider, http)
    return await provider.redeem(code, REDIRECT, verifier, "")


async def refused(call: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call
    return info.value


# --- the code flow -------------------------------------------------------------------


async def test_authorize_url_asks_for_pkce_and_default_scopes(provider: GitHubProvider, gh: FakeGitHub) -> None:
    url = urlsplit(await provider.authorize_url(REDIRECT, "st4te", "ch4llenge", "ignored-nonce"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == gh.web_url + "/login/oauth/authorize"
    q = parse_qs(url.query)
    assert q["client_id"] == [gh.state.client_id]
    assert q["redirect_uri"] == [REDIRECT]
    assert q["state"] == ["st4te"]
    assert q["code_challenge"] == ["ch4llenge"]
    assert q["code_challenge_method"] == ["S256"]
    assert q["scope"] == ["read:user user:email read:org"]


async def test_full_code_flow_yields_principal(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    assert tokens.access_token.startswith("gho_")
    assert tokens.token_type == "bearer"

    who = await provider.load_user(tokens)
    assert who == Principal(
        provider="gh",
        user_id="1001",
        login="Alice",
        name="Alice Liddell",
        email="alice@example.com",
        avatar="https://avatars.test/u/1001",
        groups=frozenset({"acme-corp", "wonderland", "acme-corp/backend", "wonderland/tea-party"}),
    )
    assert who.qualified_groups() >= {"gh:acme-corp", "gh:acme-corp/backend"}
    # The API saw the token and GitHub's versioned media type on every call.
    api = [r for r in gh.requests if r.path.startswith("/user")]
    assert {r.path for r in api} == {"/user", "/user/emails", "/user/orgs", "/user/teams"}
    for r in api:
        assert r.headers["Authorization"] == f"Bearer {tokens.access_token}"
        assert r.headers["Accept"] == "application/vnd.github+json"
        assert r.headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert r.headers["User-Agent"]


async def test_another_current_user_signs_in_as_themselves(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    async with http.post(gh.base_url + "/_control/current_user", json={"login": "bob"}) as resp:
        assert resp.status == 200
    who = await provider.load_user(await sign_in(provider, http))
    assert (who.user_id, who.login) == ("1002", "bob")
    assert who.groups == {"acme-corp", "other", "acme-corp/frontend"}


async def test_wrong_verifier_is_refused(provider: GitHubProvider, http: aiohttp.ClientSession) -> None:
    code, _ = await authorize(provider, http)
    err = await refused(provider.redeem(code, REDIRECT, generate_token(48), ""))
    assert err.kind == "bad_code"
    assert "sign in again" in err.message


async def test_code_replay_is_refused(provider: GitHubProvider, http: aiohttp.ClientSession) -> None:
    code, verifier = await authorize(provider, http)
    first = await provider.redeem(code, REDIRECT, verifier, "")
    assert first.access_token
    err = await refused(provider.redeem(code, REDIRECT, verifier, ""))
    assert err.kind == "bad_code"


async def test_other_redirect_uri_is_refused(provider: GitHubProvider, http: aiohttp.ClientSession) -> None:
    code, verifier = await authorize(provider, http)
    err = await refused(provider.redeem(code, "https://evil.test/cb", verifier, ""))
    assert err.kind == "unavailable"  # a configuration problem: signing in again will not help
    assert "administrator" in err.message


async def test_wrong_client_secret_is_a_configuration_error(
    gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    provider = make_provider(gh, http, client_secret="not-the-secret")
    code, verifier = await authorize(provider, http)
    err = await refused(provider.redeem(code, REDIRECT, verifier, ""))
    assert err.kind == "unavailable"
    assert "administrator" in err.message
    assert "not-the-secret" not in err.message


# --- profile details -----------------------------------------------------------------


async def test_unverified_primary_email_is_never_used(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    gh.state.users["alice"].emails = [
        {"email": "unverified@example.com", "primary": True, "verified": False},
        {"email": "verified-secondary@example.com", "primary": False, "verified": True},
    ]
    who = await provider.load_user(await sign_in(provider, http))
    assert who.email == ""
    assert who.login == "Alice"


async def test_without_email_scope_the_email_is_empty(gh: FakeGitHub, http: aiohttp.ClientSession) -> None:
    provider = make_provider(gh, http, scopes=("read:user", "read:org"))
    who = await provider.load_user(await sign_in(provider, http))
    assert gh.api_requests("/user/emails"), "the provider should have asked"
    assert who.email == ""
    assert who.user_id == "1001"
    assert "acme-corp" in who.groups


async def test_pagination_past_100_orgs_and_teams(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    gh.state.orgs = {f"Org-{i:03}": ["alice"] for i in range(230)}
    gh.state.teams = {f"Org-{i % 7:03}/Team-{i:03}": ["alice"] for i in range(130)}
    groups = await provider.load_groups(await sign_in(provider, http))
    assert len(groups) == 360
    assert {"org-000", "org-229", "org-003/team-129", "org-000/team-000"} <= groups
    org_pages = sorted(int(r.query.get("page", "1")) for r in gh.api_requests("/user/orgs"))
    assert org_pages == [1, 2, 3]
    assert all(r.query["per_page"] == "100" for r in gh.api_requests("/user/orgs"))
    assert sorted(int(r.query.get("page", "1")) for r in gh.api_requests("/user/teams")) == [1, 2]


async def test_mixed_case_logins_are_lower_cased_in_groups(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    gh.state.orgs = {"MegaCorp": ["alice"]}
    gh.state.teams = {"MegaCorp/Platform-Team": ["alice"]}
    who = await provider.load_user(await sign_in(provider, http))
    assert who.groups == {"megacorp", "megacorp/platform-team"}
    assert who.login == "Alice"  # the login keeps its case; Principal.same_login compares casefolded


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "switch",
    [{"api_status": 502}, {"api_status": 503}, {"malformed": True}, {"delay": 5.0}],
    ids=["502", "503", "malformed", "timeout"],
)
async def test_api_trouble_is_unavailable(
    gh: FakeGitHub, http: aiohttp.ClientSession, switch: dict[str, Any]
) -> None:
    provider = make_provider(gh, http, timeout=0.5)
    tokens = await sign_in(provider, http)
    gh.state.switches.update(switch)
    started = time.monotonic()
    for load in (provider.load_user, provider.load_groups):
        err = await refused(load(tokens))
        assert err.kind == "unavailable"
        assert tokens.access_token not in err.message
        assert "{" not in err.message  # no raw body
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("status", [500, 502])
async def test_token_endpoint_trouble_is_unavailable(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession, status: int
) -> None:
    code, verifier = await authorize(provider, http)
    gh.state.switches.token_status = status
    assert (await refused(provider.redeem(code, REDIRECT, verifier, ""))).kind == "unavailable"


async def test_unreachable_github_is_unavailable(http: aiohttp.ClientSession) -> None:
    fake = FakeGitHub(alice_state())
    await fake.start()
    provider = make_provider(fake, http, timeout=2.0)
    await fake.stop()  # nothing listens there any more
    err = await refused(provider.redeem("code", REDIRECT, generate_token(48), ""))
    assert err.kind == "unavailable"


async def test_revoked_token_is_refused(provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession) -> None:
    tokens = await sign_in(provider, http)
    assert await provider.load_groups(tokens)
    async with http.post(gh.base_url + "/_control/revoke", json={"login": "alice"}) as resp:
        assert (await resp.json())["revoked"] == 1
    for load in (provider.load_user, provider.load_groups):
        err = await refused(load(tokens))
        assert err.kind == "bad_code"
        assert "sign in again" in err.message


async def test_member_removed_from_org_disappears_from_groups(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    assert {"acme-corp", "acme-corp/backend"} <= await provider.load_groups(tokens)
    async with http.post(gh.base_url + "/_control/remove_member", json={"org": "acme-corp", "login": "ALICE"}) as r:
        assert r.status == 200
    groups = await provider.load_groups(tokens)
    assert groups == {"wonderland", "wonderland/tea-party"}


# --- where the token may go ----------------------------------------------------------


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeGitHub]:
    """Another server that would love to receive the token."""
    fake = FakeGitHub(alice_state())
    await fake.start()
    yield fake
    await fake.stop()


@pytest.mark.parametrize(
    "target",
    [
        lambda other, gh: other.api_url + "/user/orgs?page=2",
        lambda other, gh: other.base_url.replace("127.0.0.1", "localhost") + "/user/orgs?page=2",
        lambda other, gh: "//" + other.base_url.split("//", 1)[1] + "/user/orgs?page=2",
    ],
    ids=["other-port", "other-host", "scheme-relative"],
)
async def test_next_link_to_another_origin_is_not_followed(
    provider: GitHubProvider,
    gh: FakeGitHub,
    elsewhere: FakeGitHub,
    http: aiohttp.ClientSession,
    target: Callable[[FakeGitHub, FakeGitHub], str],
) -> None:
    tokens = await sign_in(provider, http)
    gh.state.switches.next_link = target(elsewhere, gh)
    for load in (provider.load_groups, provider.load_user):
        err = await refused(load(tokens))
        assert err.kind == "unavailable"
    assert elsewhere.requests == []


async def test_next_link_outside_the_api_prefix_is_not_followed(http: aiohttp.ClientSession) -> None:
    ghe = FakeGitHub(alice_state(), api_prefix="/api/v3")
    await ghe.start()
    try:
        provider = make_provider(ghe, http)
        tokens = await sign_in(provider, http)
        ghe.state.switches.next_link = ghe.base_url + "/login/oauth/access_token?page=2"
        assert (await refused(provider.load_groups(tokens))).kind == "unavailable"
        assert not [r for r in ghe.requests if r.method == "GET" and r.path == "/login/oauth/access_token"]
    finally:
        await ghe.stop()


async def test_looping_next_link_is_capped(
    provider: GitHubProvider, gh: FakeGitHub, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    gh.state.switches.next_link = gh.api_url + "/user/orgs?per_page=100&page=1"
    started = time.monotonic()
    err = await refused(provider.load_groups(tokens))
    assert err.kind == "unavailable"
    # Each of the two listings (orgs, teams) stops at the cap; the first to hit it cancels the other.
    sent = len(gh.api_requests("/user/orgs")) + len(gh.api_requests("/user/teams"))
    assert provider.max_pages <= sent <= 2 * provider.max_pages
    assert time.monotonic() - started < 10


# --- GitHub Enterprise Server ------------------------------------------------------------


async def test_enterprise_server_with_api_path_prefix(http: aiohttp.ClientSession) -> None:
    state = alice_state()
    state.orgs.update({f"Eng-{i:03}": ["alice"] for i in range(150)})
    ghe = FakeGitHub(state, api_prefix="/api/v3")
    await ghe.start()
    try:
        assert ghe.api_url == ghe.base_url + "/api/v3"
        provider = GitHubProvider("ghe", "GitHub Enterprise", http, client_id=state.client_id,
                                  client_secret=state.client_secret, web_url=ghe.base_url + "/",
                                  api_url=ghe.api_url + "/")
        url = await provider.authorize_url(REDIRECT, "s", "c", "")
        assert url.startswith(ghe.base_url + "/login/oauth/authorize?")
        who = await provider.load_user(await sign_in(provider, http))
        assert who.provider == "ghe"
        assert who.user_id == "1001"
        assert len(who.groups) == 2 + 150 + 2
        assert "eng-149" in who.groups
        api_paths = {r.path for r in ghe.requests if not r.path.startswith("/login/")}
        assert api_paths == {"/api/v3/user", "/api/v3/user/emails", "/api/v3/user/orgs", "/api/v3/user/teams"}
        assert len(ghe.api_requests("/user/orgs")) == 2
    finally:
        await ghe.stop()


# --- the fake as a process (what end-to-end tests start next to the gateway) ----------------


async def test_fake_runs_as_a_process_with_users_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    users = {
        "client_id": "proc-client", "client_secret": "proc-secret", "current_user": "carol",
        "users": [{"login": "Carol", "id": 77, "name": "Carol C",
                   "emails": [{"email": "carol@example.com", "primary": True, "verified": True}]}],
        "orgs": {"Acme": ["carol"]},
        "teams": {"Acme/ops": ["carol"]},
    }
    (tmp_path / "users.json").write_text(json.dumps(users))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("github_api.py")), "--port", "0",
        "--users", str(tmp_path / "users.json"), "--api-prefix", "/api/v3",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert line["event"] == "listening" and line["port"] > 0
        base = f"http://127.0.0.1:{line['port']}"
        assert (line["web_url"], line["api_url"]) == (base, base + "/api/v3")
        provider = GitHubProvider("gh", "GitHub", http, client_id="proc-client", client_secret="proc-secret",
                                  web_url=line["web_url"], api_url=line["api_url"])
        tokens = await sign_in(provider, http)
        who = await provider.load_user(tokens)
        assert (who.user_id, who.login, who.email) == ("77", "Carol", "carol@example.com")
        assert who.groups == {"acme", "acme/ops"}
        async with http.post(base + "/_control/remove_member", json={"org": "Acme", "login": "carol"}) as resp:
            assert resp.status == 200
        assert await provider.load_groups(tokens) == frozenset()
        async with http.get(base + "/_control/requests") as resp:
            assert "/api/v3/user/orgs" in {r["path"] for r in await resp.json()}
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
