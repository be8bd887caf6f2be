"""Two gateway replicas on one machine sharing Redis: either one routes to a workspace the other launched."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_server import RedisServer
from redis_server import available as redis_available
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
[launcher]
stop_on_exit = true
stop_grace = 1
"""
SERVER = "echo from-replica-a > /workspace/index.html; exec python3 -m http.server 8000"


async def test_a_workspace_is_reachable_through_every_replica_with_the_same_rules(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    if not redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server is not installed")
    redis = RedisServer(tmp_path / "redis").start()
    toml = f'redis_url = "{redis.url}"\n' + CONFIG
    a = gateway_factory(toml, name="a")
    b = gateway_factory(toml, name="b", start=False)
    # Replicas share the key material (tickets are signed with it) and, here, the local CA's certificate.
    for name in ("keys", "ca"):
        shutil.copytree(a.dir / "state" / name, b.dir / "state" / name)
    b.start()
    alice, bob, anon = Browser(str(a.ca)), Browser(str(a.ca)), Browser(str(a.ca))
    try:
        await dev_sign_in(alice, a.url(DOMAIN, "/auth/login"), "alice")
        await dev_sign_in(bob, b.url(DOMAIN, "/auth/login"), "bob")
        csrf = json.loads((await alice.go(a.url(DOMAIN, "/api/v1/me"))).text)["csrf_token"]
        made = await alice.go(a.url(DOMAIN, "/api/v1/workspaces"), "POST",
                              data=json.dumps({"command": SERVER, "ports": [8000]}),
                              headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert made.status == 201, made.text
        wid = json.loads(made.text)["id"]
        host = f"8000-{wid}.ws.{DOMAIN}"
        deadline = time.monotonic() + 15
        while True:
            through_b = await alice.go(b.url(host, "/index.html"))
            if through_b.status == 200:
                break
            assert time.monotonic() < deadline, (through_b.status, through_b.text[:300])
            await asyncio.sleep(0.1)
        assert through_b.text == "from-replica-a\n"
        # The owner-only rule holds on the other replica too: bob gets the 404 of a missing workspace.
        theirs = await bob.go(b.url(host, "/index.html"))
        missing = await bob.go(b.url(f"8000-wnosuchworkspace2.ws.{DOMAIN}", "/index.html"))
        assert theirs.status == missing.status == 404
        # Made public on A: anonymous visitors get it through B within a second.
        patched = await alice.go(a.url(DOMAIN, f"/api/v1/workspaces/{wid}/ports/8000"), "PATCH",
                                 data=json.dumps({"visibility": "public"}),
                                 headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert patched.status == 200
        changed = time.monotonic()
        while (await anon.go(b.url(host, "/index.html"), follow=False)).status != 200:
            assert time.monotonic() - changed < 1.0
            await asyncio.sleep(0.05)
        # Stopped on A: B answers with the not-running page.
        stopped = await alice.go(a.url(DOMAIN, f"/api/v1/workspaces/{wid}/stop"), "POST",
                                 headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert stopped.status == 200
        changed = time.monotonic()
        while (await anon.go(b.url(host, "/index.html"), follow=False)).status != 503:
            assert time.monotonic() - changed < 2.0
            await asyncio.sleep(0.05)
    finally:
        for br in (alice, bob, anon):
            await br.close()
        a.stop()
        b.stop()
        redis.stop()
