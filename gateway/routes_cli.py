"""`wsgate routes`: list, show, create, change, delete, export and import admin routing rules (/api/v1/routes).

A client of the API like `wsgate teams` (same connection options, see
gateway.api_client). Every call needs a gateway admin's token with the 'admin'
scope. The rule's fields, defaults and validation are the gateway's
(routing.rules); this module only checks the shape of what it sends (which
keys, one rule or a list of them with ids) and turns the API's answers into
messages in terms of this command line (--upstream, --if-match, the file and
its key). `export` writes TOML (`[[routes]]` tables) or JSON that `import`
reads back; `import` puts only the rules that differ and can prune the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import re
import sys
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.api_client import (
    ADMIN_TOKEN,
    ADMIN_TOKEN_COMMAND,
    COMMON_EPILOG,
    APIError,
    CLIError,
    Target,
    add_subcommand,
    api_path,
    call,
    connection_parent,
    print_fields,
    print_json,
    print_table,
    reason,
    run_command,
    target,
    version_arg,
)
from routing.rules import Rule

API = "/api/v1/routes"


def _fields_and_defaults() -> tuple[tuple[str, ...], dict[str, Any]]:
    """A rule's keys in the API's order, and the defaults of those that have one (from `routing.rules.Rule`)."""
    names: list[str] = []
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(Rule):
        if not f.init:
            continue
        names.append(f.name)
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = dict(f.default_factory())
    return tuple(names), defaults


FIELDS, DEFAULTS = _fields_and_defaults()

# What the API calls a field, as the user typed it with flags.
_OPTION_OF_FIELD = {
    "id": "ID",
    "hosts": "--host",
    "path_prefix": "--prefix",
    "upstream": "--upstream",
    "access": "--access",
    "websocket": "--no-websocket",
    "strip_prefix": "--strip-prefix",
    "preserve_host": "--preserve-host",
    "connect_timeout": "--connect-timeout",
    "idle_timeout": "--idle-timeout",
    "request_headers": "--header",
    "identity_headers": "--identity-headers",
    "If-Match": "--if-match",
}
# With --file, the rule's fields are keys of the file (see _explain).
_OPTION_OF_FIELD_WITH_FILE = {"id": "ID", "If-Match": "--if-match"}

# --- the command line -------------------------------------------------------------------

DESCRIPTION = f"""\
List, show, create, change, delete, export and import the gateway's admin
routing rules through its REST API (/api/v1/routes). A rule puts a service
behind the gateway's sign-in: requests to its hosts (under path_prefix) are
forwarded to its upstream once the access level admits the person. Changes
apply at once on every worker and replica.

Every subcommand takes a gateway admin's token with the 'admin' scope besides
'api'; on the gateway host:
    {ADMIN_TOKEN_COMMAND}

Every subcommand needs:
  the gateway's URL   --url, or WSGATE_URL, or derived from --config (domain and listen port)
  a token             --token, or WSGATE_TOKEN: a personal access token (wsg_...) with the
                      'api' and 'admin' scopes
  trust in its cert   system CAs, plus --ca FILE (or WSGATE_CA), or by default the local CA
                      under the config's state_dir when the gateway uses its embedded CA
"""

_TOKEN_HELP = "personal access token wsg_... with the 'api' and 'admin' scopes (default: $WSGATE_TOKEN)"
_TOKEN_HINT = f"a gateway admin's personal access token with the 'api' and 'admin' scopes ({ADMIN_TOKEN})"

_RULE_FILE = """\
A rule file (.toml or .json) holds one rule's keys; only hosts and upstream are
required, the others have the defaults shown:
  hosts = ["app.example.com"]
  path_prefix = "/"
  upstream = "http://10.0.0.5:8080"
  access = "authenticated"          # public, admin, team:<name>, users:<id>,...
  websocket = true
  strip_prefix = false
  preserve_host = false
  connect_timeout = 5.0
  idle_timeout = 300.0
  request_headers = { X-Env = "prod" }
  identity_headers = false
