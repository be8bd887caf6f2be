"""Prebuilds through a real gateway: team-only live logs over TLS, cancellation, provenance, log injection."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable

import psutil
import pytest
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
stop_on_exit = true
stop_grace = 2
[prebuilds]
recheck_interval = 0.2
log_bytes = 1048576
[[teams]]
name = "acme"
members = ["dev:alice", "dev:bob"]
"""


async def signed_in(gw: Gateway, login: str) -> tuple[Browser, str]:
    b = Browser(str(gw.ca))
    await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), login)
    me = await b.go(gw.url(DOMAIN, "/api/v1/me"))
    return b, json.loads(me.text)["csrf_token"]


async def call(b: Browser, gw: Gateway, csrf: str, method: str, path: str, body: object = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, object], dict[str, str]]:
    visit = await b.go(
        gw.url(DOMAIN, path),
        method,
        data=json.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf, **(headers or {})},
    )
    data = json.loads(visit.text) if visit.text.strip() else {}
    return visit.status, data, dict(visit.last.headers)


async def start(b: Browser, gw: Gateway, csrf: str, command: str, team: str = "acme", **extra: object) -> str:
    status, data, _ = await call(b, gw, csrf, "POST", "/api/v1/prebuilds", {"team": team, "command": command, **extra})
    assert status == 201, data
    return str(data["id"])


async def wait_ended(b: Browser, gw: Gateway, pid: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        visit = await b.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{pid}"))
        data = json.loads(visit.text)
        if data.get("status") not in ("running", None):
            return data  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.05)


