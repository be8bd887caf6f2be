"""Admin routing rules: validation (field and reason), matching order, conflicts, loops and lookup cost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from auth.policy import Access
from routing.rules import Rule, RuleContext, RuleError, RuleSet, parse_rule
from routing.table import Upstream

CTX = RuleContext(
    domains=(
        "example.test",
        "*.example.test",
        "*.ws.example.test",
        "tools.corp.test",
        "*.corp.test",
        "*.apps.corp.test",
    ),
    main_domain="example.test",
    gateway_addresses=frozenset({"127.0.0.1:8443", "localhost:8443", "[::1]:8443", "0.0.0.0:9443"}),
    workspace_exists=lambda workspace_id: workspace_id == "alice-dev",
)
BASE: dict[str, Any] = {"id": "grafana", "hosts": ["grafana.example.test"], "upstream": "http://127.0.0.1:3000"}


def make(**changes: Any) -> Rule:
    return parse_rule({**BASE, **changes}, CTX)


def rule(rule_id: str, *hosts: str, prefix: str = "/", upstream: str = "http://10.0.0.1:80") -> Rule:
    return parse_rule({"id": rule_id, "hosts": list(hosts), "path_prefix": prefix, "upstream": upstream}, CTX)


# --- the model ----------------------------------------------------------------------


def test_defaults_and_parsed_forms() -> None:
    r = make()
    assert r.path_prefix == "/" and r.access == "authenticated" and r.access_level == Access("authenticated")
    assert r.websocket and not r.strip_prefix and not r.preserve_host and not r.identity_headers
    assert r.connect_timeout == 5.0 and r.idle_timeout == 300.0 and dict(r.request_headers) == {}
    assert r.target == Upstream("http", "127.0.0.1", 3000)


def test_normalised_and_round_trips() -> None:
    r = make(
        hosts=["Grafana.Example.TEST.", "*.apps.corp.test"],
        path_prefix="/grafana/",
        upstream="HTTPS://Backend.Internal:8443/base/",
        access="team:GitHub:acme",
        connect_timeout=2,
        request_headers={"X-Api-Key": "k 1"},
    )
    assert r.hosts == ("grafana.example.test", "*.apps.corp.test")
    assert r.path_prefix == "/grafana"
    assert r.upstream == "https://backend.internal:8443/base"
    assert r.target == Upstream("https", "backend.internal", 8443, "/base")
    assert r.target == Upstream.from_url(r.upstream)
    assert r.access == "team:github:acme" and r.connect_timeout == 2.0
    data = r.to_dict()
    assert list(data) == [
        "id",
        "hosts",
        "path_prefix",
        "upstream",
        "access",
        "websocket",
        "strip_prefix",
        "preserve_host",
        "connect_timeout",
        "idle_timeout",
        "request_headers",
        "identity_headers",
    ]
    assert parse_rule(data, CTX) == r
    assert hash(parse_rule(data, CTX)) == hash(r)


def test_upstream_forms() -> None:
    assert make(upstream="http://[::1]:8080").target == Upstream("http", "::1", 8080)
    assert make(upstream="http://[::1]:8080").upstream == "http://[::1]:8080"
    assert make(upstream="http://my_service:80/").upstream == "http://my_service:80"
    ws = make(upstream="workspace:alice-dev:3000")
    assert ws.target == Upstream("workspace", "alice-dev", 3000) and ws.upstream == "workspace:alice-dev:3000"


def test_rules_are_immutable() -> None:
    r = make(request_headers={"X-A": "1"})
    with pytest.raises(AttributeError):
        r.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.request_headers["X-B"] = "2"  # type: ignore[index]


# --- validation: every branch names its field ---------------------------------------

TOO_LONG = "v" * 4097


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        # unknown fields and types
        ({"upstreem": "http://10.0.0.1:80"}, "upstreem", "unknown field"),
        ({"id": 7}, "id", "must be a string, not a number"),
        ({"id": "Grafana"}, "id", "a-z, 0-9"),
        ({"id": ""}, "id", "a-z, 0-9"),
        ({"id": "-x"}, "id", "starting with a letter or digit"),
        ({"id": "x" * 64}, "id", "1-63"),
        ({"hosts": "grafana.example.test"}, "hosts", "must be an array of host names, not a string"),
        ({"hosts": []}, "hosts", "at least one host"),
        ({"hosts": ["a.example.test", 3]}, "hosts[1]", "must be a string, not a number"),
        ({"path_prefix": None}, "path_prefix", "must be a string, not null"),
        ({"upstream": ["http://10.0.0.1:80"]}, "upstream", "must be a string, not an array"),
        ({"access": True}, "access", "must be a string, not a boolean"),
        ({"websocket": 1}, "websocket", "must be true or false, not a number"),
        ({"websocket": "yes"}, "websocket", "must be true or false, not a string"),
        ({"strip_prefix": None}, "strip_prefix", "true or false"),
        ({"preserve_host": 0}, "preserve_host", "true or false"),
        ({"identity_headers": "true"}, "identity_headers", "true or false"),
        ({"connect_timeout": True}, "connect_timeout", "must be a number of seconds, not a boolean"),
        ({"connect_timeout": "5"}, "connect_timeout", "not a string"),
        ({"connect_timeout": 0}, "connect_timeout", "more than 0 and at most 300"),
        ({"connect_timeout": -1.0}, "connect_timeout", "more than 0"),
        ({"connect_timeout": 300.5}, "connect_timeout", "at most 300"),
        ({"connect_timeout": float("nan")}, "connect_timeout", "more than 0"),
        ({"idle_timeout": float("inf")}, "idle_timeout", "at most 86400"),
        ({"idle_timeout": 10**400}, "idle_timeout", "at most 86400"),
        ({"idle_timeout": False}, "idle_timeout", "not a boolean"),
        ({"request_headers": []}, "request_headers", "must be an object"),
        # access
        ({"access": "owner"}, "access", "unknown access level 'owner'"),
        ({"access": "everyone"}, "access", "unknown access level"),
        ({"access": "users:alice"}, "access", "not an identity"),
        # hosts
        ({"hosts": ["grafana.other.test"]}, "hosts[0]", "not covered by any of the gateway's certificates"),
        ({"hosts": ["a.b.example.test"]}, "hosts[0]", "not covered"),  # *.example.test is one label deep
        ({"hosts": ["x.tools.corp.test"]}, "hosts[0]", "not covered"),  # an exact cert covers itself only
        ({"hosts": ["*.other.corp.test"]}, "hosts[0]", "not covered"),  # *.corp.test is not *.other.corp.test
        ({"hosts": ["a.example.test", "example.test"]}, "hosts[1]", "the gateway's own domain"),
        ({"hosts": ["EXAMPLE.test."]}, "hosts[0]", "the gateway's own domain"),
        ({"hosts": ["abc.ws.example.test"]}, "hosts[0]", "workspace namespace"),
        ({"hosts": ["8080-abc.ws.example.test"]}, "hosts[0]", "workspace namespace"),
        ({"hosts": ["ws.example.test"]}, "hosts[0]", "workspace namespace"),
        ({"hosts": ["*.ws.example.test"]}, "hosts[0]", "would match workspace hosts"),
        ({"hosts": ["*.example.test"]}, "hosts[0]", "would match workspace hosts"),
        ({"hosts": ["a.*.example.test"]}, "hosts[0]", "whole first label"),
        ({"hosts": ["a*.example.test"]}, "hosts[0]", "whole first label"),
        ({"hosts": ["*.*.example.test"]}, "hosts[0]", "whole first label"),
        ({"hosts": ["*"]}, "hosts[0]", "a wildcard needs a domain"),
        ({"hosts": [""]}, "hosts[0]", "empty host name"),
        ({"hosts": ["a..example.test"]}, "hosts[0]", "not a host name"),
        ({"hosts": ["a_b.example.test"]}, "hosts[0]", "not a host name"),
        ({"hosts": ["-a.example.test"]}, "hosts[0]", "not a host name"),
        ({"hosts": ["10.0.0.1"]}, "hosts[0]", "looks like an IP address"),
        ({"hosts": ["\u212aube.example.test"]}, "hosts[0]", "punycode"),  # KELVIN SIGN lower-cases to "k"
        ({"hosts": ["a.example.test", "A.example.test"]}, "hosts[1]", "already hosts[0]"),
        ({"hosts": ["x.example.test"] * 101}, "hosts", "at most 100"),
        # path prefix
        ({"path_prefix": "app"}, "path_prefix", "start with '/'"),
        ({"path_prefix": "/a/../b"}, "path_prefix", "not canonical; write it as '/b'"),
        ({"path_prefix": "/a%2fb"}, "path_prefix", "encoded '/'"),
        ({"path_prefix": "/" + "a" * 1024}, "path_prefix", "longer than 1024"),
        # upstream
        ({"upstream": "ftp://10.0.0.1:21"}, "upstream", "scheme 'ftp' is not supported"),
        ({"upstream": "10.0.0.1:3000"}, "upstream", "must be http(s)://host:port"),
        ({"upstream": "http://10.0.0.1"}, "upstream", "needs an explicit port"),
        ({"upstream": "http://10.0.0.1:"}, "upstream", "needs an explicit port"),
        ({"upstream": "http://10.0.0.1:0"}, "upstream", "port '0'"),
        ({"upstream": "http://10.0.0.1:65536"}, "upstream", "port '65536'"),
        ({"upstream": "http://10.0.0.1:http"}, "upstream", "port 'http'"),
        ({"upstream": "http://u:p@10.0.0.1:80"}, "upstream", "credentials"),
        ({"upstream": "http://10.0.0.1:80/a?b"}, "upstream", "query or fragment"),
        ({"upstream": "http://10.0.0.1:80/a/../b"}, "upstream", "base path prefix '/a/../b' is not canonical"),
        ({"upstream": "http://127.1:80"}, "upstream", "not a dotted-quad IPv4 address"),
        ({"upstream": "http://2130706433:80"}, "upstream", "not a dotted-quad"),
        ({"upstream": "http://0x7f.1:80"}, "upstream", "not a dotted-quad"),
        ({"upstream": "http://[zz]:80"}, "upstream", "is not host:port"),
        ({"upstream": "http://[1::2::3]:80"}, "upstream", "not an IPv6 address"),
        ({"upstream": "http://bad host:80"}, "upstream", "not a host name"),
        ({"upstream": "http://b\u00fccher.test:80"}, "upstream", "punycode"),
        ({"upstream": "http://" + "a" * 2048 + ":80"}, "upstream", "longer than 2048"),
        ({"upstream": "http://127.0.0.1:8443"}, "upstream", "(it listens on 127.0.0.1:8443)"),
        ({"upstream": "https://LOCALHOST:8443/x"}, "upstream", "points back at the gateway"),
        ({"upstream": "http://127.0.0.2:8443"}, "upstream", "points back at the gateway"),  # loopback is loopback
        ({"upstream": "http://[::ffff:127.0.0.1]:8443"}, "upstream", "points back at the gateway"),
        ({"upstream": "http://127.0.0.1:9443"}, "upstream", "listens on 0.0.0.0:9443"),
        ({"upstream": "https://example.test:443"}, "upstream", "example.test is its own domain"),
        ({"upstream": "http://8080-abc.ws.example.test:80"}, "upstream", "its own domain"),
        ({"upstream": "http://grafana.example.test:3000"}, "upstream", "is a host of this rule"),
        ({"upstream": "workspace:bob-dev:3000"}, "upstream", "no workspace 'bob-dev'"),
        ({"upstream": "workspace:alice-dev:0"}, "upstream", "port '0'"),
        ({"upstream": "workspace:alice-dev:99999"}, "upstream", "port '99999'"),
        ({"upstream": "workspace:alice-dev:"}, "upstream", "port ''"),
        ({"upstream": "workspace:Alice:80"}, "upstream", "workspace:<id>:<port>"),
        ({"upstream": "workspace::80"}, "upstream", "workspace:<id>:<port>"),
        # request headers
        ({"request_headers": {"X Bad": "1"}}, "request_headers['X Bad']", "not a header name"),
        ({"request_headers": {"": "1"}}, "request_headers['']", "not a header name"),
        ({"request_headers": {"X-" + "a" * 63: "1"}}, "request_headers['X-" + "a" * 63 + "']", "at most 64"),
        ({"request_headers": {"Host": "x"}}, "request_headers['Host']", "the gateway sets this header itself"),
        ({"request_headers": {"cookie": "a=b"}}, "request_headers['cookie']", "the gateway sets"),
        ({"request_headers": {"Connection": "close"}}, "request_headers['Connection']", "the gateway sets"),
        ({"request_headers": {"Transfer-Encoding": "chunked"}}, "request_headers['Transfer-Encoding']", "gateway"),
        ({"request_headers": {"Content-Length": "0"}}, "request_headers['Content-Length']", "gateway"),
        ({"request_headers": {"Upgrade": "websocket"}}, "request_headers['Upgrade']", "gateway"),
        ({"request_headers": {"X-Wsgate-User": "github:1"}}, "request_headers['X-Wsgate-User']", "gateway"),
        ({"request_headers": {"X-Forwarded-For": "1.2.3.4"}}, "request_headers['X-Forwarded-For']", "gateway"),
        ({"request_headers": {"Forwarded": "for=1.2.3.4"}}, "request_headers['Forwarded']", "gateway"),
        ({"request_headers": {"X-A": "1", "x-a": "2"}}, "request_headers['x-a']", "same header as 'X-A'"),
        ({"request_headers": {"X-A": 1}}, "request_headers['X-A']", "must be a string, not a number"),
        ({"request_headers": {"X-A": TOO_LONG}}, "request_headers['X-A']", "longer than 4096"),
        ({"request_headers": {"X-A": "a\r\nX-B: c"}}, "request_headers['X-A']", "visible ASCII"),
        ({"request_headers": {"X-A": " a"}}, "request_headers['X-A']", "no leading or trailing space"),
        ({"request_headers": {"X-A": "caf\u00e9"}}, "request_headers['X-A']", "visible ASCII"),
        ({"request_headers": {f"X-{i}": "1" for i in range(33)}}, "request_headers", "at most 32"),
    ],
)
def test_validation(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(RuleError) as e:
        make(**changes)
    assert e.value.field == field
    assert words in e.value.reason
    assert str(e.value) == f"{field}: {e.value.reason}"


def test_required_fields_and_shape() -> None:
    for key in ("id", "hosts", "upstream"):
        data = {k: v for k, v in BASE.items() if k != key}
        with pytest.raises(RuleError) as e:
            parse_rule(data, CTX)
        assert (e.value.field, e.value.reason) == (key, "required")
    with pytest.raises(RuleError) as e:
        parse_rule(["not", "an", "object"], CTX)  # type: ignore[arg-type]
    assert e.value.field == "rule"


def test_first_bad_field_is_named() -> None:
    # Unknown fields first, then in the order of Rule's fields.
    with pytest.raises(RuleError) as e:
        parse_rule({**BASE, "zzz": 1, "id": "BAD"}, CTX)
    assert e.value.field == "zzz"
    with pytest.raises(RuleError) as e:
        parse_rule({**BASE, "access": "nope", "hosts": ["example.test"], "websocket": 1}, CTX)
    assert e.value.field == "hosts[0]"
    with pytest.raises(RuleError) as e:
        parse_rule({"id": "Bad", "hosts": []}, CTX)  # upstream is missing too, but id comes first
    assert e.value.field == "id"


def test_accepted_headers_and_values() -> None:
    r = make(request_headers={"Authorization": "Basic dXNlcjpwdw==", "X-Empty": "", "X-Tok!": "a  b"})
    assert dict(r.request_headers) == {"Authorization": "Basic dXNlcjpwdw==", "X-Empty": "", "X-Tok!": "a  b"}


def test_hosts_that_certificates_cover() -> None:
    hosts = ["tools.corp.test", "a.corp.test", "*.apps.corp.test", "x.apps.corp.test", "grafana.example.test"]
    assert make(hosts=hosts).hosts == tuple(hosts)


def test_constructor_checks_access_and_upstream() -> None:
    with pytest.raises(RuleError) as e:
        Rule(id="x", hosts=("a.example.test",), upstream="http://10.0.0.1:80", access="root")
    assert e.value.field == "access"
    with pytest.raises(RuleError) as e:
        Rule(id="x", hosts=("a.example.test",), upstream="gopher://10.0.0.1:70")
    assert e.value.field == "upstream"


# --- matching -----------------------------------------------------------------------


def test_longest_prefix_on_segment_boundaries() -> None:
    root, app, deep = (
        rule("root", "a.example.test"),
        rule("app", "a.example.test", prefix="/app"),
        rule("deep", "a.example.test", prefix="/app/admin/"),
    )
    rules = RuleSet([root, app, deep])
    assert rules.match("a.example.test", "/") is root
    assert rules.match("a.example.test", "/app") is app
    assert rules.match("a.example.test", "/app/") is app
    assert rules.match("a.example.test", "/app/x/y") is app
    assert rules.match("a.example.test", "/apple") is root
    assert rules.match("a.example.test", "/App") is root
    assert rules.match("a.example.test", "/app/admin") is deep
    assert rules.match("a.example.test", "/app/admin/x") is deep
    assert rules.match("a.example.test", "/app/administrator") is app
    assert rules.match("b.example.test", "/app") is None


def test_no_root_rule_means_no_match_outside_the_prefixes() -> None:
    rules = RuleSet([rule("app", "a.example.test", prefix="/app")])
    assert rules.match("a.example.test", "/") is None
    assert rules.match("a.example.test", "/apple") is None
    assert rules.match("a.example.test", "/x/app") is None


def test_exact_host_beats_wildcards_and_deeper_wildcards_beat_shallower() -> None:
    shallow = rule("shallow", "*.corp.test")
    deep = rule("deep", "*.apps.corp.test")
    exact = rule("exact", "x.apps.corp.test")
    rules = RuleSet([shallow, deep, exact])
    assert rules.match("x.apps.corp.test", "/") is exact
    assert rules.match("y.apps.corp.test", "/a") is deep
    assert rules.match("z.y.apps.corp.test", "/a") is deep  # a wildcard matches any depth
    assert rules.match("y.corp.test", "/") is shallow
    assert rules.match("apps.corp.test", "/") is shallow
    assert rules.match("corp.test", "/") is None
    assert rules.match("x.apps.corp.test.evil", "/") is None
    assert rules.covers("q.apps.corp.test") and rules.covers("x.apps.corp.test") and not rules.covers("corp.test")


def test_host_order_before_path_order() -> None:
    # A more specific host answers first; the wildcard takes the paths its prefixes do not cover.
    exact_api = rule("exact-api", "x.apps.corp.test", prefix="/api")
    wild_deep_path = rule("wild", "*.apps.corp.test", prefix="/api/v1")
    wild_root = rule("wild-root", "*.apps.corp.test")
    rules = RuleSet([exact_api, wild_deep_path, wild_root])
    assert rules.match("x.apps.corp.test", "/api/v1/x") is exact_api
    assert rules.match("x.apps.corp.test", "/other") is wild_root
    assert rules.match("y.apps.corp.test", "/api/v1/x") is wild_deep_path


def test_one_rule_many_hosts() -> None:
    r = rule("multi", "a.example.test", "*.apps.corp.test", prefix="/x")
    rules = RuleSet([r])
    assert rules.match("a.example.test", "/x/1") is r and rules.match("q.apps.corp.test", "/x") is r


def test_tie_refused_replace_same_id_and_without() -> None:
    first = rule("first", "a.example.test", prefix="/app")
    rules = RuleSet([first])
    with pytest.raises(RuleError) as e:
        rules.with_rule(rule("second", "b.example.test", "a.example.test", prefix="/app/"))
    assert e.value.field == "hosts[1]" and "conflicts with rule first" in e.value.reason
    # The same pattern on another prefix, or the same prefix under a wildcard, is no tie.
    wider = rules.with_rule(rule("other-prefix", "a.example.test", prefix="/app2"))
    assert wider.match("a.example.test", "/app2/x") is wider.get("other-prefix")
    assert rules.match("a.example.test", "/app2/x") is None  # copy on write: the old set does not see it
    with pytest.raises(RuleError):
        RuleSet([first, rule("dup", "a.example.test", prefix="/app")])

    moved = rule("first", "a.example.test", prefix="/moved")
    replaced = rules.with_rule(rule("zeta", "z.example.test")).with_rule(moved)
    assert [r.id for r in replaced] == ["first", "zeta"]  # replacing keeps the place
    assert replaced.get("first") is moved and replaced.match("a.example.test", "/app") is None
    assert replaced.match("a.example.test", "/moved/x") is moved
    # The old set is untouched.
    assert rules.match("a.example.test", "/app") is first and len(rules) == 1

    smaller = replaced.without("first")
    assert len(smaller) == 1 and smaller.get("first") is None and smaller.match("a.example.test", "/moved") is None
    assert replaced.match("a.example.test", "/moved") is moved
    assert not smaller.covers("a.example.test")
    with pytest.raises(KeyError):
        smaller.without("first")
    with pytest.raises(RuleError) as e:
        RuleSet([first, first])
    assert e.value.field == "id"


def test_loops_through_other_rules_are_refused() -> None:
    grafana = rule("grafana", "grafana.example.test")
    rules = RuleSet([grafana])
    with pytest.raises(RuleError) as e:
        rules.with_rule(rule("proxy", "p.example.test", upstream="http://grafana.example.test:3000"))
    assert e.value.field == "upstream" and "grafana.example.test is a host of rule grafana" in e.value.reason
    with pytest.raises(RuleError) as e:
        RuleSet([rule("wild", "*.apps.corp.test")]).with_rule(
            rule("proxy", "p.example.test", upstream="http://x.apps.corp.test:80")
        )
    assert e.value.field == "upstream" and "rule wild" in e.value.reason

    # The other way round: a new host that an existing rule sends its traffic to.
    backend = RuleSet([rule("proxy", "p.example.test", upstream="http://b.apps.corp.test:80")])
    with pytest.raises(RuleError) as e:
        backend.with_rule(rule("b", "b.apps.corp.test"))
    assert e.value.field == "hosts[0]" and "upstream of rule proxy" in e.value.reason
    with pytest.raises(RuleError) as e:
        backend.with_rule(rule("w", "q.example.test", "*.apps.corp.test"))
    assert e.value.field == "hosts[1]" and "upstream of rule proxy" in e.value.reason
    # Once the rule that used it is gone, the host is free.
    assert backend.without("proxy").with_rule(rule("b", "b.apps.corp.test")).covers("b.apps.corp.test")
    # A rule may change its own upstream freely.
    moved = backend.with_rule(rule("proxy", "p.example.test", upstream="http://c.apps.corp.test:80"))
    assert moved.with_rule(rule("b", "b.apps.corp.test")).get("b") is not None


# --- cost ---------------------------------------------------------------------------


def _many(n: int) -> list[Rule]:
    """n rules: exact hosts with a few prefixes each, and some wildcards (built directly: no certificates needed)."""
    rules: list[Rule] = []
    for i in range(n):
        if i % 10 == 9:
            hosts: tuple[str, ...] = (f"*.w{i}.corp.test",)
        else:
            hosts = (f"h{i // 3}.example.test",)
        prefix = ("/", "/api", "/api/v1/admin")[i % 3]
        rules.append(Rule(id=f"r{i}", hosts=hosts, path_prefix=prefix, upstream=f"http://10.0.{i % 250}.1:80"))
    return rules


def _lookups(rules: RuleSet, n: int) -> list[tuple[str, str]]:
    size = len(rules)
    out = []
    for k in range(n):
        i = (k * 7919) % size
        host = f"x.y.w{i}.corp.test" if i % 10 == 9 else f"h{i // 3}.example.test"
        if k % 5 == 0:
            host = f"miss{k}.other.test"
        out.append((host, "/api/v1/admin/users/42/settings/deep/path" if k % 2 else "/static/app.js"))
    return out


def _per_lookup(rules: RuleSet) -> float:
    targets = _lookups(rules, 2000)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for host, path in targets:
            rules.match(host, path)
        best = min(best, time.perf_counter() - start)
    return best / len(targets)


def test_lookup_cost_does_not_grow_with_the_rule_count() -> None:
    small, large = RuleSet(_many(10)), RuleSet(_many(10_000))
    assert len(large) == 10_000
    hits = sum(large.match(h, p) is not None for h, p in _lookups(large, 2000))
    assert hits > 1000
    t_small, t_large = _per_lookup(small), _per_lookup(large)
    print(f"\nmatch: 10 rules {t_small * 1e9:.0f} ns/lookup, 10,000 rules {t_large * 1e9:.0f} ns/lookup")
    assert t_large < 5 * t_small


def test_sequential_inserts_stay_fast() -> None:
    rules = RuleSet()
    start = time.perf_counter()
    for r in _many(10_000):
        rules = rules.with_rule(r)
    elapsed = time.perf_counter() - start
    print(f"\n10,000 sequential with_rule: {elapsed:.2f} s")
    assert len(rules) == 10_000 and rules.match("h5.example.test", "/api/x") is rules.get("r16")
    assert elapsed < 20
