"""GitHub and GitHub Enterprise Server as an identity provider (OAuth app, PKCE S256)."""

from __future__ import annotations

import logging
from typing import Any

from auth.principal import Principal
from auth.providers.base import Tokens
from auth.providers.oauth import (
    USER_AGENT,
    OAuth2Provider,
    gather_all,
    next_page_url,
    optional_str,
    require_str,
    unavailable,
)

log = logging.getLogger(__name__)


# --- GitHub ---------------------------------------------------------------------


class GitHubProvider(OAuth2Provider):
    """github.com or a GitHub Enterprise Server (other `web_url` and `api_url`).

    Groups are organisation logins and `org/team-slug`, lower-cased. The email is
    the primary address only when GitHub marks it verified: an unverified address
    proves nothing about who signed in.
    """

    kind = "github"
    default_scopes: tuple[str, ...] = ("read:user", "user:email", "read:org")
    default_web_url = "https://github.com"
    default_api_url = "https://api.github.com"
    authorize_path = "/login/oauth/authorize"
    token_path = "/login/oauth/access_token"
    # GitHub documents the client credentials as form fields.
    client_auth_method = "client_secret_post"

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