"""


_version = version_arg("wsgate routes get ID")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}")
    return seconds


def _header(value: str) -> tuple[str, str]:
    name, colon, text = value.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), text.strip()


def _describe(text: str) -> str:
    """Prose paragraphs wrapped without breaking options at their dashes; the others (examples) as written."""
    return "\n\n".join(
        par if "\n" in par else textwrap.fill(par, 79, break_on_hyphens=False) for par in text.split("\n\n"))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `routes` and its subcommands on the `wsgate` subparsers."""
    common = connection_parent(token_help=_TOKEN_HELP)
    routes = sub.add_parser("routes", help="list and manage admin routing rules through the API",
                            description=DESCRIPTION, epilog=COMMON_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = routes.add_subparsers(dest="routes_command", metavar="SUBCOMMAND")

    add_subcommand(rsub, "list", "list the routing rules",
_describe(                   "List every routing rule: id, hosts, path prefix, upstream, access level and version "
                   "(for --if-match). Takes a token with the 'admin' scope.\n\n"
                   "examples:\n"
                   "  wsgate routes list\n"
                   "  wsgate routes list --json"), parent=common)

    get = add_subcommand(rsub, "get", "show one routing rule",
_describe(                         "Show a rule with all its fields (defaults included) and its version. With --json, "
                         "the API's JSON, which `put --file` reads back once 'version' is left out.\n\n"
                         "example:\n"
                         "  wsgate routes get web"), parent=common)
    get.add_argument("id", metavar="ID", help="the rule's id")

    put = add_subcommand(rsub, "put", "create a routing rule or replace it",
_describe(                         "Create the rule ID, or replace it whole: a field not given takes its default. "
                         "Give the fields with the flags (--host and --upstream at least) or in a file, "
                         "not both. The gateway checks the rule (hosts covered by its certificates, no "
                         "conflict with other rules, no upstream pointing back at it) and applies it at "
                         "once.\n\n"
                         "With --if-match VERSION the change is made only if the rule is still at that "
                         "version (see `get`): nobody else's change is undone. --if-match 0 or "
                         "--create-only only create.\n\n"
                         + _RULE_FILE + "\n"
                         "examples:\n"
                         "  wsgate routes put web --host app.example.com --upstream http://10.0.0.5:8080 "
                         "--access team:web\n"
                         "  wsgate routes put docs --host docs.example.com --prefix /api --strip-prefix "
                         "--upstream http://docs:9000 --header 'X-Env: prod' --access public\n"
                         "  wsgate routes put web --file web.toml --if-match 3"), parent=common)
    put.add_argument("id", metavar="ID",
                     help="the rule: 1 to 63 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    put.add_argument("--host", dest="hosts", action="append", default=[], metavar="HOST",
                     help="a host the rule answers for: a name or *.suffix covered by the gateway's "
                     "certificates; repeatable")
    put.add_argument("--prefix", metavar="PATH", help="the path prefix it answers under (default: /)")
    put.add_argument("--upstream", metavar="URL",
                     help="where requests go: http(s)://host:port[/base] or workspace:<id>:<port>")
    put.add_argument("--access", metavar="LEVEL",
                     help="who may use it: public, authenticated (default), admin, team:<name> or "
                     "users:<provider>:<id>,...")
    put.add_argument("--no-websocket", dest="websocket", action="store_false",
                     help="refuse WebSocket upgrades (default: allowed)")
    put.add_argument("--strip-prefix", action="store_true", help="remove the path prefix before forwarding")
    put.add_argument("--preserve-host", action="store_true",
                     help="forward the request's Host instead of the upstream's")
    put.add_argument("--identity-headers", action="store_true",
                     help="also send plain X-Wsgate-User/-Login/-Email headers besides the signed "
                     "X-Wsgate-Assertion")
    put.add_argument("--header", dest="headers", action="append", default=[], type=_header,
                     metavar="'NAME: VALUE'", help="a header to add to forwarded requests; repeatable")
    put.add_argument("--connect-timeout", type=_seconds, metavar="SECONDS",
                     help=f"to connect to the upstream (default: {DEFAULTS['connect_timeout']:g})")
    put.add_argument("--idle-timeout", type=_seconds, metavar="SECONDS",
                     help=f"to wait on an idle connection (default: {DEFAULTS['idle_timeout']:g})")
    put.add_argument("--file", "-f", metavar="FILE", help="read the rule from FILE.toml or FILE.json instead")
    cond = put.add_mutually_exclusive_group()
    cond.add_argument("--if-match", type=_version, metavar="VERSION",
                      help="change the rule only if it is still at VERSION (0: only create it)")
    cond.add_argument("--create-only", action="store_true", help="only create the rule; fail if it exists")

    delete = add_subcommand(rsub, "delete", "delete a routing rule",
_describe(                            "Delete a rule; its hosts stop answering at once and its open WebSockets are "
                            "closed.\n\n"
                            "examples:\n"
                            "  wsgate routes delete web\n"
                            "  wsgate routes delete web --if-match 4"), parent=common, json_output=False)
    delete.add_argument("id", metavar="ID", help="the rule's id")
    delete.add_argument("--if-match", type=_version, metavar="VERSION",
                        help="delete the rule only if it is still at VERSION")

    export = add_subcommand(rsub, "export", "write every routing rule to a file",
_describe(                            "Write every rule, with all its fields and without versions, as TOML "
                            "([[routes]] tables) or JSON ({\"routes\": [...]}), which `import` reads back: "
                            "to keep rules in version control or copy them to another gateway.\n\n"
                            "examples:\n"
                            "  wsgate routes export --output routes.toml\n"
                            "  wsgate routes export --format json > routes.json"), parent=common,
                            json_output=False)
    export.add_argument("--format", choices=("toml", "json"),
                        help="default: json for an --output ending in .json, else toml")
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")

    imp = add_subcommand(rsub, "import", "create and replace routing rules from a file",
_describe(                         "Put every rule of FILE on the gateway: rules that differ from the gateway's are "
                         "created or replaced, the others left alone, and each outcome is reported. The "
                         "file is checked for shape first (every rule has an id, no id twice, only known "
                         "keys); the gateway judges each rule, and a rule it refuses does not stop the "
                         "others (the exit status is then 1). A rule changed on the gateway since it was "
                         "read is not overwritten.\n\n"
                         "FILE is what `export` writes: TOML with one [[routes]] table per rule, each with "
                         "its id, or JSON {\"routes\": [{\"id\": ..., ...}]}.\n\n"
                         "examples:\n"
                         "  wsgate routes import routes.toml --dry-run\n"
                         "  wsgate routes import routes.toml --prune"), parent=common, json_output=False)
    imp.add_argument("file", metavar="FILE", help="a .toml or .json file of rules")
    imp.add_argument("--prune", action="store_true", help="also delete the gateway's rules that FILE does not have")
    imp.add_argument("--dry-run", "-n", action="store_true",
                     help="print what would change, change nothing (the gateway's checks of each rule are "
                     "not run)")


# --- files ------------------------------------------------------------------------------


def read_data(path: str, label: str) -> Any:
    """The parsed content of a .toml or .json file; CLIError (exit 2) names it (`label`)."""
    kind = Path(path).suffix.lower()
    if kind not in (".toml", ".json"):
        raise CLIError(f"{label}: expected a .toml or .json file", 2)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CLIError(f"{label}: cannot read it ({reason(e)})", 2) from None
    try:
        return tomllib.loads(raw.decode()) if kind == ".toml" else json.loads(raw)
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not UTF-8 text", 2) from None
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"{path}: not valid TOML: {e}", 2) from None
    except ValueError as e:
        raise CLIError(f"{path}: not valid JSON: {e}", 2) from None


