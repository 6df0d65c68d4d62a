"""The embedded default store: one SQLite file in WAL mode.

Statements are tiny and run directly on the event loop: a WAL commit without fsync
costs tens of microseconds, less than a hop to a thread. ``synchronous=NORMAL`` keeps
every commit across a process crash (``kill -9``); add ``?synchronous=full`` to the URL
to survive power loss too. Several processes may share the file (``--workers``).

Checkpoints (copying the WAL into the database file, with the fsyncs ``synchronous``
asks for) run on a thread of their own with its own connection, so the event loop never
waits on a disk flush; the connection's own automatic checkpoint stays on, at a larger
size, only as a backstop. Durability is unchanged: a commit is in the WAL either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from gateway.store.base import PENDING, QueueEntry, Store, StoreUnavailable, TxRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    partner TEXT NOT NULL, txid TEXT NOT NULL, action TEXT NOT NULL, fingerprint TEXT NOT NULL,
    state TEXT NOT NULL, status INTEGER, body BLOB, voided_by TEXT,
    created_at REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (partner, txid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_expiry ON ledger (expires_at);
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY, route TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, next_at REAL NOT NULL, created_at REAL NOT NULL,
    last_error TEXT, lease_owner TEXT, lease_until REAL NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (dead, next_at);
"""


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``; ``sqlite://:memory:``."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return path or parts.netloc or ":memory:"


class _Guarded:
    """The connection, with ``OperationalError`` (disk full, I/O error, busy) as StoreUnavailable.

    Every statement is its own autocommit transaction, so a failed one changed nothing.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection):
        self.raw = raw

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self.raw.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable() from exc

    def executemany(self, sql: str, rows: list) -> sqlite3.Cursor:
        try:
            return self.raw.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable() from exc


async def _enable_wal(db: sqlite3.Connection, attempts: int = 50) -> None:
    """Switch to WAL, retrying: several workers opening a new file at once race for the
    exclusive lock the switch needs, and SQLite answers "locked" without waiting."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))


class _Checkpointer(threading.Thread):
    """Runs passive WAL checkpoints every ``interval`` seconds on its own connection."""

    def __init__(self, path: str, interval: float = 0.1):
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.path, self.interval = path, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            # Lowest CPU priority: copying pages waits for the event loop's idle moments.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            while not self.stopping.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # busy or transient: the next round (or the backstop) catches up
        finally:
            db.close()


