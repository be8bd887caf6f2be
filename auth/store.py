"""Where short-lived auth state lives: aiocache, in memory by default or in Redis.

Keys are namespaced `wsgate:` and never contain a secret a client holds:
sessions, host grants and tickets are stored under a SHA-256 of the value in
the cookie or URL, so reading the store (a Redis dump, a backup) yields
nothing that signs anyone in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aiocache import Cache
from aiocache.serializers import JsonSerializer

from certs._fs import private_dir, write_atomic


class StoreError(Exception):
    """The state store cannot be reached or answered nonsense."""


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class KV:
    """The few operations auth needs, over an aiocache backend.

    `take` is an atomic get-and-delete, which is what makes tickets single-use
    across workers and replicas: of two concurrent redeemers, only one sees its
    DEL remove the key.
    """

    def __init__(self, redis_url: str = "") -> None:
        self.url = redis_url
        if redis_url:
            parts = urlsplit(redis_url)
            db = parts.path.lstrip("/") or "0"
            self._cache: Any = Cache(
                Cache.REDIS,
                endpoint=parts.hostname or "127.0.0.1",
                port=parts.port or 6379,
                db=int(db),
                password=parts.password,
                namespace="wsgate:",
                serializer=JsonSerializer(),
                create_connection_timeout=2.0,
                ssl=parts.scheme == "rediss",
                timeout=5,
            )
        else:
            self._cache = Cache(Cache.MEMORY, namespace="wsgate:", serializer=JsonSerializer(), timeout=None)

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = await self._cache.get(key)
        except Exception as e:  # redis errors, timeouts
            raise StoreError(f"state store: {type(e).__name__}") from e
        return cast(dict[str, Any], value) if isinstance(value, dict) else None

    async def set(self, key: str, value: dict[str, Any], ttl: float) -> None:
        try:
            await self._cache.set(key, value, ttl=_ttl(ttl))
        except Exception as e:
            raise StoreError(f"state store: {type(e).__name__}") from e

    async def add(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Set only if absent; False when the key exists."""
        try:
            await self._cache.add(key, value, ttl=_ttl(ttl))
        except ValueError:
            return False
        except Exception as e:
            raise StoreError(f"state store: {type(e).__name__}") from e
        return True

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._cache.delete(key))
        except Exception as e:
            raise StoreError(f"state store: {type(e).__name__}") from e

    async def take(self, key: str) -> dict[str, Any] | None:
        value = await self.get(key)
        if value is None or not await self.delete(key):
            return None
        return value

    async def ping(self) -> None:
        await self.get("ping")

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection is not worth a traceback
            await self._cache.close()


def _ttl(seconds: float) -> int | float:
    # Redis takes whole seconds (EX) or milliseconds (PX for floats); keep at least 1 s.
    return max(1, int(seconds)) if seconds >= 1 else 1


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """A random key kept in a 0600 file; created once, shared by every worker."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        private_dir(path.parent)
        with contextlib.suppress(FileExistsError):  # another process won the race
            write_atomic(path, os.urandom(size), 0o600, overwrite=False)
        data = path.read_bytes()
    if len(data) < size:
        raise ValueError(f"{path}: expected a {size}-byte key, found {len(data)} bytes")
    return data


def now() -> float:
    return time.time()
