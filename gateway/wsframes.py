"""WebSocket frame boundaries, tracked on a relayed byte stream.

The proxy relays WebSocket bytes untouched (frames, masks, extensions pass
end to end). It only needs to know where frames end, so that on shutdown or
revocation it can slip a close frame in between two frames instead of
corrupting one.
"""

from __future__ import annotations

import os
import struct
from typing import Final

GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008


class FrameCursor:
    """Follows frame headers through a stream without copying payloads."""

    __slots__ = ("hdr", "need")

    def __init__(self) -> None:
        self.need = 0  # payload bytes left in the current frame
        self.hdr = b""  # a header split across reads

    @property
    def at_boundary(self) -> bool:
        return self.need == 0 and not self.hdr

    def feed(self, data: bytes) -> None:
        i = 0
        n = len(data)
        need = self.need
        hdr = self.hdr
        while i < n:
            if need:
                take = n - i if need > n - i else need
                need -= take
                i += take
                continue
            # A header is at most 14 bytes: one split across reads is joined with enough of this read
            # to hold it whole; otherwise it is read where it lies, without a copy.
            if hdr:
                buf = hdr + data[i : i + 14]
                at = 0
            else:
                buf = data
                at = i
            avail = len(buf) - at
            if avail < 2:
                hdr = buf[at:]
                break
            b1 = buf[at + 1]
            length = b1 & 0x7F
            ext = 0 if length < 126 else (2 if length == 126 else 8)
            size = 2 + ext + (4 if b1 & 0x80 else 0)
            if avail < size:
                hdr = buf[at:]  # all that is left of this read: less than a header
                break
            if ext == 2:
                length = struct.unpack_from("!H", buf, at + 2)[0]
            elif ext == 8:
                length = struct.unpack_from("!Q", buf, at + 2)[0]
            i += size - len(hdr)
            hdr = b""
            need = length
        self.need = need
        self.hdr = hdr


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A close frame; frames toward a server (upstream) must be masked (RFC 6455 5.3)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + key + body
