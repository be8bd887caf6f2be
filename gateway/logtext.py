"""Build output made safe to show: valid UTF-8 text with no terminal control sequences.

A log is written by code the gateway does not trust. Served raw, its escape
sequences would drive the terminal of whoever runs `curl` on it (rewriting
the title, hiding lines, OSC 8 links) and its invalid bytes would make
browsers guess. So the stream is decoded incrementally (invalid bytes become
U+FFFD), ANSI CSI/OSC/other escape sequences are dropped, every other control
character but tab and newline becomes U+FFFD, and CR / CRLF become newlines.
Chunks may split a sequence or a character anywhere; state carries over, and
an unterminated sequence is given up after a bound so memory stays small.
"""

from __future__ import annotations

import codecs
from typing import Final

REPLACEMENT: Final = "\ufffd"
_MAX_SEQUENCE = 256
_ESC = "\x1b"
_BEL = "\x07"
_ALLOWED = frozenset("\t\n")


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or o in (0x2028, 0x2029)


class LogText:
    """feed(bytes) -> str, then finish() -> str for whatever was pending."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # an escape sequence (or a CR) cut by the end of a chunk
        self.ends_with_newline = True

    def feed(self, data: bytes) -> str:
        return self._clean(self._decoder.decode(data))

    def finish(self) -> str:
        text = self._clean(self._decoder.decode(b"", final=True))
        rest, self._pending = self._pending, ""
        if rest == "\r":
            text += "\n"
        if text:
            self.ends_with_newline = text.endswith("\n")
        return text

    def _clean(self, text: str) -> str:
        text = self._pending + text
        self._pending = ""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == _ESC:
                end = _sequence_end(text, i)
                if end is None:
                    if n - i > _MAX_SEQUENCE:
                        out.append(REPLACEMENT)  # never terminated: not a sequence, drop the ESC only
                        i += 1
                        continue
                    self._pending = text[i:]
                    break
                i = end
                continue
            if ch == "\r":
                if i + 1 == n:
                    self._pending = "\r"
                    break
                out.append("\n")
                i += 2 if text[i + 1] == "\n" else 1
                continue
            if ch in _ALLOWED or not _is_control(ch):
                out.append(ch)
            elif ch == "\x9b":  # the 8-bit CSI: drop the sequence it starts, like ESC [
                end = _csi_end(text, i + 1)
                if end is None and n - i <= _MAX_SEQUENCE:
                    self._pending = text[i:]
                    break
                if end is not None:
                    i = end
                    continue
                out.append(REPLACEMENT)
            else:
                out.append(REPLACEMENT)
            i += 1
        result = "".join(out)
        if result:
            self.ends_with_newline = result.endswith("\n")
        return result


def _csi_end(text: str, j: int) -> int | None:
    """Index after a CSI's final byte (parameters 0x30-0x3F, intermediates 0x20-0x2F, final 0x40-0x7E)."""
    n = len(text)
    while j < n and 0x20 <= ord(text[j]) <= 0x3F:
        j += 1
    if j >= n:
        return None
    return j + 1 if 0x40 <= ord(text[j]) <= 0x7E else j


def _sequence_end(text: str, i: int) -> int | None:
    """Index just after the escape sequence starting at text[i] == ESC; None if it is cut off."""
    n = len(text)
    if i + 1 >= n:
        return None
    kind = text[i + 1]
    if kind == "[":
        return _csi_end(text, i + 2)
    if kind in "]PX^_":
        # OSC / DCS / SOS / PM / APC: a string ended by BEL or ST (ESC \).
        j = i + 2
        while j < n:
            if text[j] == _BEL:
                return j + 1
            if text[j] == _ESC:
                if j + 1 >= n:
                    return None
                return j + 2 if text[j + 1] == "\\" else j
            j += 1
        return None
    if 0x20 <= ord(kind) <= 0x2F:
        # nF: intermediates then one final byte.
        j = i + 1
        while j < n and 0x20 <= ord(text[j]) <= 0x2F:
            j += 1
        return None if j >= n else j + 1
    # Two-character sequences (ESC c, ESC 7, ...); a control after ESC is kept for the next round.
    return i + 2 if 0x30 <= ord(kind) <= 0x7E else i + 1
