"""GitLabProvider against a real OIDC provider (tests/idp) shaped like GitLab.

Like GitLab: issuer at the instance's base URL, numeric `sub`, the username in
`nickname`, full group paths in the userinfo `groups` claim and not in the ID token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from idp_process import IdP, sign_in_via_form
from wsgate_testing import free_port

from auth.providers.base import ProviderError, Tokens
from auth.providers.gitlab import GitLabProvider

REDIRECT = f"http://127.0.0.1:{free_port()}/auth/callback/gitlab"
CLIENT = {"client_id": "gl-app", "client_secret": "gl-secret", "redirect_uris": [REDIRECT]}
USERS = [
    {
        "login": "alice",
        "sub": "4242",
        "name": "Alice Liddell",
        "email": "alice@gitlab.test",
        "email_verified": True,
        "picture": "https://gitlab.test/uploads/alice.png",
        "groups": ["Acme", "acme/Backend", "acme/backend/Infra"],
        # GitLab sends the username in both; nickname is the one we read first.
        "claims": {"preferred_username": "alice.preferred"},
    },
    {"login": "mallory", "sub": "666", "email": "m@gitlab.test", "email_verified": False, "groups": ["Other"]},
]
# GitLab's ID token carries no `groups` (only `groups_direct`): userinfo only.
GITLAB_LIKE = {"conform_id_token_claims": True}


@pytest.fixture
def idp(idp_factory: Callable[..., IdP]) -> IdP:
    return idp_factory(USERS, [CLIENT], options=GITLAB_LIKE)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def gitlab(http: aiohttp.ClientSession, idp: IdP) -> GitLabProvider:
    # A self-managed instance's external URL, written with a trailing slash as people do.
    return GitLabProvider(
        "gitlab", "GitLab", http, client_id="gl-app", client_secret="gl-secret", web_url=idp.issuer + "/"
    )


async def sign_in(provider: GitLabProvider, http: aiohttp.ClientSession, login: str) -> Tokens:
    http.cookie_jar.clear()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    nonce, state = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = await provider.authorize_url(REDIRECT, state, challenge, nonce)
    query = parse_qs(urlparse(await sign_in_via_form(http, url, login, REDIRECT)).query)
    assert query["state"] == [state]
    return await provider.redeem(query["code"][0], REDIRECT, verifier, nonce)


def test_gitlab_com_defaults() -> None:
    provider = GitLabProvider("gitlab", "GitLab", None, client_id="c", client_secret="s")  # type: ignore[arg-type]
    assert provider.kind == "gitlab"
    assert provider.issuer == "https://gitlab.com"
    assert provider.discovery_url == "https://gitlab.com/.well-known/openid-configuration"
    assert provider.scopes == ("openid", "profile", "email")
    assert provider.groups_claim == "groups"


async def test_sign_in_loads_gitlab_user_and_group_paths(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = gitlab(http, idp)
    assert provider.issuer == idp.issuer
    url = await provider.authorize_url(REDIRECT, "s", "c", "n")
    assert parse_qs(urlparse(url).query)["scope"] == ["openid profile email"]

    tokens = await sign_in(provider, http, "alice")
    assert "groups" not in tokens.id_claims
    user = await provider.load_user(tokens)
    assert (user.provider, user.user_id, user.login) == ("gitlab", "4242", "alice")
    assert (user.name, user.email, user.avatar) == (
        "Alice Liddell", "alice@gitlab.test", "https://gitlab.test/uploads/alice.png"
    )
    assert user.groups == frozenset({"acme", "acme/backend", "acme/backend/infra"})
    assert "gitlab:acme/backend" in user.qualified_groups()


async def test_unverified_email_is_dropped(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = gitlab(http, idp)
    user = await provider.load_user(await sign_in(provider, http, "mallory"))
    assert (user.user_id, user.login, user.email) == ("666", "mallory", "")


async def test_membership_refresh_follows_gitlab(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = gitlab(http, idp)
    tokens = await sign_in(provider, http, "alice")
    idp.set_groups("alice", ["Acme"])  # removed from acme/backend
    assert await provider.load_groups(tokens) == frozenset({"acme"})
    idp.set_groups("alice", ["Acme", "NewCo/Platform"])
    assert await provider.load_groups(tokens) == frozenset({"acme", "newco/platform"})


async def test_other_instance_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    # Configured for one instance, pointed at a server that calls itself another one.
    provider = GitLabProvider(
        "gitlab", "GitLab", http, client_id="gl-app", client_secret="gl-secret",
        web_url=idp.issuer.replace("127.0.0.1", "localhost"),
    )
    with pytest.raises(ProviderError) as e:
        await provider.setup()
    assert e.value.kind == "unavailable" and "another issuer" in e.value.message


async def test_gitlab_down_is_unavailable(http: aiohttp.ClientSession) -> None:
    provider = GitLabProvider(
        "gitlab", "GitLab", http, client_id="c", client_secret="s", web_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(ProviderError) as e:
        await provider.authorize_url(REDIRECT, "s", "c", "n")
    assert e.value.kind == "unavailable"
