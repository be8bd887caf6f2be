"""Open-redirect defence: every hostile `next` lands on the main domain's root."""

from __future__ import annotations

import pytest

from auth.redirects import MAX_LENGTH, safe_next, safe_path

DOMAIN = "wsgate.test"
PORTS = (443, 8443)


def origin(port: int, host: str = DOMAIN) -> str:
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def fill(template: str, port: int) -> str:
    """`{d}` is the domain, `{o}` the gateway origin for `port`, `{p}` its `:port` suffix."""
    suffix = "" if port == 443 else f":{port}"
    return template.replace("{d}", DOMAIN).replace("{o}", origin(port)).replace("{p}", suffix)


# Each must land on the main domain root, whatever the gateway port.
ATTACKS: list[str | None] = [
    # Nothing, or too much.
    None,
    "",
    "/" + "a" * MAX_LENGTH,
    "{o}/" + "a" * MAX_LENGTH,
    # Scheme-relative and slash games.
    "//evil.com",
    "///evil.com",
    "////evil.com",
    "//evil.com/{d}",
    "//{d}@evil.com",
    "/\\evil.com",
    "\\/evil.com",
    "\\\\evil.com",
    "/\\/evil.com",
    "/%09/evil.com",
    "/%2f%2fevil.com",
    "/%2F%2Fevil.com",
    "/%2fevil.com",
    "/%5cevil.com",
    "/%5Cevil.com",
    "/%5c%5cevil.com",
    "/%252f%252fevil.com",
    "/%25252f%25252fevil.com",
    "/%255cevil.com",
    "/..//evil.com",
    "/.//evil.com",
    "/%2e%2e//evil.com",
    "/%2e//evil.com",
    "/a/../..//evil.com",
    "/./evil.com",
    "/%2e%2e%2f%2fevil.com",
    # Not a path-absolute reference and not https.
    "evil.com",
    "dashboard",
    "?next=//evil.com",
    "#//evil.com",
    ".//evil.com",
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "https:\\\\evil.com",
    "https:/\\evil.com",
    "HTTPS://evil.com",
    "https://evil.com",
    "https://evil.com/",
    "http://{d}/",
    "http://evil.com",
    "ftp://{d}/",
    "wss://{d}/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java%0ascript:alert(1)",
    "java\nscript:alert(1)",
    "javascript://{d}/%0aalert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    # Look-alike hosts.
    "https://evil.com%2f.{d}/",
    "https://{d}.evil.com/",
    "https://{d}%2eevil.com/",
    "https://evil{d}/",
    "https://evil-{d}/",
    "https://evil.com#.{d}",
    "https://evil.com?.{d}",
    "https://evil.com/.{d}",
    "https://evil.com\\.{d}",
    "https://evil.com;.{d}/",
    "https://{d}.",
    "https://{d}./",
    "https://abc.ws.{d}./",
    "https://{d}%00.evil.com/",
    "https://{d}%2f@evil.com/",
    # Userinfo.
    "https://ok@evil.com",
    "https://{d}@evil.com/",
    "https://{d}:443@evil.com",
    "https://{d}:8443@evil.com",
    "https://evil.com@{d}/",
    "https://evil\\@{d}/",
    "https://:@{d}/",
    "https://user:pass@{d}/",
    # Workspace host look-alikes.
    "https://a.b.ws.{d}/",
    "https://-x.ws.{d}/",
    "https://x-.ws.{d}/",
    "https://x.ws.{d}.evil/",
    "https://ws.{d}/",
    "https://.ws.{d}/",
    "https://x..ws.{d}/",
    "https://x_y.ws.{d}/",
    "https://" + "a" * 64 + ".ws.{d}/",
    "https://abc.xws.{d}/",
    "https://abc.ws{d}/",
    # IP literals in their many spellings.
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://127.0.0.1/",
    "https://127.1/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0177.0.0.1/",
    # Unicode hosts, dots and slashes.
    "https://{d}\u3002evil.com/",
    "https://evil.com\u3002{d}/",
    "https://wsgate\uff0etest/",
    "https://abc\uff0ews\uff0e{d}/",
    "https://\u0077sgate.test\u2215evil.com",
    "/\u2215evil.com",
    "/\uff0fevil.com",
    "/\uff3cevil.com",
    "/%ef%bc%8f%ef%bc%8fevil.com",
    "/%ef%bc%bcevil.com",
    "https://wsg\u0430te.test/",
    "https://xn--wsgate.test/",
    "https://\u200b{d}/",
    "/\u200b/evil.com",
    "/%e2%80%8b/evil.com",
    "/a\u202eb",
    # Whitespace, controls and injection.
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r\n/evil.com",
    "/ /evil.com",
    " /dashboard",
    "/dashboard ",
    "/dashboard\r\nSet-Cookie: x=1",
    "/dashboard%0d%0aSet-Cookie:%20x=1",
    "/dashboard?x=%0d%0aLocation:%20https://evil.com",
    "/dashboard?x=%250a",
    "/dash%00board",
    "/dash%2500board",
    "/dash\x00board",
    "/dash\x7fboard",
    "/dash%7fboard",
    "https://{d}\t/",
    "https://{d}%09/",
    "https://\n{d}/",
    "https:/\t/evil.com",
    # Malformed escapes and undecodable bytes.
    "/%",
    "/%zz",
    "/%2",
    "/%ff",
    "/%c0%af",
    # Ports.
    "https://{d}:0/",
    "https://{d}:99999/",
    "https://{d}:/",
    "https://{d}:abc/",
    "https://{d}:1234/",
    "https://abc.ws.{d}:22/",
]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("payload", ATTACKS)
def test_attack_lands_on_root(payload: str | None, port: int) -> None:
    raw = None if payload is None else fill(payload, port)
    assert safe_next(raw, domain=DOMAIN, port=port) == origin(port) + "/"


