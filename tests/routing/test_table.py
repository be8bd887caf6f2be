"""The route table: host shapes, case, ports, trailing dots, and what is never matched."""

from __future__ import annotations

import pytest

import routing.table as table_module
from auth.policy import PUBLIC_ACCESS, Access, owner_access
from routing.table import (
    BAD_HOST,
    MAIN,
    MISDIRECTED,
    NOBODY,
    NOT_FOUND,
    NOWHERE,
    RULE,
    WORKSPACE,
    RouteTable,
    Upstream,
    normalise_host,
    parse_workspace_label,
)

UP = Upstream.from_address("127.0.0.1:9000")
IDE = Upstream.from_address("127.0.0.1:9001")


@pytest.fixture
def table() -> RouteTable:
    t = RouteTable("example.com")
    t.set_workspace_port("abc", 8080, UP, owner="github:7")
    t.set_workspace_port("abc", 3000, IDE, owner="github:7", public=True, ide=True)
    t.set_host("grafana.example.com", Upstream.from_url("http://10.0.0.1:3000/g"), Access("authenticated"))
    return t


@pytest.mark.parametrize(
    "host",
    [
        b"8080-abc.ws.example.com",
        b"8080-ABC.WS.EXAMPLE.COM",
        b"8080-abc.ws.example.com.",
        b"8080-abc.ws.example.com:443",
        b"8080-abc.ws.example.com.:8443",
    ],
)
def test_workspace_port_hosts(table: RouteTable, host: bytes) -> None:
    route = table.match(host)
    assert not isinstance(route, int)
    assert route.kind == WORKSPACE and route.workspace_id == "abc" and route.port == 8080 and route.upstream == UP


def test_ide_host_is_the_ide_port(table: RouteTable) -> None:
    route = table.match(b"abc.ws.example.com")
    assert not isinstance(route, int) and route.upstream == IDE and route.port == 0


def test_main_and_rule_hosts(table: RouteTable) -> None:
    main = table.match(b"Example.com:443")
    assert not isinstance(main, int) and main.kind == MAIN
    rule = table.match(b"grafana.example.com")
    assert not isinstance(rule, int) and rule.kind == RULE and rule.upstream.base_path == "/g"


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"x.8080-abc.ws.example.com", NOT_FOUND),  # nested label
        (b"08080-abc.ws.example.com", NOT_FOUND),  # leading zero port
        (b"99999-abc.ws.example.com", NOT_FOUND),
        (b"ws.example.com", NOT_FOUND),
        (b"other.example.com", NOT_FOUND),
        (b"example.com.evil.org", MISDIRECTED),
        (b"evilexample.com", MISDIRECTED),
        (b"8080-abc.ws.example.com.evil.org", MISDIRECTED),
        (b"[::1]:443", MISDIRECTED),
        (b"127.0.0.1", MISDIRECTED),
        (b"", BAD_HOST),
        (b"a b.example.com", BAD_HOST),
        (b"example.com:abc", BAD_HOST),
        (b"example.com:99999", BAD_HOST),
        (b"ex\xffample.com", BAD_HOST),
        (b"exa/mple.com", BAD_HOST),
        (b"ex_ample.com\x00", BAD_HOST),
        (b"ex\xc3\xa9mple.com", BAD_HOST),  # UTF-8 é
        (b":443", BAD_HOST),
        (b".", BAD_HOST),
        (b"a" * 254 + b".example.com", BAD_HOST),  # longer than any name
    ],
)
def test_hosts_that_never_match(table: RouteTable, host: bytes, status: int) -> None:
    assert table.match(host) == status


@pytest.mark.parametrize("host", [b"9090-abc.ws.example.com", b"8080-zzz.ws.example.com", b"zzz.ws.example.com"])
def test_unknown_workspace_hosts_are_owned_by_nobody(table: RouteTable, host: bytes) -> None:
    # Same shape as a real private workspace, so the policy refuses both the same way.
    route = table.match(host)
    assert not isinstance(route, int)
    assert route.kind == WORKSPACE and route.upstream is NOWHERE and route.access == NOBODY


def test_access_of_ports_and_rules(table: RouteTable) -> None:
    hosts = (b"8080-abc.ws.example.com", b"abc.ws.example.com", b"grafana.example.com")
    private, public, rule = (table.match(h) for h in hosts)
    assert not isinstance(private, int) and private.access == owner_access("github:7")
    assert not isinstance(public, int) and public.access == PUBLIC_ACCESS
    assert not isinstance(rule, int) and rule.access == Access("authenticated")


