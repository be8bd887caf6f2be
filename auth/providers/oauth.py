"""What the plain OAuth 2 Git providers (GitHub, Bitbucket) share.

Small HTTP helpers (`fetch_json`, `next_page_url`, `gather_all`): every call has
its own deadline, no redirect is followed with a token attached, bodies are
capped, and every failure becomes a `ProviderError` whose message is safe to
show. And `OAuth2Provider`, the authorization-code flow with PKCE S256 that
both run, so each provider module holds only its own API shapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped, unused-ignore]
    prepare_grant_uri,
    prepare_token_request,
)
from yarl import URL

from auth.providers.base import Provider, ProviderError, Tokens

log = logging.getLogger(__name__)

USER_AGENT = "wsgate"
DEFAULT_TIMEOUT = 10.0
# A looping or endless `next` link must not hang a sign-in; 50 pages of 100 is
# far beyond any real membership list, and an incomplete list is an error, never
# silently truncated groups.
MAX_PAGES = 50
# Profile and membership pages are a few hundred KiB at most.
MAX_BODY = 8 << 20

# Token endpoint errors that mean this gateway's OAuth application is set up wrong:
# the person cannot fix them by signing in again.
_CONFIG_ERRORS = frozenset(
    {"incorrect_client_credentials", "invalid_client", "unauthorized_client", "redirect_uri_mismatch",
     "unsupported_grant_type", "invalid_scope"}
)
_TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable", "slow_down"})


@dataclass(frozen=True, slots=True)
class JsonReply:
    """One answer: status, parsed JSON (None when a non-2xx body is not JSON), Link rel=next."""

    status: int
    body: Any
    next_link: URL | None = None


def unavailable(label: str) -> ProviderError:
    return ProviderError("unavailable", f"{label} did not answer as expected; please try again in a moment.")


def revoked(label: str) -> ProviderError:
    return ProviderError(
        "bad_code", f"{label} no longer accepts this sign-in (it was revoked or expired); please sign in again."
    )


async def fetch_json(
    http: aiohttp.ClientSession,
    method: str,
    url: URL | str,
    *,
    label: str,
    timeout: float,
    headers: Mapping[str, str],
    data: str | None = None,
) -> JsonReply:
    """One request with its own total deadline; network trouble, 5xx and bad JSON on 2xx become "unavailable".

    Redirects are not followed: they would carry the Authorization header to a
    place the configuration did not name.
    """
    try:
        async with http.request(
            method,
            url,
            headers=dict(headers),
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            raw = await _read_capped(resp, label)
            status = resp.status
            next_link = _link_next(resp) if 200 <= status < 300 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("provider request failed: provider=%s method=%s url=%s error=%s",
                    label, method, _loggable(url), type(exc).__name__)
        raise unavailable(label) from None
    if status >= 500:
        log.warning("provider server error: provider=%s url=%s status=%d", label, _loggable(url), status)
        raise unavailable(label)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        if 200 <= status < 300:
            log.warning("provider sent malformed JSON: provider=%s url=%s status=%d", label, _loggable(url), status)
            raise unavailable(label) from None
        body = None
    return JsonReply(status, body, next_link)


async def _read_capped(resp: aiohttp.ClientResponse, label: str) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_BODY:
        raise unavailable(label)
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY:
            raise unavailable(label)
        parts.append(chunk)
    return b"".join(parts)


def _link_next(resp: aiohttp.ClientResponse) -> URL | None:
    nxt = resp.links.get("next")
    if nxt is None:
        return None
    target = nxt.get("url")
    return target if isinstance(target, URL) else None


def _loggable(url: URL | str) -> str:
    """The URL without its query: codes and tokens never travel in our queries, but keep logs lean."""
    return str(URL(str(url)).with_query(None))


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.host or "").lower(), url.port


def next_page_url(candidate: URL | str, api_base: URL, label: str) -> URL:
    """Validates a provider's `next` link: same origin and under the API's path, or an error.

    The link comes from a response body or header that a proxy, a compromised
    server or a bug could point anywhere; following it would send the person's
    token there. Refusing (rather than stopping early) keeps group lists complete.
    """
    try:
        url = URL(str(candidate))
    except ValueError:
        raise unavailable(label) from None
    prefix = api_base.path.rstrip("/") + "/"
    if not url.is_absolute() or _origin(url) != _origin(api_base) or not url.path.startswith(prefix):
        log.warning("provider pagination link refused: provider=%s host=%s", label, url.host)
        raise unavailable(label)
    return url


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    """Runs awaitables concurrently; the first failure cancels (and awaits) the rest, then propagates as is."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def token_error(label: str, error: str) -> ProviderError:
    """Maps an OAuth token-endpoint `error` code to what the person can do about it."""
    if error in _CONFIG_ERRORS:
        log.error("provider rejected the OAuth client configuration: provider=%s error=%s", label, error)
        return ProviderError(
            "unavailable", f"{label} rejected this gateway's sign-in settings; please tell an administrator."
        )
    if error in _TRANSIENT_ERRORS:
        return unavailable(label)
    if error == "access_denied":
        return ProviderError("denied", f"{label} did not allow the sign-in.")
    log.info("provider refused the authorization code: provider=%s error=%s", label, error[:64])
    return ProviderError("bad_code", f"{label} refused the sign-in code (it may have expired); please sign in again.")


