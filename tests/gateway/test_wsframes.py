"""Frame boundaries on a relayed WebSocket byte stream, split at every possible point."""

from __future__ import annotations

import os
import struct

import pytest

from gateway.wsframes import FrameCursor, close_frame


def frame(payload: bytes, *, masked: bool, opcode: int = 2) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if masked:
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


@pytest.mark.parametrize("masked", [False, True])
def test_boundaries_at_every_split(masked: bool) -> None:
    stream = b"".join(frame(os.urandom(n), masked=masked) for n in (0, 1, 125, 126, 300, 65535, 65536, 70000))
    ends = []
    pos = 0
    for n in (0, 1, 125, 126, 300, 65535, 65536, 70000):
        pos += len(frame(b"x" * n, masked=masked))
        ends.append(pos)
    # Feed in pieces of awkward sizes; the cursor is at a boundary exactly at frame ends.
    for step in (1, 2, 3, 7, 13, 4096):
        cur = FrameCursor()
        at = 0
        while at < len(stream):
            piece = stream[at : at + step]
            cur.feed(piece)
            at += len(piece)
            assert cur.at_boundary == (at in ends), f"step {step}, position {at}"


def test_close_frames() -> None:
    f = close_frame(1001, "going away", masked=False)
    assert f[0] == 0x88 and f[1] == 12 and struct.unpack("!H", f[2:4])[0] == 1001 and f[4:] == b"going away"
    m = close_frame(1001, "bye", masked=True)
    assert m[0] == 0x88 and m[1] == 0x80 | 5
    key, body = m[2:6], m[6:]
    plain = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    assert struct.unpack("!H", plain[:2])[0] == 1001 and plain[2:] == b"bye"
    cur = FrameCursor()
    cur.feed(m)
    assert cur.at_boundary
