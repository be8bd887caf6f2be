"""The document store on both backends: a SQLite file in tmp_path and a real `redis-server`.

Most tests run once per backend against the public methods the teams, rules
and prebuild code call. What is checked is what an admin relies on: a stale
If-Match is refused and says what is there now, the audit log records
exactly the writes that happened, and every process hears of a change (and,
after Redis comes back, is told to reload what it may have missed).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from redis_server import RedisServer

import auth.sqlite
from auth.docstore import (
    Conflict,
    DocStore,
    RedisDocStore,
    SQLiteDocStore,
    StoreUnavailable,
)
from auth.sqlite import Database
from auth.tokens import SQLiteTokenStore

T = TypeVar("T")

BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.slow)]
OUTAGE_BOUND = 3.0  # seconds an operation may take against a Redis that is gone or hung


def open_store(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> DocStore:
    if backend == "sqlite":
        return SQLiteDocStore(tmp_path / "state" / "wsgate.db")
    return RedisDocStore(str(request.getfixturevalue("redis_url")))


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocStore]:
    s = open_store(request, tmp_path, request.param)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=BACKENDS)
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[DocStore, DocStore]]:
    """Two stores on the same data, as two worker processes (or replicas) have them."""
    a, b = open_store(request, tmp_path, request.param), open_store(request, tmp_path, request.param)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


class Heard:
    """A listener that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, id: str) -> None:
        self.calls.append((kind, id))


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check()` holds; fails the test after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def timed(call: Awaitable[T]) -> tuple[T | BaseException, float]:
    start = time.monotonic()
    try:
        result: T | BaseException = await call
    except Exception as e:
        result = e
    return result, time.monotonic() - start


# --- documents -----------------------------------------------------------------------------
async def test_create_get_list_and_conditional_put(store: DocStore) -> None:
    assert await store.get("rule", "r1") is None
    assert await store.list("rule") == []
    before = time.time()
    body = {"host": "app.example.com", "paths": ["/a", "/b"], "nested": {"n": 1, "f": 0.5, "ok": True, "no": None}}
    doc = await store.put("rule", "r1", body, if_version=0)
    assert (doc.kind, doc.id, doc.version, dict(doc.body)) == ("rule", "r1", 1, body)
    assert before - 1 <= doc.updated <= time.time() + 1
    assert await store.get("rule", "r1") == doc

    with pytest.raises(Conflict) as e:  # create-only, and it exists
        await store.put("rule", "r1", {"x": 1}, if_version=0)
    assert e.value.current == doc
    doc2 = await store.put("rule", "r1", {"x": 2}, if_version=1)
    assert doc2.version == 2 and doc2.body == {"x": 2}
    with pytest.raises(Conflict) as e:  # a stale If-Match
        await store.put("rule", "r1", {"x": 3}, if_version=1)
    assert e.value.current == doc2
    assert (await store.put("rule", "r1", {"x": 4})).version == 3  # unconditional
    with pytest.raises(Conflict) as e:
        await store.put("rule", "ghost", {"x": 1}, if_version=4)
    assert e.value.current is None
    assert await store.get("rule", "ghost") is None

    for id in ("r3", "r0", "r2"):
        await store.put("rule", id, {"id": id})
    await store.put("team", "r9", {"other": "kind"})
    assert [d.id for d in await store.list("rule")] == ["r0", "r1", "r2", "r3"]
    assert [(d.id, d.version) for d in await store.list("team")] == [("r9", 1)]
    assert (await store.get("rule", "r1")) == (await store.list("rule"))[1]


async def test_delete_with_and_without_if_version(store: DocStore) -> None:
    assert await store.delete("team", "none") is None
    assert await store.delete("team", "none", if_version=0) is None  # "must not exist" holds
    with pytest.raises(Conflict) as e:
        await store.delete("team", "none", if_version=3)
    assert e.value.current is None

    doc = await store.put("team", "acme", {"members": ["dev:alice"]})
    doc = await store.put("team", "acme", {"members": ["dev:alice", "dev:bob"]})
    with pytest.raises(Conflict) as e:
        await store.delete("team", "acme", if_version=1)
    assert e.value.current == doc
    assert await store.get("team", "acme") == doc
    assert await store.delete("team", "acme", if_version=2) == doc
    assert await store.get("team", "acme") is None
    assert await store.delete("team", "acme") is None

    await store.put("team", "other", {})
    deleted = await store.delete("team", "other")
    assert deleted is not None and deleted.version == 1
    assert await store.list("team") == []
    # Created again, a document continues its versions (an ETag from before the delete cannot match).
    assert (await store.put("team", "acme", {}, if_version=0)).version == 3


async def test_generation_moves_on_every_change_of_its_kind_only(store: DocStore) -> None:
    g0 = await store.generation("rule")
    await store.put("rule", "a", {})
    g1 = await store.generation("rule")
    assert g1 > g0
    await store.put("team", "a", {})
    assert await store.generation("rule") == g1
    with pytest.raises(Conflict):
        await store.put("rule", "a", {}, if_version=7)
    assert await store.delete("rule", "missing") is None
    assert await store.generation("rule") == g1  # nothing changed
    await store.put("rule", "a", {"v": 2})
    g2 = await store.generation("rule")
    await store.delete("rule", "a")
    g3 = await store.generation("rule")
    assert g1 < g2 < g3


# --- audit -----------------------------------------------------------------------------------
async def test_audit_newest_first_with_seq_time_and_kind_filter(store: DocStore) -> None:
    assert await store.audit() == []
    start = time.time()
    await store.put("team", "t1", {"m": 1}, audit={"actor": "dev:alice", "action": "create"})
    await store.put("rule", "r1", {"h": 1}, audit={"actor": "dev:bob", "action": "create", "seq": -5, "time": 1})
    await store.put("team", "t1", {"m": 2})  # no audit asked for: none written
    await store.put("team", "t1", {"m": 3}, audit={"actor": "dev:alice", "action": "update", "before": {"m": 2}})
    await store.delete("team", "t1", audit={"actor": "dev:carol", "action": "delete"})

    entries = await store.audit()
    assert [(e["kind"], e["id"], e["actor"], e["action"]) for e in entries] == [
        ("team", "t1", "dev:carol", "delete"),
        ("team", "t1", "dev:alice", "update"),
        ("rule", "r1", "dev:bob", "create"),
        ("team", "t1", "dev:alice", "create"),
    ]
    seqs = [e["seq"] for e in entries]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 4
    assert all(start - 1 <= e["time"] <= time.time() + 1 for e in entries)  # the store's clock, not the caller's
    assert [e["version"] for e in entries] == [3, 3, 1, 1]  # the version written (or deleted)
    assert entries[1]["before"] == {"m": 2}

    teams = await store.audit(kind="team")
    assert [e["seq"] for e in teams] == [seqs[0], seqs[1], seqs[3]]
    assert [e["id"] for e in await store.audit(kind="rule")] == ["r1"]
    assert await store.audit(kind="prebuild") == []
    assert [e["seq"] for e in await store.audit(limit=2)] == seqs[:2]
    assert [e["seq"] for e in await store.audit(before=seqs[1])] == seqs[2:]  # pages back
    assert [e["seq"] for e in await store.audit(before=seqs[1], kind="team", limit=1)] == [seqs[3]]
    assert await store.audit(before=seqs[3]) == []
    for bad in ({"limit": 0}, {"limit": 100_000}, {"before": -1}, {"kind": "Team"}):
        with pytest.raises(ValueError):
            await store.audit(**bad)


async def test_a_refused_write_leaves_no_audit_entry(store: DocStore) -> None:
    await store.put("rule", "r", {"v": 1}, audit={"action": "create"})
    generation = await store.generation("rule")
    for write in (
        store.put("rule", "r", {"v": 2}, if_version=0, audit={"action": "create again"}),
        store.put("rule", "r", {"v": 2}, if_version=9, audit={"action": "stale update"}),
        store.delete("rule", "r", if_version=9, audit={"action": "stale delete"}),
    ):
        with pytest.raises(Conflict):
            await write
    assert [e["action"] for e in await store.audit()] == ["create"]
    assert (await store.get("rule", "r")) is not None and (await store.get("rule", "r")).body == {"v": 1}  # type: ignore[union-attr]
    assert await store.generation("rule") == generation


async def test_names_and_bodies_are_checked(store: DocStore) -> None:
    bad_names = ["", "Team", "a b", "a\nb", "a/b", "../x", "*", "-x", "x" * 129, "é", "a\x00"]
    for name in bad_names:
        with pytest.raises(ValueError):
            await store.put(name, "ok", {})
        with pytest.raises(ValueError):
            await store.put("rule", name, {})
        with pytest.raises(ValueError):
            await store.get("rule", name)
        with pytest.raises(ValueError):
            await store.delete(name, "ok")
    for body in ([1, 2], "text", {"s": {1, 2}}, {"f": float("nan")}, {"o": object()}, {1: "int key"}, {"b": b"x"}):
        with pytest.raises(ValueError):
            await store.put("rule", "ok", body)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.put("rule", "ok", {}, audit={"when": time})
    for version in (-1, True, "1", 1.0):
        with pytest.raises(ValueError):
            await store.put("rule", "ok", {}, if_version=version)  # type: ignore[arg-type]
    assert await store.list("rule") == [] and await store.audit() == []
    # Allowed: the punctuation of ids such as "github:acme-inc" or "v1.2_x".
    doc = await store.put("rule", "github:acme-inc.v1_2", {"t": ("a", "b")})
    assert doc.body == {"t": ["a", "b"]}


# --- listeners -------------------------------------------------------------------------------
async def test_listeners_hear_local_changes_at_once_and_once(store: DocStore) -> None:
    heard = Heard()

    def broken(kind: str, id: str) -> None:
        raise RuntimeError("a listener with a bug")

    store.subscribe(broken)
    store.subscribe(heard)
    await store.put("team", "a", {})
    assert heard.calls == [("team", "a")]  # before put returned
    await store.delete("team", "a")
    assert heard.calls == [("team", "a"), ("team", "a")]
    with pytest.raises(Conflict):
        await store.put("team", "a", {}, if_version=5)
    assert await store.delete("team", "a") is None
    await asyncio.sleep(0.3)  # with Redis: its own pub/sub echo is not delivered a second time
    assert heard.calls == [("team", "a"), ("team", "a")]


async def test_two_stores_on_the_same_data(pair: tuple[DocStore, DocStore]) -> None:
    a, b = pair
    seen = await b.generation("rule")
    await a.put("rule", "r", {"by": "a"})
    assert (await b.get("rule", "r")).body == {"by": "a"}  # type: ignore[union-attr]
    assert await b.generation("rule") != seen
    await b.put("rule", "r", {"by": "b"}, if_version=1)
    assert (await a.get("rule", "r")).version == 2  # type: ignore[union-attr]
    assert [e["id"] for e in await a.audit()] == []  # neither asked for an audit entry


async def test_concurrent_conditional_puts_exactly_one_wins(pair: tuple[DocStore, DocStore]) -> None:
    a, b = pair
    await a.put("rule", "r", {"n": 0})
    for n in range(1, 11):
        results = await asyncio.gather(
            a.put("rule", "r", {"n": n, "by": "a"}, if_version=n, audit={"by": "a"}),
            b.put("rule", "r", {"n": n, "by": "b"}, if_version=n, audit={"by": "b"}),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], Conflict), results
        assert lost[0].current is not None and lost[0].current.version == n + 1
    final = await b.get("rule", "r")
    assert final is not None and final.version == 11
    assert len(await a.audit()) == 10  # one entry per winning write, none for the losers


@pytest.mark.slow
async def test_redis_change_reaches_another_store_through_pubsub(redis_url: str) -> None:
    a, b = RedisDocStore(redis_url), RedisDocStore(redis_url)
    await a.open()
    await b.open()
    try:
        heard_a, heard_b = Heard(), Heard()
        a.subscribe(heard_a)
        b.subscribe(heard_b)
        await a.put("rule", "r1", {"v": 1})
        took = await eventually(lambda: ("rule", "r1") in heard_b.calls, 1.0, "b hears a's put")
        assert took < 1.0
        await b.delete("rule", "r1")
        await eventually(lambda: heard_a.calls.count(("rule", "r1")) == 2, 1.0, "a hears b's delete")
        await asyncio.sleep(0.2)
        assert heard_a.calls == [("rule", "r1"), ("rule", "r1")]  # its own put, then b's delete
        assert heard_b.calls == [("rule", "r1"), ("rule", "r1")]
    finally:
        await a.close()
        await b.close()


# --- Redis gone, hung, and back --------------------------------------------------------------
def every_operation(s: DocStore) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    return [
        ("get", lambda: s.get("rule", "r")),
        ("list", lambda: s.list("rule")),
        ("put", lambda: s.put("rule", "r", {"v": 9})),
        ("conditional put", lambda: s.put("rule", "r", {"v": 9}, if_version=1, audit={"a": 1})),
        ("delete", lambda: s.delete("rule", "r")),
        ("generation", lambda: s.generation("rule")),
        ("audit", lambda: s.audit(kind="rule")),
    ]


@pytest.mark.slow
async def test_redis_outage_fails_fast_and_recovers_with_a_reload(redis_server: RedisServer) -> None:
    a, b = RedisDocStore(redis_server.url), RedisDocStore(redis_server.url)
    await a.open()
    await b.open()
    try:
        heard = Heard()
        a.subscribe(heard)
        await b.put("rule", "r", {"v": 1})
        await eventually(lambda: heard.calls == [("rule", "r")], 1.0, "a hears b's put")
        before = await a.generation("rule")

        redis_server.stop()
        for name, op in every_operation(a):
            result, elapsed = await timed(op())
            assert isinstance(result, StoreUnavailable), f"{name}: {result!r}"
            assert elapsed < OUTAGE_BOUND, f"{name} took {elapsed:.1f}s"
            assert "document store unavailable" in str(result) and str(redis_server.port) in str(result)

        redis_server.start()  # same port, empty
        await eventually(lambda: ("rule", "*") in heard.calls, 4.0, "a is told to reload after reconnecting")
        doc = await b.put("rule", "r", {"v": 2}, if_version=0)  # the data went with the old server
        assert doc.version == 1
        await eventually(lambda: heard.calls[-1] == ("rule", "r"), 1.0, "a hears b's put after the restart")
        assert (await a.get("rule", "r")) == doc
        assert await a.generation("rule") > before  # pollers see a change, not an old number again
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow
async def test_hung_redis_fails_within_the_timeout(redis_server: RedisServer) -> None:
    s = RedisDocStore(redis_server.url)
    await s.open()
    try:
        await s.put("rule", "r", {})
        redis_server.freeze()
        try:
            result, elapsed = await timed(s.get("rule", "r"))
        finally:
            redis_server.thaw()
        assert isinstance(result, StoreUnavailable), repr(result)
        assert elapsed < OUTAGE_BOUND, f"took {elapsed:.1f}s"
        assert (await s.get("rule", "r")) is not None  # thawed: works again
    finally:
        await s.close()


# --- one SQLite file, several stores -----------------------------------------------------------
async def test_token_and_doc_stores_share_one_database_or_one_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wsgate.db"
    db = Database(path)
    shared_tokens, shared_docs = SQLiteTokenStore(db), SQLiteDocStore(db)
    token, _ = await shared_tokens.create("dev:alice", "laptop", ["api"], 3600)
    await shared_docs.put("team", "acme", {"members": ["dev:alice"]})
    await shared_tokens.close()  # does not close the Database it was given
    assert (await shared_docs.get("team", "acme")) is not None

    own_tokens, own_docs = SQLiteTokenStore(path), SQLiteDocStore(path)
    assert await own_tokens.verify(token) is not None
    assert (await own_docs.get("team", "acme")) is not None
    await own_docs.put("team", "acme", {"members": []}, if_version=1)
    assert (await shared_docs.get("team", "acme")).version == 2  # type: ignore[union-attr]
    await own_tokens.close()
    await own_docs.close()
    await shared_docs.close()
    await db.close()


async def test_sqlite_store_reports_a_locked_file_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wsgate.db"
    store = SQLiteDocStore(path)
    await store.open()
    monkeypatch.setattr(auth.sqlite, "BUSY_TIMEOUT", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        await store.close()  # reconnects with the short busy timeout
        with pytest.raises(StoreUnavailable, match=r"wsgate\.db"):
            await store.put("rule", "r", {})
        assert await store.get("rule", "r") is None  # readers do not wait for the writer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await store.put("rule", "r", {})).version == 1
    await store.close()


def test_conflict_and_unavailable_say_what_happened() -> None:
    assert "no document" in str(Conflict(None))
    assert Conflict(None).current is None
    assert isinstance(StoreUnavailable("x"), Exception) and not isinstance(StoreUnavailable("x"), ValueError)


async def test_versions_continue_after_a_delete_so_an_old_if_match_fails(store: DocStore) -> None:
    first = await store.put("rule", "web", {"a": 1})
    assert first.version == 1
    await store.delete("rule", "web")
    again = await store.put("rule", "web", {"a": 2}, if_version=0)
    assert again.version == 2
    with pytest.raises(Conflict):
        await store.put("rule", "web", {"a": 3}, if_version=1)  # kept from before the delete
    got = await store.get("rule", "web")
    assert got is not None and got.body == {"a": 2}


async def test_versions_name_every_document_of_the_kind_with_its_version(store: DocStore) -> None:
    assert await store.versions("rule") == {}
    await store.put("rule", "a", {"n": 1})
    await store.put("rule", "a", {"n": 2})
    await store.put("rule", "b", {})
    await store.put("team", "c", {})
    assert await store.versions("rule") == {"a": 2, "b": 1}
    await store.delete("rule", "b")
    assert await store.versions("rule") == {"a": 2}
    assert await store.versions("rule") == {d.id: d.version for d in await store.list("rule")}


@pytest.mark.slow
async def test_redis_versions_are_read_off_every_record_even_one_written_in_another_order(redis_url: str) -> None:
    """Versions come from the records in Redis itself (no body is fetched), including a record whose
    fields are in another order than the gateway writes them (written by hand, or by an older version)."""
    import redis.asyncio as aioredis

    store = RedisDocStore(redis_url)
    await store.open()
    try:
        for i in range(2000):
            await store.put("bulk", f"r{i:04d}", {"n": i, "text": "x" * 200})
        await store.put("bulk", "r0007", {"n": 7})
        raw = aioredis.from_url(redis_url, decode_responses=True)
        await raw.hset("wsgate:doc:bulk", "old", '{"body":{"a":1},"updated":1.5,"version":4}')
        await raw.aclose()
        versions = await store.versions("bulk")
        assert len(versions) == 2001 and versions["r0007"] == 2 and versions["r1999"] == 1 and versions["old"] == 4
        assert versions == {d.id: d.version for d in await store.list("bulk")}
    finally:
        await store.close()
