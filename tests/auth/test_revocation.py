"""The per-worker session and token caches and the revocation epoch shared by worker processes."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

import auth.revocation
from auth.principal import Principal
from auth.revocation import MAX_ENTRIES, Epoch, SessionCache, TokenCache, share_between_workers
from auth.sessions import Session
from auth.tokens import TokenInfo

HOST = "8080-abc.ws.example.test"


def session(**kw: float) -> Session:
    t = time.time()
    base = Session("k", Principal("dev", "alice", "alice"), t, t, t, "csrf")
    return replace(base, **kw)  # type: ignore[arg-type]


def cache(epoch: Epoch | None = None, **kw: float) -> SessionCache:
    settings = {"idle_timeout": 3600.0, "lifetime": 86400.0, "membership_ttl": 300.0, "touch_every": 60.0, **kw}
    return SessionCache(epoch or Epoch(), **settings)


def test_a_session_looked_up_is_answered_for_its_own_host_only() -> None:
    c = cache()
    s = session()
    c.put("grant", HOST, s, c.epoch.current())
    assert c.get("grant", HOST) is s
    assert c.get("grant", "8081-abc.ws.example.test") is None
    assert c.get("other", HOST) is None


def test_a_revocation_empties_the_cache() -> None:
    c = cache()
    c.put("grant", HOST, session(), c.epoch.current())
    c.epoch.advance()
    assert c.get("grant", HOST) is None
    assert len(c) == 0


def test_a_lookup_that_ran_across_a_revocation_is_not_kept() -> None:
    c = cache()
    before = c.epoch.current()
    c.epoch.advance()  # a sign-out lands while the store lookup is under way
    c.put("grant", HOST, session(), before)
    assert c.get("grant", HOST) is None


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("last_seen", "touch_every"),  # the store must still be touched, or the session idles out there
        ("last_seen", "idle_timeout"),
        ("created", "lifetime"),
        ("groups_checked", "membership_ttl"),
    ],
)
def test_entries_last_no_longer_than_the_session_clocks_allow(field: str, setting: str) -> None:
    c = cache(**{setting: 0.3})
    c.put("grant", HOST, session(), c.epoch.current())
    assert c.get("grant", HOST) is not None
    time.sleep(0.35)
    assert c.get("grant", HOST) is None
    # One that is past its time already is never stored.
    c.put("grant", HOST, session(**{field: time.time() - 1.0}), c.epoch.current())
    assert c.get("grant", HOST) is None


def test_nothing_is_trusted_while_other_replicas_cannot_be_heard() -> None:
    c = cache()
    c.put("grant", HOST, session(), c.epoch.current())
    c.live = lambda: False
    assert c.get("grant", HOST) is None
    c.live = lambda: True
    assert c.get("grant", HOST) is None  # dropped, not merely hidden: the outage may have hidden a revocation


def test_the_cache_is_bounded() -> None:
    c = cache()
    e = c.epoch.current()
    s = session()
    for i in range(MAX_ENTRIES + 10):
        c.put(f"g{i}", HOST, s, e)
    assert len(c) == MAX_ENTRIES
    assert c.get("g0", HOST) is None and c.get(f"g{MAX_ENTRIES + 9}", HOST) is s


def test_every_advance_changes_the_epoch() -> None:
    e = Epoch()
    seen = {e.current()}
    for _ in range(1000):
        e.advance()
        assert e.current() not in seen
        seen.add(e.current())


def test_workers_forked_after_sharing_see_each_others_revocations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth.revocation, "_shared", None)
    share_between_workers()
    parent = Epoch()
    before = parent.current()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "other worker": revokes, and reports the value it wrote
        try:
            child = Epoch()
            child.advance()
            os.write(w, child.current().to_bytes(8, "little"))
        finally:
            os._exit(0)
    os.close(w)
    written = int.from_bytes(os.read(r, 8), "little")
    os.close(r)
    os.waitpid(pid, 0)
    assert parent.current() == written != before
    # Without sharing, an epoch is this process's own.
    monkeypatch.setattr(auth.revocation, "_shared", None)
    alone = Epoch()
    alone_before = alone.current()
    parent.advance()
    assert alone.current() == alone_before


# --- bearer tokens ---------------------------------------------------------------------------
def token(expires_in: float = 3600.0) -> TokenInfo:
    t = time.time()
    return TokenInfo("abcdefghijklmnop", "dev:alice", "ide", ("workspace",), t, t + expires_in, t)


ALICE = Principal("dev", "alice", "alice")


def test_a_token_looked_up_is_answered_with_its_record_and_owner() -> None:
    c = TokenCache(Epoch())
    info = token()
    c.put("wsg_x", info, ALICE, time.time() + 60, c.epoch.current())
    assert c.get("wsg_x") == (info, ALICE)
    assert c.get("wsg_y") is None


def test_a_revocation_empties_the_token_cache_and_a_lookup_across_one_is_not_kept() -> None:
    c = TokenCache(Epoch())
    c.put("wsg_x", token(), ALICE, time.time() + 60, c.epoch.current())
    c.epoch.advance()
    assert c.get("wsg_x") is None and len(c) == 0
    before = c.epoch.current()
    c.epoch.advance()  # a revocation lands while the store lookup is under way
    c.put("wsg_x", token(), ALICE, time.time() + 60, before)
    assert c.get("wsg_x") is None


def test_a_token_entry_ends_at_its_deadline_and_a_past_one_is_never_stored() -> None:
    c = TokenCache(Epoch())
    c.put("wsg_x", token(), ALICE, time.time() + 0.3, c.epoch.current())
    assert c.get("wsg_x") is not None
    time.sleep(0.35)
    assert c.get("wsg_x") is None
    c.put("wsg_x", token(), ALICE, time.time() - 1, c.epoch.current())
    assert c.get("wsg_x") is None


def test_no_token_is_trusted_while_other_replicas_cannot_be_heard() -> None:
    c = TokenCache(Epoch())
    c.put("wsg_x", token(), ALICE, time.time() + 60, c.epoch.current())
    c.live = lambda: False
    assert c.get("wsg_x") is None
    c.live = lambda: True
    assert c.get("wsg_x") is None
