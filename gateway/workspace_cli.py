"""`wsgate workspace`: start and manage workspaces through a gateway's REST API (/api/v1/workspaces).

A client of the API like any script: it needs the gateway's URL and a personal
access token with the `api` scope, and works from any machine that trusts the
gateway's certificate. The connection, requests and errors are those of every
API client (gateway.api_client); this module holds what is about workspaces.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.api_client import (
    COMMON_EPILOG,
    CLIError,
    Target,
    add_subcommand,
    api_path,
    call,
    connection_parent,
    print_fields,
    print_json,
    print_table,
    run_command,
    stream,
    target,
    when,
)

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
    common = connection_parent()

    def cmd(name: str, summary: str, description: str, *, json_output: bool = True) -> argparse.ArgumentParser:
        return add_subcommand(wsub, name, summary, description, parent=common, json_output=json_output)

    ws = sub.add_parser("workspace", help="start and manage workspaces through the API",
                        description=DESCRIPTION, epilog=COMMON_EPILOG,
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


# --- output ---------------------------------------------------------------------------


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


def print_workspaces(workspaces: list[dict[str, Any]]) -> None:
    rows = [
        (str(w.get("id", "")), str(w.get("state", "")), str(w.get("owner", "")), when(w.get("created"))[:16],
         _ports_short(w), " ".join(str(w.get("command", "")).split()))
        for w in workspaces
    ]
    print_table(("ID", "STATE", "OWNER", "CREATED (UTC)", "PORTS", "COMMAND"), rows, last_max=60)


def print_workspace(w: dict[str, Any]) -> None:
    lines: list[tuple[str, str]] = [
        ("id", str(w.get("id"))),
        ("state", str(w.get("state"))),
        ("owner", str(w.get("owner"))),
        ("command", str(w.get("command"))),
        ("base", str(w.get("base") or "-")),
        ("created", when(w.get("created"))),
        ("started", when(w.get("started"))),
    ]
    if w.get("finished"):
        lines.append(("finished", when(w.get("finished"))))
    if w.get("exit_code") is not None:
        lines.append(("exit code", str(w["exit_code"])))
    if w.get("error"):
        lines.append(("error", str(w["error"])))
    if w.get("ide_port"):
        lines.append(("ide", f"{w['ide_port']} {w.get('ide_url') or ''}".rstrip()))
    ports = w.get("ports") or []
    lines.append(("ports", "-" if not ports else ""))
    print_fields(lines)
    for p in ports:
        name = f" ({p['name']})" if p.get("name") else ""
        print(f"  {p.get('number'):>5} {p.get('visibility', ''):<7}  {p.get('url', '')}{name}")
    tail = w.get("output_tail")
    if tail:
        print("output (last lines):")
        for line in str(tail).rstrip("\n").splitlines():
            print(f"  {line}")


def _path(workspace_id: str) -> str:
    return api_path("/api/v1/workspaces", workspace_id)


# --- running a subcommand ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


def _call(t: Target, method: str, path: str, body: Any = None) -> Any:
    return call(t, method, path, body, options=_OPTION_OF_FIELD).data


def _run(args: argparse.Namespace) -> int:
    t = target(args)
    command: str = args.workspace_command
    if command == "logs":
        stream(t, _path(args.id) + "/logs" + ("?follow=1" if args.follow else ""), follow=args.follow)
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
        data = _call(t, "POST", "/api/v1/workspaces", body)
    elif command == "list":
        data = _call(t, "GET", "/api/v1/workspaces")
        if args.json:
            print_json(data)
        else:
            print_workspaces(list(data.get("workspaces", [])) if isinstance(data, dict) else [])
        return 0
    elif command == "get":
        data = _call(t, "GET", _path(args.id))
    elif command == "stop":
        data = _call(t, "POST", _path(args.id) + "/stop")
    elif command == "restart":
        data = _call(t, "POST", _path(args.id) + "/start")
    elif command == "delete":
        _call(t, "DELETE", _path(args.id))
        if not args.json:
            print(f"deleted {args.id}")
        return 0
    elif command == "port":
        data = _call(t, "PATCH", f"{_path(args.id)}/ports/{args.port}", {"visibility": args.visibility})
    else:
        raise CLIError(f"unknown subcommand {command!r}", 2)
    if args.json:
        print_json(data)
    elif isinstance(data, dict):
        print_workspace(data)
    return 0