def check_rule_keys(data: Any, where: str, version_hint: str) -> dict[str, Any]:
    """`data` if it is an object of a rule's keys; CLIError (exit 2) at `where` otherwise.

    Only the keys are checked: the gateway judges the values, and its answer
    is reported against the same file and key.
    """
    if not isinstance(data, dict):
        raise CLIError(f"{where}: expected a table of a rule's keys ({', '.join(FIELDS)})", 2)
    if "version" in data:
        raise CLIError(f"{where}: key 'version': not part of a rule (`get` and `list` report it); {version_hint}", 2)
    for key in data:
        if key not in FIELDS:
            raise CLIError(f"{where}: key '{key}': unknown (known: {', '.join(FIELDS)})", 2)
    if "id" in data and not isinstance(data["id"], str):
        raise CLIError(f"{where}: key 'id': expected a string", 2)
    return dict(data)


def read_rule_file(path: str, rule_id: str) -> dict[str, Any]:
    """One rule from `put --file`; CLIError (exit 2) names the file and the key."""
    data = read_data(path, f"--file {path}")
    if isinstance(data, dict) and "routes" in data:
        raise CLIError(f"{path}: key 'routes': a file of several rules; use `wsgate routes import {path}`", 2)
    version = data.get("version") if isinstance(data, dict) else None
    hint = f"remove it and pass --if-match {version} instead" if isinstance(version, int) else "remove it"
    rule = check_rule_keys(data, path, hint)
    if "id" in rule and rule["id"] != rule_id:
        raise CLIError(f"{path}: key 'id': {rule['id']!r} is not the rule ID {rule_id!r} (or leave it out)", 2)
    return rule


