"""`wsgate workspace`: the API's client on the command line, against a real gateway with the embedded launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from wsgate_testing import DOMAIN, REPO, Gateway, refused_port

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
[launcher]
stop_on_exit = true
stop_grace = 2
"""


class CLI:
    """Runs `python -m gateway workspace ...` as a user would, with WSGATE_* from `env` only."""

    def __init__(self, gw: Gateway, token: str) -> None:
        self.gw = gw
        self.token = token

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_") or k == "WSGATE_INIT_DIR"}
        env["PYTHONPATH"] = str(REPO)
        return {**env, "WSGATE_TOKEN": self.token, **(extra or {})}

    def argv(self, args: tuple[str, ...], config: bool) -> list[str]:
        extra = ["--config", str(self.gw.config)] if config else []
        return [sys.executable, "-m", "gateway", "workspace", *args, *extra]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, config: bool = True, cwd: Path = REPO
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, config), cwd=cwd, env=self.env(env), capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        out = self(*args)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", out.stderr
        return out.stdout

    def fails(
        self, *args: str, code: int = 1, env: dict[str, str] | None = None, config: bool = True, cwd: Path = REPO
    ) -> str:
        """The one-line message on stderr of a failing command."""
        out = self(*args, env=env, config=config, cwd=cwd)
        assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wsgate: "), out.stderr
        return lines[0]


def make_token(gw: Gateway, owner: str = "dev:alice") -> str:
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "tokens", "create", "--owner", owner, "--name", "cli test",
         "--config", str(gw.config)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("wsg_")
    return token


@pytest.fixture
def cli(gateway_factory: Callable[..., Gateway]) -> CLI:
    gw = gateway_factory(CONFIG)
    return CLI(gw, make_token(gw))


