"""The routing rules admin page at https://<domain>/admin/routes, driven in headless Chromium.

An admin adds, edits and deletes a rule with the page's forms and the rule
takes effect through the gateway to a real upstream; a bad field is shown
next to that field; an edit that lost a race is reported, not applied; and
nobody but an admin, from this site, with the session's CSRF token, changes
anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.client import HTTPMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
from browser import launch_chromium, require_chromium
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser as Chromium
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
enabled = false
"""
# Every name of the gateway resolves to loopback; the port is in each URL.
RESOLVER = f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1"
APP = f"app.{DOMAIN}"
NOTHING_HERE = "There is nothing at this address."
HEADER_MARKUP = 'X-Team: </textarea><i id="injected">blue</i>'
UPSTREAM_MARKUP = 'http://<i id="injected">:80'


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG)


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    require_chromium()
    with launch_chromium(extra_args=(RESOLVER,)) as browser:
        yield browser


def sign_in(chromium: Chromium, gw: Gateway, login: str) -> Page:
    """A new person who opens /admin/routes, is sent to sign in, and comes back there."""
    page = chromium.new_context(ignore_https_errors=True).new_page()
    admin = gw.url(DOMAIN, "/admin/routes")
    page.goto(admin)
    assert page.url.startswith(gw.url(DOMAIN, "/auth/login?")), page.url
    page.click("a.button")  # the only provider: the development sign-in
    page.fill("input[name=login]", login)
    with page.expect_navigation(url=admin):
        page.click("button[type=submit]")
    return page


def submit(page: Page, selector: str = "#rule-form button[type=submit]") -> int:
    """Clicks a submit button; the status of the page the browser ends on."""
    with page.expect_navigation() as nav:
        page.click(selector)
    response = nav.value
    assert response is not None
    return response.status


def open_json(page: Page, url: str) -> tuple[int, Any]:
    """Opens url in the page; its status and body (parsed when it is JSON)."""
    response = page.goto(url)
    assert response is not None
    text = page.inner_text("body")
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def api(page: Page, gw: Gateway, method: str, path: str, body: Any = None, if_match: str | None = None) -> Any:
    """The JSON API called from the page's own origin with the session (and its X-CSRF-Token), as a script would."""
    page.goto(gw.url(DOMAIN, "/api/v1/me"))  # a JSON answer: no page CSP in the way of fetch()
    status, text = page.evaluate(
        """async ([method, path, body, ifMatch]) => {
            const me = await (await fetch('/api/v1/me')).json();
            const headers = {'X-CSRF-Token': me.csrf_token};
            if (body !== null) headers['Content-Type'] = 'application/json';
            if (ifMatch !== null) headers['If-Match'] = ifMatch;
            const r = await fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body)});
            return [r.status, await r.text()];
        }""",
        [method, path, body, if_match],
    )
    return status, json.loads(text) if text else None