def read_import_file(path: str) -> list[dict[str, Any]]:
    """The rules of an import file, each with its id, ids unique; CLIError (exit 2) says where it is wrong."""
    data = read_data(path, path)
    if not isinstance(data, dict):
        raise CLIError(f"{path}: expected [[routes]] tables (TOML) or {{\"routes\": [...]}} (JSON)", 2)
    if "routes" not in data:
        if "hosts" in data or "upstream" in data:
            raise CLIError(f"{path}: one rule, not a list of them: put it under [[routes]] (with its id), "
                           "or use `wsgate routes put ID --file FILE`", 2)
        raise CLIError(f"{path}: key 'routes': missing; expected [[routes]] tables (TOML) or "
                       "{\"routes\": [...]} (JSON)", 2)
    for key in data:
        if key != "routes":
            raise CLIError(f"{path}: key '{key}': unknown (an import file holds only routes)", 2)
    entries = data["routes"]
    if not isinstance(entries, list):
        raise CLIError(f"{path}: key 'routes': expected a list of rules, got {_kind(entries)}", 2)
    rules: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    hint = "remove it (`wsgate routes export` writes files without versions)"
    for i, entry in enumerate(entries):
        where = f"{path}: routes[{i}]"
        rule = check_rule_keys(entry, where, hint)
        rule_id = rule.get("id")
        if rule_id is None:
            raise CLIError(f"{where}: key 'id': missing; every rule of an import file has its id", 2)
        if rule_id in seen:
            raise CLIError(f"{where}: id {rule_id!r} is also the id of routes[{seen[rule_id]}]", 2)
        seen[rule_id] = i
        rules.append(rule)
    return rules


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# --- TOML ---------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as is (UTF-8)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError(f"{text!r} holds a lone surrogate, which TOML cannot hold")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_value(value: Any) -> str:
    """A TOML value for JSON data: strings, booleans, numbers, arrays and (inline) tables; no null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # always with '.' or 'e': stays a float
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"{value!r} has no TOML form")


def routes_toml(rules: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """An import file: `[[routes]]` tables of `key = value` lines (`routes = []` when there are none)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")
    if not rules:
        lines.append("routes = []")
    for i, rule in enumerate(rules):
        if i:
            lines.append("")
        lines.append("[[routes]]")
        lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in rule.items())
    return "\n".join(lines) + "\n"


# --- output ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def print_routes(rules: list[dict[str, Any]]) -> None:
    rows = [
        (str(r.get("id", "")), ",".join(str(h) for h in r.get("hosts") or []) or "-", str(r.get("path_prefix", "")),
         str(r.get("upstream", "")), str(r.get("access", "")), _show(r.get("version")))
        for r in rules
    ]
    print_table(("ID", "HOSTS", "PREFIX", "UPSTREAM", "ACCESS", "VERSION"), rows)


def print_route(rule: dict[str, Any]) -> None:
    """`key: value` lines in the API's order; a list's further entries aligned under its first one."""
    lines: list[tuple[str, list[str]]] = [("id", [str(rule.get("id"))]), ("version", [_show(rule.get("version"))])]
    for key in FIELDS[1:]:
        value = rule.get(key)
        if key == "hosts":
            lines.append((key, [str(h) for h in value or []] or ["-"]))
        elif key == "request_headers":
            lines.append((key, [f"{k}: {v}" for k, v in (value or {}).items()] or ["-"]))
        elif key in ("connect_timeout", "idle_timeout") and isinstance(value, int | float):
            lines.append((key, [f"{value:g}s"]))
        else:
            lines.append((key, [_show(value)]))
    print_fields(lines)


# --- running a subcommand ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


def _run(args: argparse.Namespace) -> int:
    command: str = args.routes_command
    body: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    # The user's mistakes first, before anything is asked of the gateway.
    if command == "put":
        body = _put_body(args)
    elif command == "import":
        rules = read_import_file(args.file)
    t = target(args, token_hint=_TOKEN_HINT)
    try:
        if command == "import":
            return _import(t, args, rules)
        if command == "export":
            return _export(t, args)
        return _request(t, args, body)
    except APIError as e:
        raise _explain(e, args) from None


