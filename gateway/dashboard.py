"""The main domain's home page: the signed-in person's workspaces, as plain HTML forms.

The page works without JavaScript: every action is a form POST that carries the
session's CSRF token and answers 303 back to `/`. Commands, errors and output
are text that a workspace's owner (or an attacker) wrote, so every value is
escaped. Other people's workspaces answer 404, as ids that do not exist.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from auth.service import SESSION_COOKIE
from auth.sessions import Session
from gateway.api import API
from gateway.logs import event
from gateway.signin import PAGE_HEADERS, gateway_cookie, logout_form, not_found_page, page, redirect
from gateway.workspaces_api import WorkspacesAPI, parse_start, visible_workspace
from launcher.base import FAILED, LIVE, PRIVATE, PUBLIC, LauncherError, StartRequest, Workspace, is_id

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.dashboard")

_SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:{width};margin:4em auto;padding:0 1em;color:#222}}
code,pre{{font:14px/1.4 ui-monospace,monospace}}pre{{white-space:pre-wrap;word-break:break-all;margin:.3em 0}}
.ws{{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0;list-style:none}}
ul.workspaces{{padding:0}}form.inline{{display:inline}}button{{font:inherit;cursor:pointer}}
.state{{font-weight:bold}}.failed .state,.error{{color:#a00}}.muted{{color:#666}}
.flash{{background:#eef6ee;border:1px solid #9c9;padding:.5em 1em;border-radius:6px}}
.problem{{background:#fbeeee;border:1px solid #c99;padding:.5em 1em;border-radius:6px}}
label{{display:block;margin:.5em 0}}input,textarea{{font:inherit;padding:.3em;width:100%;box-sizing:border-box}}
table{{border-collapse:collapse}}td{{padding:.1em .8em .1em 0}}</style>
</head><body><h1>wsgate</h1>
{body}
</body></html>
"""

_INTRO = (
    "<p>This gateway serves developer workspaces at"
    " <code>https://&lt;port&gt;-&lt;workspace&gt;.ws.{domain}/</code>.</p>"
)

# Flash messages are chosen from this table by code, so a crafted link cannot put words on the page.
_PORT = re.compile(r"[0-9]{1,5}")

_FLASH = {
    "started": "Workspace {ws} started.",
    "stopped": "Workspace {ws} stopped.",
    "deleted": "Workspace {ws} deleted.",
    "public": "Port {port} of {ws} is now public: anyone with the link can open it.",
    "private": "Port {port} of {ws} is now private.",
}


class FormError(Exception):
    """A start form that cannot be turned into a request; the message names the field."""


