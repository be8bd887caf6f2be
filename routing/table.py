"""The route table: which upstream answers a given Host.

Hosts come in three shapes (see DESIGN.md): the main domain, workspace hosts
`<id>.ws.<domain>` / `<port>-<id>.ws.<domain>`, and other hosts that admin
rules add. Matching is case-insensitive and ignores a trailing dot and an
explicit `:port`. Results are cached per raw Host value because the same few
hosts repeat on almost every request, and per normalised name, so that the
spellings of one host (case, `:port`, trailing dot) share one answer and a
miss on a new spelling costs only the normalising; every change to the table
drops both caches.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from auth.policy import PUBLIC_ACCESS, Access, owner_access

if TYPE_CHECKING:
    from routing.rules import Rule, RuleSet

MAIN: Final = "main"
WORKSPACE: Final = "workspace"
RULE: Final = "rule"

# Answers for hosts that have no route: ours but unknown, or not ours at all.
NOT_FOUND: Final = 404
MISDIRECTED: Final = 421
BAD_HOST: Final = 400

# Entries of each host cache (raw Host values, normalised names): room for every host of a
# gateway with 10,000 workspaces and thousands of rule hosts. Measured with tracemalloc: about
# 100 bytes per raw entry, and about 500 per name with its route (60-byte names), so made-up
# Host values can make a full pair hold about 20 MB (30 MB with 253-byte names), and no more.
_CACHE_MAX = 32768

# The longest raw Host worth looking up: a 253-byte name, a trailing dot and ":65535".
_HOST_MAX: Final = 260

# A host name's characters once lower-cased. One pattern match instead of a loop over the
# characters: every host-cache miss pays for this, and the loop was most of a miss's cost.
_HOST_NAME: Final = re.compile(r"[a-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route's traffic goes. `scheme` "internal" is the gateway's own app."""

    scheme: str
    host: str
    port: int
    base_path: str = ""
    # Where a pooled connection goes: routes to one server share its idle connections whatever
    # their base path. One interned string, so that the pool's lookup, on every request, reads
    # one attribute and finds its key by identity: with thousands of routes the Upstream objects
    # are cold in the CPU's caches, and three attribute reads and a tuple hash each cost a miss.
    pool: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", sys.intern(f"{self.scheme}://{self.authority}"))

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
# Stands in for the upstream of a workspace host that does not exist. Its route
# is owned by nobody, so the policy refuses everyone exactly as it refuses a
# stranger on a real workspace: no answer tells the two apart.
NOWHERE: Final = Upstream("none", "nowhere.invalid", 0)
NOBODY: Final = owner_access("")
# The upstream of a host that admin rules cover: which rule answers depends on the path.
BY_PATH: Final = Upstream("rules", "by-path.invalid", 0)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    host: str
    upstream: Upstream
    workspace_id: str = ""
    port: int = 0
    access: Access = NOBODY
    rule: Rule | None = None

    @classmethod
    def for_rule(cls, host: str, rule: Rule) -> Route:
        return cls(RULE, host, rule.target, access=rule.access_level, rule=rule)


@dataclass(frozen=True, slots=True)
class WorkspacePort:
    upstream: Upstream
    access: Access


