"""The part every `wsgate` API client shares: where the gateway is, how to talk to it, how to fail.

`wsgate workspace`, `wsgate teams` and the like are clients of the REST API
(/api/v1) like any script: they need the gateway's URL, a personal access
token and trust in the gateway's certificate, and they work from any machine.
This module resolves those (flags, WSGATE_* variables, or a gateway config),
sends JSON over TLS with http.client, and turns every failure into one line
(`CLIError`) with the exit status the command returns: 1 when the gateway
refuses or cannot be reached, 2 for the user's own mistakes. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import socket
import ssl
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.config import Config, load_config

TIMEOUT = 30.0

COMMON_EPILOG = """\
environment:
  WSGATE_URL    default for --url
  WSGATE_TOKEN  default for --token (preferred: a token on the command line shows in `ps`)
  WSGATE_CA     default for --ca

exit status: 0 on success, 1 when the gateway refuses or cannot be reached, 2 on usage errors.
"""

DEFAULT_TOKEN_HELP = "personal access token wsg_... with the 'api' scope (default: $WSGATE_TOKEN)"
DEFAULT_TOKEN_HINT = (
    "a personal access token with the 'api' scope (`wsgate tokens create --owner <provider>:<id> --name cli` "
    "on the gateway host)"
)


class CLIError(Exception):
    """A failure to report in one line on stderr; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class APIError(CLIError):
    """The gateway answered with an error (4xx/5xx JSON `{"error", "field"?, ...}`).

    Kept apart from CLIError so a command can reword what it knows more about
    (a 412 after --if-match, a 403 that needs another scope) from `status`,
    `error`, `field` and the rest of the answer in `data`.
    """

    def __init__(self, message: str, status: int, error: str, field: str | None, data: Mapping[str, Any]) -> None:
        super().__init__(message, 1)
        self.status = status
        self.error = error
        self.field = field
        self.data = data


# --- the command line -------------------------------------------------------------------


# How a gateway admin gets a token for the admin commands (see gateway/tokens_cli.py).
ADMIN_TOKEN_COMMAND = "wsgate tokens create --owner <identity> --name X --scopes api,admin"
ADMIN_TOKEN = f"`{ADMIN_TOKEN_COMMAND}` on the gateway host"


def version_arg(get_command: str) -> Callable[[str], int]:
    """The argparse type of --if-match: a document version, read with `get_command`."""

    def parse(value: str) -> int:
        if not value.isascii() or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected a version number (see `{get_command}`), got {value!r}")
        return int(value)

    return parse


def connection_parent(*, token_help: str = DEFAULT_TOKEN_HELP) -> argparse.ArgumentParser:
    """The parent parser with the `connection` group (--url, --config, --token, --ca) every subcommand takes.

    A parent rather than options on the group's parser, so that they work after
    the subcommand (`wsgate workspace list --url ...`), where people type them.
    """
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--url", metavar="URL",
                   help="the gateway, https://<domain>[:port] (default: $WSGATE_URL, else the domain and "
                   "listen port of --config)")
    g.add_argument("--config", "-c", metavar="FILE",
                   help="gateway config file to derive the URL and the local CA from (default: embedded "
                   "defaults, i.e. https://wsgate.localhost:8443 and ./.wsgate)")
    g.add_argument("--token", metavar="TOKEN", help=token_help)
    g.add_argument("--ca", metavar="FILE",
                   help="PEM CA certificate(s) to trust in addition to the system's (default: $WSGATE_CA, "
                   "else the config's local CA, see `wsgate certs ca`, when the gateway uses it)")
    return common


