"""The auth room's front door: sessions, tickets, tokens, providers and the policy, together.

The gateway builds one `AuthService` per worker. Everything it answers is
about identity (who is this, may they use that); HTTP details (cookie
headers, redirects, status codes) stay in the gateway.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import aiohttp

from auth.policy import Policy
from auth.principal import Principal
from auth.providers.base import Provider, ProviderError, Tokens
from auth.revocation import Epoch, SessionCache, TokenCache
from auth.sessions import TOUCH_EVERY, Session, SessionStore, principal_from_dict, principal_to_dict
from auth.store import KV, now
from auth.tickets import Tickets
from auth.tokens import USE_WRITE_EVERY, TokenInfo, TokenStore
from certs.envelope import EnvelopeError, Keyring

log = logging.getLogger("wsgate.auth")

# Every gateway cookie's name starts with this: the proxy never forwards one to an upstream,
# and no upstream but the gateway's own app may set or clear one.
COOKIE_PREFIX = "__Host-wsgate"
SESSION_COOKIE = COOKIE_PREFIX + "-session"
FLOW_COOKIE = COOKIE_PREFIX + "-flow"
HOST_COOKIE = COOKIE_PREFIX + "-host"
# On a workspace host while its sign-in is under way: binds the ticket to this browser.
HANDOFF_COOKIE = COOKIE_PREFIX + "-hflow"
HANDOFF_TTL = 600.0


@dataclass(frozen=True, slots=True)
class Settings:
    idle_timeout: float
    lifetime: float
    membership_ttl: float
    allowed_groups: Mapping[str, frozenset[str]]  # provider name -> groups allowed to sign in


class AuthService:
    def __init__(
        self,
        kv: KV,
        tokens: TokenStore,
        keyring: Keyring,
        hmac_key: bytes,
        providers: Mapping[str, Provider],
        policy: Policy,
        settings: Settings,
        http: list[aiohttp.ClientSession] | None = None,
    ) -> None:
        self.http = http or []
        self.kv = kv
        self.sessions = SessionStore(
            kv, idle_timeout=settings.idle_timeout, lifetime=settings.lifetime, on_end=self.revoked
        )
        self.epoch = Epoch()
        self.host_cache = SessionCache(
            self.epoch,
            idle_timeout=settings.idle_timeout,
            lifetime=settings.lifetime,
            membership_ttl=settings.membership_ttl,
            touch_every=TOUCH_EVERY,
        )
        self.token_cache = TokenCache(self.epoch)
        # Tells the other replicas that something was revoked (the gateway wires its change channel).
        self.announce: Callable[[], Awaitable[None]] | None = None
        self.tickets = Tickets(kv, hmac_key)
        self.tokens = tokens
        self.keyring = keyring
        self.providers = dict(providers)
        self.policy = policy
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return bool(self.providers)

    # --- provider tokens at rest -----------------------------------------------------
    def seal_tokens(self, identity: str, tokens: Tokens) -> str:
        data = json.dumps({"a": tokens.access_token, "r": tokens.refresh_token, "t": tokens.token_type}).encode()
        return base64.b64encode(self.keyring.seal(data, aad=identity.encode())).decode()

    def open_tokens(self, identity: str, sealed: str) -> Tokens | None:
        if not sealed:
            return None
        try:
            data = json.loads(self.keyring.open(base64.b64decode(sealed), aad=identity.encode()))
        except (EnvelopeError, ValueError):
            return None
        return Tokens(access_token=data["a"], refresh_token=data.get("r", ""), token_type=data.get("t", "bearer"))

    # --- sign-in -------------------------------------------------------------------------
    def may_sign_in(self, principal: Principal) -> bool:
        allowed = self.settings.allowed_groups.get(principal.provider)
        return not allowed or not allowed.isdisjoint(principal.groups)

    async def sign_in(self, principal: Principal, tokens: Tokens, old_sid: str = "") -> tuple[str, Session]:
        """A new session (the old one, if any, ends: ids never survive a sign-in)."""
        if old_sid:
            old = await self.sessions.get(old_sid)
            if old is not None:
                await self.sessions.end(old.key)
        sealed = self.seal_tokens(principal.identity, tokens) if tokens.access_token else ""
        sid, session = await self.sessions.create(principal, sealed)
        await self._remember(principal, now(), sealed)
        return sid, session

    async def _remember(self, principal: Principal, groups_checked: float, sealed: str) -> None:
        # The latest known profile of each person (and their sealed provider tokens, to refresh
        # it), for requests made with their personal access tokens.
        await self.kv.set(
            "user:" + principal.identity,
            {"principal": principal_to_dict(principal), "groups_checked": groups_checked, "tokens": sealed},
            self.settings.lifetime,
        )

    async def _load_groups(self, p: Principal, sealed: str) -> frozenset[str] | None:
        """Fresh groups from the provider; None when it cannot tell (fail closed)."""
        provider = self.providers.get(p.provider)
        tokens = self.open_tokens(p.identity, sealed)
        if provider is None or tokens is None:
            return frozenset()
        try:
            return await provider.load_groups(tokens)
        except ProviderError as e:
            log.warning("membership refresh failed for %s: %s", p.identity, e.message)
            return None

    # --- who is this ---------------------------------------------------------------------
    async def session(self, sid: str) -> Session | None:
        s = await self.sessions.get(sid)
        return await self.fresh(s) if s is not None else None

    async def host_session(self, grant: str, host: str) -> Session | None:
        epoch = self.epoch.current()  # before the lookup: a revocation during it voids the result
        s = await self.sessions.from_grant(grant, host)
        s = await self.fresh(s) if s is not None else None
        if s is not None:
            self.host_cache.put(grant, host, s, epoch)
        return s

    async def revoked(self) -> None:
        """Something that granted access was taken back: no worker or replica may use a cached answer."""
        self.epoch.advance()
        if self.announce is not None:
            await self.announce()

    async def fresh(self, s: Session) -> Session | None:
        """The session with group membership no older than the TTL (empty when it cannot be refreshed).

        None when the refresh shows the person may no longer sign in at all (allowed_groups).
        """
        if now() - s.groups_checked <= self.settings.membership_ttl:
            return s
        p = s.principal
        groups = await self._load_groups(p, s.sealed_tokens)
        if groups is None:
            if self.settings.allowed_groups.get(p.provider):
                # Whether they may use the gateway at all is unknown: not until the provider answers.
                return None
            # Fail closed: what the groups gave is withheld until the provider answers again.
            return replace(s, principal=replace(p, groups=frozenset()))
        s = replace(s, principal=replace(p, groups=groups), groups_checked=now())
        if not self.may_sign_in(s.principal):
            # Removed from every group allowed to sign in: the session ends with the membership.
            log.warning("session ended for %s: no longer in an allowed group", p.identity)
            await self.sessions.end(s.key)
            return None
        await self.sessions.save(s)
        await self._remember(s.principal, s.groups_checked, s.sealed_tokens)
        return s

    async def _token_owner(self, info: TokenInfo) -> tuple[Principal, float]:
        """The owner of a token as last seen (groups only while they are fresh), and until when
        that may be used without asking again."""
        ttl = self.settings.membership_ttl
        data = await self.kv.get("user:" + info.owner)
        if data is None:
            # Never signed in here (a token made by an operator): no groups to go stale, but a
            # sign-in may yet record some.
            provider, _, uid = info.owner.partition(":")
            return Principal(provider, uid, ""), now() + ttl
        p = principal_from_dict(data["principal"])
        checked = float(data.get("groups_checked", 0))
        if now() - checked > ttl:
            sealed = str(data.get("tokens", ""))
            groups = await self._load_groups(p, sealed)
            p = replace(p, groups=groups or frozenset())
            if groups is None:
                return p, 0.0  # the provider could not tell: fail closed now, ask again next time
            checked = now()
            await self._remember(p, checked, sealed)
        return p, checked + ttl

    async def bearer(self, token: str, scope: str) -> tuple[TokenInfo, Principal] | None:
        """The token's record and owner when it is live, has `scope` and its owner may sign in."""
        found = self.token_cache.get(token)
        if found is None:
            epoch = self.epoch.current()  # before the lookup: a revocation during it voids the result
            info = await self.tokens.verify(token)
            if info is None or scope not in info.scopes:
                return None
            principal, fresh_until = await self._token_owner(info)
            if not self.may_sign_in(principal):
                # Tokens end with the membership that allowed their owner in (allowed_groups).
                return None
            found = (info, principal)
            self.token_cache.put(token, info, principal, min(info.expires, info.last_used + USE_WRITE_EVERY,
                                                             fresh_until), epoch)
        return found if scope in found[0].scopes else None

    async def close(self) -> None:
        await self.kv.close()
        await self.tokens.close()
        for session in self.http:
            await session.close()


__all__ = ["FLOW_COOKIE", "HANDOFF_COOKIE", "HOST_COOKIE", "SESSION_COOKIE", "AuthService", "Settings"]
