"""The sign-in flow's protocol part, kept apart from HTTP (gateway.signin renders it).

Flow state (PKCE verifier, nonce, where to go next) stays on the server under
the SHA-256 of `state`; the browser holds a random binding in a short-lived
`__Host-` cookie, and the callback needs both, once. So a `state` copied into
someone else's browser (login CSRF), replayed, or tampered with finds nothing.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from authlib.oauth2.rfc7636 import create_s256_code_challenge

from auth.principal import Principal
from auth.providers.base import Provider, ProviderError, Tokens
from auth.service import AuthService
from auth.store import digest

FLOW_TTL: Final = 600.0


class FlowError(Exception):
    """A sign-in that stops here: `message` for the person, `status` for the page, `event` for the log."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        next_url: str = "",
        event: str = "",
        fields: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.next_url = next_url
        self.event = event
        self.fields = dict(fields or {})


@dataclass(frozen=True, slots=True)
class Started:
    url: str  # where to send the browser
    binding: str  # the flow cookie's value


@dataclass(frozen=True, slots=True)
class Finished:
    principal: Principal
    tokens: Tokens
    next_url: str


def valid_binding(value: str) -> bool:
    return 32 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum()


async def begin(auth: AuthService, provider: Provider, redirect_uri: str, next_url: str, binding: str) -> Started:
    """State, PKCE and nonce for one sign-in; reuses the browser's binding so that tabs do not clash."""
    if not valid_binding(binding):
        binding = secrets.token_urlsafe(32)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(24)
    try:
        # OIDC providers load discovery and keys here on first use (and after an outage).
        url = await provider.authorize_url(redirect_uri, state, create_s256_code_challenge(verifier), nonce)
    except ProviderError as e:
        raise FlowError(502, f"{provider.display_name} is not reachable: {e.message}", next_url=next_url) from None
    record = {
        "provider": provider.name,
        "verifier": verifier,
        "nonce": nonce,
        "next": next_url,
        "binding": digest(binding),
    }
    await auth.kv.set("flow:" + digest(state), record, FLOW_TTL)
    return Started(url, binding)


async def finish(
    auth: AuthService, provider: Provider, redirect_uri: str, query: Mapping[str, str], binding: str
) -> Finished:
    """Checks state (once), the browser binding and the provider's answer; redeems and loads the person."""
    state = query.get("state", "")
    record = await auth.kv.take("flow:" + digest(state)) if 0 < len(state) <= 128 else None
    if record is None:
        raise FlowError(400, "This sign-in has expired or was already used. Please start again.")
    nxt = str(record.get("next", "/"))
    if not binding or not hmac.compare_digest(digest(binding), str(record.get("binding", ""))):
        raise FlowError(
            400,
            "This sign-in was started in another browser or its cookie is missing. Please start again.",
            next_url=nxt,
            event="sign-in refused: flow cookie missing or not this browser's",
        )
    if record.get("provider") != provider.name:
        raise FlowError(400, "This sign-in was started with another provider. Please start again.", next_url=nxt)
    if "error" in query:
        denied = query.get("error") == "access_denied"
        message = (
            f"You declined to sign in with {provider.display_name}."
            if denied
            else f"{provider.display_name} could not sign you in."
        )
        raise FlowError(403 if denied else 502, message, next_url=nxt)
    code = query.get("code", "")
    if not code or len(code) > 2048:
        raise FlowError(400, f"{provider.display_name} sent no authorization code.", next_url=nxt)
    try:
        tokens = await provider.redeem(code, redirect_uri, str(record["verifier"]), str(record["nonce"]))
        principal = await provider.load_user(tokens)
    except ProviderError as e:
        status = {"unavailable": 502, "denied": 403, "forbidden": 403}.get(e.kind, 400)
        raise FlowError(
            status, e.message, next_url=nxt, event="sign-in failed", fields={"kind": e.kind, "reason": e.message}
        ) from None
    if not auth.may_sign_in(principal):
        raise FlowError(
            403,
            "Your account is not a member of a group allowed to use this gateway.",
            event="sign-in refused: not in an allowed group",
            fields={"identity": principal.identity},
        )
    return Finished(principal, tokens, nxt)
