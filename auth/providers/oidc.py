"""Any OpenID Connect identity provider: discovery, JWKS, code flow with PKCE, ID token checks.

The sign-in flow (`auth.flow`) makes state, nonce and the PKCE pair; this module
only talks to the provider and decides whether what it answered can be trusted.
Signatures are checked with joserfc (authlib's JOSE layer, which `authlib.jose`
now defers to) and the ID token's claims with authlib's `CodeIDToken`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey, import_key

from auth.principal import Principal
from auth.providers.base import Provider, ProviderError, Tokens

log = logging.getLogger("wsgate.auth.oidc")

DEFAULT_SCOPES = ("openid", "profile", "email")
# Asymmetric only: an ID token signed with HS* (a secret shared with every client,
# or the provider's *public* key used as an HMAC secret) or `none` never passes.
ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
HTTP_SCHEMES = ("https://", "http://")  # http only makes sense on loopback; the config checks that
MAX_BODY = 1 << 20  # discovery, JWKS, token and userinfo answers are small
# Tokens a provider rejects (our request is at fault, or the person's code is stale);
# `invalid_client` is missing on purpose: that is the operator's configuration.
_REFUSALS = frozenset({"invalid_grant", "invalid_request", "unauthorized_client", "invalid_scope", "access_denied"})


@dataclass(frozen=True, slots=True)
class Discovery:
    """The parts of `.well-known/openid-configuration` the code flow uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str  # "" when the provider has none
    token_auth_method: str  # "client_secret_basic" or "client_secret_post"
    algorithms: frozenset[str]


