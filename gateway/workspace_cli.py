"""`wsgate workspace`: start and manage workspaces through a gateway's REST API (/api/v1/workspaces).

A client of the API like any script: it needs the gateway's URL and a personal
access token with the `api` scope, and works from any machine that trusts the
gateway's certificate. Standard library only (http.client, ssl).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import socket
import ssl
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.config import Config, load_config

TIMEOUT = 30.0

# What the API calls a field, as the user typed it on this command line.
_OPTION_OF_FIELD = {
    "command": "--command",
    "base": "--base",
    "env": "--env",
    "ports": "--port",
    "ide_port": "--ide-port",
    "port": "PORT",
    "visibility": "public|private",
}


class CLIError(Exception):
    """A failure to report in one line on stderr; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the command line -------------------------------------------------------------------

DESCRIPTION = """\
Start, list, stop and delete workspaces, make their ports public or private,
and read their output, through the gateway's REST API (/api/v1/workspaces).

Every subcommand needs:
  the gateway's URL   --url, or WSGATE_URL, or derived from --config (domain and listen port)
  a token             --token, or WSGATE_TOKEN: a personal access token (wsg_...) with the
                      'api' scope, e.g. from `wsgate tokens create --owner <you> --name cli`
                      on the gateway host, or POST /api/v1/tokens while signed in
  trust in its cert   system CAs, plus --ca FILE (or WSGATE_CA), or by default the local CA
                      under the config's state_dir when the gateway uses its embedded CA
"""

_COMMON_EPILOG = """\
environment:
  WSGATE_URL    default for --url
  WSGATE_TOKEN  default for --token (preferred: a token on the command line shows in `ps`)
  WSGATE_CA     default for --ca

exit status: 0 on success, 1 when the gateway refuses or cannot be reached, 2 on usage errors.
"""


def _port_spec(value: str) -> dict[str, Any]:
    """`N[:name][:public|private]` -> the API's port object."""
    parts = value.split(":")
    if not parts[0].isdigit():
        raise argparse.ArgumentTypeError(f"expected N[:name][:public|private], got {value!r}")
    spec: dict[str, Any] = {"number": int(parts[0])}
    rest = parts[1:]
    if rest and rest[-1] in ("public", "private"):
        spec["visibility"] = rest.pop()
    if len(rest) > 1:
        raise argparse.ArgumentTypeError(f"expected N[:name][:public|private], got {value!r}")
    if rest and rest[0]:
        spec["name"] = rest[0]
    return spec


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, val