class SqliteStore(Store):
    def __init__(self, url: str):
        self.url = url
        self.path = sqlite_path(url)
        self.synchronous = parse_qs(urlsplit(url).query).get("synchronous", ["normal"])[0].upper()
        self._db: _Guarded | None = None
        self._checkpointer: _Checkpointer | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA busy_timeout=5000")
        await _enable_wal(db)
        db.execute(f"PRAGMA synchronous={self.synchronous if self.synchronous in ('NORMAL', 'FULL') else 'NORMAL'}")
        db.executescript(_SCHEMA)
        self._db = _Guarded(db)
        self.purge_expired()
        if self.path != ":memory:":
            db.execute("PRAGMA wal_autocheckpoint=10000")  # backstop only: see the module docstring
            self._checkpointer = _Checkpointer(self.path)
            self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stopping.set()
            self._checkpointer.join()
            self._checkpointer = None
        if self._db is not None:
            self._db.raw.close()
            self._db = None

    @property
    def db(self) -> _Guarded:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    def purge_expired(self) -> None:
        """Drop ledger rows and kv entries past their retention (never before)."""
        now = time.time()
        self.db.execute("DELETE FROM ledger WHERE expires_at < ?", (now,))
        self.db.execute("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at < ?", (now,))

    # -- ledger ------------------------------------------------------------------------
    async def tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        now = time.time()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO ledger VALUES (?,?,?,?,?,NULL,NULL,NULL,?,?)",
            (rec.partner, rec.txid, rec.action, rec.fingerprint, PENDING, now, now + ttl),
        )
        if cur.rowcount == 1:
            rec.created_at = now
            return None
        existing = await self.tx_get(rec.partner, rec.txid)
        if existing is None:  # expired between the two statements: take it over
            self.db.execute("DELETE FROM ledger WHERE partner=? AND txid=?", (rec.partner, rec.txid))
            return await self.tx_begin(rec, ttl)
        return existing

    async def tx_get(self, partner: str, txid: str) -> TxRecord | None:
        row = self.db.execute(
            "SELECT action, fingerprint, state, status, body, voided_by, created_at FROM ledger"
            " WHERE partner=? AND txid=? AND expires_at >= ?",
            (partner, txid, time.time()),
        ).fetchone()
        if row is None:
            return None
        return TxRecord(partner, txid, row[0], row[1], row[2], row[3], row[4], row[5], row[6])

    async def tx_finish(self, partner: str, txid: str, state: str, status: int, body: bytes, ttl: float) -> None:
        self.db.execute(
            "UPDATE ledger SET state=?, status=?, body=?, expires_at=MAX(expires_at, ?) WHERE partner=? AND txid=?",
            (state, status, body, time.time() + ttl, partner, txid),
        )

    async def tx_forget(self, partner: str, txid: str) -> None:
        self.db.execute("DELETE FROM ledger WHERE partner=? AND txid=?", (partner, txid))

    async def tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
        cur = self.db.execute(
            "UPDATE ledger SET voided_by=? WHERE partner=? AND txid=? AND voided_by IS NULL",
            (by_txid, partner, bet_txid),
        )
        if cur.rowcount == 1:
            return None
        row = self.db.execute(
            "SELECT voided_by FROM ledger WHERE partner=? AND txid=?", (partner, bet_txid)
        ).fetchone()
        return row[0] if row else by_txid

    async def tx_unvoid(self, partner: str, bet_txid: str, by_txid: str) -> None:
        self.db.execute(
            "UPDATE ledger SET voided_by=NULL WHERE partner=? AND txid=? AND voided_by=?", (partner, bet_txid, by_txid)
        )

    # -- kv ----------------------------------------------------------------------------
    async def kv_put(self, ns: str, key: str, value: bytes, ttl: float | None = None, *, only_new: bool = False) -> bool:
        now = time.time()
        expires = now + ttl if ttl else None
        if only_new:
            # One statement (one commit): insert, or take over an expired entry, else refuse.
            cur = self.db.execute(
                "INSERT INTO kv VALUES (?,?,?,?) ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value,"
                " expires_at=excluded.expires_at WHERE kv.expires_at < ?", (ns, key, value, expires, now))
            return cur.rowcount == 1
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, value, expires))
        return True

    async def kv_get(self, ns: str, key: str) -> bytes | None:
        row = self.db.execute(
            "SELECT value FROM kv WHERE ns=? AND key=? AND (expires_at IS NULL OR expires_at >= ?)",
            (ns, key, time.time()),
        ).fetchone()
        return row[0] if row else None

    # -- queue -------------------------------------------------------------------------
    async def q_put(self, entry: QueueEntry) -> None:
        entry.id = entry.id or uuid.uuid4().hex
        entry.created_at = entry.created_at or time.time()
        self.db.execute(
            "INSERT INTO queue (id, route, payload, attempts, max_attempts, next_at, created_at, last_error)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (entry.id, entry.route, json.dumps(entry.payload), entry.attempts, entry.max_attempts,
             entry.next_at or entry.created_at, entry.created_at, entry.last_error),
        )

    def _entry(self, row: tuple) -> QueueEntry:
        return QueueEntry(id=row[0], route=row[1], payload=json.loads(row[2]), attempts=row[3],
                          max_attempts=row[4], next_at=row[5], created_at=row[6], last_error=row[7])

    _COLS = "id, route, payload, attempts, max_attempts, next_at, created_at, last_error"

    async def q_claim(self, consumer: str, limit: int, lease_seconds: float) -> list[QueueEntry]:
        now = time.time()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"SELECT {self._COLS} FROM queue WHERE dead=0 AND next_at<=? AND lease_until<=? ORDER BY next_at LIMIT ?",  # noqa: S608
                (now, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE queue SET lease_owner=?, lease_until=? WHERE id=?",
                [(consumer, now + lease_seconds, row[0]) for row in rows],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [self._entry(row) for row in rows]

    async def q_ack(self, entry: QueueEntry) -> None:
        self.db.execute("DELETE FROM queue WHERE id=?", (entry.id,))

    async def q_retry(self, entry: QueueEntry, next_at: float, error: str) -> None:
        entry.attempts += 1
        self.db.execute(
            "UPDATE queue SET attempts=?, next_at=?, last_error=?, lease_owner=NULL, lease_until=0 WHERE id=?",
            (entry.attempts, next_at, error[:500], entry.id),
        )

    async def q_dead(self, entry: QueueEntry, error: str) -> None:
        self.db.execute(
            "UPDATE queue SET dead=1, attempts=?, last_error=?, lease_owner=NULL, lease_until=0 WHERE id=?",
            (entry.attempts, error[:500], entry.id),
        )

    async def q_stats(self) -> dict:
        depth, oldest = self.db.execute("SELECT COUNT(*), MIN(created_at) FROM queue WHERE dead=0").fetchone()
        dead = self.db.execute("SELECT COUNT(*) FROM queue WHERE dead=1").fetchone()[0]
        return {"depth": depth, "oldest_age": max(0.0, time.time() - oldest) if oldest else 0.0, "dead": dead}

    async def dlq_list(self, limit: int = 100) -> list[QueueEntry]:
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM queue WHERE dead=1 ORDER BY created_at LIMIT ?", (limit,)  # noqa: S608
        ).fetchall()
        return [self._entry(row) for row in rows]

    async def dlq_get(self, entry_id: str) -> QueueEntry | None:
        row = self.db.execute(f"SELECT {self._COLS} FROM queue WHERE dead=1 AND id=?", (entry_id,)).fetchone()  # noqa: S608
        return self._entry(row) if row else None

    async def dlq_replay(self, entry_id: str) -> bool:
        cur = self.db.execute(
            "UPDATE queue SET dead=0, attempts=0, next_at=?, lease_until=0 WHERE id=? AND dead=1",
            (time.time(), entry_id),
        )
        return cur.rowcount == 1

    async def dlq_purge(self, entry_id: str | None = None) -> int:
        if entry_id is None:
            return self.db.execute("DELETE FROM queue WHERE dead=1").rowcount
        return self.db.execute("DELETE FROM queue WHERE dead=1 AND id=?", (entry_id,)).rowcount
