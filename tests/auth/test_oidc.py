"""OIDCProvider against a real OpenID Connect provider (tests/idp: panva's oidc-provider).

Code-flow tests sign in through the IdP's login form with an HTTP client and stop at
the redirect to our redirect_uri (a port nobody listens on). ID-token attacks need
tokens the IdP would never mint, so those are signed here with keys served by a
small in-memory issuer and fed to `validate_id_token` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from aiohttp import web
from idp_process import IdP, sign_in_via_form
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from wsgate_testing import AiohttpUpstream, free_port, refused_port

from auth.providers.base import ProviderError, Tokens
from auth.providers.oidc import OIDCProvider

REDIRECT = f"http://127.0.0.1:{free_port()}/auth/callback/corp"  # never connected to
CLIENT_ID = "wsgate-test"
SECRET = "s3cret:with&odd chars"  # exercises the form-encoding of client_secret_basic
CLIENT = {"client_id": CLIENT_ID, "client_secret": SECRET, "redirect_uris": [REDIRECT]}
USERS = [
    {"login": "alice", "sub": "1001", "name": "Alice Liddell", "email": "alice@corp.test", "email_verified": True,
     "picture": "https://img.test/alice.png", "groups": ["Acme", "acme/Backend"]},
    {"login": "bob", "sub": "1002", "name": "Bob", "email": "bob@corp.test", "email_verified": False, "groups": []},
]

MakeIdP = Callable[..., IdP]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def authorize(provider: OIDCProvider, http: aiohttp.ClientSession, login: str, nonce: str) -> tuple[str, str]:
    """Signs `login` in at the IdP in a fresh browser; the code and the verifier that redeems it."""
    http.cookie_jar.clear()  # else the IdP's session answers for whoever signed in before
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    url = await provider.authorize_url(REDIRECT, state, challenge, nonce)
    location = await sign_in_via_form(http, url, login, REDIRECT)
    query = parse_qs(urlparse(location).query)
    assert query["state"] == [state]
    return query["code"][0], verifier


async def sign_in(provider: OIDCProvider, http: aiohttp.ClientSession, login: str) -> Tokens:
    nonce = secrets.token_urlsafe(16)
    code, verifier = await authorize(provider, http, login, nonce)
    return await provider.redeem(code, REDIRECT, verifier, nonce)


@pytest.fixture
def idp(idp_factory: MakeIdP) -> IdP:
    return idp_factory(USERS, [CLIENT])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # The IdP's interaction cookies are set on 127.0.0.1: the default jar ignores IP hosts.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def make_provider(http: aiohttp.ClientSession, issuer: str, **kw: Any) -> OIDCProvider:
    return OIDCProvider("corp", "Corp SSO", http, issuer=issuer, client_id=CLIENT_ID, client_secret=SECRET, **kw)


# --- the code flow against the real IdP -------------------------------------------------


async def test_code_flow_signs_in_and_loads_user(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    await provider.setup()
    verifier, challenge = pkce()
    url = await provider.authorize_url(REDIRECT, "the-state", challenge, "the-nonce")
    params = parse_qs(urlparse(url).query)
    assert url.startswith(idp.issuer + "/auth?")
    assert params == {
        "response_type": ["code"], "client_id": [CLIENT_ID], "redirect_uri": [REDIRECT],
        "scope": ["openid profile email"], "state": ["the-state"], "nonce": ["the-nonce"],
        "code_challenge": [challenge], "code_challenge_method": ["S256"],
    }

    location = await sign_in_via_form(http, url, "alice", REDIRECT)
    query = parse_qs(urlparse(location).query)
    assert query["state"] == ["the-state"]
    tokens = await provider.redeem(query["code"][0], REDIRECT, verifier, "the-nonce")
    assert tokens.access_token and tokens.token_type == "bearer"
    assert tokens.expires_at > time.time()
    assert tokens.id_claims["sub"] == "1001" and tokens.id_claims["nonce"] == "the-nonce"
    assert tokens.id_claims["iss"] == idp.issuer and tokens.id_claims["aud"] == CLIENT_ID

    user = await provider.load_user(tokens)
    assert (user.provider, user.user_id, user.login) == ("corp", "1001", "alice")
    assert (user.name, user.email, user.avatar) == ("Alice Liddell", "alice@corp.test", "https://img.test/alice.png")
    assert user.groups == frozenset({"acme", "acme/backend"})
    assert user.qualified_groups() == frozenset({"corp:acme", "corp:acme/backend"})


async def test_setup_happens_on_first_use(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    user = await provider.load_user(await sign_in(provider, http, "alice"))
    assert user.user_id == "1001"
    assert provider.jwks_fetches == 1


async def test_extra_scopes_follow_the_defaults_once(http: aiohttp.ClientSession, idp: IdP) -> None:
    provider = make_provider(http, idp.issuer, scopes=("email", "groups", "offline_access"))
    url = await provider.authorize_url(REDIRECT, "s", "c", "n")
    assert parse_qs(urlparse(url).query)["scope"] == ["openid profile email groups offline_access"]


async def test_client_secret_post_when_basic_is_not_offered(idp_factory: MakeIdP, http: aiohttp.ClientSession) -> None:
    idp = idp_factory(USERS, [CLIENT], options={"auth_methods": ["client_secret_post"]})
    provider = make_provider(http, idp.issuer)
    tokens = await sign_in(provider, http, "alice")
    assert tokens.id_claims["sub"] == "1001"


async def test_claims_only_in_userinfo_are_merged(idp_factory: MakeIdP, http: aiohttp.ClientSession) -> None:
    # conform_id_token_claims: the ID token has `sub` only; login, email and groups come from userinfo.
    idp = idp_factory(USERS, [CLIENT], options={"conform_id_token_claims": True})
    provider = make_provider(http, idp.issuer)
    tokens = await sign_in(provider, http, "alice")
    assert "preferred_username" not in tokens.id_claims and "groups" not in tokens.id_claims
    user = await provider.load_user(tokens)
    assert (user.login, user.email, user.groups) == ("alice", "alice@corp.test", frozenset({"acme", "acme/backend"}))


async def test_login_falls_back_to_nickname_then_sub(idp_factory: MakeIdP, http: aiohttp.ClientSession) -> None:
    users = [
        {"login": "carol", "sub": "2001", "claims": {"preferred_username": "", "nickname": "caro"}},
        {"login": "dave", "sub": "2002", "claims": {"preferred_username": None, "nickname": None}},
    ]
    idp = idp_factory(users, [CLIENT])
    provider = make_provider(http, idp.issuer)
    assert (await provider.load_user(await sign_in(provider, http, "carol"))).login == "caro"
    assert (await provider.load_user(await sign_in(provider, http, "dave"))).login == "2002"


async def test_custom_groups_claim(idp_factory: MakeIdP, http: aiohttp.ClientSession) -> None:
    users = [{"login": "erin", "sub": "3001", "groups": ["ignored"], "claims": {"roles": ["Admins", 7, " Ops "]}}]
    idp = idp_factory(users, [CLIENT], options={"extra_claims": ["roles"]})
    provider = make_provider(http, idp.issuer, groups_claim="roles")
    user = await provider.load_user(await sign_in(provider, http, "erin"))
    assert user.groups == frozenset({"admins", "ops"})


async def test_unverified_email_is_not_used(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    tokens = await sign_in(provider, http, "bob")
    assert tokens.id_claims["email"] == "bob@corp.test" and tokens.id_claims["email_verified"] is False
    user = await provider.load_user(tokens)
    assert user.email == ""
    assert user.login == "bob"

    idp.update_user("bob", email_verified=True)  # the same person, once the IdP verified the address
    assert (await provider.load_user(tokens)).email == "bob@corp.test"


async def test_group_changes_at_the_idp_show_in_load_groups(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    tokens = await sign_in(provider, http, "alice")
    assert await provider.load_groups(tokens) == frozenset({"acme", "acme/backend"})
    idp.set_groups("alice", ["Acme"])
    assert await provider.load_groups(tokens) == frozenset({"acme"})
    idp.set_groups("alice", [])
    assert await provider.load_groups(tokens) == frozenset()
    assert (await provider.load_user(tokens)).groups == frozenset()


async def test_userinfo_for_another_subject_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    alice = await sign_in(provider, http, "alice")
    bob = await sign_in(provider, http, "bob")
    mixed = Tokens(access_token=bob.access_token, id_claims=alice.id_claims)
    with pytest.raises(ProviderError) as e:
        await provider.load_user(mixed)
    assert e.value.kind == "bad_code"
    with pytest.raises(ProviderError):
        await provider.load_groups(mixed)


async def test_revoked_access_token_is_bad_code(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    tokens = await sign_in(provider, http, "alice")
    forged = Tokens(access_token=tokens.access_token[:-2] + "xx", id_claims=tokens.id_claims)
    with pytest.raises(ProviderError) as e:
        await provider.load_groups(forged)
    assert e.value.kind == "bad_code"


async def test_wrong_nonce_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    code, verifier = await authorize(provider, http, "alice", nonce="sent-nonce")
    with pytest.raises(ProviderError) as e:
        await provider.redeem(code, REDIRECT, verifier, "another-nonce")
    assert e.value.kind == "bad_code"


async def test_wrong_code_verifier_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    code, _ = await authorize(provider, http, "alice", nonce="n")
    with pytest.raises(ProviderError) as e:
        await provider.redeem(code, REDIRECT, pkce()[0], "n")
    assert e.value.kind == "bad_code"


async def test_code_replay_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    code, verifier = await authorize(provider, http, "alice", nonce="n")
    first = await provider.redeem(code, REDIRECT, verifier, "n")
    assert first.id_claims["sub"] == "1001"
    with pytest.raises(ProviderError) as e:
        await provider.redeem(code, REDIRECT, verifier, "n")
    assert e.value.kind == "bad_code"


async def test_wrong_client_secret_is_unavailable_not_the_persons_fault(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = OIDCProvider("corp", "Corp", http, issuer=idp.issuer, client_id=CLIENT_ID, client_secret="wrong")
    code, verifier = await authorize(provider, http, "alice", nonce="n")
    with pytest.raises(ProviderError) as e:
        await provider.redeem(code, REDIRECT, verifier, "n")
    assert e.value.kind == "unavailable"


async def test_discovery_issuer_mismatch_is_refused(idp: IdP, http: aiohttp.ClientSession) -> None:
    # Same server, but the configured issuer is not the one the document names.
    provider = make_provider(http, idp.issuer + "/")
    assert provider.discovery_url == idp.issuer + "/.well-known/openid-configuration"
    with pytest.raises(ProviderError) as e:
        await provider.setup()
    assert e.value.kind == "unavailable"
    with pytest.raises(ProviderError):
        await provider.authorize_url(REDIRECT, "s", "c", "n")


async def test_idp_down_is_unavailable(idp: IdP, http: aiohttp.ClientSession) -> None:
    with refused_port() as port, pytest.raises(ProviderError) as e:
        await make_provider(http, f"http://127.0.0.1:{port}").setup()
    assert e.value.kind == "unavailable"

    provider = make_provider(http, idp.issuer)
    code, verifier = await authorize(provider, http, "alice", nonce="n")
    idp.stop()
    with pytest.raises(ProviderError) as e:
        await provider.redeem(code, REDIRECT, verifier, "n")
    assert e.value.kind == "unavailable"
    with pytest.raises(ProviderError) as e:
        await provider.load_groups(Tokens(access_token="whatever", id_claims={"sub": "1001"}))
    assert e.value.kind == "unavailable"


async def test_key_rotation_at_the_idp_is_followed(idp: IdP, http: aiohttp.ClientSession) -> None:
    provider = make_provider(http, idp.issuer)
    before = await sign_in(provider, http, "alice")
    idp.restart()  # same issuer, new signing key
    after = await sign_in(provider, http, "alice")
    assert after.id_claims["sub"] == before.id_claims["sub"] == "1001"
    assert provider.jwks_fetches == 2


# --- ID tokens crafted here, checked by validate_id_token ------------------------------


class StaticIssuer:
    """Discovery and JWKS served from memory, so tests can sign ID tokens with keys the provider trusts."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"}, private=True)
        self.ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"}, private=True)
        self.published: list[RSAKey | ECKey] = [self.rsa, self.ec]
        self.discovery_status = 200
        self.discovery_body: bytes | None = None
        self.claimed_issuer: str | None = None
        self.jwks_hits = 0
        self.upstream = AiohttpUpstream(self.app)
        self.issuer = f"http://127.0.0.1:{self.upstream.port}"

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            if self.discovery_body is not None:
                return web.Response(status=self.discovery_status, body=self.discovery_body)
            return web.json_response(
                {
                    "issuer": self.claimed_issuer or self.issuer,
                    "authorization_endpoint": self.issuer + "/authorize",
                    "token_endpoint": self.issuer + "/token",
                    "jwks_uri": self.issuer + "/jwks",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "HS256", "none"],
                },
                status=self.discovery_status,
            )

        async def jwks(request: web.Request) -> web.Response:
            self.jwks_hits += 1
            return web.json_response({"keys": [k.as_dict(private=False) for k in self.published]})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        return app

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.issuer, "sub": "u-1", "aud": CLIENT_ID, "exp": now + 300, "iat": now, "nonce": "n-1"}
        return {k: v for k, v in (base | over).items() if v is not None}

    def sign(self, claims: dict[str, Any], key: RSAKey | ECKey | None = None, **header: Any) -> str:
        key = key or self.rsa
        alg = "ES256" if isinstance(key, ECKey) else "RS256"
        return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key)

    def close(self) -> None:
        self.upstream.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


