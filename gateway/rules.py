"""Admin routing rules at runtime: stored in the document store, applied to the route table at once.

Every worker (and replica) holds the whole rule set in its route table and
swaps it whole on a change: a local write reloads at once, a change pushed by
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


class Rules:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.current = RuleSet()
        self.versions: dict[str, int] = {}
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
            generation = await self.gw.docs.generation(KIND)
            docs = await self.gw.docs.list(KIND)
            # Off the event loop: 10,000 rules take a good part of a second to parse and index.
            rules, versions, skipped = await asyncio.to_thread(_build, docs, self.context(loading=True))
            for rule_id, error in skipped:
                # Stored by an older version or under other certificates: skipped, and said so.
                event(log, logging.ERROR, "rule not applied", rule=rule_id, error=error)
            self.current = rules
            self.versions = versions
            self.follower.generation = generation
            self.gw.router.set_rules(rules)
            self.gw.rules_changed()

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

