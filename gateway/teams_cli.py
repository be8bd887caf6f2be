"""`wsgate teams`: list, show, create, change and delete teams through the REST API (/api/v1/teams).

A client of the API like `wsgate workspace` (same connection options, see
gateway.api_client), so that teams are managed from any machine, with the
same rules as in the API: members read their teams, a team's admins change
it, gateway admins (with a token that carries the 'admin' scope) do anything,
and teams from the config file are read-only. What the API answers is turned
into messages in terms of this command line (--member, --if-match, the file).
"""

from __future__ import annotations

import argparse
import json
import tomllib
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

_LISTS = ("groups", "members", "admins")

# What the API calls a field, as the user typed it with flags.
_OPTION_OF_FIELD = {
    "groups": "--group",
    "members": "--member",
    "admins": "--admin",
    "name": "NAME",
    "If-Match": "--if-match",
}
# With --file, the lists' fields are keys of the file (see _explain).
_OPTION_OF_FIELD_WITH_FILE = {"name": "NAME", "If-Match": "--if-match"}

# --- the command line -------------------------------------------------------------------

DESCRIPTION = f"""\
List, show, create, change and delete teams through the gateway's REST API
(/api/v1/teams). A team is provider groups (<provider>:<org>, everyone in them)
plus people named one by one (<provider>:<id>); its admins are members who may
change it. Routes with the access level team:<name> admit its members.

Who may do what:
  a member            list and get the teams they belong to
  a team's admin      put: change that team's groups, members and admins
  a gateway admin     list, get, put and delete every team, with a token that has
                      the 'admin' scope besides 'api'; on the gateway host:
    {ADMIN_TOKEN_COMMAND}
Teams defined in the gateway's config file ([[teams]]) are listed with source
'config' and can only be changed there.

Every subcommand needs:
  the gateway's URL   --url, or WSGATE_URL, or derived from --config (domain and listen port)
  a token             --token, or WSGATE_TOKEN: a personal access token (wsg_...) with the
                      'api' scope (and 'admin' for a gateway admin's changes)
  trust in its cert   system CAs, plus --ca FILE (or WSGATE_CA), or by default the local CA
                      under the config's state_dir when the gateway uses its embedded CA
"""

_TOKEN_HELP = (
    "personal access token wsg_... with the 'api' scope; gateway admins add the 'admin' scope to see and "
    "change every team (default: $WSGATE_TOKEN)"
)
_TOKEN_HINT = (
    "a personal access token with the 'api' scope, plus 'admin' for a gateway admin's changes "
    f"({ADMIN_TOKEN})"
)