def test_corpus_is_big_enough() -> None:
    assert len(ATTACKS) >= 80
    assert len(set(ATTACKS)) == len(ATTACKS)


@pytest.mark.parametrize(
    ("raw", "port"),
    [
        ("https://{d}:8443/", 443),
        ("https://{d}:8443", 443),
        ("https://abc.ws.{d}:8443/", 443),
        ("https://{d}/", 8443),
        ("https://{d}:443/", 8443),
        ("https://abc.ws.{d}/", 8443),
    ],
)
def test_other_port_lands_on_root(raw: str, port: int) -> None:
    assert safe_next(fill(raw, port), domain=DOMAIN, port=port) == origin(port) + "/"


# (input template, expected template): kept, normalised, never echoed raw.
KEPT: list[tuple[str, str]] = [
    ("/", "{o}/"),
    ("/dashboard?x=1", "{o}/dashboard?x=1"),
    ("/a/b/c", "{o}/a/b/c"),
    ("/.well-known/x", "{o}/.well-known/x"),
    ("/a.b/..c/d..", "{o}/a.b/..c/d.."),
    ("/files/my%20file.txt", "{o}/files/my%20file.txt"),
    ("/files/caf%C3%A9", "{o}/files/caf%C3%A9"),
    ("/a%2Fb", "{o}/a%2Fb"),
    ("/search?q=a+b&path=%2F%2Fnot-a-host&win=C:%5Cx", "{o}/search?q=a+b&path=%2F%2Fnot-a-host&win=C:%5Cx"),
    ("/q?next=/x?y=1", "{o}/q?next=/x?y=1"),
    ("/dashboard?", "{o}/dashboard"),
    ("/dashboard#frag", "{o}/dashboard"),
    ("/dashboard?x=1#//evil.com", "{o}/dashboard?x=1"),
    ('/a"b<c>d', "{o}/a%22b%3Cc%3Ed"),
    ("/a'b?c='d'", "{o}/a%27b?c=%27d%27"),
    ("/a{b}|c^d`e", "{o}/a%7Bb%7D%7Cc%5Ed%60e"),
    ("https://{d}{p}/a/b", "{o}/a/b"),
    ("https://{d}{p}", "{o}/"),
    ("https://{d}{p}?x=1", "{o}/?x=1"),
    ("https://{d}{p}#x", "{o}/"),
    ("HTTPS://WSGATE.TEST{p}/Dash", "{o}/Dash"),
    ("https://WsGate.Test{p}/", "{o}/"),
    ("https://3000-abc.ws.{d}{p}/p?q=1", "https://3000-abc.ws.{d}{p}/p?q=1"),
    ("https://abc.ws.{d}{p}/", "https://abc.ws.{d}{p}/"),
    ("https://abc.ws.{d}{p}", "https://abc.ws.{d}{p}/"),
    ("HTTPS://ABC.WS.WSGATE.TEST{p}/", "https://abc.ws.{d}{p}/"),
    ("https://8080-ws-1.ws.{d}{p}/x", "https://8080-ws-1.ws.{d}{p}/x"),
]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize(("raw", "expected"), KEPT)
def test_kept(raw: str, expected: str, port: int) -> None:
    assert safe_next(fill(raw, port), domain=DOMAIN, port=port) == fill(expected, port)


def test_explicit_default_port_is_dropped() -> None:
    assert safe_next("https://wsgate.test:443/a", domain=DOMAIN, port=443) == "https://wsgate.test/a"
    assert safe_next("https://abc.ws.wsgate.test:443/", domain=DOMAIN, port=443) == "https://abc.ws.wsgate.test/"


