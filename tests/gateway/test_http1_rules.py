"""The HTTP/1 rules on their own: how the gateway reads its cookie and which headers cross.

The proxy tests cover these end to end; here each reading is tried on the shapes a browser,
a planted cookie or an odd upstream produce, including the short cuts the common shapes take.
"""

from __future__ import annotations

import pytest

from gateway import http1

NAME = b"__Host-wsgate-host"
PREFIX = b"__host-wsgate"


def read(*values: bytes) -> bytes | None:
    return http1.cookie_value([(b"Host", b"x")] + [(b"Cookie", v) for v in values], NAME)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NAME + b"=abc", b"abc"),
        (NAME + b"=abc \t", b"abc"),
        (NAME + b" =abc", b"abc"),
        (NAME + b"x=abc", None),
        (NAME + b"=", None),
        (NAME, None),
        (NAME + b'="abc"', None),
        (NAME + b"=a b", None),
        (NAME + b"=a,b", None),
        (NAME + b"=a\\b", None),
        (NAME + b"=caf\xc3\xa9", None),
        (b"foo=x " + NAME + b"=abc", None),
    ],
)
def test_cookie_is_read_the_same_alone_or_among_others(value: bytes, expected: bytes | None) -> None:
    assert read(value) == expected
    assert read(b"app=1; " + value) == expected
    assert read(value + b"; app=1") == expected


def test_a_cookie_sent_twice_counts_for_nothing() -> None:
    assert read(NAME + b"=a; " + NAME + b"=b") is None
    # In two Cookie headers too, whichever of them is read the short way.
    assert read(NAME + b"=a", NAME + b"=b") is None
    assert read(NAME + b"=a", b"x=1; " + NAME + b"=b") is None
    assert read(b"x=1", NAME + b"=b") == b"b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NAME + b"=abc", b""),
        (b"__HOST-WSGATE-session=1", b""),
        (b"=" + NAME + b"=v", b""),  # nameless: browsers read it as the gateway's cookie
        (b" app=1 ", b"app=1"),
        (b"app=" + NAME, b"app=" + NAME),
        (b"app=1;" + NAME + b"=abc;  theme=dark%3B", b"app=1; theme=dark%3B"),
        (b";;", b""),
    ],
)
def test_the_gateway_cookies_are_stripped_and_the_others_kept(value: bytes, expected: bytes) -> None:
    assert http1.strip_cookies(value, PREFIX) == expected


def names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:] if line]


def test_response_headers_of_a_special_length_still_pass_unless_hop_by_hop() -> None:
    long_name = b"X-" + b"a" * 70
    upstream = [
        (b"X-Whatever", b"1"),  # as long as Connection and Keep-Alive
        (b"Keep-Alive", b"timeout=5"),
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"5"),
        (b"Te", b"trailers"),
        (b"X-Ab", b"2"),  # as long as TE
        (long_name, b"3"),
        (b"Set-Cookie", b"__Host-wsgate-session=stolen; Path=/"),
        (b"Set-Cookie", b"app=1; Path=/"),
    ]
    head, framing, out_framing, close = http1.response_head(
        200, b"OK", upstream, no_body=False, client_minor=1, close=False, drop_cookie=PREFIX
    )
    assert (framing, out_framing, close) == ("length", "length", False)
    assert names(head) == [b"X-Whatever", b"Content-Length", b"X-Ab", long_name, b"Set-Cookie"]
    assert b"Set-Cookie: app=1; Path=/\r\n" in head and b"stolen" not in head


@pytest.mark.parametrize("connection", [b"keep-alive", b"Keep-Alive", b"close", b"X-Secret, keep-alive", b"x-secret"])
def test_response_headers_named_in_connection_do_not_cross(connection: bytes) -> None:
    upstream = [(b"Connection", connection), (b"X-Secret", b"1"), (b"X-Kept", b"2"), (b"Content-Length", b"0")]
    head, *_ = http1.response_head(200, b"OK", upstream, no_body=False, client_minor=1, close=False)
    kept = [b"X-Kept", b"Content-Length"]
    assert names(head) == (kept if b"secret" in connection.lower() else [b"X-Secret", *kept])


@pytest.mark.parametrize("connection", [None, b"X-Ab"])
def test_request_headers_of_any_length_cross_and_hop_by_hop_ones_do_not(connection: bytes | None) -> None:
    long_name = b"X-" + b"b" * 80
    headers = [(b"Host", b"h"), (b"Accept", b"*/*"), (b"Te", b"trailers"), (b"X-Ab", b"1"), (long_name, b"2"),
               (b"X-Forwarded-For", b"6.6.6.6"), (b"Keep-Alive", b"1"), (b"X-Request-Id", b"forged")]
    if connection is not None:
        headers.append((b"Connection", connection))
    head = http1.request_head(
        b"GET",
        b"/",
        headers,
        host=b"up",
        client_host=b"h",
        client_ip="127.0.0.1",
        trusted=False,
        request_id=b"r-1",
        body="none",
        upgrade=None,
    )
    sent = names(head)
    assert sent.count(b"Host") == 1 and head.startswith(b"GET / HTTP/1.1\r\nHost: up\r\n")
    assert (b"X-Ab" in sent) == (connection is None)
    assert long_name in sent and b"Accept" in sent
    assert b"Te" not in sent and b"Keep-Alive" not in sent and b"6.6.6.6" not in head and b"forged" not in head
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in head and b"X-Request-Id: r-1\r\n" in head
    assert head.endswith(b"Connection: keep-alive\r\n\r\n")
