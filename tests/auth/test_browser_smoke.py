"""Headless Chromium works here: it loads a local page, and signs in at the test IdP's form."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from aiohttp import web
from browser import launch_chromium, launch_chromium_async, require_chromium
from idp_process import IdP
from wsgate_testing import AiohttpUpstream

from auth.providers.oidc import OIDCProvider


def pages() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>wsgate smoke</title><p id=x>hi</p>", content_type="text/html")

    async def callback(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>signed in</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/cb", callback)
    return app


@pytest.fixture
def site() -> Iterator[AiohttpUpstream]:
    up = AiohttpUpstream(pages)
    yield up
    up.close()


def test_chromium_loads_a_local_page(site: AiohttpUpstream) -> None:
    require_chromium()
    with launch_chromium() as browser:
        page = browser.new_page()
        response = page.goto(f"http://127.0.0.1:{site.port}/")
        assert response is not None and response.status == 200
        assert page.title() == "wsgate smoke"
        assert page.inner_text("#x") == "hi"


async def test_chromium_signs_in_at_the_idp_form(site: AiohttpUpstream, idp_factory: Callable[..., IdP]) -> None:
    require_chromium()
    redirect = f"http://127.0.0.1:{site.port}/cb"
    idp = idp_factory(
        [{"login": "alice", "sub": "1001", "email_verified": True, "groups": ["Acme"]}],
        [{"client_id": "web", "client_secret": "web-secret", "redirect_uris": [redirect]}],
    )
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    async with aiohttp.ClientSession() as http:
        provider = OIDCProvider("corp", "Corp", http, issuer=idp.issuer, client_id="web", client_secret="web-secret")
        url = await provider.authorize_url(redirect, "st", challenge, "nn")
        async with launch_chromium_async() as browser:
            page = await browser.new_page()
            await page.goto(url)
            await page.fill("input[name=login]", "alice")
            await page.click("button[type=submit]")
            await page.wait_for_url(redirect + "?*")
            assert await page.title() == "signed in"
            query = parse_qs(urlparse(page.url).query)
        assert query["state"] == ["st"]
        user = await provider.load_user(await provider.redeem(query["code"][0], redirect, verifier, "nn"))
    assert (user.user_id, user.login, user.groups) == ("1001", "alice", frozenset({"acme"}))