async def test_a_member_follows_the_live_log_over_tls_in_order_and_fast(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        pid = await start(alice, gw, csrf, "for i in 1 2 3 4 5 6; do echo line $i $(date +%s%N); sleep 0.25; done")
        lines: list[tuple[str, float]] = []
        async with alice.session.get(gw.url(DOMAIN, f"/prebuilds/{pid}/logs")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Content-Security-Policy"] == "default-src 'none'"
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            async for raw in resp.content:
                lines.append((raw.decode(), time.time()))
        texts = [t.strip() for t, _ in lines]
        numbered = [t for t in texts if t.startswith("line ")]
        assert [t.split()[1] for t in numbered] == ["1", "2", "3", "4", "5", "6"]
        assert texts[-1] == f"[wsgate] prebuild {pid} succeeded"
        latencies = []
        for text, arrived in lines:
            if text.startswith("line "):
                written = int(text.split()[2]) / 1e9
                latencies.append(arrived - written)
        # The first lines may have been written before the request; the live ones are what counts.
        live = latencies[2:]
        print(f"write-to-client latency: max {max(live) * 1000:.1f} ms, all {[round(x * 1000) for x in live]}")
        assert max(live) < 0.1
        # follow=0: what exists, and the end line.
        done = await alice.go(gw.url(DOMAIN, f"/prebuilds/{pid}/logs?follow=0"))
        assert done.text.count("line ") == 6 and done.text.endswith(f"prebuild {pid} succeeded\n")
    finally:
        await alice.close()


async def test_outsiders_get_the_same_404_and_a_removed_member_is_cut_off(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    root, root_csrf = await signed_in(gw, "root")
    bob, bob_csrf = await signed_in(gw, "bob")
    carol, _ = await signed_in(gw, "carol")
    anon = Browser(str(gw.ca))
    try:
        status, _, _ = await call(root, gw, root_csrf, "PUT", "/api/v1/teams/builders",
                                  {"members": ["dev:bob", "dev:alice"]})
        assert status == 201
        pid = await start(bob, gw, bob_csrf, "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
                          team="builders")
        missing = "wnosuchprebuild22"

        async def answers(b: Browser, path: str) -> tuple[int, str, str]:
            v = await b.go(gw.url(DOMAIN, path), follow=False)
            return v.status, v.text, v.last.headers.get("Content-Type", "")

        for path in ("/prebuilds/{}/logs", "/prebuilds/{}", "/api/v1/prebuilds/{}", "/api/v1/prebuilds/{}/provenance"):
            expected = await answers(carol, path.format(missing))
            assert expected[0] == 404
            for who in (carol, anon):
                assert await answers(who, path.format(pid)) == expected, path
                assert await answers(who, path.format(missing)) == expected, path
        assert (await answers(root, f"/prebuilds/{pid}/logs?follow=0"))[0] == 200  # admins read any team's log
        assert (await answers(carol, "/api/v1/prebuilds?team=builders"))[0] == 404

        # Bob follows the live log; removing him from the team closes it within the recheck interval.
        got = b""
        async with bob.session.get(gw.url(DOMAIN, f"/prebuilds/{pid}/logs")) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                got += chunk
                if got.count(b"tick") >= 3:
                    break
            status, _, _ = await call(root, gw, root_csrf, "PUT", "/api/v1/teams/builders", {"members": ["dev:alice"]})
            assert status == 200
            removed_at = time.monotonic()
            async for chunk in resp.content.iter_any():
                got += chunk
            cut_after = time.monotonic() - removed_at
        assert b"stream closed: you can no longer read" in got
        print(f"stream closed {cut_after * 1000:.0f} ms after the removal")
        assert cut_after < 1.5
        # The author, no longer a member: the same 404 as anyone.
        for path in ("/prebuilds/{}/logs", "/api/v1/prebuilds/{}"):
            assert await answers(bob, path.format(pid)) == await answers(carol, path.format(missing))
        status, _, _ = await call(bob, gw, bob_csrf, "POST", f"/api/v1/prebuilds/{pid}/cancel")
        assert status == 404
        # Root (admin) cancels it: a cancelled status, with the log and its last line.
        status, data, _ = await call(root, gw, root_csrf, "POST", f"/api/v1/prebuilds/{pid}/cancel")
        assert status == 200 and data["status"] == "cancelled" and data["cancelled_by"] == "dev:root", data
        text = (await root.go(gw.url(DOMAIN, f"/prebuilds/{pid}/logs?follow=0"))).text
        assert "tick 1\n" in text and text.endswith(f"prebuild {pid} was cancelled by dev:root\n")
        assert (await answers(root, f"/api/v1/prebuilds/{pid}/provenance"))[0] == 404
    finally:
        for b in (root, bob, carol, anon):
            await b.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_provenance_lists_the_outputs_digests_and_only_for_success(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    bob, _ = await signed_in(gw, "bob")
    try:
        command = (
            "mkdir -p /workspace/.prebuild/outputs/lib && cd /workspace/.prebuild/outputs && "
            "printf 'artifact-one' > app.bin && printf 'second' > lib/two.txt && ln -s /etc/shadow leak && "
            "echo built"
        )
        source = {"repository": "https://git.example.test/acme/app.git", "revision": "a" * 40}
        pid = await start(alice, gw, csrf, command, source=source, env={"TOKEN": "s3cr3t-value"})
        data = await wait_ended(alice, gw, pid)
        assert data["status"] == "succeeded" and data["exit_code"] == 0, data
        visit = await bob.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{pid}/provenance"))
        assert visit.status == 200 and visit.last.headers["Content-Type"].startswith("application/vnd.in-toto+json")
        stmt = json.loads(visit.text)
        assert "s3cr3t-value" not in visit.text
        assert stmt["_type"] == "https://in-toto.io/Statement/v1"
        assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
        subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
        assert subjects == {"app.bin": _sha(b"artifact-one"), "lib/two.txt": _sha(b"second")}
        build = stmt["predicate"]["buildDefinition"]
        assert build["externalParameters"]["command"] == command
        assert build["externalParameters"]["source"] == source
        deps = json.dumps(build["resolvedDependencies"])
        assert "a" * 40 in deps
        log_text = (await bob.go(gw.url(DOMAIN, f"/prebuilds/{pid}/logs?follow=0"))).text
        assert "built\n" in log_text
        meta = stmt["predicate"]["runDetails"]["metadata"]
        assert meta["invocationId"] == pid and meta["startedOn"].endswith("Z") and meta["finishedOn"].endswith("Z")
        # A failing prebuild: a status, its exit code and its log, but no provenance.
        failing = await start(alice, gw, csrf, "echo about to fail; mkdir -p /workspace/.prebuild/outputs; exit 3")
        data = await wait_ended(alice, gw, failing)
        assert data["status"] == "failed" and data["exit_code"] == 3 and data["provenance_url"] is None
        log_text = (await alice.go(gw.url(DOMAIN, f"/prebuilds/{failing}/logs"))).text
        assert log_text == f"about to fail\n[wsgate] prebuild {failing} failed with exit code 3\n"
        missing = await alice.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{failing}/provenance"))
        assert missing.status == 404 and "failed" in missing.text
        # Listing: the team's prebuilds, newest first.
        listing = json.loads((await bob.go(gw.url(DOMAIN, "/api/v1/prebuilds?team=acme"))).text)
        assert [p["id"] for p in listing["prebuilds"]] == [failing, pid]
    finally:
        await alice.close()
        await bob.close()


async def test_bad_prebuild_requests_are_refused_with_the_field(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    carol, carol_csrf = await signed_in(gw, "carol")
    try:
        for body, field in (
            ({"command": "true"}, "team"),
            ({"team": "acme"}, "command"),
            ({"team": "acme", "command": "true", "ports": [80]}, "ports"),
            ({"team": "acme", "command": "true", "source": {"repository": "file:///etc"}}, "source.repository"),
            ({"team": "acme", "command": "true", "env": {"A": 1}}, "env"),
        ):
            status, data, _ = await call(alice, gw, csrf, "POST", "/api/v1/prebuilds", body)
            assert status == 400 and data["field"] == field, (body, data)
        # Not a member of the team, or no such team: the same 404.
        status, a, _ = await call(carol, gw, carol_csrf, "POST", "/api/v1/prebuilds", {"team": "acme", "command": "x"})
        status2, b, _ = await call(carol, gw, carol_csrf, "POST", "/api/v1/prebuilds", {"team": "nope", "command": "x"})
        assert status == status2 == 404 and a == b
        # Without the CSRF token a browser session cannot start one.
        visit = await alice.go(gw.url(DOMAIN, "/api/v1/prebuilds"), "POST", data=json.dumps(
            {"team": "acme", "command": "true"}), headers={"Content-Type": "application/json"})
        assert visit.status == 403
    finally:
        await alice.close()
        await carol.close()


async def test_hostile_output_stays_inert_text_and_bounded(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        command = (
            "printf '<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">\\n'; "
            "printf '\\033[31mred\\033[0m \\033]0;title\\007 \\033]8;;https://evil.test\\033\\\\link\\n'; "
            "printf 'bad \\377\\376 utf8\\n'; "
            "head -c 50000000 /dev/zero | tr '\\0' 'A' | fold -w 1000; echo; echo burst-done"
        )
        pid = await start(alice, gw, csrf, command)
        assert gw.proc is not None
        top = psutil.Process(gw.proc.pid)

        def rss() -> int:
            # The gateway's own processes (the workspace's shim and init are not the gateway's memory).
            total = 0
            for p in [top, *top.children(recursive=True)]:
                try:
                    if p is top or "gateway" in " ".join(p.cmdline()):
                        total += p.memory_info().rss
                except psutil.Error:  # a short-lived child that ended meanwhile
                    continue
            return total

        rss_before = rss()
        peak = rss_before
        size = 0
        tail = b""
        async with alice.session.get(gw.url(DOMAIN, f"/prebuilds/{pid}/logs")) as resp:
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                tail = (tail + chunk)[-4096:]
                chunk.decode("utf-8")  # raises if the stream is not valid UTF-8 (chunks cut at line ends)
                assert b"\x1b" not in chunk
                peak = max(peak, rss())
                await asyncio.sleep(0.001)  # a slow-ish reader
        growth = (peak - rss_before) / 2**20
        print(f"streamed {size / 2**20:.1f} MiB; gateway RSS grew {growth:.1f} MiB")
        assert growth < 50
        assert tail.endswith(f"burst-done\n[wsgate] prebuild {pid} succeeded\n".encode())
        kept = (await alice.go(gw.url(DOMAIN, f"/prebuilds/{pid}/logs?follow=0"))).text
        assert len(kept.encode()) <= (1 << 20) + 200  # the kept log is bounded by prebuilds.log_bytes
        assert "burst-done" in kept
    finally:
        await alice.close()


def test_the_log_page_renders_hostile_output_as_text_in_chromium(gateway_factory: Callable[..., Gateway]) -> None:
    from browser import launch_chromium, require_chromium

    require_chromium()
    from playwright.sync_api import expect

    gw = gateway_factory(CONFIG)
    payload = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"><b id=bold>b</b>"

    async def make() -> str:
        alice, csrf = await signed_in(gw, "alice")
        try:
            return await start(alice, gw, csrf, f"cat <<'EOF'\n{payload}\nEOF\nsleep 1; echo after-a-second")
        finally:
            await alice.close()

    pid = asyncio.run(make())
    resolver = f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1"
    with launch_chromium(extra_args=(resolver,)) as chromium:
        page = chromium.new_context(ignore_https_errors=True).new_page()
        page.goto(gw.url(DOMAIN, "/auth/login"))
        page.click("a.button")
        page.fill("input[name=login]", "alice")
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(gw.url(DOMAIN, f"/prebuilds/{pid}"))
        log = page.locator("#log")
        expect(log).to_contain_text("after-a-second", timeout=15000)
        expect(page.locator("#status")).to_have_text(f"prebuild {pid} succeeded", timeout=15000)
        assert payload in (log.text_content() or "")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#log img, #log script, #bold").count() == 0
        # Someone outside the team sees the plain not-found page.
        other = chromium.new_context(ignore_https_errors=True).new_page()
        response = other.goto(gw.url(DOMAIN, f"/prebuilds/{pid}"))
        assert response is not None and response.status == 404


async def test_results_survive_a_gateway_restart(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    alice, csrf = await signed_in(gw, "alice")
    try:
        command = "mkdir -p /workspace/.prebuild/outputs; echo x > /workspace/.prebuild/outputs/o; echo finished"
        pid = await start(alice, gw, csrf, command)
        before = await wait_ended(alice, gw, pid)
        stmt = (await alice.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{pid}/provenance"))).text
    finally:
        await alice.close()
    gw.stop()
    gw.start()
    alice, _ = await signed_in(gw, "alice")
    try:
        after = json.loads((await alice.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{pid}"))).text)
        assert after == before
        assert (await alice.go(gw.url(DOMAIN, f"/api/v1/prebuilds/{pid}/provenance"))).text == stmt
        text = (await alice.go(gw.url(DOMAIN, f"/prebuilds/{pid}/logs?follow=0"))).text
        assert text == f"finished\n[wsgate] prebuild {pid} succeeded\n"
    finally:
        await alice.close()
