"""Persistence behind one small interface; ``open_store(url)`` picks the implementation.

``sqlite:///path/to/file.db`` (the embedded default, single node), or shared by several
replicas ``redis://host:port/db`` (``rediss://`` with TLS) or
``redis+sentinel://host:port[,host:port…]/service-name[?db=N]`` (Redis behind Sentinel).
"""

from __future__ import annotations

from gateway.store.base import OnceKey, QueueEntry, Store, TxRecord

__all__ = ["OnceKey", "QueueEntry", "Store", "TxRecord", "open_store", "STORE_SCHEMES"]

STORE_SCHEMES = ("sqlite", "redis", "rediss", "redis+sentinel")


def open_store(url: str, *, namespace: str = "igsp") -> Store:
    """A not-yet-opened store for ``url``; call ``await store.open()``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("redis", "rediss", "redis+sentinel"):
        from gateway.store.redis import RedisStore

        return RedisStore(url, namespace=namespace)
    raise ValueError(f"unknown store URL scheme {scheme!r}; use one of: {', '.join(STORE_SCHEMES)}")
