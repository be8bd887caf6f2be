"""Personal access tokens for IDE clients and scripts.

A token reads `wsg_<id>_<secret>` and is shown once. Only its SHA-256 is
stored (the secret is 256 random bits, so a slow hash would add nothing) and
it is compared in constant time. The `<id>` part finds the record without
revealing anything; the `wsg_` prefix lets the proxy recognise its own tokens
in an Authorization header and strip them before anything is forwarded.

Stores: SQLite under the state directory by default (the event loop never
waits on it: every call runs in a thread), or the shared KV (Redis) when
`redis_url` is set so that every replica sees a revocation at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from auth.sqlite import Database
from auth.store import KV, digest, now

PREFIX: Final = "wsg_"
SCOPES: Final = frozenset({"workspace", "api", "admin"})
DEFAULT_SCOPES: Final = ("workspace", "api")
MAX_LIFETIME: Final = 366 * 86400.0
_TOKEN = re.compile(r"wsg_([a-z2-7]{16})_([A-Za-z0-9_-]{43})\Z")
# How often a token in use has its `last_used` written (and a cached one is looked up again).
USE_WRITE_EVERY: Final = 60.0


class TokenError(ValueError):
    """A token request that cannot be honoured; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    owner: str  # identity `<provider>:<id>`
    name: str
    scopes: tuple[str, ...]
    created: float
    expires: float
    last_used: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "scopes": list(self.scopes),
            "created": self.created,
            "expires": self.expires,
            "last_used": self.last_used or None,
        }


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """(id, token)."""
    tid = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(16))
    return tid, f"{PREFIX}{tid}_{secrets.token_urlsafe(32)}"


def check_request(name: str, scopes: list[str] | tuple[str, ...], lifetime: float) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise TokenError("name: expected 1 to 100 printable characters")
    if not scopes or not all(isinstance(s, str) and s in SCOPES for s in scopes):
        raise TokenError(f"scopes: expected a non-empty list drawn from {sorted(SCOPES)}")
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 60 <= lifetime <= MAX_LIFETIME:
        raise TokenError(f"expires_in: expected seconds from 60 to {int(MAX_LIFETIME)}")


class TokenStore(ABC):
    async def create(
        self, owner: str, name: str, scopes: tuple[str, ...] | list[str], lifetime: float
    ) -> tuple[str, TokenInfo]:
        """Returns the token (shown once) and its record."""
        check_request(name, scopes, lifetime)
        tid, token = new_token()
        t = now()
        info = TokenInfo(tid, owner, name, tuple(sorted(set(scopes))), t, t + lifetime)
        await self._put(info, _hash(token))
        return token, info

    async def verify(self, token: str) -> TokenInfo | None:
        """The live token's record, or None (unknown, malformed, expired or revoked)."""
        m = _TOKEN.match(token)
        if m is None:
            return None
        found = await self._get(m.group(1))
        if found is None:
            return None
        info, stored = found
        if not hmac.compare_digest(stored.encode(), _hash(token).encode()):
            return None
        t = now()
        if info.expires <= t:
            return None
        if t - info.last_used > USE_WRITE_EVERY:
            await self._used(info.id, t)
            info = replace(info, last_used=t)
        return info

    @abstractmethod
    async def _put(self, info: TokenInfo, hashed: str) -> None: ...

    @abstractmethod
    async def _get(self, tid: str) -> tuple[TokenInfo, str] | None: ...

    @abstractmethod
    async def _used(self, tid: str, when: float) -> None: ...

    @abstractmethod
    async def list(self, owner: str | None = None) -> list[TokenInfo]:
        """Tokens of `owner` (all tokens when None), newest first, expired ones included."""

    @abstractmethod
    async def revoke(self, tid: str, owner: str | None = None) -> bool:
        """Deletes a token; with `owner`, only one of theirs. True if one was deleted."""

    async def close(self) -> None:  # noqa: B027 - optional
        pass