def tokens_from(body: Any, label: str) -> Tokens:
    """Reads a successful RFC 6749 token response; anything without an access token is malformed."""
    if not isinstance(body, dict):
        raise unavailable(label)
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise unavailable(label)
    token_type = body.get("token_type")
    refresh = body.get("refresh_token")
    expires_in = body.get("expires_in")
    expires_at = 0.0
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        expires_at = time.time() + float(expires_in)
    return Tokens(
        access_token=access,
        token_type=token_type.lower() if isinstance(token_type, str) and token_type else "bearer",
        refresh_token=refresh if isinstance(refresh, str) else "",
        expires_at=expires_at,
    )


def require_str(obj: Mapping[str, Any], key: str, label: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise unavailable(label)
    return value


def optional_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


# --- the authorization-code flow ----------------------------------------------


class OAuth2Provider(Provider):
    """A Git provider reached with a plain OAuth 2 app: authorize, redeem (PKCE S256), then its REST API.

    Subclasses set the endpoint paths, how the client authenticates at the token
    endpoint, and which token-endpoint statuses mean "the code was refused".
    """

    default_scopes: tuple[str, ...] = ()
    # The public service; self-hosted servers (GitHub Enterprise) pass their own.
    default_web_url = ""
    default_api_url = ""
    authorize_path = ""
    token_path = ""
    client_auth_method = "client_secret_post"
    # Token-endpoint statuses (besides an `error` in the body) that mean the code was refused.
    refused_statuses: frozenset[int] = frozenset()
    max_pages = MAX_PAGES

    def __init__(
        self,
        name: str,
        display_name: str,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str,
        web_url: str = "",
        api_url: str = "",
        scopes: tuple[str, ...] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name, display_name, http)
        self.client_id = client_id
        self.client_secret = client_secret
        self.web_url = URL((web_url or self.default_web_url).rstrip("/"))
        self.api_url = URL((api_url or self.default_api_url).rstrip("/"))
        self.scopes = tuple(scopes) or self.default_scopes
        self.timeout = timeout

    def _web(self, path: str) -> str:
        return str(self.web_url) + path

    def _api(self, path: str) -> URL:
        return URL(str(self.api_url) + path)

    async def authorize_url(self, redirect_uri: str, state: str, code_challenge: str, nonce: str) -> str:
        return str(
            prepare_grant_uri(
                self._web(self.authorize_path),
                self.client_id,
                "code",
                redirect_uri=redirect_uri,
                scope=list(self.scopes),
                state=state,
                code_challenge=code_challenge,
                code_challenge_method="S256",
            )
        )

    async def redeem(self, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Tokens:
        url = self._web(self.token_path)
        body = prepare_token_request(
            "authorization_code", redirect_uri=redirect_uri, code=code, code_verifier=code_verifier
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": USER_AGENT,
        }
        _, headers, body = ClientAuth(self.client_id, self.client_secret, self.client_auth_method).prepare(
            "POST", url, headers, body
        )
        reply = await fetch_json(
            self.http, "POST", url, label=self.display_name, timeout=self.timeout, headers=headers, data=str(body)
        )
        # GitHub answers 200 even when it refuses a code, with `error` in the body.
        error = reply.body.get("error") if isinstance(reply.body, dict) else None
        if isinstance(error, str) and error:
            raise token_error(self.display_name, error)
        if reply.status != 200:
            log.warning("%s token endpoint: provider=%s status=%d", self.kind, self.name, reply.status)
            if reply.status in self.refused_statuses:
                raise token_error(self.display_name, "invalid_grant")
            raise unavailable(self.display_name)
        return tokens_from(reply.body, self.display_name)

    def _headers(self, tokens: Tokens) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {tokens.access_token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    async def _get(self, url: URL, tokens: Tokens, *, missing_ok: bool = False) -> JsonReply:
        """GET with the token; 401 means the token is gone, 403/404 are "missing" only where allowed."""
        reply = await fetch_json(
            self.http, "GET", url, label=self.display_name, timeout=self.timeout, headers=self._headers(tokens)
        )
        if reply.status == 200:
            return reply
        if reply.status == 401:
            raise revoked(self.display_name)
        if missing_ok and reply.status in (403, 404):
            return JsonReply(reply.status, None)
        log.warning("%s api refused: provider=%s path=%s status=%d", self.kind, self.name, url.path, reply.status)
        raise unavailable(self.display_name)
