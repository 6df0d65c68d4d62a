"""The SQLite store's hot-path changes: the one-statement replay insert and off-loop checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from gateway.store.base import TxRecord
from gateway.store.sqlite import SqliteStore


async def test_only_new_inserts_refuses_live_keys_and_takes_over_expired_ones(tmp_path):
    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    try:
        assert await store.kv_put("sig", "a", b"1", ttl=60, only_new=True) is True
        assert await store.kv_put("sig", "a", b"2", ttl=60, only_new=True) is False
        assert await store.kv_get("sig", "a") == b"1"  # a refused write changed nothing
        assert await store.kv_put("sig", "forever", b"1", only_new=True) is True
        assert await store.kv_put("sig", "forever", b"2", ttl=60, only_new=True) is False
        assert await store.kv_put("sig", "short", b"old", ttl=0.05, only_new=True) is True
        await asyncio.sleep(0.1)
        assert await store.kv_get("sig", "short") is None
        assert await store.kv_put("sig", "short", b"new", ttl=60, only_new=True) is True
        assert await store.kv_get("sig", "short") == b"new"
        assert await store.kv_put("sig", "short", b"again", ttl=60, only_new=True) is False
    finally:
        await store.close()


async def test_wal_is_checkpointed_by_the_background_thread_and_the_thread_stops(tmp_path):
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert any(t.name == "sqlite-checkpoint" for t in threading.enumerate())
        for i in range(300):
            assert await store.tx_begin(TxRecord("p", f"t{i}", "bet", "f"), 3600) is None
            await store.tx_finish("p", f"t{i}", "done", 200, b"{}", 3600)
        # The database file itself (not only the WAL) receives the rows, without any
        # checkpoint run by the event loop's connection (its automatic one waits for 10000 pages).
        deadline = time.time() + 5
        while time.time() < deadline:
            # immutable=1: read the database file alone, ignoring the WAL.
            direct = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            try:
                if direct.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 300:
                    break
            except sqlite3.OperationalError:
                pass  # not even the schema has been copied yet
            finally:
                direct.close()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the WAL was not checkpointed into the database file")
    finally:
        await store.close()
    assert not any(t.name == "sqlite-checkpoint" for t in threading.enumerate())


class _FailingCommits:
    """The store's connection, with COMMIT failing as on a full or broken disk."""

    def __init__(self, raw: sqlite3.Connection):
        self.raw = raw

    def execute(self, sql, params=()):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.raw.execute(sql, params)

    @property
    def in_transaction(self):
        return self.raw.in_transaction


class _CountingCommits(_FailingCommits):
    def __init__(self, raw):
        super().__init__(raw)
        self.commits = 0

    def execute(self, sql, params=()):
        self.commits += sql == "COMMIT"
        return self.raw.execute(sql, params)


async def test_concurrent_writes_share_one_commit(tmp_path):
    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    counting = store.db.raw = _CountingCommits(store.db.raw)
    try:
        results = await asyncio.gather(*(store.tx_begin(TxRecord("p", f"t{i}", "bet", "f"), 60) for i in range(40)))
        assert results == [None] * 40
        assert counting.commits == 1  # forty requests in one turn of the loop: one transaction
        await asyncio.gather(*(store.tx_finish("p", f"t{i}", "done", 200, b"{}", 60) for i in range(40)))
        assert counting.commits == 2
        # Committed for real: another connection sees every row.
        other = sqlite3.connect(tmp_path / "s.db")
        assert other.execute("SELECT COUNT(*) FROM ledger WHERE state='done'").fetchone()[0] == 40
        other.close()
    finally:
        store.db.raw = counting.raw
        await store.close()


async def test_the_write_lock_is_held_only_while_the_queued_writes_run(tmp_path):
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        pending = asyncio.gather(*(store.tx_begin(TxRecord("p", f"t{i}", "bet", "f"), 60) for i in range(5)))
        other.execute("BEGIN IMMEDIATE")  # writes are queued, not yet running: the lock is free
        other.execute("COMMIT")
        assert await pending == [None] * 5
        other.execute("BEGIN IMMEDIATE")  # committed: free again
        other.execute("COMMIT")
    finally:
        other.close()
        await store.close()


