"""Reloading admin rules: a change is applied to the loaded set, and the result is always what a
whole rebuild from the store gives."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import gateway.rules as rules_module
from auth.docstore import SQLiteDocStore
from gateway.config import load_config
from gateway.rules import KIND, Rules, _build
from routing.rules import Rule, RuleSet
from routing.table import RouteTable

DOMAIN = "wsgate.localhost"
UPSTREAM = "http://127.0.0.1:9"


class StandIn:
    """The parts of a worker that `Rules` uses, around a real store and a real route table."""

    def __init__(self, docs: SQLiteDocStore) -> None:
        self.docs = docs
        self.config = load_config(None)
        self.launcher = None
        self.tls = self
        self.router = RouteTable(self.config.domain)
        self.changes = 0

    def names(self) -> tuple[str, ...]:
        return ()

    def rules_changed(self) -> None:
        self.changes += 1


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[SQLiteDocStore]:
    store = SQLiteDocStore(tmp_path / "state.db")
    await store.open()
    yield store
    await store.close()


def body(rule_id: str, host: int, prefix: str = "/", access: str = "public") -> dict[str, Any]:
    rule = Rule(id=rule_id, hosts=(f"h{host}.{DOMAIN}",), path_prefix=prefix, upstream=UPSTREAM, access=access)
    return rule.to_dict()


def snapshot(rules: RuleSet) -> list[dict[str, Any]]:
    return sorted((r.to_dict() for r in rules), key=lambda d: str(d["id"]))


async def rebuilt(docs: SQLiteDocStore, rules: Rules) -> list[dict[str, Any]]:
    built, _versions, _skipped = _build(await docs.list(KIND), rules.context(loading=True))
    return snapshot(built)


async def test_random_changes_match_a_whole_rebuild(docs: SQLiteDocStore) -> None:
    gw = StandIn(docs)
    rules = Rules(gw)  # type: ignore[arg-type]
    for i in range(40):
        await docs.put(KIND, f"r{i}", body(f"r{i}", i % 15, f"/p{i}"))
    await rules.load()
    rng = random.Random(7)
    for step in range(120):
        # One to three writes between loads: new rules, changed ones (host, prefix, access), deletions.
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(60)
            if rng.random() < 0.3:
                await docs.delete(KIND, f"r{i}")
            else:
                access = rng.choice(("public", "authenticated"))
                await docs.put(KIND, f"r{i}", body(f"r{i}", rng.randrange(15), f"/p{i}/{step}", access))
        await rules.load()
        assert snapshot(rules.current) == await rebuilt(docs, rules), step
        assert gw.router.rules is rules.current
        assert rules.versions == await docs.versions(KIND)
    # A request sees the last state: one of the stored rules answers its host and path.
    doc = (await docs.list(KIND))[0]
    route = gw.router.match_rule(doc.body["hosts"][0], doc.body["path_prefix"] + "/x")
    assert route is not None and route.rule is not None and route.rule.id == doc.id


async def test_one_change_parses_one_rule(docs: SQLiteDocStore, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = StandIn(docs)
    rules = Rules(gw)  # type: ignore[arg-type]
    for i in range(300):
        await docs.put(KIND, f"r{i}", body(f"r{i}", i))
    parsed: list[str] = []
    real = rules_module.parse_rule

    def counting(data: Any, ctx: Any) -> Rule:
        parsed.append(str(data.get("id")))
        return real(data, ctx)

    monkeypatch.setattr(rules_module, "parse_rule", counting)
    await rules.load()
    assert len(parsed) == 300
    parsed.clear()
    await docs.put(KIND, "r5", body("r5", 5, "/moved"))
    await docs.delete(KIND, "r6")
    await rules.load()
    assert parsed == ["r5"]
    moved = gw.router.match_rule(f"h5.{DOMAIN}", "/moved/x")
    assert moved is not None and moved.rule is not None and moved.rule.id == "r5"
    assert gw.router.match_rule(f"h5.{DOMAIN}", "/") is None
    assert gw.router.match_rule(f"h6.{DOMAIN}", "/") is None
    # Many changes at once: one rebuild, every rule parsed once.
    for i in range(100):
        await docs.put(KIND, f"n{i}", body(f"n{i}", 1000 + i))
    parsed.clear()
    await rules.load()
    assert len(parsed) == 399
    assert snapshot(rules.current) == await rebuilt(docs, rules)


async def test_a_skipped_rule_is_applied_once_its_conflict_is_gone(docs: SQLiteDocStore) -> None:
    gw = StandIn(docs)
    rules = Rules(gw)  # type: ignore[arg-type]
    # Two rules claiming one host and prefix (as two replicas could write at once): one is skipped.
    await docs.put(KIND, "a", body("a", 1))
    await docs.put(KIND, "b", body("b", 1))
    await rules.load()
    (kept,) = {r.id for r in rules.current}
    await docs.delete(KIND, kept)
    await rules.load()
    assert {r.id for r in rules.current} == {"a", "b"} - {kept}
    assert snapshot(rules.current) == await rebuilt(docs, rules)
    # A change that does not fit the loaded set falls back to the rebuild, which skips it and says so.
    await docs.put(KIND, "c", body("c", 2))
    await docs.put(KIND, "d", body("d", 2))
    await rules.load()
    assert len([r for r in rules.current if r.hosts == (f"h2.{DOMAIN}",)]) == 1
    assert snapshot(rules.current) == await rebuilt(docs, rules)
