"""Short-lived auth state on both backends: aiocache in memory and a real Redis.

Every test that can runs twice, once per backend, against the same public
methods the gateway calls. What is checked is what matters to a person: a
ticket works once, a session ends when it should, a revoked token is refused,
and a copy of the store (a Redis dump, the SQLite file) signs nobody in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis as redis_sync
from redis_server import RedisServer

import auth.sessions
import auth.tokens
from auth.principal import Principal
from auth.sessions import SessionStore
from auth.store import KV, StoreError, digest
from auth.tickets import Tickets
from auth.tokens import KVTokenStore, SQLiteTokenStore, TokenError, TokenStore

T = TypeVar("T")

ALICE = Principal("dev", "alice", "alice", name="Alice", email="alice@example.com", groups=frozenset({"acme"}))
BOB = Principal("dev", "bob", "bob")
HOST = "8080-abc.ws.wsgate.test"
OTHER_HOST = "8080-bobs.ws.wsgate.test"
TICKET_KEY = b"k" * 32

# How long a call may take against a Redis that is gone (refused) or hung (frozen).
REFUSED_BOUND = 3.0
HUNG_BOUND = 8.0  # KV's per-operation timeout is 5 s


# --- backends --------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def kv_url(request: pytest.FixtureRequest) -> str:
    """"" for aiocache's memory backend, or the URL of a fresh real Redis."""
    if request.param == "memory":
        return ""
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def kv(kv_url: str) -> AsyncIterator[KV]:
    store = KV(kv_url)
    yield store
    await store.close()


def dump(kv: KV) -> str:
    """Every key and value the backend holds, as text: what a Redis dump or a memory snapshot would reveal."""
    if kv.url:
        client = redis_sync.Redis.from_url(kv.url)
        try:
            lines: list[str] = []
            for key in cast(list[bytes], client.keys("*")):
                value = client.get(key)
                lines += [key.decode(), value.decode() if isinstance(value, bytes) else str(value)]
            return "\n".join(lines)
        finally:
            client.close()
    backend: Any = kv._cache
    return "\n".join(f"{k}\n{v}" for k, v in backend._cache.items())


def redis_keys(url: str) -> list[str]:
    client = redis_sync.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in cast(list[bytes], client.keys("*")))
    finally:
        client.close()


async def timed(call: Awaitable[T]) -> tuple[T | BaseException, float]:
    """The result (or the exception) of `call`, and how long it took."""
    start = time.monotonic()
    try:
        result: T | BaseException = await call
    except Exception as e:
        result = e
    return result, time.monotonic() - start


# --- KV ----------------------------------------------------------------------------------
async def test_get_set_delete(kv: KV) -> None:
    assert await kv.get("k") is None
    await kv.set("k", {"a": 1, "b": ["x", "y"]}, 60)
    assert await kv.get("k") == {"a": 1, "b": ["x", "y"]}
    await kv.set("k", {"a": 2}, 60)
    assert await kv.get("k") == {"a": 2}
    assert await kv.delete("k") is True
    assert await kv.delete("k") is False
    assert await kv.get("k") is None


async def test_keys_are_namespaced(kv: KV) -> None:
    await kv.set("k", {"a": 1}, 60)
    if kv.url:
        [key] = redis_keys(kv.url)
        assert key.startswith("wsgate:") and key.endswith(":k")
    assert dump(kv).startswith("wsgate:")


async def test_add_sets_only_when_absent(kv: KV) -> None:
    assert await kv.add("k", {"v": 1}, 60) is True
    assert await kv.add("k", {"v": 2}, 60) is False
    assert await kv.get("k") == {"v": 1}
    await kv.delete("k")
    assert await kv.add("k", {"v": 3}, 60) is True
    assert await kv.get("k") == {"v": 3}


async def test_take_returns_the_value_once(kv: KV) -> None:
    assert await kv.take("k") is None
    await kv.set("k", {"v": 1}, 60)
    assert await kv.take("k") == {"v": 1}
    assert await kv.take("k") is None
    assert await kv.get("k") is None


