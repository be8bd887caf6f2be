"""GitLab (gitlab.com or self-managed) through its OpenID Connect endpoints.

GitLab is an OIDC issuer at its base URL (`https://gitlab.com`, or a self-managed
instance's external URL including any relative root), so the generic provider does
all the work; this class fixes the GitLab-specific choices:

- `sub` is GitLab's numeric user id (stable since GitLab 11.1), `nickname` and
  `preferred_username` are the username, which can be renamed.
- Scopes: `openid profile email`. `openid` alone releases `groups`; `email` makes
  `email` the primary address rather than the public one; nothing broader such as
  `read_user` or `read_api` is needed.
- Groups: the userinfo claim `groups` lists the *full paths* (`acme/backend`) of
  every group the user belongs to, directly or through an ancestor group. It is
  only in userinfo; the ID token carries `groups_direct` (direct memberships only),
  which we do not use, so that `load_groups` follows the provider on each refresh.
  GitLab's own document: "GitLab as OpenID Connect identity provider" (shared
  information table).
"""

from __future__ import annotations

import aiohttp

from auth.providers.oidc import OIDCProvider


class GitLabProvider(OIDCProvider):
    """A GitLab instance; groups are lower-cased full paths such as `acme/backend`."""

    kind = "gitlab"
    login_claims = ("nickname", "preferred_username")

    def __init__(
        self,
        name: str,
        display_name: str,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str,
        web_url: str = "https://gitlab.com",
        scopes: tuple[str, ...] = (),
    ) -> None:
        # GitLab's discovery names its issuer without a trailing slash.
        self.web_url = web_url.rstrip("/")
        super().__init__(
            name,
            display_name,
            http,
            issuer=self.web_url,
            client_id=client_id,
            client_secret=client_secret,
            scopes=scopes,
            groups_claim="groups",
        )
