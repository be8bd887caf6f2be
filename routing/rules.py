"""Admin routing rules: put a service behind wsgate's sign-in, at runtime.

This module is the pure core: the rule model (`Rule`), its validation against
what the gateway serves (`parse_rule`, `RuleContext`) and the index that picks
a rule for a request (`RuleSet`). No sockets, no storage.

Host patterns are exact names or `*.suffix` wildcards. A wildcard matches any
name that ends in `.suffix`, however many labels deep; a more specific pattern
always wins. A request is answered by the rule with the most specific host
pattern that has a prefix matching the path (exact host, then the longest
wildcard suffix), and among those by the longest path prefix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final

from auth.policy import Access, parse_access
from routing.paths import PathError, check_prefix
from routing.table import Upstream

__all__ = ["Rule", "RuleContext", "RuleError", "RuleSet", "parse_rule"]

_ID: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
# One DNS label as certificates allow it (RFC 1123, lower case).
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Upstream names are resolved, not certified: container names with "_" are fine.
_UPSTREAM_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_UPSTREAM: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)\Z", re.DOTALL)
_AUTHORITY: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([^:]*))?\Z")
# A last label that makes resolvers read the name as an IPv4 address.
_NUMERIC_LABEL: Final = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_WORKSPACE: Final = re.compile(r"workspace:([a-z0-9](?:[a-z0-9-]{0,62}))?:(.*)\Z", re.DOTALL)
# RFC 9110 token.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Visible ASCII with inner spaces allowed, no leading or trailing whitespace.
_VALUE: Final = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?\Z")

MAX_HOSTS: Final = 100
MAX_PREFIX: Final = 1024
MAX_UPSTREAM: Final = 2048
MAX_HEADERS: Final = 32
MAX_HEADER_NAME: Final = 64
MAX_HEADER_VALUE: Final = 4096
CONNECT_TIMEOUT_MAX: Final = 300.0
IDLE_TIMEOUT_MAX: Final = 86400.0

# Headers the gateway owns or that frame the message; a rule may not set them.
_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "cookie",
        "x-request-id",
    }
)
_FORBIDDEN_HEADER_PREFIXES: Final = ("x-wsgate-", "x-forwarded-", "forwarded", "sec-websocket-")


class RuleError(ValueError):
    """A rule that cannot be accepted: `field` names the offending field, `reason` says why."""

    field: str
    reason: str

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One admin routing rule. Build it with `parse_rule`; the constructor checks only access and upstream syntax."""

    id: str
    hosts: tuple[str, ...]
    path_prefix: str = "/"
    upstream: str
    access: str = "authenticated"
    websocket: bool = True
    strip_prefix: bool = False
    preserve_host: bool = False
    connect_timeout: float = 5.0
    idle_timeout: float = 300.0
    # Excluded from the hash (a mapping has none) but compared.
    request_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    identity_headers: bool = False
    # Parsed once here: `access_level` and `target` are read on every request.
    _access: Access = field(init=False, repr=False, compare=False)
    _target: Upstream = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            parsed = parse_access(self.access)
        except ValueError as e:
            raise RuleError("access", str(e)) from None
        object.__setattr__(self, "_access", parsed)
        object.__setattr__(self, "_target", _parse_upstream(self.upstream))
        object.__setattr__(self, "request_headers", MappingProxyType(dict(self.request_headers)))

    @property
    def access_level(self) -> Access:
        return self._access

    @property
    def target(self) -> Upstream:
        """The upstream as the proxy uses it; scheme "workspace" means host = workspace id, port = its port."""
        return self._target

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the keys `parse_rule` reads, in a stable order, defaults included."""
        return {
            "id": self.id,
            "hosts": list(self.hosts),
            "path_prefix": self.path_prefix,
            "upstream": self.upstream,
            "access": self.access,
            "websocket": self.websocket,
            "strip_prefix": self.strip_prefix,
            "preserve_host": self.preserve_host,
            "connect_timeout": self.connect_timeout,
            "idle_timeout": self.idle_timeout,
            "request_headers": dict(self.request_headers),
            "identity_headers": self.identity_headers,
        }


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule is checked against: the gateway's certificates, its own names and addresses, its workspaces.

    `domains` are certificate names as in `certs.tls`: an exact name covers
    itself, `*.d` covers names exactly one label under `d`. A rule host needs
    a certificate valid for it; a wildcard rule `*.s` needs the certificate
    wildcard `*.s` itself (`*.d` does not cover `*.x.d`).
    """

    domains: tuple[str, ...]
    main_domain: str
    gateway_addresses: frozenset[str]
    workspace_exists: Callable[[str], bool]


