"""BitbucketProvider against a local Bitbucket Cloud that speaks the documented OAuth and REST 2.0 shapes."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from bitbucket_api import BitbucketState, BitbucketUser, FakeBitbucket

from auth.principal import Principal
from auth.providers.base import ProviderError, Tokens
from auth.providers.bitbucket import BitbucketProvider

REDIRECT = "https://wsgate.test/auth/callback/bb"
ALICE_UUID = "{6a3c0f1e-8f51-4a37-9b0d-2d5c1c7e0a11}"
ALICE_ACCOUNT = "557058:5a2f1a2e-0000-4000-8000-000000000001"


def alice_state() -> BitbucketState:
    state = BitbucketState()
    state.add_user(BitbucketUser(
        "alice", ALICE_UUID, ALICE_ACCOUNT, "Alice Liddell", "https://avatar.test/alice.png",
        [{"email": "old@example.com", "is_primary": False, "is_confirmed": True},
         {"email": "alice@example.com", "is_primary": True, "is_confirmed": True}],
    ))
    state.add_user(BitbucketUser("bob", "{00000000-0000-4000-8000-0000000000b0}", "557058:bob", "Bob"))
    state.workspaces = {"acme": ["alice", "bob"], "wonderland": ["alice"], "bobs-place": ["bob"]}
    state.current_user = "alice"
    return state


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bb() -> AsyncIterator[FakeBitbucket]:
    fake = FakeBitbucket(alice_state())
    await fake.start()
    yield fake
    await fake.stop()


def make_provider(fake: FakeBitbucket, http: aiohttp.ClientSession, **kw: Any) -> BitbucketProvider:
    kw.setdefault("client_id", fake.state.client_id)
    kw.setdefault("client_secret", fake.state.client_secret)
    return BitbucketProvider("bb", "Bitbucket", http, web_url=fake.web_url, api_url=fake.api_url, **kw)


@pytest.fixture
def provider(bb: FakeBitbucket, http: aiohttp.ClientSession) -> BitbucketProvider:
    return make_provider(bb, http)


async def authorize(provider: BitbucketProvider, http: aiohttp.ClientSession) -> tuple[str, str]:
    verifier = generate_token(48)
    state = generate_token(24)
    url = await provider.authorize_url(REDIRECT, state, create_s256_code_challenge(verifier), "")
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    params = parse_qs(urlsplit(location).query)
    assert location.startswith(REDIRECT + "?")
    assert params["state"] == [state]
    return params["code"][0], verifier


async def sign_in(provider: BitbucketProvider, http: aiohttp.ClientSession) -> Tokens:
    code, verifier = await authorize(provider, http)
    return await provider.redeem(code, REDIRECT, verifier, "")


async def refused(call: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call
    return info.value


# --- the code flow -------------------------------------------------------------------


async def test_authorize_url_asks_for_code_pkce_and_default_scopes(
    provider: BitbucketProvider, bb: FakeBitbucket
) -> None:
    url = urlsplit(await provider.authorize_url(REDIRECT, "st4te", "ch4llenge", ""))
    assert f"{url.scheme}://{url.netloc}{url.path}" == bb.web_url + "/site/oauth2/authorize"
    q = parse_qs(url.query)
    assert q["response_type"] == ["code"]
    assert q["client_id"] == [bb.state.client_id]
    assert q["redirect_uri"] == [REDIRECT]
    assert q["state"] == ["st4te"]
    assert q["code_challenge"] == ["ch4llenge"]
    assert q["code_challenge_method"] == ["S256"]
    assert q["scope"] == ["account email"]


async def test_full_code_flow_yields_principal(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    before = time.time()
    tokens = await sign_in(provider, http)
    assert tokens.token_type == "bearer"
    assert tokens.refresh_token
    assert before + 7000 < tokens.expires_at < time.time() + 7300

    who = await provider.load_user(tokens)
    assert who == Principal(
        provider="bb",
        user_id=ALICE_UUID,
        login="alice",
        name="Alice Liddell",
        email="alice@example.com",
        avatar="https://avatar.test/alice.png",
        groups=frozenset({"acme", "wonderland"}),
    )
    api = [r for r in bb.requests if r.path.startswith("/2.0/")]
    assert {r.path for r in api} == {"/2.0/user", "/2.0/user/emails", "/2.0/user/workspaces"}
    assert all(r.headers["Authorization"] == f"Bearer {tokens.access_token}" for r in api)


async def test_client_credentials_travel_only_in_basic_auth(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    await sign_in(provider, http)
    (token_request,) = [r for r in bb.requests if r.path == "/site/oauth2/access_token"]
    assert token_request.headers["Authorization"] == "Basic " + base64.b64encode(b"bb-client:bb-secret").decode()
    form = parse_qs(token_request.body)
    assert "client_secret" not in form and "client_id" not in form
    assert form["grant_type"] == ["authorization_code"]
    assert form["redirect_uri"] == [REDIRECT]


async def test_wrong_verifier_is_refused(provider: BitbucketProvider, http: aiohttp.ClientSession) -> None:
    code, _ = await authorize(provider, http)
    err = await refused(provider.redeem(code, REDIRECT, generate_token(48), ""))
    assert err.kind == "bad_code"
    assert "sign in again" in err.message


async def test_code_replay_is_refused(provider: BitbucketProvider, http: aiohttp.ClientSession) -> None:
    code, verifier = await authorize(provider, http)
    assert (await provider.redeem(code, REDIRECT, verifier, "")).access_token
    assert (await refused(provider.redeem(code, REDIRECT, verifier, ""))).kind == "bad_code"


async def test_wrong_client_secret_is_a_configuration_error(bb: FakeBitbucket, http: aiohttp.ClientSession) -> None:
    provider = make_provider(bb, http, client_secret="not-the-secret")
    code, verifier = await authorize(provider, http)
    err = await refused(provider.redeem(code, REDIRECT, verifier, ""))
    assert err.kind == "unavailable"
    assert "administrator" in err.message
    assert "not-the-secret" not in err.message


# --- profile details -----------------------------------------------------------------


async def test_unconfirmed_primary_email_is_never_used(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    bb.state.users["alice"].emails = [
        {"email": "unconfirmed@example.com", "is_primary": True, "is_confirmed": False},
        {"email": "confirmed-secondary@example.com", "is_primary": False, "is_confirmed": True},
    ]
    who = await provider.load_user(await sign_in(provider, http))
    assert who.email == ""
    assert who.user_id == ALICE_UUID


async def test_without_email_scope_the_email_is_empty(bb: FakeBitbucket, http: aiohttp.ClientSession) -> None:
    provider = make_provider(bb, http, scopes=("account",))
    who = await provider.load_user(await sign_in(provider, http))
    assert bb.api_requests("/user/emails"), "the provider should have asked"
    assert who.email == ""
    assert who.groups == {"acme", "wonderland"}


async def test_user_id_is_the_uuid_not_the_renamable_nickname(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    bb.state.users["alice"].nickname = "alice-renamed"
    who = await provider.load_user(tokens)
    assert (who.user_id, who.login) == (ALICE_UUID, "alice-renamed")


async def test_pagination_past_100_workspaces(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    bb.state.workspaces = {f"ws-{i:03}": ["alice"] for i in range(230)}
    groups = await provider.load_groups(await sign_in(provider, http))
    assert groups == {f"ws-{i:03}" for i in range(230)}
    pages = bb.api_requests("/user/workspaces")
    assert sorted(int(r.query.get("page", "1")) for r in pages) == [1, 2, 3]
    assert all(r.query["pagelen"] == "100" for r in pages)


async def test_mixed_case_slugs_are_lower_cased(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    bb.state.workspaces = {"Acme-Corp": ["alice"]}
    assert await provider.load_groups(await sign_in(provider, http)) == {"acme-corp"}


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "switch",
    [{"api_status": 500}, {"api_status": 503}, {"malformed": True}, {"delay": 5.0}],
    ids=["500", "503", "malformed", "timeout"],
)
async def test_api_trouble_is_unavailable(
    bb: FakeBitbucket, http: aiohttp.ClientSession, switch: dict[str, Any]
) -> None:
    provider = make_provider(bb, http, timeout=0.5)
    tokens = await sign_in(provider, http)
    bb.state.switches.update(switch)
    started = time.monotonic()
    for load in (provider.load_user, provider.load_groups):
        err = await refused(load(tokens))
        assert err.kind == "unavailable"
        assert tokens.access_token not in err.message
        assert "{" not in err.message
    assert time.monotonic() - started < 3.0


async def test_token_endpoint_trouble_is_unavailable(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    code, verifier = await authorize(provider, http)
    bb.state.switches.token_status = 503
    err = await refused(provider.redeem(code, REDIRECT, verifier, ""))
    assert err.kind == "unavailable"
    assert "<html>" not in err.message


async def test_revoked_token_is_refused(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    assert await provider.load_groups(tokens)
    async with http.post(bb.base_url + "/_control/revoke", json={}) as resp:
        assert (await resp.json())["revoked"] == 1
    for load in (provider.load_user, provider.load_groups):
        assert (await refused(load(tokens))).kind == "bad_code"


async def test_member_removed_from_workspace_disappears_from_groups(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    assert await provider.load_groups(tokens) == {"acme", "wonderland"}
    async with http.post(bb.base_url + "/_control/remove_member", json={"workspace": "acme", "login": "alice"}) as r:
        assert r.status == 200
    assert await provider.load_groups(tokens) == {"wonderland"}


# --- where the token may go ----------------------------------------------------------


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeBitbucket]:
    fake = FakeBitbucket(alice_state())
    await fake.start()
    yield fake
    await fake.stop()


@pytest.mark.parametrize("where", ["other-port", "outside-api-path"])
async def test_next_to_another_origin_or_path_is_not_followed(
    provider: BitbucketProvider,
    bb: FakeBitbucket,
    elsewhere: FakeBitbucket,
    http: aiohttp.ClientSession,
    where: str,
) -> None:
    tokens = await sign_in(provider, http)
    if where == "other-port":
        bb.state.switches.next_link = elsewhere.api_url + "/user/workspaces?page=2"
    else:
        bb.state.switches.next_link = bb.base_url + "/site/oauth2/access_token?page=2"
    for load in (provider.load_groups, provider.load_user):
        assert (await refused(load(tokens))).kind == "unavailable"
    assert elsewhere.requests == []
    assert not [r for r in bb.requests if r.method == "GET" and r.path.startswith("/site/oauth2/access_token")]


async def test_looping_next_is_capped(
    provider: BitbucketProvider, bb: FakeBitbucket, http: aiohttp.ClientSession
) -> None:
    tokens = await sign_in(provider, http)
    bb.state.switches.next_link = bb.api_url + "/user/workspaces?pagelen=100&page=1"
    err = await refused(provider.load_groups(tokens))
    assert err.kind == "unavailable"
    assert len(bb.api_requests("/user/workspaces")) == provider.max_pages


async def test_fake_runs_as_a_process_with_users_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    users = {
        "client_id": "proc-client", "client_secret": "proc-secret",
        "users": [{"nickname": "carol", "uuid": "{c0000000-0000-4000-8000-000000000001}", "display_name": "Carol",
                   "emails": [{"email": "carol@example.com", "is_primary": True, "is_confirmed": True}]},
                  {"nickname": "dave", "display_name": "Dave"}],
        "current_user": "dave",
        "workspaces": {"acme": ["carol", "dave"], "ops": ["carol"]},
    }
    (tmp_path / "users.json").write_text(json.dumps(users))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("bitbucket_api.py")), "--port", "0",
        "--users", str(tmp_path / "users.json"), stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert line["event"] == "listening" and line["port"] > 0
        base = f"http://127.0.0.1:{line['port']}"
        assert (line["web_url"], line["api_url"]) == (base, base + "/2.0")
        provider = BitbucketProvider("bb", "Bitbucket", http, client_id="proc-client", client_secret="proc-secret",
                                     web_url=line["web_url"], api_url=line["api_url"])
        async with http.post(base + "/_control/current_user", json={"login": "carol"}) as resp:
            assert resp.status == 200
        tokens = await sign_in(provider, http)
        who = await provider.load_user(tokens)
        assert (who.user_id, who.login, who.email) == ("{c0000000-0000-4000-8000-000000000001}", "carol",
                                                       "carol@example.com")
        assert who.groups == {"acme", "ops"}
        async with http.post(base + "/_control/remove_member", json={"workspace": "ops", "login": "carol"}) as resp:
            assert resp.status == 200
        assert await provider.load_groups(tokens) == {"acme"}
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