def add_subcommand(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    *,
    parent: argparse.ArgumentParser,
    epilog: str = COMMON_EPILOG,
    json_output: bool = True,
) -> argparse.ArgumentParser:
    """Adds one subcommand with the connection options, its own help, and `--json` unless told otherwise.

    Paragraphs of `description` (separated by blank lines) without a line break
    of their own are wrapped; the others (examples) are kept as written.
    """
    text = "\n\n".join(par if "\n" in par else textwrap.fill(par, 79) for par in description.split("\n\n"))
    p = subparsers.add_parser(name, help=summary, description=text, parents=[parent], epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    if json_output:
        p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    return p


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a subcommand and turns its failures into one line on stderr and an exit status."""
    try:
        return func(args)
    except CLIError as e:
        print(f"wsgate: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`wsgate workspace logs ID | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


# --- where the gateway is ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A resolved gateway: everything needed to open a connection and to name it in messages."""

    url: str  # https://host[:port], for messages
    host: str  # the name for SNI, certificate checks and Host
    port: int
    context: ssl.SSLContext
    token: str


def default_ca(cfg: Config) -> Path | None:
    """The local CA a client should trust for this config, if the gateway uses it and it exists."""
    path = cfg.state_path / "ca" / "ca.pem"
    return path if not cfg.tls.certificates and path.is_file() else None


def target(args: argparse.Namespace, *, token_hint: str = DEFAULT_TOKEN_HINT) -> Target:
    """The gateway from --url/--token/--ca (`args`), else WSGATE_*, else derived from --config.

    `token_hint` completes "no token: pass --token or set WSGATE_TOKEN to ..." with
    the scopes this command needs and how to get such a token.
    """
    cfg = load_config(args.config)
    url = args.url or os.environ.get("WSGATE_URL", "")
    if not url:
        url = f"https://{cfg.domain}" + ("" if cfg.listen.port == 443 else f":{cfg.listen.port}")
    parts = urlsplit(url if "://" in url else "https://" + url)
    try:
        port = parts.port or 443
    except ValueError:
        raise CLIError(f"--url: bad port in {url!r}", 2) from None
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise CLIError(f"--url: expected https://<domain>[:port], got {url!r}", 2)
    host = parts.hostname
    shown = "https://" + (f"[{host}]" if ":" in host else host) + ("" if port == 443 else f":{port}")

    token = (args.token or os.environ.get("WSGATE_TOKEN", "")).strip()
    if not token:
        raise CLIError(f"no token: pass --token or set WSGATE_TOKEN to {token_hint}", 2)
    if not all("!" <= ch <= "~" for ch in token):
        raise CLIError("--token: a token is printable ASCII without spaces (wsg_...)", 2)

    ctx = ssl.create_default_context()
    ca = args.ca or os.environ.get("WSGATE_CA", "")
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"--ca {ca}: cannot load a PEM CA certificate from it ({reason(e)})", 2) from None
    elif (local := default_ca(cfg)) is not None:
        try:
            ctx.load_verify_locations(cafile=str(local))
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"{local}: cannot load the local CA ({reason(e)})", 2) from None
    return Target(shown, host, port, ctx, token)


def api_path(prefix: str, *segments: str) -> str:
    """`prefix` plus each segment percent-encoded whole, so that a name such as `../me` stays one segment."""
    return prefix.rstrip("/") + "".join("/" + quote(s, safe="") for s in segments)


# --- talking to it ----------------------------------------------------------------------


class _Connection(http.client.HTTPSConnection):
    """Names under .localhost always mean this machine (RFC 6761), even where the resolver does not know them."""

    def __init__(self, t: Target, timeout: float) -> None:
        super().__init__(t.host, t.port, timeout=timeout, context=t.context)
        self.tls = t.context

    def connect(self) -> None:
        host = self.host
        address = "localhost" if host == "localhost" or host.endswith(".localhost") else host
        sock = socket.create_connection((address, self.port), self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise


@dataclass(frozen=True)
class Reply:
    """A successful answer: status, decoded JSON (None for an empty body) and headers (lower-case names)."""

    status: int
    data: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def reason(e: BaseException) -> str:
    """The short human part of an exception, without errno numbers and class names where possible."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or str(e)
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def connection_error(t: Target, e: BaseException) -> CLIError:
    """What went wrong on the way to the gateway, and what to check."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return CLIError(f"TLS: cannot verify the certificate of {t.url}: {reason(e)}. Pass --ca FILE with the CA "
                        "that signed it (for the gateway's local CA: `wsgate certs ca --config FILE`)")
    if isinstance(e, ssl.SSLError):
        return CLIError(f"TLS handshake with {t.url} failed: {reason(e)} (is it the gateway, over https?)")
    if isinstance(e, ConnectionRefusedError):
        return CLIError(f"cannot connect to {t.url}: connection refused (is the gateway running, is the port right?)")
    if isinstance(e, socket.gaierror):
        return CLIError(f"cannot connect to {t.url}: cannot resolve {t.host} ({reason(e)})")
    if isinstance(e, TimeoutError):
        return CLIError(f"{t.url}: no answer within {TIMEOUT:g}s")
    if isinstance(e, http.client.HTTPException | ConnectionError):
        return CLIError(f"{t.url}: the connection broke off ({reason(e)})")
    return CLIError(f"cannot connect to {t.url}: {reason(e)}")


