"""HTTP/1.1 message rules for the proxy, kept apart from sockets so they test alone.

The parser (llhttp through httptools) already rejects the classic smuggling
shapes (Content-Length with Transfer-Encoding, duplicate lengths, bad chunk
sizes, obs-fold, bare CR/LF, NUL). What is left here is the proxy's own policy:
which headers travel, how bodies are framed on the other side, and the extra
request checks the parser is lenient about.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from html import escape
from typing import Final

Headers = list[tuple[bytes, bytes]]

# Substrings of bytes are looked for with find(), not `in`: `x in some_bytes` first tries x as
# an integer (a byte value) and, for bytes, raises and clears a TypeError with a formatted
# message each time, which cost more than the search on the request path.

# Headers that describe one hop and never cross the proxy (RFC 9110 7.6.1).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"expect",
    }
)
# Set by the gateway from the real connection; incoming copies are believed
# only from trusted proxies.
FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"forwarded", b"x-real-ip"}
)
REQUEST_ID: Final = b"x-request-id"
# Connection tokens that are hop-by-hop already or name no header.
_CONNECTION_OPTIONS: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
# Connection values that name no other header, as most servers send them.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})
# Headers that frame the message: a Connection header naming them must not make them vanish,
# or the body would be forwarded without its framing.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})
# Request headers the proxy acts on; everything else passes unchanged.
_REQUEST_SPECIAL: Final = HOP_BY_HOP | FORWARDING | {REQUEST_ID, b"host", b"content-length"}

REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def is_valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= 128 and all(0x21 <= c <= 0x7E for c in value)


def check_transfer_encoding(value: bytes, http_minor: int) -> None:
    """Only a lone `chunked` is framed unambiguously by every upstream."""
    if http_minor == 0:
        raise BadRequest(400, "Transfer-Encoding is not allowed in HTTP/1.0 requests")
    # Exactly what llhttp frames as chunked (it allows trailing spaces, not tabs),
    # so the proxy and the parser never disagree about where the body ends.
    if value.rstrip(b" ").lower() != b"chunked":
        raise BadRequest(400, "unsupported Transfer-Encoding (only 'chunked' is accepted)")


def check_target(target: bytes, method: bytes) -> None:
    if target.startswith(b"/"):
        return
    if target == b"*" and method == b"OPTIONS":
        return
    raise BadRequest(400, "request target must be a path")


def forwarded_for_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


class TrustedProxies:
    """Which client addresses may vouch for X-Forwarded-* (answers cached per address)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                hit = False
            else:
                hit = any(addr in n for n in self._nets)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


def forwarded_block(
    client_ip: str, client_host: bytes, *, xff: bytes = b"", xfp: bytes = b"", xfh: bytes = b"", fwd: bytes = b""
) -> bytes:
    """X-Forwarded-For/-Proto/-Host and Forwarded for one hop, appended to a trusted proxy's values."""
    ip = client_ip.encode()
    node = forwarded_for_node(client_ip).encode()
    mine = b"for=" + node + b";proto=https;host=\"" + client_host.replace(b'"', b"") + b'"'
    return b"".join(
        (
            b"X-Forwarded-For: ", xff + b", " + ip if xff else ip, b"\r\n",
            b"X-Forwarded-Proto: ", xfp or b"https", b"\r\n",
            b"X-Forwarded-Host: ", xfh or client_host, b"\r\n",
            b"Forwarded: ", fwd + b", " + mine if fwd else mine, b"\r\n",
        )
    )


