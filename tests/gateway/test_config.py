"""Config validation: every error names the file, the key and what is expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from wsgate_testing import REPO

from gateway.config import Config, ConfigError, load_config, parse_config


def test_no_file_is_the_embedded_default() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.domain == "wsgate.localhost" and cfg.listen.address == "127.0.0.1"
    assert cfg.metrics.address == "127.0.0.1"


def test_empty_file_is_the_embedded_default(tmp_path: Path) -> None:
    f = tmp_path / "empty.toml"
    f.write_text("")
    assert load_config(f) == Config()


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ("domian = 'x.com'", "domian", "unknown key"),
        ("[listen]\nprot = 1", "listen.prot", "unknown key"),
        ("workers = 'two'", "workers", "expected an integer"),
        ("workers = true", "workers", "expected an integer"),
        ("workers = -1", "workers", "0 (one per CPU) to 64"),
        ("domain = 'Example.COM'", "domain", "lower-case DNS name"),
        ("domain = 'localhost'", "domain", "at least two labels"),
        ("[listen]\nport = 70000", "listen.port", "port number"),
        ("[listen]\naddress = 'example.com'", "listen.address", "IP address"),
        ("[listen]\nport = 9000\n[metrics]\nport = 9000", "metrics.port", "a port other than listen.port's"),
        ("[listen]\nport = 9000\nhttp_redirect_port = 9000", "listen.http_redirect_port", "other than listen.port's"),
        (
            "[listen]\naddress = '0.0.0.0'\nhttp_redirect_port = 9100\n[metrics]\nport = 9100",
            "metrics.port",
            "a port other than listen.http_redirect_port's",
        ),
        ("[limits]\nmax_header_bytes = 10", "limits.max_header_bytes", ">= 1024"),
        ("[limits]\nheader_timeout = 0", "limits.header_timeout", "> 0"),
        ("[proxy]\ntrusted_proxies = ['10.0.0.0/33']", "proxy.trusted_proxies[0]", "CIDR"),
        ("[proxy]\ntrusted_proxies = '10.0.0.1'", "proxy.trusted_proxies", "an array"),
        ("[log]\nformat = 'xml'", "log.format", "one of 'json', 'text'"),
        ("[[tls.certificates]]\ncert = 'a.pem'", "tls.certificates[0]", "both 'cert' and 'key'"),
        ("[[routes]]\nhost = 'a.example.com'\nupstream = 'ftp://x:1'", "routes[0].upstream", "http(s)://host:port"),
        ("[[routes]]\nhost = 'a.example.com'\nupstream = 'http://x'", "routes[0].upstream", "http(s)://host:port"),
        ("[[routes]]\nhost = 'bad host'\nupstream = 'http://x:1'", "routes[0].host", "DNS host name"),
        ("[[routes]]\nhost = 'wsgate.localhost'\nupstream = 'http://x:1'", "routes[0].host", "other than the main"),
        (
            "[[routes]]\nhost = '1-a.ws.wsgate.localhost'\nupstream = 'http://x:1'",
            "routes[0].host",
            "other than the main",
        ),
        (
            "[[routes]]\nhost='a.b.com'\nupstream='http://x:1'\n[[routes]]\nhost='A.b.com'\nupstream='http://y:1'",
            "routes[1].host",
            "not already routed",
        ),
        ("[[workspaces]]\nid = 'Abc'\nport = 1\nupstream = '127.0.0.1:1'", "workspaces[0].id", "DNS label"),
        ("[[workspaces]]\nid = 'abc'\nport = 0\nupstream = '127.0.0.1:1'", "workspaces[0].port", "port number"),
        ("[[workspaces]]\nid = 'abc'\nport = 1\nupstream = 'nope'", "workspaces[0].upstream", "host:port"),
        ("listen = 5", "listen", "a table"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, toml: str, key: str, expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}:"), msg
    assert f"'{key}'" in msg, msg
    assert expected in msg, msg


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("[listen\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_one_port_on_two_distinct_addresses_is_fine() -> None:
    listeners = {"listen": {"address": "10.0.0.5", "port": 9000}, "metrics": {"address": "127.0.0.1", "port": 9000}}
    cfg = parse_config(listeners)
    assert cfg.listen.port == cfg.metrics.port == 9000


def test_full_config_parses_into_typed_objects() -> None:
    cfg = parse_config(
        {
            "domain": "example.com",
            "workers": 0,
            "listen": {"address": "::", "port": 443},
            "proxy": {"trusted_proxies": ["10.0.0.0/8"], "connect_timeout": 2},
            "routes": [{"host": "grafana.example.com", "upstream": "http://10.1.2.3:3000/grafana", "access": "public"}],
            "workspaces": [
                {"id": "abc", "port": 8080, "upstream": "127.0.0.1:9000", "ide": True, "owner": "github:1"}
            ],
        },
        "x.toml",
    )
    assert cfg.listen.port == 443 and cfg.proxy.connect_timeout == 2.0
    assert isinstance(cfg.proxy.connect_timeout, float)
    assert cfg.routes[0].upstream.endswith("/grafana")
    assert cfg.worker_count >= 1
    assert cfg.workspace_suffix == "ws.example.com"


def _wsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("domain = 'example.com'\n[listen]\nport = 9443\n")
    out = _wsgate("config", "check", str(good))
    assert out.returncode == 0 and "OK" in out.stdout and "example.com" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_headers = 'many'\n")
    out = _wsgate("config", "check", str(bad))
    assert out.returncode == 2
    assert f"{bad}: key 'limits.max_headers': expected an integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_config_check_refuses_missing_certificate_files(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[[tls.certificates]]\ncert = 'nope.pem'\nkey = 'nope.key'\n")
    out = _wsgate("config", "check", str(f))
    assert out.returncode == 2 and "nope.pem" in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_bad_config_with_a_clear_message(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[listen]\nport = 'https'\n")
    out = _wsgate("serve", "--config", str(f))
    assert out.returncode == 2
    assert f"{f}: key 'listen.port'" in out.stderr and "Traceback" not in out.stderr


def test_help_is_useful() -> None:
    out = _wsgate("--help")
    assert out.returncode == 0
    for word in ("serve", "config", "certs", "workspaces"):
        assert word in out.stdout
    out = _wsgate("serve", "--help")
    assert "--config" in out.stdout and "SIGHUP" in out.stdout
    out = _wsgate("certs", "ca", "--help")
    assert "trust" in out.stdout


def test_certs_ca_prints_path_and_pem(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f"state_dir = '{tmp_path / 'st'}'\n")
    out = _wsgate("certs", "ca", "--config", str(f))
    assert out.returncode == 2 and "serve" in out.stderr  # no CA yet: says how to make one
    from certs.localca import ensure_local_ca

    ensure_local_ca(tmp_path / "st", "wsgate.localhost")
    out = _wsgate("certs", "ca", "--config", str(f))
    assert out.returncode == 0
    assert str(tmp_path / "st" / "ca" / "ca.pem") in out.stdout
    assert "-----BEGIN CERTIFICATE-----" in out.stdout
