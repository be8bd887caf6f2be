"""The development sign-in: pick a user name, no OAuth app needed.

For `make run` on a fresh machine only. The gateway enables it solely on an
explicit setting, refuses it unless it listens on loopback, and logs a loud
warning (see gateway.wiring). The form posts back through the same callback
as every provider, so state and its cookie are checked exactly as for real
sign-ins (no login CSRF).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from auth.principal import Principal
from auth.providers.base import Provider, ProviderError, Tokens

LOGIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,37}[a-z0-9])?\Z")
FORM_PATH = "/auth/dev"


class DevProvider(Provider):
    kind = "dev"

    async def authorize_url(self, redirect_uri: str, state: str, code_challenge: str, nonce: str) -> str:
        return FORM_PATH + "?" + urlencode({"state": state})

    async def redeem(self, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Tokens:
        login = code.strip().lower()
        if not LOGIN.match(login):
            raise ProviderError("bad_code", "A user name is 1 to 39 letters, digits or dashes.")
        return Tokens(access_token=login)

    async def load_user(self, tokens: Tokens) -> Principal:
        login = tokens.access_token
        return Principal(self.name, login, login, name=login)

    async def load_groups(self, tokens: Tokens) -> frozenset[str]:
        return frozenset()