_version = version_arg("wsgate teams get NAME")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `teams` and its subcommands on the `wsgate` subparsers."""
    common = connection_parent(token_help=_TOKEN_HELP)
    teams = sub.add_parser("teams", help="list and manage teams through the API", description=DESCRIPTION,
                           epilog=COMMON_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = teams.add_subparsers(dest="teams_command", metavar="SUBCOMMAND")

    add_subcommand(tsub, "list", "list your teams (all of them for gateway admins)",
                   "List the teams you belong to, or every team with a gateway admin's token that has the "
                   "'admin' scope: name, source (config: read-only here; api: managed here), version (for "
                   "--if-match) and how many groups, members and admins each has.\n\n"
                   "example:\n"
                   "  wsgate teams list --json", parent=common)

    get = add_subcommand(tsub, "get", "show one team",
                         "Show a team: its source, version, groups, members and admins. With --json, the "
                         "API's JSON, which `put --file` reads back once 'name', 'source' and 'version' are "
                         "left out.\n\n"
                         "example:\n"
                         "  wsgate teams get web", parent=common)
    get.add_argument("name", metavar="NAME", help="the team's name")

    put = add_subcommand(tsub, "put", "create a team or replace its groups, members and admins",
                         "Create the team NAME, or replace what it is: its groups, members and admins are "
                         "exactly those given (a flag not given means none). Give them with the repeatable "
                         "flags or in a file, not both. Creating a team takes a gateway admin's token with "
                         "the 'admin' scope; a team's own admins may change it (but not remove themselves). "
                         "Teams from the config file cannot be changed here.\n\n"
                         "With --if-match VERSION the change is made only if the team is still at that "
                         "version (see `get`): nobody else's change is undone. --if-match 0 only creates.\n\n"
                         "A file (.toml or .json) holds the three lists:\n"
                         "  groups = [\"github:acme-inc\"]\n"
                         "  members = [\"github:583231\", \"gitlab:1234\"]\n"
                         "  admins = [\"github:583231\"]\n\n"
                         "examples:\n"
                         "  wsgate teams put web --group github:acme-inc --member github:583231 "
                         "--admin github:583231\n"
                         "  wsgate teams put web --file web.toml --if-match 3", parent=common)
    put.add_argument("name", metavar="NAME",
                     help="the team: 1 to 63 lower-case letters, digits or dashes, starting with a letter or digit")
    put.add_argument("--group", "-g", dest="groups", action="append", default=[], metavar="PROVIDER:ORG",
                     help="a provider group whose members are in the team, e.g. github:acme-inc; repeatable")
    put.add_argument("--member", "-m", dest="members", action="append", default=[], metavar="PROVIDER:ID",
                     help="a person in the team, by identity, e.g. github:583231; repeatable")
    put.add_argument("--admin", "-a", dest="admins", action="append", default=[], metavar="PROVIDER:ID",
                     help="a person who may change the team (a member too); repeatable")
    put.add_argument("--file", "-f", metavar="FILE",
                     help="read groups, members and admins from FILE.toml or FILE.json instead of the flags")
    put.add_argument("--if-match", type=_version, metavar="VERSION",
                     help="change the team only if it is still at VERSION (0: only create it)")

    delete = add_subcommand(tsub, "delete", "delete a team", "Delete a team for good. Takes a gateway admin's "
                            "token with the 'admin' scope; teams from the config file are removed there.\n\n"
                            "example:\n"
                            "  wsgate teams delete web --if-match 4", parent=common, json_output=False)
    delete.add_argument("name", metavar="NAME", help="the team's name")
    delete.add_argument("--if-match", type=_version, metavar="VERSION",
                        help="delete the team only if it is still at VERSION")


# --- a team from a file -------------------------------------------------------------------


def read_team_file(path: str, name: str) -> dict[str, list[str]]:
    """{groups, members, admins} from a .toml or .json file; CLIError (exit 2) names the file and the key.

    Only the shape is checked here (which keys, lists of strings); the gateway
    judges the values, and its answer is reported against the same file.
    """
    kind = Path(path).suffix.lower()
    if kind not in (".toml", ".json"):
        raise CLIError(f"--file {path}: expected a .toml or .json file", 2)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CLIError(f"--file {path}: cannot read it ({reason(e)})", 2) from None
    try:
        data: Any = tomllib.loads(raw.decode()) if kind == ".toml" else json.loads(raw)
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not UTF-8 text", 2) from None
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"{path}: not valid TOML: {e}", 2) from None
    except ValueError as e:
        raise CLIError(f"{path}: not valid JSON: {e}", 2) from None
    if not isinstance(data, dict):
        raise CLIError(f"{path}: expected an object with the keys groups, members and admins", 2)
    reported = [key for key in ("source", "version") if key in data]
    if reported:
        # Likely the output of `get --json`: say how to turn it into a definition.
        version = data.get("version")
        hint = f" and pass --if-match {version} instead" if isinstance(version, int) else ""
        raise CLIError(f"{path}: key '{reported[0]}': not part of a team's definition (`get` reports it); "
                       f"remove {' and '.join(repr(k) for k in reported)}{hint}", 2)
    for key, value in data.items():
        if key == "name":
            if value != name:
                raise CLIError(f"{path}: key 'name': {value!r} is not the team NAME {name!r} (or leave it out)", 2)
        elif key not in _LISTS:
            raise CLIError(f"{path}: key '{key}': unknown (known: groups, members, admins)", 2)
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            got = json.dumps(value, default=str)[:80]
            raise CLIError(f"{path}: key '{key}': expected a list of strings, got {got}", 2)
    return {key: list(data.get(key, [])) for key in _LISTS}


# --- output ---------------------------------------------------------------------------


def _count(team: dict[str, Any], key: str) -> str:
    value = team.get(key)
    return str(len(value)) if isinstance(value, list) else "-"


def print_teams(teams: list[dict[str, Any]]) -> None:
    rows = [
        (str(t.get("name", "")), str(t.get("source", "")),
         "-" if t.get("version") is None else str(t["version"]), *(_count(t, key) for key in _LISTS))
        for t in teams
    ]
    print_table(("NAME", "SOURCE", "VERSION", "GROUPS", "MEMBERS", "ADMINS"), rows)


def print_team(team: dict[str, Any]) -> None:
    """`key: value` lines; a list's further entries are aligned under its first one."""
    source = str(team.get("source", ""))
    if source == "config":
        source += " (read-only here: change it in the gateway's config file)"
    lines: list[tuple[str, list[str]]] = [
        ("name", [str(team.get("name"))]),
        ("source", [source]),
        ("version", ["-" if team.get("version") is None else str(team["version"])]),
    ]
    for key in _LISTS:
        lines.append((key, [str(v) for v in team.get(key) or []] or ["-"]))
    print_fields(lines)