def test_root_adds_edits_and_deletes_a_rule_that_takes_effect(
    gw: Gateway, chromium: Chromium, echo_upstream: AiohttpUpstream
) -> None:
    from playwright.sync_api import expect

    root = sign_in(chromium, gw, "root")
    expect(root.locator("body")).to_contain_text("Signed in as root")
    expect(root.locator("#no-rules")).to_have_text("There are no routing rules yet.")
    expect(root.locator("#form-heading")).to_have_text("Add a rule")

    # Add: the rule is listed with what was entered and the model's defaults.
    upstream = f"http://127.0.0.1:{echo_upstream.port}"
    form = root.locator("#rule-form")
    form.locator("input[name=id]").fill("app")
    form.locator("textarea[name=hosts]").fill(APP)
    form.locator("input[name=path_prefix]").fill("/svc")
    form.locator("input[name=upstream]").fill(upstream)
    form.locator("input[name=access]").fill("authenticated")
    assert submit(root) == 200
    assert root.url == gw.url(DOMAIN, "/admin/routes?done=added&rule=app")
    expect(root.locator(".flash")).to_have_text("Rule app added.")
    row = root.locator("#rule-app")
    expect(row.locator(".hosts")).to_have_text(APP)
    expect(row.locator(".path_prefix")).to_have_text("/svc")
    expect(row.locator(".upstream")).to_have_text(upstream)
    expect(row.locator(".access")).to_have_text("authenticated")
    expect(row.locator(".websocket")).to_have_text("yes")
    expect(row.locator(".strip_prefix")).to_have_text("no")
    expect(row.locator(".preserve_host")).to_have_text("no")
    expect(row.locator(".identity_headers")).to_have_text("no")
    expect(row.locator(".version")).to_have_text("1")

    # Through the gateway (the browser signs in to the rule's host through the handoff): the upstream answers.
    status, echoed = open_json(root, gw.url(APP, "/svc/x"))
    assert status == 200 and echoed["path"] == "/svc/x", echoed
    assert root.url == gw.url(APP, "/svc/x")
    status, text = open_json(root, gw.url(APP, "/api/x"))
    assert status == 404 and NOTHING_HERE in text

    # Edit: the form comes filled in; the new prefix answers and the old one no longer does.
    root.goto(gw.url(DOMAIN, "/admin/routes"))
    root.locator("#rule-app a.edit").click()
    root.wait_for_url(gw.url(DOMAIN, "/admin/routes/app"))
    expect(root.locator("#form-heading")).to_have_text("Edit rule app")
    expect(form.locator("input[name=id]")).to_have_value("app")
    expect(form.locator("input[name=id]")).to_have_attribute("readonly", "")
    expect(form.locator("textarea[name=hosts]")).to_have_value(APP)
    expect(form.locator("input[name=path_prefix]")).to_have_value("/svc")
    expect(form.locator("input[name=upstream]")).to_have_value(upstream)
    expect(form.locator("input[name=websocket]")).to_be_checked()
    expect(form.locator("input[name=strip_prefix]")).not_to_be_checked()
    expect(form.locator("input[name=connect_timeout]")).to_have_value("5")
    expect(form.locator("input[name=idle_timeout]")).to_have_value("300")
    form.locator("input[name=path_prefix]").fill("/api")
    assert submit(root) == 200
    expect(root.locator(".flash")).to_have_text("Rule app saved.")
    expect(row.locator(".path_prefix")).to_have_text("/api")
    expect(row.locator(".version")).to_have_text("2")
    status, text = open_json(root, gw.url(APP, "/svc/x"))
    assert status == 404 and NOTHING_HERE in text
    status, echoed = open_json(root, gw.url(APP, "/api/x"))
    assert status == 200 and echoed["path"] == "/api/x", echoed

    # A bad upstream: 400, the reason next to the upstream field, every input kept, nothing saved.
    root.goto(gw.url(DOMAIN, "/admin/routes"))
    form.locator("input[name=id]").fill("other")
    form.locator("textarea[name=hosts]").fill(f"other.{DOMAIN}, www.{DOMAIN}")
    form.locator("input[name=path_prefix]").fill("/x")
    form.locator("input[name=upstream]").fill("ftp://x")
    form.locator("input[name=access]").fill("admin")
    form.locator("input[name=websocket]").uncheck()
    form.locator("input[name=strip_prefix]").check()
    form.locator("input[name=idle_timeout]").fill("60")
    form.locator("textarea[name=request_headers]").fill(HEADER_MARKUP)
    assert submit(root) == 400
    expect(root.locator(".problem")).to_contain_text("The rule was not saved")
    beside = root.locator("label", has=root.locator("input[name=upstream]")).locator(".field-error")
    expect(beside).to_have_text("scheme 'ftp' is not supported; use http, https or workspace:<id>:<port>")
    expect(form.locator("input[name=upstream]")).to_have_attribute("aria-invalid", "true")
    expect(root.locator(".field-error")).to_have_count(1)
    expect(form.locator("input[name=id]")).to_have_value("other")
    expect(form.locator("textarea[name=hosts]")).to_have_value(f"other.{DOMAIN}, www.{DOMAIN}")
    expect(form.locator("input[name=path_prefix]")).to_have_value("/x")
    expect(form.locator("input[name=upstream]")).to_have_value("ftp://x")
    expect(form.locator("input[name=access]")).to_have_value("admin")
    expect(form.locator("input[name=websocket]")).not_to_be_checked()
    expect(form.locator("input[name=strip_prefix]")).to_be_checked()
    expect(form.locator("input[name=idle_timeout]")).to_have_value("60")
    expect(form.locator("textarea[name=request_headers]")).to_have_value(HEADER_MARKUP)
    expect(root.locator("tr.rule")).to_have_count(1)
    expect(root.locator("#rule-other")).to_have_count(0)
    # What the admin typed comes back as text, in the inputs and in the reasons, never as markup.
    form.locator("input[name=upstream]").fill(UPSTREAM_MARKUP)
    assert submit(root) == 400
    expect(form.locator(".field-error")).to_have_text("'<i id=\"injected\">' is not a host name")
    expect(form.locator("input[name=upstream]")).to_have_value(UPSTREAM_MARKUP)
    expect(form.locator("textarea[name=request_headers]")).to_have_value(HEADER_MARKUP)
    expect(root.locator("#injected")).to_have_count(0)

    # Delete: gone from the list and from the gateway.
    root.goto(gw.url(DOMAIN, "/admin/routes"))
    assert submit(root, "#rule-app form.delete button") == 200
    expect(root.locator(".flash")).to_have_text("Rule app deleted.")
    expect(root.locator("#rule-app")).to_have_count(0)
    expect(root.locator("#no-rules")).to_be_visible()
    status, text = open_json(root, gw.url(APP, "/api/x"))
    assert status == 404 and NOTHING_HERE in text


