"""The gateway's SQLite file: its schema version, its migrations and several processes opening it.

A database is a file that outlives the code that wrote it, so what is
checked is what an operator sees across upgrades: an old file keeps its
tokens, a file from a newer wsgate is refused rather than damaged, and worker
processes starting together migrate it once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import auth.sqlite
from auth.docstore import SQLiteDocStore
from auth.sqlite import MIGRATIONS, Database, SchemaTooNew, statements
from auth.tokens import SQLiteTokenStore

# The schema auth/tokens.py created (and stamped user_version=1) before auth/sqlite.py existed.
TOKENS_SCHEMA_V1 = """
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

# A migration that fails if applied twice (no IF NOT EXISTS) and counts its runs.
ONCE = "CREATE TABLE once (n INTEGER NOT NULL); INSERT INTO once VALUES (1);"


def inspect(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What an operator's `sqlite3` shell would see."""
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute(sql).fetchall()]
    finally:
        db.close()


def user_version(path: Path) -> int:
    value = inspect(path, "PRAGMA user_version")[0][0]
    assert isinstance(value, int)
    return value


def tables(path: Path) -> set[str]:
    return {str(r[0]) for r in inspect(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migration_1_is_the_token_schema_as_it_was() -> None:
    assert MIGRATIONS[0] == TOKENS_SCHEMA_V1  # never edit a migration: files out there were built by it


async def test_a_new_file_gets_every_migration_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wsgate.db"
    db = Database(path)
    await db.open()
    assert await db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert await db.run(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) >= 1000
    await db.close()
    assert user_version(path) == len(MIGRATIONS) == 3
    assert {"tokens", "docs", "generations", "audit", "tombstones"} <= tables(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in path.parent.glob("wsgate.db-*"):  # the WAL and its index hold the same data
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra


async def test_an_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    path = state / "wsgate.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    store = SQLiteDocStore(path)
    await store.open()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o755  # the operator's directory: not ours to change


async def test_a_version_1_file_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wsgate.db"
    # Built as the old SQLiteTokenStore did it, holding one live token.
    old = SQLiteTokenStore(Database(path, migrations=[TOKENS_SCHEMA_V1]))
    token, info = await old.create("dev:alice", "laptop", ["api"], 3600)
    await old.db.close()
    assert user_version(path) == 1 and "docs" not in tables(path)

    tokens, docs = SQLiteTokenStore(path), SQLiteDocStore(path)
    seen = await tokens.verify(token)
    assert seen is not None and seen.id == info.id and seen.owner == "dev:alice"
    assert user_version(path) == len(MIGRATIONS)
    assert (await docs.put("team", "acme", {"members": ["dev:alice"]})).version == 1
    assert [t.id for t in await tokens.list("dev:alice")] == [info.id]
    await tokens.close()
    await docs.close()


@pytest.mark.parametrize("opener", ["database", "tokens", "docs"])
async def test_a_file_from_a_newer_wsgate_is_refused_and_left_alone(tmp_path: Path, opener: str) -> None:
    path = tmp_path / "wsgate.db"
    raw = sqlite3.connect(path)
    raw.executescript("CREATE TABLE future (x); PRAGMA user_version = 7;")
    raw.close()
    expected = f"{path}: written by a newer wsgate (schema 7); this one knows up to {len(MIGRATIONS)}"
    with pytest.raises(SchemaTooNew) as e:
        if opener == "database":
            await Database(path).open()
        elif opener == "tokens":
            await SQLiteTokenStore(path).list()
        else:
            await SQLiteDocStore(path).get("team", "acme")
    assert str(e.value) == expected
    assert user_version(path) == 7 and tables(path) == {"future"}


async def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.db"
    broken = "CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await Database(path, migrations=[*MIGRATIONS, broken]).open()
    assert user_version(path) == len(MIGRATIONS)  # the steps before it stay applied
    assert "half" not in tables(path)
    # Fixed in the next release, it applies.
    db = Database(path, migrations=[*MIGRATIONS, ONCE])
    await db.open()
    await db.close()
    assert user_version(path) == len(MIGRATIONS) + 1


async def test_run_is_one_transaction(tmp_path: Path) -> None:
    db = Database(tmp_path / "wsgate.db")

    def half_then_fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO generations (kind, n) VALUES ('x', 1)")
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        await db.run(half_then_fail)
    assert await db.run(lambda c: c.execute("SELECT COUNT(*) FROM generations").fetchone()[0], write=False) == 0
    assert threading.current_thread().name not in await db.run(lambda c: threading.current_thread().name)
    await db.close()
    await db.close()  # twice is harmless
    assert await db.run(lambda c: 1, write=False) == 1  # and a later run opens it again
    await db.close()


def test_racing_threads_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.db"
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker() -> None:
        async def go() -> None:
            db = Database(path, migrations=[*MIGRATIONS, ONCE])
            barrier.wait()
            await db.open()
            await db.close()

        try:
            asyncio.run(go())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert inspect(path, "SELECT n FROM once") == [(1,)]
    assert user_version(path) == len(MIGRATIONS) + 1


RACER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from auth.sqlite import MIGRATIONS, Database
    from auth.docstore import SQLiteDocStore

    async def main(path: Path, at: float) -> None:
        db = Database(path, migrations=[*MIGRATIONS, sys.argv[3]])
        time.sleep(max(0.0, at - time.time()))
        docs = SQLiteDocStore(db)
        await docs.put("worker", sys.argv[4], {"pid": 1})
        await db.close()

    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2])))
    """
)


def test_racing_worker_processes_migrate_once_and_all_write(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wsgate.db"
    at = time.time() + 1.5  # every process has imported by then; they open together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(at), ONCE, f"w{i}"],
            stderr=subprocess.PIPE,
            cwd=Path(auth.sqlite.__file__).resolve().parent.parent,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert inspect(path, "SELECT n FROM once") == [(1,)]
    assert inspect(path, "SELECT id FROM docs WHERE kind = 'worker' ORDER BY id") == [
        ("w0",),
        ("w1",),
        ("w2",),
        ("w3",),
    ]
    assert inspect(path, "SELECT n FROM generations WHERE kind = 'worker'") == [(4,)]


def test_statements_split_where_sqlite_would() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; END;

    INSERT INTO t VALUES ('e;f')
    """
    got = list(statements(script))
    assert len(got) == 3
    assert got[1].startswith("CREATE TRIGGER") and got[1].endswith("END;")
    assert list(statements(TOKENS_SCHEMA_V1)) == [s.strip() + ";" for s in TOKENS_SCHEMA_V1.split(";")[:2]]
    with pytest.raises(ValueError, match="incomplete"):
        list(statements("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1;"))
