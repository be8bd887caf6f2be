"""Versioned JSON documents (teams, routing rules, prebuilds), their audit log and change feed.

Admin state is small, read on every request from memory and changed rarely
through the API, so it is kept as whole JSON documents addressed by (kind, id).
Each has a version that starts at 1 and grows on every write: the API hands
it out as an ETag, and `if_version` turns a write into a compare-and-set so
that two admins editing the same rule cannot silently undo each other.

Two backends, like the token stores: `SQLiteDocStore` in the gateway's SQLite
file for one machine, `RedisDocStore` when replicas share Redis. In both, a
write, its generation bump and its audit entry happen in one atomic step, so
the audit log never records a change that did not happen, nor misses one.

Readers keep documents in memory and reload a kind when it changes: a
listener (`subscribe`) hears of local changes at once and, with Redis, of
other replicas' changes through pub/sub; `generation(kind)` is the cheap
number to poll for changes that nothing pushes (other processes on one
SQLite file). Compare generations for inequality only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import math
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from auth.sqlite import Database
from auth.store import now

log = logging.getLogger("wsgate.docstore")

T = TypeVar("T")
Listener = Callable[[str, str], None]

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,127}")
MAX_BODY: Final = 1 << 20  # bytes of JSON in one document
MAX_AUDIT: Final = 3 << 20  # bytes of JSON in one audit entry (it may hold a before and an after)
MAX_DEPTH: Final = 64
MAX_AUDIT_PAGE: Final = 1000
AUDIT_CAP: Final = 100_000  # Redis keeps about this many entries (SQLite keeps them all)
# Set by the store on every audit entry; a caller's value under these names is replaced.
AUDIT_KEYS: Final = ("seq", "time", "kind", "id", "version")


@dataclass(frozen=True, slots=True)
class Doc:
    kind: str  # "team", "rule", "prebuild", ...
    id: str
    body: Mapping[str, Any]  # a JSON object
    version: int  # 1 on create, +1 on every put; the ETag
    updated: float  # unix time of the last put


class Conflict(Exception):
    """`if_version` did not match; `.current` is the document as it is now (None: it does not exist)."""

    def __init__(self, current: Doc | None) -> None:
        have = f"version {current.version}" if current is not None else "no document"
        super().__init__(f"the document changed: the store has {have}")
        self.current = current


class StoreUnavailable(Exception):
    """The backend cannot be reached (Redis restarting, a locked file); retry later."""


def check_name(what: str, value: str) -> str:
    """A kind or id as it may appear in a key: no separators, no injection, bounded."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what}: expected 1 to 128 of a-z 0-9 _ . : - starting with a letter or digit, got {value!r}")
    return value


def _check(kind: str, id: str, if_version: int | None = None) -> None:
    check_name("kind", kind)
    check_name("id", id)
    if if_version is not None and (isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < 0):
        raise ValueError(f"if_version: expected None or an integer >= 0, got {if_version!r}")


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """A plain JSON copy of `value` (dicts, lists, str, int, finite float, bool, None); ValueError names where not."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, (builtins.list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise ValueError(f"{where}: {type(value).__name__} is not JSON")


def encode_body(body: Mapping[str, Any]) -> str:
    if not isinstance(body, Mapping):
        raise ValueError(f"body: expected a JSON object, got {type(body).__name__}")
    text = json.dumps(_plain(body, "body"), separators=(",", ":"))
    if len(text) > MAX_BODY:
        raise ValueError(f"body: {len(text)} bytes of JSON, at most {MAX_BODY}")
    return text


def encode_audit(audit: Mapping[str, Any], kind: str, id: str) -> str:
    """The entry as JSON, with the document's kind and id set by the store (seq, time, version come later)."""
    if not isinstance(audit, Mapping):
        raise ValueError(f"audit: expected a JSON object, got {type(audit).__name__}")
    entry = {k: v for k, v in _plain(audit, "audit").items() if k not in AUDIT_KEYS}
    text = json.dumps({**entry, "kind": kind, "id": id}, separators=(",", ":"))
    if len(text) > MAX_AUDIT:
        raise ValueError(f"audit: {len(text)} bytes of JSON, at most {MAX_AUDIT}")
    return text


