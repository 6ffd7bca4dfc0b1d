"""The index on disk: SQLite (WAL) with borrowers, their events, recent block hashes and
the checkpoint, plus a generic key-value slot for other stages' state.

    meta(key, value)                 schema version, chain id and pool the file belongs to
    events(block, log_index, tx, borrower, kind)   Borrow / Repay / LiquidationCall
    borrowers(address, first_block)  every address with a Borrow event (first one's block)
    blocks(number, hash)             hashes of recent indexed blocks, for reorg detection
    checkpoint(block, hash)          the last block whose events are all stored
    kv(key, value)                   free slot (e.g. the health mirror's JSON)

A page of events and the checkpoint that covers it are written in one transaction, and a
page must start right after the checkpoint: a process killed at any point resumes from
the last committed page and can neither skip nor double-count a block. A reorg is undone
with `rewind(fork_block)`: events, borrowers first seen and block hashes past the fork go.

SQLite is used from one dedicated thread (its connection never changes threads); every
public method is a coroutine that runs there, so the event loop never blocks on disk.
Durability: WAL with synchronous=NORMAL survives a killed process; a power cut may lose
the last pages, which are then simply fetched again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from keeper.errors import ConfigError, KeeperError
from keeper.log import get_logger

__all__ = ["Checkpoint", "EventRow", "Store", "StoreError", "read_checkpoint"]

log = get_logger(__name__)

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    block INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    tx TEXT NOT NULL,
    borrower TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_borrower ON events (borrower);
CREATE TABLE IF NOT EXISTS borrowers (
    address TEXT PRIMARY KEY,
    first_block INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS borrowers_first_block ON borrowers (first_block);
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    block INTEGER NOT NULL,
    hash TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB);
"""


class StoreError(KeeperError):
    """The index file refused a write that would break its invariants."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every event up to and including `block` is stored. `hash` may be unknown (None)
    for checkpoints written mid-backfill, where blocks are long final."""

    block: int
    hash: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    block: int
    log_index: int
    tx: str
    borrower: str
    kind: str  # "borrow" | "repay" | "liquidation"


