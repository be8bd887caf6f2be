"""The gateway's configuration: one TOML file validated into frozen dataclasses.

Every key has a safe default, so an empty file (or no file) is the embedded
default. Validation is strict: an unknown key, a wrong type or an impossible
value raises `ConfigError` naming the file, the dotted key and what is expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from auth.policy import PUBLIC, parse_access
from auth.teams import TeamError, parse_team

DEFAULT_DOMAIN = "wsgate.localhost"
_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True)
class ListenConfig:
    address: str = "127.0.0.1"
    port: int = 8443
    # Plain-HTTP port that only redirects to HTTPS (0 = off).
    http_redirect_port: int = 0
    backlog: int = 1024
    # The HTTPS port browsers use, when a load balancer or port mapping puts the gateway
    # behind another port (0 = `port`); it goes into every URL the gateway writes.
    public_port: int = 0


@dataclass(frozen=True)
class CertificateConfig:
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class TLSConfig:
    # Empty: the local CA under state_dir issues the certificate.
    certificates: tuple[CertificateConfig, ...] = ()
    # Seconds between checks of the certificate files for renewals (0 = only on SIGHUP).
    reload_interval: float = 10.0
    session_tickets: bool = True


@dataclass(frozen=True)
class ProxyConfig:
    connect_timeout: float = 5.0
    # Time allowed for the upstream to start its response.
    response_timeout: float = 60.0
    # A proxied connection (or WebSocket) with no traffic either way for this long is closed.
    idle_timeout: float = 3600.0
    # Idle keep-alive connections kept per upstream, and how long each may idle.
    pool_size: int = 64
    pool_idle_timeout: float = 30.0
    # Client addresses (IPs or CIDR networks) whose X-Forwarded-*, Forwarded and
    # X-Request-Id headers are believed; from anyone else they are replaced.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_url_length: int = 8192
    # 0 = unlimited (bodies are streamed, never buffered whole).
    max_body_bytes: int = 0
    # A client must send a complete request head within this many seconds.
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    # SIGTERM: seconds to let in-flight requests finish before closing.
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    # 0 = no metrics listener.
    port: int = 9464


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclass(frozen=True)
class LauncherConfig:
    """The embedded launcher: workspaces as namespaces on this machine."""

    enabled: bool = True
    # The read-only base of every workspace: the host's / (zero-config) or an unpacked rootfs.
    base: str = "/"
    # Other bases a workspace may ask for by path.
    allowed_bases: tuple[str, ...] = ()
    # Host paths a workspace on the host's / never sees (the state directory is always hidden).
    hide: tuple[str, ...] = ("/root", "/home", "/etc/ssh", "/var/log")
    # Subordinate host ids (root only): workspace i maps its root to id_base + i * id_count.
    id_base: int = 1_000_000
    id_count: int = 65536
    max_workspaces: int = 64
    # Per-workspace limits (0 = none), applied through cgroups where the host allows.
    memory_mb: int = 4096
    pids: int = 4096
    cpus: float = 0.0
    # Seconds between SIGTERM and SIGKILL on stop.
    stop_grace: float = 10.0
    # Bound of the kept output, in bytes.
    log_bytes: int = 1 << 20
    # Empty: <state_dir>/keys/launcher.keyring (created 0600 on first start).
    keyring_file: str = ""
    # Stop every workspace when the gateway shuts down (otherwise the next start adopts them).
    stop_on_exit: bool = False


@dataclass(frozen=True)
class ProviderConfig:
    """One identity provider; which URL keys apply depends on `type`."""

    # Unique, lower-case; the identity prefix (`<name>:<id>`) and `/auth/login/<name>`.
    name: str = ""
    type: Literal["github", "gitlab", "bitbucket", "oidc"] = "oidc"
    display_name: str = ""
    client_id: str = ""
    client_secret: str = ""
    # Read the secret from this file instead (keeps it out of the config file).
    client_secret_file: str = ""
    # github: https://github.com / https://api.github.com (GitHub Enterprise: https://ghe.example.com
    # and https://ghe.example.com/api/v3); gitlab: https://gitlab.com (the API is <web_url>/api/v4);
    # bitbucket: https://bitbucket.org / https://api.bitbucket.org/2.0.
    web_url: str = ""
    api_url: str = ""
    # oidc: the issuer; discovery is <issuer>/.well-known/openid-configuration.
    issuer: str = ""
    # Scopes to ask for instead of the provider's defaults.
    scopes: tuple[str, ...] = ()
    # oidc: the ID-token/userinfo claim that lists groups.
    groups_claim: str = "groups"
    # Only members of one of these groups (unqualified, as the provider names them) may sign in.
    allowed_groups: tuple[str, ...] = ()
    # PEM bundle to trust for this provider's TLS (self-managed servers with a private CA).
    ca_file: str = ""


@dataclass(frozen=True)
class AuthConfig:
    providers: tuple[ProviderConfig, ...] = ()
    # The built-in "pick a user name" sign-in for local development. Refused unless
    # listen.address is a loopback address.
    dev_login: bool = False
    # Identities (`<provider>:<id>`) with the admin level.
    admins: tuple[str, ...] = ()
    # A session unused for this long ends; none lives longer than session_lifetime.
    session_idle_timeout: float = 8 * 3600.0
    session_lifetime: float = 7 * 86400.0
    # Seconds a person's org/group membership is trusted before it is fetched again.
    membership_ttl: float = 300.0
    # Extra origins (`https://host[:port]`) allowed to open cookie-authenticated WebSockets.
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticRouteConfig:
    """A host served by a fixed upstream (admin rules at runtime come later)."""

    host: str = ""
    upstream: str = ""
    # public | authenticated | admin | team:<provider>:<group>
    access: str = "authenticated"


@dataclass(frozen=True)
class StaticWorkspaceConfig:
    """A workspace port served by a fixed address, for running without the launcher."""

    id: str = ""
    port: int = 0
    upstream: str = ""
    # The port that answers on `<id>.ws.<domain>` itself.
    ide: bool = False
    # The creator's identity (`<provider>:<id>`): the only person who may open it...
    owner: str = ""
    # ...unless the port is public.
    public: bool = False


@dataclass(frozen=True)
class TeamConfig:
    """A team fixed in the config (read-only through the API)."""

    name: str = ""
    # Qualified provider groups: `<provider name>:<org or group>`, e.g. "github:acme-inc".
    groups: tuple[str, ...] = ()
    # Identities (`<provider>:<id>`) in the team regardless of groups.
    members: tuple[str, ...] = ()
    # Identities that may change the team's members (they are members too).
    admins: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrebuildsConfig:
    # Output kept per prebuild (sealed at rest when it ends); older output is dropped first.
    log_bytes: int = 8 << 20
    # Seconds between checks that a person following a live log may still read it.
    recheck_interval: float = 1.0


@dataclass(frozen=True)
class Config:
    domain: str = DEFAULT_DOMAIN
    state_dir: str = ".wsgate"
    # Worker processes sharing the listening socket; 0 = one per CPU.
    workers: int = 1
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # redis://host:port/db: sessions, tickets and tokens shared by workers and replicas.
    # Empty: in memory (sessions) and SQLite under state_dir (tokens).
    redis_url: str = ""
    routes: tuple[StaticRouteConfig, ...] = ()
    workspaces: tuple[StaticWorkspaceConfig, ...] = ()
    teams: tuple[TeamConfig, ...] = ()
    prebuilds: PrebuildsConfig = field(default_factory=PrebuildsConfig)
    # Where the file came from, for messages; not a key.
    source: str = field(default="<embedded defaults>", compare=False)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def public_port(self) -> int:
        return self.listen.public_port or self.listen.port

    @property
    def workspace_suffix(self) -> str:
        return "ws." + self.domain


def with_dev_login(cfg: Config) -> Config:
    """The config with the dev sign-in on (`serve --dev-login`), validated again: it must listen on loopback."""
    data = dataclasses.replace(cfg, auth=dataclasses.replace(cfg.auth, dev_login=True))
    check_semantics(data, cfg.source + " (with --dev-login)")
    return data


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; None gives the embedded defaults."""
    if path is None:
        return Config()
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    cfg: Config = _build(Config, data, source, "")
    cfg = dataclasses.replace(cfg, source=source)
    check_semantics(cfg, source)
    return cfg