def _check_page(limit: int, before: int | None, kind: str | None) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
        raise ValueError(f"limit: expected 1 to {MAX_AUDIT_PAGE}, got {limit!r}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int) or before < 0):
        raise ValueError(f"before: expected a seq (an integer >= 0), got {before!r}")
    if kind is not None:
        check_name("kind", kind)


class DocStore(ABC):
    """Documents by (kind, id) with versions, an audit log and change listeners."""

    # Whether other replicas' changes arrive over a channel that can be lost (`listening`).
    replicated: ClassVar[bool] = False

    def __init__(self) -> None:
        self._listeners: builtins.list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """`listener(kind, id)` runs on the event loop after every change; id "*" means reload the whole kind."""
        self._listeners.append(listener)

    def _notify(self, kind: str, id: str) -> None:
        for listener in builtins.list(self._listeners):
            try:
                listener(kind, id)
            except Exception:  # one broken listener must not fail a write that happened, nor the others
                log.exception("event=docstore_listener_failed kind=%s id=%s", kind, id)

    @property
    def listening(self) -> bool:
        """Whether changes made by other replicas are being heard right now."""
        return True

    async def announce(self, kind: str) -> None:  # noqa: B027 - one process has no one to tell
        """Tells every other replica's listeners (kind, "all") without storing anything."""

    @abstractmethod
    async def bump(self, kind: str) -> None:
        """Moves `kind`'s generation and tells every listener, here and elsewhere, storing nothing else:
        how a process that keeps no documents of the kind (the CLI) makes the others reload."""

    def follow(self, kind: str) -> None:  # noqa: B027 - one process misses nothing
        """Listeners hear (kind, "*") after the change channel was lost and is back."""

    async def open(self) -> None:  # noqa: B027 - optional
        pass

    async def close(self) -> None:  # noqa: B027 - optional
        pass

    @abstractmethod
    async def get(self, kind: str, id: str) -> Doc | None: ...

    @abstractmethod
    async def list(self, kind: str) -> builtins.list[Doc]:
        """Every document of `kind`, sorted by id."""

    async def versions(self, kind: str) -> dict[str, int]:
        """Every document id of `kind` with its version: what changed since a load, without the bodies."""
        return {doc.id: doc.version for doc in await self.list(kind)}

    @abstractmethod
    async def put(
        self,
        kind: str,
        id: str,
        body: Mapping[str, Any],
        *,
        if_version: int | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> Doc:
        """Creates or replaces a document; with `audit`, logs that entry in the same atomic step.

        `if_version`: None writes unconditionally, 0 only if the document does
        not exist, N only if its version is N; otherwise Conflict and nothing is written.
        """

    @abstractmethod
    async def delete(
        self, kind: str, id: str, *, if_version: int | None = None, audit: Mapping[str, Any] | None = None
    ) -> Doc | None:
        """The deleted document, or None if there was none (nothing is then logged)."""

    @abstractmethod
    async def generation(self, kind: str) -> int:
        """A number that changes on every change of `kind` (0 before the first)."""

    @abstractmethod
    async def audit(
        self, *, limit: int = 100, before: int | None = None, kind: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Entries newest first, each with the store's "seq", "time", "kind", "id" and "version".

        `before` pages back: only entries whose seq is lower.
        """


def _doc(kind: str, id: str, body: str, version: int, updated: float) -> Doc:
    return Doc(kind, id, json.loads(body), int(version), float(updated))


class KindFollower:
    """Keeps what a process derived from one kind current.

    `reload` runs at once when a change is notified (a local write, a Redis
    message) and whenever the kind's generation moved without a notice (another
    process on SQLite, a missed message). `reload` records the generation it
    loaded in `generation`. A store outage keeps the last load and is logged.
    """

    POLL_INTERVAL: Final = 0.5

    def __init__(self, docs: DocStore, kind: str, reload: Callable[[], Awaitable[None]], failed: str) -> None:
        self.docs = docs
        self.kind = kind
        self.generation = -1
        self._reload = reload
        self._failed = failed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        docs.subscribe(self._changed)

    def _changed(self, kind: str, _id: str) -> None:
        if kind == self.kind:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.POLL_INTERVAL)
            self._wake.clear()
            try:
                if await self.docs.generation(self.kind) != self.generation:
                    await self._reload()
            except StoreUnavailable as e:
                log.warning("event=reload_failed kind=%s what=%r error=%r", self.kind, self._failed, str(e))


# --- SQLite ------------------------------------------------------------------------------
_BUMP: Final = "INSERT INTO generations (kind, n) VALUES (?, 1) ON CONFLICT (kind) DO UPDATE SET n = n + 1"


class SQLiteDocStore(DocStore):
    """Documents in the gateway's SQLite file, for one machine.

    Every write is one `BEGIN IMMEDIATE` transaction (the check, the write, the
    generation and the audit row), so worker processes on the same file
    serialise on SQLite's lock. Nothing pushes their changes to each other:
    they poll `generation`, which is one primary-key read.
    """

    def __init__(self, db: Database | Path) -> None:
        super().__init__()
        self._owns_db = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db)

    async def open(self) -> None:
        await self._run(lambda c: None, write=False)

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        try:
            return await self.db.run(fn, write=write)
        except sqlite3.OperationalError as e:  # locked beyond the busy timeout, disk full, I/O error
            raise StoreUnavailable(f"document store unavailable ({self.db.path}): {e}") from e

    @staticmethod
    def _current(c: sqlite3.Connection, kind: str, id: str) -> Doc | None:
        row = c.execute("SELECT body, version, updated FROM docs WHERE kind = ? AND id = ?", (kind, id)).fetchone()
        return _doc(kind, id, row["body"], row["version"], row["updated"]) if row else None

    @staticmethod
    def _changed(c: sqlite3.Connection, kind: str, when: float, audit: str | None, version: int) -> None:
        c.execute(_BUMP, (kind,))
        if audit is not None:
            entry = json.dumps({**json.loads(audit), "version": version}, separators=(",", ":"))
            c.execute("INSERT INTO audit (time, kind, entry) VALUES (?, ?, ?)", (when, kind, entry))

    async def get(self, kind: str, id: str) -> Doc | None:
        _check(kind, id)
        return await self._run(lambda c: self._current(c, kind, id), write=False)

    async def list(self, kind: str) -> builtins.list[Doc]:
        check_name("kind", kind)

        def read(c: sqlite3.Connection) -> builtins.list[Doc]:
            rows = c.execute("SELECT id, body, version, updated FROM docs WHERE kind = ? ORDER BY id", (kind,))
            return [_doc(kind, r["id"], r["body"], r["version"], r["updated"]) for r in rows]

        return await self._run(read, write=False)

    async def versions(self, kind: str) -> dict[str, int]:
        check_name("kind", kind)

        def read(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute("SELECT id, version FROM docs WHERE kind = ?", (kind,))
            return {r["id"]: int(r["version"]) for r in rows}

        return await self._run(read, write=False)

    async def put(
        self,
        kind: str,
        id: str,
        body: Mapping[str, Any],
        *,
        if_version: int | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> Doc:
        _check(kind, id, if_version)
        text = encode_body(body)
        entry = encode_audit(audit, kind, id) if audit is not None else None

        def write(c: sqlite3.Connection) -> Doc:
            current = self._current(c, kind, id)
            have = current.version if current is not None else 0
            if if_version is not None and if_version != have:
                raise Conflict(current)
            base = have
            if current is None:
                row = c.execute("SELECT version FROM tombstones WHERE kind = ? AND id = ?", (kind, id)).fetchone()
                base = int(row["version"]) if row else 0
                c.execute("DELETE FROM tombstones WHERE kind = ? AND id = ?", (kind, id))
            doc = _doc(kind, id, text, base + 1, now())
            c.execute(
                "INSERT INTO docs (kind, id, body, version, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, version = excluded.version, "
                "updated = excluded.updated",
                (kind, id, text, doc.version, doc.updated),
            )
            self._changed(c, kind, doc.updated, entry, doc.version)
            return doc

        doc = await self._run(write, write=True)
        self._notify(kind, id)
        return doc

    async def delete(
        self, kind: str, id: str, *, if_version: int | None = None, audit: Mapping[str, Any] | None = None
    ) -> Doc | None:
        _check(kind, id, if_version)
        entry = encode_audit(audit, kind, id) if audit is not None else None

        def write(c: sqlite3.Connection) -> Doc | None:
            current = self._current(c, kind, id)
            if if_version is not None and if_version != (current.version if current is not None else 0):
                raise Conflict(current)
            if current is None:
                return None
            c.execute("DELETE FROM docs WHERE kind = ? AND id = ?", (kind, id))
            c.execute(
                "INSERT INTO tombstones (kind, id, version) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version",
                (kind, id, current.version),
            )
            self._changed(c, kind, now(), entry, current.version)
            return current

        doc = await self._run(write, write=True)
        if doc is not None:
            self._notify(kind, id)
        return doc

    async def bump(self, kind: str) -> None:
        check_name("kind", kind)

        def write(c: sqlite3.Connection) -> None:
            c.execute(_BUMP, (kind,))

        await self._run(write, write=True)
        self._notify(kind, "all")

    async def generation(self, kind: str) -> int:
        check_name("kind", kind)

        def read(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT n FROM generations WHERE kind = ?", (kind,)).fetchone()
            return int(row["n"]) if row else 0

        return await self._run(read, write=False)

    async def audit(
        self, *, limit: int = 100, before: int | None = None, kind: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        _check_page(limit, before, kind)

        def read(c: sqlite3.Connection) -> builtins.list[dict[str, Any]]:
            rows = c.execute(
                "SELECT seq, time, entry FROM audit WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR seq < ?2) "
                "ORDER BY seq DESC LIMIT ?3",
                (kind, before, limit),
            )
            return [{**json.loads(r["entry"]), "seq": int(r["seq"]), "time": float(r["time"])} for r in rows]

        return await self._run(read, write=False)


# --- Redis -------------------------------------------------------------------------------
CHANNEL: Final = "wsgate:changes"
_DOCS_KEY: Final = "wsgate:doc:"  # + kind: hash id -> {"version", "updated", "body"}
_GEN_KEY: Final = "wsgate:gen:"  # + kind: the generation counter
_AUDIT_KEY: Final = "wsgate:audit"  # stream, entry ids "<seq>-0", field "e" = the entry's JSON
_AUDIT_KIND_KEY: Final = "wsgate:audit-kind:"  # + kind: the same entries, for `audit(kind=...)`
_AUDIT_SEQ_KEY: Final = "wsgate:audit-seq"
# Last versions of deleted documents: versions never restart, so an old If-Match cannot match a new doc.
_TOMB_KEY: Final = "wsgate:tomb:"
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_ECHO_WINDOW: Final = 5.0  # how long a write of ours waits for its own pub/sub message

# One write (put or delete) as a single atomic step. Redis does not roll a
# script back when a command fails, so the only command that can fail on
# data (XADD, if the stream's ids ran ahead of the counter) comes first.
# The record is built by concatenation with "version" first, so reading the
# version back needs no JSON decoding of the body.
_WRITE: Final = """
local op, id, body, if_version, now, audit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cur = redis.call('HGET', KEYS[1], id)
local have = 0
if cur then
  local m = string.match(cur, '^{"version":(%d+),')
  if m then have = tonumber(m) else have = cjson.decode(cur)['version'] end
end
if if_version ~= '' and tonumber(if_version) ~= have then
  return {'conflict', have, cur}
end
if op == 'delete' and not cur then
  return {'absent', 0, false}
end
local base = have
if not cur then
  local tomb = redis.call('HGET', KEYS[6], id)
  if tomb then base = tonumber(tomb) end
end
local version = base + 1
if op == 'delete' then version = have end
if audit ~= '' then
  local seq = redis.call('INCR', KEYS[5])
  for _, key in ipairs({KEYS[3], KEYS[4]}) do
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
    if last then
      local n = tonumber(string.match(last[1], '^(%d+)'))
      if n >= seq then seq = n + 1 end
    end
  end
  redis.call('SET', KEYS[5], seq)
  local entry = '{"seq":' .. seq .. ',"time":' .. now .. ',"version":' .. version .. ',' .. string.sub(audit, 2)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'e', entry)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'e', entry)
