"""/api/v1/workspaces: start, list, stop, delete workspaces, and make their ports public or private.

The creator owns a workspace. Admins see and manage all of them (for
operations), but only the owner changes port visibility. Anyone else gets the
same 404 as for an id that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from auth.principal import Principal
from gateway.api import API, Caller, error, json_body, ok
from gateway.logs import event
from launcher.base import (
    FAILED,
    PRIVATE,
    Backend,
    LauncherError,
    NotRunning,
    PortSpec,
    StartRequest,
    Workspace,
    check_request,
)

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.api")

_FIELDS = {"command", "base", "env", "ports", "ide_port"}
NOT_FOUND = "no such workspace"


def visible_workspace(gw: Gateway, principal: Principal, workspace_id: str) -> Workspace | None:
    """The workspace when its owner (or an admin) asks; None, exactly as for a missing id, otherwise."""
    w = gw.launcher.get(workspace_id) if gw.launcher is not None else None
    if w is None or w.kind != "workspace":
        return None
    return w if w.owner == principal.identity or gw.auth.policy.is_admin(principal) else None


class WorkspacesAPI:
    def __init__(self, gw: Gateway, api: API) -> None:
        self.gw = gw
        self.api = api

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/workspaces", self.list_workspaces)
        r.add_post("/api/v1/workspaces", self.create)
        r.add_get("/api/v1/workspaces/{id}", self.get)
        r.add_delete("/api/v1/workspaces/{id}", self.delete)
        r.add_post("/api/v1/workspaces/{id}/start", self.start)
        r.add_post("/api/v1/workspaces/{id}/stop", self.stop)
        r.add_patch("/api/v1/workspaces/{id}/ports/{port}", self.patch_port)
        r.add_get("/api/v1/workspaces/{id}/logs", self.logs)

    # --- helpers -----------------------------------------------------------------
    async def _caller(self, request: web.Request) -> Caller | web.Response:
        if self.gw.launcher is None:
            return error(503, "the embedded launcher is off on this gateway")
        return await self.api.caller(request)

    async def _owned(self, request: web.Request) -> tuple[Caller, Workspace, Backend] | web.Response:
        """The caller and the workspace named in the path, or the answer when it is not theirs to see."""
        c = await self._caller(request)
        if isinstance(c, web.Response):
            return c
        launcher = self.gw.launcher
        assert launcher is not None
        w = visible_workspace(self.gw, c.principal, request.match_info["id"])
        if w is None:
            return error(404, NOT_FOUND)
        return c, w, launcher

    def describe(self, w: Workspace) -> dict[str, Any]:
        cfg = self.gw.config
        port = "" if cfg.public_port == 443 else f":{cfg.public_port}"
        suffix = f".ws.{cfg.domain}{port}"
        data: dict[str, Any] = {
            "id": w.id,
            "owner": w.owner,
            "state": w.state,
            "command": w.command,
            "base": w.base,
            "ports": [
                {"number": p.number, "name": p.name, "visibility": p.visibility,
                 "url": f"https://{p.number}-{w.id}{suffix}/"}
                for p in w.ports
            ],
            "ide_port": w.ide_port,
            "ide_url": f"https://{w.id}{suffix}/" if w.ide_port else None,
            "created": w.created,
            "started": w.started,
            "finished": w.finished,
            "exit_code": w.exit_code,
            "error": w.error,
        }
        if w.state == FAILED and self.gw.launcher is not None:
            data["output_tail"] = self.gw.launcher.tail(w.id)
        return data

    # --- handlers ------------------------------------------------------------------
    async def list_workspaces(self, request: web.Request) -> web.Response:
        c = await self._caller(request)
        if isinstance(c, web.Response):
            return c
        assert self.gw.launcher is not None
        admin = self.gw.auth.policy.is_admin(c.principal)
        mine = [
            w for w in self.gw.launcher.workspaces()
            if w.kind == "workspace" and (w.owner == c.principal.identity or admin)
        ]
        return ok({"workspaces": [self.describe(w) for w in mine]})

    async def get(self, request: web.Request) -> web.Response:
        got = await self._owned(request)
        if isinstance(got, web.Response):
            return got
        return ok(self.describe(got[1]))

    async def create(self, request: web.Request) -> web.Response:
        c = await self._caller(request)
        if isinstance(c, web.Response):
            return c
        assert self.gw.launcher is not None
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            req = parse_start(body, c.principal.identity)
        except LauncherError as e:
            return _field_error(str(e))
        try:
            w = await self.gw.launcher.start(req)
        except LauncherError as e:
            return _field_error(str(e), status=_status_for(str(e)))
        event(log, logging.INFO, "workspace created", id=w.id, owner=w.owner)
        return ok(self.describe(w), 201)

    async def start(self, request: web.Request) -> web.Response:
        got = await self._owned(request)
        if isinstance(got, web.Response):
            return got
        _, w, launcher = got
        try:
            w = await launcher.start(StartRequest(owner=w.owner, command=w.command), workspace_id=w.id)
        except LauncherError as e:
            return error(409, str(e))
        return ok(self.describe(w))

    async def stop(self, request: web.Request) -> web.Response:
        got = await self._owned(request)
        if isinstance(got, web.Response):
            return got
        c, w, launcher = got
        w = await launcher.stop(w.id)
        event(log, logging.INFO, "workspace stopped", id=w.id, by=c.principal.identity)
        return ok(self.describe(w))

    async def delete(self, request: web.Request) -> web.Response:
        got = await self._owned(request)
        if isinstance(got, web.Response):
            return got
        c, w, launcher = got
        await launcher.delete(w.id)
        event(log, logging.INFO, "workspace deleted", id=w.id, by=c.principal.identity)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def patch_port(self, request: web.Request) -> web.Response:
        c = await self._caller(request)
        if isinstance(c, web.Response):
            return c
        assert self.gw.launcher is not None
        w = self.gw.launcher.get(request.match_info["id"])
        # Only the owner decides who may reach a port; for anyone else it does not exist.
        if w is None or w.kind != "workspace" or w.owner != c.principal.identity:
            return error(404, NOT_FOUND)
        raw = request.match_info["port"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 5 or not 1 <= int(raw) <= 65535:
            return error(400, "port: not a port number (1-65535)", field="port")
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - {"visibility"})
        if unknown:
            return error(400, f"{unknown[0]}: unknown field", field=unknown[0])
        visibility = body.get("visibility")
        if visibility not in ("public", "private"):
            return error(400, "visibility: must be 'public' or 'private'", field="visibility")
        w = await self.gw.launcher.set_visibility(w.id, int(raw), visibility)
        event(log, logging.INFO, "port visibility", id=w.id, port=int(raw), visibility=visibility)
        return ok(self.describe(w))

    async def logs(self, request: web.Request) -> web.StreamResponse:
        got = await self._owned(request)
        if isinstance(got, web.Response):
            return got
        _, w, launcher = got
        follow = request.query.get("follow", "0") not in ("0", "false", "no")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'",
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            async for chunk in launcher.follow(w.id, live=follow):
                await resp.write(chunk)
        except (ConnectionResetError, NotRunning):
            return resp
        await resp.write_eof()
        return resp


def _field_error(message: str, status: int = 400) -> web.Response:
    field = message.split(":", 1)[0] if ":" in message else ""
    return error(status, message, **({"field": field} if field and " " not in field else {}))


def _status_for(message: str) -> int:
    return 503 if message.startswith("at most") else 400 if ":" in message.split(" ", 1)[0] else 500


def parse_run(body: Mapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(command, base, env) of a workspace or prebuild request; LauncherError names the field that is wrong."""
    command = body.get("command")
    if not isinstance(command, str):
        raise LauncherError("command: expected a string")
    base = body.get("base", "")
    if not isinstance(base, str):
        raise LauncherError("base: expected a string (a directory path)")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise LauncherError("env: expected an object of string values")
    return command, base, env


