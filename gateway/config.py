"""The gateway's configuration: one TOML file validated into frozen dataclasses.

Every key has a safe default, so an empty file (or no file) is the embedded
default. Validation is strict: an unknown key, a wrong type or an impossible
value raises `ConfigError` naming the file, the dotted key and what is expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

DEFAULT_DOMAIN = "wsgate.localhost"


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True)
class ListenConfig:
    address: str = "127.0.0.1"
    port: int = 8443
    # Plain-HTTP port that only redirects to HTTPS (0 = off).
    http_redirect_port: int = 0
    backlog: int = 1024


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
class StaticRouteConfig:
    """A host served by a fixed upstream (admin rules at runtime come later)."""

    host: str = ""
    upstream: str = ""


@dataclass(frozen=True)
class StaticWorkspaceConfig:
    """A workspace port served by a fixed address, for running without the launcher."""

    id: str = ""
    port: int = 0
    upstream: str = ""
    # The port that answers on `<id>.ws.<domain>` itself.
    ide: bool = False


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
    routes: tuple[StaticRouteConfig, ...] = ()
    workspaces: tuple[StaticWorkspaceConfig, ...] = ()
    # Where the file came from, for messages; not a key.
    source: str = field(default="<embedded defaults>", compare=False)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def workspace_suffix(self) -> str:
        return "ws." + self.domain


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
    _check_semantics(cfg, source)
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


def _check_semantics(cfg: Config, source: str) -> None:
    if not _is_hostname(cfg.domain) or cfg.domain != cfg.domain.lower() or "." not in cfg.domain:
        expected = "a lower-case DNS name with at least two labels, such as 'example.com'"
        raise _fail(source, "domain", expected, cfg.domain)
    if not cfg.state_dir:
        raise _fail(source, "state_dir", "a directory path", cfg.state_dir)
    if not 0 <= cfg.workers <= 64:
        raise _fail(source, "workers", "0 (one per CPU) to 64", cfg.workers)
    for key, addr in (("listen.address", cfg.listen.address), ("metrics.address", cfg.metrics.address)):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise _fail(source, key, "an IP address such as '127.0.0.1' or '::'", addr) from None
    _check_port(source, "listen.port", cfg.listen.port, allow_zero=True)
    _check_port(source, "listen.http_redirect_port", cfg.listen.http_redirect_port, allow_zero=True)
    _check_port(source, "metrics.port", cfg.metrics.port, allow_zero=True)
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