def fields(text: str) -> dict[str, str]:
    """`key: value` lines of the human output (the indented port lines are left out)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(" ") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def wait_logs(cli: CLI, wid: str, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = cli.ok("logs", wid)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_workspace_lifecycle(cli: CLI) -> None:
    started = cli.ok("start", "--command", "echo hello-cli; exec sleep 1000", "--port", "8000",
                     "--port", "3000:web", "--env", "GREETING=hi")
    info = fields(started)
    wid = info["id"]
    assert wid.startswith("w") and len(wid) == 17
    assert info["state"] == "running" and info["owner"] == "dev:alice"
    assert info["command"] == "echo hello-cli; exec sleep 1000"
    assert f"https://8000-{wid}.ws.{DOMAIN}:{cli.gw.port}/" in started
    assert "3000 private" in started and "(web)" in started

    listed = cli.ok("list").splitlines()
    assert listed[0].split()[:3] == ["ID", "STATE", "OWNER"]
    row = next(line for line in listed[1:] if line.startswith(wid))
    assert row.split()[1:3] == ["running", "dev:alice"] and "8000,3000:web" in row and "hello-cli" in row

    # The raw JSON, and the URL and CA from the environment instead of the config file.
    raw = cli("get", wid, "--json", config=False,
              env={"WSGATE_URL": cli.gw.url(DOMAIN, ""), "WSGATE_CA": str(cli.gw.ca)})
    assert raw.returncode == 0, raw.stderr
    data = json.loads(raw.stdout)
    assert data["id"] == wid and data["state"] == "running"
    assert [(p["number"], p["name"], p["visibility"]) for p in data["ports"]] == [
        (8000, "", "private"), (3000, "web", "private")
    ]
    assert fields(cli.ok("get", wid))["state"] == "running"

    made_public = cli.ok("port", wid, "8000", "public")
    assert "8000 public" in made_public and "3000 private" in made_public
    assert json.loads(cli.ok("get", wid, "--json"))["ports"][0]["visibility"] == "public"

    assert "hello-cli" in wait_logs(cli, wid, "hello-cli")

    # --follow streams until the workspace ends.
    follow = subprocess.Popen(
        cli.argv(("logs", wid, "--follow"), True), cwd=REPO, env=cli.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert follow.stdout is not None
        assert "hello-cli" in follow.stdout.readline()
        time.sleep(0.3)
        assert follow.poll() is None  # still following a running workspace
        stopped = fields(cli.ok("stop", wid))
        assert stopped["state"] == "stopped" and stopped["exit code"] == "143"
        assert follow.wait(15) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert fields(cli.ok("get", wid))["state"] == "stopped"

    restarted = fields(cli.ok("restart", wid))
    assert restarted["state"] == "running" and "exit code" not in restarted
    assert "8000 public" in cli.ok("get", wid)  # settings survive the restart

    assert cli.ok("delete", wid).strip() == f"deleted {wid}"
    assert cli.ok("list").splitlines()[1:] == []
    assert cli.fails("get", wid) == "wsgate: no such workspace"


def test_errors_are_one_clear_line(cli: CLI, tmp_path: Path) -> None:
    wid = fields(cli.ok("start", "--command", "exec sleep 1000", "--port", "8000"))["id"]

    bad = cli.fails("list", env={"WSGATE_TOKEN": "wsg_nope_nope"})
    assert "token is invalid" in bad and "WSGATE_TOKEN" in bad
    assert "invalid" in cli.fails("get", wid, "--token", "wsg_nope_nope")
    missing = cli.fails("list", env={"WSGATE_TOKEN": ""}, code=2)
    assert "no token" in missing and "wsgate tokens create" in missing
    assert "--token" in cli.fails("list", "--token", "wsg_a b", code=2)

    for args in (("get", "wzzzzzzzzzzzzzzzz"), ("stop", "wnope"), ("restart", "wnope"), ("delete", "wnope"),
                 ("logs", "wnope"), ("port", "wnope", "8000", "public"), ("get", "../../me")):
        assert cli.fails(*args) == "wsgate: no such workspace", args

    port = cli.fails("start", "--command", "true", "--port", "70000")
    assert "70000 is not a port number" in port and "field 'ports'" in port and "--port" in port
    assert "field 'port'" in cli.fails("port", wid, "0", "public")
    assert "field 'env'" in cli.fails("start", "--command", "true", "--env", "1X=y")
    assert "field 'command'" in cli.fails("start", "--command", " ")

    # Mistakes caught before asking the gateway: usage errors, exit 2.
    for usage in (("start", "--command", "true", "--port", "web"), ("start", "--command", "true", "--env", "X"),
                  ("port", wid, "8000", "open"), ("port", wid, "x", "public")):
        out = cli(*usage)
        assert out.returncode == 2 and "usage:" in out.stderr and "Traceback" not in out.stderr, usage
    assert "https://" in cli.fails("list", "--url", "http://127.0.0.1:1", code=2)

    with refused_port() as port:
        refused = cli.fails("list", "--url", f"https://{DOMAIN}:{port}")
    assert "connection refused" in refused

    # No --config, no --ca, and no local CA in the working directory: the gateway's certificate is untrusted.
    untrusted = cli.fails("list", "--url", cli.gw.url(DOMAIN, ""), config=False, cwd=tmp_path)
    assert "certificate" in untrusted and "--ca" in untrusted
    listed = cli("list", "--url", cli.gw.url(DOMAIN, ""), "--ca", str(cli.gw.ca), config=False, cwd=tmp_path)
    assert listed.returncode == 0 and wid in listed.stdout, listed.stderr
    assert "--ca" in cli.fails("list", "--ca", str(tmp_path / "missing.pem"), code=2)


def test_every_subcommand_has_its_own_help() -> None:
    for sub in ("start", "list", "get", "stop", "restart", "delete", "port", "logs"):
        out = subprocess.run([sys.executable, "-m", "gateway", "workspace", sub, "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "--token" in out.stdout and "WSGATE_TOKEN" in out.stdout, sub
        assert f"usage: wsgate workspace {sub}" in out.stdout