def at_hash(access_token: str) -> str:
    return b64(hashlib.sha256(access_token.encode()).digest()[:16])


@pytest.fixture
def issuer() -> Iterator[StaticIssuer]:
    s = StaticIssuer()
    yield s
    s.close()


@pytest.fixture
async def static_provider(issuer: StaticIssuer, http: aiohttp.ClientSession) -> OIDCProvider:
    provider = make_provider(http, issuer.issuer)
    await provider.setup()
    return provider


async def refused(provider: OIDCProvider, token: str, nonce: str = "n-1", access_token: str = "") -> None:
    with pytest.raises(ProviderError) as e:
        await provider.validate_id_token(token, nonce=nonce, access_token=access_token)
    assert e.value.kind == "bad_code"


async def test_genuine_tokens_validate(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    for key in (issuer.rsa, issuer.ec):
        claims = await static_provider.validate_id_token(issuer.sign(issuer.claims(), key), nonce="n-1")
        assert claims["sub"] == "u-1"
    # Several audiences are fine when `azp` names us; a matching at_hash is fine too.
    token = issuer.sign(issuer.claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID, at_hash=at_hash("at-1")))
    claims = await static_provider.validate_id_token(token, nonce="n-1", access_token="at-1")
    assert claims["aud"] == [CLIENT_ID, "other"]
    # Clock skew within the leeway.
    skewed = issuer.claims(iat=int(time.time()) + 30, exp=int(time.time()) - 30)
    assert (await static_provider.validate_id_token(issuer.sign(skewed), nonce="n-1"))["sub"] == "u-1"


