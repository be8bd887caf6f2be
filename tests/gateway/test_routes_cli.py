"""`wsgate routes`: the routes API's client on the command line, against real gateways and a real upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_runner import InProcessCLI, make_tokens
from wsgate_testing import DOMAIN, REPO, AiohttpUpstream, Gateway

from gateway.cli import main
from gateway.routes_cli import routes_toml, toml_string

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
enabled = false
"""
APP = f"app.{DOMAIN}"
API_HOST = f"api.{DOMAIN}"
DOCS = f"docs.{DOMAIN}"


class CLI(InProcessCLI):
    """`wsgate routes ...` as one person; test_put_get_list_request_and_delete runs the real command once too."""

    def __init__(self, gw: Gateway, token: str, capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__("routes", gw, token, capsys)

    def rules(self) -> dict[str, dict[str, Any]]:
        """The gateway's rules by id, as `list --json` shows them."""
        return {r["id"]: r for r in json.loads(self.ok("list", "--json"))["routes"]}


def fields(text: str) -> dict[str, list[str]]:
    """The `key: value` lines of `get`, with a list's further entries (indented lines) under their key."""
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(" "):
            out[key].append(line.strip())
        elif ":" in line:
            key, _, value = line.partition(":")
            out[key] = [value.strip()]
    return out


def rows(listing: str) -> dict[str, list[str]]:
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "HOSTS", "PREFIX", "UPSTREAM", "ACCESS", "VERSION"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def without_versions(rules: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule_id: {k: v for k, v in r.items() if k != "version"} for rule_id, r in rules.items()}


def echoed_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def test_put_get_list_request_and_delete(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    gw = gateway_factory(CONFIG)
    tokens = make_tokens({"root": (gw, "dev:root", "api,admin"), "plain-root": (gw, "dev:root", "api"),
                          "alice": (gw, "dev:alice", "api,admin")})
    root, plain_root, alice = (CLI(gw, tokens[name], capsys) for name in ("root", "plain-root", "alice"))
    upstream = f"http://127.0.0.1:{echo_upstream.port}"

    made = root.ok("put", "web", "--host", APP.upper(), "--upstream", upstream, "--access", "public",
                   "--prefix", "/api", "--strip-prefix", "--header", "X-Env: prod",
                   "--header", 'X-Quote:  say "hi" \\ ', "--idle-timeout", "60")
    assert made.splitlines()[0] == "created route 'web', version 1"
    shown = fields(root.ok("get", "web"))
    assert shown["id"] == ["web"] and shown["version"] == ["1"] and shown["hosts"] == [APP]
    assert shown["path_prefix"] == ["/api"] and shown["upstream"] == [f"{upstream}"]
    assert shown["access"] == ["public"] and shown["strip_prefix"] == ["true"] and shown["websocket"] == ["true"]
    assert shown["request_headers"] == ["X-Env: prod", 'X-Quote: say "hi" \\']
    assert shown["idle_timeout"] == ["60s"] and shown["connect_timeout"] == ["5s"]
    assert fields(made)["request_headers"] == shown["request_headers"]
    assert json.loads(root.ok("get", "web", "--json")) == {
        "id": "web", "hosts": [APP], "path_prefix": "/api", "upstream": upstream, "access": "public",
        "websocket": True, "strip_prefix": True, "preserve_host": False, "connect_timeout": 5.0,
        "idle_timeout": 60.0, "request_headers": {"X-Env": "prod", "X-Quote": 'say "hi" \\'},
        "identity_headers": False, "version": 1,
    }
    assert rows(root.ok("list")) == {"web": [APP, "/api", upstream, "public", "1"]}

    # The rule is live: a request to its host reaches the upstream, prefix stripped, headers added.
    status, _, body = gw.request(APP, "GET", "/api/hello?x=1")
    assert status == 200, body
    assert json.loads(body)["path"] == "/hello?x=1"
    assert echoed_headers(body)["x-env"] == "prod"

    # The real command, with the gateway's URL and CA from the environment instead of a config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(PYTHONPATH=str(REPO), WSGATE_TOKEN=root.token, WSGATE_URL=gw.url(DOMAIN, ""), WSGATE_CA=str(gw.ca))
    real = subprocess.run([sys.executable, "-m", "gateway", "routes", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == 0 and real.stderr == "", real.stderr
    assert rows(real.stdout)["web"][0] == APP

    # --if-match and --create-only: a stale version changes nothing and says what to do.
    again = ("put", "web", "--host", APP, "--upstream", upstream)
    stale = root.fails(*again, "--if-match", "5")
    assert "changed since you read it" in stale and "version 1, not 5" in stale and "--if-match" in stale
    assert "wsgate routes get web" in stale
    assert "already exists" in root.fails(*again, "--create-only")
    assert "already exists" in root.fails(*again, "--if-match", "0")
    assert "does not exist" in root.fails("put", "new", "--host", DOCS, "--upstream", upstream, "--if-match", "2")
    assert root.rules()["web"]["version"] == 1
    # Replaced whole: what is not given is back to its default (authenticated: no longer public).
    assert root.ok(*again, "--if-match", "1").splitlines()[0] == "replaced route 'web', version 2"
    status, _, body = gw.request(APP, "GET", "/api/hello")
    assert status != 200 and b"/api/hello" not in body
    assert root.ok("put", "docs", "--host", DOCS, "--upstream", upstream, "--create-only").startswith(
        "created route 'docs', version 1")

    # The API's field in terms of the command line: the flag, or the file and its key.
    bad = root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--upstream", "ftp://x:21")
    assert "upstream: scheme 'ftp' is not supported" in bad and "see --upstream" in bad
    bad = root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--upstream", "http://127.0.0.1")
    assert "needs an explicit port" in bad and "--upstream" in bad
    bad = root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--host", "example.org", "--upstream", upstream)
    assert "hosts[1]" in bad and "not covered" in bad and "--host" in bad
    assert "--header" in root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--upstream", upstream,
                                    "--header", "Cookie: a=b")
    assert "--access" in root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--upstream", upstream,
                                    "--access", "everyone")
    assert "--idle-timeout" in root.fails("put", "bad", "--host", f"bad.{DOMAIN}", "--upstream", upstream,
                                          "--idle-timeout", "0")
    conflict = root.fails("put", "bad", "--host", APP, "--upstream", upstream)
    assert "conflicts with rule web" in conflict and "--host" in conflict
    assert "ID" in root.fails("put", "Bad ID", "--host", f"bad.{DOMAIN}", "--upstream", upstream)

    toml = tmp_path / "bad.toml"
    toml.write_text(f'hosts = ["{DOCS}"]\nupstream = "http://127.0.0.1"\n')
    assert root.fails("put", "docs", "--file", str(toml)).startswith(
        f"wsgate: {toml}: key 'upstream': needs an explicit port")
    toml.write_text(f'hosts = ["{DOCS}", "example.org"]\nupstream = "{upstream}"\n')
    assert root.fails("put", "docs", "--file", str(toml)).startswith(f"wsgate: {toml}: key 'hosts[1]': ")
    toml.write_text(f'hosts = ["{DOCS}"]\nupstream = "{upstream}"\nrequest_headers = {{ Host = "x" }}\n')
    assert root.fails("put", "docs", "--file", str(toml)).startswith(
        f"wsgate: {toml}: key 'request_headers['Host']': the gateway sets this header itself")
    # Files that cannot be a rule: caught before the gateway is asked, naming the file and the key.
    got = tmp_path / "got.json"
    got.write_text(root.ok("get", "docs", "--json"))
    for name, text, needle in (
        ("colour.json", json.dumps({"hosts": [DOCS], "upstream": upstream, "colour": "red"}),
         "key 'colour': unknown"),
        ("syntax.toml", 'hosts = ["x"\n', "not valid TOML"),
        ("list.json", "[]", "expected a table"),
        ("other.toml", 'id = "other"\n', "key 'id': 'other' is not the rule ID 'docs'"),
        ("many.toml", '[[routes]]\nid = "docs"\n', "wsgate routes import"),
        ("rule.yaml", "hosts: []\n", "expected a .toml or .json file"),
    ):
        path = tmp_path / name
        path.write_text(text)
        message = root.fails("put", "docs", "--file", str(path), code=2)
        assert str(path) in message and needle in message, message
    message = root.fails("put", "docs", "--file", str(got), code=2)
    assert "key 'version'" in message and "--if-match 1" in message
    # A good file (the output of `get --json` without its version) replaces the rule.
    definition = json.loads(got.read_text())
    del definition["version"]
    definition["access"] = "team:ops"
    got.write_text(json.dumps(definition))
    assert "replaced route 'docs', version 2" in root.ok("put", "docs", "--file", str(got), "--if-match", "1")
    toml.write_text(f'hosts = ["{DOCS}"]\nupstream = "{upstream}"\nrequest_headers = {{ "X-A" = "b" }}\n')
    assert root.ok("put", "docs", "--file", str(toml), "--json").count('"X-A": "b"') == 1

    # Only gateway admins, with the 'admin' scope on their token.
    for who in (alice, plain_root):
        refused = who.fails("list")
        assert "admins only" in refused and "--scopes api,admin" in refused
        assert "admins only" in who.fails("delete", "web")
    assert root.rules()["web"]["version"] == 2

    stale = root.fails("delete", "web", "--if-match", "1")
    assert "not at version 1" in stale and "--if-match" in stale
    assert root.ok("delete", "web", "--if-match", "2").strip() == "deleted route 'web'"
    assert root.fails("get", "web").startswith("wsgate: no such route 'web'")
    assert "no such route 'web'" in root.fails("delete", "web")
    status, _, body = gw.request(APP, "GET", "/api/hello")
    assert status != 200 and b"/api/hello" not in body
    assert set(root.rules()) == {"docs"}

    # The user's own mistakes: usage errors, exit 2, and nothing sent.
    for usage in (("get",), ("put",), ("delete",), ("import",), ("put", "web", "--if-match", "x"),
                  ("put", "web", "--if-match", "1", "--create-only"), ("put", "web", "--header", "no colon"),
                  ("put", "web", "--idle-timeout", "soon"), ("export", "--format", "yaml"), ("frobnicate",)):
        out = root(*usage)
        assert out.returncode == 2 and "usage: wsgate routes" in out.stderr and "Traceback" not in out.stderr, usage
    assert "needs --host and --upstream" in root.fails("put", "web", code=2)
    assert "needs --upstream" in root.fails("put", "web", "--host", APP, code=2)
    assert "not both" in root.fails("put", "web", "--file", str(toml), "--access", "public", code=2)
    assert "given twice" in root.fails("put", "web", "--host", APP, "--upstream", upstream,
                                       "--header", "X-A: 1", "--header", "X-A: 2", code=2)
    missing_token = root("list", env={"WSGATE_TOKEN": ""})
    assert missing_token.returncode == 2 and "--scopes api,admin" in missing_token.stderr
    assert set(root.rules()) == {"docs"}

    # Help: every subcommand has its own, with an example.
    for sub in ("list", "get", "put", "delete", "export", "import"):
        out = root(sub, "--help")
        assert out.returncode == 0 and f"usage: wsgate routes {sub}" in out.stdout, sub
        assert "WSGATE_TOKEN" in out.stdout and "'admin'" in out.stdout, sub
        assert f"wsgate routes {sub}" in out.stdout.split("usage:", 1)[1].split("\n\n", 1)[1], sub
    capsys.readouterr()
    with pytest.raises(SystemExit) as top:
        main(["routes"])
    assert top.value.code == 0 and "--scopes api,admin" in capsys.readouterr().out


def test_export_and_import(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    first, second = gateway_factory(CONFIG), gateway_factory(CONFIG)
    tokens = make_tokens({"one": (first, "dev:root", "api,admin"), "two": (second, "dev:root", "api,admin")})
    one, two = CLI(first, tokens["one"], capsys), CLI(second, tokens["two"], capsys)
    upstream = f"http://127.0.0.1:{echo_upstream.port}"

    one.ok("put", "web", "--host", APP, "--upstream", upstream, "--access", "public",
           "--header", 'X-Odd: a "quoted" \\ back\\slash # not a comment = {x}',
           "--header", "X-It's: 'single'", "--header", "Plain: 1")
    one.ok("put", "api", "--host", API_HOST, "--host", f"api2.{DOMAIN}", "--prefix", "/v1", "--strip-prefix",
           "--upstream", f"{upstream}/base", "--access", "users:dev:bob,dev:alice", "--no-websocket",
           "--preserve-host", "--identity-headers", "--connect-timeout", "2.5", "--idle-timeout", "3600")
    one.ok("put", "docs", "--host", DOCS, "--upstream", upstream, "--access", "team:ops")
    source = one.rules()

    # TOML and JSON exports hold the same rules, without versions.
    exported = tmp_path / "routes.toml"
    assert one.ok("export", "--output", str(exported)).strip() == f"exported 3 routes to {exported} (toml)"
    as_json = tmp_path / "routes.json"
    as_json.write_text(one.ok("export", "--format", "json"))
    from_toml = tomllib.loads(exported.read_text())["routes"]
    assert from_toml == json.loads(as_json.read_text())["routes"]
    assert {r["id"]: r for r in from_toml} == without_versions(source)
    assert one.ok("export", "--format", "toml").split("\n", 2)[2] == exported.read_text().split("\n", 2)[2]

    # Import into a fresh gateway reproduces the rules (and they work there).
    done = two.ok("import", str(exported))
    assert sorted(done.splitlines()[:-1]) == ["created    api (version 1)", "created    docs (version 1)",
                                              "created    web (version 1)"]
    assert done.splitlines()[-1] == f"{exported}: 3 created, 0 replaced, 0 unchanged, 0 deleted"
    assert two.rules() == source
    status, _, body = second.request(APP, "GET", "/x")
    assert status == 200 and echoed_headers(body)["x-odd"] == 'a "quoted" \\ back\\slash # not a comment = {x}'
    # Again: nothing to do, no version changes.
    assert two.ok("import", str(exported)).splitlines()[-1] == (
        f"{exported}: 0 created, 0 replaced, 3 unchanged, 0 deleted")
    assert two.rules() == source

    # Drift on the second gateway: a changed rule and an extra one.
    two.ok("put", "web", "--host", APP, "--upstream", upstream)
    two.ok("put", "extra", "--host", f"extra.{DOMAIN}", "--upstream", upstream)
    drifted = two.rules()
    plan = two.ok("import", str(exported), "--prune", "--dry-run")
    assert "would replace  web (version 2; changes access, request_headers)" in plan
    assert "would delete   extra" in plan and "unchanged      api" in plan and "unchanged      docs" in plan
    assert "nothing changed" in plan.splitlines()[-1]
    assert "--prune deletes them" in two.ok("import", str(exported), "--dry-run")
    assert two.rules() == drifted
    # Without --prune the extra rule stays; with it, it goes.
    done = two.ok("import", str(exported))
    assert "replaced   web (version 3)" in done and "unchanged  api" in done
    assert done.splitlines()[-1].endswith("1 on the gateway not in the file (kept; --prune deletes them)")
    done = two.ok("import", str(exported), "--prune")
    assert f"deleted    extra (not in {exported})" in done
    assert without_versions(two.rules()) == without_versions(source)

    # JSON round trip: empty the gateway with an empty file, then import the JSON export.
    empty = tmp_path / "empty.toml"
    empty.write_text(routes_toml([]))
    assert two.ok("import", str(empty), "--prune").splitlines()[-1].endswith("0 unchanged, 3 deleted")
    assert two.rules() == {}
    assert two.ok("import", str(as_json)).splitlines()[-1].startswith(f"{as_json}: 3 created")
    # Versions continue across the delete (an ETag from before it cannot match the new rules).
    assert without_versions(two.rules()) == without_versions(source)
    assert all(r["version"] > 1 for r in two.rules().values())
    source = two.rules()
    # Written another way than the gateway stores it, defaults left out: still unchanged, not put again.
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"routes": [{
        "id": "api", "hosts": [API_HOST.upper(), f"api2.{DOMAIN}."], "path_prefix": "/v1", "strip_prefix": True,
        "upstream": f"{upstream}/base", "access": "users:dev:bob, dev:alice", "websocket": False,
        "preserve_host": True, "identity_headers": True, "connect_timeout": 2.5, "idle_timeout": 3600}]}))
    assert two.ok("import", str(loose)).splitlines()[0] == "unchanged  api"
    assert two.rules() == source

    # Rules that depend on each other: a renamed rule takes its old host once the old rule is pruned.
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({"routes": [{"id": "site", "hosts": [APP], "upstream": upstream}]}))
    done = two.ok("import", str(renamed), "--prune")
    assert "created    site (version 1)" in done and "deleted    web" in done
    assert set(two.rules()) == {"site"}

    # A rule the gateway refuses is reported with its key; the others are still made; exit 1.
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(routes_toml([
        {"id": "bad", "hosts": [f"bad.{DOMAIN}"], "upstream": "http://127.0.0.1"},
        {"id": "good", "hosts": [f"good.{DOMAIN}"], "upstream": upstream},
    ]))
    out = two("import", str(mixed))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "created    good (version 1)" in out.stdout
    errors = out.stderr.strip().splitlines()
    assert errors[0] == f"wsgate: {mixed}: route 'bad': key 'upstream': needs an explicit port: http://127.0.0.1:<port>"
    assert errors[1] == f"wsgate: {mixed}: 1 of 2 changes failed (bad); the others were made"
    assert set(two.rules()) == {"site", "good"}

    # The file's shape is checked before anything is changed.
    for name, text, needle in (
        ("noid.toml", f'[[routes]]\nid = "x"\nhosts = ["{DOCS}"]\n\n[[routes]]\nhosts = ["{DOCS}"]\n',
         "routes[1]: key 'id': missing"),
        ("twice.json", json.dumps({"routes": [{"id": "a"}, {"id": "a"}]}), "routes[1]: id 'a' is also"),
        ("typo.json", json.dumps({"routes": [{"id": "a", "upstraem": upstream}]}), "key 'upstraem': unknown"),
        ("versions.json", one.ok("list", "--json"), "key 'version'"),
        ("rule.toml", f'hosts = ["{DOCS}"]\nupstream = "{upstream}"\n', "one rule, not a list"),
        ("other.toml", "rules = []\n", "key 'routes': missing"),
    ):
        path = tmp_path / name
        path.write_text(text)
        message = two.fails("import", str(path), "--prune", code=2)
        assert message.startswith(f"wsgate: {path}") and needle in message, message
    assert set(two.rules()) == {"site", "good"}


def test_toml_writer_quotes_what_it_must() -> None:
    for text in ('plain', 'quote " and \\ back', "tab\tnew\nline\r\x00\x1f\x7f", "ünïcödé ✓", "'single'", ""):
        assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text
    rules: list[dict[str, Any]] = [{"id": "a", "hosts": ["x"], "n": 2.5, "big": 1e-05, "on": True, "count": 3,
              "request_headers": {"X-It's": 'v "1"', "bare_key-1": "", "a.b": "dotted", "": "empty"}},
             {"id": "b", "request_headers": {}, "list": []}]
    assert tomllib.loads(routes_toml(rules, "a header\nof two lines"))["routes"] == rules
    assert tomllib.loads(routes_toml([])) == {"routes": []}