def test_explicit_port_with_leading_zero_is_canonicalised() -> None:
    assert safe_next("https://wsgate.test:08443/a", domain=DOMAIN, port=8443) == "https://wsgate.test:8443/a"


def test_domain_argument_is_case_insensitive() -> None:
    assert safe_next("https://abc.ws.wsgate.test/", domain="WSGate.Test", port=443) == "https://abc.ws.wsgate.test/"
    assert safe_next("//evil.com", domain="WSGate.Test", port=443) == "https://wsgate.test/"


class Admin:
    """An `extra_host` callback that records what it was asked."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = set(hosts)
        self.asked: list[str] = []

    def __call__(self, host: str) -> bool:
        self.asked.append(host)
        return host in self.hosts


@pytest.mark.parametrize("port", PORTS)
def test_extra_host_accepted_only_when_callback_says_so(port: int) -> None:
    admin = Admin("grafana.example.org", "a.b.ws.wsgate.test")
    grafana = fill("https://Grafana.Example.org{p}/d/1?x=1", port)
    assert (
        safe_next(grafana, domain=DOMAIN, port=port, extra_host=admin)
        == origin(port, "grafana.example.org") + "/d/1?x=1"
    )
    assert (
        safe_next(fill("https://a.b.ws.{d}{p}/", port), domain=DOMAIN, port=port, extra_host=admin)
        == origin(port, "a.b.ws.wsgate.test") + "/"
    )
    # Without the callback the same hosts are refused.
    assert safe_next(grafana, domain=DOMAIN, port=port) == origin(port) + "/"
    # Other hosts are asked about, lower-cased, and refused.
    assert safe_next(fill("https://Other.Example.org{p}/", port), domain=DOMAIN, port=port, extra_host=admin) == (
        origin(port) + "/"
    )
    assert "other.example.org" in admin.asked


@pytest.mark.parametrize(
    "raw",
    [
        "https://grafana.example.org:1234/",
        "https://ok@grafana.example.org/",
        "https://grafana.example.org./",
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://2130706433/",
        "http://grafana.example.org/",
        "https://grafana.example.org//evil.com",
        "https://grafana.example.org/%2f%2fevil.com",
    ],
)
def test_extra_host_does_not_loosen_the_rest(raw: str) -> None:
    # Even a callback that says yes to everything sees only plain host names.
    asked: list[str] = []

    def recording(host: str) -> bool:
        asked.append(host)
        return True

    assert safe_next(raw, domain=DOMAIN, port=443, extra_host=recording) == "https://wsgate.test/"
    assert all(h == "grafana.example.org" for h in asked)


def test_extra_host_not_asked_for_own_hosts() -> None:
    admin = Admin()
    assert safe_next("https://abc.ws.wsgate.test/", domain=DOMAIN, port=443, extra_host=admin) == (
        "https://abc.ws.wsgate.test/"
    )
    assert admin.asked == []


def test_length_limit_boundary() -> None:
    ok = "/" + "a" * (MAX_LENGTH - 1)
    assert safe_next(ok, domain=DOMAIN, port=443) == "https://wsgate.test" + ok
    assert safe_next(ok + "a", domain=DOMAIN, port=443) == "https://wsgate.test/"


# safe_path: path+query on a host we already trust.
PATH_KEPT = [
    "/",
    "/dashboard",
    "/p?q=1",
    "/?folder=/workspace/project",
    "/a%2Fb",
    "/files/my%20file.txt",
    "/.well-known/x",
]


@pytest.mark.parametrize("raw", PATH_KEPT)
def test_safe_path_kept(raw: str) -> None:
    assert safe_path(raw) == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/p?q=1#frag", "/p?q=1"),
        ('/a"b', "/a%22b"),
        ("/a<b>", "/a%3Cb%3E"),
    ],
)
def test_safe_path_reencoded(raw: str, expected: str) -> None:
    assert safe_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a",
        "dashboard",
        "?x=1",
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "\\/evil.com",
        "/%2fevil.com",
        "/%2F%2Fevil.com",
        "/%5cevil.com",
        "/%252f%252fevil.com",
        "/..//evil.com",
        "/.//evil.com",
        "/%2e%2e/evil",
        "/a\tb",
        "/a\nb",
        "/a\rb",
        "/a b",
        "/a%00b",
        "/a%09b",
        "/a%0ab",
        "/a%c2%a0b",
        "/a%e2%80%a8b",
        "/a%0db",
        "/a?x=%0d%0aSet-Cookie:x",
        "/\u2215evil.com",
        "/\uff0fevil.com",
        "/\u200b",
        "/%e2%80%8b",
        "/%zz",
        "/%ff",
        "https://evil.com/",
        "javascript:alert(1)",
        "/" + "a" * MAX_LENGTH,
    ],
)
def test_safe_path_rejected(raw: str) -> None:
    assert safe_path(raw) == "/"