def parse_start(body: Mapping[str, Any], owner: str) -> StartRequest:
    """A start request from JSON; LauncherError names the field that is wrong."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise LauncherError(f"{unknown[0]}: unknown field")
    command, base, env = parse_run(body)
    raw_ports = body.get("ports", [])
    if not isinstance(raw_ports, list):
        raise LauncherError("ports: expected a list")
    ports = []
    for item in raw_ports:
        if isinstance(item, int) and not isinstance(item, bool):
            ports.append(PortSpec(item))
            continue
        if not isinstance(item, dict) or sorted(set(item) - {"number", "name", "visibility"}):
            raise LauncherError("ports: each port is a number or {number, name?, visibility?}")
        number = item.get("number")
        if not isinstance(number, int) or isinstance(number, bool):
            raise LauncherError("ports: number must be an integer")
        name = item.get("name", "")
        visibility = item.get("visibility", PRIVATE)
        if not isinstance(name, str) or not isinstance(visibility, str):
            raise LauncherError("ports: name and visibility are strings")
        ports.append(PortSpec(number, name, visibility))
    ide_port = body.get("ide_port")
    if ide_port is not None and (not isinstance(ide_port, int) or isinstance(ide_port, bool)):
        raise LauncherError("ide_port: expected an integer")
    req = StartRequest(owner=owner, command=command, base=base, env=env, ports=tuple(ports), ide_port=ide_port)
    check_request(req)
    return req
