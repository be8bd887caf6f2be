"""Request-path normalisation: the path that is matched and authorised is exactly the path that is forwarded.

A proxy that matches one spelling of a path and forwards another invites
bypasses (`/public/../admin`, `/admin%2Fx`, `/%2e%2e/`). So the gateway turns
every request-target into one canonical path once, decides on that path and
forwards that same path. Spellings with more than one reasonable reading
(encoded slashes and backslashes, double encoding, Tomcat's `..;`) are refused
rather than guessed at; the caller answers 400 with the `PathError` message.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PathError", "canonical_target", "check_prefix", "prefix_matches"]

# Anything but visible ASCII (0x21-0x7e) in the raw target: controls, space, DEL, NUL, 8-bit bytes.
_INVISIBLE: Final = re.compile(rb"[^\x21-\x7e]")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
# RFC 3986 unreserved characters: their escapes mean the same as the character itself.
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes whose decoded form would change how the path splits into segments.
_REFUSED: Final = {0x2F: "an encoded '/' (%2F)", 0x5C: "an encoded '\\' (%5C)", 0x00: "an encoded NUL (%00)"}
# After one decoding by someone downstream these become '.', '/', '\' or '%'.
_DOUBLE: Final = re.compile(r"%25(?:2[5EeFf]|5[Cc])")


class PathError(ValueError):
    """A request-target that is malformed or ambiguous; the message says what is wrong (for a 400)."""


def canonical_target(target: bytes) -> tuple[str, str]:
    """(path, query) for a raw origin-form request-target.

    `path` is the canonical form to match, authorise and forward. `query` is the
    raw query including its leading "?" ("" when the target has none), so
    `path + query` is the target to send upstream; it never takes part in matching.
    """
    bad = _INVISIBLE.search(target)
    if bad is not None:
        raise PathError(
            f"byte 0x{target[bad.start()]:02x} at offset {bad.start()} is not allowed in a request target "
            "(controls, spaces and non-ASCII must be percent-encoded)"
        )
    text = target.decode("ascii")
    if not text.startswith("/"):
        raise PathError("the request target must start with '/'")
    if "#" in text:
        raise PathError("a request target cannot contain a fragment ('#')")
    path, sep, query = text.partition("?")
    if "\\" in path:
        raise PathError("a backslash is not allowed in the path")
    # Fast path: nothing to decode and no slash runs or dot segments to resolve.
    if "%" not in path and "//" not in path and "/." not in path:
        return path, sep + query
    if "%" in path:
        path = _decode_unreserved(path)
    return _resolve(path), sep + query


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, refuse ambiguous ones."""
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            raise PathError(f"malformed percent-escape '%{piece[:2]}' (a '%' must be followed by two hex digits)")
        value = int(piece[:2], 16)
        refused = _REFUSED.get(value)
        if refused is not None:
            raise PathError(f"{refused} is not allowed in the path")
        char = chr(value)
        out.append(char if char in _UNRESERVED else "%" + piece[:2].upper())
        out.append(piece[2:])
    decoded = "".join(out)
    # Checked after decoding so that "%25%32%65" is caught like "%252e".
    double = _DOUBLE.search(decoded)
    if double is not None:
        raise PathError(f"double percent-encoding ({double.group()}) is not allowed in the path")
    return decoded


def _resolve(path: str) -> str:
    """Merge slash runs and remove dot segments (RFC 3986 5.2.4) without climbing above "/"."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    trailing = False
    for segment in segments:
        trailing = segment in ("", ".", "..")
        if segment == "..":
            if not kept:
                raise PathError("'..' climbs above the root of the path")
            kept.pop()
        elif segment and segment != ".":
            if ";" in segment and segment.partition(";")[0] in (".", ".."):
                # Servlet containers read "..;x" as "..": a dot segment we would not see.
                raise PathError(f"the segment {segment!r} is a dot segment with parameters")
            kept.append(segment)
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")


def check_prefix(prefix: str) -> str:
    """`prefix` without its trailing slash ("/" stays "/") if it is canonical, else PathError.

    Rule prefixes are compared as strings with canonical paths, so they must be
    spelled exactly as `canonical_target` would spell them.
    """
    if not prefix.isascii():
        raise PathError(f"path prefix {prefix!r} must be ASCII (percent-encode anything else)")
    if "?" in prefix:
        raise PathError(f"path prefix {prefix!r} cannot contain a query ('?')")
    try:
        canonical, _ = canonical_target(prefix.encode("ascii"))
    except PathError as e:
        raise PathError(f"path prefix {prefix!r}: {e}") from None
    if canonical != prefix:
        raise PathError(f"path prefix {prefix!r} is not canonical; write it as {canonical!r}")
    return prefix[:-1] if len(prefix) > 1 and prefix.endswith("/") else prefix


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether canonical `path` lies under `prefix` on a segment boundary ("/app" matches "/app/x", not "/apple")."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")
