"""The legacy catalogue behind ``GET /games`` and ``GET /providers``.

Legacy catalogues come as one big list, by page number, by offset or with their own
cursors. Whatever the shape, the gateway fetches the *whole* list (following the
mapping's ``paging``), turns each item into an iGSP object (the mapping's ``fields``),
drops items that would break the spec, sorts by ``(updated_at, id)`` and caches the
result in the store for ``cache_ttl`` seconds. iGSP pages are then cut from that sorted
list with signed keyset cursors (``cursors.py``): stable order, no gaps, no duplicates,
and a full sync by a platform costs the legacy API one fetch per TTL, not one per page.

Legacy ids that are not UUIDs are shown as UUIDv5 of ``<id_scope>/<kind>/<legacy id>``:
the same on every replica and after every restart, so the reverse lookup needs no table.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from adapters.codecs import dumps, loads
from gateway.engine.provider_mapping import Source
from gateway.engine.templating import IGSP_NAMESPACE
from gateway.errors import IgspError, UpstreamError
from gateway.faces import cursors
from gateway.outbound.legacy import LegacyClient
from gateway.spec import SpecValidators
from gateway.store import Store

log = logging.getLogger("igsp.catalogue")

KINDS = {"games": "Game", "providers": "Provider"}
_INSTANTS = ("updated_at", "created_at", "deleted_at")


def legacy_uuid(scope: str, kind: str, legacy_id: Any) -> str:
    """The iGSP id of a legacy object: itself when it is a UUID, else a stable UUIDv5."""
    text = str(legacy_id)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(IGSP_NAMESPACE, f"{scope}/{kind}/{text}"))


def parse_instant(value: Any) -> int:
    """Epoch microseconds of an ISO-8601 text (UTC when no zone) or epoch seconds/milliseconds."""
    if isinstance(value, bool):
        raise ValueError("not an instant")
    if isinstance(value, (int, Decimal)):
        seconds = Decimal(value) / 1000 if value > 100_000_000_000 else Decimal(value)
        return int(seconds * 1_000_000)
    text = str(value).strip()
    if len(text) > 40 or not text[:4].isdigit():
        raise ValueError(f"not an instant: {text!r}")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    delta = parsed - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_instant(micros: int) -> str:
    """``2025-01-02T10:00:00Z`` (microseconds only when there are some)."""
    when = datetime.fromtimestamp(micros // 1_000_000, timezone.utc).replace(microsecond=micros % 1_000_000)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ")


class _Skip(Exception):
    """One legacy item that cannot become a valid iGSP object."""


class Catalogue:
    """Games and providers of one provider mapping: fetched whole, normalised, sorted, cached."""

    def __init__(self, mapping: Any, client: LegacyClient, store: Store, spec: SpecValidators,
                 on_cache: Callable[[str], None] | None = None):
        self.mapping = mapping
        self.spec_section = mapping.provider.catalogue
        self.client = client
        self.store = store
        self.spec = spec
        self.on_cache = on_cache or (lambda result: None)
        self._locks = {kind: asyncio.Lock() for kind in KINDS}
        # kind -> (stamp, entries, sort keys, {id: entry}): decode a cached list once per change.
        self._memo: dict[str, tuple] = {}

    # -- reading the legacy side ---------------------------------------------------------
    async def fetch(self, kind: str, request_id: str = "") -> list:
        """Every legacy item of ``kind``, following the mapping's paging."""
        source: Source = getattr(self.spec_section, kind)
        if source.static is not None:
            return list(source.static)
        paging = source.paging
        found: list = []
        page, offset, cursor = paging.start, 0, None
        for _ in range(paging.max_pages):
            context = {"page": page, "offset": offset, "page_size": paging.size, "cursor": cursor,
                       "request_id": request_id, "secrets": self.mapping.secrets, "now": datetime.now(timezone.utc)}
            reply = await self.client.call(source.operation, context)
            batch = self.mapping.search(source.items, reply.data)
            if not isinstance(batch, list):
                raise UpstreamError("upstream_bad_response", f"legacy {kind} list is not where the mapping says",
                                    kind="bad_body", applied=False)
            found.extend(batch)
            if paging.style == "none":
                return found
            if paging.style == "cursor":
                cursor = self.mapping.search(paging.next, reply.data)
                if cursor in (None, "", 0, False) or not batch:
                    return found
                continue
            more = self.mapping.search(paging.has_more, reply.data) if paging.has_more is not None \
                else len(batch) >= paging.size
            if not more or not batch:
                return found
            page, offset = page + 1, offset + len(batch)
        raise UpstreamError("upstream_bad_response", f"legacy {kind} list has more than {paging.max_pages} pages",
                            kind="bad_body", applied=False)

    def normalise(self, kind: str, items: list) -> list:
        """Sorted entries ``[sort instant or -1, iGSP id, legacy id, iGSP object]``; bad items dropped."""
        source: Source = getattr(self.spec_section, kind)
        entries, seen, dropped = [], set(), []
        for raw in items:
            try:
                entry = self._one(kind, source, raw)
            except _Skip as exc:
                dropped.append(str(exc))
                continue
            if entry[1] in seen:
                dropped.append(f"{entry[2]}: duplicate id")
                continue
            seen.add(entry[1])
            entries.append(entry)
        if dropped:
            log.warning("legacy catalogue items dropped", extra={
                "mapping": self.mapping.name, "kind": kind, "dropped": len(dropped), "reasons": dropped[:5]})
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def _one(self, kind: str, source: Source, raw: Any) -> list:
        scope = self.spec_section.id_scope
        context = {"item": raw, "secrets": self.mapping.secrets}
        try:
            legacy_id = source.id.read(raw, context)
            if legacy_id in (None, "") or isinstance(legacy_id, (dict, list)):
                raise _Skip(f"{str(raw)[:60]}: no id")
            item: dict = {"id": legacy_uuid(scope, kind, legacy_id)}
            for name, field in source.fields.items():
                value = field.read(raw, context)
                if value is not None:
                    item[name] = value
        except _Skip:
            raise
        except Exception as exc:  # noqa: BLE001 - a template or expression that fails on this item
            raise _Skip(f"{str(raw)[:60]}: {type(exc).__name__}") from None
        instant = -1
        try:
            if "provider_id" in item:
                item["provider_id"] = legacy_uuid(scope, "providers", item["provider_id"])
            for name in _INSTANTS:
                if name in item:
                    micros = parse_instant(item[name])
                    item[name] = format_instant(micros)
                    instant = micros if name == "updated_at" else instant
            if "rtp" in item:
                item["rtp"] = Decimal(str(item["rtp"]))
        except (ValueError, InvalidOperation, OverflowError) as exc:
            raise _Skip(f"{legacy_id}: {exc}") from None
        problems = self.spec.errors(KINDS[kind], item)
        if problems:
            raise _Skip(f"{legacy_id}: {problems[0]}")
        return [instant, item["id"], str(legacy_id), item]

    # -- the cache -------------------------------------------------------------------------
    async def entries(self, kind: str, request_id: str = "") -> tuple[list, list, dict]:
        """``(entries, sort keys, {id: entry})`` from the store, fetching on a miss (once at a time)."""
        key, ttl = f"{self.mapping.name}:{kind}", self.spec_section.cache_ttl
        found = await self._cached(kind, key) if ttl > 0 else None
        if found is None:
            async with self._locks[kind]:
                # Another request may have filled it while this one waited.
                found = await self._cached(kind, key) if ttl > 0 else None
                if found is None:
                    self.on_cache("miss")
                    entries = self.normalise(kind, await self.fetch(kind, request_id))
                    stamp = uuid.uuid4().hex
                    if ttl > 0:
                        await self.store.kv_put("catalogue", key, dumps({"stamp": stamp, "entries": entries}), ttl=ttl)
                        await self.store.kv_put("catalogue", f"{key}#stamp", stamp.encode(), ttl=ttl)
                    return self._remember(kind, stamp, entries)
        self.on_cache("hit")
        return found

    async def _cached(self, kind: str, key: str) -> tuple | None:
        # A small stamp is read per request; the (possibly large) list only when it changed.
        stamp = await self.store.kv_get("catalogue", f"{key}#stamp")
        if stamp is None:
            return None
        memo = self._memo.get(kind)
        if memo is not None and memo[0] == stamp.decode():
            return memo[1:]
        blob = await self.store.kv_get("catalogue", key)
        if blob is None:
            return None
        data = loads(blob)
        return self._remember(kind, data["stamp"], data["entries"])

    def _remember(self, kind: str, stamp: str, entries: list) -> tuple[list, list, dict]:
        memo = (stamp, entries, [(e[0], e[1]) for e in entries], {e[1]: e for e in entries})
        self._memo[kind] = memo
        return memo[1:]

    async def find(self, kind: str, igsp_id: str, request_id: str = "") -> list | None:
        """The entry ``[instant, id, legacy id, object]`` with this iGSP id, or None."""
        _, _, index = await self.entries(kind, request_id)
        try:
            return index.get(str(uuid.UUID(igsp_id)))
        except ValueError:
            return None

    # -- iGSP pages --------------------------------------------------------------------------
    async def page(self, kind: str, partner: Any, *, cursor: str | None, limit: int, updated_after: int | None,
                   request_id: str = "") -> dict:
        """One iGSP page (GameList / ProviderList) for ``partner``."""
        keys = cursors.cursor_keys(partner.secrets)
        position = None
        if cursor is not None:
            position = cursors.decode(keys, cursor)
            if position.get("p") != partner.id or position.get("k") != kind or position.get("d") not in ("n", "p") \
                    or not isinstance(position.get("t"), int) or not isinstance(position.get("i"), str):
                raise IgspError("invalid_cursor", "cursor is not valid for this list; start again without one")
            if updated_after is not None and updated_after != position.get("u"):
                raise IgspError("invalid_request", "updated_after differs from the one the cursor was made for")
            updated_after = position.get("u")
        entries, sort_keys, _ = await self.entries(kind, request_id)
        if updated_after is not None:
            chosen = [i for i, e in enumerate(entries) if e[0] > updated_after]
            entries, sort_keys = [entries[i] for i in chosen], [sort_keys[i] for i in chosen]
        if position is None:
            start, end = 0, min(limit, len(entries))
        elif position["d"] == "n":
            start = bisect.bisect_right(sort_keys, (position["t"], position["i"]))
            end = min(start + limit, len(entries))
        else:
            end = bisect.bisect_left(sort_keys, (position["t"], position["i"]))
            start = max(0, end - limit)
        chunk = entries[start:end]

        def make(direction: str, entry_key: tuple) -> str:
            return cursors.encode(keys, {"p": partner.id, "k": kind, "u": updated_after, "d": direction,
                                         "t": entry_key[0], "i": entry_key[1]})

        next_cursor = make("n", sort_keys[end - 1]) if chunk and end < len(entries) else None
        if chunk:
            previous = make("p", sort_keys[start]) if start > 0 else None
        else:
            # An empty page past the end: step back from where the client stood.
            previous = make("p", (position["t"], position["i"])) if position is not None and start > 0 else None
        return {"data": [e[3] for e in chunk], "cursor": {"next": next_cursor, "previous": previous},
                "meta": {"limit": limit, "returned": len(chunk), "has_more": next_cursor is not None}}
