"""Server-side sessions, and the host grants that workspace hosts use instead of them.

A session id is 256 random bits in a `__Host-` cookie on the main domain; the
store keeps it under its SHA-256. A workspace host never sees the session id:
it gets a grant, a separate random value in a cookie of its own that names the
session it was minted from and the one host it is good for. Ending the session
ends every grant at once, because each request through a grant looks the
session up again.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from auth.principal import Principal
from auth.store import KV, digest, now

# Writes of last_seen are skipped when the previous one is this recent (seconds).
TOUCH_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # SHA-256 of the cookie value; the value itself is never stored
    principal: Principal
    created: float
    last_seen: float
    groups_checked: float
    csrf: str
    # Provider tokens, sealed with AES-256-GCM (certs envelope), base64; "" if not kept.
    sealed_tokens: str = ""


def principal_to_dict(p: Principal) -> dict[str, Any]:
    return {
        "provider": p.provider,
        "user_id": p.user_id,
        "login": p.login,
        "name": p.name,
        "email": p.email,
        "avatar": p.avatar,
        "groups": sorted(p.groups),
    }


def principal_from_dict(d: dict[str, Any]) -> Principal:
    return Principal(
        provider=str(d["provider"]),
        user_id=str(d["user_id"]),
        login=str(d.get("login", "")),
        name=str(d.get("name", "")),
        email=str(d.get("email", "")),
        avatar=str(d.get("avatar", "")),
        groups=frozenset(str(g) for g in d.get("groups", ())),
    )


def _to_dict(s: Session) -> dict[str, Any]:
    return {
        "principal": principal_to_dict(s.principal),
        "created": s.created,
        "last_seen": s.last_seen,
        "groups_checked": s.groups_checked,
        "csrf": s.csrf,
        "tokens": s.sealed_tokens,
    }


def _from_dict(key: str, d: dict[str, Any]) -> Session:
    return Session(
        key=key,
        principal=principal_from_dict(d["principal"]),
        created=float(d["created"]),
        last_seen=float(d["last_seen"]),
        groups_checked=float(d["groups_checked"]),
        csrf=str(d["csrf"]),
        sealed_tokens=str(d.get("tokens", "")),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """A workspace host's cookie: good for `host` while session `session_key` lives."""

    host: str
    session_key: str


class SessionStore:
    def __init__(
        self,
        kv: KV,
        *,
        idle_timeout: float,
        lifetime: float,
        on_end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kv = kv
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        # Runs after a session is ended on purpose (caches of it must go everywhere).
        self.on_end = on_end

    async def create(self, principal: Principal, sealed_tokens: str = "") -> tuple[str, Session]:
        """A new session with a fresh id (never one the browser brought: no fixation)."""
        sid = secrets.token_urlsafe(32)
        t = now()
        session = Session(digest(sid), principal, t, t, t, secrets.token_urlsafe(24), sealed_tokens)
        await self.kv.set("session:" + session.key, _to_dict(session), self._ttl(session, t))
        return sid, session

    def _ttl(self, s: Session, t: float) -> float:
        return max(1.0, min(self.idle_timeout, s.created + self.lifetime - t))

    async def get(self, sid: str) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        return await self.get_by_key(digest(sid))

    async def get_by_key(self, key: str) -> Session | None:
        data = await self.kv.get("session:" + key)
        if data is None:
            return None
        try:
            s = _from_dict(key, data)
        except (KeyError, TypeError, ValueError):
            return None
        t = now()
        if t - s.last_seen > self.idle_timeout or t - s.created > self.lifetime:
            await self.kv.delete("session:" + key)
            return None
        if t - s.last_seen > TOUCH_EVERY:
            s = replace(s, last_seen=t)
            await self.kv.set("session:" + key, _to_dict(s), self._ttl(s, t))
        return s

    async def save(self, s: Session) -> None:
        t = now()
        await self.kv.set("session:" + s.key, _to_dict(s), self._ttl(s, t))

    async def end(self, key: str) -> None:
        await self.kv.delete("session:" + key)
        if self.on_end is not None:
            await self.on_end()

    # --- host grants ---------------------------------------------------------------
    async def grant(self, session: Session, host: str) -> str:
        value = secrets.token_urlsafe(32)
        ttl = max(1.0, session.created + self.lifetime - now())
        await self.kv.set("grant:" + digest(value), {"host": host, "session": session.key}, ttl)
        return value

    async def from_grant(self, value: str, host: str) -> Session | None:
        """The session behind a workspace host's cookie, if it is for this host and alive."""
        if not value or len(value) > 128:
            return None
        data = await self.kv.get("grant:" + digest(value))
        if data is None or data.get("host") != host:
            return None
        return await self.get_by_key(str(data.get("session", "")))
