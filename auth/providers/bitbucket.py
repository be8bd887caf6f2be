"""Bitbucket Cloud as an identity provider (OAuth 2 consumer, PKCE S256).

Identity: the account's `uuid` (`{...}`), not `username`/`nickname` (renamable,
and Atlassian dropped usernames from most of the API for privacy) and not
`account_id`. Both `uuid` and `account_id` are immutable, but `uuid` is
Bitbucket's own key for the account, present on every user object this API
returns and accepted wherever it names a user, while `account_id` is the
Atlassian-wide account that the Bitbucket account is linked to. We use one id
space and never fall back to the other, so one person can never end up with two
identities, nor two people with one.

Groups: the slugs of the workspaces the person belongs to, from
`GET /2.0/user/workspaces` (values of type `workspace_access`, each with a nested
`workspace.slug`). That is the current endpoint: `GET /2.0/workspaces` and
`GET /2.0/user/permissions/workspaces` were deprecated and then removed by
Atlassian (changelog CHANGE-2770, replacement announced in CHANGE-3022).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped, unused-ignore]
    prepare_grant_uri,
    prepare_token_request,
)
from yarl import URL

from auth.principal import Principal
from auth.providers.base import Provider, Tokens
from auth.providers.github import (
    DEFAULT_TIMEOUT,
    MAX_PAGES,
    USER_AGENT,
    JsonReply,
    fetch_json,
    gather_all,
    next_page_url,
    optional_str,
    require_str,
    revoked,
    token_error,
    tokens_from,
    unavailable,
)

log = logging.getLogger(__name__)


class BitbucketProvider(Provider):
    """bitbucket.org. Email: the primary address only when Bitbucket marks it confirmed."""

    kind = "bitbucket"
    default_scopes: tuple[str, ...] = ("account", "email")
    max_pages = MAX_PAGES

    def __init__(
        self,
        name: str,
        display_name: str,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str,
        web_url: str = "https://bitbucket.org",
        api_url: str = "https://api.bitbucket.org/2.0",
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
                self._web("/site/oauth2/authorize"),
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
        """Client credentials go in HTTP Basic, as Bitbucket documents; errors are RFC 6749 JSON."""
        url = self._web("/site/oauth2/access_token")
        body = prepare_token_request(
            "authorization_code", redirect_uri=redirect_uri, code=code, code_verifier=code_verifier
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": USER_AGENT,
        }
        _, headers, body = ClientAuth(self.client_id, self.client_secret, "client_secret_basic").prepare(
            "POST", url, headers, body
        )
        reply = await fetch_json(
            self.http, "POST", url, label=self.display_name, timeout=self.timeout, headers=headers, data=str(body)
        )
        error = reply.body.get("error") if isinstance(reply.body, dict) else None
        if isinstance(error, str) and error:
            raise token_error(self.display_name, error)
        if reply.status != 200:
            log.warning("bitbucket token endpoint: provider=%s status=%d", self.name, reply.status)
            if reply.status in (400, 401):
                raise token_error(self.display_name, "invalid_grant")
            raise unavailable(self.display_name)
        return tokens_from(reply.body, self.display_name)

    async def load_user(self, tokens: Tokens) -> Principal:
        user = await self._get(self._api("/user"), tokens)
        if not isinstance(user.body, dict):
            raise unavailable(self.display_name)
        uuid = require_str(user.body, "uuid", self.display_name)
        login = optional_str(user.body, "username") or require_str(user.body, "nickname", self.display_name)
        links = user.body.get("links")
        avatar_link = links.get("avatar") if isinstance(links, dict) else None
        avatar = optional_str(avatar_link, "href") if isinstance(avatar_link, dict) else ""
        email, groups = await gather_all(self._confirmed_email(tokens), self.load_groups(tokens))
        return Principal(
            provider=self.name,
            user_id=uuid,
            login=login,
            name=optional_str(user.body, "display_name"),
            email=email,
            avatar=avatar,
            groups=groups,
        )

    async def load_groups(self, tokens: Tokens) -> frozenset[str]:
        groups: set[str] = set()
        for access in await self._pages("/user/workspaces", tokens) or ():
            workspace = access.get("workspace") if isinstance(access, dict) else None
            if not isinstance(workspace, dict):
                raise unavailable(self.display_name)
            groups.add(require_str(workspace, "slug", self.display_name).lower())
        return frozenset(groups)

    async def _confirmed_email(self, tokens: Tokens) -> str:
        """The confirmed primary address, or "" when there is none or the `email` scope is missing."""
        for entry in await self._pages("/user/emails", tokens, missing_ok=True) or ():
            if isinstance(entry, dict) and entry.get("is_primary") is True and entry.get("is_confirmed") is True:
                email = entry.get("email")
                if isinstance(email, str):
                    return email
        return ""

    async def _get(self, url: URL, tokens: Tokens, *, missing_ok: bool = False) -> JsonReply:
        reply = await fetch_json(
            self.http,
            "GET",
            url,
            label=self.display_name,
            timeout=self.timeout,
            headers={
                "Authorization": f"Bearer {tokens.access_token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        if reply.status == 200:
            return reply
        if reply.status == 401:
            raise revoked(self.display_name)
        if missing_ok and reply.status in (403, 404):
            return JsonReply(reply.status, None)
        log.warning("bitbucket api refused: provider=%s path=%s status=%d", self.name, url.path, reply.status)
        raise unavailable(self.display_name)

    async def _pages(self, path: str, tokens: Tokens, *, missing_ok: bool = False) -> list[Any] | None:
        """All `values` of a paginated collection, following `next` on the API's own origin only."""
        url = self._api(path).update_query(pagelen=100)
        items: list[Any] = []
        for _ in range(self.max_pages):
            reply = await self._get(url, tokens, missing_ok=missing_ok)
            if reply.status != 200:
                return None
            if not isinstance(reply.body, dict) or not isinstance(reply.body.get("values"), list):
                raise unavailable(self.display_name)
            items.extend(reply.body["values"])
            nxt = reply.body.get("next")
            if nxt is None:
                return items
            if not isinstance(nxt, str):
                raise unavailable(self.display_name)
            url = next_page_url(nxt, self.api_url, self.display_name)
        log.warning("bitbucket pagination cap reached: provider=%s path=%s pages=%d", self.name, path, self.max_pages)
        raise unavailable(self.display_name)