def _port_number(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}")
    return int(value)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `workspace` and its subcommands on the `wsgate` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--url", metavar="URL",
                   help="the gateway, https://<domain>[:port] (default: $WSGATE_URL, else the domain and "
                   "listen port of --config)")
    g.add_argument("--config", "-c", metavar="FILE",
                   help="gateway config file to derive the URL and the local CA from (default: embedded "
                   "defaults, i.e. https://wsgate.localhost:8443 and ./.wsgate)")
    g.add_argument("--token", metavar="TOKEN",
                   help="personal access token wsg_... with the 'api' scope (default: $WSGATE_TOKEN)")
    g.add_argument("--ca", metavar="FILE",
                   help="PEM CA certificate(s) to trust in addition to the system's (default: $WSGATE_CA, "
                   "else the config's local CA, see `wsgate certs ca`, when the gateway uses it)")

    def cmd(name: str, summary: str, description: str, *, json_output: bool = True) -> argparse.ArgumentParser:
        # Raw, for the examples and the epilog; plain paragraphs are wrapped here.
        text = "\n\n".join(par if "\n" in par else textwrap.fill(par, 79) for par in description.split("\n\n"))
        p = wsub.add_parser(name, help=summary, description=text, parents=[common], epilog=_COMMON_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if json_output:
            p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
        return p

    ws = sub.add_parser("workspace", help="start and manage workspaces through the API",
                        description=DESCRIPTION, epilog=_COMMON_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    wsub = ws.add_subparsers(dest="workspace_command", metavar="SUBCOMMAND")

    start = cmd("start", "start a new workspace",
                "Start a new workspace running CMD (with `sh -c`) and print its id, state and URLs.\n\n"
                "Each declared port is served at https://<port>-<id>.ws.<domain>/ (private: only you; "
                "public: anyone); the IDE port also at https://<id>.ws.<domain>/.\n\n"
                "example:\n"
                "  wsgate workspace start --command 'python3 -m http.server 8000' --port 8000:web:public")
    # dest: `command` is taken by wsgate's own subcommand.
    start.add_argument("--command", dest="shell_command", required=True, metavar="CMD",
                       help="the shell command the workspace runs")
    start.add_argument("--port", "-p", dest="ports", action="append", type=_port_spec, default=[],
                       metavar="N[:NAME][:public]",
                       help="declare port N, optionally named and public (private unless ':public'); repeatable")
    start.add_argument("--ide-port", type=_port_number, metavar="N",
                       help="the port that answers on https://<id>.ws.<domain>/")
    start.add_argument("--env", "-e", action="append", type=_env_pair, default=[], metavar="NAME=VALUE",
                       help="environment variable for the command; repeatable (the gateway stores it encrypted)")
    start.add_argument("--base", metavar="DIR",
                       help="read-only root filesystem to run on, one of the gateway's allowed bases "
                       "(default: the gateway's launcher.base)")

    cmd("list", "list your workspaces (all of them for admins)",
        "List your workspaces: id, state, owner, creation time, ports and command. Admins see everyone's.")
    for name, summary, description in (
        ("get", "show one workspace", "Show a workspace: state, command, times, exit code, ports and URLs."),
        ("stop", "stop a workspace (keeps it; `restart` runs it again)",
         "Stop a workspace: SIGTERM, then SIGKILL after the gateway's launcher.stop_grace. Its record, "
         "output and port settings stay until `delete`."),
        ("restart", "run a stopped workspace's command again",
         "Run the workspace's command again, with the same ports and environment (POST "
         "/api/v1/workspaces/ID/start). A workspace that is still running is left as it is: `stop` it first."),
        ("delete", "stop a workspace and delete it for good",
         "Stop the workspace if it runs and delete its record and output. Not undoable."),
    ):
        p = cmd(name, summary, description)
        p.add_argument("id", metavar="ID", help="the workspace id (w + 16 letters/digits, see `list`)")

    port = cmd("port", "make a port public or private",
               "Set who may open https://PORT-ID.ws.<domain>/: 'public' (anyone, no sign-in) or 'private' "
               "(only you). Only the workspace's owner may change it.")
    port.add_argument("id", metavar="ID", help="the workspace id")
    port.add_argument("port", metavar="PORT", type=_port_number, help="the port number")
    port.add_argument("visibility", choices=("public", "private"), help="public or private")

    logs = cmd("logs", "print a workspace's output",
               "Print the workspace's output (stdout and stderr) so far. With --follow, keep printing new "
               "output until the workspace ends or Ctrl-C.", json_output=False)
    logs.add_argument("id", metavar="ID", help="the workspace id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming new output")


# --- talking to the gateway -------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str  # https://host[:port], for messages
    host: str  # the name for SNI, certificate checks and Host
    port: int
    context: ssl.SSLContext
    token: str


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


@dataclass
class Reply:
    status: int
    data: Any


def default_ca(cfg: Config) -> Path | None:
    """The local CA a client should trust for this config, if the gateway uses it and it exists."""
    path = cfg.state_path / "ca" / "ca.pem"
    return path if not cfg.tls.certificates and path.is_file() else None


def target(args: argparse.Namespace) -> Target:
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
        raise CLIError("no token: pass --token or set WSGATE_TOKEN to a personal access token with the 'api' "
                       "scope (`wsgate tokens create --owner <provider>:<id> --name cli` on the gateway host)", 2)
    if not all("!" <= ch <= "~" for ch in token):
        raise CLIError("--token: a token is printable ASCII without spaces (wsg_...)", 2)

    ctx = ssl.create_default_context()
    ca = args.ca or os.environ.get("WSGATE_CA", "")
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"--ca {ca}: cannot load a PEM CA certificate from it ({_reason(e)})", 2) from None
    elif (local := default_ca(cfg)) is not None:
        try:
            ctx.load_verify_locations(cafile=str(local))
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"{local}: cannot load the local CA ({_reason(e)})", 2) from None
    return Target(shown, host, port, ctx, token)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or str(e)
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _connection_error(t: Target, e: BaseException) -> CLIError:
    if isinstance(e, ssl.SSLCertVerificationError):
        return CLIError(f"TLS: cannot verify the certificate of {t.url}: {_reason(e)}. Pass --ca FILE with the CA "
                        "that signed it (for the gateway's local CA: `wsgate certs ca --config FILE`)")
    if isinstance(e, ssl.SSLError):
        return CLIError(f"TLS handshake with {t.url} failed: {_reason(e)} (is it the gateway, over https?)")
    if isinstance(e, ConnectionRefusedError):
        return CLIError(f"cannot connect to {t.url}: connection refused (is the gateway running, is the port right?)")
    if isinstance(e, socket.gaierror):
        return CLIError(f"cannot connect to {t.url}: cannot resolve {t.host} ({_reason(e)})")
    if isinstance(e, TimeoutError):
        return CLIError(f"{t.url}: no answer within {TIMEOUT:g}s")
    if isinstance(e, http.client.HTTPException | ConnectionError):
        return CLIError(f"{t.url}: the connection broke off ({_reason(e)})")
    return CLIError(f"cannot connect to {t.url}: {_reason(e)}")


