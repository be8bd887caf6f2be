"""AES-256-GCM envelopes for data at rest (backups, secrets in env files).

Blob format (``Keyring.seal``)::

    b"WSG1" | len(key_id): u8 | key_id | nonce: 12 | ciphertext + tag: 16

Stream format (``Keyring.seal_stream``)::

    b"WSS1" | len(key_id): u8 | key_id | nonce_prefix: 8 | chunk_size: u32
    then one record per chunk: ciphertext + tag (chunk_size + 16 bytes, the last
    one may be shorter)

The header is part of every chunk's associated data, so tampering with the
magic, key id or chunk size fails authentication too.  Stream chunk ``i`` uses
nonce ``nonce_prefix | i: u32`` and associated data ``header | i: u32 |
final: u8 | aad``: a chunk moved, dropped, duplicated or cut off after a
non-final chunk no longer authenticates, so truncation is an error rather
than a shorter plaintext.

Blob nonces are random, so one key should seal well under 2**32 blobs; rotate
long before that.  Each stream has a fresh random prefix (collisions are
negligible for the number of backups a key will ever see) and at most 2**32
chunks.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._fs import locked, private_dir, write_atomic
from .errors import CertificateError, EnvelopeError

__all__ = ["EnvelopeError", "Keyring"]

BLOB_MAGIC = b"WSG1"
STREAM_MAGIC = b"WSS1"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_PREFIX_SIZE = 8
_MAX_CHUNKS = 1 << 32
# Bounds what a (not yet authenticated) stream header can make us allocate.
MAX_CHUNK_SIZE = 64 << 20
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FILE_FORMAT = "wsgate-keyring"


class Keyring:
    """A set of AES-256 keys: the current one seals, all of them open."""

    def __init__(self, keys: Mapping[str, bytes], current: str, *, path: Path | None = None) -> None:
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"invalid key id {key_id!r}")
            if len(key) != KEY_SIZE:
                raise ValueError(f"key {key_id!r} is {len(key)} bytes, expected {KEY_SIZE}")
        if current not in keys:
            raise ValueError(f"current key id {current!r} is not in the keyring")
        self._keys = dict(keys)
        self._current = current
        self._path = path

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        """Load the key file, creating it (0600, with one fresh key) if missing.

        A file that group or others can access is refused: these keys protect
        backups and secrets, so a leak would be silent and total.
        """
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        private_dir(path.parent, tighten=False)
        key_id = _new_key_id(set())
        ring = cls({key_id: AESGCM.generate_key(bit_length=256)}, key_id, path=path)
        try:
            # No overwrite: if another process created it meanwhile, theirs wins
            # and we load it; replacing it would orphan whatever they sealed.
            write_atomic(path, ring._serialize(), 0o600, overwrite=False)
        except FileExistsError:
            return cls._load(path)
        return ring

    @classmethod
    def _load(cls, path: Path) -> Keyring:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            if mode & 0o077:
                raise CertificateError(
                    f"{path}: key file is accessible by group/others (mode {mode:04o}); fix it with `chmod 600 {path}`"
                )
            data = f.read()
        try:
            doc = json.loads(data)
            if doc.get("format") != _FILE_FORMAT or doc.get("version") != 1:
                raise ValueError("unknown format or version")
            keys = {str(key_id): base64.b64decode(value, validate=True) for key_id, value in doc["keys"].items()}
            return cls(keys, str(doc["current"]), path=path)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise CertificateError(f"{path}: invalid keyring file: {exc}") from None

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def path(self) -> Path | None:
        return self._path

    def rotate(self) -> str:
        """Add a new current key (old keys stay for opening) and persist atomically."""
        if self._path is None:
            key_id = _new_key_id(set(self._keys))
            self._keys[key_id] = AESGCM.generate_key(bit_length=256)
            self._current = key_id
            return key_id
        with locked(self._path.with_name(self._path.name + ".lock")):
            # Merge with what is on disk so a concurrent rotation's key survives.
            on_disk = self._load(self._path)
            keys = {**self._keys, **on_disk._keys}
            key_id = _new_key_id(set(keys))
            keys[key_id] = AESGCM.generate_key(bit_length=256)
            new = Keyring(keys, key_id, path=self._path)
            write_atomic(self._path, new._serialize(), 0o600)
        self._keys, self._current = new._keys, new._current
        return key_id

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` with the current key; ``aad`` must be given again to open."""
        header = _header(BLOB_MAGIC, self._current)
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + AESGCM(self._keys[self._current]).encrypt(nonce, plaintext, header + aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt a blob from ``seal``; raises ``EnvelopeError`` on any problem."""
        magic = blob[:4]
        if magic != BLOB_MAGIC:
            if len(magic) < 4:
                raise EnvelopeError("envelope truncated: shorter than its magic")
            if magic == STREAM_MAGIC:
                raise EnvelopeError("this is a stream envelope; use open_stream")
            raise EnvelopeError(f"not a wsgate envelope: bad magic {magic!r}")
        key_id, pos = _parse_key_id(blob, 4)
        key = self._key(key_id)
        body = blob[pos:]
        if len(body) < NONCE_SIZE + TAG_SIZE:
            raise EnvelopeError("envelope truncated: missing nonce or authentication tag")
        try:
            return AESGCM(key).decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], blob[:pos] + aad)
        except InvalidTag:
            raise EnvelopeError(
                "envelope authentication failed: data was tampered with or the associated data (aad) differs"
            ) from None

    def seal_stream(self, src: BinaryIO, dst: BinaryIO, aad: bytes = b"", chunk_size: int = 1 << 20) -> None:
        """Encrypt ``src`` into ``dst`` chunk by chunk, in constant memory."""
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
        header = _header(STREAM_MAGIC, self._current) + os.urandom(_PREFIX_SIZE) + struct.pack(">I", chunk_size)
        prefix = header[-4 - _PREFIX_SIZE : -4]
        aes = AESGCM(self._keys[self._current])
        dst.write(header)
        chunk = _read_exact(src, chunk_size)
        index = 0
        while True:
            # Read one chunk ahead: the last chunk must be known as such when
            # it is sealed, also when the input is a multiple of chunk_size.
            nxt = _read_exact(src, chunk_size) if len(chunk) == chunk_size else b""
            final = not nxt
            dst.write(
                aes.encrypt(
                    prefix + struct.pack(">I", index),
                    chunk,
                    _chunk_aad(header, index, final, aad),
                )
            )
            if final:
                return
            chunk = nxt
            index += 1
            if index >= _MAX_CHUNKS:
                raise ValueError("stream too long for one envelope; use a larger chunk_size")

    def open_stream(self, src: BinaryIO, dst: BinaryIO, aad: bytes = b"") -> None:
        """Decrypt a ``seal_stream`` stream; raises ``EnvelopeError`` on any problem.

        Plaintext is written as each chunk authenticates, so on error ``dst``
        holds a prefix of unverified-as-a-whole data: write to a temporary
        location, and only move it into place after this returns.
        """
        fixed = _read_exact(src, 5)
        if len(fixed) < 5:
            raise EnvelopeError("stream truncated: incomplete header")
        if fixed[:4] != STREAM_MAGIC:
            if fixed[:4] == BLOB_MAGIC:
                raise EnvelopeError("this is a blob envelope; use open")
            raise EnvelopeError(f"not a wsgate stream envelope: bad magic {fixed[:4]!r}")
        rest = _read_exact(src, fixed[4] + _PREFIX_SIZE + 4)
        header = fixed + rest
        if len(rest) < fixed[4] + _PREFIX_SIZE + 4:
            raise EnvelopeError("stream truncated: incomplete header")
        key_id, pos = _parse_key_id(header, 4)
        key = self._key(key_id)
        prefix = header[pos : pos + _PREFIX_SIZE]
        (chunk_size,) = struct.unpack(">I", header[pos + _PREFIX_SIZE :])
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise EnvelopeError(f"stream header corrupt: chunk size {chunk_size} out of range")
        aes = AESGCM(key)
        record_size = chunk_size + TAG_SIZE
        record = _read_exact(src, record_size)
        if not record:
            raise EnvelopeError("stream truncated: no data after the header")
        index = 0
        while True:
            nxt = _read_exact(src, record_size) if len(record) == record_size else b""
            final = not nxt
            if len(record) < TAG_SIZE:
                raise EnvelopeError(f"stream truncated in chunk {index}")
            try:
                plain = aes.decrypt(
                    prefix + struct.pack(">I", index),
                    record,
                    _chunk_aad(header, index, final, aad),
                )
            except InvalidTag:
                raise EnvelopeError(
                    f"stream authentication failed at chunk {index}: the stream was "
                    "truncated, reordered or tampered with, or the associated data differs"
                ) from None
            dst.write(plain)
            if final:
                return
            record = nxt
            index += 1
            if index >= _MAX_CHUNKS:
                raise EnvelopeError("stream has too many chunks")

    def _key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise EnvelopeError(f"unknown key id {key_id!r}: sealed with a key that is not in this keyring") from None

    def _serialize(self) -> bytes:
        doc = {
            "format": _FILE_FORMAT,
            "version": 1,
            "current": self._current,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in self._keys.items()},
        }
        return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = secrets.token_hex(4)
        if key_id not in taken:
            return key_id


def _header(magic: bytes, key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return magic + bytes([len(raw)]) + raw


def _parse_key_id(data: bytes, pos: int) -> tuple[str, int]:
    if len(data) <= pos:
        raise EnvelopeError("envelope truncated: missing key id")
    end = pos + 1 + data[pos]
    if len(data) < end:
        raise EnvelopeError("envelope truncated: incomplete key id")
    try:
        return data[pos + 1 : end].decode("ascii"), end
    except UnicodeDecodeError:
        raise EnvelopeError("envelope corrupt: key id is not ASCII") from None


def _chunk_aad(header: bytes, index: int, final: bool, aad: bytes) -> bytes:
    return header + struct.pack(">IB", index, final) + aad


def _read_exact(src: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at EOF (pipes and sockets return short reads)."""
    parts = []
    remaining = size
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