_INDEX = re.compile(r"\[\d+\]$")


def option_for(field_name: str, options: Mapping[str, str]) -> str | None:
    """The user's option for an API field: exact (`ports`), else without its index (`members[0]` -> `members`)."""
    return options.get(field_name) or options.get(_INDEX.sub("", field_name))


def api_error(t: Target, status: int, raw: bytes, options: Mapping[str, str] | None = None) -> CLIError:
    """The one-line message for an error answer; `options` maps the API's `field` to what the user typed.

    An APIError when the body is the API's JSON, a plain CLIError when something
    else answered (a proxy in between, another server on that port).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        text = raw.decode("utf-8", "replace").strip().splitlines()
        detail = f": {text[0][:200]}" if text else ""
        return CLIError(f"{t.url}: HTTP {status}{detail} (is it a wsgate gateway?)")
    message = data["error"]
    field_name = data.get("field")
    field_name = field_name if isinstance(field_name, str) and field_name else None
    if field_name is not None:
        option = option_for(field_name, options or {})
        message += f" (field '{field_name}'" + (f", see {option})" if option else ")")
    if status == 401:
        message += "; check --token / WSGATE_TOKEN"
    return APIError(message, status, data["error"], field_name, data)


def _open(
    t: Target, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> tuple[_Connection, http.client.HTTPResponse]:
    conn = _Connection(t, TIMEOUT)
    sent = {"Authorization": f"Bearer {t.token}", "Accept": "application/json", "User-Agent": "wsgate-cli",
            **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=sent)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise connection_error(t, e) from None


def call(
    t: Target,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
) -> Reply:
    """One JSON request; the decoded answer, or CLIError/APIError (see `api_error` for `options`)."""
    conn, resp = _open(t, method, path, body, headers)
    try:
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise connection_error(t, e) from None
    finally:
        conn.close()
    if resp.status >= 400:
        raise api_error(t, resp.status, raw, options)
    got = {k.lower(): v for k, v in resp.getheaders()}
    if not raw:
        return Reply(resp.status, None, got)
    try:
        return Reply(resp.status, json.loads(raw), got)
    except (ValueError, UnicodeDecodeError):
        raise CLIError(f"{t.url}: HTTP {resp.status} with a body that is not JSON (is it a wsgate gateway?)") from None


def stream(t: Target, path: str, *, follow: bool, options: Mapping[str, str] | None = None) -> None:
    """Copies a streamed answer (logs) to stdout as it arrives; with `follow`, without a read timeout."""
    conn, resp = _open(t, "GET", path)
    try:
        if resp.status >= 400:
            raise api_error(t, resp.status, resp.read(), options)
        if follow and conn.sock is not None:
            conn.sock.settimeout(None)  # quiet workspaces are fine; Ctrl-C ends it
        out = sys.stdout.buffer
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise connection_error(t, e) from None
    finally:
        conn.close()


# --- output -----------------------------------------------------------------------------


def when(ts: Any) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, or `-` for none."""
    if not isinstance(ts, int | float) or not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]], *, last_max: int | None = None) -> None:
    """Columns padded to their widest cell; the last one is not padded, and cut at `last_max` characters."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    for r in [head, *rows]:
        last = r[-1]
        if last_max is not None and len(last) > last_max:
            last = last[: last_max - 1] + "…"
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + last)


def print_fields(lines: Sequence[tuple[str, str | Sequence[str]]]) -> None:
    """`key: value` lines with the values aligned, as `get` commands show one object.

    A list value shows one entry a line, the later ones under the first.
    """
    width = max((len(k) for k, _ in lines), default=0) + 1
    for key, value in lines:
        values = [value] if isinstance(value, str) else list(value) or [""]
        print(f"{key + ':':<{width}} {values[0]}".rstrip())
        for more in values[1:]:
            print(f"{'':<{width}} {more}")
