"""Admin routing rules at runtime: stored in the document store, applied to the route table at once.

Every worker (and replica) holds the whole rule set in its route table and
swaps it on a change, for a new set with the changed rules applied (or, after
many changes, rebuilt from the store): a local write reloads at once, a change pushed by
Redis reloads when it arrives, and the generation of the "rule" documents is
polled twice a second for changes made by other processes on the same SQLite
file. Requests under way keep the route they were matched to; a WebSocket
whose rule was deleted or narrowed so that it no longer admits it is closed.

DESIGN.md places the rules' store and admin API in the routing room; they live
here because they need the document store (auth) and the worker's connections,
which routing may not import. Routing keeps the pure part: the rule model,
its validation, path canonicalisation and the index (routing/rules.py, paths.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from auth.docstore import Doc, KindFollower
from gateway.api import Caller, audit_entry
from gateway.logs import event
from routing.rules import Rule, RuleContext, RuleError, RuleSet, parse_rule

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.rules")

KIND = "rule"

# Changes applied to the loaded set one by one; more than this and the set is rebuilt whole.
_PATCH_MAX = 64


class Rules:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.current = RuleSet()
        self.versions: dict[str, int] = {}  # id -> version of each rule in `current`
        self.loaded = False
        self._lock = asyncio.Lock()
        self.follower = KindFollower(gw.docs, KIND, self.load, "rules not reloaded; serving the last ones")

    def context(self, *, loading: bool = False) -> RuleContext:
        cfg = self.gw.config
        addresses = {f"{cfg.listen.address}:{cfg.listen.port}", f"localhost:{cfg.listen.port}",
                     f"{cfg.domain}:{cfg.public_port}"}
        launcher = self.gw.launcher

        def workspace_exists(workspace_id: str) -> bool:
            # Stored rules stay loaded when their workspace is gone: requests then get the workspace's 503.
            return loading or (launcher is not None and launcher.get(workspace_id) is not None)

        return RuleContext(
            domains=self.gw.tls.names() or (cfg.domain, "*." + cfg.domain),
            main_domain=cfg.domain,
            gateway_addresses=frozenset(addresses),
            workspace_exists=workspace_exists,
        )

    # --- loading and watching ------------------------------------------------------------
    async def load(self) -> None:
        async with self._lock:
            docs = self.gw.docs
            generation = await docs.generation(KIND)
            patched = await self._changes() if self.loaded else None
            if patched is not None:
                rules = patched
            else:
                stored = await docs.list(KIND)
                # Off the event loop: 10,000 rules take a good part of a second to parse and index
                # (and the thread still competes for the GIL: requests slow down meanwhile).
                rules, versions, skipped = await asyncio.to_thread(_build, stored, self.context(loading=True))
                for rule_id, error in skipped:
                    # Stored by an older version or under other certificates: skipped, and said so.
                    event(log, logging.ERROR, "rule not applied", rule=rule_id, error=error)
                self.versions = versions
                self.loaded = True
            self.current = rules
            self.follower.generation = generation
            self.gw.router.set_rules(rules)
            self.gw.rules_changed()

    async def _changes(self) -> RuleSet | None:
        """The current set with what changed since the last load applied (`versions` updated), or
        None when a whole rebuild is due: many changes, or a rule that does not fit as it is.

        A change is usually one admin write: re-parsing and re-indexing every rule for it made
        each change cost a large gateway most of a second of CPU, in every worker.
        """
        stored = await self.gw.docs.versions(KIND)
        # A rule the last load skipped is not in `versions`: it counts as changed and is tried
        # again (it may fit now); if it still does not, the rebuild skips it and says why.
        changed = [i for i, v in stored.items() if self.versions.get(i) != v]
        gone = [i for i in self.versions if i not in stored]
        if len(changed) + len(gone) > _PATCH_MAX:
            return None
        docs = [doc for rule_id in changed if (doc := await self.gw.docs.get(KIND, rule_id)) is not None]
        fetched = {doc.id for doc in docs}
        gone += [i for i in changed if i not in fetched]  # deleted since versions() ran
        rules = self.current
        versions = dict(self.versions)
        for rule_id in gone:
            if rules.get(rule_id) is not None:
                rules = rules.without(rule_id)
            versions.pop(rule_id, None)
        ctx = self.context(loading=True)
        for doc in docs:
            try:
                rules = rules.with_rule(parse_rule(doc.body, ctx))
            except RuleError:
                return None
            versions[doc.id] = doc.version
        self.versions = versions
        return rules

    def start(self) -> None:
        self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

    # --- changes ---------------------------------------------------------------------------
    def check(self, rule_id: str, body: Mapping[str, Any]) -> Rule:
        """The rule as it would be stored; RuleError names the field (conflicts with other rules included)."""
        data = dict(body)
        if "id" in data and data["id"] != rule_id:
            raise RuleError("id", f"does not match the id in the path ({rule_id!r})")
        data["id"] = rule_id
        rule = parse_rule(data, self.context())
        self.current.with_rule(rule)
        return rule

    async def put(self, rule: Rule, *, if_version: int | None, caller: Caller) -> Doc:
        before = self.current.get(rule.id)
        doc = await self.gw.docs.put(
            KIND, rule.id, rule.to_dict(), if_version=if_version,
            audit=audit_entry(caller, "put", KIND, rule.id, before.to_dict() if before else None, rule.to_dict()),
        )
        await self.load()
        return doc

    async def delete(self, rule_id: str, *, if_version: int | None, caller: Caller) -> Doc | None:
        before = self.current.get(rule_id)
        doc = await self.gw.docs.delete(
            KIND, rule_id, if_version=if_version,
            audit=audit_entry(caller, "delete", KIND, rule_id, before.to_dict() if before else None, None),
        )
        await self.load()
        return doc


def _build(docs: list[Doc], ctx: RuleContext) -> tuple[RuleSet, dict[str, int], list[tuple[str, str]]]:
    """The rule set from stored documents: indexed in one go, or one by one when some do not fit."""
    parsed: list[Rule] = []
    versions: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    for doc in docs:
        try:
            parsed.append(parse_rule(doc.body, ctx))
            versions[doc.id] = doc.version
        except RuleError as e:
            skipped.append((doc.id, str(e)))
    try:
        return RuleSet(parsed), versions, skipped
    except RuleError:
        pass
    rules = RuleSet()
    for rule in parsed:
        try:
            rules = rules.with_rule(rule)
        except RuleError as e:
            versions.pop(rule.id, None)
            skipped.append((rule.id, str(e)))
    return rules, versions, skipped

