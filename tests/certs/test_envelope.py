"""AES-256-GCM envelopes: blobs, streams, keyring file handling and tamper detection."""

from __future__ import annotations

import io
import json
import re
import stat
from pathlib import Path

import pytest

from certs import CertificateError, EnvelopeError, Keyring

CHUNK = 64
# WSS1 + key-id length + 8-char key id + 8-byte nonce prefix + u32 chunk size
STREAM_HEADER = 4 + 1 + 8 + 8 + 4
RECORD = CHUNK + 16


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "secrets" / "keyring.json")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seal_stream(ring: Keyring, data: bytes, aad: bytes = b"", chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    ring.seal_stream(io.BytesIO(data), out, aad, chunk_size=chunk_size)
    return out.getvalue()


def open_stream(ring: Keyring, blob: bytes, aad: bytes = b"") -> bytes:
    out = io.BytesIO()
    ring.open_stream(io.BytesIO(blob), out, aad)
    return out.getvalue()


class Trickle(io.RawIOBase):
    """A source that returns at most 7 bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 7) if size >= 0 else 7)


# --- keyring file -----------------------------------------------------------------


def test_key_file_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keyring.json"
    ring = Keyring.load_or_create(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["current"] == ring.current_key_id
    assert len(ring.current_key_id) == 8
    blob = ring.seal(b"secret")
    again = Keyring.load_or_create(path)
    assert again.current_key_id == ring.current_key_id
    assert again.open(blob) == b"secret"


def test_group_readable_key_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    Keyring.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(CertificateError) as err:
        Keyring.load_or_create(path)
    assert str(err.value).startswith(f"{path}: key file is accessible by group/others (mode 0644)")
    assert f"chmod 600 {path}" in str(err.value)
    path.chmod(0o640)
    with pytest.raises(CertificateError, match="mode 0640"):
        Keyring.load_or_create(path)


def test_invalid_key_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    for content in [
        "not json",
        json.dumps({"format": "other", "version": 1}),
        json.dumps({"format": "wsgate-keyring", "version": 1, "current": "a", "keys": {"a": "AAAA"}}),
        json.dumps({"format": "wsgate-keyring", "version": 1, "current": "b", "keys": {}}),
    ]:
        path.unlink(missing_ok=True)
        path.write_text(content)
        path.chmod(0o600)
        with pytest.raises(CertificateError, match=f"^{re.escape(str(path))}: invalid keyring file"):
            Keyring.load_or_create(path)


def test_rotation_keeps_old_keys(ring: Keyring) -> None:
    old_id = ring.current_key_id
    old_blob = ring.seal(b"before", b"ctx")
    old_stream = seal_stream(ring, b"stream before")
    new_id = ring.rotate()
    assert new_id != old_id
    assert ring.current_key_id == new_id
    assert ring.key_ids == (old_id, new_id)
    new_blob = ring.seal(b"after")
    assert new_blob[5:13] == new_id.encode()
    assert ring.open(old_blob, b"ctx") == b"before"
    assert open_stream(ring, old_stream) == b"stream before"

    assert ring.path is not None
    assert mode(ring.path) == 0o600
    reloaded = Keyring.load_or_create(ring.path)
    assert reloaded.current_key_id == new_id
    assert reloaded.open(old_blob, b"ctx") == b"before"
    assert reloaded.open(new_blob) == b"after"


def test_rotation_merges_keys_rotated_elsewhere(ring: Keyring) -> None:
    assert ring.path is not None
    other = Keyring.load_or_create(ring.path)
    other_id = other.rotate()
    blob = other.seal(b"from the other process")
    ring.rotate()
    final = Keyring.load_or_create(ring.path)
    assert other_id in final.key_ids
    assert final.open(blob) == b"from the other process"


def test_in_memory_keyring() -> None:
    ring = Keyring({"k1": bytes(32)}, "k1")
    assert ring.open(ring.seal(b"x")) == b"x"
    ring.rotate()
    assert ring.path is None and len(ring.key_ids) == 2
    with pytest.raises(ValueError):
        Keyring({"k1": bytes(16)}, "k1")
    with pytest.raises(ValueError):
        Keyring({"k1": bytes(32)}, "k2")


# --- blobs ---------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", b"hello world" * 1000])
def test_blob_round_trip(ring: Keyring, plaintext: bytes) -> None:
    blob = ring.seal(plaintext, b"backup:42")
    assert blob.startswith(b"WSG1\x08" + ring.current_key_id.encode())
    assert len(blob) == 4 + 1 + 8 + 12 + len(plaintext) + 16
    assert ring.open(blob, b"backup:42") == plaintext
    assert ring.seal(plaintext) != ring.seal(plaintext)  # fresh nonce each time


@pytest.mark.parametrize(
    ("region", "offset", "message"),
    [
        ("magic", 0, "bad magic"),
        ("key id length", 4, "truncated|unknown key id|corrupt"),
        ("key id", 7, "unknown key id"),
        ("nonce", 13, "authentication failed"),
        ("ciphertext", 30, "authentication failed"),
        ("tag", -1, "authentication failed"),
        ("tag start", -16, "authentication failed"),
    ],
)
def test_blob_tampering_detected(ring: Keyring, region: str, offset: int, message: str) -> None:
    blob = bytearray(ring.seal(b"attack at dawn, bring snacks"))
    blob[offset] ^= 0x01
    with pytest.raises(EnvelopeError, match=message):
        ring.open(bytes(blob))


def test_blob_any_bit_flip_detected(ring: Keyring) -> None:
    blob = ring.seal(b"short secret", b"aad")
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= bit
            with pytest.raises(EnvelopeError):
                ring.open(bytes(tampered), b"aad")


def test_blob_truncation_detected(ring: Keyring) -> None:
    blob = ring.seal(b"some payload")
    for size in range(len(blob)):
        with pytest.raises(EnvelopeError):
            ring.open(blob[:size])
    with pytest.raises(EnvelopeError, match="truncated"):
        ring.open(blob[:20])


def test_blob_wrong_aad(ring: Keyring) -> None:
    blob = ring.seal(b"payload", b"env:prod")
    for aad in [b"", b"env:dev", b"env:prod "]:
        with pytest.raises(EnvelopeError, match="associated data"):
            ring.open(blob, aad)
    assert isinstance(EnvelopeError("x"), ValueError)


def test_blob_from_unknown_key(ring: Keyring, tmp_path: Path) -> None:
    other = Keyring.load_or_create(tmp_path / "other.json")
    with pytest.raises(EnvelopeError, match=f"unknown key id '{other.current_key_id}'"):
        ring.open(other.seal(b"x"))


def test_blob_and_stream_not_confused(ring: Keyring) -> None:
    with pytest.raises(EnvelopeError, match="use open_stream"):
        ring.open(seal_stream(ring, b"x"))
    with pytest.raises(EnvelopeError, match=r"use open$"):
        open_stream(ring, ring.seal(b"x"))


# --- streams -------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [CHUNK, 1 << 20])
def test_stream_round_trip(ring: Keyring, chunk_size: int) -> None:
    for size in [0, 1, chunk_size - 1, chunk_size, chunk_size + 1, 2 * chunk_size, 3 * chunk_size + 5]:
        data = bytes(i % 251 for i in range(size))
        sealed = seal_stream(ring, data, b"aad", chunk_size=chunk_size)
        records = max(1, -(-size // chunk_size))
        assert len(sealed) == STREAM_HEADER + size + 16 * records, size
        assert open_stream(ring, sealed, b"aad") == data, size


def test_stream_with_short_reads(ring: Keyring) -> None:
    data = bytes(range(256)) * 3
    out = io.BytesIO()
    ring.seal_stream(Trickle(data), out, chunk_size=CHUNK)  # type: ignore[arg-type]
    plain = io.BytesIO()
    ring.open_stream(Trickle(out.getvalue()), plain)  # type: ignore[arg-type]
    assert plain.getvalue() == data


def test_stream_truncation_detected(ring: Keyring) -> None:
    data = b"z" * (3 * CHUNK + 5)
    sealed = seal_stream(ring, data)
    assert len(sealed) == STREAM_HEADER + 4 * RECORD - (CHUNK - 5)
    cuts = set(range(0, STREAM_HEADER + 1))
    cuts |= {STREAM_HEADER + k * RECORD for k in range(4)}  # exactly at chunk boundaries
    cuts |= {STREAM_HEADER + k * RECORD + d for k in range(4) for d in (1, 16, 17, CHUNK)}
    cuts |= {len(sealed) - 1}
    for cut in sorted(c for c in cuts if c < len(sealed)):
        with pytest.raises(EnvelopeError):
            open_stream(ring, sealed[:cut])


def test_stream_of_exact_chunks_truncated_at_boundary(ring: Keyring) -> None:
    """The dangerous case: every record is full, so only the final flag tells."""
    sealed = seal_stream(ring, b"q" * (3 * CHUNK))
    assert len(sealed) == STREAM_HEADER + 3 * RECORD
    for chunks in (1, 2):
        with pytest.raises(EnvelopeError, match="chunk"):
            open_stream(ring, sealed[: STREAM_HEADER + chunks * RECORD])


def records(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[STREAM_HEADER:]
    return sealed[:STREAM_HEADER], [body[i : i + RECORD] for i in range(0, len(body), RECORD)]


@pytest.mark.parametrize(
    "variant",
    ["swap", "drop", "duplicate", "drop last", "extra after final", "final moved"],
)
def test_stream_reorder_drop_duplicate_detected(ring: Keyring, variant: str) -> None:
    header, recs = records(seal_stream(ring, bytes(range(200)) * 2))
    assert len(recs) == 7
    body = {
        "swap": [recs[1], recs[0], *recs[2:]],
        "drop": [recs[0], *recs[2:]],
        "duplicate": [recs[0], recs[0], *recs[1:]],
        "drop last": recs[:-1],
        "extra after final": [*recs, recs[-1]],
        "final moved": [*recs[:-2], recs[-1], recs[-2]],
    }[variant]
    with pytest.raises(EnvelopeError, match="chunk"):
        open_stream(ring, header + b"".join(body))


def test_stream_splice_between_streams_detected(ring: Keyring) -> None:
    header_a, recs_a = records(seal_stream(ring, b"a" * 300))
    _, recs_b = records(seal_stream(ring, b"b" * 300))
    with pytest.raises(EnvelopeError):
        open_stream(ring, header_a + b"".join([recs_a[0], recs_b[1], *recs_a[2:]]))


@pytest.mark.parametrize("offset", [0, 5, 13, 20, 24, STREAM_HEADER, STREAM_HEADER + 70, -1])
def test_stream_tampering_detected(ring: Keyring, offset: int) -> None:
    sealed = bytearray(seal_stream(ring, b"m" * 200))
    sealed[offset] ^= 0x80
    with pytest.raises(EnvelopeError):
        open_stream(ring, bytes(sealed))


def test_stream_any_bit_flip_detected(ring: Keyring) -> None:
    sealed = seal_stream(ring, b"n" * (CHUNK + 3), b"aad")
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x04
        with pytest.raises(EnvelopeError):
            open_stream(ring, bytes(tampered), b"aad")


def test_stream_wrong_aad(ring: Keyring) -> None:
    sealed = seal_stream(ring, b"data", b"backup-2024")
    with pytest.raises(EnvelopeError, match="associated data"):
        open_stream(ring, sealed, b"backup-2025")


def test_stream_rejects_bad_chunk_size(ring: Keyring) -> None:
    with pytest.raises(ValueError):
        seal_stream(ring, b"x", chunk_size=0)
