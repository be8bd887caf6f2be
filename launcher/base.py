"""What a workspace is, and the interface every launcher backend fills.

The embedded default is `launcher.namespaces.NamespaceLauncher`; other engines
(Docker, Kubernetes) would be one more file beside it, filling `Backend`.
"""

from __future__ import annotations

import re
import secrets
import socket
from abc import ABC, abstractmethod
from base64 import b32encode
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

STARTING: Final = "starting"
RUNNING: Final = "running"
STOPPING: Final = "stopping"
STOPPED: Final = "stopped"
FAILED: Final = "failed"
STATES: Final = (STARTING, RUNNING, STOPPING, STOPPED, FAILED)
LIVE: Final = (STARTING, RUNNING, STOPPING)

PRIVATE: Final = "private"
PUBLIC: Final = "public"

_ID = re.compile(r"w[a-z2-7]{16}")
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_COMMAND = 8192
MAX_ENV_BYTES = 256 * 1024
MAX_PORTS = 32


class LauncherError(Exception):
    """A workspace operation that cannot be done; the message says why, for people."""


class NotRunning(LauncherError):
    """The workspace exists but is not running (or is gone)."""


def new_id() -> str:
    """80 random bits, DNS-safe, starting with a letter so no label reads as a port."""
    return "w" + b32encode(secrets.token_bytes(10)).decode().lower()


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PortSpec:
    number: int
    name: str = ""
    visibility: str = PRIVATE

    @property
    def public(self) -> bool:
        return self.visibility == PUBLIC


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file a run left in its outputs directory: path relative to it, and its digest."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-workspace resource limits; 0 means no limit."""

    memory_bytes: int = 0
    pids: int = 0
    cpus: float = 0.0


@dataclass(frozen=True, slots=True)
class StartRequest:
    owner: str
    command: str
    base: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortSpec, ...] = ()
    ide_port: int | None = None
    limits: Limits | None = None
    kind: str = "workspace"
    labels: Mapping[str, str] = field(default_factory=dict)
    # Relative to /workspace: files left there are digested when the run ends (prebuild outputs).
    outputs_dir: str = ""
    # The output kept, in bytes; 0 = the launcher's default.
    log_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    owner: str
    command: str
    base: str
    state: str
    ports: tuple[PortSpec, ...] = ()
    ide_port: int | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str = ""
    kind: str = "workspace"
    labels: Mapping[str, str] = field(default_factory=dict)
    outputs_dir: str = ""
    outputs: tuple[OutputFile, ...] = ()
    log_bytes: int = 0

    def port(self, number: int) -> PortSpec | None:
        return next((p for p in self.ports if p.number == number), None)


def check_request(req: StartRequest) -> None:
    """Raises LauncherError naming the field that is wrong."""
    if not req.owner:
        raise LauncherError("owner: required")
    if not req.command.strip():
        raise LauncherError("command: required")
    if len(req.command) > MAX_COMMAND or "\x00" in req.command:
        raise LauncherError(f"command: at most {MAX_COMMAND} characters, no NUL")
    size = 0
    for name, value in req.env.items():
        if not _ENV_NAME.fullmatch(name):
            raise LauncherError(f"env: {name!r} is not a variable name (letters, digits, _; not starting with a digit)")
        if "\x00" in value:
            raise LauncherError(f"env: {name} contains NUL")
        size += len(name) + len(value.encode()) + 2
    if size > MAX_ENV_BYTES:
        raise LauncherError(f"env: at most {MAX_ENV_BYTES} bytes in all")
    if len(req.ports) > MAX_PORTS:
        raise LauncherError(f"ports: at most {MAX_PORTS}")
    seen: set[int] = set()
    for p in req.ports:
        if not 1 <= p.number <= 65535:
            raise LauncherError(f"ports: {p.number} is not a port number (1-65535)")
        if p.number in seen:
            raise LauncherError(f"ports: {p.number} is declared twice")
        if p.name and not _PORT_NAME.fullmatch(p.name):
            raise LauncherError(f"ports: name {p.name!r} (letters, digits, space . _ -, at most 40)")
        if p.visibility not in (PRIVATE, PUBLIC):
            raise LauncherError(f"ports: visibility of {p.number} must be 'private' or 'public'")
        seen.add(p.number)
    if req.ide_port is not None and not 1 <= req.ide_port <= 65535:
        raise LauncherError("ide_port: not a port number (1-65535)")
    if req.outputs_dir:
        parts = req.outputs_dir.split("/")
        if req.outputs_dir.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise LauncherError("outputs_dir: a relative path under /workspace without '.', '..' or '//'")
    if req.log_bytes and not 4096 <= req.log_bytes <= 1 << 30:
        raise LauncherError("log_bytes: from 4096 to 1 GiB")


Listener = Callable[[Workspace], None]


class Backend(ABC):
    """Runs workspaces. One instance per gateway process; methods are coroutines."""

    @abstractmethod
    async def open(self) -> None:
        """Prepare, and adopt or clean up what a previous gateway left running."""

    @abstractmethod
    async def close(self) -> None:
        """Stop watching; running workspaces keep running (a restart adopts them)."""

    @abstractmethod
    async def start(self, req: StartRequest, *, workspace_id: str | None = None) -> Workspace: ...

    @abstractmethod
    async def stop(self, workspace_id: str) -> Workspace: ...

    @abstractmethod
    async def delete(self, workspace_id: str) -> None: ...

    @abstractmethod
    def get(self, workspace_id: str) -> Workspace | None: ...

    @abstractmethod
    def workspaces(self) -> list[Workspace]: ...

    @abstractmethod
    async def set_visibility(self, workspace_id: str, port: int, visibility: str) -> Workspace: ...

    @abstractmethod
    async def connect(self, workspace_id: str, port: int) -> socket.socket:
        """A TCP connection to 127.0.0.1:port inside the workspace."""

    @abstractmethod
    def follow(self, workspace_id: str, *, live: bool = True) -> AsyncIterator[bytes]:
        """The workspace's output so far, then (live) what it writes until it ends."""

    @abstractmethod
    def tail(self, workspace_id: str) -> str:
        """The last lines of the output, shown with a failed workspace."""

    def run_dir(self, workspace_id: str) -> str:
        """Where other processes on this machine reach the workspace; "" when this backend has no such place."""
        return ""

    @abstractmethod
    def subscribe(self, listener: Listener) -> None:
        """Call listener with the new record at every state or visibility change."""