def test_a_change_made_meanwhile_is_reported_not_overwritten(
    gw: Gateway, chromium: Chromium, echo_upstream: AiohttpUpstream
) -> None:
    from playwright.sync_api import expect

    root = sign_in(chromium, gw, "root")
    upstream = f"http://127.0.0.1:{echo_upstream.port}"
    form = root.locator("#rule-form")
    form.locator("input[name=id]").fill("app")
    form.locator("textarea[name=hosts]").fill(APP)
    form.locator("input[name=path_prefix]").fill("/svc")
    form.locator("input[name=upstream]").fill(upstream)
    assert submit(root) == 200

    # The edit form is opened at version 1...
    root.goto(gw.url(DOMAIN, "/admin/routes?edit=app"))
    expect(root.locator("#form-heading")).to_have_text("Edit rule app")
    # ...another admin (a script on the JSON API) changes the rule meanwhile...
    other = root.context.new_page()
    status, current = api(other, gw, "GET", "/api/v1/routes/app")
    assert status == 200 and current["version"] == 1
    changed = {k: v for k, v in current.items() if k != "version"} | {"path_prefix": "/theirs"}
    status, saved = api(other, gw, "PUT", "/api/v1/routes/app", changed, if_match='"1"')
    assert status == 200 and saved["version"] == 2, saved
    # ...and this form, submitted, says so instead of overwriting their change.
    form.locator("input[name=path_prefix]").fill("/mine")
    assert submit(root) == 409
    expect(root.locator(".problem")).to_contain_text(
        "Rule app changed since you opened it (you opened version 1, it is now version 2);"
        " your changes were not saved."
    )
    expect(root.locator("#rule-app .path_prefix")).to_have_text("/theirs")
    expect(root.locator("#rule-app .version")).to_have_text("2")
    expect(form.locator("input[name=path_prefix]")).to_have_value("/mine")
    status, now = api(other, gw, "GET", "/api/v1/routes/app")
    assert now["path_prefix"] == "/theirs" and now["version"] == 2
    status, echoed = open_json(other, gw.url(APP, "/theirs/x"))
    assert status == 200 and echoed["path"] == "/theirs/x"

    # The same for a delete from a list that is out of date.
    root.goto(gw.url(DOMAIN, "/admin/routes"))
    status, _ = api(other, gw, "PUT", "/api/v1/routes/app", changed | {"access": "admin"}, if_match='"2"')
    assert status == 200
    assert submit(root, "#rule-app form.delete button") == 409
    expect(root.locator(".problem")).to_contain_text(
        "Rule app changed since you opened it (you saw version 2, it is now version 3); it was not deleted."
    )
    expect(root.locator("#rule-app .access")).to_have_text("admin")
    expect(root.locator("#rule-app .version")).to_have_text("3")