def _put_body(args: argparse.Namespace) -> dict[str, Any]:
    flags = [name for name, given in (
        ("--host", args.hosts), ("--prefix", args.prefix is not None), ("--upstream", args.upstream is not None),
        ("--access", args.access is not None), ("--no-websocket", not args.websocket),
        ("--strip-prefix", args.strip_prefix), ("--preserve-host", args.preserve_host),
        ("--identity-headers", args.identity_headers), ("--header", args.headers),
        ("--connect-timeout", args.connect_timeout is not None), ("--idle-timeout", args.idle_timeout is not None),
    ) if given]
    if args.file:
        if flags:
            raise CLIError(f"give --file or the rule's flags ({', '.join(flags)}), not both", 2)
        return read_rule_file(args.file, args.id)
    missing = [name for name, given in (("--host", args.hosts), ("--upstream", args.upstream)) if not given]
    if missing:
        raise CLIError(f"put needs {' and '.join(missing)} (or --file FILE with the rule)", 2)
    headers: dict[str, str] = {}
    for name, value in args.headers:
        if name in headers:
            raise CLIError(f"--header: {name!r} given twice", 2)
        headers[name] = value
    body: dict[str, Any] = {
        "hosts": list(args.hosts),
        "path_prefix": args.prefix,
        "upstream": args.upstream,
        "access": args.access,
        "websocket": args.websocket,
        "strip_prefix": args.strip_prefix,
        "preserve_host": args.preserve_host,
        "connect_timeout": args.connect_timeout,
        "idle_timeout": args.idle_timeout,
        "request_headers": headers,
        "identity_headers": args.identity_headers,
    }
    return {k: v for k, v in body.items() if v is not None}


def _options(args: argparse.Namespace, body: Mapping[str, Any]) -> dict[str, str]:
    """The API's field names -> the option the user typed, for this put."""
    if args.file:
        return _OPTION_OF_FIELD_WITH_FILE
    # The API names a header's field `request_headers['Name']`.
    headers = body.get("request_headers", {})
    return {**_OPTION_OF_FIELD, **{f"request_headers[{name!r}]": "--header" for name in headers}}


def _conditions(args: argparse.Namespace) -> dict[str, str]:
    if getattr(args, "create_only", False):
        return {"If-None-Match": "*"}
    version = getattr(args, "if_match", None)
    return {} if version is None else {"If-Match": f'"{version}"'}


def _request(t: Target, args: argparse.Namespace, body: dict[str, Any]) -> int:
    command: str = args.routes_command
    if command == "list":
        data = call(t, "GET", API).data
        if args.json:
            print_json(data)
        else:
            print_routes(_rule_list(t, data))
        return 0
    path = api_path(API, args.id)
    if command == "get":
        reply = call(t, "GET", path)
    elif command == "put":
        reply = call(t, "PUT", path, body, headers=_conditions(args), options=_options(args, body))
        if not args.json and isinstance(reply.data, dict):
            done = "created" if reply.status == 201 else "replaced"
            print(f"{done} route {args.id!r}, version {reply.data.get('version')}")
    elif command == "delete":
        call(t, "DELETE", path, headers=_conditions(args))
        print(f"deleted route {args.id!r}")
        return 0
    else:
        raise CLIError(f"unknown subcommand {command!r}", 2)
    if args.json:
        print_json(reply.data)
    elif isinstance(reply.data, dict):
        print_route(reply.data)
    return 0


def _rule_list(t: Target, data: Any) -> list[dict[str, Any]]:
    routes = data.get("routes") if isinstance(data, dict) else None
    if not isinstance(routes, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in routes):
        raise CLIError(f"{t.url}: the list of routes is not what this client expects (is it a wsgate gateway?)")
    return routes


