"""Single-use tickets that carry a signed-in person from the main domain to one workspace host.

A ticket is `<id>.<mac>`: 128 random bits plus an HMAC-SHA256 over the id and
the host it was minted for, so a ticket shown to any other host fails before
the store is asked. The record (host, session, path to return to) lives in the
store for at most `TICKET_TTL` seconds and is taken atomically when redeemed:
a replayed ticket, on this worker or another replica, finds nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from auth.store import KV, digest, now

TICKET_TTL: Final = 60.0


@dataclass(frozen=True, slots=True)
class Ticket:
    host: str
    session_key: str
    path: str
    # SHA-256 of the nonce in the browser's `__Host-wsgate-hflow` cookie on `host`.
    bind: str


class Tickets:
    def __init__(self, kv: KV, key: bytes, ttl: float = TICKET_TTL) -> None:
        self.kv = kv
        self._key = key
        self.ttl = min(ttl, TICKET_TTL)

    def _mac(self, tid: str, host: str) -> str:
        mac = hmac.new(self._key, f"ticket\0{tid}\0{host}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def mint(self, host: str, session_key: str, path: str, bind: str = "") -> str:
        tid = secrets.token_urlsafe(16)
        record = {"host": host, "session": session_key, "path": path, "bind": bind, "exp": now() + self.ttl}
        await self.kv.set("ticket:" + digest(tid), record, self.ttl)
        return f"{tid}.{self._mac(tid, host)}"

    async def redeem(self, ticket: str, host: str) -> Ticket | None:
        """The ticket's record if it is genuine, for `host`, unexpired and not used before."""
        if not ticket or len(ticket) > 128 or ticket.count(".") != 1:
            return None
        tid, mac = ticket.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(tid, host).encode()):
            return None
        record = await self.kv.take("ticket:" + digest(tid))
        if record is None or record.get("host") != host or float(record.get("exp", 0)) < now():
            return None
        return Ticket(host, str(record.get("session", "")), str(record.get("path", "/")), str(record.get("bind", "")))
