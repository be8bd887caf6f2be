"""The gateway's one SQLite file (`<state>/wsgate.db`): its connection, thread and schema.

Every store that keeps state on disk (tokens, documents) shares this file, so
there is one schema version for all of them: `PRAGMA user_version` counts how
many of `MIGRATIONS` have been applied. A migration is only ever appended,
never edited, because databases out in the world were built by the old text.

Several worker processes open the same file. Each migration step runs under
`BEGIN IMMEDIATE` (SQLite's write lock) and re-reads the version once it holds
the lock, so of two processes starting at once one migrates and the other
finds the work done. WAL mode lets readers carry on while one process writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from certs._fs import private_dir

T = TypeVar("T")

# Migration 1 is the token table exactly as auth/tokens.py created it before
# this module existed, so a file at user_version=1 is already valid here.
_TOKENS = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_used REAL NOT NULL DEFAULT 0,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_owner ON tokens(owner);
"""

# Migration 2: versioned JSON documents (auth/docstore.py), a change counter
# per kind for pollers, and the audit log.
_DOCS = """
CREATE TABLE docs (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE generations (
    kind TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit(kind, seq);
"""

# Migration 3: the last version of each deleted document, so that a document created again
# under the same id continues its versions and an If-Match kept from before the delete fails.
_TOMBSTONES = """
CREATE TABLE tombstones (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
"""

MIGRATIONS: Final[list[str]] = [_TOKENS, _DOCS, _TOMBSTONES]
BUSY_TIMEOUT: Final = 10.0  # seconds a writer waits for another process's write lock


class SchemaTooNew(RuntimeError):
    """The file was migrated by a newer wsgate; running old code on it could corrupt it."""


def statements(script: str) -> Iterator[str]:
    """The SQL statements of `script`, one by one.

    `executescript` would COMMIT the caller's open transaction first, which
    would drop the lock a migration holds; executing one statement at a time
    keeps the whole step in the caller's transaction.
    """
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):  # a ';' inside a string or trigger is not the end
            if buf.strip(" \t\r\n;"):
                yield buf.strip()
            buf = ""
    if buf.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:60]!r}")


class Database:
    """One SQLite file, one connection, one thread.

    The connection is opened (and the schema migrated) on first use, inside the
    database's own thread, and only that thread ever touches it: the event loop
    hands work over with `run` and never waits on the disk itself. Open it after
    worker processes fork, not before: a connection does not survive a fork.
    """

    def __init__(self, path: Path, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self.migrations = tuple(migrations)
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Connects and migrates now, so that a bad file fails start-up rather than the first request."""
        await self.run(lambda db: None, write=False)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """`fn(connection)` in the database's thread, inside one transaction.

        The transaction commits when `fn` returns and rolls back when it raises.
        `write=True` takes the write lock up front (`BEGIN IMMEDIATE`): a read
        that is followed by a write then cannot fail halfway on another
        process's write. Pure reads pass `write=False` and never wait for writers.
        """
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsgate-sqlite")

        def work() -> T:
            db = self._connect()
            if db.in_transaction:  # a COMMIT that failed earlier left one open
                db.rollback()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            with db:  # COMMIT, or ROLLBACK on an exception
                return fn(db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def close(self) -> None:
        """Closes the connection and stops the thread; a later `run` opens them again."""
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(thread, shut)
        thread.shutdown(wait=False)

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        # A new directory is made 0700; an existing one is the operator's choice and left alone.
        private_dir(self.path.parent, tighten=False)
        # Created 0600 before SQLite sees it; the -wal and -shm files inherit that mode. Only when
        # missing: closing any descriptor of a file drops this process's POSIX locks on it, including
        # those another connection to the same database holds (SQLite's own warning).
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        if self.path.stat().st_mode & 0o077:
            self.path.chmod(0o600)
        # isolation_level=None: no implicit BEGINs; `run` and `_migrate` say where transactions go.
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            self._check_version(db)
            self._enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    @staticmethod
    def _enable_wal(db: sqlite3.Connection) -> None:
        """Switches to WAL, waiting out processes that switch or recover it at the same moment.

        SQLite answers SQLITE_BUSY here without calling the busy handler when another connection
        holds the lock the switch needs, so the wait is ours.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        delay = 0.005
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _check_version(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(self.migrations):
            raise SchemaTooNew(
                f"{self.path}: written by a newer wsgate (schema {version}); "
                f"this one knows up to {len(self.migrations)}"
            )
        return version

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Applies the missing migrations, each in its own transaction under the write lock."""
        while self._check_version(db) < len(self.migrations):
            db.execute("BEGIN IMMEDIATE")
            try:
                version = self._check_version(db)  # another process may have migrated while we waited
                if version < len(self.migrations):
                    for sql in statements(self.migrations[version]):
                        db.execute(sql)
                    db.execute(f"PRAGMA user_version={version + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
