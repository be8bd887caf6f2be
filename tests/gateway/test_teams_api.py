"""/api/v1/teams through a real gateway: who may read and change teams, ETags, validation, persistence."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

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
groups = ["github:acme-inc"]
"""


class Client:
    def __init__(self, gw: Gateway, b: Browser, csrf: str) -> None:
        self.gw, self.b, self.csrf = gw, b, csrf

    async def call(
        self, method: str, path: str, body: object = None, **headers: str
    ) -> tuple[int, dict[str, object], str]:
        visit = await self.b.go(
            self.gw.url(DOMAIN, path),
            method,
            data=json.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json", "X-CSRF-Token": self.csrf,
                     **{k.replace("_", "-"): v for k, v in headers.items()}},
        )
        data = json.loads(visit.text) if visit.text.strip() else {}
        return visit.status, data, visit.last.headers.get("ETag", "")


async def client(gw: Gateway, login: str) -> Client:
    b = Browser(str(gw.ca))
    await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), login)
    me = await b.go(gw.url(DOMAIN, "/api/v1/me"))
    return Client(gw, b, json.loads(me.text)["csrf_token"])


async def test_admins_manage_teams_members_read_them_and_others_see_nothing(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    root, alice, bob, carol = [await client(gw, n) for n in ("root", "alice", "bob", "carol")]
    try:
        status, data, tag = await root.call("PUT", "/api/v1/teams/web",
                                            {"members": ["dev:bob"], "admins": ["dev:alice"]})
        assert status == 201 and tag == '"1"' and data["source"] == "api", data
        assert data["members"] == ["dev:bob"] and data["admins"] == ["dev:alice"]
        # Members see their teams; a stranger sees none and gets the 404 of a missing team.
        _, listing, _ = await bob.call("GET", "/api/v1/teams")
        assert [t["name"] for t in listing["teams"]] == ["web"]  # type: ignore[union-attr]
        _, listing, _ = await alice.call("GET", "/api/v1/teams")
        assert [t["name"] for t in listing["teams"]] == ["fixed", "web"]  # type: ignore[union-attr]
        _, listing, _ = await root.call("GET", "/api/v1/teams")
        assert [t["name"] for t in listing["teams"]] == ["fixed", "web"]  # type: ignore[union-attr]
        assert (await carol.call("GET", "/api/v1/teams"))[1] == {"teams": []}
        theirs = await carol.call("GET", "/api/v1/teams/web")
        assert theirs[0] == 404 and theirs[:2] == (await carol.call("GET", "/api/v1/teams/nope"))[:2]
        assert (await carol.call("PUT", "/api/v1/teams/web", {"members": ["dev:carol"]}))[0] == 404
        assert (await carol.call("DELETE", "/api/v1/teams/web"))[0] == 404
        # A plain member may not change it; the team's admin may, with the right version.
        assert (await bob.call("PUT", "/api/v1/teams/web", {"members": ["dev:bob", "dev:carol"]}))[0] == 403
        change = {"members": ["dev:carol"], "admins": ["dev:alice"]}
        status, data, _ = await alice.call("PUT", "/api/v1/teams/web", change, If_Match='"7"')
        assert status == 412 and "changed since you read it" in str(data["error"])
        status, data, tag = await alice.call("PUT", "/api/v1/teams/web",
                                             {"members": ["dev:carol"], "admins": ["dev:alice"]}, If_Match='"1"')
        assert status == 200 and tag == '"2"'
        assert (await carol.call("GET", "/api/v1/teams/web"))[0] == 200
        assert (await bob.call("GET", "/api/v1/teams/web"))[0] == 404  # removed: gone at once
        # Only gateway admins delete; config teams are read-only here.
        assert (await alice.call("DELETE", "/api/v1/teams/web"))[0] == 403
        status, data, _ = await root.call("PUT", "/api/v1/teams/fixed", {"members": []})
        assert status == 409 and "config file" in str(data["error"])
        assert (await root.call("DELETE", "/api/v1/teams/fixed"))[0] == 409
        assert (await root.call("DELETE", "/api/v1/teams/web", If_Match='"1"'))[0] == 412
        assert (await root.call("DELETE", "/api/v1/teams/web", If_Match='"2"'))[0] == 204
        assert (await carol.call("GET", "/api/v1/teams/web"))[0] == 404
    finally:
        for c in (root, alice, bob, carol):
            await c.b.close()
    # Every change is in the audit log, with who, before and after.
    gw.stop()
    db = sqlite3.connect(gw.dir / "state" / "wsgate.db")
    rows = [json.loads(r[0]) for r in db.execute("SELECT entry FROM audit ORDER BY seq")]
    db.close()
    assert [(r["actor"], r["action"], r["id"]) for r in rows] == [
        ("dev:root", "put", "web"), ("dev:alice", "put", "web"), ("dev:root", "delete", "web")]
    assert rows[1]["before"]["members"] == ["dev:bob"] and rows[1]["after"]["members"] == ["dev:carol"]
    assert rows[2]["after"] is None


async def test_bad_team_definitions_are_400_with_the_field_and_nothing_is_written(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    root = await client(gw, "root")
    try:
        for name, body, field in (
            ("web", {"members": ["alice"]}, "members[0]"),
            ("web", {"groups": ["acme"]}, "groups[0]"),
            ("web", {"admins": "dev:x"}, "admins"),
            ("web", {"members": [], "colour": "red"}, "colour"),
            ("web", {"name": "other"}, "name"),
            ("Bad_Name", {}, "name"),
        ):
            status, data, _ = await root.call("PUT", f"/api/v1/teams/{name}", body)
            assert status == 400 and data["field"] == field, (body, data)
        visit = await root.b.go(gw.url(DOMAIN, "/api/v1/teams/web"), "PUT", data=b"{not json",
                                headers={"Content-Type": "application/json", "X-CSRF-Token": root.csrf})
        assert visit.status == 400 and "not valid JSON" in visit.text
        visit = await root.b.go(gw.url(DOMAIN, "/api/v1/teams/web"), "PUT", data=b"x" * (10 << 20),
                                headers={"Content-Type": "application/json", "X-CSRF-Token": root.csrf})
        assert visit.status == 413
        # Without the CSRF header a browser session cannot write.
        visit = await root.b.go(gw.url(DOMAIN, "/api/v1/teams/web"), "PUT", data=b"{}",
                                headers={"Content-Type": "application/json"})
        assert visit.status == 403
        assert (await root.call("GET", "/api/v1/teams/web"))[0] == 404
    finally:
        await root.b.close()


async def test_teams_survive_a_restart_and_admin_tokens_need_the_admin_scope(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(CONFIG)
    root = await client(gw, "root")
    try:
        assert (await root.call("PUT", "/api/v1/teams/ops", {"members": ["dev:bob"]}))[0] == 201
        status, plain, _ = await root.call("POST", "/api/v1/tokens", {"name": "t", "scopes": ["api"]})
        status2, admin, _ = await root.call("POST", "/api/v1/tokens", {"name": "a", "scopes": ["api", "admin"]})
        assert status == status2 == 201
    finally:
        await root.b.close()
    gw.stop()
    gw.start()
    async with Browser(str(gw.ca)) as b:
        def bearer(token: object) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        got = await b.go(gw.url(DOMAIN, "/api/v1/teams/ops"), headers=bearer(admin["token"]))
        assert got.status == 200 and json.loads(got.text)["members"] == ["dev:bob"]
        # An admin's token without the admin scope has no admin rights.
        assert (await b.go(gw.url(DOMAIN, "/api/v1/teams/ops"), headers=bearer(plain["token"]))).status == 404
        denied = await b.go(gw.url(DOMAIN, "/api/v1/teams/new"), "PUT", data=b"{}", headers=bearer(plain["token"]))
        assert denied.status == 404
        made = await b.go(gw.url(DOMAIN, "/api/v1/teams/new"), "PUT", data=b"{}", headers=bearer(admin["token"]))
        assert made.status == 201
