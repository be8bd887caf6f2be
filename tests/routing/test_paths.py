"""Request-path normalisation: the bypass corpus, prefixes on segment boundaries, and idempotence."""

from __future__ import annotations

import random

import pytest

from routing.paths import PathError, canonical_target, check_prefix, prefix_matches


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", ""),
        (b"/a/./b//c?x=1", "/a/b/c", "?x=1"),
        (b"//", "/", ""),
        (b"///a///b", "/a/b", ""),
        (b"/./", "/", ""),
        (b"/.", "/", ""),
        (b"/app/../admin", "/admin", ""),
        (b"/app/x/..", "/app/", ""),
        (b"/app/x/.", "/app/x/", ""),
        (b"/app//../admin", "/admin", ""),  # slashes merge before dots resolve
        (b"/app/%2e%2e/admin", "/admin", ""),
        (b"/app/%2E%2e/", "/", ""),
        (b"/app/.%2e/admin", "/admin", ""),
        (b"/app/%2e/x", "/app/x", ""),
        (b"/a%2eb", "/a.b", ""),
        (b"/.hidden/..x", "/.hidden/..x", ""),
        (b"/%61%44%6d%69%6E", "/aDmin", ""),  # unreserved escapes decode, case kept
        (b"/%7e%2d%5f", "/~-_", ""),
        (b"/a%3fb", "/a%3Fb", ""),  # reserved escapes stay encoded, hex upper-cased
        (b"/a%20b%ff", "/a%20b%FF", ""),
        (b"/a%23b", "/a%23b", ""),  # an encoded '#' is data
        (b"/%252x", "/%252x", ""),  # %25 followed by something harmless
        (b"/a?x=/public", "/a", "?x=/public"),
        (b"/a?", "/a", "?"),
        (b"/a?b?c", "/a", "?b?c"),
        (b"/public/..?x=/public", "/", "?x=/public"),
        (b"/app/", "/app/", ""),
        (b"/app", "/app", ""),
        (b"/ADMIN", "/ADMIN", ""),
        (b"/admin", "/admin", ""),
        (b"/a;b=c/d", "/a;b=c/d", ""),
    ],
)
def test_canonical_forms(target: bytes, path: str, query: str) -> None:
    assert canonical_target(target) == (path, query)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (b"", "start with '/'"),
        (b"a/b", "start with '/'"),
        (b"*", "start with '/'"),
        (b"http://example.test/a", "start with '/'"),
        (b"/a#frag", "fragment"),
        (b"/#", "fragment"),
        (b"/a?x=/../admin&y=%2F#", "fragment"),  # even after the query
        (b"/..", "climbs above the root"),
        (b"/../", "climbs above the root"),
        (b"/../admin", "climbs above the root"),
        (b"/a/../../admin", "climbs above the root"),
        (b"/%2e%2e", "climbs above the root"),
        (b"/%2E%2e/admin", "climbs above the root"),
        (b"/.%2e/admin", "climbs above the root"),
        (b"/admin%2Fx", "encoded '/'"),
        (b"/admin%2fx", "encoded '/'"),
        (b"/a%5Cb", "encoded '\\'"),
        (b"/a%5cb", "encoded '\\'"),
        (b"/a\\b", "backslash"),
        (b"/\\evil.test", "backslash"),
        (b"/a%00b", "NUL"),
        (b"/a%252e", "double percent-encoding"),
        (b"/a%252E%252e/", "double percent-encoding"),
        (b"/a%252F", "double percent-encoding"),
        (b"/a%252f", "double percent-encoding"),
        (b"/a%255c", "double percent-encoding"),
        (b"/a%2525", "double percent-encoding"),
        (b"/a%25%32%65", "double percent-encoding"),  # decodes to %252e
        (b"/a%zz", "malformed percent-escape"),
        (b"/a%4", "malformed percent-escape"),
        (b"/a%", "malformed percent-escape"),
        (b"/a%%41", "malformed percent-escape"),
        (b"/a%u002e", "malformed percent-escape"),
        (b"/a b", "0x20"),
        (b"/a\tb", "0x09"),
        (b"/a\x00b", "0x00"),
        (b"/a\x7fb", "0x7f"),
        (b"/caf\xc3\xa9", "0xc3"),
        (b"/a?q=\xff", "0xff"),
        (b"/a\r\nX: y", "0x0d"),
        (b"/..;/admin", "dot segment with parameters"),
        (b"/app/..;x=1/admin", "dot segment with parameters"),
        (b"/app/%2e%2e;/admin", "dot segment with parameters"),
    ],
)
def test_refused_targets(target: bytes, words: str) -> None:
    with pytest.raises(PathError) as e:
        canonical_target(target)
    assert words in str(e.value)
    assert isinstance(e.value, ValueError)


def test_the_query_never_changes_the_path() -> None:
    assert canonical_target(b"/private?next=/public")[0] == "/private"
    assert canonical_target(b"/private?%2e%2e/%2F")[1] == "?%2e%2e/%2F"


_ALPHABET = ["/", "/", ".", "..", "a", "B", "%2e", "%2E", "%41", "%3f", "%20", "%25", "x;y", "~", "%7E", "?", "="]


def test_idempotent_on_its_own_output() -> None:
    rng = random.Random(20240611)
    checked = 0
    for _ in range(20_000):
        target = "/" + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))
        try:
            path, query = canonical_target(target.encode())
        except PathError:
            continue
        checked += 1
        assert canonical_target(path.encode()) == (path, "")
        assert canonical_target((path + query).encode()) == (path, query)
        assert "//" not in path and "\\" not in path
        assert all(segment not in (".", "..") for segment in path.split("/"))
    assert checked > 1000


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/app", "/app", True),
        ("/app", "/app/", True),
        ("/app", "/app/x/y", True),
        ("/app", "/apple", False),
        ("/app", "/App", False),
        ("/app", "/", False),
        ("/app/x", "/app", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/app/", "/app/x", True),  # a prefix with its slash still means the same boundary
        ("/app/", "/app", False),
        ("/a%20b", "/a%20b/c", True),
    ],
)
def test_prefix_matches(prefix: str, path: str, expected: bool) -> None:
    assert prefix_matches(prefix, path) is expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("/", "/"), ("/app", "/app"), ("/app/", "/app"), ("/a/b/", "/a/b"), ("/a%3Fb", "/a%3Fb"), ("/x~y", "/x~y")],
)
def test_check_prefix_accepts_canonical(prefix: str, expected: str) -> None:
    assert check_prefix(prefix) == expected


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ("", "start with '/'"),
        ("app", "start with '/'"),
        ("/app//", "not canonical; write it as '/app/'"),
        ("//app", "not canonical"),
        ("/a/../b", "not canonical; write it as '/b'"),
        ("/a/./b", "not canonical"),
        ("/%61pp", "not canonical; write it as '/app'"),
        ("/a%3fb", "not canonical; write it as '/a%3Fb'"),
        ("/a%2Fb", "encoded '/'"),
        ("/a?b", "query"),
        ("/a#b", "fragment"),
        ("/a b", "0x20"),
        ("/café", "ASCII"),
        ("/..", "climbs above"),
    ],
)
def test_check_prefix_refuses_the_rest(prefix: str, words: str) -> None:
    with pytest.raises(PathError) as e:
        check_prefix(prefix)
    assert words in str(e.value)