# The JSON keys are the fields of `Rule`, in its order.
_FIELDS: Final = tuple(f.name for f in fields(Rule) if f.init)


def parse_rule(data: Mapping[str, Any], ctx: RuleContext) -> Rule:
    """A validated `Rule` from its JSON form, or RuleError naming the first bad field.

    Unknown fields are reported first (a typo is likelier than a missing
    field), then fields in the order of `Rule`. Host names and URL schemes are
    lower-cased and the access level written canonically, so
    `parse_rule(rule.to_dict(), ctx) == rule`.
    """
    if not isinstance(data, Mapping):
        raise RuleError("rule", "must be a JSON object")
    for key in data:
        if key not in _FIELDS:
            raise RuleError(str(key), "unknown field")
    rule_id = _string(data, "id")
    if not _ID.match(rule_id):
        raise RuleError("id", "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")
    if "hosts" not in data:
        raise RuleError("hosts", "required")
    hosts = _parse_hosts(data["hosts"], ctx)
    path_prefix = _parse_prefix(_string(data, "path_prefix", "/"))
    upstream, target = _parse_upstream_text(_string(data, "upstream"))
    _check_target(target, hosts, ctx)
    access = _string(data, "access", "authenticated")
    try:
        access = str(parse_access(access))
    except ValueError as e:
        raise RuleError("access", str(e)) from None
    websocket = _bool(data, "websocket", True)
    strip_prefix = _bool(data, "strip_prefix", False)
    preserve_host = _bool(data, "preserve_host", False)
    connect_timeout = _seconds(data, "connect_timeout", 5.0, CONNECT_TIMEOUT_MAX)
    idle_timeout = _seconds(data, "idle_timeout", 300.0, IDLE_TIMEOUT_MAX)
    request_headers = _parse_headers(data.get("request_headers", {}))
    identity_headers = _bool(data, "identity_headers", False)
    return Rule(
        id=rule_id,
        hosts=hosts,
        path_prefix=path_prefix,
        upstream=upstream,
        access=access,
        websocket=websocket,
        strip_prefix=strip_prefix,
        preserve_host=preserve_host,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        request_headers=request_headers,
        identity_headers=identity_headers,
    )


# --- field parsers ------------------------------------------------------------------


