"""Teams: who belongs to which team, from the config and from the admin API.

A team's members are the people in any of its provider groups (qualified,
`github:acme-inc`, `gitlab:acme/backend`), plus identities named one by one;
its admins are members too and may change the team. Teams in the config are
read-only at runtime; the API keeps the others in the gateway's document
store. Membership through groups follows the provider within the session's
membership TTL (see `AuthService.fresh`); named members change at once.

Every worker (and every replica) keeps the whole team map in memory, because
the policy is checked on the hot path; `TeamDirectory.watch` reloads it when
the store's generation for teams moves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from auth.docstore import Conflict, Doc, DocStore, KindFollower
from auth.policy import Policy, Team, is_identity

log = logging.getLogger("wsgate.teams")

KIND = "team"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_GROUP = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}:[a-z0-9][a-z0-9_./-]{0,254}")
_FIELDS = ("groups", "members", "admins")
MAX_ENTRIES = 1000


class TeamError(ValueError):
    """A team definition that cannot be accepted; `field` names the offending key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TeamError("name", "1 to 63 lower-case letters, digits or dashes, starting with a letter or digit")
    return name


def parse_team(name: str, data: Mapping[str, Any]) -> Team:
    """A team from its JSON/TOML form ({groups?, members?, admins?}); TeamError names the first bad key."""
    check_name(name)
    unknown = sorted(set(data) - {*_FIELDS, "name"})
    if unknown:
        raise TeamError(unknown[0], "unknown field (known: name, groups, members, admins)")
    if "name" in data and data["name"] != name:
        raise TeamError("name", f"does not match the team in the path ({name!r})")
    values: dict[str, frozenset[str]] = {}
    for key in _FIELDS:
        raw = data.get(key, [])
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
            raise TeamError(key, "expected a list of strings")
        if len(raw) > MAX_ENTRIES:
            raise TeamError(key, f"at most {MAX_ENTRIES} entries")
        for i, v in enumerate(raw):
            if key == "groups":
                if not _GROUP.fullmatch(v.lower()):
                    raise TeamError(f"{key}[{i}]", f"{v!r} is not a qualified group (<provider>:<org or group>)")
            elif not is_identity(v):
                raise TeamError(f"{key}[{i}]", f"{v!r} is not an identity (<provider>:<user id>)")
        values[key] = frozenset(v.lower() for v in raw) if key == "groups" else frozenset(raw)
    return Team(name, values["groups"], values["members"], values["admins"])


def team_to_dict(team: Team) -> dict[str, Any]:
    return {
        "name": team.name,
        "groups": sorted(team.groups),
        "members": sorted(team.members),
        "admins": sorted(team.admins),
    }


class TeamDirectory:
    """The team map the policy reads: config teams over stored ones (a name in the config wins)."""

    def __init__(self, docs: DocStore, policy: Policy, config_teams: Mapping[str, Team]) -> None:
        self.docs = docs
        self.policy = policy
        self.config_teams = dict(config_teams)
        self.versions: dict[str, int] = {}
        self.follower = KindFollower(docs, KIND, self.load, "teams not reloaded; keeping the last ones")
        policy.teams = dict(self.config_teams)

    def is_config(self, name: str) -> bool:
        return name in self.config_teams

    def get(self, name: str) -> Team | None:
        return self.policy.teams.get(name)

    async def load(self) -> None:
        generation = await self.docs.generation(KIND)
        teams: dict[str, Team] = {}
        versions: dict[str, int] = {}
        for doc in await self.docs.list(KIND):
            try:
                teams[doc.id] = parse_team(doc.id, doc.body)
                versions[doc.id] = doc.version
            except TeamError as e:
                log.error("event=team_unreadable team=%s error=%r", doc.id, str(e))
        teams.update(self.config_teams)
        self.policy.teams = teams
        self.versions = versions
        self.follower.generation = generation

    def start(self) -> None:
        self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

    async def put(self, team: Team, *, if_version: int | None, audit: Mapping[str, Any]) -> Doc:
        if self.is_config(team.name):
            raise Conflict(None)
        doc = await self.docs.put(KIND, team.name, team_to_dict(team), if_version=if_version, audit=audit)
        await self.load()
        return doc

    async def delete(self, name: str, *, if_version: int | None, audit: Mapping[str, Any]) -> Doc | None:
        doc = await self.docs.delete(KIND, name, if_version=if_version, audit=audit)
        await self.load()
        return doc
