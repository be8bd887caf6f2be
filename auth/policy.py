"""The access policy every route is checked against.

Levels: `public`, `authenticated`, `team:<name>`, `users:<identity>,...`,
`owner` (a workspace's creator) and `admin`. A team is either defined in the config (members drawn
from provider groups and named identities) or, when no team has that name, a
qualified provider group such as `team:github:acme` or `team:github:acme/devs`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from auth.principal import Principal

PUBLIC: Final = "public"
AUTHENTICATED: Final = "authenticated"
TEAM: Final = "team"
OWNER: Final = "owner"
ADMIN: Final = "admin"
USERS: Final = "users"
_IDENTITY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}:[^\s,:]{1,200}")


@dataclass(frozen=True, slots=True)
class Access:
    """Who may use a route. `subject` is the team name or the owner's identity; `users` the listed identities."""

    level: str
    subject: str = ""
    users: frozenset[str] = frozenset()

    def __str__(self) -> str:
        if self.level == TEAM:
            return f"{self.level}:{self.subject}"
        if self.level == USERS:
            return "users:" + ",".join(sorted(self.users))
        return self.level


PUBLIC_ACCESS: Final = Access(PUBLIC)


def is_identity(text: str) -> bool:
    """`<provider>:<user id>`, as `Principal.identity` spells it."""
    return _IDENTITY.fullmatch(text) is not None


def parse_access(text: str) -> Access:
    """`public` | `authenticated` | `admin` | `team:<name>` | `users:<identity>[,<identity>...]`.

    Raises ValueError saying what is wrong.
    """
    if text in (PUBLIC, AUTHENTICATED, ADMIN):
        return Access(text)
    if text.startswith("team:") and len(text) > 5 and text == text.strip():
        return Access(TEAM, text[5:].lower())
    if text.startswith("users:"):
        users = [u.strip() for u in text[6:].split(",")]
        bad = [u for u in users if not is_identity(u)]
        if bad or not users:
            raise ValueError(f"users: {bad[0] if bad else text!r} is not an identity (<provider>:<user id>)")
        return Access(USERS, users=frozenset(users))
    raise ValueError(f"unknown access level {text!r} (public, authenticated, admin, team:<name> or users:<ids>)")


def owner_access(identity: str) -> Access:
    return Access(OWNER, identity)


@dataclass(frozen=True, slots=True)
class Team:
    """A named team: anyone in one of `groups` (qualified) or listed in `members` or `admins`."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    members: frozenset[str] = field(default_factory=frozenset)
    # Members who may change the team through the API.
    admins: frozenset[str] = field(default_factory=frozenset)

    def has(self, principal: Principal) -> bool:
        return (
            principal.identity in self.members
            or principal.identity in self.admins
            or not self.groups.isdisjoint(principal.qualified_groups())
        )


class Policy:
    def __init__(self, admins: Iterable[str] = (), teams: Mapping[str, Team] | None = None) -> None:
        self.admins = frozenset(admins)
        self.teams = dict(teams or {})

    def is_admin(self, principal: Principal | None) -> bool:
        return principal is not None and principal.identity in self.admins

    def is_team_admin(self, principal: Principal, name: str) -> bool:
        team = self.teams.get(name)
        return team is not None and principal.identity in team.admins

    def in_team(self, principal: Principal, name: str) -> bool:
        team = self.teams.get(name)
        if team is not None:
            return team.has(principal)
        return name in principal.qualified_groups()

    def allows(self, access: Access, principal: Principal | None) -> bool:
        level = access.level
        if level == PUBLIC:
            return True
        if principal is None:
            return False
        if level == AUTHENTICATED:
            return True
        if level == OWNER:
            # Only the creator: admins manage routing, they do not get into other people's workspaces.
            return principal.identity == access.subject
        if level == ADMIN:
            return principal.identity in self.admins
        if level == TEAM:
            return self.in_team(principal, access.subject)
        if level == USERS:
            return principal.identity in access.users
        return False
