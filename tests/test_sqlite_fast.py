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