def _definition(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule as a file holds it: the API's fields in their order, without `version`."""
    return {key: rule[key] for key in FIELDS if key in rule} | {
        key: value for key, value in rule.items() if key not in FIELDS and key != "version"}


def _export(t: Target, args: argparse.Namespace) -> int:
    rules = [_definition(r) for r in _rule_list(t, call(t, "GET", API).data)]
    output: str | None = args.output
    fmt = args.format or ("json" if output and output.lower().endswith(".json") else "toml")
    if fmt == "json":
        text = json.dumps({"routes": rules}, indent=2, ensure_ascii=False) + "\n"
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        header = (f"wsgate routing rules of {t.url}, exported {stamp}\n"
                  "apply with: wsgate routes import FILE [--prune] [--dry-run]")
        try:
            text = routes_toml(rules, header)
        except ValueError as e:
            raise CLIError(f"cannot write these rules as TOML ({e}); use --format json") from None
    if output is None or output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise CLIError(f"--output {output}: cannot write it ({reason(e)})", 2) from None
    print(f"exported {len(rules)} route{'' if len(rules) == 1 else 's'} to {output} ({fmt})")
    return 0


# --- import -------------------------------------------------------------------------------


def _comparable(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule with its defaults filled in, as the gateway would store it where that is plain to see."""
    out = {**DEFAULTS, **{k: v for k, v in rule.items() if k != "version"}}
    hosts = out.get("hosts")
    if isinstance(hosts, list):
        out["hosts"] = [h.strip().lower().removesuffix(".") if isinstance(h, str) else h for h in hosts]
    access = out.get("access")
    if isinstance(access, str) and access.startswith("team:"):
        out["access"] = access.lower()
    elif isinstance(access, str) and access.startswith("users:"):
        out["access"] = "users:" + ",".join(sorted(u.strip() for u in access[6:].split(",")))
    for key in ("connect_timeout", "idle_timeout"):
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _changed_keys(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    a, b = _comparable(new), _comparable(old)
    return [key for key in FIELDS if a.get(key) != b.get(key)]


def _import(t: Target, args: argparse.Namespace, rules: list[dict[str, Any]]) -> int:
    path: str = args.file
    current = {r["id"]: r for r in _rule_list(t, call(t, "GET", API).data)}
    wanted = {r["id"] for r in rules}
    creates: list[dict[str, Any]] = []
    replaces: list[tuple[dict[str, Any], list[str]]] = []
    unchanged: list[str] = []
    for rule in rules:
        have = current.get(rule["id"])
        if have is None:
            creates.append(rule)
        elif changed := _changed_keys(rule, have):
            replaces.append((rule, changed))
        else:
            unchanged.append(rule["id"])
    deletes = [rule_id for rule_id in sorted(current) if rule_id not in wanted] if args.prune else []
    kept = 0 if args.prune else len([rule_id for rule_id in current if rule_id not in wanted])

    if args.dry_run:
        for rule in creates:
            print(f"would create   {rule['id']}")
        for rule, changed in replaces:
            print(f"would replace  {rule['id']} (version {current[rule['id']].get('version')}; changes "
                  f"{', '.join(changed)})")
        for rule_id in unchanged:
            print(f"unchanged      {rule_id}")
        for rule_id in deletes:
            print(f"would delete   {rule_id} (not in {path})")
        summary = (f"dry run, nothing changed: {len(creates)} to create, {len(replaces)} to replace, "
                   f"{len(unchanged)} unchanged, {len(deletes)} to delete")
        print(summary + (f", {kept} on the gateway not in the file (kept; --prune deletes them)" if kept else ""))
        return 0

    for rule_id in unchanged:
        print(f"unchanged  {rule_id}")
    pending = [*creates, *(rule for rule, _ in replaces)]
    failed: dict[str, str] = {}
    done = {"created": 0, "replaced": 0, "deleted": 0}
    deleted = not deletes
    # Rules of one file may depend on one another (a host moving from one rule to another, a renamed
    # rule taking its old one's host): what the gateway refused is tried again once others are in
    # place, and once the pruned rules are gone, while that makes progress.
    while pending:
        progress = False
        for rule in list(pending):
            rule_id = rule["id"]
            have = current.get(rule_id)
            headers = {"If-None-Match": "*"} if have is None else _if_match(have)
            try:
                reply = call(t, "PUT", api_path(API, rule_id), rule, headers=headers)
            except APIError as e:
                failed[rule_id] = _import_failure(path, rule_id, e)
                if e.status != 400:  # a conflict with the file's other rules is a 400; others stay as they are
                    pending.remove(rule)
                continue
            pending.remove(rule)
            failed.pop(rule_id, None)
            progress = True
            outcome = "created" if have is None else "replaced"
            done[outcome] += 1
            version = reply.data.get("version") if isinstance(reply.data, dict) else None
            print(f"{outcome:<10} {rule_id} (version {version})")
        if not pending:
            break
        if not deleted:
            done["deleted"] += _prune(t, path, deletes, current, failed)
            deleted = True
        elif not progress:
            break
    if not deleted:
        done["deleted"] += _prune(t, path, deletes, current, failed)

    for message in failed.values():
        print(f"wsgate: {message}", file=sys.stderr)
    summary = (f"{path}: {done['created']} created, {done['replaced']} replaced, {len(unchanged)} unchanged, "
               f"{done['deleted']} deleted")
    if kept:
        summary += f"; {kept} on the gateway not in the file (kept; --prune deletes them)"
    if failed:
        print(summary + f", {len(failed)} failed")
        raise CLIError(f"{path}: {len(failed)} of {len(rules) + len(deletes)} changes failed "
                       f"({', '.join(sorted(failed))}); the others were made")
    print(summary)
    return 0


def _if_match(rule: Mapping[str, Any]) -> dict[str, str]:
    """Change `rule` only if it is still as read."""
    version = rule.get("version")
    return {"If-Match": f'"{version}"'} if isinstance(version, int) else {}


def _prune(t: Target, path: str, deletes: list[str], current: dict[str, dict[str, Any]],
           failed: dict[str, str]) -> int:
    count = 0
    for rule_id in deletes:
        try:
            call(t, "DELETE", api_path(API, rule_id), headers=_if_match(current[rule_id]))
        except APIError as e:
            if e.status != 404:  # already gone is what was wanted
                failed[rule_id] = _import_failure(path, rule_id, e, deleting=True)
                continue
        count += 1
        print(f"{'deleted':<10} {rule_id} (not in {path})")
    return count


def _import_failure(path: str, rule_id: str, e: APIError, *, deleting: bool = False) -> str:
    """One line for a rule of an import file that the gateway refused."""
    where = f"route {rule_id!r}"
    if e.status == 412:
        what = "deleted" if deleting else "written"
        return (f"{where}: changed on the gateway while importing, so it was not {what}; "
                f"check it with `wsgate routes get {rule_id}` and import again")
    if deleting:
        return f"{where}: not deleted: {e.error}"
    if e.status == 400 and e.field and e.field not in ("If-Match",):
        detail = e.error.removeprefix(f"{e.field}: ")
        return f"{path}: {where}: key '{e.field}': {detail}"
    return f"{path}: {where}: {e}"


# --- errors -------------------------------------------------------------------------------


def _explain(e: APIError, args: argparse.Namespace) -> CLIError:
    """The API's refusal in terms of this command line: the file, --if-match, the token's scopes."""
    rule_id = getattr(args, "id", "")
    command: str = args.routes_command
    if e.status == 403:
        return CLIError(f"{e}; a gateway admin gets such a token with {ADMIN_TOKEN}")
    if e.status == 404 and rule_id:
        return CLIError(f"{e.error} {rule_id!r} (see `wsgate routes list`)")
    if e.status == 400 and e.field and command == "put" and args.file and e.field not in ("id", "If-Match"):
        detail = e.error.removeprefix(f"{e.field}: ")
        return CLIError(f"{args.file}: key '{e.field}': {detail}")
    if e.status == 412:
        version = getattr(args, "if_match", None)
        current = e.data.get("current")
        again = f"read it again with `wsgate routes get {rule_id}` and retry"
        if getattr(args, "create_only", False):
            return CLIError(f"route {rule_id!r} already exists; --create-only only creates a route "
                            f"(to replace it: --if-match VERSION, see `wsgate routes get {rule_id}`)")
        if command == "put" and "current" in e.data and current is None:
            return CLIError(f"route {rule_id!r} does not exist, so it is not at version {version} (--if-match)")
        if version == 0 and isinstance(current, int):
            return CLIError(f"route {rule_id!r} already exists (version {current}); --if-match 0 only creates it")
        if isinstance(current, int):
            return CLIError(f"route {rule_id!r} changed since you read it: it is at version {current}, not "
                            f"{version} (--if-match); {again}")
        return CLIError(f"route {rule_id!r} is not at version {version} (--if-match): it changed since you read "
                        f"it or does not exist; {again}")
    return e
