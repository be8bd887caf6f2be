"""Where to send a browser after sign-in: the open-redirect defence.

The sign-in flow carries the page a person asked for in `next=<url>`. Anyone can
craft that value, so following it blindly turns the gateway into an open
redirect that lends our name to phishing links, and, worse, can hand a fresh
session to a page an attacker controls. The trust boundary (DESIGN.md) is that
redirect targets are only the gateway's own hosts:

- the main domain, `https://<domain>[:port]/`;
- one workspace host, `https://<label>.ws.<domain>[:port]/`, with exactly one
  lower-case DNS label before `.ws.`;
- hosts that admin routing rules add, through the `extra_host` callback.

Browsers, proxies and URL libraries disagree about many edge cases (`\\` read as
`/`, tabs and newlines silently stripped, `//host` taken as an authority,
`user@host`, percent-decoded slashes, Unicode dots folded by IDNA), so this
module does not try to interpret such inputs: it accepts a small, strictly
parsed grammar and answers the main domain's root for everything else. The URL
it returns is rebuilt from the validated parts, never echoed from the input.

Decisions:

- **Fragments are dropped.** A fragment never reaches a server, so nothing here
  can validate what a client-side router would do with it; the browser keeps
  the fragment of the request that carried the redirect anyway.
- **Trailing-dot hosts are rejected** (`wsgate.test.`). They name the same host
  in DNS but a different origin to the browser, whose host-only cookies are
  not sent there, so following one would only break the sign-in.
- **Inputs longer than 2048 characters are rejected**, for `safe_path` too.
- Hosts compare case-insensitively and the returned URL uses the lower-cased
  host; the path and query keep their case.
- Paths may not contain `.` or `..` segments or start with `//`, in the raw form
  or after any round of percent-decoding (nor after Unicode NFKC folding), since
  some server or client along the way may decode or normalise once more.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote, unquote_to_bytes

__all__ = ["MAX_LENGTH", "safe_next", "safe_path"]

MAX_LENGTH = 2048
"""Longest `next` value (or path) we consider; longer ones are refused outright."""

# How many rounds of percent-decoding we look through. A value that still
# changes after this many rounds is refused rather than trusted.
_MAX_DECODES = 4

# One DNS label, lower-case letters, digits and inner hyphens (RFC 1123).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The authority of an https URL we accept: a plain host name, an optional port.
# No userinfo, no IP-literal brackets, no percent-escapes, ASCII only.
_AUTHORITY = re.compile(r"([a-z0-9.-]+)(?::([0-9]{1,5}))?")
# The WHATWG URL parser reads a host whose last label is a number as IPv4.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = "https://"

# Re-serialisation: RFC 3986 pchar minus the apostrophe (so the URL can also sit
# in an HTML attribute), plus "/" in paths and "/?" in queries. "%" stays as is:
# every "%" has been checked to start a valid escape.
_PATH_SAFE = "/:@!$&()*+,;=%-._~"
_QUERY_SAFE = _PATH_SAFE + "?"

# Unicode categories that have no business in a redirect target: controls,
# format characters (zero-width, bidi overrides), separators, private-use,
# surrogates and unassigned code points.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zs", "Zl", "Zp"})


def safe_next(
    raw: str | None,
    *,
    domain: str,
    port: int,
    extra_host: Callable[[str], bool] | None = None,
) -> str:
    """The absolute `https://` URL to follow after sign-in, or the main domain's root.

    `raw` is the untrusted `next` value. It is accepted when it is a path-absolute
    reference (`/dashboard?x=1`, resolved against the main domain) or an
    absolute `https` URL on one of the gateway's own hosts and on the gateway's
    public HTTPS `port` (explicit or implied by the scheme). `extra_host` is asked
    about any other syntactically plain host name (lower-cased) and admits it by
    answering true: the hosts of admin routing rules. Anything else, including
    `None` and the empty string, yields `https://<domain>[:port]/`.
    """
    domain = domain.lower()
    root = _origin(domain, port) + "/"
    if raw is None:
        return root
    target = _validate(raw, domain, port, extra_host)
    return root if target is None else target


def safe_path(raw: str) -> str:
    """`raw` (a path and optional query on a host we already trust) if it is safe, else "/".

    Used after the workspace-host cookie swap, when the browser is sent back to
    the page it first asked for on the same host. The host is fixed there, but a
    path such as `//evil.com` or `/\\evil.com` would still be read by browsers as
    another host, so the path gets the same checks as in `safe_next`: exactly one
    leading `/`, no control characters, whitespace or backslashes (raw or
    percent-encoded), no encoded slashes at the start, no dot segments. A
    fragment, if present, is dropped; the value is re-encoded (a no-op for
    ordinary paths).
    """
    if not raw or len(raw) > MAX_LENGTH or not _plain_ascii(raw):
        return "/"
    rest = _clean_path_query(raw)
    return "/" if rest is None else rest


def _validate(raw: str, domain: str, port: int, extra_host: Callable[[str], bool] | None) -> str | None:
    """The rebuilt URL for an acceptable `raw`, or None."""
    if not raw or len(raw) > MAX_LENGTH or not _plain_ascii(raw):
        return None
    if raw.startswith("/"):
        # Path-absolute; "//evil" (scheme-relative) is refused by _clean_path_query.
        rest = _clean_path_query(raw)
        return None if rest is None else _origin(domain, port) + rest
    if raw[: len(_SCHEME)].lower() != _SCHEME:
        # javascript:, data:, http:, "https:evil", "https:/evil", bare "evil.com"...
        return None
    after = raw[len(_SCHEME) :]
    cut = len(after)
    for sep in "/?#":
        i = after.find(sep)
        if i != -1:
            cut = min(cut, i)
    authority, rest_raw = after[:cut], after[cut:]
    m = _AUTHORITY.fullmatch(authority.lower())
    if m is None:
        # Empty ("https:///evil"), userinfo, "%" escapes, brackets, empty port...
        return None
    host, port_text = m.group(1), m.group(2)
    if (int(port_text) if port_text is not None else 443) != port:
        return None
    if not _host_allowed(host, domain, extra_host):
        return None
    if not rest_raw.startswith("/"):
        rest_raw = "/" + rest_raw  # "https://host?q" and "https://host" mean path "/".
    rest = _clean_path_query(rest_raw)
    return None if rest is None else _origin(host, port) + rest


def _host_allowed(host: str, domain: str, extra_host: Callable[[str], bool] | None) -> bool:
    """Whether a lower-cased `host` is the main domain, one workspace host, or an admin host."""
    if not _is_dns_name(host):
        # Trailing dot, empty labels, IPv4 in any notation, overlong names.
        return False
    if host == domain:
        return True
    suffix = ".ws." + domain
    if host.endswith(suffix) and _LABEL.fullmatch(host[: -len(suffix)]):
        return True
    return extra_host is not None and bool(extra_host(host))


def _is_dns_name(host: str) -> bool:
    """A lower-case host name made of RFC 1123 labels that no parser reads as an IP address."""
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return _NUMERIC_LABEL.fullmatch(labels[-1]) is None


def _origin(host: str, port: int) -> str:
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def _plain_ascii(raw: str) -> bool:
    """Printable ASCII without space or backslash, and every "%" starting a valid escape.

    Non-ASCII rules out IDN hosts, Unicode dots (U+3002, U+FF0E), look-alike slashes
    (U+2215) and zero-width characters in one go; browsers strip tab, CR and LF
    from URLs and read `\\` as `/`, so a value that holds them means something
    other than it seems.
    """
    if not raw.isascii() or "\\" in raw:
        return False
    if any(c <= " " or c == "\x7f" for c in raw):
        return False
    return _PERCENT.search(raw) is None


def _clean_path_query(raw: str) -> str | None:
    """Validate and re-encode a path-absolute `path[?query][#fragment]`; None if unsafe.

    `raw` has passed `_plain_ascii`. The fragment is dropped (module docstring).
    """
    if not raw.startswith("/") or raw.startswith("//"):
        return None
    raw = raw.partition("#")[0]
    path, _, query = raw.partition("?")
    if not _path_ok(path) or not _query_ok(query):
        return None
    out = quote(path, safe=_PATH_SAFE)
    if query:
        out += "?" + quote(query, safe=_QUERY_SAFE)
    return out


def _decodings(text: str) -> list[str] | None:
    """`text` and each successive percent-decoding of it, as str; None if any is unsafe.

    A form is unsafe when it holds a control byte, is not UTF-8, holds a
    character of `_BAD_CATEGORIES` (a decoded plain space, `%20`, is allowed:
    file names have them, and no parser strips them from inside a path), or
    when it still decodes further after `_MAX_DECODES` rounds. NFKC foldings of the decoded forms are included, so
    that U+FF0F or U+FF3C count as what some normaliser downstream would make of them.
    """
    forms: list[str] = []
    current = text.encode("ascii")
    for round_ in range(_MAX_DECODES + 1):
        if any(b < 0x20 or b == 0x7F for b in current):
            return None
        try:
            decoded = current.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if any(c != " " and unicodedata.category(c) in _BAD_CATEGORIES for c in decoded):
            return None
        forms.append(decoded)
        if not decoded.isascii():
            folded = unicodedata.normalize("NFKC", decoded)
            if any(unicodedata.category(c) in _BAD_CATEGORIES for c in folded):
                return None
            forms.append(folded)
        following = unquote_to_bytes(current)
        if following == current:
            return forms
        if round_ == _MAX_DECODES:
            break
        current = following
    return None


def _path_ok(path: str) -> bool:
    """A path that stays a path on our host however many times it is decoded."""
    forms = _decodings(path)
    if forms is None:
        return False
    for form in forms:
        if form.startswith("//") or "\\" in form:
            return False
        if any(segment in (".", "..") for segment in form.split("/")):
            # "/..//evil" and "/.//evil" become "//evil" once dot segments go.
            return False
    return True


def _query_ok(query: str) -> bool:
    """Queries may carry encoded slashes and backslashes, never control characters."""
    return _decodings(query) is not None
