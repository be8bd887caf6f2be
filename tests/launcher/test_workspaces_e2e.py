"""Launcher workspaces through a real gateway: who reaches a port, visibility changes, restarts."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
[launcher]
stop_on_exit = true
stop_grace = 2
"""

SERVER = "echo served-from-the-workspace > /workspace/index.html; exec python3 -m http.server 8000"


async def signed_in(gw: Gateway, login: str) -> tuple[Browser, str]:
    b = Browser(str(gw.ca))
    await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), login)
    me = await b.go(gw.url(DOMAIN, "/api/v1/me"))
    return b, json.loads(me.text)["csrf_token"]


async def api(b: Browser, gw: Gateway, csrf: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    visit = await b.go(
        gw.url(DOMAIN, path),
        method,
        data=json.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    )
    return visit.status, json.loads(visit.text) if visit.text.strip() else None


def port_url(gw: Gateway, wid: str, port: int = 8000, path: str = "/index.html") -> str:
    return gw.url(f"{port}-{wid}.ws.{DOMAIN}", path)


async def until_served(b: Browser, url: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        visit = await b.go(url)
        if visit.status == 200:
            return visit.text
        assert time.monotonic() < deadline, (visit.status, visit.text[:300])
        await asyncio.sleep(0.05)


async def test_only_the_owner_reaches_a_private_port(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    bob, _ = await signed_in(gw, "bob")
    anon = Browser(str(gw.ca))
    try:
        status, w = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", {"command": SERVER, "ports": [8000]})
        assert status == 201, w
        wid = w["id"]  # type: ignore[index]
        assert "served-from-the-workspace" in await until_served(alice, port_url(gw, wid))
        # Bob: the same 404 as a workspace that does not exist.
        theirs = await bob.go(port_url(gw, wid))
        missing = await bob.go(port_url(gw, "wnosuchworkspace2"))
        assert theirs.status == missing.status == 404
        assert theirs.text.replace(wid, "X") .split("request id")[0] == missing.text.replace(
            "wnosuchworkspace2", "X").split("request id")[0]
        # Bob cannot see it in the API either.
        assert (await bob.go(gw.url(DOMAIN, f"/api/v1/workspaces/{wid}"))).status == 404
        # Anonymous browsers are sent to sign in.
        first = await anon.go(port_url(gw, wid), follow=False)
        assert first.status == 302 and "/auth/host" in first.last.headers["Location"]
        # Bob cannot change its visibility.
        bob_csrf = json.loads((await bob.go(gw.url(DOMAIN, "/api/v1/me"))).text)["csrf_token"]
        to_public = {"visibility": "public"}
        status, _ = await api(bob, gw, bob_csrf, "PATCH", f"/api/v1/workspaces/{wid}/ports/8000", to_public)
        assert status == 404
        # A port nothing listens on: a clear page for the owner.
        nothing = await alice.go(port_url(gw, wid, 8123, "/"))
        assert nothing.status == 502 and "Nothing is listening on port 8123" in nothing.text
    finally:
        for b in (alice, bob, anon):
            await b.close()


def raw_get(gw: Gateway, host: str, conn: object = None) -> tuple[object, bytes]:
    s = conn or gw.tls_socket(host)
    s.sendall(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # type: ignore[attr-defined]
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)  # type: ignore[attr-defined]
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), 0)
    while len(rest) < length:
        rest += s.recv(65536)  # type: ignore[attr-defined]
    return s, head


async def test_public_then_private_again_closes_anonymous_connections(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        _, w = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", {"command": SERVER, "ports": [8000]})
        wid = w["id"]  # type: ignore[index]
        await until_served(alice, port_url(gw, wid))
        host = f"8000-{wid}.ws.{DOMAIN}"
        _, head = raw_get(gw, host)
        assert head.startswith(b"HTTP/1.1 302")
        patch = f"/api/v1/workspaces/{wid}/ports/8000"
        status, w = await api(alice, gw, csrf, "PATCH", patch, {"visibility": "public"})
        assert status == 200 and w["ports"][0]["visibility"] == "public"  # type: ignore[index]
        conn, head = raw_get(gw, host)
        assert head.startswith(b"HTTP/1.1 200"), head
        # The anonymous keep-alive connection is open; making the port private closes it.
        status, _ = await api(alice, gw, csrf, "PATCH", patch, {"visibility": "private"})
        assert status == 200
        conn.settimeout(5)  # type: ignore[attr-defined]
        try:
            closed = conn.recv(1) == b""  # type: ignore[attr-defined]
        except (ConnectionResetError, OSError):
            closed = True
        assert closed
        _, head = raw_get(gw, host)
        assert head.startswith(b"HTTP/1.1 302")
    finally:
        await alice.close()


async def test_a_stopped_workspace_shows_a_clear_page_to_its_owner(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        _, w = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", {"command": SERVER, "ports": [8000]})
        wid = w["id"]  # type: ignore[index]
        await until_served(alice, port_url(gw, wid))
        status, w = await api(alice, gw, csrf, "POST", f"/api/v1/workspaces/{wid}/stop")
        assert status == 200 and w["state"] == "stopped"  # type: ignore[index]
        page = await alice.go(port_url(gw, wid))
        assert page.status == 503 and "not running" in page.text
        status, w = await api(alice, gw, csrf, "POST", f"/api/v1/workspaces/{wid}/start")
        assert status == 200 and w["state"] == "running"  # type: ignore[index]
        assert "served-from-the-workspace" in await until_served(alice, port_url(gw, wid))
        status, _ = await api(alice, gw, csrf, "DELETE", f"/api/v1/workspaces/{wid}")
        assert status == 204
        assert (await alice.go(port_url(gw, wid))).status == 404
    finally:
        await alice.close()


async def test_bad_start_requests_name_the_field(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        for body, field in [
            ({"command": ""}, "command"),
            ({"command": "x", "ports": [70000]}, "ports"),
            ({"command": "x", "env": {"1BAD": "v"}}, "env"),
            ({"command": "x", "base": "/nonexistent-base"}, "base"),
            ({"command": "x", "colour": "red"}, "colour"),
        ]:
            status, answer = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", body)
            assert status == 400, (body, answer)
            assert answer["error"].startswith(field), answer  # type: ignore[index]
        # Without the CSRF token a browser session cannot start one.
        visit = await alice.go(gw.url(DOMAIN, "/api/v1/workspaces"), "POST", data=json.dumps({"command": "true"}),
                               headers={"Content-Type": "application/json"})
        assert visit.status == 403
    finally:
        await alice.close()


def workspace_processes(state: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(state) in " ".join(p.info["cmdline"] or []) and "wsgate-init" in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


async def test_a_gateway_killed_with_sigkill_adopts_its_workspaces_on_restart(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        _, w = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", {"command": SERVER, "ports": [8000]})
        wid = w["id"]  # type: ignore[index]
        await until_served(alice, port_url(gw, wid))
        _, token = await api(alice, gw, csrf, "POST", "/api/v1/tokens", {"name": "t", "scopes": ["api", "workspace"]})
    finally:
        await alice.close()
    gw.signal(signal.SIGKILL)
    assert gw.proc is not None
    gw.proc.wait()
    state = (gw.config.parent / "state").resolve()
    assert workspace_processes(state), "the workspace died with the gateway"
    gw.start()
    bearer = {"Authorization": f"Bearer {token['token']}"}  # type: ignore[index]
    b = Browser(str(gw.ca))
    try:
        deadline = time.monotonic() + 10
        while (visit := await b.go(port_url(gw, wid), headers=bearer)).status != 200:
            assert time.monotonic() < deadline, visit.status
            await asyncio.sleep(0.05)
        assert "served-from-the-workspace" in visit.text
        listed = await b.go(gw.url(DOMAIN, f"/api/v1/workspaces/{wid}"), headers=bearer)
        assert json.loads(listed.text)["state"] == "running"
        stopped = await b.go(gw.url(DOMAIN, f"/api/v1/workspaces/{wid}/stop"), "POST", headers=bearer)
        assert json.loads(stopped.text)["state"] == "stopped"
    finally:
        await b.close()
    # Nothing is left: no process, no mount, no run directory.
    assert not workspace_processes(state)
    assert str(state) not in Path("/proc/self/mountinfo").read_text()
    assert not (state / "workspaces" / wid / "run").exists()


async def test_a_workspace_that_ended_while_the_gateway_was_down_is_cleaned_up(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        body = {"command": "echo kept > /workspace/f; sleep 1000"}
        _, w = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", body)
        wid = w["id"]  # type: ignore[index]
        _, token = await api(alice, gw, csrf, "POST", "/api/v1/tokens", {"name": "t", "scopes": ["api"]})
    finally:
        await alice.close()
    gw.signal(signal.SIGKILL)
    assert gw.proc is not None
    gw.proc.wait()
    state = (gw.config.parent / "state").resolve()
    for p in workspace_processes(state):
        p.kill()
    gw.start()
    b = Browser(str(gw.ca))
    try:
        # The gateway is ready once it has looked at every workspace it found.
        listed = await b.go(gw.url(DOMAIN, f"/api/v1/workspaces/{wid}"),
                            headers={"Authorization": f"Bearer {token['token']}"})  # type: ignore[index]
        data = json.loads(listed.text)
        assert data["state"] in ("stopped", "failed"), data
    finally:
        await b.close()
    assert not (state / "workspaces" / wid / "run").exists()
    assert (state / "workspaces" / wid / "backup.wsb").exists()
    assert not workspace_processes(state)


async def test_without_a_compiler_the_gateway_serves_and_says_the_launcher_is_off(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    empty = tmp_path / "no-init-here"
    empty.mkdir()
    gw = gateway_factory(CONFIG, env={"CC": "/bin/false", "WSGATE_INIT_DIR": str(empty)})
    alice, csrf = await signed_in(gw, "alice")
    try:
        status, answer = await api(alice, gw, csrf, "POST", "/api/v1/workspaces", {"command": "true"})
        assert status == 503 and "launcher is off" in answer["error"]  # type: ignore[index]
    finally:
        await alice.close()
    assert any("launcher cannot run" in str(e.get("msg", "")) for e in gw.log_events()), gw.logs()[-2000:]
