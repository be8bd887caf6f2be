"""Sessions checked on every request without a store round trip, and revocation that is seen at once.

A workspace request carries a host grant; looking it up means two store reads
(grant, then session), which in Redis are two network round trips and a task
switch per request. `SessionCache` keeps what the last full lookup found, but
only while three things hold:

- the session's own clocks allow it: its idle timeout and lifetime, its group
  membership within `membership_ttl`, and its `last_seen` recent enough that
  the store still gets touched (`SessionStore` does that on the full path);
- the revocation epoch is the one read *before* that lookup began. Ending a
  session (sign-out, membership lost, a new sign-in replacing it) or revoking
  a token writes a new epoch, which empties every cache at once;
- for replicas on other machines, the change channel is connected: a gateway
  that might have missed another replica's revocation does not trust its cache.

The epoch is 8 bytes of memory shared by the worker processes of one gateway
(mapped before they fork), so a revocation in one worker is seen by the next
request in every other; replicas on other machines hear it on the Redis change
channel and write a new epoch of their own.
"""

from __future__ import annotations

import mmap
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from auth.sessions import Session

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


class SessionCache:
    """Host grant -> the session it led to, while the rules in the module docstring hold."""

    __slots__ = ("_entries", "epoch", "idle_timeout", "lifetime", "live", "membership_ttl", "touch_every")

    def __init__(
        self,
        epoch: Epoch,
        *,
        idle_timeout: float,
        lifetime: float,
        membership_ttl: float,
        touch_every: float,
    ) -> None:
        self.epoch = epoch
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.membership_ttl = membership_ttl
        self.touch_every = touch_every
        # Whether revocations from other replicas are being heard (set by the gateway's wiring
        # when there are other replicas; None: there is no one else to hear).
        self.live: Callable[[], bool] | None = None
        self._entries: dict[str, tuple[Session, str, float, int]] = {}

    def get(self, grant: str, host: str) -> Session | None:
        entry = self._entries.get(grant)
        if entry is None:
            return None
        session, for_host, until, epoch = entry
        if for_host != host:
            return None
        live = self.live
        if epoch != self.epoch.current() or time.time() >= until or (live is not None and not live()):
            del self._entries[grant]
            return None
        return session

    def put(self, grant: str, host: str, session: Session, epoch: int) -> None:
        """Remembers a lookup that began under `epoch` (read before the store was asked)."""
        if epoch != self.epoch.current():
            return  # something was revoked while the lookup ran: it may be stale already
        until = min(
            session.last_seen + self.touch_every,
            session.last_seen + self.idle_timeout,
            session.created + self.lifetime,
            session.groups_checked + self.membership_ttl,
        )
        if until <= time.time():
            return
        entries = self._entries
        if grant not in entries and len(entries) >= MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[grant] = (session, host, until, epoch)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
