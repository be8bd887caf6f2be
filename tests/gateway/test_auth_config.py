"""Auth configuration: bad values name the file and the key; the dev sign-in stays on loopback; the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from wsgate_testing import DOMAIN, REPO, AiohttpUpstream, Gateway

from gateway.config import ConfigError, load_config, with_dev_login

GITHUB = '[[auth.providers]]\nname = "github"\ntype = "github"\nclient_id = "id"\nclient_secret = "s"\n'


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ("[auth]\ndev_login = true\n[listen]\naddress = '0.0.0.0'", "auth.dev_login", "loopback"),
        ("[[workspaces]]\nid = 'abc'\nport = 1\nupstream = '127.0.0.1:1'", "workspaces[0].owner", "identity"),
        (GITHUB + "[[routes]]\nhost = 'a.example.com'\nupstream = 'http://x:1'\naccess = 'everyone'",
         "routes[0].access", "public, authenticated"),
        ("[[routes]]\nhost = 'a.example.com'\nupstream = 'http://x:1'", "routes[0].access", "no [[auth.providers]]"),
        ('[[auth.providers]]\nname = "gh"\ntype = "github"\nclient_secret = "s"', "auth.providers[0].client_id",
         "client id"),
        ('[[auth.providers]]\nname = "gh"\ntype = "github"\nclient_id = "i"', "auth.providers[0].client_secret",
         "secret"),
        ('[[auth.providers]]\nname = "Git Hub"\ntype = "github"\nclient_id = "i"\nclient_secret = "s"',
         "auth.providers[0].name", "lower-case"),
        (GITHUB + GITHUB, "auth.providers[1].name", "no other provider"),
        ('[[auth.providers]]\nname = "corp"\ntype = "oidc"\nclient_id = "i"\nclient_secret = "s"',
         "auth.providers[0].issuer", "issuer"),
        ('[[auth.providers]]\nname = "corp"\ntype = "oidc"\nissuer = "http://idp.example.com"\nclient_id = "i"\n'
         'client_secret = "s"', "auth.providers[0].issuer", "issuer"),
        ('[[auth.providers]]\nname = "gh"\ntype = "github"\nweb_url = "ftp://x"\nclient_id = "i"\nclient_secret = "s"',
         "auth.providers[0].web_url", "https://"),
        ('[[auth.providers]]\nname = "gh"\ntype = "saml"\nclient_id = "i"\nclient_secret = "s"',
         "auth.providers[0].type", "one of"),
        ("[auth]\nadmins = ['alice']", "auth.admins[0]", "identity"),
        ("[auth]\nsession_lifetime = 0", "auth.session_lifetime", "> 0"),
        ("[auth]\nallowed_origins = ['https://x.example.com/path']", "auth.allowed_origins[0]", "origin"),
        ("workers = 2\n[auth]\ndev_login = true", "redis_url", "workers > 1"),
        ("redis_url = 'http://127.0.0.1:6379'", "redis_url", "redis://"),
    ],
)
def test_bad_auth_values_name_file_and_key(tmp_path: Path, toml: str, key: str, expected: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and f"'{key}'" in msg and expected in msg, msg


def test_dev_login_flag_is_refused_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("[listen]\naddress = '0.0.0.0'\n")
    with pytest.raises(ConfigError, match=r"auth\.dev_login"):
        with_dev_login(load_config(path))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--dev-login", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and "auth.dev_login" in out.stderr and "Traceback" not in out.stderr


def test_dev_login_logs_a_loud_warning(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory("[auth]\ndev_login = true\n")
    warnings = [e for e in gw.log_events() if e.get("level") == "warning" and "DEV SIGN-IN" in str(e.get("msg"))]
    assert warnings


def test_tokens_cli_creates_lists_and_revokes_tokens_the_gateway_accepts(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw = gateway_factory(
        f"""
[auth]
dev_login = true
[[workspaces]]
id = "abc"
port = 8080
upstream = "127.0.0.1:{echo_upstream.port}"
owner = "dev:alice"
"""
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "tokens", *args, "--config", str(gw.config)],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )

    made = cli("create", "--owner", "dev:alice", "--name", "laptop IDE", "--scopes", "workspace")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("wsg_") and "Shown once" in made.stderr
    listed = cli("list", "--owner", "dev:alice")
    assert "laptop IDE" in listed.stdout and token not in listed.stdout
    tid = listed.stdout.splitlines()[1].split()[0]
    host = f"8080-abc.ws.{DOMAIN}"
    for _ in range(3):  # the gateway now answers for this token from its cache
        status, _, _ = gw.request(host, "GET", "/x", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
    revoked = cli("revoke", tid)
    assert revoked.returncode == 0, revoked.stderr
    # The CLI moved the store's revocation generation; the gateway polls it twice a second, far
    # sooner than a cached token would be looked up again on its own (a minute).
    t0 = time.monotonic()
    while True:
        status, headers, _ = gw.request(host, "GET", "/x", headers={"Authorization": f"Bearer {token}"})
        if status != 200 or time.monotonic() - t0 > 5:
            break
        time.sleep(0.05)
    assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]
    assert time.monotonic() - t0 < 2
    bad = cli("create", "--owner", "alice", "--name", "x")
    assert bad.returncode == 2 and "--owner" in bad.stderr
    assert cli("revoke", "nope").returncode == 1