# --- running a subcommand ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


def _run(args: argparse.Namespace) -> int:
    command: str = args.teams_command
    body: dict[str, list[str]] = {}
    if command == "put":
        # The user's mistakes first, before anything is asked of the gateway.
        flags = args.groups or args.members or args.admins
        if args.file and flags:
            raise CLIError("give --file or --group/--member/--admin, not both", 2)
        if not args.file and not flags:
            raise CLIError("nothing to put: give --group, --member, --admin or --file (a team with none "
                           "of them: a file with empty lists)", 2)
        body = read_team_file(args.file, args.name) if args.file else {
            "groups": args.groups, "members": args.members, "admins": args.admins}
    t = target(args, token_hint=_TOKEN_HINT)
    try:
        return _request(t, args, body)
    except APIError as e:
        raise _explain(e, args) from None


def _request(t: Target, args: argparse.Namespace, body: dict[str, list[str]]) -> int:
    command: str = args.teams_command
    if command == "list":
        data = call(t, "GET", "/api/v1/teams").data
        if args.json:
            print_json(data)
        else:
            print_teams(list(data.get("teams", [])) if isinstance(data, dict) else [])
        return 0
    path = api_path("/api/v1/teams", args.name)
    headers = {} if getattr(args, "if_match", None) is None else {"If-Match": f'"{args.if_match}"'}
    if command == "get":
        reply = call(t, "GET", path)
    elif command == "put":
        options = _OPTION_OF_FIELD_WITH_FILE if args.file else _OPTION_OF_FIELD
        reply = call(t, "PUT", path, body, headers=headers, options=options)
        if not args.json and isinstance(reply.data, dict):
            done = "created" if reply.status == 201 else "replaced"
            print(f"{done} team {args.name!r}, version {reply.data.get('version')}")
    elif command == "delete":
        call(t, "DELETE", path, headers=headers)
        print(f"deleted team {args.name!r}")
        return 0
    else:
        raise CLIError(f"unknown subcommand {command!r}", 2)
    if args.json:
        print_json(reply.data)
    elif isinstance(reply.data, dict):
        print_team(reply.data)
    return 0


def _explain(e: APIError, args: argparse.Namespace) -> CLIError:
    """The API's refusal in terms of this command line: the file, --if-match, the token's scopes."""
    name = getattr(args, "name", "")
    command: str = args.teams_command
    if e.status == 400 and e.field and command == "put" and args.file and e.field not in ("name", "If-Match"):
        detail = e.error.removeprefix(f"{e.field}: ")
        return CLIError(f"{args.file}: key '{e.field}': {detail}")
    if e.status == 412:
        version = getattr(args, "if_match", None)
        current = e.data.get("current")
        again = f"read it again with `wsgate teams get {name}` and retry"
        if "current" in e.data and current is None:
            return CLIError(f"team {name!r} does not exist, so it is not at version {version} (--if-match)")
        if version == 0 and isinstance(current, int):
            return CLIError(f"team {name!r} already exists (version {current}); --if-match 0 only creates a team")
        if isinstance(current, int):
            return CLIError(f"team {name!r} changed since you read it: it is at version {current}, not {version} "
                            f"(--if-match); {again}")
        return CLIError(f"team {name!r} is not at version {version} (--if-match): it changed since you read it; "
                        f"{again}")
    if e.status == 403:
        return CLIError(f"{e}; a gateway admin needs a token with the 'admin' scope ({ADMIN_TOKEN})")
    if e.status == 404 and command in ("put", "delete"):
        # The API answers 404 alike for a team that does not exist and one the caller may not see.
        if command == "put":
            return CLIError(f"{e}; creating a team takes a gateway admin's token with the 'admin' scope")
        return CLIError(f"{e} (a gateway admin's token needs the 'admin' scope to see teams they are not in)")
    return e
