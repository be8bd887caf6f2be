"""A browser-like HTTP client for sign-in tests: follows redirects across hosts, keeps cookies.

Every name resolves to 127.0.0.1 (as `*.localhost` does in browsers), TLS is
verified against the gateway's local CA, and each hop of a redirect chain is
recorded so tests can assert on the Location headers and Set-Cookie values a
browser would have seen.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


class LoopbackResolver(AbstractResolver):
    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


@dataclass
class Hop:
    method: str
    url: str
    status: int
    headers: Any
    body: bytes


@dataclass
class Visit:
    hops: list[Hop] = field(default_factory=list)

    @property
    def last(self) -> Hop:
        return self.hops[-1]

    @property
    def status(self) -> int:
        return self.last.status

    @property
    def url(self) -> str:
        return self.last.url

    @property
    def text(self) -> str:
        return self.last.body.decode(errors="replace")

    def urls(self) -> list[str]:
        return [h.url for h in self.hops]


class Browser:
    def __init__(self, ca: str | None = None) -> None:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, resolver=LoopbackResolver(), force_close=True),
            cookie_jar=self.jar,
            timeout=aiohttp.ClientTimeout(total=20),
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def go(
        self,
        url: str,
        method: str = "GET",
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        follow: bool = True,
        limit: int = 20,
    ) -> Visit:
        visit = Visit()
        for _ in range(limit):
            async with self.session.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.read()
                visit.hops.append(Hop(method, url, resp.status, resp.headers, body))
                location = resp.headers.get("Location")
            if not follow or resp.status not in (301, 302, 303, 307, 308) or location is None:
                return visit
            url = urljoin(url, location)
            if resp.status in (301, 302, 303):
                method, data = "GET", None
        raise AssertionError(f"redirect loop: {visit.urls()}")

    def cookie(self, name: str, host: str | None = None) -> str | None:
        for c in self.jar:
            if c.key == name and (host is None or c["domain"] == host or getattr(c, "_host", None) == host):
                return c.value
        return None


def form_action(html: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of the first form on a page."""
    action = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert action, html[:500]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
    return action.group(1).replace("&amp;", "&"), fields


async def dev_sign_in(b: Browser, start_url: str, login: str) -> Visit:
    """Opens `start_url`, follows to the dev sign-in form, submits `login`, follows to the end."""
    first = await b.go(start_url)
    hops = list(first.hops)
    if 'action="/auth/dev"' not in first.text:
        link = re.search(r'href="(/auth/login/dev[^"]*)"', first.text)
        assert link, (first.urls(), first.text[:500])
        first = await b.go(urljoin(first.url, link.group(1).replace("&amp;", "&")))
        hops += first.hops
    action, fields = form_action(first.text)
    visit = await b.go(urljoin(first.url, action), "POST", data={**fields, "login": login})
    visit.hops = hops + visit.hops
    return visit