class Store:
    """Open with `store = await Store.open(path)`; `await store.close()` when done."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keeper-store")
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str = "keeper.db") -> Store:
        store = cls(Path(path))
        try:
            await store._run(store._open)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ConfigError(
                    f"KEEPER_DB_PATH: {self.path.name} has index schema {row[0]}, this keeper uses "
                    f"{SCHEMA_VERSION}; move the file away to rebuild the index"
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    # -- identity ------------------------------------------------------------------------

    async def bind(self, chain_id: int, pool: str) -> None:
        """Tie the file to one market; a file of another chain or pool is refused."""
        await self._run(self._bind, chain_id, pool.lower())

    def _bind(self, chain_id: int, pool: str) -> None:
        db = self._db
        rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('chain_id', 'pool')").fetchall())
        if not rows:
            with _Transaction(db):
                db.execute("INSERT INTO meta VALUES ('chain_id', ?), ('pool', ?)", (str(chain_id), pool))
            return
        if rows.get("chain_id") != str(chain_id) or rows.get("pool") != pool:
            raise ConfigError(
                f"KEEPER_DB_PATH: {self.path.name} indexes pool {rows.get('pool')} on chain "
                f"{rows.get('chain_id')}, not pool {pool} on chain {chain_id}; use another file"
            )

    # -- reads ---------------------------------------------------------------------------

    async def checkpoint(self) -> Checkpoint | None:
        return await self._run(self._checkpoint)

    def _checkpoint(self) -> Checkpoint | None:
        row = self._db.execute("SELECT block, hash FROM checkpoint WHERE id = 1").fetchone()
        return Checkpoint(row[0], row[1]) if row else None

    async def borrowers(self) -> set[str]:
        return await self._run(lambda: {r[0] for r in self._db.execute("SELECT address FROM borrowers")})

    async def borrowers_with_first_block(self) -> dict[str, int]:
        return await self._run(lambda: dict(self._db.execute("SELECT address, first_block FROM borrowers")))

    async def events(self, borrower: str | None = None) -> list[EventRow]:
        def q() -> list[EventRow]:
            sql = "SELECT block, log_index, tx, borrower, kind FROM events"
            args: tuple = ()
            if borrower is not None:
                sql, args = sql + " WHERE borrower = ?", (borrower,)
            return [EventRow(*r) for r in self._db.execute(sql + " ORDER BY block, log_index", args)]

        return await self._run(q)

    async def block_hashes(self) -> dict[int, str]:
        """Stored hashes of recent blocks, number -> hash."""
        return await self._run(lambda: dict(self._db.execute("SELECT number, hash FROM blocks")))

    async def counts(self) -> dict[str, int]:
        def q() -> dict[str, int]:
            db = self._db
            return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("events", "borrowers", "blocks")}

        return await self._run(q)

    # -- writes --------------------------------------------------------------------------

    async def commit_page(
        self,
        from_block: int,
        to_block: int,
        events: Sequence[EventRow],
        *,
        to_hash: str | None = None,
        block_hashes: Mapping[int, str] | None = None,
        keep_blocks: int = 128,
    ) -> set[str]:
        """Store the events of [from_block, to_block] and move the checkpoint to `to_block`,
        in one transaction. Returns the borrowers seen for the first time.

        `from_block` must be the block right after the checkpoint (any block when there is
        none yet); hashes of blocks older than `to_block - keep_blocks` are pruned.
        """
        return await self._run(
            self._commit_page, from_block, to_block, list(events), to_hash, dict(block_hashes or {}),
            keep_blocks,
        )

    def _commit_page(self, from_block: int, to_block: int, events: list[EventRow], to_hash: str | None,
                     block_hashes: dict[int, str], keep_blocks: int) -> set[str]:
        if to_block < from_block:
            raise StoreError(f"empty page [{from_block}, {to_block}]")
        stray = [e for e in events if not from_block <= e.block <= to_block]
        if stray:
            raise StoreError(f"event at block {stray[0].block} outside page [{from_block}, {to_block}]")
        db = self._db
        new: set[str] = set()
        with _Transaction(db):
            cp = self._checkpoint()
            if cp is not None and from_block != cp.block + 1:
                raise StoreError(f"page starts at {from_block} but the checkpoint is {cp.block}")
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                [(e.block, e.log_index, e.tx, e.borrower, e.kind) for e in events],
            )
            for e in sorted(events, key=lambda e: (e.block, e.log_index)):
                if e.kind == "borrow":
                    cur = db.execute("INSERT OR IGNORE INTO borrowers VALUES (?, ?)", (e.borrower, e.block))
                    if cur.rowcount == 1:
                        new.add(e.borrower)
            if to_hash is not None:
                block_hashes[to_block] = to_hash
            if block_hashes:
                db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?)", sorted(block_hashes.items()))
            db.execute("DELETE FROM blocks WHERE number <= ?", (to_block - keep_blocks,))
            db.execute(
                "INSERT INTO checkpoint VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET block = excluded.block, hash = excluded.hash",
                (to_block, to_hash),
            )
        return new

    async def rewind(self, fork_block: int) -> set[str]:
        """Forget everything after `fork_block` (the last block both branches share).

        Returns the borrowers whose every Borrow event was past the fork: they are gone.
        The checkpoint moves to `fork_block` with its stored hash (if any).
        """
        return await self._run(self._rewind, fork_block)

    def _rewind(self, fork_block: int) -> set[str]:
        db = self._db
        with _Transaction(db):
            cp = self._checkpoint()
            if cp is None or cp.block <= fork_block:
                return set()
            removed = {r[0] for r in db.execute(
                "DELETE FROM borrowers WHERE first_block > ? RETURNING address", (fork_block,))}
            db.execute("DELETE FROM events WHERE block > ?", (fork_block,))
            db.execute("DELETE FROM blocks WHERE number > ?", (fork_block,))
            row = db.execute("SELECT hash FROM blocks WHERE number = ?", (fork_block,)).fetchone()
            db.execute("UPDATE checkpoint SET block = ?, hash = ? WHERE id = 1",
                       (fork_block, row[0] if row else None))
        return removed

    async def set_block_hash(self, number: int, block_hash: str) -> None:
        """Record a hash learned later (e.g. the checkpoint's after a mid-backfill restart)."""
        def w() -> None:
            with _Transaction(self._db):
                self._db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?)", (number, block_hash))
                self._db.execute("UPDATE checkpoint SET hash = ? WHERE id = 1 AND block = ?",
                                 (block_hash, number))

        await self._run(w)

    # -- key-value slot ------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        row = await self._run(
            lambda: self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def put(self, key: str, value: bytes) -> None:
        def w() -> None:
            with _Transaction(self._db):
                self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, sqlite3.Binary(value)))

        await self._run(w)

    async def delete(self, key: str) -> None:
        def w() -> None:
            with _Transaction(self._db):
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

        await self._run(w)

    async def get_json(self, key: str) -> Any:
        raw = await self.get(key)
        return None if raw is None else json.loads(raw)

    async def put_json(self, key: str, value: Any) -> None:
        await self.put(key, json.dumps(value, separators=(",", ":")).encode())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def read_checkpoint(path: Path | str) -> Checkpoint | None:
    """Synchronous read-only peek at a file's checkpoint (for tools and tests; use in a thread)."""
    uri = f"file:{Path(path)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.OperationalError:
        return None
    try:
        row = conn.execute("SELECT block, hash FROM checkpoint WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None
    finally:
        conn.close()
    return Checkpoint(row[0], row[1]) if row else None
