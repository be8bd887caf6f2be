"""`wsgate teams`: the teams API's client on the command line, against a real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runner import InProcessCLI, make_tokens
from wsgate_testing import DOMAIN, REPO, Gateway, refused_port

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
enabled = false
[[teams]]
name = "fixed"
members = ["dev:alice"]
"""


class CLI(InProcessCLI):
    """`wsgate teams ...` as one person; test_every_subcommand_has_its_own_help and
    test_put_get_list_and_delete run the real command too."""

    def __init__(self, gw: Gateway, token: str, capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__("teams", gw, token, capsys)


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG)


@pytest.fixture
def people(gw: Gateway, capsys: pytest.CaptureFixture[str]) -> dict[str, CLI]:
    """Everyone's CLI. `root` is a gateway admin whose token carries the 'admin' scope,
    `plain-root` the same admin with an 'api'-only token; the others are not gateway admins.
    """
    tokens = make_tokens({"root": (gw, "dev:root", "api,admin"), "plain-root": (gw, "dev:root", "api"),
                          "alice": (gw, "dev:alice", "api"), "bob": (gw, "dev:bob", "api")})
    return {name: CLI(gw, token, capsys) for name, token in tokens.items()}


@pytest.fixture
def root(people: dict[str, CLI]) -> CLI:
    return people["root"]


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
    assert lines[0].split() == ["NAME", "SOURCE", "VERSION", "GROUPS", "MEMBERS", "ADMINS"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_put_get_list_and_delete(root: CLI, tmp_path: Path) -> None:
    made = root.ok("put", "web", "--group", "github:Acme-Inc", "--member", "dev:bob", "--member", "dev:carol",
                   "--admin", "dev:alice")
    assert made.splitlines()[0] == "created team 'web', version 1"
    shown = fields(root.ok("get", "web"))
    assert shown["name"] == ["web"] and shown["source"] == ["api"] and shown["version"] == ["1"]
    assert shown["groups"] == ["github:acme-inc"] and shown["members"] == ["dev:bob", "dev:carol"]
    assert shown["admins"] == ["dev:alice"]
    assert fields(made)["members"] == shown["members"]
    assert json.loads(root.ok("get", "web", "--json")) == {
        "name": "web", "groups": ["github:acme-inc"], "members": ["dev:bob", "dev:carol"], "admins": ["dev:alice"],
        "source": "api", "version": 1,
    }
    # The real command, with the gateway's URL and CA from the environment instead of a config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(PYTHONPATH=str(REPO), WSGATE_TOKEN=root.token, WSGATE_URL=root.gw.url(DOMAIN, ""),
               WSGATE_CA=str(root.gw.ca))
    real = subprocess.run([sys.executable, "-m", "gateway", "teams", "get", "web"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == 0 and real.stderr == "", real.stderr
    assert fields(real.stdout)["admins"] == ["dev:alice"]

    # A TOML file replaces the team (what is not in it is gone); a JSON file creates another.
    toml = tmp_path / "web.toml"
    toml.write_text('# the web team\nmembers = ["dev:dave"]\nadmins = ["dev:alice"]\n')
    replaced = root.ok("put", "web", "--file", str(toml))
    assert replaced.splitlines()[0] == "replaced team 'web', version 2"
    shown = fields(root.ok("get", "web"))
    assert shown["groups"] == ["-"] and shown["members"] == ["dev:dave"] and shown["version"] == ["2"]
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps({"name": "ops", "groups": ["gitlab:acme/ops"], "members": [], "admins": []}))
    assert json.loads(root.ok("put", "ops", "--file", str(ops), "--json"))["version"] == 1

    # Gateway admins see every team, the config's too (read-only, no version).
    assert rows(root.ok("list")) == {
        "fixed": ["config", "-", "0", "1", "0"],
        "ops": ["api", "1", "1", "0", "0"],
        "web": ["api", "2", "0", "1", "1"],
    }
    assert [t["name"] for t in json.loads(root.ok("list", "--json"))["teams"]] == ["fixed", "ops", "web"]
    assert "read-only here" in fields(root.ok("get", "fixed"))["source"][0]

    # --if-match: a stale version changes nothing and says what to do; the current one goes through.
    stale = root.fails("put", "web", "--member", "dev:eve", "--if-match", "1")
    assert "changed since you read it" in stale and "version 2, not 1" in stale and "--if-match" in stale
    assert "wsgate teams get web" in stale
    assert "already exists" in root.fails("put", "web", "--member", "dev:eve", "--if-match", "0")
    assert "does not exist" in root.fails("put", "new", "--member", "dev:eve", "--if-match", "3")
    assert fields(root.ok("get", "web"))["members"] == ["dev:dave"]
    assert "version 3" in root.ok("put", "web", "--member", "dev:eve", "--admin", "dev:alice", "--if-match", "2")
    assert "version 1" in root.ok("put", "new", "--member", "dev:eve", "--if-match", "0")

    stale = root.fails("delete", "web", "--if-match", "2")
    assert "not at version 2" in stale and "--if-match" in stale
    assert root.ok("delete", "web", "--if-match", "3").strip() == "deleted team 'web'"
    assert root.ok("delete", "ops").strip() == "deleted team 'ops'"
    assert root.fails("get", "web") == "wsgate: no such team"
    assert "no such team" in root.fails("delete", "web")
    assert set(rows(root.ok("list"))) == {"fixed", "new"}


def test_refusals_are_one_clear_line(people: dict[str, CLI], tmp_path: Path) -> None:
    root, alice, bob, plain_root = people["root"], people["alice"], people["bob"], people["plain-root"]
    root.ok("put", "web", "--member", "dev:bob", "--admin", "dev:alice")

    # The API's field in terms of the command line: the flag, or the file and its key.
    bad = root.fails("put", "web", "--member", "dev:bob", "--member", "alice")
    assert "'alice' is not an identity" in bad and "members[1]" in bad and "--member" in bad
    assert "--group" in root.fails("put", "web", "--group", "acme")
    assert "NAME" in root.fails("put", "Bad_Name", "--member", "dev:bob")
    bad_file = tmp_path / "team.json"
    bad_file.write_text(json.dumps({"members": ["dev:bob"], "admins": ["nobody"]}))
    assert root.fails("put", "web", "--file", str(bad_file)).startswith(
        f"wsgate: {bad_file}: key 'admins[0]': 'nobody' is not an identity")

    # Files that cannot be a team: caught before the gateway is asked, naming the file and the key.
    for name, text, needle in (
        ("syntax.toml", "members = [\"dev:bob\"\n", "not valid TOML"),
        ("syntax.json", "{\"members\": [}", "not valid JSON"),
        ("list.json", "[]", "expected an object"),
        ("colour.toml", "colour = \"red\"\n", "key 'colour': unknown"),
        ("type.toml", "members = \"dev:bob\"\n", "key 'members': expected a list of strings"),
        ("other.json", json.dumps({"name": "other"}), "key 'name'"),
        ("got.json", json.dumps({"name": "web", "source": "api", "version": 4, "members": []}),
         "--if-match 4"),
        ("team.yaml", "members: []\n", "expected a .toml or .json file"),
    ):
        path = tmp_path / name
        path.write_text(text)
        message = root.fails("put", "web", "--file", str(path), code=2)
        assert str(path) in message and needle in message, message
    missing = root.fails("put", "web", "--file", str(tmp_path / "missing.toml"), code=2)
    assert "missing.toml" in missing and "cannot read" in missing

    # Teams from the config file are read-only here.
    fixed = root.fails("put", "fixed", "--member", "dev:bob")
    assert "defined in the config file" in fixed and "change it there" in fixed
    assert "defined in the config file" in root.fails("delete", "fixed")

    # A plain member may read the team but not change it; the team's admin may; strangers see nothing.
    assert set(rows(bob.ok("list"))) == {"web"}
    assert fields(bob.ok("get", "web"))["members"] == ["dev:bob"]
    refused = bob.fails("put", "web", "--member", "dev:bob", "--member", "dev:mallory")
    assert "only gateway admins and the team's admins may change a team" in refused
    assert "'admin' scope" in refused and "--scopes api,admin" in refused
    assert "only gateway admins delete teams" in bob.fails("delete", "web")
    assert "version 2" in alice.ok("put", "web", "--member", "dev:carol", "--admin", "dev:alice")
    assert "--admin" in alice.fails("put", "web", "--member", "dev:carol")
    assert bob.fails("get", "web") == "wsgate: no such team"
    # A gateway admin's token without the 'admin' scope is a member's token.
    assert rows(plain_root.ok("list")) == {}
    assert "'admin' scope" in plain_root.fails("put", "more", "--member", "dev:bob")

    # Not getting through to the gateway.
    invalid = root.fails("list", env={"WSGATE_TOKEN": "wsg_nope_nope"})
    assert "token is invalid" in invalid and "WSGATE_TOKEN" in invalid
    with refused_port() as port:
        refused = root.fails("get", "web", "--url", f"https://{DOMAIN}:{port}")
    assert "connection refused" in refused
    missing_token = root.fails("list", env={"WSGATE_TOKEN": ""}, code=2)
    assert "no token" in missing_token and "--scopes api,admin" in missing_token

    # The user's own mistakes: usage errors, exit 2, and nothing sent.
    for usage in (("get",), ("put",), ("delete",), ("put", "web", "--if-match", "x"), ("frobnicate",),
                  ("delete", "web", "--if-match", "-1")):
        out = root(*usage)
        assert out.returncode == 2 and "usage: wsgate teams" in out.stderr and "Traceback" not in out.stderr, usage
    assert "nothing to put" in root.fails("put", "web", code=2)
    assert "not both" in root.fails("put", "web", "--file", str(bad_file), "--member", "dev:bob", code=2)
    assert fields(root.ok("get", "web"))["members"] == ["dev:carol"]


def test_every_subcommand_has_its_own_help() -> None:
    for sub in ("list", "get", "put", "delete"):
        out = subprocess.run([sys.executable, "-m", "gateway", "teams", sub, "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f"usage: wsgate teams {sub}" in out.stdout, sub
        assert "--token" in out.stdout and "WSGATE_TOKEN" in out.stdout and "'admin' scope" in out.stdout, sub
        assert f"wsgate teams {sub} " in out.stdout.split("usage:", 1)[1].split("\n", 1)[1], sub  # an example
    top = subprocess.run([sys.executable, "-m", "gateway", "teams"], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert top.returncode == 0 and "--scopes api,admin" in top.stdout