async def test_values_expire_after_their_ttl(kv: KV) -> None:
    await kv.set("short", {"v": 1}, 1)
    await kv.set("subsecond", {"v": 2}, 0.2)  # kept at least a second: Redis counts whole seconds
    await kv.add("added", {"v": 3}, 1)
    await kv.set("long", {"v": 4}, 60)
    await asyncio.sleep(0.5)
    assert await kv.get("short") == {"v": 1}
    assert await kv.get("subsecond") == {"v": 2}
    await asyncio.sleep(0.8)
    assert await kv.get("short") is None
    assert await kv.get("subsecond") is None
    assert await kv.take("added") is None
    assert await kv.add("added", {"v": 5}, 60) is True  # an expired key no longer blocks add
    assert await kv.get("long") == {"v": 4}


async def test_take_is_single_use_under_concurrency(kv_url: str) -> None:
    # With Redis, the takers are spread over several clients, as they are over workers and replicas.
    clients = [KV(kv_url) for _ in range(5 if kv_url else 1)]
    try:
        for round_ in range(5):
            key = f"ticket-{round_}"
            await clients[0].set(key, {"round": round_}, 60)
            results = await asyncio.gather(*(clients[i % len(clients)].take(key) for i in range(50)))
            winners = [r for r in results if r is not None]
            assert winners == [{"round": round_}], f"round {round_}: {len(winners)} takers won"
            assert await clients[-1].get(key) is None
    finally:
        for c in clients:
            await c.close()


async def test_add_has_one_winner_under_concurrency(kv_url: str) -> None:
    clients = [KV(kv_url) for _ in range(5 if kv_url else 1)]
    try:
        results = await asyncio.gather(*(clients[i % len(clients)].add("once", {"by": i}, 60) for i in range(50)))
        assert results.count(True) == 1
        assert await clients[0].get("once") == {"by": results.index(True)}
    finally:
        for c in clients:
            await c.close()


# --- sessions ----------------------------------------------------------------------------
async def test_session_create_and_get(kv: KV) -> None:
    store = SessionStore(kv, idle_timeout=3600, lifetime=86400)
    sid, session = await store.create(ALICE, "sealed-provider-tokens")
    raw = base64.urlsafe_b64decode(sid + "=" * (-len(sid) % 4))
    assert len(raw) * 8 >= 128
    assert session.key == hashlib.sha256(sid.encode()).hexdigest()
    got = await store.get(sid)
    assert got is not None
    assert got.principal == ALICE and got.csrf == session.csrf and got.sealed_tokens == "sealed-provider-tokens"
    assert len(session.csrf) >= 22
    # Fresh ids every time; nothing close to an id finds a session.
    sid2, session2 = await store.create(ALICE)
    assert sid2 != sid and session2.key != session.key and session2.csrf != session.csrf
    tampered = sid[:-1] + ("A" if sid[-1] != "A" else "B")
    for wrong in ("", tampered, session.key, sid + "x", "x" * 129):
        assert await store.get(wrong) is None, wrong


async def test_session_id_is_stored_only_as_its_hash(kv: KV) -> None:
    store = SessionStore(kv, idle_timeout=3600, lifetime=86400)
    sid, session = await store.create(ALICE)
    grant = await store.grant(session, HOST)
    everything = dump(kv)
    assert f"session:{digest(sid)}" in everything
    assert f"grant:{digest(grant)}" in everything
    assert sid not in everything
    assert grant not in everything
    if kv.url:
        keys = redis_keys(kv.url)
        assert len(keys) == 2
        assert any(k.endswith(f":session:{digest(sid)}") for k in keys)
        assert any(k.endswith(f":grant:{digest(grant)}") for k in keys)