def _field(out: list[bytes], name: bytes, value: bytes) -> None:
    """One header line onto a head being built (appended piece by piece: `out += (...)` makes a tuple)."""
    out.append(name)
    out.append(b": ")
    out.append(value)
    out.append(b"\r\n")


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    host: bytes,
    client_host: bytes,
    client_ip: str,
    trusted: bool,
    request_id: bytes,
    body: str,
    upgrade: bytes | None,
    forwarded: bytes | None = None,
) -> bytes:
    """The request head sent upstream.

    `host` is what the upstream sees as Host; `client_host` is the Host the
    client asked for, which X-Forwarded-Host and Forwarded report.

    `body` is "none", "length" (a single validated Content-Length is among
    `headers`) or "chunked" (the gateway re-chunks the decoded body). The
    gateway's own credentials are already gone (`scrub`).
    `forwarded` is a cached `forwarded_block(client_ip, client_host)` for
    untrusted clients, whose forwarding headers depend on nothing else.
    """
    listed: frozenset[bytes] = frozenset()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            # Nor may it remove the identity headers the gateway adds for an upstream.
            tokens = connection_tokens(value) - _CONNECTION_OPTIONS - _FRAMING
            listed = listed | {t for t in tokens if not is_identity_header(t)}
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    xff = xfp = xfh = fwd = b""
    for name, value in headers:
        n = len(name)
        if not listed and (n >= 64 or not (_REQUEST_SPECIAL_LENGTHS >> n) & 1):
            _field(out, name, value)
            continue
        low = name.lower()
        if low not in _REQUEST_SPECIAL and not listed:
            _field(out, name, value)
            continue
        if low in HOP_BY_HOP or low in listed or low == b"host":
            continue
        if low == b"content-length" and body != "length":
            continue
        if low in FORWARDING or low == REQUEST_ID:
            if trusted:
                if low == b"x-forwarded-for":
                    xff = value if not xff else xff + b", " + value
                elif low == b"x-forwarded-proto":
                    xfp = value
                elif low == b"x-forwarded-host":
                    xfh = value
                elif low == b"forwarded":
                    fwd = value if not fwd else fwd + b", " + value
            continue
        _field(out, name, value)
    if trusted:
        out.append(forwarded_block(client_ip, client_host, xff=xff, xfp=xfp, xfh=xfh, fwd=fwd))
    elif forwarded is not None:
        out.append(forwarded)
    else:
        out.append(forwarded_block(client_ip, client_host))
    _field(out, b"X-Request-Id", request_id)
    if body == "chunked":
        out.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
    else:
        out.append(b"Connection: keep-alive\r\n\r\n")
    return b"".join(out)


# Response headers the proxy acts on; everything else passes in one pass.
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length", b"set-cookie"}


def length_mask(names: AbstractSet[bytes]) -> int:
    """Bit n set when some name is n bytes long: most headers are ruled out by their length alone."""
    mask = 0
    for n in names:
        assert len(n) < 64
        mask |= 1 << len(n)
    return mask


_REQUEST_SPECIAL_LENGTHS: Final = length_mask(_REQUEST_SPECIAL)
_RESPONSE_SPECIAL_LENGTHS: Final = length_mask(_RESPONSE_SPECIAL)
_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}


_OK_LINE: Final = b"HTTP/1.1 200 OK\r\n"


def _status_line(status: int, reason: bytes) -> bytes:
    if status == 200 and reason == b"OK":
        return _OK_LINE  # most responses: no key to build and hash
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        text = reason if reason and all(32 <= c < 127 or c == 9 for c in reason) else REASONS.get(status, "").encode()
        line = b"HTTP/1.1 %d %s\r\n" % (status, text or b"Unknown")
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[(status, reason)] = line
    return line


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    no_body: bool,
    client_minor: int,
    close: bool,
    drop_cookie: bytes | None = None,
) -> tuple[bytes, str, str, bool]:
    """The response head for the client, in one pass over the upstream's headers.

    Returns (head, framing of the upstream body, framing toward the client,
    whether the client connection closes after it). Framings: "length"
    (Content-Length kept), "chunked", "none" (204/304/HEAD: the upstream's
    Content-Length is kept, no body follows) or "close" (ends at EOF).
    """
    out = [_status_line(status, reason)]
    has_length = chunked = False
    listed: set[bytes] | None = None
    length_at = -1
    for name, value in headers:
        n = len(name)
        if n >= 64 or not (_RESPONSE_SPECIAL_LENGTHS >> n) & 1:
            _field(out, name, value)
            continue
        low = name.lower()
        if low in _RESPONSE_SPECIAL:
            if low == b"content-length":
                has_length = True
                length_at = len(out)
            elif low == b"set-cookie":
                if drop_cookie is not None and _names_cookie(value, drop_cookie):
                    continue
            else:
                if low == b"transfer-encoding":
                    chunked = value.lower().find(b"chunked") != -1
                elif low == b"connection" and value not in _PLAIN_CONNECTION:
                    tokens = connection_tokens(value) - _CONNECTION_OPTIONS - _FRAMING
                    if tokens:
                        listed = tokens if listed is None else listed | tokens
                continue
        _field(out, name, value)
    if listed:
        # Headers named in Connection are hop-by-hop too (rare: a second pass is fine).
        return response_head(
            status,
            reason,
            [(n, v) for n, v in headers if n.lower() not in listed and n.lower() != b"connection"],
            no_body=no_body,
            client_minor=client_minor,
            close=close,
            drop_cookie=drop_cookie,
        )
    if no_body or status in (204, 304):
        framing = "none"
    elif chunked:
        framing = "chunked"
    elif has_length:
        framing = "length"
    else:
        framing = "close"
    out_framing = framing
    if framing in ("chunked", "close"):
        if length_at >= 0:
            del out[length_at : length_at + 4]
        # HTTP/1.0 clients cannot read chunked bodies: the close marks the end for them.
        if client_minor == 1:
            out_framing = "chunked"
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            out_framing = "close"
            close = True
    out.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(out), framing, out_framing, close


