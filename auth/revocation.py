"""Sessions and tokens checked on every request without a store round trip, and revocation seen at once.

A workspace request carries a host grant or a bearer token; looking either up
means two store reads (grant then session, or token then its owner), which in
Redis are two network round trips, in SQLite two trips to the database thread,
and a task switch per request. `SessionCache` and `TokenCache` keep what the
last full lookup found, but only while three things hold:

- the entry's own clocks allow it: a session's idle timeout and lifetime, a
  token's expiry, the owner's group membership within `membership_ttl`, and
  `last_seen` / `last_used` recent enough that the store still gets touched
  (the full path does that);
- the revocation epoch is the one read *before* that lookup began. Ending a
  session (sign-out, membership lost, a new sign-in replacing it) or revoking
  a token writes a new epoch, which empties every cache at once;
- for replicas on other machines, the change channel is connected: a gateway
  that might have missed another replica's revocation does not trust its cache.

The epoch is 8 bytes of memory shared by the worker processes of one gateway
(mapped before they fork), so a revocation in one worker is seen by the next
request in every other; replicas on other machines hear it on the Redis change
channel and write a new epoch of their own. `wsgate tokens revoke`, a process
of its own on the store, moves the store's revocation generation, which every
worker polls (or, with Redis, hears at once).
"""

from __future__ import annotations

import mmap
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from auth.principal import Principal
    from auth.sessions import Session
    from auth.tokens import TokenInfo

V = TypeVar("V")

# Entries kept per worker; beyond this the oldest goes (a miss costs one store lookup).
MAX_ENTRIES: Final = 50_000
# The change-channel kind that carries revocations between replicas.
REVOCATION_KIND: Final = "revocations"

_shared: mmap.mmap | None = None


def share_between_workers() -> None:
    """Maps the epoch shared by every process forked after this call (the gateway's workers)."""
    global _shared
    if _shared is None:
        _shared = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


class Epoch:
    """A value that changes whenever something that granted access is taken back."""

    __slots__ = ("_cell", "_mem")

    def __init__(self) -> None:
        self._mem = _shared if _shared is not None else mmap.mmap(-1, mmap.PAGESIZE)
        # An aligned 8-byte cell: reads and writes of it are single loads and stores.
        self._cell = memoryview(self._mem).cast("Q")

    def current(self) -> int:
        return self._cell[0]

    def advance(self) -> None:
        """A fresh random value rather than an increment: two processes writing at once cannot
        land on a value a cache entry was made under."""
        value = self._cell[0]
        while (new := secrets.randbits(64)) == value:
            pass
        self._cell[0] = new


class _Cached(Generic[V]):
    """Key -> value, each until its own deadline and only under the epoch its lookup began in."""

    __slots__ = ("_entries", "epoch", "live")

    def __init__(self, epoch: Epoch) -> None:
        self.epoch = epoch
        # Whether revocations from other replicas are being heard (set by the gateway's wiring
        # when there are other replicas; None: there is no one else to hear).
        self.live: Callable[[], bool] | None = None
        self._entries: dict[str, tuple[V, float, int]] = {}

    def _get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, until, epoch = entry
        live = self.live
        if epoch != self.epoch.current() or time.time() >= until or (live is not None and not live()):
            del self._entries[key]
            return None
        return value

    def _put(self, key: str, value: V, until: float, epoch: int) -> None:
        if epoch != self.epoch.current():
            return  # something was revoked while the lookup ran: it may be stale already
        if until <= time.time():
            return
        entries = self._entries
        if key not in entries and len(entries) >= MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[key] = (value, until, epoch)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class SessionCache(_Cached[tuple["Session", str]]):
    """Host grant -> the session it led to, while the rules in the module docstring hold."""

    __slots__ = ("idle_timeout", "lifetime", "membership_ttl", "touch_every")

    def __init__(
        self,
        epoch: Epoch,
        *,
        idle_timeout: float,
        lifetime: float,
        membership_ttl: float,
        touch_every: float,
    ) -> None:
        super().__init__(epoch)
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.membership_ttl = membership_ttl
        self.touch_every = touch_every

    def get(self, grant: str, host: str) -> Session | None:
        found = self._get(grant)
        if found is None or found[1] != host:
            return None
        return found[0]

    def put(self, grant: str, host: str, session: Session, epoch: int) -> None:
        """Remembers a lookup that began under `epoch` (read before the store was asked)."""
        until = min(
            session.last_seen + self.touch_every,
            session.last_seen + self.idle_timeout,
            session.created + self.lifetime,
            session.groups_checked + self.membership_ttl,
        )
        self._put(grant, (session, host), until, epoch)


class TokenCache(_Cached[tuple["TokenInfo", "Principal"]]):
    """Bearer token -> its record and its owner, for requests that present one again.

    The caller gives each entry its deadline: the token's expiry, when its `last_used`
    is next due in the store, and how long its owner's groups stay fresh.
    """

    __slots__ = ()

    def get(self, token: str) -> tuple[TokenInfo, Principal] | None:
        return self._get(token)

    def put(self, token: str, info: TokenInfo, principal: Principal, until: float, epoch: int) -> None:
        """Remembers a lookup that began under `epoch` (read before the store was asked)."""
        self._put(token, (info, principal), until, epoch)
