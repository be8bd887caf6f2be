"""Who a request is from: the small frozen value every room passes around."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in person, as one configured provider describes them.

    `provider` is the configured provider's name (two GitHub Enterprise servers
    are two providers); `user_id` is that provider's immutable id, never the
    login, because logins are renamed and reused. `groups` are the provider's
    organisations, groups or workspaces (`acme`, `acme/backend` for a team),
    lower-cased; policies name them qualified, as `<provider>:<group>`.
    """

    provider: str
    user_id: str
    login: str
    name: str = ""
    email: str = ""
    avatar: str = ""
    groups: frozenset[str] = field(default_factory=frozenset)
    # "<provider>:<user_id>", what policies and owners name. Kept rather than formatted on
    # every access: the proxy compares it on every request to a private port.
    identity: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", f"{self.provider}:{self.user_id}")

    def qualified_groups(self) -> frozenset[str]:
        return frozenset(f"{self.provider}:{g}" for g in self.groups)

    def same_login(self, login: str) -> bool:
        """Logins compare case-insensitively on every provider we support."""
        return self.login.casefold() == login.casefold()