def upgrade_head(reason: bytes, headers: Headers, *, drop_cookie: bytes | None = None) -> bytes:
    """The 101 response: the upstream's headers (Sec-WebSocket-* spelled as sent) minus hop-by-hop."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed |= connection_tokens(value)
    out = [_status_line(101, reason)]
    for name, value in headers:
        low = name.lower()
        if low == b"upgrade":
            _field(out, name, value)
            continue
        if low in HOP_BY_HOP or low in listed or low == b"content-length":
            continue
        if low == b"set-cookie" and drop_cookie is not None and _names_cookie(value, drop_cookie):
            continue
        _field(out, name, value)
    out.append(b"Connection: Upgrade\r\n\r\n")
    return b"".join(out)


def _names_cookie(set_cookie: bytes, prefix: bytes) -> bool:
    return _cookie_name(set_cookie.split(b";", 1)[0].strip()).lower().startswith(prefix)


def wants_json(accept: bytes | None) -> bool:
    if not accept:
        return False
    a = accept.lower()
    return a.find(b"application/json") != -1 and a.find(b"text/html") == -1


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{status} {reason}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}
h1{{font-size:1.4em}}code{{color:#555}}</style></head>
<body><h1>{status} {reason}</h1><p>{message}</p><p><code>request id {rid}</code></p></body></html>
"""