# --- generic structural validation -------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"an array of {_describe(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _build(cls: Any, data: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{where}': expected a table")
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known keys here: {', '.join(sorted(known))})"
        )
    kwargs = {name: _convert(hints[name], value, source, prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{source}: key '{key}': expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise wrong
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported config type {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported config type {tp}")


# --- meaning -------------------------------------------------------------------------


def _fail(source: str, key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(f"{source}: key '{key}': expected {expected}, got {got!r}")


def _is_hostname(name: str) -> bool:
    if not name or len(name) > 253 or name.endswith("."):
        return False
    for label in name.split("."):
        if not (1 <= len(label) <= 63) or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return False
    return True


def _check_upstream_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port is not None
        and not parts.query
        and not parts.fragment
        and not parts.username
    )


def _check_port(source: str, key: str, value: int, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise _fail(source, key, f"a port number {low}-65535", value)


def _check_ports_apart(cfg: Config, source: str) -> None:
    """Two listeners on one address and port cannot both bind; found here, before anything serves."""
    listeners = [
        ("listen.port", cfg.listen.address, cfg.listen.port),
        ("listen.http_redirect_port", cfg.listen.address, cfg.listen.http_redirect_port),
        ("metrics.port", cfg.metrics.address, cfg.metrics.port),
    ]
    for i, (key, address, port) in enumerate(listeners):
        for other, other_address, other_port in listeners[:i]:
            overlap = (
                address == other_address
                or ipaddress.ip_address(address).is_unspecified
                or ipaddress.ip_address(other_address).is_unspecified
            )
            if port and port == other_port and overlap:
                raise _fail(source, key, f"a port other than {other}'s", port)


def check_semantics(cfg: Config, source: str) -> None:
    if not _is_hostname(cfg.domain) or cfg.domain != cfg.domain.lower() or "." not in cfg.domain:
        expected = "a lower-case DNS name with at least two labels, such as 'example.com'"
        raise _fail(source, "domain", expected, cfg.domain)
    if not cfg.state_dir:
        raise _fail(source, "state_dir", "a directory path", cfg.state_dir)
    if not 0 <= cfg.workers <= 64:
        raise _fail(source, "workers", "0 (one per CPU) to 64", cfg.workers)
    _check_launcher(cfg, source)
    for key, addr in (("listen.address", cfg.listen.address), ("metrics.address", cfg.metrics.address)):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise _fail(source, key, "an IP address such as '127.0.0.1' or '::'", addr) from None
    _check_port(source, "listen.port", cfg.listen.port, allow_zero=True)
    _check_port(source, "listen.http_redirect_port", cfg.listen.http_redirect_port, allow_zero=True)
    _check_port(source, "metrics.port", cfg.metrics.port, allow_zero=True)
    _check_ports_apart(cfg, source)
    if cfg.listen.backlog < 1:
        raise _fail(source, "listen.backlog", "a positive integer", cfg.listen.backlog)
    for i, c in enumerate(cfg.tls.certificates):
        if not c.cert or not c.key:
            raise _fail(source, f"tls.certificates[{i}]", "both 'cert' and 'key' paths", dataclasses.asdict(c))
    if cfg.tls.reload_interval < 0:
        raise _fail(source, "tls.reload_interval", "a number of seconds >= 0", cfg.tls.reload_interval)
    positive = {
        "proxy.connect_timeout": cfg.proxy.connect_timeout,
        "proxy.response_timeout": cfg.proxy.response_timeout,
        "proxy.idle_timeout": cfg.proxy.idle_timeout,
        "proxy.pool_idle_timeout": cfg.proxy.pool_idle_timeout,
        "limits.header_timeout": cfg.limits.header_timeout,
        "limits.keepalive_timeout": cfg.limits.keepalive_timeout,
        "limits.shutdown_grace": cfg.limits.shutdown_grace,
    }
    for key, value in positive.items():
        if not value > 0:
            raise _fail(source, key, "a number of seconds > 0", value)
    if cfg.proxy.pool_size < 0:
        raise _fail(source, "proxy.pool_size", "an integer >= 0", cfg.proxy.pool_size)
    for i, net in enumerate(cfg.proxy.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _fail(source, f"proxy.trusted_proxies[{i}]", "an IP address or CIDR network", net) from None
    lim = cfg.limits
    for key, value, low in (
        ("limits.max_header_bytes", lim.max_header_bytes, 1024),
        ("limits.max_headers", lim.max_headers, 8),
        ("limits.max_url_length", lim.max_url_length, 256),
        ("limits.max_connections", lim.max_connections, 1),
        ("limits.max_body_bytes", lim.max_body_bytes, 0),
    ):
        if value < low:
            raise _fail(source, key, f"an integer >= {low}", value)
    hosts: set[str] = set()
    for i, r in enumerate(cfg.routes):
        key = f"routes[{i}]"
        host = r.host.lower().rstrip(".")
        if not _is_hostname(host):
            raise _fail(source, f"{key}.host", "a DNS host name", r.host)
        if host == cfg.domain or host.endswith("." + cfg.workspace_suffix) or host == cfg.workspace_suffix:
            raise _fail(source, f"{key}.host", "a host other than the main domain and workspace hosts", r.host)
        if host in hosts:
            raise _fail(source, f"{key}.host", "a host not already routed", r.host)
        hosts.add(host)
        if not _check_upstream_url(r.upstream):
            raise _fail(source, f"{key}.upstream", "an http(s)://host:port[/base] URL", r.upstream)
    seen: set[tuple[str, int]] = set()
    ide: set[str] = set()
    for i, w in enumerate(cfg.workspaces):
        key = f"workspaces[{i}]"
        if not w.id or not _is_hostname(w.id) or "." in w.id or w.id != w.id.lower():
            raise _fail(source, f"{key}.id", "a lower-case DNS label", w.id)
        _check_port(source, f"{key}.port", w.port, allow_zero=False)
        if (w.id, w.port) in seen:
            raise _fail(source, f"{key}.port", "a port not already listed for this workspace", w.port)
        seen.add((w.id, w.port))
        if w.ide:
            if w.id in ide:
                raise _fail(source, f"{key}.ide", "one IDE port per workspace", w.ide)
            ide.add(w.id)
        if not _check_upstream_url("http://" + w.upstream) or "/" in w.upstream:
            raise _fail(source, f"{key}.upstream", "a host:port address", w.upstream)
        if not w.public and not is_identity(w.owner):
            raise _fail(source, f"{key}.owner", "the creator's identity '<provider>:<id>' (or public = true)", w.owner)
    _check_listen_extra(cfg, source)
    _check_auth(cfg, source)
    _check_teams(cfg, source)


def _check_teams(cfg: Config, source: str) -> None:
    names: set[str] = set()
    for i, t in enumerate(cfg.teams):
        try:
            parse_team(t.name, {"groups": list(t.groups), "members": list(t.members), "admins": list(t.admins)})
        except TeamError as e:
            value = getattr(t, e.field.split("[")[0], t.name) if e.field != "name" else t.name
            raise ConfigError(f"{source}: key 'teams[{i}].{e.field}': {e.reason}, got {value!r}") from None
        if t.name in names:
            raise _fail(source, f"teams[{i}].name", "a name not already used by another team", t.name)
        names.add(t.name)
    p = cfg.prebuilds
    if not 4096 <= p.log_bytes <= 1 << 30:
        raise _fail(source, "prebuilds.log_bytes", "from 4096 to 1073741824 bytes", p.log_bytes)
    if not 0.05 <= p.recheck_interval <= 60:
        raise _fail(source, "prebuilds.recheck_interval", "seconds from 0.05 to 60", p.recheck_interval)


def _check_launcher(cfg: Config, source: str) -> None:
    lc = cfg.launcher
    for key, value in (("launcher.base", lc.base), *((f"launcher.allowed_bases[{i}]", b)
                                                     for i, b in enumerate(lc.allowed_bases))):
        if not value.startswith("/"):
            raise _fail(source, key, "an absolute directory path", value)
    for i, path in enumerate(lc.hide):
        if not path.startswith("/") or "/../" in path + "/":
            raise _fail(source, f"launcher.hide[{i}]", "an absolute path", path)
    if lc.id_base < 65536 or lc.id_base + lc.id_count * lc.max_workspaces >= 2**32 - 1:
        raise _fail(source, "launcher.id_base", "at least 65536, with every workspace's range below 2^32-1", lc.id_base)
    if not 1 <= lc.id_count <= 1 << 24:
        raise _fail(source, "launcher.id_count", "1 to 16777216", lc.id_count)
    if not 1 <= lc.max_workspaces <= 4096:
        raise _fail(source, "launcher.max_workspaces", "1 to 4096", lc.max_workspaces)
    for key, number in (("launcher.memory_mb", lc.memory_mb), ("launcher.pids", lc.pids)):
        if number < 0:
            raise _fail(source, key, "0 (no limit) or more", number)
    if lc.cpus < 0:
        raise _fail(source, "launcher.cpus", "0 (no limit) or a positive number of CPUs", lc.cpus)
    if not 0 <= lc.stop_grace <= 3600:
        raise _fail(source, "launcher.stop_grace", "0 to 3600 seconds", lc.stop_grace)
    if not 4096 <= lc.log_bytes <= 1 << 30:
        raise _fail(source, "launcher.log_bytes", "4096 to 1073741824", lc.log_bytes)


def is_identity(text: str) -> bool:
    provider, sep, uid = text.partition(":")
    return bool(sep and _PROVIDER_NAME.fullmatch(provider) and uid and uid.isprintable() and " " not in uid)


def _is_url(text: str, *, allow_path: bool = True) -> bool:
    """https://host[:port][/path]; plain http only to a loopback address (local test servers)."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    if parts.query or parts.fragment or parts.username or not parts.hostname:
        return False
    if not allow_path and parts.path.strip("/"):
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme == "http":
        try:
            return ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return parts.hostname == "localhost"
    return False


def _check_listen_extra(cfg: Config, source: str) -> None:
    _check_port(source, "listen.public_port", cfg.listen.public_port, allow_zero=True)
    if cfg.redis_url:
        try:
            parts = urlsplit(cfg.redis_url)
            parts.port  # noqa: B018
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise _fail(source, "redis_url", "a URL such as 'redis://127.0.0.1:6379/0'", cfg.redis_url)
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise _fail(source, "redis_url", "a database number as the path, such as '/0'", cfg.redis_url)


def _check_auth(cfg: Config, source: str) -> None:
    a = cfg.auth
    names: set[str] = set()
    for i, p in enumerate(a.providers):
        key = f"auth.providers[{i}]"
        if not _PROVIDER_NAME.fullmatch(p.name) or p.name == "dev":
            raise _fail(source, f"{key}.name", "a lower-case name of letters, digits and dashes (not 'dev')", p.name)
        if p.name in names:
            raise _fail(source, f"{key}.name", "a name no other provider uses", p.name)
        names.add(p.name)
        if not p.client_id:
            raise _fail(source, f"{key}.client_id", "the OAuth client id", p.client_id)
        if not p.client_secret and not p.client_secret_file:
            raise _fail(source, f"{key}.client_secret", "the OAuth client secret (or client_secret_file)", "")
        if p.client_secret and p.client_secret_file:
            raise _fail(source, f"{key}.client_secret_file", "only one of client_secret and client_secret_file", "both")
        if p.type == "oidc":
            if not p.issuer or not _is_url(p.issuer):
                raise _fail(source, f"{key}.issuer", "the issuer URL (https://...)", p.issuer)
        elif p.issuer:
            raise _fail(source, f"{key}.issuer", f"no issuer for type '{p.type}' (use web_url)", p.issuer)
        if p.type == "gitlab" and p.api_url:
            raise _fail(source, f"{key}.api_url", "no api_url for GitLab (it is <web_url>/api/v4)", p.api_url)
        for field_name in ("web_url", "api_url"):
            value = getattr(p, field_name)
            if value and (p.type == "oidc" or not _is_url(value)):
                expected = "an https:// base URL" if p.type != "oidc" else "nothing for type 'oidc' (use issuer)"
                raise _fail(source, f"{key}.{field_name}", expected, value)
        if p.ca_file and not os.path.isfile(p.ca_file):
            raise _fail(source, f"{key}.ca_file", "a readable PEM file", p.ca_file)
        if not p.groups_claim:
            raise _fail(source, f"{key}.groups_claim", "a claim name", p.groups_claim)
    if a.dev_login:
        try:
            loopback = ipaddress.ip_address(cfg.listen.address).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise _fail(
                source, "auth.dev_login", "false unless listen.address is a loopback address", a.dev_login
            )
    for i, ident in enumerate(a.admins):
        if not is_identity(ident):
            raise _fail(source, f"auth.admins[{i}]", "an identity '<provider>:<id>' such as 'github:583231'", ident)
    for key, value in (
        ("auth.session_idle_timeout", a.session_idle_timeout),
        ("auth.session_lifetime", a.session_lifetime),
        ("auth.membership_ttl", a.membership_ttl),
    ):
        if not value > 0:
            raise _fail(source, key, "a number of seconds > 0", value)
    for i, origin in enumerate(a.allowed_origins):
        if not _is_url(origin, allow_path=False) or origin.endswith("/"):
            raise _fail(source, f"auth.allowed_origins[{i}]", "an origin such as 'https://ide.example.com'", origin)
    enabled = bool(a.providers) or a.dev_login
    for i, r in enumerate(cfg.routes):
        try:
            access = parse_access(r.access)
        except ValueError:
            raise _fail(
                source, f"routes[{i}].access", "public, authenticated, admin or team:<name>", r.access
            ) from None
        if access.level != PUBLIC and not enabled:
            raise _fail(
                source, f"routes[{i}].access", "'public' while no [[auth.providers]] is configured", r.access
            )
    if enabled and cfg.worker_count > 1 and not cfg.redis_url:
        raise _fail(source, "redis_url", "a Redis URL when workers > 1 and sign-in is on (sessions are shared)", "")