class OIDCProvider(Provider):
    """A provider found through OIDC discovery at `issuer`.

    The person's id is the ID token's `sub` (stable per issuer, unlike logins);
    groups come from `groups_claim`, read from userinfo on every refresh so that
    a membership the provider removes is gone at the next `load_groups`.
    """

    kind = "oidc"
    # Where the login comes from, first non-empty wins; `sub` when none is.
    login_claims: tuple[str, ...] = ("preferred_username", "nickname")
    leeway = 60  # seconds of clock skew accepted on exp/iat/nbf
    jwks_refetch_interval = 60.0  # at most one JWKS re-fetch for unknown `kid`s this often

    def __init__(
        self,
        name: str,
        display_name: str,
        http: aiohttp.ClientSession,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...] = (),
        groups_claim: str = "groups",
    ) -> None:
        super().__init__(name, display_name, http)
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = tuple(dict.fromkeys((*DEFAULT_SCOPES, *scopes)))
        self.groups_claim = groups_claim
        self._discovery: Discovery | None = None
        self._keys: KeySet | None = None
        self._setup_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()
        self._jwks_refetched_at = -math.inf
        self.jwks_fetches = 0  # how often the JWKS was loaded (setup included)

    # --- discovery and keys ---------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        # OIDC Discovery 1.0 §4: a trailing "/" of the issuer is dropped before appending.
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def setup(self) -> None:
        """Discovery and JWKS; also called on first use, so a provider down at start-up recovers."""
        async with self._setup_lock:
            await self._load()

    async def _load(self) -> None:
        doc = await self._get_json(self.discovery_url, "discovery document")
        discovery = self._parse_discovery(doc)
        keys = await self._fetch_keys(discovery.jwks_uri)
        self._discovery, self._keys = discovery, keys

    def _parse_discovery(self, doc: dict[str, Any]) -> Discovery:
        # The issuer must match exactly: otherwise a document at a URL we were
        # pointed to could make us accept tokens minted by someone else.
        if doc.get("issuer") != self.issuer:
            log.warning("oidc_issuer_mismatch provider=%s configured=%r discovered=%r",
                        self.name, self.issuer, doc.get("issuer"))
            raise ProviderError("unavailable", "The identity provider's discovery document names another issuer.")
        urls = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            if not isinstance(value, str) or not value.startswith(HTTP_SCHEMES):
                raise ProviderError("unavailable", f"The identity provider's discovery document has no {key}.")
            urls[key] = value
        userinfo = doc.get("userinfo_endpoint")
        methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            method = "client_secret_basic"
        elif "client_secret_post" in methods:
            method = "client_secret_post"
        else:
            raise ProviderError("unavailable", "The identity provider accepts no client secret at its token endpoint.")
        algs = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        allowed = frozenset(a for a in algs if isinstance(a, str)) & ASYMMETRIC_ALGS
        if not allowed:
            raise ProviderError("unavailable", "The identity provider signs ID tokens with no algorithm we accept.")
        return Discovery(
            issuer=self.issuer,
            authorization_endpoint=urls["authorization_endpoint"],
            token_endpoint=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            userinfo_endpoint=userinfo if isinstance(userinfo, str) and userinfo.startswith(HTTP_SCHEMES) else "",
            token_auth_method=method,
            algorithms=allowed,
        )

    async def _fetch_keys(self, jwks_uri: str) -> KeySet:
        doc = await self._get_json(jwks_uri, "signing keys")
        self.jwks_fetches += 1
        keys: list[Key] = []
        for entry in doc.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = import_key(entry)
            except (JoseError, ValueError, TypeError) as e:
                log.info("oidc_jwks_key_skipped provider=%s kid=%r reason=%s", self.name, entry.get("kid"), e)
                continue
            if isinstance(key, RSAKey | ECKey | OKPKey):  # never a symmetric key from a JWKS
                keys.append(key)
        if not keys:
            raise ProviderError("unavailable", "The identity provider published no usable signing key.")
        return KeySet(keys)

    async def _ready(self) -> Discovery:
        if self._discovery is None:
            async with self._setup_lock:
                if self._discovery is None:
                    await self._load()
        assert self._discovery is not None
        return self._discovery

    async def _refetch_keys(self, seen: KeySet | None) -> bool:
        """Re-loads the JWKS for a key rotation; False when one was loaded too recently."""
        discovery = await self._ready()
        async with self._jwks_lock:
            if self._keys is not seen:  # another request re-fetched while we waited
                return True
            now = time.monotonic()
            if now - self._jwks_refetched_at < self.jwks_refetch_interval:
                return False
            self._jwks_refetched_at = now
            self._keys = await self._fetch_keys(discovery.jwks_uri)
            return True

    # --- the code flow --------------------------------------------------------------

    async def authorize_url(self, redirect_uri: str, state: str, code_challenge: str, nonce: str) -> str:
        discovery = await self._ready()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        sep = "&" if "?" in discovery.authorization_endpoint else "?"
        return discovery.authorization_endpoint + sep + urlencode(params)

    async def redeem(self, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Tokens:
        discovery = await self._ready()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {"Accept": "application/json"}
        if discovery.token_auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        status, body = await self._request("POST", discovery.token_endpoint, "token", data=form, headers=headers)
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            log.info("oidc_token_refused provider=%s status=%d error=%r", self.name, status, error)
            if 400 <= status < 500 and error in _REFUSALS:
                raise ProviderError("bad_code", "The identity provider refused the sign-in code; please sign in again.")
            if error == "invalid_client":
                raise ProviderError("unavailable", "The identity provider refused this gateway's client credentials.")
            raise ProviderError("unavailable", "The identity provider's token endpoint failed.")
        access_token, id_token = body.get("access_token"), body.get("id_token")
        token_type = body.get("token_type", "")
        if not isinstance(access_token, str) or not access_token or not isinstance(id_token, str):
            raise ProviderError("unavailable", "The identity provider's token answer has no access or ID token.")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ProviderError("unavailable", "The identity provider issued a token type we cannot use.")
        claims = await self.validate_id_token(id_token, nonce=nonce, access_token=access_token)
        expires_in = body.get("expires_in")
        refresh = body.get("refresh_token")
        return Tokens(
            access_token=access_token,
            token_type="bearer",
            refresh_token=refresh if isinstance(refresh, str) else "",
            expires_at=time.time() + expires_in if isinstance(expires_in, int | float) and expires_in > 0 else 0.0,
            id_claims=claims,
        )

    # --- ID token validation --------------------------------------------------------

    async def validate_id_token(self, id_token: str, *, nonce: str, access_token: str = "") -> dict[str, Any]:
        """The ID token's claims if it is genuine and meant for us, else ProviderError("bad_code").

        Signature against the provider's JWKS (asymmetric algorithms it announced),
        `iss`, `aud` (and `azp` when there are several audiences), `exp`/`iat`/`nbf`
        with `leeway`, `nonce` equal to the one the flow sent, and `at_hash` when present.
        An unknown `kid` re-fetches the JWKS once (rate-limited): providers rotate keys.
        """
        discovery = await self._ready()
        if not nonce:
            raise ProviderError("bad_code", "The sign-in carried no nonce; please sign in again.")
        keys = self._keys
        try:
            token = self._verify_signature(id_token, keys, discovery.algorithms)
        except InvalidKeyIdError:
            if not await self._refetch_keys(keys):
                raise _bad_token("unknown signing key") from None
            try:
                token = self._verify_signature(id_token, self._keys, discovery.algorithms)
            except InvalidKeyIdError:
                raise _bad_token("unknown signing key") from None
        return self._check_claims(token, nonce, access_token)

    @staticmethod
    def _verify_signature(id_token: str, keys: KeySet | None, algorithms: frozenset[str]) -> jwt.Token:
        if keys is None:
            raise _bad_token("no keys")
        try:
            return jwt.decode(id_token, keys, algorithms=sorted(algorithms))
        except InvalidKeyIdError:
            raise
        except (JoseError, ValueError, TypeError, KeyError) as e:
            raise _bad_token(f"signature: {type(e).__name__}") from None

    def _check_claims(self, token: jwt.Token, nonce: str, access_token: str) -> dict[str, Any]:
        checks = CodeIDToken(
            token.claims,
            token.header,
            options={
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
            },
            params={"nonce": nonce, "client_id": self.client_id, "access_token": access_token},
        )
        try:
            checks.validate(now=int(time.time()), leeway=self.leeway)
        except (JoseError, ValueError, TypeError, KeyError) as e:
            raise _bad_token(f"claims: {e}") from None
        claims = dict(token.claims)
        # Belt and braces on what authlib checks only when present.
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise _bad_token("nonce")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _bad_token("sub")
        return claims

    # --- the person -----------------------------------------------------------------

    async def load_user(self, tokens: Tokens) -> Principal:
        id_claims = tokens.id_claims
        sub = id_claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ProviderError("bad_code", "The sign-in has no validated ID token.")
        discovery = await self._ready()
        info = await self._userinfo(tokens, sub) if discovery.userinfo_endpoint else {}
        claims = {**id_claims, **info}
        return Principal(
            provider=self.name,
            user_id=sub,
            login=self._login(claims, sub),
            name=_text(claims.get("name")),
            email=self._verified_email(info if "email" in info else id_claims),
            avatar=_text(claims.get("picture")),
            groups=self._groups(info, id_claims),
        )

    async def load_groups(self, tokens: Tokens) -> frozenset[str]:
        """Groups as the provider sees them now (userinfo), for membership refreshes."""
        discovery = await self._ready()
        if not discovery.userinfo_endpoint:
            return self._groups({}, tokens.id_claims)
        sub = tokens.id_claims.get("sub")
        info = await self._userinfo(tokens, sub if isinstance(sub, str) else "")
        return self._groups(info, tokens.id_claims)

    async def _userinfo(self, tokens: Tokens, sub: str) -> dict[str, Any]:
        discovery = await self._ready()
        status, body = await self._request(
            "GET",
            discovery.userinfo_endpoint,
            "userinfo",
            headers={"Authorization": f"Bearer {tokens.access_token}", "Accept": "application/json"},
        )
        if status in (401, 403):
            raise ProviderError("bad_code", "The identity provider no longer accepts this sign-in; sign in again.")
        if status != 200 or not isinstance(body.get("sub"), str):
            raise ProviderError("unavailable", "The identity provider's userinfo endpoint failed.")
        # OIDC Core §5.3.2: userinfo for another subject than the ID token's must not be used.
        if sub and not hmac.compare_digest(body["sub"].encode(), sub.encode()):
            log.warning("oidc_userinfo_sub_mismatch provider=%s", self.name)
            raise ProviderError("bad_code", "The identity provider answered for another person; please sign in again.")
        return body

    def _login(self, claims: dict[str, Any], sub: str) -> str:
        for name in self.login_claims:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        return sub

    @staticmethod
    def _verified_email(claims: dict[str, Any]) -> str:
        """The email only when the provider says it verified it: an unverified one proves nothing."""
        email, verified = claims.get("email"), claims.get("email_verified")
        # Some providers send the boolean as a string.
        if verified is True or (isinstance(verified, str) and verified.lower() == "true"):
            return _text(email)
        return ""

    def _groups(self, info: dict[str, Any], id_claims: dict[str, Any]) -> frozenset[str]:
        """Lower-cased groups from userinfo, or from the ID token when userinfo does not carry the claim."""
        value = info[self.groups_claim] if self.groups_claim in info else id_claims.get(self.groups_claim)
        if not isinstance(value, list):
            return frozenset()
        return frozenset(g.strip().lower() for g in value if isinstance(g, str) and g.strip())

    # --- HTTP -----------------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        status, body = await self._request("GET", url, what, headers={"Accept": "application/json"})
        if status != 200:
            raise ProviderError("unavailable", f"The identity provider's {what} could not be loaded.")
        return body

    async def _request(self, method: str, url: str, what: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        """Status and JSON object; network errors, 5xx and non-JSON answers are "unavailable"."""
        try:
            async with self.http.request(method, url, timeout=HTTP_TIMEOUT, allow_redirects=False, **kw) as resp:
                raw = await _read_capped(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("oidc_unreachable provider=%s what=%s error=%s", self.name, what, type(e).__name__)
            raise ProviderError("unavailable", "The identity provider cannot be reached; try again later.") from None
        if status >= 500:
            log.warning("oidc_server_error provider=%s what=%s status=%d", self.name, what, status)
            raise ProviderError("unavailable", f"The identity provider's {what} failed; try again later.")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if status == 200:
                raise ProviderError("unavailable", f"The identity provider's {what} answer is malformed.")
            body = {}
        return status, body


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise aiohttp.ClientPayloadError("identity provider answer too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bad_token(reason: str) -> ProviderError:
    log.info("oidc_id_token_refused reason=%s", reason)
    return ProviderError("bad_code", "The identity provider's ID token did not validate; please sign in again.")
