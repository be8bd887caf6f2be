"""The admin page for routing rules at https://<domain>/admin/routes: list, add, edit and delete them.

Plain HTML forms, no JavaScript, like the dashboard: every change is a form
POST that carries the session's CSRF token and answers 303 back to the list
with a flash message chosen from a fixed table. Only gateway admins (a
session whose identity is in `auth.admins`) see the page; anyone else signed
in gets 403 and anonymous visitors are sent to sign in. POSTs from another
site (by `Origin` or `Sec-Fetch-Site`) are refused before anything else.

A form is turned into the JSON form of a rule and checked by the same
`Rules.check` as PUT /api/v1/routes/<id>, so a bad field is named by the
rule model itself and shown next to that field, with everything the admin
typed kept. Each edit form carries the version it was opened at: a rule
changed or deleted in the meantime (by another admin, the API or another
replica) is reported instead of overwritten. Rule values are admin-written but
still untrusted text, so every one of them is escaped.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from aiohttp import web

from auth.docstore import Conflict
from auth.service import SESSION_COOKIE
from auth.sessions import Session
from gateway.api import API, Caller
from gateway.logs import event
from gateway.signin import gateway_cookie, logout_form, redirect
from routing.rules import Rule, RuleError

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.admin")

PATH: Final = "/admin/routes"

# The rule model's id syntax (routing.rules): also safe in a URL path and an HTML id as it is.
_RULE_ID: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
_VERSION: Final = re.compile(r"[0-9]{1,18}\Z")
# Plain decimal seconds: no "nan", "inf" or exponents.
_SECONDS: Final = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?\Z")

# The form's fields, in the order of `Rule`; a RuleError on any of them is shown next to it.
TEXT_FIELDS: Final = ("id", "hosts", "path_prefix", "upstream", "access", "connect_timeout", "idle_timeout",
                      "request_headers")
CHECKBOXES: Final = ("websocket", "strip_prefix", "preserve_host", "identity_headers")

# Flash messages are chosen from this table by code, so a crafted link cannot put words on the page.
_FLASH: Final = {
    "added": "Rule {rule} added.",
    "saved": "Rule {rule} saved.",
    "deleted": "Rule {rule} deleted.",
}

_SHELL: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style nonce="{nonce}">
body{{font:16px/1.5 system-ui,sans-serif;max-width:80em;margin:4em auto;padding:0 1em;color:#222}}
code{{font:14px/1.4 ui-monospace,monospace;overflow-wrap:break-word}}td.id{{white-space:nowrap}}.muted{{color:#666}}
form.inline{{display:inline}}button{{font:inherit;cursor:pointer}}
.flash{{background:#eef6ee;border:1px solid #9c9;padding:.5em 1em;border-radius:6px}}
.problem{{background:#fbeeee;border:1px solid #c99;padding:.5em 1em;border-radius:6px}}
.field-error{{color:#a00;margin:.2em 0 0;display:block}}[aria-invalid=true]{{border:2px solid #a00}}
label{{display:block;margin:.6em 0}}label.check{{display:inline-block;margin:.3em 1.5em .3em 0}}
input:not([type]),input[type=text],textarea{{font:inherit;padding:.3em;width:100%;box-sizing:border-box}}
input[readonly]{{background:#eee}}table{{border-collapse:collapse;width:100%}}
th,td{{padding:.3em .6em .3em 0;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}}
fieldset{{border:1px solid #ccc;border-radius:6px;margin:1em 0}}</style>
</head><body><h1>wsgate</h1>
{body}
</body></html>
"""


