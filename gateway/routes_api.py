"""/api/v1/routes and /api/v1/audit for admins, and the public keys at /.well-known/jwks.json.

Admins authenticate with their session (unsafe methods need the CSRF header)
or with a token that carries the `admin` scope. Writes validate the whole
rule first (400 naming the field), are atomic, honour If-Match against the
ETag of the rule, and land in the audit log with who, when, before and after.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from auth.docstore import Conflict
from gateway.api import API, Caller, error, etag, if_match, json_body, ok
from gateway.logs import event
from routing.rules import RuleError

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.api")

NOT_FOUND = "no such route"
_RULE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_AUDIT = 500


class RoutesAPI:
    def __init__(self, gw: Gateway, api: API) -> None:
        self.gw = gw
        self.api = api

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/routes", self.list_routes)
        r.add_get("/api/v1/routes/{id}", self.get)
        r.add_put("/api/v1/routes/{id}", self.put)
        r.add_delete("/api/v1/routes/{id}", self.delete)
        r.add_get("/api/v1/audit", self.audit)
        r.add_get("/.well-known/jwks.json", self.jwks)

    async def admin(self, request: web.Request) -> Caller | web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        if not self.api.is_admin(c):
            return error(403, "admins only (with a token, it needs the 'admin' scope)")
        return c

    def describe(self, rule_id: str) -> dict[str, Any] | None:
        rule = self.gw.rules.current.get(rule_id)
        if rule is None:
            return None
        return {**rule.to_dict(), "version": self.gw.rules.versions.get(rule_id)}

    def _answer(self, rule_id: str, status: int = 200) -> web.Response:
        data = self.describe(rule_id)
        if data is None:
            return error(404, NOT_FOUND)
        resp = ok(data, status)
        if data["version"] is not None:
            resp.headers["ETag"] = etag(int(data["version"]))
        return resp

    async def list_routes(self, request: web.Request) -> web.Response:
        c = await self.admin(request)
        if isinstance(c, web.Response):
            return c
        rules = sorted(self.gw.rules.current, key=lambda r: r.id)
        return ok({"routes": [self.describe(r.id) for r in rules]})

    async def get(self, request: web.Request) -> web.Response:
        c = await self.admin(request)
        if isinstance(c, web.Response):
            return c
        return self._answer(request.match_info["id"])

    async def put(self, request: web.Request) -> web.Response:
        c = await self.admin(request)
        if isinstance(c, web.Response):
            return c
        rule_id = request.match_info["id"]
        version = if_match(request)
        if isinstance(version, web.Response):
            return version
        body = await json_body(request, "the route")
        if isinstance(body, web.Response):
            return body
        try:
            rule = self.gw.rules.check(rule_id, body)
        except RuleError as e:
            return error(400, str(e), field=e.field)
        exists = self.gw.rules.current.get(rule_id) is not None
        if request.headers.get("If-Match", "").strip() == "*":
            if not exists:
                return error(412, "the route does not exist (If-Match: *)")
            # Checked again by the store, atomically: the version this process knows must still be current.
            version = self.gw.rules.versions.get(rule_id, version)
        if request.headers.get("If-None-Match", "").strip() == "*":
            if exists:
                return error(412, "the route already exists (If-None-Match: *)")
            version = 0  # the store refuses the write if another process created it meanwhile
        try:
            doc = await self.gw.rules.put(rule, if_version=version, caller=c)
        except Conflict as e:
            got = e.current.version if e.current is not None else None
            return error(412, "the route changed since you read it; read it again (ETag) and retry", current=got)
        event(log, logging.INFO, "route saved", route=rule_id, by=c.principal.identity, version=doc.version)
        return self._answer(rule_id, 200 if exists else 201)

    async def delete(self, request: web.Request) -> web.Response:
        c = await self.admin(request)
        if isinstance(c, web.Response):
            return c
        rule_id = request.match_info["id"]
        if self.gw.rules.current.get(rule_id) is None and not _RULE_ID.fullmatch(rule_id):
            return error(404, NOT_FOUND)
        version = if_match(request)
        if isinstance(version, web.Response):
            return version
        try:
            doc = await self.gw.rules.delete(rule_id, if_version=version, caller=c)
        except Conflict:
            return error(412, "the route changed since you read it; read it again (ETag) and retry")
        if doc is None:
            return error(404, NOT_FOUND)
        event(log, logging.INFO, "route deleted", route=rule_id, by=c.principal.identity)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def audit(self, request: web.Request) -> web.Response:
        c = await self.admin(request)
        if isinstance(c, web.Response):
            return c
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            before = int(q["before"]) if "before" in q else None
        except ValueError:
            return error(400, "limit and before: expected integers", field="limit")
        if not 1 <= limit <= MAX_AUDIT:
            return error(400, f"limit: from 1 to {MAX_AUDIT}", field="limit")
        if before is not None and not 1 <= before <= 2**62:
            return error(400, "before: a sequence number from an earlier answer (seq)", field="before")
        kind = q.get("kind") or None
        if kind is not None and kind not in ("rule", "team"):
            return error(400, "kind: 'rule' or 'team'", field="kind")
        entries = await self.gw.docs.audit(limit=limit, before=before, kind=kind)
        return ok({"entries": entries})

    async def jwks(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.gw.assertions.jwks_json(),
            content_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )
