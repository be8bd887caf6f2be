"""Prebuilds: headless workspaces run for a team, their live logs, and their provenance.

A prebuild is a launcher workspace of kind "prebuild" with no ports, owned by
the member who asked for it and labelled with its team. It ends as
succeeded, failed (with its exit code) or cancelled; its output is kept
(bounded, sealed at rest by the launcher) and, when it succeeded, an in-toto
statement with SLSA v1 provenance describes what it produced.

Who may read a prebuild's log, status and provenance: the members of its team
and gateway admins, checked again while a live log is followed (membership
through provider groups follows the provider within the membership TTL).
Anyone else, the author included once they have left the team, gets the same
404 as for an id that does not exist. The log is attacker-controlled text: it
is served as sanitised `text/plain` (see gateway.logtext), and the page that
follows it inserts it as text nodes under a CSP that runs only its own script.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from auth.docstore import Doc, StoreUnavailable
from gateway import __version__
from gateway.api import API, Caller, error, json_body, ok
from gateway.logs import event
from gateway.logtext import LogText
from gateway.provenance import BuildFacts, statement
from gateway.workspaces_api import parse_run
from launcher.base import LIVE, STOPPED, LauncherError, StartRequest, Workspace, check_request, is_id

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.prebuilds")

KIND = "prebuild"
OUTPUTS_DIR = ".prebuild/outputs"
NOT_FOUND = "no such prebuild"
SUCCEEDED, FAILED, CANCELLED, RUNNING = "succeeded", "failed", "cancelled", "running"
_FIELDS = {"team", "command", "base", "env", "source"}
_MAX_URL = 2048
_LOG_HEADERS = {
    "Content-Type": "text/plain; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
    "X-Frame-Options": "DENY",
}


class Prebuilds:
    def __init__(self, gw: Gateway, api: API) -> None:
        self.gw = gw
        self.api = api
        # id -> the final status document, once the prebuild has ended and been recorded.
        self.results: dict[str, Mapping[str, Any]] = {}
        self._finishing: set[str] = set()

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/v1/prebuilds", self.create)
        r.add_get("/api/v1/prebuilds", self.list_prebuilds)
        r.add_get("/api/v1/prebuilds/{id}", self.get)
        r.add_post("/api/v1/prebuilds/{id}/cancel", self.cancel)
        r.add_get("/api/v1/prebuilds/{id}/provenance", self.provenance)
        r.add_get("/prebuilds/{id}/logs", self.logs)
        r.add_get("/prebuilds/{id}", self.page)

    # --- life cycle ------------------------------------------------------------------
    async def open(self) -> None:
        """Records the end of prebuilds that finished while no gateway was watching."""
        launcher = self.gw.launcher
        if launcher is None:
            return
        launcher.subscribe(self._changed)
        for doc in await self.gw.docs.list(KIND):
            if doc.body.get("status") in (SUCCEEDED, FAILED, CANCELLED):
                self.results[doc.id] = doc.body
        for w in launcher.workspaces():
            if w.kind == KIND and w.state not in LIVE and w.id not in self.results:
                await self._finish(w)

    def _changed(self, w: Workspace) -> None:
        if w.kind == KIND and w.state not in LIVE and w.state != "deleted" and w.id not in self._finishing:
            self._finishing.add(w.id)
            self.gw.spawn(self._finish(w))

    async def _finish(self, w: Workspace) -> None:
        """The prebuild ended: its status, the log's digest and (on success) its provenance, stored once."""
        try:
            doc = await self.gw.docs.get(KIND, w.id)
            body = dict(doc.body) if doc is not None else {}
            if body.get("status") in (SUCCEEDED, FAILED, CANCELLED):
                self.results[w.id] = body
                return
            launcher = self.gw.launcher
            assert launcher is not None
            digest = hashlib.sha256()
            async for chunk in launcher.follow(w.id, live=False):
                digest.update(chunk)
            if body.get("cancelled_by"):
                status = CANCELLED
            elif w.state == STOPPED and w.exit_code == 0 and not w.error:
                status = SUCCEEDED
            else:
                status = FAILED
            body.update(
                team=w.labels.get("team", ""),
                author=w.owner,
                status=status,
                exit_code=w.exit_code,
                error=w.error,
                finished=w.finished or time.time(),
                log_sha256=digest.hexdigest(),
                provenance=None,
            )
            if status == SUCCEEDED:
                try:
                    body["provenance"] = self._statement(w, digest.hexdigest())
                except ValueError as e:  # facts that cannot make a valid statement: say so, keep the status
                    event(log, logging.ERROR, "prebuild provenance not made", id=w.id, error=str(e))
            await self.gw.docs.put(KIND, w.id, body)
            self.results[w.id] = body
            event(log, logging.INFO, "prebuild finished", id=w.id, team=body["team"], status=status)
        except StoreUnavailable as e:
            event(log, logging.ERROR, "prebuild result not recorded", id=w.id, error=str(e))
        finally:
            self._finishing.discard(w.id)

    def _statement(self, w: Workspace, log_sha256: str) -> dict[str, Any]:
        cfg = self.gw.config
        port = "" if cfg.public_port == 443 else f":{cfg.public_port}"
        facts = BuildFacts(
            prebuild_id=w.id,
            team=w.labels.get("team", ""),
            author=w.owner,
            command=w.command,
            base=w.base,
            source_repository=w.labels.get("source_repository", ""),
            source_revision=w.labels.get("source_revision", ""),
            env_names=tuple(n for n in w.labels.get("env_names", "").split(",") if n),
            started=w.started or w.created,
            finished=w.finished or time.time(),
            exit_code=w.exit_code or 0,
            outputs=w.outputs,
            log_sha256=log_sha256,
            builder_id=f"https://{cfg.domain}{port}/",
            builder_version=__version__,
        )
        return statement(facts)

    # --- who may see what --------------------------------------------------------------
    async def _caller(self, request: web.Request) -> Caller | None:
        c = await self.api.caller(request)
        return None if isinstance(c, web.Response) else c

    def visible(self, c: Caller | None, prebuild_id: str) -> Workspace | None:
        """The prebuild for its team's members and admins; None, exactly as for a missing id, otherwise."""
        launcher = self.gw.launcher
        if c is None or launcher is None or not is_id(prebuild_id):
            return None
        w = launcher.get(prebuild_id)
        if w is None or w.kind != KIND:
            return None
        if self.api.is_admin(c) or self.is_member(c, w.labels.get("team", "")):
            return w
        return None

    def is_member(self, c: Caller, team: str) -> bool:
        found = self.gw.auth.policy.teams.get(team)
        return found is not None and found.has(c.principal)

    def status(self, w: Workspace) -> str:
        result = self.results.get(w.id)
        if result is not None and w.state not in LIVE:
            return str(result["status"])
        return RUNNING

    def describe(self, w: Workspace) -> dict[str, Any]:
        result = self.results.get(w.id, {}) if w.state not in LIVE else {}
        status = self.status(w)
        data: dict[str, Any] = {
            "id": w.id,
            "team": w.labels.get("team", ""),
            "author": w.owner,
            "command": w.command,
            "base": w.base,
            "status": status,
            "state": w.state,
            "exit_code": w.exit_code if w.state not in LIVE else None,
            "created": w.created,
            "started": w.started,
            "finished": w.finished if w.state not in LIVE else None,
            "log_url": f"/prebuilds/{w.id}/logs",
            "page_url": f"/prebuilds/{w.id}",
            "provenance_url": f"/api/v1/prebuilds/{w.id}/provenance" if status == SUCCEEDED else None,
            "outputs": [{"path": o.path, "sha256": o.sha256, "size": o.size} for o in w.outputs],
        }
        if w.labels.get("source_repository"):
            data["source"] = {
                "repository": w.labels["source_repository"],
                "revision": w.labels.get("source_revision", ""),
            }
        if result.get("cancelled_by"):
            data["cancelled_by"] = result["cancelled_by"]
        if status == FAILED and result.get("error"):
            data["error"] = result["error"]
        return data

    # --- the API ----------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        if self.gw.launcher is None:
            return error(503, "the embedded launcher is off on this gateway")
        body = await json_body(request, "the prebuild")
        if isinstance(body, web.Response):
            return body
        try:
            req = self._parse(body, c)
        except LauncherError as e:
            message = str(e)
            field = message.split(":", 1)[0]
            return error(400, message, field=field)
        if not self.is_member(c, req.labels["team"]):
            # Not telling apart "no such team" from "not yours": both are 404 for outsiders.
            return error(404, "no such team", field="team")
        try:
            w = await self.gw.launcher.start(req)
        except LauncherError as e:
            status = 503 if str(e).startswith("at most") else 400
            return error(status, str(e))
        event(log, logging.INFO, "prebuild started", id=w.id, team=req.labels["team"], by=c.principal.identity)
        return ok(self.describe(w), 201)

    def _parse(self, body: Mapping[str, Any], c: Caller) -> StartRequest:
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise LauncherError(f"{unknown[0]}: unknown field")
        team = body.get("team")
        if not isinstance(team, str) or not team:
            raise LauncherError("team: expected a team name")
        command, base, env = parse_run(body)
        labels = {"team": team, "env_names": ",".join(sorted(env))}
        source = body.get("source")
        if source is not None:
            if not isinstance(source, dict) or set(source) - {"repository", "revision"}:
                raise LauncherError("source: expected {repository, revision}")
            repo, rev = source.get("repository", ""), source.get("revision", "")
            if not isinstance(repo, str) or not repo.startswith(("https://", "http://", "ssh://", "git@")):
                raise LauncherError("source.repository: expected a repository URL")
            if len(repo) > _MAX_URL or not repo.isprintable() or " " in repo:
                raise LauncherError("source.repository: at most 2048 printable characters, no spaces")
            if not isinstance(rev, str) or len(rev) > 256 or not rev.isprintable() or " " in rev:
                raise LauncherError("source.revision: expected a commit id or ref")
            labels.update(source_repository=repo, source_revision=rev)
            env = {**env, "WSGATE_SOURCE_REPOSITORY": repo, "WSGATE_SOURCE_REVISION": rev}
        req = StartRequest(
            owner=c.principal.identity,
            command=command,
            base=base,
            env=env,
            kind=KIND,
            labels=labels,
            outputs_dir=OUTPUTS_DIR,
            log_bytes=self.gw.config.prebuilds.log_bytes,
        )
        check_request(req)
        return req

    async def list_prebuilds(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        launcher = self.gw.launcher
        if launcher is None:
            return error(503, "the embedded launcher is off on this gateway")
        team = request.query.get("team")
        if team is not None and not (self.api.is_admin(c) or self.is_member(c, team)):
            return error(404, "no such team")
        found = [
            w for w in launcher.workspaces()
            if w.kind == KIND
            and (team is None or w.labels.get("team") == team)
            and self.visible(c, w.id) is not None
        ]
        found.sort(key=lambda w: w.created, reverse=True)
        return ok({"prebuilds": [self.describe(w) for w in found]})

    async def get(self, request: web.Request) -> web.Response:
        w = self.visible(await self._caller(request), request.match_info["id"])
        if w is None:
            return error(404, NOT_FOUND)
        return ok(self.describe(w))

    async def cancel(self, request: web.Request) -> web.Response:
        c = await self.api.caller(request)
        if isinstance(c, web.Response):
            return c
        w = self.visible(c, request.match_info["id"])
        if w is None:
            return error(404, NOT_FOUND)
        launcher = self.gw.launcher
        assert launcher is not None
        if w.state not in LIVE:
            return error(409, f"the prebuild has already ended ({self.status(w)})")
        doc: Doc | None = await self.gw.docs.get(KIND, w.id)
        body = dict(doc.body) if doc is not None else {}
        body.update(cancelled_by=c.principal.identity, cancel_requested=time.time())
        await self.gw.docs.put(KIND, w.id, body)
        w = await launcher.stop(w.id)
        event(log, logging.INFO, "prebuild cancelled", id=w.id, by=c.principal.identity)
        await self._wait_result(w.id, 10.0)
        return ok(self.describe(w))

    async def provenance(self, request: web.Request) -> web.Response:
        w = self.visible(await self._caller(request), request.match_info["id"])
        if w is None:
            return error(404, NOT_FOUND)
        result = self.results.get(w.id) if w.state not in LIVE else None
        if result is None or result.get("provenance") is None:
            status = self.status(w)
            return error(404, f"no provenance: the prebuild {'is still running' if status == RUNNING else status}")
        return web.Response(
            body=json.dumps(result["provenance"], indent=2).encode(),
            content_type="application/vnd.in-toto+json",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def _wait_result(self, prebuild_id: str, timeout: float) -> Mapping[str, Any] | None:
        deadline = time.monotonic() + timeout
        while prebuild_id not in self.results and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.results.get(prebuild_id)

    # --- the log ----------------------------------------------------------------------------
    async def logs(self, request: web.Request) -> web.StreamResponse:
        c = await self._caller(request)
        w = self.visible(c, request.match_info["id"])
        if w is None:
            return web.Response(status=404, text=NOT_FOUND + "\n", headers=_LOG_HEADERS)
        launcher = self.gw.launcher
        assert launcher is not None
        follow = request.query.get("follow", "1") not in ("0", "false", "no")
        resp = web.StreamResponse(headers=_LOG_HEADERS)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        text = LogText()
        lost = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._watch_access(request, w.id, lost))

        async def pump() -> None:
            async for chunk in launcher.follow(w.id, live=follow):
                piece = text.feed(chunk)
                if piece:
                    await resp.write(piece.encode())
            rest = text.finish()
            if rest:
                await resp.write(rest.encode())

        streaming = asyncio.get_running_loop().create_task(pump())
        try:
            lost_wait = asyncio.get_running_loop().create_task(lost.wait())
            await asyncio.wait({streaming, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            lost_wait.cancel()
            if lost.is_set() and not streaming.done():
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await streaming
                await resp.write(b"\n[wsgate] stream closed: you can no longer read this prebuild's log\n")
                await resp.write_eof()
                return resp
            streaming.result()
            await resp.write((("" if text.ends_with_newline else "\n") + await self._last_line(w.id)).encode())
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            streaming.cancel()
            raise
        finally:
            watcher.cancel()
        return resp

    async def _watch_access(self, request: web.Request, prebuild_id: str, lost: asyncio.Event) -> None:
        """Re-authenticates the reader every recheck_interval: a session's groups refresh within the TTL."""
        interval = self.gw.config.prebuilds.recheck_interval
        while True:
            await asyncio.sleep(interval)
            try:
                c = await self._caller(request)
            except Exception:  # the store is down: fail closed
                c = None
            if self.visible(c, prebuild_id) is None:
                lost.set()
                return

    async def _last_line(self, prebuild_id: str) -> str:
        launcher = self.gw.launcher
        w = launcher.get(prebuild_id) if launcher is not None else None
        if w is None or w.state in LIVE:
            return f"[wsgate] prebuild {prebuild_id} is still running\n"
        result = await self._wait_result(prebuild_id, 10.0)
        if result is None:
            return f"[wsgate] prebuild {prebuild_id} ended ({w.state}); its status is not recorded yet\n"
        status = result["status"]
        if status == SUCCEEDED:
            return f"[wsgate] prebuild {prebuild_id} succeeded\n"
        if status == CANCELLED:
            return f"[wsgate] prebuild {prebuild_id} was cancelled by {result.get('cancelled_by', '?')}\n"
        code = result.get("exit_code")
        if code is None:
            return f"[wsgate] prebuild {prebuild_id} failed: {result.get('error') or 'no exit status'}\n"
        return f"[wsgate] prebuild {prebuild_id} failed with exit code {code}\n"

    async def page(self, request: web.Request) -> web.Response:
        """A plain page that follows the log; the log is only ever inserted as text."""
        w = self.visible(await self._caller(request), request.match_info["id"])
        if w is None:
            return web.Response(
                status=404,
                text="<!doctype html><meta charset=utf-8><title>Not found</title><p>No such prebuild.</p>",
                content_type="text/html",
                headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"},
            )
        nonce = secrets.token_urlsafe(16)
        e = html.escape
        d = self.describe(w)
        body = _PAGE.format(
            id=e(w.id),
            team=e(d["team"]),
            status=e(d["status"]),
            author=e(w.owner),
            command=e(w.command),
            nonce=nonce,
            logs=json.dumps(f"/prebuilds/{w.id}/logs"),
        )
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return web.Response(
            text=body,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": csp, "X-Frame-Options": "DENY"},
        )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Prebuild {id}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">
body {{ font: 14px system-ui, sans-serif; margin: 1.5rem; color: #222; }}
pre {{ background: #111; color: #ddd; padding: 1rem; white-space: pre-wrap; word-break: break-all;
       min-height: 10rem; }}
dt {{ font-weight: 600; }}
</style></head>
<body>
<h1>Prebuild <code>{id}</code></h1>
<dl><dt>Team</dt><dd>{team}</dd><dt>Started by</dt><dd>{author}</dd>
<dt>Command</dt><dd><code>{command}</code></dd><dt>Status</dt><dd id="status">{status}</dd></dl>
<pre id="log" aria-live="polite"></pre>
<script nonce="{nonce}">
(async () => {{
  const pre = document.getElementById("log");
  const status = document.getElementById("status");
  try {{
    const response = await fetch({logs}, {{credentials: "same-origin", cache: "no-store"}});
    if (!response.ok) {{ status.textContent = "the log is not available"; return; }}
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let last = "";
    for (;;) {{
      const {{done, value}} = await reader.read();
      if (done) break;
      const text = decoder.decode(value, {{stream: true}});
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 8;
      pre.appendChild(document.createTextNode(text));
      last = (last + text).slice(-400);
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    }}
    const end = last.trimEnd().split("\\n").pop() || "";
    if (end.startsWith("[wsgate] ")) status.textContent = end.slice(9);
  }} catch (err) {{
    status.textContent = "the log stream was interrupted";
  }}
}})();
</script>
</body></html>
"""
