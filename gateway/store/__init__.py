"""Persistence behind one small interface; ``open_store(url)`` picks the implementation.

``sqlite:///path/to/file.db`` (the embedded default, single node), or shared by several
replicas ``redis://host:port/db`` (``rediss://`` with TLS) or
``redis+sentinel://host:port[,host:port…]/service-name[?db=N]`` (Redis behind Sentinel;
``rediss+sentinel://`` with TLS to the sentinels and the Redis servers) or
``redis+cluster://host:port[,host:port…]/`` (a Redis Cluster; ``rediss+cluster://`` with TLS).
"""

from __future__ import annotations

from gateway.store.base import OnceKey, QueueEntry, Store, TxRecord

__all__ = ["OnceKey", "QueueEntry", "Store", "TxRecord", "open_store", "STORE_SCHEMES"]

STORE_SCHEMES = ("sqlite", "redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")


def open_store(url: str, *, namespace: str = "igsp") -> Store:
    """A not-yet-opened store for ``url``; call ``await store.open()``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in STORE_SCHEMES[1:]:
        from gateway.store.redis import RedisStore

        return RedisStore(url, namespace=namespace)
    raise ValueError(f"unknown store URL scheme {scheme!r}; use one of: {', '.join(STORE_SCHEMES)}")
