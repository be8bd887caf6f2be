"""/api/v1/teams: list, read, create, change and delete teams.

Gateway admins manage every team; a team's own admins may change its members
and groups. Members read their teams; anyone else gets the same 404 as for a
team that does not exist. Teams defined in the config are shown but cannot be
changed here (409): the file is their source of truth. Writes carry an ETag
and honour If-Match, and each lands in the audit log with its before and after.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from auth.docstore import Conflict
from auth.policy import Team
from auth.teams import KIND, TeamError, check_name, parse_team, team_to_dict
from gateway.api import API, Caller, audit_entry, error, etag, if_match, json_body, ok
from gateway.logs import event

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.api")

NOT_FOUND = "no such team"


class TeamsAPI:
    def __init__(self, gw: Gateway, api: API) -> None:
        self.gw = gw
        self.api = api

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/teams", self.list_teams)
        r.add_get("/api/v1/teams/{name}", self.get)
        r.add_put("/api/v1/teams/{name}", self.put)
        r.add_delete("/api/v1/teams/{name}", self.delete)

    def describe(self, team: Team) -> dict[str, Any]:
        directory = self.gw.teams
        data = team_to_dict(team)
        data["source"] = "config" if directory.is_config(team.name) else "api"
        data["version"] = directory.versions.get(team.name)
        return data

    def _visible(self, c: Caller, name: str) -> Team | None:
        team = self.gw.teams.get(name)
        if team is None:
            return None
        if self.api.is_admin(c) or team.has(c.principal):
            return team
        return None

    def _answer(self, team: Team, status: int = 200) -> web.Response:
        resp = ok(self.describe(team), status)
        version = self.gw.teams.versions.get(team.name)
        if version is not None:
            resp.headers["ETag"] = etag(version)
        return resp

    async def list_teams(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        teams = sorted(self.gw.auth.policy.teams.values(), key=lambda t: t.name)
        visible = [t for t in teams if self.api.is_admin(c) or t.has(c.principal)]
        return ok({"teams": [self.describe(t) for t in visible]})

    async def get(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        team = self._visible(c, request.match_info["name"])
        if team is None:
            return error(404, NOT_FOUND)
        return self._answer(team)

    async def put(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        name = request.match_info["name"]
        current = self._visible(c, name)
        admin = self.api.is_admin(c)
        if not admin and (current is None or not self.gw.auth.policy.is_team_admin(c.principal, name)):
            # Members who are not the team's admins learn only that they may not change it.
            return error(403, "only gateway admins and the team's admins may change a team") if current else error(
                404, NOT_FOUND
            )
        version = if_match(request)
        if isinstance(version, web.Response):
            return version
        body = await json_body(request, "the team")
        if isinstance(body, web.Response):
            return body
        try:
            team = parse_team(check_name(name), body)
        except TeamError as e:
            return error(400, str(e), field=e.field)
        if self.gw.teams.is_config(name):
            return error(409, f"team {name!r} is defined in the config file; change it there")
        if not admin and c.principal.identity not in team.admins:
            return error(400, "admins: a team admin cannot remove themself; ask a gateway admin", field="admins")
        if request.headers.get("If-Match", "").strip() == "*" and current is None:
            return error(412, "the team does not exist (If-Match: *)")
        before = team_to_dict(current) if current is not None and not self.gw.teams.is_config(name) else None
        try:
            doc = await self.gw.teams.put(
                team,
                if_version=version,
                audit=audit_entry(c, "put", KIND, name, before, team_to_dict(team)),
            )
        except Conflict as e:
            got = e.current.version if e.current is not None else None
            return error(412, "the team changed since you read it; read it again (ETag) and retry", current=got)
        event(log, logging.INFO, "team saved", team=name, by=c.principal.identity, version=doc.version)
        return self._answer(team, 200 if before is not None else 201)

    async def delete(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        name = request.match_info["name"]
        current = self._visible(c, name)
        if current is None:
            return error(404, NOT_FOUND)
        if not self.api.is_admin(c):
            return error(403, "only gateway admins delete teams")
        if self.gw.teams.is_config(name):
            return error(409, f"team {name!r} is defined in the config file; remove it there")
        version = if_match(request)
        if isinstance(version, web.Response):
            return version
        try:
            doc = await self.gw.teams.delete(
                name, if_version=version, audit=audit_entry(c, "delete", KIND, name, team_to_dict(current), None)
            )
        except Conflict:
            return error(412, "the team changed since you read it; read it again (ETag) and retry")
        if doc is None:
            return error(404, NOT_FOUND)
        event(log, logging.INFO, "team deleted", team=name, by=c.principal.identity)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