def _string(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """`data[key]` as a string; `default` None makes the key required."""
    if default is None and key not in data:
        raise RuleError(key, "required")
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RuleError(key, f"must be a string, not {_json_type(value)}")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RuleError(key, f"must be true or false, not {_json_type(value)}")
    return value


def _seconds(data: Mapping[str, Any], key: str, default: float, most: float) -> float:
    value = data.get(key, default)
    # bool is an int subclass; true is not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(key, f"must be a number of seconds, not {_json_type(value)}")
    # Compared before float(): NaN fails, and a huge int never reaches an OverflowError.
    if not 0 < value <= most:
        raise RuleError(key, f"must be more than 0 and at most {most:g} seconds, not {value!r}")
    return float(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _parse_prefix(prefix: str) -> str:
    if len(prefix) > MAX_PREFIX:
        raise RuleError("path_prefix", f"longer than {MAX_PREFIX} characters")
    try:
        return check_prefix(prefix)
    except PathError as e:
        raise RuleError("path_prefix", str(e)) from None


def _parse_hosts(value: object, ctx: RuleContext) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise RuleError("hosts", f"must be an array of host names, not {_json_type(value)}")
    if not value:
        raise RuleError("hosts", "needs at least one host")
    if len(value) > MAX_HOSTS:
        raise RuleError("hosts", f"at most {MAX_HOSTS} hosts per rule")
    certs = frozenset(_clean_name(d) for d in ctx.domains)
    main = _clean_name(ctx.main_domain)
    seen: dict[str, int] = {}
    for i, raw in enumerate(value):
        where = f"hosts[{i}]"
        if not isinstance(raw, str):
            raise RuleError(where, f"must be a string, not {_json_type(raw)}")
        if not raw.isascii():
            # Checked before lower-casing, which maps some non-ASCII letters to ASCII ones.
            raise RuleError(where, f"{raw!r} is not ASCII; write international names in punycode (xn--)")
        host = _clean_name(raw)
        reason = _host_syntax(host) or _host_reserved(host, main) or _host_uncovered(host, certs)
        if reason:
            raise RuleError(where, reason)
        if host in seen:
            raise RuleError(where, f"{host!r} is already hosts[{seen[host]}]")
        seen[host] = i
    return tuple(seen)


def _clean_name(name: str) -> str:
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _host_syntax(host: str) -> str:
    """Why `host` is not an exact name or a one-label `*.` wildcard; "" if it is one."""
    if not host:
        return "empty host name"
    if len(host) > 253:
        return "host name longer than 253 characters"
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "a wildcard needs a domain: '*.example.com'"
    if any("*" in label for label in labels):
        return f"{host!r}: a wildcard may only be the whole first label ('*.example.com')"
    for label in labels:
        if not _LABEL.match(label):
            return f"{host!r} is not a host name (labels of a-z, 0-9 and inner '-')"
    if labels[-1].isdigit():
        return f"{host!r} looks like an IP address; rules need host names"
    return ""


def _host_reserved(host: str, main: str) -> str:
    """Why `host` would claim a name the gateway keeps for itself; "" if it does not."""
    if host == main:
        return f"{host!r} is the gateway's own domain"
    ws = "ws." + main
    if host.startswith("*."):
        suffix = host[2:]
        if suffix == ws or suffix.endswith("." + ws) or ws.endswith("." + suffix):
            return f"{host!r} would match workspace hosts (*.{ws}), which rules cannot shadow"
    elif host == ws or host.endswith("." + ws):
        return f"{host!r} is in the workspace namespace (*.{ws})"
    return ""


def _host_uncovered(host: str, certs: frozenset[str]) -> str:
    """Why no certificate of the gateway is valid for `host`; "" if one is."""
    if host in certs:
        return ""
    if not host.startswith("*."):
        _, dot, parent = host.partition(".")
        if dot and "*." + parent in certs:
            return ""
    return f"{host!r} is not covered by any of the gateway's certificates ({', '.join(sorted(certs))})"


def _parse_upstream_text(text: str) -> tuple[str, Upstream]:
    """The normalised upstream string and its `Upstream`."""
    target = _parse_upstream(text)
    if target.scheme == "workspace":
        return f"workspace:{target.host}:{target.port}", target
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}{target.base_path}", target


def _parse_upstream(text: str) -> Upstream:
    if len(text) > MAX_UPSTREAM:
        raise RuleError("upstream", f"longer than {MAX_UPSTREAM} characters")
    if text.startswith("workspace:"):
        return _parse_workspace(text)
    m = _UPSTREAM.match(text)
    if m is None:
        raise RuleError("upstream", "must be http(s)://host:port[/base] or workspace:<id>:<port>")
    scheme, authority, rest = m.group(1).lower(), m.group(2), m.group(3)
    if scheme not in ("http", "https"):
        raise RuleError("upstream", f"scheme {scheme!r} is not supported; use http, https or workspace:<id>:<port>")
    if "@" in authority:
        raise RuleError("upstream", "credentials in the URL are not supported; use request_headers")
    a = _AUTHORITY.match(authority)
    if a is None:
        raise RuleError("upstream", f"{authority!r} is not host:port")
    host = _upstream_host(a.group(1))
    if a.group(2) is None or a.group(2) == "":
        raise RuleError("upstream", f"needs an explicit port: {scheme}://{authority}:<port>")
    port = _port(a.group(2))
    if "?" in rest or "#" in rest:
        raise RuleError("upstream", "a query or fragment is not allowed; only a base path")
    base = ""
    if rest:
        try:
            base = check_prefix(rest)
        except PathError as e:
            raise RuleError("upstream", f"base {e}") from None
    return Upstream(scheme, host, port, "" if base == "/" else base)


def _parse_workspace(text: str) -> Upstream:
    m = _WORKSPACE.match(text)
    if m is None or m.group(1) is None:
        raise RuleError("upstream", "must be workspace:<id>:<port> with a workspace id of a-z, 0-9 and '-'")
    return Upstream("workspace", m.group(1), _port(m.group(2)))


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or text.startswith("0") or len(text) > 5 or int(text) > 65535:
        raise RuleError("upstream", f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _upstream_host(raw: str) -> str:
    """A lower-cased DNS name, dotted-quad IPv4 or IPv6 (without brackets)."""
    if raw.startswith("["):
        try:
            return str(ipaddress.IPv6Address(raw[1:-1]))
        except ValueError:
            raise RuleError("upstream", f"{raw!r} is not an IPv6 address") from None
    if not raw.isascii():
        raise RuleError("upstream", f"{raw!r} is not ASCII; write international names in punycode (xn--)")
    host = raw.lower()
    host = host[:-1] if host.endswith(".") else host
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Only the plain dotted quad: resolvers also read "127.1", "2130706433" or "0x7f.1" as addresses,
        # which would slip past the loop check.
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise RuleError("upstream", f"{raw!r} is not a dotted-quad IPv4 address") from None
    if len(host) > 253 or not all(_UPSTREAM_LABEL.match(label) for label in labels):
        raise RuleError("upstream", f"{raw!r} is not a host name")
    return host


def _check_target(target: Upstream, hosts: tuple[str, ...], ctx: RuleContext) -> None:
    """Refuse an unknown workspace, or an upstream that is the gateway itself (requests would go round forever).

    Only what can be seen without DNS: the gateway's listening addresses
    (loopback and wildcard listeners treated as the same machine), its main
    domain and workspace hosts, and this rule's own hosts. `RuleSet` checks the
    hosts of other rules.
    """
    if target.scheme == "workspace":
        if not ctx.workspace_exists(target.host):
            raise RuleError("upstream", f"no workspace {target.host!r}")
        return
    main = _clean_name(ctx.main_domain)
    name = target.host
    if name == main or name.endswith(".ws." + main) or name == "ws." + main:
        raise RuleError("upstream", f"points back at the gateway ({name} is its own domain)")
    if any(_pattern_matches(pattern, name) for pattern in hosts):
        raise RuleError("upstream", f"points back at the gateway ({name} is a host of this rule)")
    listening = [(a, _split_address(a)) for a in sorted(ctx.gateway_addresses)]
    same_port = [(a, listen[0]) for a, listen in listening if listen is not None and listen[1] == target.port]
    # The exact address first, so the message names what the admin wrote when it can.
    for address, host in sorted(same_port, key=lambda item: item[1] != name):
        if host == name or (_is_local(host) and _is_local(name)):
            raise RuleError("upstream", f"points back at the gateway (it listens on {address})")


def _split_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.strip().lower().rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = _clean_name(host)
    return host, int(port)


def _is_local(host: str) -> bool:
    """Loopback or unspecified: on the gateway's machine whatever else it is called."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _parse_headers(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise RuleError("request_headers", f"must be an object of header names to values, not {_json_type(value)}")
    if len(value) > MAX_HEADERS:
        raise RuleError("request_headers", f"at most {MAX_HEADERS} headers")
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, text in value.items():
        where = f"request_headers[{name!r}]"
        if not isinstance(name, str) or not _TOKEN.match(name) or len(name) > MAX_HEADER_NAME:
            raise RuleError(where, f"not a header name (a token of at most {MAX_HEADER_NAME} characters)")
        lower = name.lower()
        if lower in _FORBIDDEN_HEADERS or lower.startswith(_FORBIDDEN_HEADER_PREFIXES):
            raise RuleError(where, "the gateway sets this header itself; a rule cannot")
        if lower in seen:
            raise RuleError(where, f"same header as {seen[lower]!r}")
        seen[lower] = name
        if not isinstance(text, str):
            raise RuleError(where, f"must be a string, not {_json_type(text)}")
        if len(text) > MAX_HEADER_VALUE:
            raise RuleError(where, f"value longer than {MAX_HEADER_VALUE} characters")
        if not _VALUE.match(text):
            raise RuleError(where, "value must be visible ASCII (inner spaces allowed, no leading or trailing space)")
        out[name] = text
    return MappingProxyType(out)


def _pattern_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


# --- the index ----------------------------------------------------------------------


class _Paths:
    """The rules of one host pattern, by path prefix; `longest` bounds the walk in `find`."""

    __slots__ = ("longest", "rules")

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules
        self.longest = max(map(len, rules), default=0)

    def find(self, path: str) -> Rule | None:
        """The rule with the longest prefix of `path` on a segment boundary: one dict lookup per segment."""
        rules = self.rules
        end = len(path)
        if end > self.longest:
            end = path.rfind("/", 0, self.longest + 1)
        while end > 0:
            rule = rules.get(path[:end])
            if rule is not None:
                return rule
            end = path.rfind("/", 0, end)
        return rules.get("/")


class RuleSet:
    """An immutable index of rules. Changes return a new set, so the gateway swaps one reference atomically.

    A set never holds two rules with the same host pattern and path prefix,
    nor a rule whose upstream is a host of some rule in the set.
    """

    __slots__ = ("_exact", "_rules", "_up_names", "_up_suffixes", "_wild")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        self._exact: dict[str, _Paths] = {}
        # "*.example.com" is stored under "example.com".
        self._wild: dict[str, _Paths] = {}
        # How many rules use each upstream name, and each name's parent domains: loops are refused.
        self._up_names: dict[str, int] = {}
        self._up_suffixes: dict[str, int] = {}
        for rule in rules:
            if rule.id in self._rules:
                raise RuleError("id", f"rule {rule.id!r} is listed twice")
            self._add(rule, None)
            self._rules[rule.id] = rule

    # --- changes --------------------------------------------------------------------
    def with_rule(self, rule: Rule) -> RuleSet:
        """A new set with `rule` added, or replacing the rule with the same id (keeping its place)."""
        new = self._copy()
        touched: set[str] = set()
        old = new._rules.get(rule.id)
        if old is not None:
            new._drop(old, touched)
        new._add(rule, touched)
        new._rules[rule.id] = rule
        return new

    def without(self, rule_id: str) -> RuleSet:
        """A new set without the rule `rule_id`; KeyError if there is none."""
        old = self._rules[rule_id]
        new = self._copy()
        new._drop(old, set())
        del new._rules[rule_id]
        return new

    # --- lookups --------------------------------------------------------------------
    def match(self, host: str, path: str) -> Rule | None:
        """The rule for a normalised host and a canonical path, or None.

        The exact host first, then wildcards from the longest suffix down; the
        first pattern with a prefix of `path` answers, with its longest one.
        """
        paths = self._exact.get(host)
        if paths is not None:
            rule = paths.find(path)
            if rule is not None:
                return rule
        wild = self._wild
        if wild:
            dot = host.find(".")
            while dot >= 0:
                paths = wild.get(host[dot + 1 :])
                if paths is not None:
                    rule = paths.find(path)
                    if rule is not None:
                        return rule
                dot = host.find(".", dot + 1)
        return None

    def covers(self, host: str) -> bool:
        """Whether some rule's host pattern matches a normalised host (on any path)."""
        return self._host_owner(host) is not None

    def get(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"<RuleSet of {len(self._rules)} rules>"

    # --- internals ------------------------------------------------------------------
    def _copy(self) -> RuleSet:
        # Shallow: the per-pattern `_Paths` are shared until `_own` copies the ones a change touches.
        new = RuleSet.__new__(RuleSet)
        new._rules = dict(self._rules)
        new._exact = dict(self._exact)
        new._wild = dict(self._wild)
        new._up_names = dict(self._up_names)
        new._up_suffixes = dict(self._up_suffixes)
        return new

    def _table(self, pattern: str) -> tuple[dict[str, _Paths], str]:
        return (self._wild, pattern[2:]) if pattern.startswith("*.") else (self._exact, pattern)

    def _own(self, pattern: str, touched: set[str] | None) -> _Paths:
        """The `_Paths` of `pattern`, copied first if another set may still share it (None: nothing is shared)."""
        table, key = self._table(pattern)
        paths = table.get(key)
        if paths is None:
            paths = table[key] = _Paths({})
        elif touched is not None and pattern not in touched:
            paths = table[key] = _Paths(dict(paths.rules))
        if touched is not None:
            touched.add(pattern)
        return paths

    def _add(self, rule: Rule, touched: set[str] | None) -> None:
        """Index `rule` (not into `_rules`), refusing conflicts and loops."""
        for i, pattern in enumerate(rule.hosts):
            table, key = self._table(pattern)
            paths = table.get(key)
            other = paths.rules.get(rule.path_prefix) if paths is not None else None
            if other is not None and other.id != rule.id:
                raise RuleError(
                    f"hosts[{i}]", f"{pattern} with path prefix {rule.path_prefix} conflicts with rule {other.id}"
                )
            looped = self._up_names.get(pattern) if not pattern.startswith("*.") else self._up_suffixes.get(key)
            if looped:
                users = (r.id for r in self._rules.values() if _pattern_matches(pattern, _upstream_name(r)))
                user = next((u for u in users if u != rule.id), "?")
                raise RuleError(f"hosts[{i}]", f"{pattern} is the upstream of rule {user}; its requests would loop")
        name = _upstream_name(rule)
        if name:
            owner = self._host_owner(name) or (rule if any(_pattern_matches(p, name) for p in rule.hosts) else None)
            if owner is not None:
                raise RuleError("upstream", f"points back at the gateway ({name} is a host of rule {owner.id})")
        for pattern in rule.hosts:
            paths = self._own(pattern, touched)
            paths.rules[rule.path_prefix] = rule
            paths.longest = max(paths.longest, len(rule.path_prefix))
        for kind, key in _upstream_keys(name):
            counts = self._up_names if kind == "name" else self._up_suffixes
            counts[key] = counts.get(key, 0) + 1

    def _drop(self, rule: Rule, touched: set[str]) -> None:
        """Remove `rule` from the index (not from `_rules`)."""
        for pattern in rule.hosts:
            table, key = self._table(pattern)
            if key not in table:
                continue
            paths = self._own(pattern, touched)
            if paths.rules.get(rule.path_prefix) is rule:
                del paths.rules[rule.path_prefix]
                if not paths.rules:
                    del table[key]
                else:
                    paths.longest = max(map(len, paths.rules))
        for kind, key in _upstream_keys(_upstream_name(rule)):
            counts = self._up_names if kind == "name" else self._up_suffixes
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

    def _host_owner(self, host: str) -> Rule | None:
        """Some rule whose host pattern matches `host`."""
        paths = self._exact.get(host)
        if paths is not None:
            return next(iter(paths.rules.values()))
        dot = host.find(".")
        while dot >= 0:
            paths = self._wild.get(host[dot + 1 :])
            if paths is not None:
                return next(iter(paths.rules.values()))
            dot = host.find(".", dot + 1)
        return None


def _upstream_name(rule: Rule) -> str:
    """The host name a rule's traffic is sent to; "" for workspaces, which are reached through the launcher."""
    return "" if rule.target.scheme == "workspace" else rule.target.host


def _upstream_keys(name: str) -> Iterator[tuple[str, str]]:
    """("name", the name) and ("suffix", each parent domain): what a new host pattern is checked against."""
    if not name:
        return
    yield "name", name
    dot = name.find(".")
    while dot >= 0:
        yield "suffix", name[dot + 1 :]
        dot = name.find(".", dot + 1)