def error_response(
    status: int,
    message: str,
    *,
    request_id: bytes,
    accept: bytes | None,
    close: bool,
    head_only: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete small response written by the gateway itself (never upstream details).

    `headers` adds to it (Location, Set-Cookie, WWW-Authenticate); values are the gateway's own.
    """
    reason = REASONS.get(status, "Error")
    rid = request_id.decode("ascii", "replace")
    if wants_json(accept):
        body = json.dumps({"error": reason, "status": status, "message": message, "request_id": rid}).encode()
        ctype = b"application/json"
    else:
        body = _PAGE.format(status=status, reason=reason, message=escape(message), rid=escape(rid)).encode()
        ctype = b"text/html; charset=utf-8"
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()),
        b"Content-Type: " + ctype + b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        b"X-Request-Id: " + request_id + b"\r\n",
    ]
    for name, value in headers:
        _field(head, name, value)
    head.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(head) + (b"" if head_only else body)


# Identity headers: the gateway's own (`X-Wsgate-*`) and the ones other auth proxies
# set and applications commonly trust. An incoming copy never reaches an upstream.
_IDENTITY: Final = frozenset(
    {
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-preferred-username",
        b"x-forwarded-groups",
        b"x-forwarded-access-token",
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-auth-request-preferred-username",
        b"x-auth-request-groups",
        b"x-auth-request-access-token",
        b"x-remote-user",
        b"remote-user",
        b"x-user",
        b"x-email",
    }
)


def is_identity_header(name: bytes) -> bool:
    """Matches after the normalisation servers apply (case, `_` read as `-`)."""
    if not name or name[0] | 0x20 not in (0x72, 0x78):
        return False  # each begins with "x" or "r": most headers are ruled out without a copy
    low = name.lower().replace(b"_", b"-")
    return low.startswith(b"x-wsgate-") or low in _IDENTITY


def strip_cookies(value: bytes, prefix: bytes) -> bytes:
    """A Cookie header without the gateway's cookies; the others are kept byte for byte."""
    if value.find(b";") == -1:
        # One cookie (on a workspace host, usually the gateway's own): no list to build.
        pair = value.strip(b" \t")
        return b"" if not pair or _cookie_name(pair).lower().startswith(prefix) else pair
    kept = [
        pair
        for pair in (p.strip(b" \t") for p in value.split(b";"))
        if pair and not _cookie_name(pair).lower().startswith(prefix)
    ]
    return b"; ".join(kept)


def _cookie_name(pair: bytes) -> bytes:
    name, sep, rest = pair.partition(b"=")
    name = name.strip()
    if not name and sep:
        # "=__Host-x=v" is a nameless cookie, which browsers send back (and read) as "__Host-x=v".
        name = rest.partition(b"=")[0].strip()
    return name


# A cookie value the gateway set: visible ASCII without '"', ',', ';' or '\\' (RFC 6265 cookie-octet).
_COOKIE_OCTETS: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'",;\\')
# Each octet to "a" when it is a cookie-octet, to "!" when it is not.
_COOKIE_CLASSES: Final = bytes(0x61 if c in _COOKIE_OCTETS else 0x21 for c in range(256))


def cookie_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the gateway cookie `name` (exact, case-sensitive), read strictly.

    Pairs are split on `;` only (never on whitespace, as lenient parsers do), so a
    value such as `foo=x __Host-wsgate-session=...` that another host tossed in is
    just a value of `foo`. A name sent twice means a cookie was planted beside
    ours (by a parent-domain or path-scoped cookie), so neither counts.
    """
    found: bytes | None = None
    for hname, value in headers:
        if len(hname) == 6 and (hname == b"Cookie" or hname.lower() == b"cookie"):
            n = len(name)
            if (
                len(value) > n + 1
                and value[n] == 0x3D  # "="
                and value[-1] != 0x20
                and value[-1] != 0x09
                and value.find(b";") == -1
                and value.startswith(name)
            ):
                # `name=value` alone, as a workspace host's requests carry it: the reading
                # below gives the same, without splitting and partitioning.
                if found is not None:
                    return None
                found = value[n + 1 :]
                continue
            for pair in value.split(b";"):
                k, sep, v = pair.strip(b" \t").partition(b"=")
                if sep and k.strip() == name:
                    if found is not None:
                        return None
                    found = v
    # A fixed table: translate with deletions would build its table on every call.
    if not found or found.translate(_COOKIE_CLASSES).find(b"!") != -1:
        return None
    return found


def _carries_token(value: bytes, token_prefix: bytes) -> bool:
    """Any Authorization that holds a gateway token, in whatever scheme or spacing (Basic included)."""
    if value.find(token_prefix) != -1:
        return True
    parts = value.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == b"basic":
        try:
            return base64.b64decode(parts[1].strip(), validate=False).find(token_prefix) != -1
        except ValueError:
            return False
    return False


def scrub(headers: Headers, cookie_prefix: bytes, token_prefix: bytes, *, keep_credentials: bool = False) -> Headers:
    """The request headers minus the gateway's cookies and tokens and any identity header.

    `keep_credentials` (the gateway's own app) keeps Cookie and Authorization.
    """
    out: Headers = []
    for name, value in headers:
        n = len(name)
        if not keep_credentials:
            if n == 6 and name.lower() == b"cookie":
                value = strip_cookies(value, cookie_prefix)
                if not value:
                    continue
            elif n == 13 and name.lower() == b"authorization" and _carries_token(value, token_prefix):
                continue
        if n > 6 and is_identity_header(name):
            continue
        out.append((name, value))
    return out


def chunk(data: bytes) -> list[bytes]:
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK: Final = b"0\r\n\r\n"