class Dashboard:
    """GET / and the /dashboard/... form actions, on the embedded launcher."""

    def __init__(self, gw: Gateway, workspaces: WorkspacesAPI | None = None) -> None:
        self.gw = gw
        # describe() gives the page the same URLs and fields as the JSON API.
        self.workspaces = workspaces or WorkspacesAPI(gw, API(gw))

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.home)
        r.add_post("/dashboard/workspaces", self.create)
        r.add_post("/dashboard/workspaces/{id}/start", self.start)
        r.add_post("/dashboard/workspaces/{id}/stop", self.stop)
        r.add_post("/dashboard/workspaces/{id}/delete", self.delete)
        r.add_post("/dashboard/workspaces/{id}/ports/{port}", self.set_port)

    # --- who, and may they ------------------------------------------------------------
    async def _session(self, request: web.Request) -> Session | None:
        if not self.gw.auth.enabled:
            return None
        sid = gateway_cookie(request, SESSION_COOKIE)
        return await self.gw.auth.session(sid) if sid else None

    async def _form(self, request: web.Request) -> tuple[Session, Mapping[str, str]] | web.Response:
        """The session and form of an action, or the answer when there is no session or the token is wrong."""
        session = await self._session(request)
        if session is None:
            return redirect("/auth/login?" + urlencode({"next": "/"}), 303)
        raw = await request.post()
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        token = form.get("csrf", "")
        if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            event(log, logging.WARNING, "dashboard action refused: CSRF token missing or wrong", path=request.path)
            return page("Forbidden", '<p>This request did not come from this site.</p><p><a href="/">Home</a></p>', 403)
        if self.gw.launcher is None:
            return page("Unavailable", "<p>The embedded launcher is off on this gateway.</p>", 503)
        return session, form

    def _mine(self, session: Session) -> list[Workspace]:
        assert self.gw.launcher is not None
        p = session.principal
        admin = self.gw.auth.policy.is_admin(p)
        found = [w for w in self.gw.launcher.workspaces() if w.kind == "workspace" and (w.owner == p.identity or admin)]
        return sorted(found, key=lambda w: w.created, reverse=True)

    def _visible(self, session: Session, workspace_id: str) -> Workspace | None:
        return visible_workspace(self.gw, session.principal, workspace_id)

    # --- the page ----------------------------------------------------------------------
    async def home(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        domain = escape(self.gw.config.domain)
        if session is None:
            status = '<p><a href="/auth/login">Sign in</a></p>' if self.gw.auth.enabled else ""
            return _html("wsgate", _INTRO.format(domain=domain) + "\n" + status, width="40em")
        flash = _flash(request.query)
        return self.render(session, flash=flash)

    def render(
        self, session: Session, *, flash: str = "", problem: str = "", form: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> web.Response:
        p = session.principal
        parts = [
            f"<p>Signed in as <b>{escape(p.login)}</b> <code>{escape(p.identity)}</code></p>",
            logout_form(session),
        ]
        if flash:
            parts.append(f'<p class="flash" role="status">{escape(flash)}</p>')
        if problem:
            parts.append(f'<p class="problem" role="alert">{escape(problem)}</p>')
        if self.gw.launcher is None:
            parts.append(_INTRO.format(domain=escape(self.gw.config.domain)))
            parts.append('<p class="muted">The embedded launcher is off on this gateway.</p>')
            return _html("wsgate", "\n".join(parts), status=status)
        mine = self._mine(session)
        parts.append("<h2>Workspaces</h2>")
        if mine:
            items = "\n".join(self._workspace(session, w) for w in mine)
            parts.append(f'<ul class="workspaces">\n{items}\n</ul>')
        else:
            parts.append('<p class="muted" id="no-workspaces">You have no workspaces yet.</p>')
        parts.append(_start_form(session, form or {}))
        return _html("Workspaces · wsgate", "\n".join(parts), status=status)

    def _workspace(self, session: Session, w: Workspace) -> str:
        d: dict[str, Any] = self.workspaces.describe(w)
        wid = escape(w.id)
        own = w.owner == session.principal.identity
        lines = [
            f'<li class="ws {escape(w.state)}" id="ws-{wid}" data-state="{escape(w.state)}">',
            f'<p><code class="id">{wid}</code> · <span class="state">{escape(w.state)}</span>'
            f' <span class="muted">created {escape(_when(w.created))}</span>'
            + ("" if own else f' <span class="muted">owner <code>{escape(w.owner)}</code></span>')
            + "</p>",
            f'<pre class="command">{escape(w.command)}</pre>',
        ]
        if w.state == FAILED:
            code = f"exit code {w.exit_code}" if w.exit_code is not None else ""
            why = w.error or code or "the workspace ended with an error"
            if code and w.error and f"code {w.exit_code}" not in w.error:
                why += f" ({code})"
            lines.append(f'<p class="error">Failed: {escape(why)}</p>')
            tail = d.get("output_tail")
            if isinstance(tail, str) and tail:
                lines.append(f"<details><summary>Last output</summary><pre>{escape(tail)}</pre></details>")
        elif w.exit_code is not None and w.state not in LIVE:
            lines.append(f'<p class="muted exit">Exited with code {w.exit_code}.</p>')
        if d.get("ide_url"):
            lines.append(f'<p><a class="ide" href="{escape(d["ide_url"])}">Open the IDE</a></p>')
        if d["ports"]:
            rows = []
            for port in d["ports"]:
                number = int(port["number"])
                visibility = str(port["visibility"])
                name = f' <span class="muted">{escape(port["name"])}</span>' if port["name"] else ""
                toggle = ""
                if own:
                    other = PRIVATE if visibility == PUBLIC else PUBLIC
                    toggle = _action(
                        session, f"/dashboard/workspaces/{w.id}/ports/{number}", f"Make {other}",
                        {"visibility": other},
                    )
                rows.append(
                    f'<tr class="port" id="port-{wid}-{number}" data-visibility="{escape(visibility)}">'
                    f'<td><a class="port-link" href="{escape(port["url"])}">{number}</a>{name}</td>'
                    f'<td class="visibility">{escape(visibility)}</td><td>{toggle}</td></tr>'
                )
            lines.append("<table><tr><th>Port</th><th>Visibility</th><th></th></tr>" + "".join(rows) + "</table>")
        buttons = []
        if w.state in LIVE:
            buttons.append(_action(session, f"/dashboard/workspaces/{w.id}/stop", "Stop"))
        else:
            buttons.append(_action(session, f"/dashboard/workspaces/{w.id}/start", "Start"))
        buttons.append(_action(session, f"/dashboard/workspaces/{w.id}/delete", "Delete"))
        lines.append('<div class="actions">' + " ".join(buttons) + "</div>")
        lines.append("</li>")
        return "\n".join(lines)

    # --- actions -----------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, form = got
        assert self.gw.launcher is not None
        try:
            req = parse_start(start_body(form), session.principal.identity)
        except (FormError, LauncherError) as e:
            return self.render(session, problem=str(e), form=form, status=400)
        try:
            w = await self.gw.launcher.start(req)
        except LauncherError as e:
            return self.render(session, problem=f"The workspace did not start: {e}", form=form, status=409)
        event(log, logging.INFO, "workspace created", id=w.id, owner=w.owner, via="dashboard")
        return _done("started", w.id)

    async def start(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, _ = got
        w = self._visible(session, request.match_info["id"])
        if w is None:
            return not_found_page()
        assert self.gw.launcher is not None
        try:
            w = await self.gw.launcher.start(StartRequest(owner=w.owner, command=w.command), workspace_id=w.id)
        except LauncherError as e:
            return self.render(session, problem=f"{w.id} did not start: {e}", status=409)
        event(log, logging.INFO, "workspace started", id=w.id, by=session.principal.identity, via="dashboard")
        return _done("started", w.id)

    async def stop(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, _ = got
        w = self._visible(session, request.match_info["id"])
        if w is None:
            return not_found_page()
        assert self.gw.launcher is not None
        try:
            w = await self.gw.launcher.stop(w.id)
        except LauncherError as e:
            return self.render(session, problem=f"{w.id} did not stop: {e}", status=409)
        event(log, logging.INFO, "workspace stopped", id=w.id, by=session.principal.identity, via="dashboard")
        return _done("stopped", w.id)

    async def delete(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, _ = got
        w = self._visible(session, request.match_info["id"])
        if w is None:
            return not_found_page()
        assert self.gw.launcher is not None
        try:
            await self.gw.launcher.delete(w.id)
        except LauncherError as e:
            return self.render(session, problem=f"{w.id} was not deleted: {e}", status=409)
        event(log, logging.INFO, "workspace deleted", id=w.id, by=session.principal.identity, via="dashboard")
        return _done("deleted", w.id)

    async def set_port(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, form = got
        assert self.gw.launcher is not None
        w = self.gw.launcher.get(request.match_info["id"])
        raw = request.match_info["port"]
        # Only the owner decides who may reach a port, and only a port the workspace declares.
        if (
            w is None or w.kind != "workspace" or w.owner != session.principal.identity
            or not _PORT.fullmatch(raw) or w.port(int(raw)) is None
        ):
            return not_found_page()
        visibility = form.get("visibility", "")
        if visibility not in (PUBLIC, PRIVATE):
            return self.render(session, problem="visibility: must be 'public' or 'private'", status=400)
        try:
            w = await self.gw.launcher.set_visibility(w.id, int(raw), visibility)
        except LauncherError as e:
            return self.render(session, problem=str(e), status=409)
        event(log, logging.INFO, "port visibility", id=w.id, port=int(raw), visibility=visibility, via="dashboard")
        return _done(visibility, w.id, int(raw))


# --- form parsing ------------------------------------------------------------------------
def start_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The start form as the JSON API's body, so both go through the same `parse_start` checks."""
    body: dict[str, Any] = {"command": form.get("command", "").replace("\r\n", "\n")}
    ports = []
    for item in form.get("ports", "").replace(",", " ").split():
        if not _PORT.fullmatch(item):
            raise FormError(f"ports: {item!r} is not a port number (write numbers separated by commas)")
        ports.append(int(item))
    body["ports"] = ports
    ide = form.get("ide_port", "").strip()
    if ide:
        if not _PORT.fullmatch(ide):
            raise FormError(f"ide_port: {ide!r} is not a port number")
        body["ide_port"] = int(ide)
    env: dict[str, str] = {}
    for n, line in enumerate(form.get("env", "").splitlines(), 1):
        if not line.strip():
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not name:
            raise FormError(f"env: line {n} is not KEY=VALUE")
        if name in env:
            raise FormError(f"env: {name} is given twice")
        env[name] = value
    body["env"] = env
    return body


# --- HTML pieces -------------------------------------------------------------------------
def _html(title: str, body: str, *, status: int = 200, width: str = "52em") -> web.Response:
    return web.Response(
        text=_SHELL.format(title=escape(title), body=body, width=width),
        status=status,
        content_type="text/html",
        headers=dict(PAGE_HEADERS),
    )


def _action(session: Session, path: str, label: str, fields: Mapping[str, str] | None = None) -> str:
    """One button as a form POST with the CSRF token, so the page needs no JavaScript."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in {"csrf": session.csrf, **(fields or {})}.items()
    )
    return (
        f'<form class="inline" method="post" action="{escape(path)}">{hidden}'
        f'<button type="submit">{escape(label)}</button></form>'
    )


def _start_form(session: Session, form: Mapping[str, str]) -> str:
    def value(name: str) -> str:
        return escape(form.get(name, ""))

    return (
        '<h2>Start a workspace</h2><form method="post" action="/dashboard/workspaces" id="start">'
        f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
        f'<label>Command <textarea name="command" rows="3" required>{value("command")}</textarea></label>'
        '<label>Ports <span class="muted">(numbers, separated by commas)</span>'
        f' <input name="ports" value="{value("ports")}" placeholder="8000, 3000"></label>'
        '<label>IDE port <span class="muted">(optional: served at the workspace\'s own host)</span>'
        f' <input name="ide_port" value="{value("ide_port")}" inputmode="numeric"></label>'
        '<label>Environment <span class="muted">(KEY=VALUE, one a line)</span>'
        f' <textarea name="env" rows="3">{value("env")}</textarea></label>'
        '<button type="submit">Start</button></form>'
    )


def _flash(query: Mapping[str, str]) -> str:
    template = _FLASH.get(query.get("done", ""))
    ws = query.get("ws", "")
    port = query.get("port", "")
    if template is None or not is_id(ws) or ("{port}" in template and not _PORT.fullmatch(port)):
        return ""
    return template.format(ws=ws, port=port)


def _done(code: str, workspace_id: str, port: int | None = None) -> web.Response:
    query = {"done": code, "ws": workspace_id, **({"port": str(port)} if port is not None else {})}
    return redirect("/?" + urlencode(query), 303)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "-"