@dataclass(frozen=True, slots=True)
class _Launched:
    owner: Access
    public_ports: frozenset[int]
    ide_port: int | None


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
    if len(name) > 253 or _HOST_NAME.fullmatch(name) is None:
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
        # The main domain's app checks its own sessions.
        self.main_route = Route(MAIN, self.domain, INTERNAL, access=PUBLIC_ACCESS)
        # workspace id -> {port: its upstream and access}; port 0 is the IDE port.
        self._workspaces: dict[str, dict[int, WorkspacePort]] = {}
        self._hosts: dict[str, tuple[Upstream, Access]] = {}
        # Workspaces run by the launcher: every port is reachable (owner only unless public).
        self._launched: dict[str, _Launched] = {}
        # Raw Host -> answer; read directly by the proxy's hot path (`cache.get`), so only ever cleared, never replaced.
        self.cache: dict[bytes, Route | int] = {}
        # Normalised host (None: malformed) -> answer: what a raw miss looks up after normalising.
        self._by_name: dict[str | None, Route | int] = {}
        self.rules: Any = None  # RuleSet, set by set_rules (routing.rules imports this module)

    # --- changes ------------------------------------------------------------------
    def set_host(self, host: str, upstream: Upstream, access: Access) -> None:
        self._hosts[host.lower().rstrip(".")] = (upstream, access)
        self._drop_caches()

    def remove_host(self, host: str) -> None:
        self._hosts.pop(host.lower().rstrip("."), None)
        self._drop_caches()

    def set_workspace_port(
        self, workspace_id: str, port: int, upstream: Upstream, *, owner: str, public: bool = False, ide: bool = False
    ) -> None:
        """A workspace port reachable by `owner` only, or by anyone when `public`."""
        entry = WorkspacePort(upstream, PUBLIC_ACCESS if public else owner_access(owner))
        ports = self._workspaces.setdefault(workspace_id, {})
        ports[port] = entry
        if ide:
            ports[0] = entry
        self._drop_caches()

    def set_launched_workspace(
        self, workspace_id: str, *, owner: str, public_ports: frozenset[int] = frozenset(), ide_port: int | None = None
    ) -> None:
        """A launcher workspace: any port it listens on, for `owner`; `public_ports` for anyone."""
        self._launched[workspace_id] = _Launched(owner_access(owner), public_ports, ide_port)
        self._drop_caches()

    def remove_workspace(self, workspace_id: str) -> None:
        self._workspaces.pop(workspace_id, None)
        self._launched.pop(workspace_id, None)
        self._drop_caches()

    def set_rules(self, rules: RuleSet) -> None:
        """Swaps in a new rule set at once: the next request sees it, requests under way keep theirs."""
        self.rules = rules
        self._drop_caches()

    def match_rule(self, host: str, path: str) -> Route | None:
        """The route of the admin rule for a normalised host and a canonical path."""
        rule = self.rules.match(host, path) if self.rules is not None else None
        return Route.for_rule(host, rule) if rule is not None else None

    def clear(self) -> None:
        self._workspaces.clear()
        self._hosts.clear()
        self._drop_caches()

    def _drop_caches(self) -> None:
        self.cache.clear()
        self._by_name.clear()

    # --- lookups --------------------------------------------------------------------
    def is_gateway_host(self, host: str) -> bool:
        """Whether a normalised host is one the gateway answers for (redirect targets)."""
        return (
            host == self.domain
            or (host.endswith(self.ws_suffix) and "." not in host[: -len(self.ws_suffix)])
            or host in self._hosts
            or (self.rules is not None and self.rules.covers(host))
        )

    def is_rule_host(self, host: str) -> bool:
        return host in self._hosts or (self.rules is not None and self.rules.covers(host))

    def match(self, raw_host: bytes) -> Route | int:
        """The route for a raw Host header value, or the status to answer with."""
        cache = self.cache
        hit = cache.get(raw_host)
        if hit is not None:
            return hit
        if len(raw_host) > _HOST_MAX:
            # Longer than any name with a port: not cached, or a client could make the cache
            # hold its whole header limit per entry.
            return BAD_HOST
        try:
            host = normalise_host(raw_host.decode("ascii"))
        except UnicodeDecodeError:
            host = None
        by_name = self._by_name
        result = by_name.get(host)
        if result is None:
            result = self._match(host) if host is not None else BAD_HOST
            # Full: start again rather than track recency. The hosts in use come back at once, and
            # a client spraying made-up Host values cannot make the gateway hold more than this.
            if len(by_name) >= _CACHE_MAX:
                by_name.clear()
            by_name[host] = result
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[raw_host] = result
        return result

    def _match(self, host: str) -> Route | int:
        """The answer for a normalised host name."""
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
            entry = self._workspaces.get(workspace_id, {}).get(port or 0)
            if entry is None and workspace_id in self._launched:
                launched = self._launched[workspace_id]
                number = port or launched.ide_port
                if number is None:
                    return Route(WORKSPACE, host, NOWHERE, workspace_id, 0, launched.owner)
                access = PUBLIC_ACCESS if number in launched.public_ports else launched.owner
                return Route(WORKSPACE, host, Upstream("workspace", workspace_id, number), workspace_id, number, access)
            if entry is None:
                return Route(WORKSPACE, host, NOWHERE, workspace_id, port or 0, NOBODY)
            return Route(WORKSPACE, host, entry.upstream, workspace_id, port or 0, entry.access)
        found = self._hosts.get(host)
        if found is not None:
            return Route(RULE, host, found[0], access=found[1])
        if self.rules is not None and self.rules.covers(host):
            return Route(RULE, host, BY_PATH, access=PUBLIC_ACCESS)
        if host.endswith("." + self.domain):
            return NOT_FOUND
        return MISDIRECTED