end
if op == 'put' then
  redis.call('HSET', KEYS[1], id, '{"version":' .. version .. ',"updated":' .. now .. ',"body":' .. body .. '}')
  redis.call('HDEL', KEYS[6], id)
else
  redis.call('HDEL', KEYS[1], id)
  redis.call('HSET', KEYS[6], id, have)
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[8])
end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[9], ARGV[10])
return {'ok', version, cur}
"""


# id, version, id, version, ... of one kind: the version is read off the front of each record
# (see _WRITE), so no body crosses the network or is decoded.
_VERSIONS: Final = """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local m = string.match(all[i + 1], '^{"version":(%d+),')
  out[#out + 1] = all[i]
  if m then out[#out + 1] = tonumber(m) else out[#out + 1] = cjson.decode(all[i + 1])['version'] end
end
return out
"""


def _record(kind: str, id: str, raw: str) -> Doc:
    data = json.loads(raw)
    return Doc(kind, id, data["body"], int(data["version"]), float(data["updated"]))


class RedisDocStore(DocStore):
    """Documents in Redis, shared by every replica; changes reach the others through pub/sub.

    Every operation is bounded by `timeout` and fails with StoreUnavailable
    rather than wait for a Redis that is gone; none is retried, because a write
    sent twice would be applied twice. The subscriber started by `open()`
    reconnects on its own and then tells listeners to reload every kind they
    may have missed changes of: (kind, "*").
    """

    replicated: ClassVar[bool] = True

    def __init__(self, url: str, *, timeout: float = 2.0, audit_cap: int = AUDIT_CAP) -> None:
        super().__init__()
        self.url = url
        self.timeout = timeout
        self.audit_cap = audit_cap
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._write = self._redis.register_script(_WRITE)
        self._versions = self._redis.register_script(_VERSIONS)
        kw = self._redis.connection_pool.connection_kwargs
        self._where = f"redis {kw.get('host', '?')}:{kw.get('port', '?')}"  # never the password
        self._kinds: set[str] = set()
        self._echoes: dict[tuple[str, str], builtins.list[float]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Starts the subscriber and waits (up to `timeout`) for it, so changes after `open` are heard."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="wsgate-docstore-pubsub")
        with contextlib.suppress(TimeoutError):  # Redis down: the subscriber keeps trying
            await asyncio.wait_for(self._subscribed.wait(), self.timeout)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    def follow(self, kind: str) -> None:
        self._kinds.add(kind)

    async def announce(self, kind: str) -> None:
        self._kinds.add(kind)
        await self._call(self._redis.publish(CHANNEL, f"{kind}\nall"))

    async def bump(self, kind: str) -> None:
        await self._call(self._redis.incr(_GEN_KEY + self._kind(kind)))
        await self.announce(kind)

    def _kind(self, kind: str) -> str:
        self._kinds.add(check_name("kind", kind))
        return kind

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout + 0.5):  # connect, then one reconnect of a stale connection
                return await op
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"document store unavailable ({self._where}): {type(e).__name__}: {e}") from e

    async def get(self, kind: str, id: str) -> Doc | None:
        self._kind(kind)
        check_name("id", id)
        raw: str | None = await self._call(self._redis.hget(_DOCS_KEY + kind, id))
        return _record(kind, id, raw) if raw is not None else None

    async def list(self, kind: str) -> builtins.list[Doc]:
        self._kind(kind)
        raw: dict[str, str] = await self._call(self._redis.hgetall(_DOCS_KEY + kind))
        return [_record(kind, i, raw[i]) for i in sorted(raw)]

    async def versions(self, kind: str) -> dict[str, int]:
        # Read off the records in Redis: with 10,000 rules, fetching and decoding every body on
        # the event loop for each change stalled the worker's requests for a good part of a second.
        flat: builtins.list[Any] = await self._call(self._versions(keys=[_DOCS_KEY + self._kind(kind)]))
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def generation(self, kind: str) -> int:
        self._kind(kind)
        raw: str | None = await self._call(self._redis.get(_GEN_KEY + kind))
        return int(raw) if raw is not None else 0

    async def audit(
        self, *, limit: int = 100, before: int | None = None, kind: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        _check_page(limit, before, kind)
        if before is not None and before <= 1:
            return []
        key = _AUDIT_KEY if kind is None else _AUDIT_KIND_KEY + self._kind(kind)
        top = "+" if before is None else str(before - 1)  # ids are "<seq>-0"; "<n>" alone ends at <n>-max
        rows: builtins.list[tuple[str, dict[str, str]]] = await self._call(
            self._redis.xrevrange(key, max=top, min="-", count=limit)
        )
        return [json.loads(fields["e"]) for _, fields in rows]

    async def put(
        self,
        kind: str,
        id: str,
        body: Mapping[str, Any],
        *,
        if_version: int | None = None,
        audit: Mapping[str, Any] | None = None,
    ) -> Doc:
        self._kind(kind)
        _check(kind, id, if_version)
        text = encode_body(body)
        status, version, raw, when = await self._run("put", kind, id, text, if_version, audit)
        if status == "conflict":
            raise Conflict(_record(kind, id, raw) if raw else None)
        self._notify(kind, id)
        return Doc(kind, id, json.loads(text), version, when)

    async def delete(
        self, kind: str, id: str, *, if_version: int | None = None, audit: Mapping[str, Any] | None = None
    ) -> Doc | None:
        self._kind(kind)
        _check(kind, id, if_version)
        status, _, raw, _ = await self._run("delete", kind, id, "", if_version, audit)
        if status == "conflict":
            raise Conflict(_record(kind, id, raw) if raw else None)
        if status == "absent" or raw is None:
            return None
        self._notify(kind, id)
        return _record(kind, id, raw)

    async def _run(
        self, op: str, kind: str, id: str, body: str, if_version: int | None, audit: Mapping[str, Any] | None
    ) -> tuple[str, int, str | None, float]:
        """Runs the write script: (status, version, the record before as stored, time)."""
        entry = encode_audit(audit, kind, id) if audit is not None else ""
        when = now()
        keys = [
            _DOCS_KEY + kind, _GEN_KEY + kind, _AUDIT_KEY, _AUDIT_KIND_KEY + kind, _AUDIT_SEQ_KEY, _TOMB_KEY + kind,
        ]  # fmt: skip
        args = [
            op, id, body, "" if if_version is None else str(if_version), repr(when), entry, self.audit_cap,
            # A generation starts at the time in microseconds, so that after a Redis that lost
            # its data comes back it is still ahead of every value a poller saw before.
            str(int(when * 1_000_000)),
            CHANNEL, f"{kind}\n{id}",
        ]  # fmt: skip
        # Expected before sending: the echo may be read before the reply is. If the call
        # fails the write may still have happened, so the expectation stays until it expires.
        echo = self._expect_echo(kind, id)
        status, version, raw = await self._call(self._write(keys=keys, args=args))
        if status != "ok":
            self._drop_echo(kind, id, echo)
        return str(status), int(version), raw, when

    # --- change notification ---------------------------------------------------------
    # A local write notifies its own listeners at once; its pub/sub message
    # (the "echo") is then recognised and not delivered a second time.
    def _expect_echo(self, kind: str, id: str) -> float | None:
        if not self._subscribed.is_set():
            return None
        deadline = time.monotonic() + _ECHO_WINDOW
        self._echoes.setdefault((kind, id), []).append(deadline)
        return deadline

    def _drop_echo(self, kind: str, id: str, deadline: float | None) -> None:
        pending = self._echoes.get((kind, id))
        if deadline is not None and pending and deadline in pending:
            pending.remove(deadline)

    def _is_echo(self, kind: str, id: str) -> bool:
        pending = self._echoes.get((kind, id))
        if not pending:
            return False
        t = time.monotonic()
        pending[:] = [d for d in pending if d > t]
        if not pending:
            del self._echoes[(kind, id)]
            return False
        pending.pop(0)
        return True

    def _message(self, data: str) -> None:
        kind, _, id = data.partition("\n")
        if not _NAME.fullmatch(kind) or not _NAME.fullmatch(id):
            log.warning("event=docstore_bad_message data=%r", data[:200])
            return
        self._kinds.add(kind)
        if not self._is_echo(kind, id):
            self._notify(kind, id)

    async def _listen(self) -> None:
        """Holds the subscription forever: reconnects with backoff, then has every seen kind reloaded."""
        delay = _BACKOFF_MIN
        failing = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:  # the confirmation, before which messages could be missed
                    msg = await pubsub.get_message(timeout=self.timeout)
                    if msg is None:
                        raise TimeoutError("no confirmation of SUBSCRIBE")
                    if msg["type"] == "subscribe":
                        break
                self._echoes.clear()  # echoes sent to the old connection will not come
                self._subscribed.set()
                if failing:
                    log.warning("event=docstore_subscriber_reconnected where=%s", self._where)
                failing, delay = False, _BACKOFF_MIN
                for kind in sorted(self._kinds):
                    self._notify(kind, "*")
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg["type"] == "message":
                        self._message(str(msg["data"]))
            except (RedisError, OSError, TimeoutError) as e:
                self._subscribed.clear()
                if not failing:
                    reason = f"{type(e).__name__}: {e}"
                    log.warning("event=docstore_subscriber_lost where=%s error=%r", self._where, reason)
                failing = True
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
