"""The interface every identity provider fills (one file per provider, as oauth2-proxy does).

The sign-in flow in `auth.flow` owns state, PKCE and nonce generation and the
binding to the browser; a provider only knows its own URLs and API shapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from auth.principal import Principal


class ProviderError(Exception):
    """A sign-in that cannot finish; `message` is safe to show the person.

    `kind` is one of "denied" (the person or provider said no), "bad_code" (the
    code or token was refused or the ID token failed validation), "unavailable"
    (network error, timeout, 5xx or malformed answer) and "forbidden" (signed in,
    but not allowed to use this gateway).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Tokens:
    """What a provider's token endpoint returned (kept encrypted, if at all)."""

    access_token: str
    token_type: str = "bearer"
    refresh_token: str = ""
    expires_at: float = 0.0  # epoch seconds, 0 = unknown
    # Validated ID token claims (OIDC providers only).
    id_claims: dict[str, Any] = field(default_factory=dict)


class Provider(ABC):
    """One configured identity provider.

    `name` is the configured name (also the identity prefix and the path segment in
    `/auth/login/<name>`), `kind` the implementation ("github", "gitlab", ...),
    `display_name` what the sign-in page shows.
    """

    kind: str = ""

    def __init__(self, name: str, display_name: str, http: aiohttp.ClientSession) -> None:
        self.name = name
        self.display_name = display_name
        self.http = http

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Loads what the provider needs before its first sign-in (OIDC discovery, JWKS)."""

    @abstractmethod
    async def authorize_url(self, redirect_uri: str, state: str, code_challenge: str, nonce: str) -> str:
        """The URL to send the browser to; PKCE is S256 with `code_challenge`."""

    @abstractmethod
    async def redeem(self, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Tokens:
        """Exchanges an authorization code; OIDC providers validate the ID token here."""

    @abstractmethod
    async def load_user(self, tokens: Tokens) -> Principal:
        """The person behind `tokens`, groups included."""

    @abstractmethod
    async def load_groups(self, tokens: Tokens) -> frozenset[str]:
        """Organisations/groups/workspaces, lower-cased, for refreshing membership."""