async def test_a_failed_group_commit_fails_every_write_in_it_and_keeps_none(tmp_path):
    from gateway.store.base import StoreUnavailable

    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    try:
        assert await store.tx_begin(TxRecord("p", "before", "bet", "f"), 60) is None
        real = store.db.raw
        store.db.raw = _FailingCommits(real)
        results = await asyncio.gather(*(store.tx_begin(TxRecord("p", f"t{i}", "bet", "f"), 60) for i in range(10)),
                                       store.kv_put("sig", "k", b"1", 60, only_new=True), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        store.db.raw = real
        assert not real.in_transaction
        for i in range(10):
            assert await store.tx_get("p", f"t{i}") is None
        assert await store.kv_get("sig", "k") is None
        assert await store.tx_get("p", "before") is not None  # an earlier commit is untouched
        # The store carries on: the same writes succeed now.
        assert await store.tx_begin(TxRecord("p", "t0", "bet", "f"), 60) is None
        assert await store.kv_put("sig", "k", b"1", 60, only_new=True) is True
    finally:
        await store.close()


async def test_waiting_for_another_process_lock_does_not_block_the_loop(tmp_path):
    from gateway.store.base import StoreUnavailable

    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        write = asyncio.create_task(store.tx_begin(TxRecord("p", "t1", "bet", "f"), 60))
        await asyncio.sleep(0.3)
        assert not write.done() and ticks >= 10  # waiting, and the loop kept running
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 2) is None
        assert await store.tx_get("p", "t1") is not None

        store.lock_wait_seconds = 0.2
        other.execute("BEGIN IMMEDIATE")
        try:
            await store.tx_begin(TxRecord("p", "t2", "bet", "f"), 60)
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("a write past the lock wait must fail as StoreUnavailable")
        other.execute("COMMIT")
        assert await store.tx_get("p", "t2") is None
        tick_task.cancel()
    finally:
        other.close()
        await store.close()


class _FailingLedgerInsert(_FailingCommits):
    """COMMIT works; the ledger insert fails as one statement (SQLite keeps the transaction)."""

    def execute(self, sql, params=()):
        if sql.startswith("INSERT OR IGNORE INTO ledger"):
            raise sqlite3.OperationalError("disk I/O error")
        return self.raw.execute(sql, params)


async def test_a_ledger_record_that_could_not_be_written_leaves_nothing_behind(tmp_path):
    from gateway.store.base import StoreUnavailable

    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    try:
        real = store.db.raw
        store.db.raw = _FailingLedgerInsert(real)
        ok, failed = await asyncio.gather(store.kv_put("other", "k", b"1", 60, only_new=True),
                                          store.tx_begin(TxRecord("p", "t1", "bet", "f"), 60),
                                          return_exceptions=True)
        store.db.raw = real
        assert ok is True and isinstance(failed, StoreUnavailable)
        assert await store.kv_get("other", "k") == b"1"  # the rest of the group committed
        assert await store.tx_get("p", "t1") is None
        assert await store.tx_pending(time.time() + 1) == []
        # So the same request, retried, begins afresh.
        assert await store.tx_begin(TxRecord("p", "t1", "bet", "f"), 60) is None
    finally:
        await store.close()


async def test_expired_rows_are_swept_while_serving(tmp_path):
    from gateway.store.base import OnceKey

    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    store.sweep_seconds, store.sweep_chunk = 0.2, 7  # several chunks per table
    await store.open()
    try:
        for i in range(20):
            await store.tx_begin(TxRecord("p", f"old-{i}", "bet", "f"), 0.05)
            await store.claim(OnceKey("sig", f"s-{i}", 0.05))
        await store.tx_begin(TxRecord("p", "kept", "bet", "f"), 60)
        await store.claim(OnceKey("sig", "kept", 60))
        await store.kv_put("session", "forever", b"1")  # no TTL: never swept
        await asyncio.sleep(0.6)
        raw = store.db.raw
        assert raw.execute("SELECT txid FROM ledger").fetchall() == [("kept",)]
        assert sorted(raw.execute("SELECT key FROM kv").fetchall()) == [("forever",), ("kept",)]
    finally:
        await store.close()
    assert store._sweeper is None


async def test_writes_queued_when_the_store_closes_are_written_first(tmp_path):
    store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    pending = asyncio.ensure_future(store.tx_begin(TxRecord("p", "last", "bet", "f"), 60))
    await asyncio.sleep(0)  # queued, not yet flushed
    await store.close()
    assert await pending is None
    again = SqliteStore(f"sqlite:///{tmp_path}/s.db")
    await again.open()
    try:
        assert await again.tx_get("p", "last") is not None
    finally:
        await again.close()


async def test_a_file_from_before_ledger_payloads_is_migrated_in_place(tmp_path):
    """An upgrade opens the last version's file: its records stay readable, new ones keep payloads."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("""CREATE TABLE ledger (
            partner TEXT NOT NULL, txid TEXT NOT NULL, action TEXT NOT NULL, fingerprint TEXT NOT NULL,
            state TEXT NOT NULL, status INTEGER, body BLOB, voided_by TEXT,
            created_at REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (partner, txid)) WITHOUT ROWID""")
        db.execute("INSERT INTO ledger VALUES ('p', 'old', 'bet', 'f', 'pending', NULL, NULL, NULL, 1.0, 9e12)")
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        old = await store.tx_get("p", "old")
        assert (old.state, old.payload) == ("pending", None)
        assert [r.txid for r in await store.tx_pending(time.time())] == ["old"]
        assert await store.tx_begin(TxRecord("p", "new", "bet", "f", payload=b'{"a":1}'), 60) is None
        assert (await store.tx_get("p", "new")).payload == b'{"a":1}'
    finally:
        await store.close()