def _info(d: dict[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=str(d["id"]),
        owner=str(d["owner"]),
        name=str(d["name"]),
        scopes=tuple(json.loads(d["scopes"]) if isinstance(d["scopes"], str) else d["scopes"]),
        created=float(d["created"]),
        expires=float(d["expires"]),
        last_used=float(d.get("last_used") or 0.0),
    )


class SQLiteTokenStore(TokenStore):
    """Tokens in the gateway's SQLite file (auth/sqlite.py), which owns the schema.

    Bearer tokens are checked on every request that carries one, so neither a new
    connection nor a new thread per query: `Database` hands each query to its one
    thread, and the event loop never waits on the disk itself. Given a path, the
    store opens (and closes) its own `Database`; given one, it shares it.
    """

    def __init__(self, db: Path | Database) -> None:
        self._owns_db = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db)
        self.path = self.db.path

    async def _run(self, sql: str, args: tuple[Any, ...] = (), *, write: bool = True) -> list[dict[str, Any]]:
        def work(db: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = db.execute(sql, args)
            rows = [dict(r) for r in cur.fetchall()]
            if not rows and cur.rowcount > 0:
                rows = [{"rowcount": cur.rowcount}]
            return rows

        return await self.db.run(work, write=write)

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    async def _put(self, info: TokenInfo, hashed: str) -> None:
        await self._run(
            "INSERT INTO tokens (id, owner, name, scopes, created, expires, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (info.id, info.owner, info.name, json.dumps(list(info.scopes)), info.created, info.expires, hashed),
        )

    async def _get(self, tid: str) -> tuple[TokenInfo, str] | None:
        rows = await self._run("SELECT * FROM tokens WHERE id = ?", (tid,), write=False)
        return (_info(rows[0]), str(rows[0]["hash"])) if rows else None

    async def _used(self, tid: str, when: float) -> None:
        await self._run("UPDATE tokens SET last_used = ? WHERE id = ?", (when, tid))

    async def list(self, owner: str | None = None) -> list[TokenInfo]:
        if owner is None:
            rows = await self._run("SELECT * FROM tokens ORDER BY created DESC", write=False)
        else:
            rows = await self._run("SELECT * FROM tokens WHERE owner = ? ORDER BY created DESC", (owner,), write=False)
        return [_info(r) for r in rows]

    async def revoke(self, tid: str, owner: str | None = None) -> bool:
        if owner is None:
            rows = await self._run("DELETE FROM tokens WHERE id = ?", (tid,))
        else:
            rows = await self._run("DELETE FROM tokens WHERE id = ? AND owner = ?", (tid, owner))
        return bool(rows)


class KVTokenStore(TokenStore):
    """Tokens in the shared store (Redis), for several replicas."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    async def _index(self, owner: str) -> list[str]:
        data = await self.kv.get("tokens:" + digest(owner))
        return [str(i) for i in data.get("ids", ())] if data else []

    async def _put(self, info: TokenInfo, hashed: str) -> None:
        record = {**info.public(), "last_used": 0.0, "hash": hashed}
        ttl = info.expires - info.created + 86400
        await self.kv.set("token:" + info.id, record, ttl)
        ids = await self._index(info.owner)
        await self.kv.set("tokens:" + digest(info.owner), {"owner": info.owner, "ids": [*ids, info.id]}, MAX_LIFETIME)
        await self._remember_owner(info.owner)

    async def _remember_owner(self, owner: str) -> None:
        data = await self.kv.get("token-owners") or {"owners": []}
        owners = [str(o) for o in data.get("owners", ())]
        if owner not in owners:
            await self.kv.set("token-owners", {"owners": [*owners, owner]}, MAX_LIFETIME)

    async def _get(self, tid: str) -> tuple[TokenInfo, str] | None:
        data = await self.kv.get("token:" + tid)
        return (_info(data), str(data["hash"])) if data else None

    async def _used(self, tid: str, when: float) -> None:
        data = await self.kv.get("token:" + tid)
        if data is not None:
            data["last_used"] = when
            await self.kv.set("token:" + tid, data, max(1.0, float(data["expires"]) - when + 86400))

    async def list(self, owner: str | None = None) -> list[TokenInfo]:
        if owner is None:
            data = await self.kv.get("token-owners") or {}
            owners = [str(o) for o in data.get("owners", ())]
        else:
            owners = [owner]
        out: list[TokenInfo] = []
        for o in owners:
            for tid in await self._index(o):
                found = await self._get(tid)
                if found is not None:
                    out.append(found[0])
        return sorted(out, key=lambda i: i.created, reverse=True)

    async def revoke(self, tid: str, owner: str | None = None) -> bool:
        found = await self._get(tid)
        if found is None or (owner is not None and found[0].owner != owner):
            return False
        return await self.kv.delete("token:" + tid)
