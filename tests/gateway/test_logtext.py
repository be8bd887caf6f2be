"""Build output shown to people: always valid text, never terminal control sequences."""

from __future__ import annotations

import random

from gateway.logtext import REPLACEMENT, LogText


def clean(*chunks: bytes) -> str:
    t = LogText()
    return "".join(t.feed(c) for c in chunks) + t.finish()


def test_plain_text_and_utf8_pass_unchanged() -> None:
    text = "build ok ✓ — naïve 日本\tcol\n"
    assert clean(text.encode()) == text


def test_invalid_utf8_becomes_replacement_characters() -> None:
    out = clean(b"bad \xff\xfe bytes \xc3\n")
    assert out == f"bad {REPLACEMENT}{REPLACEMENT} bytes {REPLACEMENT}\n"
    out.encode("utf-8")  # always encodable


def test_ansi_colours_titles_and_links_are_dropped() -> None:
    raw = (
        b"\x1b[31mred\x1b[0m \x1b]0;pwned title\x07 \x1b]8;;https://evil.test\x1b\\link\x1b]8;;\x1b\\"
        b" \x1b[2J\x1b[H\x1bc\x1b(B end\n"
    )
    assert clean(raw) == "red  link  end\n"


def test_other_controls_are_visible_replacements_and_cr_becomes_newline() -> None:
    assert clean(b"a\x00b\x08c\x7fd\xc2\x9b31me\r\nf\rg\n") == f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}de\nf\ng\n"


def test_sequences_and_characters_split_across_chunks() -> None:
    raw = "\x1b[38;5;196mcolour\x1b[0m é\r\n\x1b]2;title\x1b\\done\n".encode()
    whole = clean(raw)
    assert whole == "colour é\ndone\n"
    for cut in range(1, len(raw)):
        assert clean(raw[:cut], raw[cut:]) == whole, cut


def test_random_bytes_always_give_text_without_escape_or_controls() -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        chunks = []
        i = 0
        while i < len(data):
            n = rng.randrange(1, 50)
            chunks.append(data[i : i + n])
            i += n
        out = clean(*chunks)
        assert "\x1b" not in out and "\r" not in out
        assert all(c in "\t\n" or not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) for c in out)


def test_an_unterminated_sequence_does_not_hold_memory() -> None:
    t = LogText()
    out = t.feed(b"\x1b]0;" + b"x" * 10000)
    assert len(out) > 9000  # given up as a sequence: the text is shown
    assert len(t._pending) == 0