def _open(t: Target, method: str, path: str, body: Any = None) -> tuple[_Connection, http.client.HTTPResponse]:
    conn = _Connection(t, TIMEOUT)
    headers = {"Authorization": f"Bearer {t.token}", "Accept": "application/json", "User-Agent": "wsgate-cli"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise _connection_error(t, e) from None


def _api_error(t: Target, status: int, raw: bytes) -> CLIError:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        text = raw.decode("utf-8", "replace").strip().splitlines()
        detail = f": {text[0][:200]}" if text else ""
        return CLIError(f"{t.url}: HTTP {status}{detail} (is it a wsgate gateway?)")
    message = data["error"]
    field = data.get("field")
    if isinstance(field, str) and field:
        option = _OPTION_OF_FIELD.get(field)
        message += f" (field '{field}'" + (f", see {option})" if option else ")")
    if status == 401:
        message += "; check --token / WSGATE_TOKEN"
    return CLIError(message)


def call(t: Target, method: str, path: str, body: Any = None) -> Reply:
    conn, resp = _open(t, method, path, body)
    try:
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise _connection_error(t, e) from None
    finally:
        conn.close()
    if resp.status >= 400:
        raise _api_error(t, resp.status, raw)
    if not raw:
        return Reply(resp.status, None)
    try:
        return Reply(resp.status, json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        raise CLIError(f"{t.url}: HTTP {resp.status} with a body that is not JSON (is it a wsgate gateway?)") from None


def stream_logs(t: Target, workspace_id: str, follow: bool) -> None:
    path = _path(workspace_id) + "/logs" + ("?follow=1" if follow else "")
    conn, resp = _open(t, "GET", path)
    try:
        if resp.status >= 400:
            raise _api_error(t, resp.status, resp.read())
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
        raise _connection_error(t, e) from None
    finally:
        conn.close()


# --- output ---------------------------------------------------------------------------


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ports_short(w: dict[str, Any]) -> str:
    out = []
    for p in w.get("ports") or []:
        text = str(p.get("number"))
        if p.get("name"):
            text += f":{p['name']}"
        if p.get("visibility") == "public":
            text += ":public"
        out.append(text)
    return ",".join(out) or "-"


def print_table(workspaces: list[dict[str, Any]]) -> None:
    rows = [
        (str(w.get("id", "")), str(w.get("state", "")), str(w.get("owner", "")), _when(w.get("created"))[:16],
         _ports_short(w), " ".join(str(w.get("command", "")).split()))
        for w in workspaces
    ]
    head = ("ID", "STATE", "OWNER", "CREATED (UTC)", "PORTS", "COMMAND")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        command = r[5] if len(r[5]) <= 60 else r[5][:59] + "…"
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + command)


def print_workspace(w: dict[str, Any]) -> None:
    lines: list[tuple[str, str]] = [
        ("id", str(w.get("id"))),
        ("state", str(w.get("state"))),
        ("owner", str(w.get("owner"))),
        ("command", str(w.get("command"))),
        ("base", str(w.get("base") or "-")),
        ("created", _when(w.get("created"))),
        ("started", _when(w.get("started"))),
    ]
    if w.get("finished"):
        lines.append(("finished", _when(w.get("finished"))))
    if w.get("exit_code") is not None:
        lines.append(("exit code", str(w["exit_code"])))
    if w.get("error"):
        lines.append(("error", str(w["error"])))
    if w.get("ide_port"):
        lines.append(("ide", f"{w['ide_port']} {w.get('ide_url') or ''}".rstrip()))
    ports = w.get("ports") or []
    lines.append(("ports", "-" if not ports else ""))
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}".rstrip())
    for p in ports:
        name = f" ({p['name']})" if p.get("name") else ""
        print(f"  {p.get('number'):>5} {p.get('visibility', ''):<7}  {p.get('url', '')}{name}")
    tail = w.get("output_tail")
    if tail:
        print("output (last lines):")
        for line in str(tail).rstrip("\n").splitlines():
            print(f"  {line}")


def _path(workspace_id: str) -> str:
    return "/api/v1/workspaces/" + quote(workspace_id, safe="")


# --- running a subcommand ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
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


def _run(args: argparse.Namespace) -> int:
    t = target(args)
    command: str = args.workspace_command
    if command == "logs":
        stream_logs(t, args.id, args.follow)
        return 0
    if command == "start":
        body: dict[str, Any] = {"command": args.shell_command}
        if args.base:
            body["base"] = args.base
        if args.env:
            body["env"] = dict(args.env)
        if args.ports:
            body["ports"] = args.ports
        if args.ide_port is not None:
            body["ide_port"] = args.ide_port
        reply = call(t, "POST", "/api/v1/workspaces", body)
    elif command == "list":
        reply = call(t, "GET", "/api/v1/workspaces")
        if args.json:
            _print_json(reply.data)
        else:
            print_table(list(reply.data.get("workspaces", [])) if isinstance(reply.data, dict) else [])
        return 0
    elif command == "get":
        reply = call(t, "GET", _path(args.id))
    elif command == "stop":
        reply = call(t, "POST", _path(args.id) + "/stop")
    elif command == "restart":
        reply = call(t, "POST", _path(args.id) + "/start")
    elif command == "delete":
        call(t, "DELETE", _path(args.id))
        if not args.json:
            print(f"deleted {args.id}")
        return 0
    elif command == "port":
        reply = call(t, "PATCH", f"{_path(args.id)}/ports/{args.port}", {"visibility": args.visibility})
    else:
        raise CLIError(f"unknown subcommand {command!r}", 2)
    if args.json:
        _print_json(reply.data)
    elif isinstance(reply.data, dict):
        print_workspace(reply.data)
    return 0


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))