def test_only_admins_from_this_site_with_the_token_change_rules(
    gw: Gateway, chromium: Chromium, echo_upstream: AiohttpUpstream
) -> None:
    from playwright.sync_api import expect

    admin = gw.url(DOMAIN, "/admin/routes")

    # Alice is signed in but no admin: 403, and she cannot post a rule with her own token either.
    alice = sign_in(chromium, gw, "alice")
    response = alice.goto(admin)
    assert response is not None and response.status == 403
    expect(alice.locator("body")).to_contain_text("Only gateway admins may manage routing rules.")
    expect(alice.locator("#rule-form")).to_have_count(0)
    alice_cookie = session_cookie(alice)
    status, me = api(alice, gw, "GET", "/api/v1/me")
    rule = {
        "id": "app", "hosts": APP, "path_prefix": "/", "upstream": f"http://127.0.0.1:{echo_upstream.port}",
        "access": "public",
    }
    origin = gw.url(DOMAIN, "")
    code, _, _ = post(gw, "/admin/routes", {**rule, "csrf": me["csrf_token"]}, alice_cookie, origin)
    assert code == 403

    root = sign_in(chromium, gw, "root")
    # The page's headers: no scripts, no framing, nothing cached.
    response = root.goto(admin)
    assert response is not None and response.status == 200
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "base-uri 'none'" in csp and "style-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"

    # The add form without its CSRF field: refused, and the admin is told why.
    root.locator("#rule-form input[name=csrf]").evaluate("e => e.remove()")
    form = root.locator("#rule-form")
    form.locator("input[name=id]").fill("app")
    form.locator("textarea[name=hosts]").fill(APP)
    form.locator("input[name=upstream]").fill(rule["upstream"])
    assert submit(root) == 403
    expect(root.locator("body")).to_contain_text("This request did not come from this site.")

    # Another site's page posting root's form (even with the right token) is refused too.
    root.goto(admin)
    csrf = root.locator("#rule-form input[name=csrf]").get_attribute("value")
    assert csrf
    evil = root.context.new_page()
    fields = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in {**rule, "csrf": csrf}.items())
    evil.set_content(f'<form method="post" action="{admin}">{fields}<button>Go</button></form>')
    assert submit(evil, "button") == 403
    expect(evil.locator("body")).to_contain_text("This request did not come from this site.")
    # Same-site but another origin (a rule or workspace host), with root's cookie and token: refused.
    cookie = session_cookie(root)
    for extra in ({"Origin": gw.url(APP, "")}, {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):
        code, _, body = post(gw, "/admin/routes", {**rule, "csrf": csrf}, cookie, origin, **extra)
        assert code == 403 and b"did not come from this site" in body, extra
    # Nothing was created by any of that.
    root.goto(admin)
    expect(root.locator("#no-rules")).to_be_visible()
    status, text = open_json(root, gw.url(APP, "/"))
    assert status == 404 and NOTHING_HERE in text

    # The same request from the page's own origin with the token is what works.
    code, answer, _ = post(gw, "/admin/routes", {**rule, "csrf": csrf}, cookie, origin)
    assert code == 303 and answer["Location"] == "/admin/routes?done=added&rule=app"
    root.goto(admin)
    expect(root.locator("#rule-app .access")).to_have_text("public")

    # Anonymous: sent to sign in, for the page and for a post.
    stranger = chromium.new_context(ignore_https_errors=True).new_page()
    stranger.goto(admin)
    assert stranger.url.startswith(gw.url(DOMAIN, "/auth/login?next="))
    code, answer, _ = post(gw, "/admin/routes/app/delete", {"csrf": csrf, "version": "1"}, "", origin)
    assert code == 303 and answer["Location"].startswith("/auth/login?")
    root.goto(admin)
    expect(root.locator("#rule-app")).to_have_count(1)


def session_cookie(page: Page) -> str:
    (found,) = [c for c in page.context.cookies() if c.get("name") == "__Host-wsgate-session"]
    return f"__Host-wsgate-session={found.get('value')}"


def post(
    gw: Gateway, path: str, fields: dict[str, str], cookie: str, origin: str, **headers: str
) -> tuple[int, HTTPMessage, bytes]:
    """A form POST outside the browser, to set the headers a browser would send from elsewhere."""
    sent = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin, "Sec-Fetch-Site": "same-origin"}
    if cookie:
        sent["Cookie"] = cookie
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return gw.request(DOMAIN, "POST", path, urlencode(fields).encode(), sent)
