"""The route table: which upstream answers a given Host.

Hosts come in three shapes (see DESIGN.md): the main domain, workspace hosts
`<id>.ws.<domain>` / `<port>-<id>.ws.<domain>`, and other hosts that admin
rules add. Matching is case-insensitive and ignores a trailing dot and an
explicit `:port`. Results are cached per raw Host value because the same few
hosts repeat on almost every request; every change to the table drops the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAIN: Final = "main"
WORKSPACE: Final = "workspace"
RULE: Final = "rule"

# Answers for hosts that have no route: ours but unknown, or not ours at all.
NOT_FOUND: Final = 404
MISDIRECTED: Final = 421
BAD_HOST: Final = 400

_CACHE_MAX = 8192


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route's traffic goes. `scheme` "internal" is the gateway's own app."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"not an http(s)://host:port URL: {url!r}")
        return cls(parts.scheme, parts.hostname, parts.port, parts.path.rstrip("/"))

    @classmethod
    def from_address(cls, address: str) -> Upstream:
        return cls.from_url("http://" + address)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


INTERNAL: Final = Upstream("internal", "wsgate", 0)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    host: str
    upstream: Upstream
    workspace_id: str = ""
    port: int = 0


def normalise_host(raw: str) -> str | None:
    """Lower-cased host name without port or trailing dot; None if malformed."""
    host = raw.strip().lower()
    if not host or host.startswith("["):
        # IPv6 literals are never one of our names.
        return host if host else None
    name, sep, port = host.partition(":")
    if sep and (not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536):
        return None
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return None
    for c in name:
        if not (c.isascii() and (c.isalnum() or c in "-._")):
            return None
    return name


def parse_workspace_label(label: str) -> tuple[str, int | None] | None:
    """`8080-abc` -> ("abc", 8080); `abc` -> ("abc", None); None if not a workspace label."""
    head, sep, rest = label.partition("-")
    if sep and head.isdigit():
        if not rest or head.startswith("0") or len(head) > 5 or not 0 < int(head) < 65536:
            return None
        return rest, int(head)
    return label, None


class RouteTable:
    """Maps Host values to routes. Later rooms feed it workspaces and admin rules."""

    def __init__(self, domain: str) -> None:
        self.domain = domain.lower()
        self.ws_suffix = ".ws." + self.domain
        self.main_route = Route(MAIN, self.domain, INTERNAL)
        # workspace id -> {port: upstream}; port 0 holds the IDE port's upstream.
        self._workspaces: dict[str, dict[int, Upstream]] = {}
        self._hosts: dict[str, Upstream] = {}
        self._cache: dict[bytes, Route | int] = {}

    # --- changes ------------------------------------------------------------------
    def set_host(self, host: str, upstream: Upstream) -> None:
        self._hosts[host.lower().rstrip(".")] = upstream
        self._cache.clear()

    def remove_host(self, host: str) -> None:
        self._hosts.pop(host.lower().rstrip("."), None)
        self._cache.clear()

    def set_workspace_port(self, workspace_id: str, port: int, upstream: Upstream, *, ide: bool = False) -> None:
        ports = self._workspaces.setdefault(workspace_id, {})
        ports[port] = upstream
        if ide:
            ports[0] = upstream
        self._cache.clear()

    def remove_workspace(self, workspace_id: str) -> None:
        self._workspaces.pop(workspace_id, None)
        self._cache.clear()

    def clear(self) -> None:
        self._workspaces.clear()
        self._hosts.clear()
        self._cache.clear()

    # --- lookups --------------------------------------------------------------------
    def is_gateway_host(self, host: str) -> bool:
        """Whether a normalised host is one the gateway answers for (redirect targets)."""
        return (
            host == self.domain
            or (host.endswith(self.ws_suffix) and "." not in host[: -len(self.ws_suffix)])
            or host in self._hosts
        )

    def match(self, raw_host: bytes) -> Route | int:
        """The route for a raw Host header value, or the status to answer with."""
        hit = self._cache.get(raw_host)
        if hit is not None:
            return hit
        result = self._match(raw_host)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[raw_host] = result
        return result

    def _match(self, raw_host: bytes) -> Route | int:
        try:
            text = raw_host.decode("ascii")
        except UnicodeDecodeError:
            return BAD_HOST
        host = normalise_host(text)
        if host is None:
            return BAD_HOST
        if host == self.domain:
            return self.main_route
        if host.endswith(self.ws_suffix):
            label = host[: -len(self.ws_suffix)]
            if "." in label:
                return NOT_FOUND
            parsed = parse_workspace_label(label)
            if parsed is None:
                return NOT_FOUND
            workspace_id, port = parsed
            ports = self._workspaces.get(workspace_id)
            if ports is None:
                return NOT_FOUND
            upstream = ports.get(port or 0)
            if upstream is None:
                return NOT_FOUND
            return Route(WORKSPACE, host, upstream, workspace_id, port or 0)
        upstream = self._hosts.get(host)
        if upstream is not None:
            return Route(RULE, host, upstream)
        if host.endswith("." + self.domain):
            return NOT_FOUND
        return MISDIRECTED
