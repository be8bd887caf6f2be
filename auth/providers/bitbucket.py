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

from auth.principal import Principal
from auth.providers.base import Tokens
from auth.providers.oauth import (
    OAuth2Provider,
    gather_all,
    next_page_url,
    optional_str,
    require_str,
    unavailable,
)

log = logging.getLogger(__name__)


class BitbucketProvider(OAuth2Provider):
    """bitbucket.org. Email: the primary address only when Bitbucket marks it confirmed."""

    kind = "bitbucket"
    default_scopes: tuple[str, ...] = ("account", "email")
    default_web_url = "https://bitbucket.org"
    default_api_url = "https://api.bitbucket.org/2.0"
    authorize_path = "/site/oauth2/authorize"
    token_path = "/site/oauth2/access_token"
    # Client credentials go in HTTP Basic, as Bitbucket documents; errors are RFC 6749 JSON.
    client_auth_method = "client_secret_basic"
    refused_statuses = frozenset({400, 401})

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