class AdminPage:
    """GET /admin/routes (the list and the add form), GET /admin/routes/<id> (the edit form) and their POSTs."""

    def __init__(self, gw: Gateway, api: API) -> None:
        self.gw = gw
        self.api = api
        port = gw.config.public_port
        self.origin = f"https://{gw.config.domain}" + ("" if port == 443 else f":{port}")

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PATH, self.index)
        r.add_post(PATH, self.save)
        r.add_get(PATH + "/{id}", self.edit)
        r.add_post(PATH + "/{id}/delete", self.delete)

    # --- who, and may they ------------------------------------------------------------
    async def _session(self, request: web.Request) -> Session | None:
        if not self.gw.auth.enabled:
            return None
        sid = gateway_cookie(request, SESSION_COOKIE)
        return await self.gw.auth.session(sid) if sid else None

    async def _admin(self, request: web.Request, back: str) -> Session | web.Response:
        """The admin's session, or the answer: sign in first (back to `back`), or 403 for everyone else."""
        session = await self._session(request)
        if session is None:
            status = 303 if request.method == "POST" else 302
            return redirect("/auth/login?" + urlencode({"next": back}), status)
        if not self.api.is_admin(Caller(session.principal, session)):
            event(log, logging.WARNING, "admin page refused: not an admin", identity=session.principal.identity,
                  path=request.path)
            body = (
                f"<p>Signed in as <b>{escape(session.principal.login)}</b>"
                f" <code>{escape(session.principal.identity)}</code>.</p>"
                "<p>Only gateway admins may manage routing rules.</p><p><a href=\"/\">Home</a></p>"
            )
            return _html("Forbidden · wsgate", "<h2>403 Forbidden</h2>" + body, status=403)
        return session

    async def _form(self, request: web.Request) -> tuple[Session, dict[str, str]] | web.Response:
        """The session and form of a POST, or the answer when it came from elsewhere or is not an admin's."""
        why = self._cross_site(request)
        if why:
            event(log, logging.WARNING, "admin action refused: cross-site request", path=request.path, reason=why)
            return _refused()
        got = await self._admin(request, PATH)
        if isinstance(got, web.Response):
            return got
        raw = await request.post()
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        token = form.get("csrf", "")
        if not token or not hmac.compare_digest(token.encode(), got.csrf.encode()):
            event(log, logging.WARNING, "admin action refused: CSRF token missing or wrong", path=request.path)
            return _refused()
        return got, form

    def _cross_site(self, request: web.Request) -> str:
        """Why a POST looks like it came from another site; "" when it does not.

        Browsers that send `Sec-Fetch-Site` say it outright; for the others an
        `Origin` that is not this page's own (including "null") is enough.
        """
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() != "same-origin":
            return f"Sec-Fetch-Site: {site.strip().lower()[:32]}"
        origin = request.headers.get("Origin")
        if origin is not None:
            seen = origin.strip().lower().rstrip("/")
            own = {self.origin.lower(), f"https://{request.host}".lower()}
            if seen not in own:
                return f"Origin: {seen[:100]}"
        return ""

    # --- pages -------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        got = await self._admin(request, request.path_qs)
        if isinstance(got, web.Response):
            return got
        editing = request.query.get("edit")
        if editing is not None:
            return self._edit_page(got, editing)
        return self.render(got, flash=_flash(request.query))

    async def edit(self, request: web.Request) -> web.Response:
        got = await self._admin(request, request.path_qs)
        if isinstance(got, web.Response):
            return got
        return self._edit_page(got, request.match_info["id"])

    def _edit_page(self, session: Session, rule_id: str) -> web.Response:
        rule = self.gw.rules.current.get(rule_id) if _RULE_ID.match(rule_id) else None
        if rule is None:
            return _not_found()
        return self.render(session, form=rule_form(rule, self.gw.rules.versions.get(rule.id)))

    def render(
        self,
        session: Session,
        *,
        flash: str = "",
        problem: str = "",
        form: Mapping[str, str] | None = None,
        errors: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> web.Response:
        p = session.principal
        parts = [
            f"<p>Signed in as <b>{escape(p.login)}</b> <code>{escape(p.identity)}</code>"
            ' · <a href="/">Home</a></p>',
            logout_form(session),
        ]
        if flash:
            parts.append(f'<p class="flash" role="status">{escape(flash)}</p>')
        if problem:
            parts.append(f'<p class="problem" role="alert">{escape(problem)}</p>')
        parts.append("<h2>Routing rules</h2>")
        rules = sorted(self.gw.rules.current, key=lambda r: r.id)
        if rules:
            rows = "\n".join(self._row(session, r) for r in rules)
            parts.append(
                '<table id="rules"><thead><tr><th>Id</th><th>Hosts</th><th>Path prefix</th><th>Upstream</th>'
                "<th>Access</th><th>WebSocket</th><th>Strip prefix</th><th>Preserve host</th>"
                "<th>Identity headers</th><th>Version</th><th></th></tr></thead>"
                f"<tbody>\n{rows}\n</tbody></table>"
            )
        else:
            parts.append('<p class="muted" id="no-rules">There are no routing rules yet.</p>')
        parts.append(rule_form_html(session, form if form is not None else new_rule_form(), errors or {}))
        return _html("Routing rules · wsgate", "\n".join(parts), status=status)

    def _row(self, session: Session, rule: Rule) -> str:
        rid = escape(rule.id)
        version = self.gw.rules.versions.get(rule.id)
        shown = str(version) if version is not None else ""
        hosts = "<br>".join(f"<code>{escape(h)}</code>" for h in rule.hosts)
        delete = (
            f'<form class="inline delete" method="post" action="{escape(PATH + "/" + quote(rule.id) + "/delete")}">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f'<input type="hidden" name="version" value="{escape(shown)}">'
            '<button type="submit">Delete</button></form>'
        )
        return (
            f'<tr class="rule" id="rule-{rid}" data-version="{escape(shown)}">'
            f'<td class="id"><code>{rid}</code></td>'
            f'<td class="hosts">{hosts}</td>'
            f'<td class="path_prefix"><code>{escape(rule.path_prefix)}</code></td>'
            f'<td class="upstream"><code>{escape(rule.upstream)}</code></td>'
            f'<td class="access">{escape(rule.access)}</td>'
            f'<td class="websocket">{_yes(rule.websocket)}</td>'
            f'<td class="strip_prefix">{_yes(rule.strip_prefix)}</td>'
            f'<td class="preserve_host">{_yes(rule.preserve_host)}</td>'
            f'<td class="identity_headers">{_yes(rule.identity_headers)}</td>'
            f'<td class="version">{escape(shown)}</td>'
            f'<td class="actions"><a class="edit" href="{escape(PATH + "/" + quote(rule.id))}">Edit</a> {delete}</td>'
            "</tr>"
        )

    # --- actions -----------------------------------------------------------------------
    async def save(self, request: web.Request) -> web.Response:
        """Create (no version: only if the id is free) or update (only if still at the version the form had)."""
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, form = got
        version_text = form.get("version", "").strip()
        if version_text and not _VERSION.match(version_text):
            return self.render(session, problem="version: not a version this page sent; open the rule again.",
                               form=form, status=400)
        if_version = int(version_text) if version_text else 0
        try:
            rule_id, body = form_body(form)
            rule = self.gw.rules.check(rule_id, body)
        except RuleError as e:
            name = form_field(e.field)
            errors = {name: e.reason if name == e.field else str(e)} if name else {}
            problem = "The rule was not saved: " + ("see the field marked below." if name else str(e))
            return self.render(session, problem=problem, form=form, errors=errors, status=400)
        caller = Caller(session.principal, session)
        try:
            doc = await self.gw.rules.put(rule, if_version=if_version, caller=caller)
        except Conflict as e:
            return self._conflict(session, form, rule.id, if_version, e)
        event(log, logging.INFO, "route saved", route=rule.id, by=session.principal.identity, version=doc.version,
              via="admin page")
        return _done("added" if if_version == 0 else "saved", rule.id)

    def _conflict(
        self, session: Session, form: Mapping[str, str], rule_id: str, had: int, e: Conflict
    ) -> web.Response:
        """Nothing was written: say why, keep what the admin typed, and let a second submit be a deliberate one."""
        kept = dict(form)
        now = e.current.version if e.current is not None else None
        if had == 0:
            problem = (
                f"A rule with the id {rule_id} already exists (version {now}); nothing was saved."
                " Use its Edit link to change it, or pick another id."
            )
        elif now is None:
            problem = (
                f"Rule {rule_id} was deleted since you opened it; nothing was saved."
                " Submit the form again to add it back as shown."
            )
            kept["version"] = ""
        else:
            problem = (
                f"Rule {rule_id} changed since you opened it (you opened version {had}, it is now version {now});"
                " your changes were not saved. The list above shows it as it is now."
                " Submit the form again to replace it with what the form shows."
            )
            kept["version"] = str(now)
        event(log, logging.INFO, "route not saved: changed meanwhile", route=rule_id, had=had, now=now)
        return self.render(session, problem=problem, form=kept, status=409)

    async def delete(self, request: web.Request) -> web.Response:
        got = await self._form(request)
        if isinstance(got, web.Response):
            return got
        session, form = got
        rule_id = request.match_info["id"]
        if not _RULE_ID.match(rule_id):
            return _not_found()
        version_text = form.get("version", "").strip()
        if not _VERSION.match(version_text):
            return self.render(session, problem="version: not a version this page sent; reload the page.",
                               status=400)
        caller = Caller(session.principal, session)
        try:
            doc = await self.gw.rules.delete(rule_id, if_version=int(version_text), caller=caller)
        except Conflict as e:
            if e.current is None:
                problem = f"Rule {rule_id} was already deleted."
            else:
                problem = (
                    f"Rule {rule_id} changed since you opened it (you saw version {version_text},"
                    f" it is now version {e.current.version}); it was not deleted. Check it and delete it again."
                )
            return self.render(session, problem=problem, status=409)
        if doc is None:
            return _not_found()
        event(log, logging.INFO, "route deleted", route=rule_id, by=session.principal.identity, via="admin page")
        return _done("deleted", rule_id)


# --- form <-> rule ------------------------------------------------------------------------
def new_rule_form() -> dict[str, str]:
    """The add form's starting values: the rule model's defaults."""
    return {
        "path_prefix": "/",
        "access": "authenticated",
        "websocket": "on",
        "connect_timeout": "5",
        "idle_timeout": "300",
    }


def rule_form(rule: Rule, version: int | None) -> dict[str, str]:
    """The edit form of a stored rule, as the browser would send it back unchanged."""
    form = {
        "id": rule.id,
        "hosts": "\n".join(rule.hosts),
        "path_prefix": rule.path_prefix,
        "upstream": rule.upstream,
        "access": rule.access,
        "connect_timeout": f"{rule.connect_timeout:g}",
        "idle_timeout": f"{rule.idle_timeout:g}",
        "request_headers": "\n".join(f"{k}: {v}" for k, v in rule.request_headers.items()),
        "version": str(version) if version is not None else "",
    }
    for name in CHECKBOXES:
        if getattr(rule, name):
            form[name] = "on"
    return form


def form_body(form: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The rule id and the JSON body of PUT /api/v1/routes/<id> that a submitted form stands for.

    Only the form's own syntax is checked here (RuleError naming the field);
    everything else is left to the rule model, so both ways in agree.
    """
    rule_id = form.get("id", "").strip()
    body: dict[str, Any] = {
        "hosts": [h.strip() for h in re.split(r"[,\r\n]+", form.get("hosts", "")) if h.strip()],
        "path_prefix": form.get("path_prefix", "").strip() or "/",
        "upstream": form.get("upstream", "").strip(),
        "access": form.get("access", "").strip() or "authenticated",
    }
    for name in CHECKBOXES:
        body[name] = name in form
    for name in ("connect_timeout", "idle_timeout"):
        text = form.get(name, "").strip()
        if not text:
            continue
        if not _SECONDS.match(text):
            raise RuleError(name, f"{text!r} is not a number of seconds (such as 5 or 0.5)")
        body[name] = float(text)
    headers: dict[str, str] = {}
    for n, line in enumerate(form.get("request_headers", "").splitlines(), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise RuleError("request_headers", f"line {n} is not 'Name: value'")
        if name in headers:
            raise RuleError("request_headers", f"{name} is given twice")
        headers[name] = value.strip()
    body["request_headers"] = headers
    return rule_id, body


def form_field(rule_field: str) -> str:
    """The form field a RuleError's field belongs to ("hosts[2]" -> "hosts"); "" for none of them."""
    name = rule_field.partition("[")[0]
    return name if name in TEXT_FIELDS or name in CHECKBOXES else ""


# --- HTML pieces -------------------------------------------------------------------------
def rule_form_html(session: Session, form: Mapping[str, str], errors: Mapping[str, str]) -> str:
    editing = bool(form.get("version"))
    rule_id = form.get("id", "")

    def error(name: str) -> str:
        if name not in errors:
            return ""
        return f'<span class="field-error" id="error-{name}">{escape(errors[name])}</span>'

    def invalid(name: str) -> str:
        return f' aria-invalid="true" aria-describedby="error-{name}"' if name in errors else ""

    def text(name: str, label: str, hint: str = "", extra: str = "") -> str:
        hint_html = f' <span class="muted">{escape(hint)}</span>' if hint else ""
        return (
            f"<label>{escape(label)}{hint_html}"
            f' <input type="text" name="{name}" value="{escape(form.get(name, ""))}"{extra}{invalid(name)}>'
            f"{error(name)}</label>"
        )

    def area(name: str, label: str, hint: str, rows: int) -> str:
        return (
            f'<label>{escape(label)} <span class="muted">{escape(hint)}</span>'
            f' <textarea name="{name}" rows="{rows}"{invalid(name)}>{escape(form.get(name, ""))}</textarea>'
            f"{error(name)}</label>"
        )

    def check(name: str, label: str) -> str:
        on = " checked" if name in form else ""
        return (
            f'<label class="check"><input type="checkbox" name="{name}" value="on"{on}{invalid(name)}>'
            f" {escape(label)}</label>{error(name)}"
        )

    if editing:
        heading = f"Edit rule <code>{escape(rule_id)}</code>"
        id_field = text("id", "Id", "(cannot be changed)", " readonly")
        buttons = f'<button type="submit">Save</button> <a href="{PATH}">Cancel</a>'
    else:
        heading = "Add a rule"
        id_field = text("id", "Id", "(a-z, 0-9, '_' and '-')", " required")
        buttons = '<button type="submit">Add rule</button>'
    return (
        f'<h2 id="form-heading">{heading}</h2>'
        f'<form method="post" action="{PATH}" id="rule-form">'
        f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
        f'<input type="hidden" name="version" value="{escape(form.get("version", ""))}">'
        + id_field
        + area("hosts", "Hosts", "(one a line, or separated by commas; *.example.com for a wildcard)", 2)
        + text("path_prefix", "Path prefix", "(/ for every path)")
        + text("upstream", "Upstream", "(http(s)://host:port[/base] or workspace:<id>:<port>)", " required")
        + text("access", "Access", "(public, authenticated, admin, team:<name> or users:<identity>,...)")
        + '<fieldset><legend>Options</legend>'
        + check("websocket", "WebSockets allowed")
        + check("strip_prefix", "Strip the prefix")
        + check("preserve_host", "Preserve the Host header")
        + check("identity_headers", "Plain identity headers")
        + "</fieldset>"
        + text("connect_timeout", "Connect timeout", "(seconds)", ' inputmode="decimal"')
        + text("idle_timeout", "Idle timeout", "(seconds)", ' inputmode="decimal"')
        + area("request_headers", "Request headers", "(Name: value, one a line)", 3)
        + buttons
        + "</form>"
    )


def _html(title: str, body: str, *, status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(18)
    return web.Response(
        text=_SHELL.format(title=escape(title), body=body, nonce=nonce),
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self';"
            " frame-ancestors 'none'; base-uri 'none'",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
        },
    )


def _refused() -> web.Response:
    return _html(
        "Forbidden · wsgate",
        '<h2>403 Forbidden</h2><p>This request did not come from this site.</p><p><a href="/admin/routes">'
        "Routing rules</a></p>",
        status=403,
    )


def _not_found() -> web.Response:
    return _html(
        "Not found · wsgate",
        f'<h2>404 Not Found</h2><p>There is no such rule.</p><p><a href="{PATH}">Routing rules</a></p>',
        status=404,
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _flash(query: Mapping[str, str]) -> str:
    template = _FLASH.get(query.get("done", ""))
    rule_id = query.get("rule", "")
    if template is None or not _RULE_ID.match(rule_id):
        return ""
    return template.format(rule=rule_id)


def _done(code: str, rule_id: str) -> web.Response:
    return redirect(PATH + "?" + urlencode({"done": code, "rule": rule_id}), 303)