async def test_idle_session_ends_and_leaves_the_store(kv: KV) -> None:
    store = SessionStore(kv, idle_timeout=1.0, lifetime=3600)
    sid, session = await store.create(ALICE)
    await asyncio.sleep(0.5)
    assert await store.get(sid) is not None
    await asyncio.sleep(0.8)
    # The record is gone from the store on its own (its TTL), not only refused when read.
    assert await kv.get("session:" + session.key) is None
    assert await store.get(sid) is None


async def test_activity_keeps_a_session_but_not_past_its_lifetime(
    kv: KV, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real deployments skip last_seen writes for a minute; with no skipping, every use counts as activity.
    monkeypatch.setattr(auth.sessions, "TOUCH_EVERY", 0.0)
    store = SessionStore(kv, idle_timeout=0.6, lifetime=1.5)
    sid, session = await store.create(ALICE)
    start = time.monotonic()
    while time.monotonic() - start < 1.2:
        await asyncio.sleep(0.3)
        assert await store.get(sid) is not None, f"ended while in use after {time.monotonic() - start:.2f}s"
    # Longer than idle_timeout since creation: activity kept it. Past the lifetime, activity does not.
    await asyncio.sleep(1.6 - (time.monotonic() - start))
    assert await store.get(sid) is None
    assert await kv.get("session:" + session.key) is None


async def test_idle_session_is_refused_even_while_its_record_lives(kv: KV) -> None:
    # idle_timeout below the store's 1-second TTL floor: the record outlives it, the check does not.
    store = SessionStore(kv, idle_timeout=0.3, lifetime=3600)
    sid, session = await store.create(ALICE)
    await asyncio.sleep(0.5)
    assert await store.get(sid) is None
    assert await kv.get("session:" + session.key) is None  # deleted when found idle


async def test_grant_is_bound_to_its_host(kv: KV) -> None:
    store = SessionStore(kv, idle_timeout=3600, lifetime=86400)
    sid, session = await store.create(ALICE)
    grant = await store.grant(session, HOST)
    assert grant != sid and len(grant) >= 22
    via = await store.from_grant(grant, HOST)
    assert via is not None and via.key == session.key and via.principal == ALICE
    assert await store.from_grant(grant, OTHER_HOST) is None
    assert await store.from_grant(grant, HOST.upper()) is None
    assert await store.from_grant(sid, HOST) is None  # a session id is no grant
    assert await store.from_grant("", HOST) is None
    assert await store.from_grant(grant + "x", HOST) is None
    # A grant does not open the main domain either.
    assert await store.get(grant) is None


async def test_ending_a_session_kills_its_grants_only(kv: KV) -> None:
    store = SessionStore(kv, idle_timeout=3600, lifetime=86400)
    sid, session = await store.create(ALICE)
    grants = [await store.grant(session, HOST), await store.grant(session, OTHER_HOST)]
    _, other = await store.create(BOB)
    bobs = await store.grant(other, OTHER_HOST)
    await store.end(session.key)
    assert await store.get(sid) is None
    assert await store.from_grant(grants[0], HOST) is None
    assert await store.from_grant(grants[1], OTHER_HOST) is None
    still = await store.from_grant(bobs, OTHER_HOST)
    assert still is not None and still.principal == BOB


# --- tickets -----------------------------------------------------------------------------
async def test_ticket_redeems_once(kv: KV) -> None:
    tickets = Tickets(kv, TICKET_KEY)
    ticket = await tickets.mint(HOST, "session-key", "/p?x=1")
    got = await tickets.redeem(ticket, HOST)
    assert got is not None
    assert (got.host, got.session_key, got.path) == (HOST, "session-key", "/p?x=1")
    assert await tickets.redeem(ticket, HOST) is None
    # Another worker or replica (another Tickets on the same store, same key) finds nothing either.
    assert await Tickets(kv, TICKET_KEY).redeem(ticket, HOST) is None


async def test_ticket_redeems_once_under_concurrency(kv_url: str) -> None:
    clients = [KV(kv_url) for _ in range(5 if kv_url else 1)]
    try:
        workers = [Tickets(c, TICKET_KEY) for c in clients]
        ticket = await workers[0].mint(HOST, "session-key", "/")
        results = await asyncio.gather(*(workers[i % len(workers)].redeem(ticket, HOST) for i in range(50)))
        assert sum(r is not None for r in results) == 1
    finally:
        for c in clients:
            await c.close()


async def test_ticket_for_another_host_is_refused_before_the_store(kv: KV) -> None:
    tickets = Tickets(kv, TICKET_KEY)
    ticket = await tickets.mint(HOST, "session-key", "/")
    assert await tickets.redeem(ticket, OTHER_HOST) is None
    assert await tickets.redeem(ticket, HOST + ".") is None
    # The MAC failed before the store was asked: the genuine host can still use it.
    got = await tickets.redeem(ticket, HOST)
    assert got is not None and got.host == HOST


async def test_tampered_or_foreign_tickets_are_refused(kv: KV) -> None:
    tickets = Tickets(kv, TICKET_KEY)
    ticket = await tickets.mint(HOST, "session-key", "/")
    tid, mac = ticket.split(".")
    other_tid = (await tickets.mint(HOST, "other-session", "/")).split(".")[0]

    def flip(s: str) -> str:
        return s[:-1] + ("A" if s[-1] != "A" else "B")

    for bad in (
        f"{flip(tid)}.{mac}",  # another id under this MAC
        f"{tid}.{flip(mac)}",
        f"{other_tid}.{mac}",  # a real id, the wrong MAC
        tid,
        f"{tid}.",
        f".{mac}",
        f"{tid}.{mac}.x",
        "",
        ticket + "A" * 128,
    ):
        assert await tickets.redeem(bad, HOST) is None, bad
    # A gateway with another HMAC key cannot redeem it (nor forge one for this gateway).
    assert await Tickets(kv, b"z" * 32).redeem(ticket, HOST) is None
    forged = await Tickets(kv, b"z" * 32).mint(HOST, "session-key", "/")
    assert await tickets.redeem(forged, HOST) is None
    assert await tickets.redeem(ticket, HOST) is not None


async def test_expired_ticket_is_refused(kv: KV) -> None:
    tickets = Tickets(kv, TICKET_KEY, ttl=0.3)
    ticket = await tickets.mint(HOST, "session-key", "/")
    await asyncio.sleep(0.5)
    # The record may outlive 0.3 s in the store (its TTL is at least 1 s); its own expiry still counts.
    assert await tickets.redeem(ticket, HOST) is None


async def test_ticket_id_is_stored_only_as_its_hash(kv: KV) -> None:
    tickets = Tickets(kv, TICKET_KEY)
    ticket = await tickets.mint(HOST, "session-key", "/")
    tid, mac = ticket.split(".")
    everything = dump(kv)
    assert f"ticket:{digest(tid)}" in everything
    assert tid not in everything and mac not in everything


def test_ticket_lifetime_is_capped() -> None:
    assert Tickets(KV(), TICKET_KEY, ttl=3600).ttl == 60


# --- personal access tokens --------------------------------------------------------------
@pytest.fixture(params=["sqlite", "kv-memory", "kv-redis"])
async def tokens(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    store: TokenStore
    kv: KV | None = None
    if request.param == "sqlite":
        store = SQLiteTokenStore(tmp_path / "state" / "wsgate.db")
    else:
        kv = KV(str(request.getfixturevalue("redis_url")) if request.param == "kv-redis" else "")
        store = KVTokenStore(kv)
    yield store
    await store.close()
    if kv is not None:
        await kv.close()


def secret_of(token: str) -> str:
    """The `<secret>` of `wsg_<id>_<secret>` (the secret itself may contain `_`)."""
    return token.split("_", 2)[2]


def token_storage(store: TokenStore) -> bytes:
    """Everything the token store wrote: the SQLite files (with the WAL) or the KV's keys and values."""
    if isinstance(store, SQLiteTokenStore):
        return b"".join(p.read_bytes() for p in sorted(store.path.parent.glob(store.path.name + "*")))
    assert isinstance(store, KVTokenStore)
    return dump(store.kv).encode()


async def test_token_create_verify_list_revoke(tokens: TokenStore) -> None:
    token, info = await tokens.create("dev:alice", "laptop", ["workspace"], 3600)
    assert token.startswith(f"wsg_{info.id}_") and len(secret_of(token)) == 43
    assert token.startswith(auth.tokens.PREFIX)
    assert info.owner == "dev:alice" and info.scopes == ("workspace",)
    assert 3599 <= info.expires - info.created <= 3601
    seen = await tokens.verify(token)
    assert seen is not None and (seen.id, seen.owner, seen.scopes) == (info.id, "dev:alice", ("workspace",))
    await asyncio.sleep(0.01)
    token2, info2 = await tokens.create("dev:alice", "ci", ["api", "workspace", "api"], 7200)
    assert info2.scopes == ("api", "workspace")
    _, bobs = await tokens.create("dev:bob", "bob's", ["api"], 600)

    listed = await tokens.list("dev:alice")
    assert [t.id for t in listed] == [info2.id, info.id]  # newest first
    assert listed[1].last_used > 0  # the verify above was recorded
    assert {t.id for t in await tokens.list()} == {info.id, info2.id, bobs.id}
    assert [t.id for t in await tokens.list("dev:bob")] == [bobs.id]
    assert await tokens.list("dev:nobody") == []

    # Only the owner may revoke (through the API); the token keeps working until they do.
    assert await tokens.revoke(info.id, "dev:bob") is False
    assert await tokens.verify(token) is not None
    assert await tokens.revoke(info.id, "dev:alice") is True
    assert await tokens.verify(token) is None
    assert await tokens.revoke(info.id, "dev:alice") is False
    assert [t.id for t in await tokens.list("dev:alice")] == [info2.id]
    assert await tokens.verify(token2) is not None
    # An admin revoke (no owner) works on anyone's token.
    assert await tokens.revoke(bobs.id) is True
    assert await tokens.list("dev:bob") == []


async def test_token_requests_are_checked(tokens: TokenStore) -> None:
    for name, scopes, lifetime in (
        ("", ["api"], 3600),
        ("x" * 101, ["api"], 3600),
        ("ok", [], 3600),
        ("ok", ["root"], 3600),
        ("ok", ["api"], 59),
        ("ok", ["api"], auth.tokens.MAX_LIFETIME + 1),
        ("ok", ["api"], True),
    ):
        with pytest.raises(TokenError):
            await tokens.create("dev:alice", name, scopes, lifetime)
    assert await tokens.list() == []


async def test_expired_token_is_refused(tokens: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    token, info = await tokens.create("dev:alice", "short", ["api"], 60)
    assert await tokens.verify(token) is not None
    later = time.time() + 61
    monkeypatch.setattr(auth.tokens, "now", lambda: later)
    assert await tokens.verify(token) is None
    # Still listed (so its owner sees why it stopped working) until revoked.
    assert [t.id for t in await tokens.list("dev:alice")] == [info.id]


async def test_wrong_secret_with_a_real_id_is_refused_by_a_constant_time_compare(
    tokens: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, info = await tokens.create("dev:alice", "laptop", ["api"], 3600)
    _, other = await tokens.create("dev:alice", "other", ["api"], 3600)
    secret = secret_of(token)
    forged_secret = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.tokens calls through
    assert await tokens.verify(f"wsg_{info.id}_{forged_secret}") is None
    stored = hashlib.sha256(token.encode()).hexdigest().encode()
    assert compared and compared[-1][0] == stored  # the record was found and its hash compared
    assert await tokens.verify(f"wsg_{other.id}_{secret}") is None  # the right secret under another id
    for malformed in (token + "x", token[:-1], token.upper(), "wsg_" + secret, token.replace("wsg_", "wsx_"), ""):
        assert await tokens.verify(malformed) is None, malformed
    assert await tokens.verify(token) is not None


async def test_tokens_are_stored_only_as_hashes(tokens: TokenStore) -> None:
    token, info = await tokens.create("dev:alice", "laptop", ["api"], 3600)
    assert await tokens.verify(token) is not None  # also writes last_used
    raw = token_storage(tokens)
    secret = secret_of(token)
    assert token.encode() not in raw and secret.encode() not in raw
    assert hashlib.sha256(token.encode()).hexdigest().encode() in raw
    assert info.id.encode() in raw  # the id is no secret: it only finds the record


def test_sqlite_token_file_is_private(tmp_path: Path) -> None:
    store = SQLiteTokenStore(tmp_path / "state" / "wsgate.db")
    asyncio.run(store.create("dev:alice", "laptop", ["api"], 3600))
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.path.parent.stat().st_mode & 0o077 == 0


# --- Redis down, hung, and back ----------------------------------------------------------
def every_operation(kv: KV, ticket: str) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """Each way the gateway reaches the store, with `ticket` a genuine one (its MAC passes)."""
    sessions = SessionStore(kv, idle_timeout=3600, lifetime=86400)
    tickets = Tickets(kv, TICKET_KEY)
    tokens = KVTokenStore(kv)
    return [
        ("get", lambda: kv.get("k")),
        ("set", lambda: kv.set("k", {"v": 1}, 60)),
        ("add", lambda: kv.add("k2", {"v": 1}, 60)),
        ("delete", lambda: kv.delete("k")),
        ("take", lambda: kv.take("k")),
        ("ping", kv.ping),
        ("session get", lambda: sessions.get("x" * 43)),
        ("session create", lambda: sessions.create(ALICE)),
        ("ticket mint", lambda: tickets.mint(HOST, "session-key", "/")),
        ("ticket redeem", lambda: tickets.redeem(ticket, HOST)),
        ("token verify", lambda: tokens.verify("wsg_" + "a" * 16 + "_" + "b" * 43)),
    ]


async def test_redis_down_raises_store_error_quickly_and_recovers(redis_server: RedisServer) -> None:
    kv = KV(redis_server.url)
    try:
        # A pooled connection exists when Redis goes away.
        ticket = await Tickets(kv, TICKET_KEY).mint(HOST, "session-key", "/")
        redis_server.stop()
        for name, op in every_operation(kv, ticket):
            result, elapsed = await timed(op())
            assert isinstance(result, StoreError), f"{name}: {result!r}"
            assert elapsed < REFUSED_BOUND, f"{name} took {elapsed:.1f}s"
            assert str(result).startswith("state store:")
        redis_server.start()  # same port, empty
        assert await kv.get("k") is None
        await kv.set("k", {"v": 2}, 60)
        assert await kv.take("k") == {"v": 2}
    finally:
        await kv.close()


async def test_redis_never_reachable_raises_store_error(tmp_path: Path) -> None:
    from wsgate_testing import free_port

    kv = KV(f"redis://127.0.0.1:{free_port()}/0")
    try:
        result, elapsed = await timed(kv.get("k"))
        assert isinstance(result, StoreError) and elapsed < REFUSED_BOUND
    finally:
        await kv.close()


async def test_hung_redis_raises_store_error_within_the_timeout(redis_server: RedisServer) -> None:
    kv = KV(redis_server.url)
    try:
        await kv.set("k", {"v": 1}, 60)
        redis_server.freeze()
        try:
            result, elapsed = await timed(kv.get("k"))
        finally:
            redis_server.thaw()
        assert isinstance(result, StoreError), repr(result)
        assert elapsed < HUNG_BOUND, f"took {elapsed:.1f}s"
        assert await kv.get("k") == {"v": 1}  # and the client works again once Redis answers
    finally:
        await kv.close()