def test_changes_drop_the_cache(table: RouteTable) -> None:
    assert table.match(b"8080-abc.ws.example.com").upstream == UP  # type: ignore[union-attr]
    table.remove_workspace("abc")
    assert table.match(b"8080-abc.ws.example.com").upstream is NOWHERE  # type: ignore[union-attr]
    table.remove_host("grafana.example.com")
    assert table.match(b"grafana.example.com") == NOT_FOUND


def test_helpers() -> None:
    assert normalise_host("A.Example.COM.:8443") == "a.example.com"
    assert normalise_host("a.example.com:0") is None
    assert parse_workspace_label("8080-my-ws") == ("my-ws", 8080)
    assert parse_workspace_label("my-ws") == ("my-ws", None)
    assert parse_workspace_label("0-x") is None
    assert Upstream.from_url("https://h:8443/base/").base_path == "/base"
    with pytest.raises(ValueError):
        Upstream.from_url("http://h/no-port")


def test_gateway_hosts_for_redirect_checks(table: RouteTable) -> None:
    assert table.is_gateway_host("example.com")
    assert table.is_gateway_host("8080-abc.ws.example.com")
    assert table.is_gateway_host("grafana.example.com")
    assert not table.is_gateway_host("example.com.evil.org")
    assert not table.is_gateway_host("a.b.ws.example.com")


def test_host_characters() -> None:
    assert normalise_host("My_Host-1.Example.com") == "my_host-1.example.com"
    for bad in ("é.example.com", "a+b.example.com", "a\tb.example.com", "a..:80x", "\u212a.example.com:x"):
        assert normalise_host(bad) is None, bad
    # The Kelvin sign lower-cases to an ASCII "k"; raw Host bytes are ASCII-decoded before this.
    assert RouteTable("example.com").match("\u212a.example.com".encode()) == BAD_HOST


def test_spellings_of_one_host_share_one_answer(table: RouteTable) -> None:
    first = table.match(b"8080-abc.ws.example.com")
    for spelling in (b"8080-ABC.ws.example.com", b"8080-abc.ws.example.com.:443", b"8080-abc.ws.example.com:8443"):
        assert table.match(spelling) is first
    assert len(table.cache) == 4
    table.set_workspace_port("abc", 8080, IDE, owner="github:9")
    # The change drops both caches: a spelling not seen before sees it too.
    route = table.match(b"8080-Abc.ws.example.com")
    assert not isinstance(route, int) and route.upstream == IDE and route.access == owner_access("github:9")
    assert table.match(b"8080-abc.ws.example.com") is route


def test_overlong_hosts_are_not_cached(table: RouteTable) -> None:
    # A raw Host can be as long as the header limit (32 KiB): caching such keys would let a
    # client make every cache entry that big.
    for i in range(50):
        assert table.match(b"%d-abc.ws.example.com:443" % i + b" " * 300) == BAD_HOST
    assert len(table.cache) == 0


def test_caches_stay_bounded(table: RouteTable, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "_CACHE_MAX", 16)
    for i in range(1, 200):
        # New names (one per port) and new spellings of one name.
        assert table.match(b"%d-zzz.ws.example.com" % i).port == i  # type: ignore[union-attr]
        assert table.match(b"example.com:%d" % i).kind == MAIN  # type: ignore[union-attr]
        assert len(table.cache) <= 16 and len(table._by_name) <= 16
    # Answers after the caches were emptied and refilled are still right.
    assert table.match(b"8080-abc.ws.example.com").upstream == UP  # type: ignore[union-attr]
    assert table.match(b"example.com.evil.org") == MISDIRECTED


def test_upstreams_of_one_server_share_one_pool_key_whatever_their_base_path() -> None:
    a = Upstream.from_url("http://10.0.0.5:8080/app")
    b = Upstream.from_url("http://10.0.0.5:8080")
    assert a.pool is b.pool  # one interned string: the pool finds it by identity
    assert a != b and a.base_path == "/app"
    assert Upstream.from_url("https://10.0.0.5:8080").pool != a.pool
    assert Upstream.from_url("http://10.0.0.5:8081").pool != a.pool
    assert Upstream("workspace", "abc", 8080).pool not in (a.pool, Upstream("workspace", "abd", 8080).pool)
    assert "pool" not in repr(a) and hash(a) == hash(Upstream.from_url("http://10.0.0.5:8080/app"))
    # An IPv6 address keeps its brackets (Upstream.authority): its port cannot be read as part of it.
    assert Upstream.from_url("http://[::1]:8080").pool == "http://[::1]:8080"
