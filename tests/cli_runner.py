"""Running the admin CLIs (`wsgate routes`, `wsgate teams`) in tests, and the tokens they need."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from wsgate_testing import REPO, Gateway

from gateway.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class InProcessCLI:
    """Runs `wsgate <command> ...` in this process (`gateway.cli.main`, as `python -m gateway` does), with one
    token and WSGATE_* from `env` only. Tests run many commands: a subprocess each would be slow, so each
    test module runs the real command once too."""

    def __init__(self, command: str, gw: Gateway, token: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.command = command
        self.gw = gw
        self.token = token
        self.capsys = capsys

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        with pytest.MonkeyPatch.context() as m:
            for name in os.environ:
                if name.startswith("WSGATE_") and name != "WSGATE_INIT_DIR":
                    m.delenv(name)
            for name, value in {"WSGATE_TOKEN": self.token, **(env or {})}.items():
                m.setenv(name, value)
            self.capsys.readouterr()
            try:
                code = main([self.command, *args, "--config", str(self.gw.config)])
            except SystemExit as e:  # argparse: usage errors and --help
                code = e.code if isinstance(e.code, int) else 1
            out = self.capsys.readouterr()
        return Result(code, out.out, out.err)

    def ok(self, *args: str) -> str:
        out = self(*args)
        assert out.returncode == 0 and out.stderr == "", (args, out.stdout, out.stderr)
        return out.stdout

    def fails(self, *args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
        """The one-line message on stderr of a failing command (that printed nothing else)."""
        out = self(*args, env=env)
        assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == "", (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wsgate: "), out.stderr
        return lines[0]


def make_tokens(wanted: dict[str, tuple[Gateway, str, str]]) -> dict[str, str]:
    """{name: (gateway, owner, scopes)} -> {name: token}, from `wsgate tokens create` on the gateway host,
    all at once."""
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "gateway", "tokens", "create", "--owner", owner, "--name", "cli test",
             "--scopes", scopes, "--config", str(gw.config)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, (gw, owner, scopes) in wanted.items()
    }
    tokens = {}
    for name, run in runs.items():
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0 and out.startswith("wsg_"), err
        tokens[name] = out.strip()
    return tokens
