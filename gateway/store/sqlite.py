"""The embedded default store: one SQLite file in WAL mode.

Statements are tiny and run directly on the event loop: a WAL commit without fsync
costs tens of microseconds, less than a hop to a thread. ``synchronous=NORMAL`` keeps
every commit across a process crash (``kill -9``); add ``?synchronous=full`` to the URL
to survive power loss too. Several processes may share the file (``--workers``).

Group commit: the writes asked for in one turn of the event loop are queued and run
together, in one transaction, at the start of the next turn; each caller resumes only
once *its* write is committed (or learns that it failed, and then nothing of it was
kept). Under load that is one commit — and one WAL append of each page touched — for
dozens of requests, instead of one per statement. The write lock is held only while
the queued writes run (microseconds), so several workers sharing the file take turns
without waiting on each other's request handling; when another process holds it, the
queue waits on a timer, never blocking the loop. Reads see committed data only.

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

from gateway.store.base import (
    ABSENT,
    DONE,
    FINISHED,
    KEPT,
    PENDING,
    PURGED,
    QUEUED,
    QueueEntry,
    Resolution,
    Store,
    StoreUnavailable,
    TransactionBusy,
    TransactionOpen,
    TxRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    partner TEXT NOT NULL, txid TEXT NOT NULL, action TEXT NOT NULL, fingerprint TEXT NOT NULL,
    state TEXT NOT NULL, status INTEGER, body BLOB, voided_by TEXT,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, payload BLOB,
    PRIMARY KEY (partner, txid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_expiry ON ledger (expires_at);
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY, route TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, next_at REAL NOT NULL, created_at REAL NOT NULL,
    last_error TEXT, lease_owner TEXT, lease_until REAL NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (dead, next_at);
CREATE TABLE IF NOT EXISTS dlq_settled (
    id TEXT PRIMARY KEY, outcome TEXT NOT NULL, partner TEXT NOT NULL, txid TEXT NOT NULL, status INTEGER,
    body BLOB, unvoid TEXT NOT NULL, settled_at REAL NOT NULL, ledger TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dlq_settled_expiry ON dlq_settled (expires_at);
CREATE TABLE IF NOT EXISTS rate_limits (key TEXT PRIMARY KEY, tat REAL NOT NULL) WITHOUT ROWID;
"""
#: Run after ``_SCHEMA`` (a file written before ``payload`` existed gets it first).
_INDEXES = """
CREATE INDEX IF NOT EXISTS ledger_pending ON ledger (created_at) WHERE state = 'pending';
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an earlier version up to this schema (columns are only added)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
    if "payload" not in columns:
        db.execute("ALTER TABLE ledger ADD COLUMN payload BLOB")
    db.executescript(_INDEXES)


_TX_COLUMNS = "action, fingerprint, state, status, body, voided_by, created_at, payload"


def _record(partner: str, txid: str, row: tuple) -> TxRecord:
    return TxRecord(partner, txid, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])


def _gcra_early(tat: float, now: float, rate: float, capacity: float) -> float:
    """How long before a request may take from a bucket full again at ``tat`` (0.0: now).

    A microsecond of grace: Unix times carry about a quarter of one in rounding."""
    early = max(tat, now) - now - (capacity - 1) / rate
    return early if early > 1e-6 else 0.0


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``; ``sqlite://:memory:``."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return path or parts.netloc or ":memory:"


class _Guarded:
    """The connection, with ``OperationalError`` (disk full, I/O error, busy) as StoreUnavailable."""

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
    #: How long a writer waits for another process (``--workers``) to release the file.
    lock_wait_seconds = 5.0
    #: Expired ledger rows and kv entries (replay keys: one per request) are deleted this
    #: often while serving, a chunk per statement, so the file stops growing at the rate
    #: of traffic times retention and no single delete holds the write lock for long.
    sweep_seconds = 60.0
    sweep_chunk = 500

    def __init__(self, url: str):
        self.url = url
        self.path = sqlite_path(url)
        self.synchronous = parse_qs(urlsplit(url).query).get("synchronous", ["normal"])[0].upper()
        self._db: _Guarded | None = None
        self._checkpointer: _Checkpointer | None = None
        self._queued: list[tuple] = []  # (fn, args, future) of the writes waiting for the next commit
        self._flushing: asyncio.Handle | None = None
        self._locked_since: float | None = None
        self._sweeper: asyncio.Task | None = None
        # The loop that opened the store, kept: asyncio.get_running_loop() costs a getpid()
        # system call on Python 3.11, and the hot path would ask for it several times a write.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA busy_timeout=5000")
        await _enable_wal(db)
        db.execute(f"PRAGMA synchronous={self.synchronous if self.synchronous in ('NORMAL', 'FULL') else 'NORMAL'}")
        db.executescript(_SCHEMA)
        _migrate(db)
        self._db = _Guarded(db)
        self.purge_expired()
        # From here on a busy file is waited for without blocking the loop (see _flush).
        db.execute("PRAGMA busy_timeout=0")
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep_forever(), name="sqlite-sweeper")
        if self.path != ":memory:":
            db.execute("PRAGMA wal_autocheckpoint=10000")  # backstop only: see the module docstring
            self._checkpointer = _Checkpointer(self.path)
            self._checkpointer.start()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if self._queued:
            self._flush()  # what was asked for before closing is still written
        if self._flushing is not None:  # ...unless another process holds the file
            self._flushing.cancel()
            self._flushing = None
            self._fail_queued()
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

    # -- group commit ------------------------------------------------------------------
    async def _write(self, fn, *args):
        """``fn(*args)`` in the next group transaction; its result once committed.

        ``fn`` runs without yielding, so it is atomic with respect to other requests; one
        with several writes must leave nothing behind when a later one fails (see
        ``_atomic``). It runs even if its caller has been cancelled
        meanwhile: a write asked for is a write made (an outcome must be recorded).
        """
        waiter = self._loop.create_future()
        self._queued.append((fn, args, waiter))
        if self._flushing is None:
            self._flushing = self._loop.call_soon(self._flush)
        return await waiter

    def _flush(self) -> None:
        """Run every queued write in one transaction and tell each caller how it went."""
        self._flushing = None
        queued = self._queued
        if not queued:
            return
        raw = self.db.raw
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                self._wait_for_lock()
            else:
                self._fail_queued()
            return
        self._locked_since, self._queued = None, []
        outcomes = []
        for fn, args, waiter in queued:
            try:
                outcomes.append((waiter, fn(*args), None))
            except Exception as exc:  # noqa: BLE001 - the caller's to handle
                if not raw.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O)
                    self._fail(queued)
                    return
                outcomes.append((waiter, None, exc))
        try:
            raw.execute("COMMIT")
        except sqlite3.Error:
            if raw.in_transaction:
                try:
                    raw.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._fail(queued)
            return
        for waiter, result, exc in outcomes:
            if waiter.done():
                continue  # its caller was cancelled; the write stands all the same
            if exc is None:
                waiter.set_result(result)
            else:
                waiter.set_exception(exc)

    def _wait_for_lock(self) -> None:
        """Another process holds the write lock: try again shortly, up to ``lock_wait_seconds``."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        waited = now - self._locked_since
        if waited > self.lock_wait_seconds:
            self._fail_queued()
            return
        self._flushing = self._loop.call_later(min(0.0002 * 2 ** min(waited * 1000, 6), 0.01), self._flush)

    def _fail_queued(self) -> None:
        queued, self._queued, self._locked_since = self._queued, [], None
        self._fail(queued)

    @staticmethod
    def _fail(queued: list) -> None:
        """The group transaction is lost: every write in it fails, none of it is kept."""
        for _, _, waiter in queued:
            if not waiter.done():
                waiter.set_exception(StoreUnavailable())

    def _atomic(self, fn, *args):
        """Several statements that take effect together or not at all."""
        db = self.db
        db.execute("SAVEPOINT op")
        try:
            result = fn(*args)
        except BaseException:
            if db.raw.in_transaction:
                db.raw.execute("ROLLBACK TO op")
                db.raw.execute("RELEASE op")
            raise
        db.execute("RELEASE op")
        return result

    async def ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    async def sweep(self) -> int:
        """Delete what has expired, a chunk at a time; return how many rows went."""
        total = 0
        for table, key in (("ledger", "partner, txid"), ("kv", "ns, key"), ("dlq_settled", "id")):
            while True:
                now = time.time()
                deleted = (await self._write(
                    self.db.execute,
                    f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table}"  # noqa: S608 - fixed names
                    " WHERE expires_at < ? LIMIT ?)", (now, self.sweep_chunk))).rowcount
                total += deleted
                if deleted < self.sweep_chunk:
                    break
        return total

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self.sweep()
            except StoreUnavailable:
                pass  # a busy or full disk: the next round tries again

    def purge_expired(self) -> None:
        """Drop ledger rows and kv entries past their retention (never before)."""
        now = time.time()
        self.db.execute("DELETE FROM ledger WHERE expires_at < ?", (now,))
        self.db.execute("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at < ?", (now,))
        self.db.execute("DELETE FROM dlq_settled WHERE expires_at < ?", (now,))

    # -- ledger ------------------------------------------------------------------------
    async def tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        return await self._write(self._tx_begin, rec, ttl)

    def _tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        now = time.time()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO ledger (partner, txid, action, fingerprint, state, status, body, voided_by,"
            " created_at, expires_at, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (rec.partner, rec.txid, rec.action, rec.fingerprint, rec.state, rec.status, rec.body, rec.voided_by,
             now, now + ttl, rec.payload),
        )
        if cur.rowcount == 1:
            rec.created_at = now
            return None
        existing = self._tx_get(rec.partner, rec.txid, now)
        if existing is None:  # expired, not yet purged: take it over
            self.db.execute("DELETE FROM ledger WHERE partner=? AND txid=?", (rec.partner, rec.txid))
            return self._tx_begin(rec, ttl)
        return existing

    async def tx_pending(self, before: float, limit: int = 100) -> list[TxRecord]:
        rows = self.db.execute(
            f"SELECT {_TX_COLUMNS}, partner, txid FROM ledger WHERE state=? AND created_at < ? AND expires_at >= ?"  # noqa: S608
            " ORDER BY created_at LIMIT ?", (PENDING, before, time.time(), limit)).fetchall()
        return [_record(row[-2], row[-1], row) for row in rows]

    async def tx_get(self, partner: str, txid: str) -> TxRecord | None:
        rec = self._tx_get(partner, txid, time.time())
        return rec

    def _tx_get(self, partner: str, txid: str, now: float) -> TxRecord | None:
        row = self.db.execute(
            f"SELECT {_TX_COLUMNS} FROM ledger WHERE partner=? AND txid=? AND expires_at >= ?",  # noqa: S608
            (partner, txid, now),
        ).fetchone()
        return None if row is None else _record(partner, txid, row)

    async def tx_finish(self, partner: str, txid: str, state: str, status: int, body: bytes, ttl: float) -> None:
        await self._write(
            self.db.execute,
            "UPDATE ledger SET state=?, status=?, body=?, expires_at=MAX(expires_at, ?) WHERE partner=? AND txid=?"
            " AND NOT (state=? AND ?=?)",  # a done record is never turned back into queued (see Store.tx_finish)
            (state, status, body, time.time() + ttl, partner, txid, DONE, state, QUEUED),
        )

    async def tx_forget(self, partner: str, txid: str) -> None:
        await self._write(self.db.execute, "DELETE FROM ledger WHERE partner=? AND txid=?", (partner, txid))

    async def tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
        return await self._write(self._tx_void, partner, bet_txid, by_txid)

    def _tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
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
        await self._write(
            self.db.execute,
            "UPDATE ledger SET voided_by=NULL WHERE partner=? AND txid=? AND voided_by=?", (partner, bet_txid, by_txid)
        )

    # -- shared rate limits ------------------------------------------------------------
    async def rate_take(self, key: str, rate: float, capacity: float) -> float:
        """GCRA (see Store.rate_take) on the row ``key`` of ``rate_limits``, in the group
        transaction: the processes sharing the file take turns holding its write lock.

        A bucket's ``tat`` only ever grows, so a request that the committed row already refuses
        is refused without the write lock (the flood a limit exists for costs one read each).
        """
        row = self.db.execute("SELECT tat FROM rate_limits WHERE key=?", (key,)).fetchone()
        if row is not None:
            early = _gcra_early(row[0], time.time(), rate, capacity)
            if early > 0:
                return early
        return await self._write(self._rate_take, key, rate, capacity)

    def _rate_take(self, key: str, rate: float, capacity: float) -> float:
        now = time.time()
        row = self.db.execute("SELECT tat FROM rate_limits WHERE key=?", (key,)).fetchone()
        tat = now if row is None else max(row[0], now)
        early = _gcra_early(tat, now, rate, capacity)
        if early > 0:
            return early
        self.db.execute("INSERT INTO rate_limits (key, tat) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET tat=excluded.tat",
                        (key, tat + 1.0 / rate))
        return 0.0

    # -- kv ----------------------------------------------------------------------------
    async def kv_put(self, ns: str, key: str, value: bytes, ttl: float | None = None, *, only_new: bool = False) -> bool:
        if only_new:
            return await self._write(self._kv_put_new, ns, key, value, ttl)
        await self._write(self.db.execute, "INSERT OR REPLACE INTO kv VALUES (?,?,?,?)",
                          (ns, key, value, time.time() + ttl if ttl else None))
        return True

    def _kv_put_new(self, ns: str, key: str, value: bytes, ttl: float | None) -> bool:
        # One statement: insert, or take over an expired entry, else refuse.
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO kv VALUES (?,?,?,?) ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value,"
            " expires_at=excluded.expires_at WHERE kv.expires_at < ?", (ns, key, value, now + ttl if ttl else None, now))
        return cur.rowcount == 1

    async def kv_get(self, ns: str, key: str) -> bytes | None:
        row = self.db.execute(
            "SELECT value FROM kv WHERE ns=? AND key=? AND (expires_at IS NULL OR expires_at >= ?)",
            (ns, key, time.time()),
        ).fetchone()
        return row[0] if row else None

    # -- queue -------------------------------------------------------------------------
    async def q_put(self, entry: QueueEntry, *, dead: bool = False) -> None:
        entry.id = entry.id or uuid.uuid4().hex
        entry.created_at = entry.created_at or time.time()
        await self._write(
            self.db.execute,
            "INSERT OR IGNORE INTO queue (id, route, payload, attempts, max_attempts, next_at, created_at, last_error,"
            " dead) VALUES (?,?,?,?,?,?,?,?,?)",
            (entry.id, entry.route, json.dumps(entry.payload), entry.attempts, entry.max_attempts,
             entry.next_at or entry.created_at, entry.created_at, entry.last_error, int(dead)),
        )

    def _entry(self, row: tuple) -> QueueEntry:
        return QueueEntry(id=row[0], route=row[1], payload=json.loads(row[2]), attempts=row[3],
                          max_attempts=row[4], next_at=row[5], created_at=row[6], last_error=row[7])

    _COLS = "id, route, payload, attempts, max_attempts, next_at, created_at, last_error"

    async def q_claim(self, consumer: str, limit: int, lease_seconds: float) -> list[QueueEntry]:
        rows = await self._write(self._atomic, self._q_claim, consumer, limit, lease_seconds)
        return [self._entry(row) for row in rows]

    def _q_claim(self, consumer: str, limit: int, lease_seconds: float) -> list[tuple]:
        now = time.time()
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM queue WHERE dead=0 AND next_at<=? AND lease_until<=? ORDER BY next_at LIMIT ?",  # noqa: S608
            (now, now, limit),
        ).fetchall()
        self.db.executemany(
            "UPDATE queue SET lease_owner=?, lease_until=? WHERE id=?",
            [(consumer, now + lease_seconds, row[0]) for row in rows],
        )
        return rows

    async def q_ack(self, entry: QueueEntry) -> None:
        await self._write(self.db.execute, "DELETE FROM queue WHERE id=?", (entry.id,))

    async def q_retry(self, entry: QueueEntry, next_at: float, error: str) -> None:
        await self._write(
            self.db.execute,
            "UPDATE queue SET attempts=?, next_at=?, last_error=?, lease_owner=NULL, lease_until=0 WHERE id=?",
            (entry.attempts + 1, next_at, error[:500], entry.id),
        )
        entry.attempts += 1

    async def q_dead(self, entry: QueueEntry, error: str) -> None:
        await self._write(
            self.db.execute,
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
        cur = await self._write(
            self.db.execute,
            "UPDATE queue SET dead=0, attempts=0, next_at=?, lease_until=0 WHERE id=? AND dead=1",
            (time.time(), entry_id),
        )
        return cur.rowcount == 1

    async def dlq_purge(self, entry_id: str | None = None) -> int:
        if entry_id is None:
            cur = await self._write(self.db.execute, "DELETE FROM queue WHERE dead=1")
        else:
            cur = await self._write(self.db.execute, "DELETE FROM queue WHERE dead=1 AND id=?", (entry_id,))
        return cur.rowcount

    _SETTLED = "outcome, partner, txid, status, body, unvoid, settled_at, ledger"

    async def dlq_settle(self, entry_id: str, resolution: Resolution, ttl: float) -> Resolution | None:
        return await self._write(self._atomic, self._dlq_settle, entry_id, resolution, ttl)

    def _dlq_settle(self, entry_id: str, res: Resolution, ttl: float) -> Resolution | None:
        now = time.time()
        earlier = self._dlq_resolution(entry_id, now)
        if earlier is not None:
            return earlier
        if self.db.execute("SELECT 1 FROM queue WHERE id=? AND dead=1", (entry_id,)).fetchone() is None:
            return None
        status, body, ledger, unvoid = res.status, res.body, "", ""
        if res.partner:
            rec = self._tx_get(res.partner, res.txid, now)
            if rec is None:
                ledger = ABSENT
            elif rec.state == PENDING:
                raise TransactionBusy()
            elif rec.state == QUEUED:
                if res.outcome == PURGED:
                    raise TransactionOpen()
                self.db.execute(
                    "UPDATE ledger SET state=?, status=?, body=?, expires_at=MAX(expires_at, ?) WHERE partner=? AND txid=?",
                    (DONE, status, body, now + ttl, res.partner, res.txid))
                if res.unvoid:
                    self.db.execute("UPDATE ledger SET voided_by=NULL WHERE partner=? AND txid=? AND voided_by=?",
                                    (res.partner, res.unvoid, res.txid))
                ledger, unvoid = FINISHED, res.unvoid
            else:
                status, body, ledger = rec.status, rec.body, KEPT
        self.db.execute("DELETE FROM queue WHERE id=?", (entry_id,))
        self.db.execute(
            f"INSERT OR REPLACE INTO dlq_settled (id, {self._SETTLED}, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            (entry_id, res.outcome, res.partner, res.txid, status, body, unvoid, now, ledger, now + ttl))
        return Resolution(res.outcome, res.partner, res.txid, status, body, unvoid, now, ledger)

    async def dlq_resolution(self, entry_id: str) -> Resolution | None:
        return self._dlq_resolution(entry_id, time.time())

    def _dlq_resolution(self, entry_id: str, now: float) -> Resolution | None:
        row = self.db.execute(f"SELECT {self._SETTLED} FROM dlq_settled WHERE id=? AND expires_at >= ?",  # noqa: S608
                              (entry_id, now)).fetchone()
        return None if row is None else Resolution(*row)
