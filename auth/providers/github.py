"""GitHub and GitHub Enterprise Server as an identity provider (OAuth app, PKCE S256).

Besides `GitHubProvider`, this module holds the small HTTP helpers that the other
Git providers share (`fetch_json`, `next_page_url`, `gather_all`): every call has
its own deadline, no redirect is followed with a token attached, bodies are capped,
and every failure becomes a `ProviderError` whose message is safe to show.
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

from auth.principal import Principal
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


# --- shared HTTP helpers ------------------------------------------------------


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


# --- GitHub ---------------------------------------------------------------------


class GitHubProvider(Provider):
    """github.com or a GitHub Enterprise Server (other `web_url` and `api_url`).

    Groups are organisation logins and `org/team-slug`, lower-cased. The email is
    the primary address only when GitHub marks it verified: an unverified address
    proves nothing about who signed in.
    """

    kind = "github"
    default_scopes: tuple[str, ...] = ("read:user", "user:email", "read:org")
    max_pages = MAX_PAGES

    def __init__(
        self,
        name: str,
        display_name: str,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str,
        web_url: str = "https://github.com",
        api_url: str = "https://api.github.com",
        scopes: tuple[str, ...] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name, display_name, http)
        self.client_id = client_id
        self.client_secret = client_secret
        self.web_url = URL(web_url.rstrip("/"))
        self.api_url = URL(api_url.rstrip("/"))
        self.scopes = tuple(scopes) or self.default_scopes
        self.timeout = timeout

    def _web(self, path: str) -> str:
        return str(self.web_url) + path

    def _api(self, path: str) -> URL:
        return URL(str(self.api_url) + path)

    async def authorize_url(self, redirect_uri: str, state: str, code_challenge: str, nonce: str) -> str:
        return str(
            prepare_grant_uri(
                self._web("/login/oauth/authorize"),
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
        """GitHub answers 200 even when it refuses a code, with `error` in the body."""
        url = self._web("/login/oauth/access_token")
        body = prepare_token_request(
            "authorization_code", redirect_uri=redirect_uri, code=code, code_verifier=code_verifier
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": USER_AGENT,
        }
        # GitHub documents the client credentials as form fields.
        _, headers, body = ClientAuth(self.client_id, self.client_secret, "client_secret_post").prepare(
            "POST", url, headers, body
        )
        reply = await fetch_json(
            self.http, "POST", url, label=self.display_name, timeout=self.timeout, headers=headers, data=str(body)
        )
        error = reply.body.get("error") if isinstance(reply.body, dict) else None
        if isinstance(error, str) and error:
            raise token_error(self.display_name, error)
        if reply.status != 200:
            log.warning("github token endpoint: provider=%s status=%d", self.name, reply.status)
            raise unavailable(self.display_name)
        return tokens_from(reply.body, self.display_name)

    async def load_user(self, tokens: Tokens) -> Principal:
        user = await self._get(self._api("/user"), tokens)
        if not isinstance(user.body, dict):
            raise unavailable(self.display_name)
        user_id = user.body.get("id")
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise unavailable(self.display_name)
        login = require_str(user.body, "login", self.display_name)
        email, groups = await gather_all(self._verified_email(tokens), self.load_groups(tokens))
        return Principal(
            provider=self.name,
            user_id=str(user_id),
            login=login,
            name=optional_str(user.body, "name"),
            email=email,
            avatar=optional_str(user.body, "avatar_url"),
            groups=groups,
        )

    async def load_groups(self, tokens: Tokens) -> frozenset[str]:
        orgs, teams = await gather_all(self._pages("/user/orgs", tokens), self._pages("/user/teams", tokens))
        groups: set[str] = set()
        for org in orgs:
            if not isinstance(org, dict):
                raise unavailable(self.display_name)
            groups.add(require_str(org, "login", self.display_name).lower())
        for team in teams:
            if not isinstance(team, dict) or not isinstance(team.get("organization"), dict):
                raise unavailable(self.display_name)
            org_login = require_str(team["organization"], "login", self.display_name)
            slug = require_str(team, "slug", self.display_name)
            groups.add(f"{org_login}/{slug}".lower())
        return frozenset(groups)

    async def _verified_email(self, tokens: Tokens) -> str:
        """The verified primary address, or "" when there is none or the token may not read emails."""
        emails = await self._pages("/user/emails", tokens, missing_ok=True)
        for entry in emails or ():
            if isinstance(entry, dict) and entry.get("primary") is True and entry.get("verified") is True:
                email = entry.get("email")
                if isinstance(email, str):
                    return email
        return ""

    def _headers(self, tokens: Tokens) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {tokens.access_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
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
        log.warning("github api refused: provider=%s path=%s status=%d", self.name, url.path, reply.status)
        raise unavailable(self.display_name)

    async def _pages(self, path: str, tokens: Tokens, *, missing_ok: bool = False) -> list[Any] | None:
        """All items of a list endpoint, following `Link: rel="next"` on the API's own origin only."""
        url = self._api(path).update_query(per_page=100)
        items: list[Any] = []
        for _ in range(self.max_pages):
            reply = await self._get(url, tokens, missing_ok=missing_ok)
            if reply.status != 200:
                return None
            if not isinstance(reply.body, list):
                raise unavailable(self.display_name)
            items.extend(reply.body)
            if reply.next_link is None:
                return items
            url = next_page_url(reply.next_link, self.api_url, self.display_name)
        log.warning("github pagination cap reached: provider=%s path=%s pages=%d", self.name, path, self.max_pages)
        raise unavailable(self.display_name)