async def test_flipped_signature_byte_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    head, payload, sig = issuer.sign(issuer.claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    await refused(static_provider, f"{head}.{payload}.{b64(bytes(raw))}")


async def test_changed_payload_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    head, _, sig = issuer.sign(issuer.claims()).split(".")
    payload = b64(json.dumps(issuer.claims(sub="admin")).encode())
    await refused(static_provider, f"{head}.{payload}.{sig}")


async def test_alg_none_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    await refused(static_provider, unsigned({"alg": "none", "kid": "rsa-1"}, issuer.claims()))
    await refused(static_provider, unsigned({"alg": "none"}, issuer.claims()))


async def test_hs256_signed_with_the_public_key_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    claims = issuer.claims()
    for secret in (issuer.rsa.as_pem(private=False), json.dumps(issuer.rsa.as_dict(private=False)).encode()):
        header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
        head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        mac = hmac.new(secret, head.encode(), hashlib.sha256).digest()
        await refused(static_provider, head + "." + b64(mac))


async def test_key_not_published_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)  # same kid, other key
    await refused(static_provider, issuer.sign(issuer.claims(), impostor))


@pytest.mark.parametrize(
    "over",
    [
        {"aud": "someone-else"},
        {"aud": ["someone-else", "another"]},
        {"aud": [CLIENT_ID, "other"]},  # several audiences and no azp
        {"aud": [CLIENT_ID, "other"], "azp": "other"},
        {"aud": None},
        {"iss": "http://127.0.0.1:1"},
        {"iss": None},
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
        {"exp": None},
        {"iat": int(time.time()) + 3600},
        {"iat": None},
        {"nbf": int(time.time()) + 3600},
        {"nonce": "n-2"},
        {"nonce": None},
        {"sub": None},
        {"sub": ""},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
async def test_bad_claims_are_refused(
    issuer: StaticIssuer, static_provider: OIDCProvider, over: dict[str, Any]
) -> None:
    claims = issuer.claims()
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    await refused(static_provider, issuer.sign(claims))


async def test_at_hash_mismatch_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    token = issuer.sign(issuer.claims(at_hash=at_hash("at-1")))
    await refused(static_provider, token, access_token="at-2")


async def test_empty_nonce_is_refused(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    await refused(static_provider, issuer.sign(issuer.claims(nonce="")), nonce="")


async def test_not_a_jwt_is_refused(static_provider: OIDCProvider) -> None:
    for junk in ("", "abc", "a.b.c", "e30.e30.", "...."):
        await refused(static_provider, junk)


async def test_unknown_kid_refetches_the_jwks_once(issuer: StaticIssuer, static_provider: OIDCProvider) -> None:
    assert issuer.jwks_hits == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"}, private=True)
    issuer.published = [rotated]
    claims = await static_provider.validate_id_token(issuer.sign(issuer.claims(), rotated), nonce="n-1")
    assert claims["sub"] == "u-1" and issuer.jwks_hits == 2
    # The old key is gone with the rotation.
    await refused(static_provider, issuer.sign(issuer.claims(), issuer.rsa))
    # Rate limit: another unknown kid soon after does not fetch again.
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-3"}, private=True)
    issuer.published = [rotated, stranger]
    await refused(static_provider, issuer.sign(issuer.claims(), stranger))
    assert issuer.jwks_hits == 2


async def test_claimed_issuer_differs(issuer: StaticIssuer, http: aiohttp.ClientSession) -> None:
    issuer.claimed_issuer = "https://accounts.example.test"
    with pytest.raises(ProviderError) as e:
        await make_provider(http, issuer.issuer).setup()
    assert e.value.kind == "unavailable"
    assert issuer.jwks_hits == 0


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b'{"error":"boom"}'), (503, b""), (200, b"<html>not json</html>"), (200, b"[1, 2]"), (404, b"{}")],
)
async def test_broken_discovery_is_unavailable(
    issuer: StaticIssuer, http: aiohttp.ClientSession, status: int, body: bytes
) -> None:
    issuer.discovery_status, issuer.discovery_body = status, body
    with pytest.raises(ProviderError) as e:
        await make_provider(http, issuer.issuer).setup()
    assert e.value.kind == "unavailable"


async def test_jwks_without_usable_keys_is_unavailable(issuer: StaticIssuer, http: aiohttp.ClientSession) -> None:
    issuer.published = []
    with pytest.raises(ProviderError) as e:
        await make_provider(http, issuer.issuer).setup()
    assert e.value.kind == "unavailable"
