"""Legacy catalogues of every shape (one list, page numbers, offsets, own cursors) paged as iGSP.

A small legacy API on loopback serves the same 24 items in each paging style; the
gateway's Catalogue (real SQLite store, real LegacyClient) must read them all, drop the
ones that cannot be valid iGSP games, and cut stable signed pages from the rest.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections import Counter
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.engine.mapping import load_mapping
from gateway.errors import IgspError
from gateway.faces import cursors
from gateway.faces.catalogue import Catalogue, format_instant, legacy_uuid, parse_instant
from gateway.outbound.legacy import LegacyClient
from gateway.spec import PROVIDER_SPEC, SpecValidators
from gateway.store.sqlite import SqliteStore


def _items() -> list[dict]:
    items = [{"code": f"g{i:02d}", "title": f"Game {i}", "rtp": f"9{i % 10}.{i:02d}",
              "changed": f"2025-01-{1 + i % 5:02d}T00:00:00Z", "studio": "acme" if i % 2 else "beta"}
             for i in range(22)]
    items.append({"code": "broken", "title": "No RTP", "rtp": "n/a", "changed": "2025-01-01T00:00:00Z",
                  "studio": "acme"})  # cannot become a valid game: dropped
    items.append(dict(items[3]))  # the legacy side lists g03 twice: one copy is kept
    return items


ITEMS = _items()
SIZE = 10


def legacy_app(calls: Counter) -> web.Application:
    async def by_page(request: web.Request) -> web.Response:
        calls["page"] += 1
        page, per = int(request.query["page"]), int(request.query["per_page"])
        chunk = ITEMS[(page - 1) * per: page * per]
        return web.json_response({"page": page, "total_pages": -(-len(ITEMS) // per), "data": chunk})

    async def by_offset(request: web.Request) -> web.Response:
        calls["offset"] += 1
        body = await request.json()
        return web.json_response({"items": ITEMS[body["offset"]: body["offset"] + body["limit"]]})

    async def by_cursor(request: web.Request) -> web.Response:
        calls["cursor"] += 1
        start = int(request.query.get("after") or 0)
        end = start + 7
        return web.json_response({"games": ITEMS[start:end], "next": str(end) if end < len(ITEMS) else None})

    async def one_list(request: web.Request) -> web.Response:
        calls["none"] += 1
        return web.json_response({"result": {"list": ITEMS}})

    app = web.Application()
    app.router.add_get("/page", by_page)
    app.router.add_post("/offset", by_offset)
    app.router.add_get("/cursor", by_cursor)
    app.router.add_get("/all", one_list)
    return app


OPERATIONS = {
    "page": ('{path: /page, method: GET, query: {page: "{{ page }}", per_page: "{{ page_size }}"}}',
             "data", f"{{style: page, size: {SIZE}, has_more: 'page < total_pages'}}"),
    "offset": ('{path: /offset, body: {offset: "{{ offset }}", limit: "{{ page_size }}"}}',
               "items", f"{{style: offset, size: {SIZE}}}"),
    "cursor": ('{path: /cursor, method: GET, query: {after: "{{ cursor }}"}}', "games", "{style: cursor, next: next}"),
    "none": ("{path: /all, method: GET}", "result.list", "{style: none}"),
}


def mapping_text(style: str, base_url: str, ttl: int = 300) -> str:
    operation, items, paging = OPERATIONS[style]
    return textwrap.dedent(f"""\
        version: 1
        name: shapes-{style}
        face: provider
        upstream: {{base_url: "{base_url}"}}
        operations:
          games: {operation}
        catalogue:
          cache_ttl: {ttl}
          games:
            operation: games
            items: {items}
            paging: {paging}
            id: code
            fields:
              provider_id: studio
              name: title
              rtp: {{template: "{{{{ item.rtp | from_percent }}}}"}}
              status: {{value: active}}
              updated_at: changed
          providers:
            static: [{{code: acme, name: Acme, currencies: [EUR]}}]
            id: code
            fields: {{name: name, currencies: currencies}}
        launch: {{}}
        """)


@dataclass(frozen=True)
class Partner:
    id: str
    secrets: tuple


PARTNER = Partner("casino-1", (b"casino-1-secret-0123456789",))


@pytest.fixture
async def legacy():
    calls: Counter = Counter()
    runner = web.AppRunner(legacy_app(calls))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", calls
    await runner.cleanup()


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(f"sqlite:///{tmp_path}/catalogue.db")
    await store.open()
    yield store
    await store.close()


def catalogue_for(tmp_path, style: str, base_url: str, store, ttl: int = 300) -> tuple[Catalogue, LegacyClient]:
    path = tmp_path / f"{style}.yaml"
    path.write_text(mapping_text(style, base_url, ttl))
    mapping = load_mapping(path)
    client = LegacyClient(mapping)
    return Catalogue(mapping, client, store, SpecValidators(PROVIDER_SPEC)), client


async def page_through(catalogue: Catalogue, limit: int, updated_after: int | None = None) -> list[dict]:
    seen, cursor = [], None
    for _ in range(100):
        page = await catalogue.page("games", PARTNER, cursor=cursor, limit=limit, updated_after=updated_after)
        seen.extend(page["data"])
        cursor = page["cursor"]["next"]
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "none"])
async def test_every_paging_style_reads_the_whole_catalogue(tmp_path, legacy, store, style):
    base_url, calls = legacy
    catalogue, client = catalogue_for(tmp_path, style, base_url, store)
    try:
        games = await page_through(catalogue, 4)
    finally:
        await client.close()
    expected = {legacy_uuid(f"shapes-{style}", "games", f"g{i:02d}") for i in range(22)}
    assert [(g["updated_at"], g["id"]) for g in games] == sorted((g["updated_at"], g["id"]) for g in games)
    assert {g["id"] for g in games} == expected and len(games) == 22  # no gap, no duplicate, "broken" dropped
    assert calls[style] == {"page": 3, "offset": 3, "cursor": 4, "none": 1}[style]
    g07 = next(g for g in games if g["name"] == "Game 7")
    assert str(g07["rtp"]) == "0.9707" and g07["provider_id"] == legacy_uuid(f"shapes-{style}", "providers", "acme")


async def test_pages_are_cached_and_concurrent_misses_fetch_once(tmp_path, legacy, store):
    base_url, calls = legacy
    catalogue, client = catalogue_for(tmp_path, "none", base_url, store)
    results = Counter()
    catalogue.on_cache = lambda result: results.update([result])
    try:
        await asyncio.gather(*(catalogue.entries("games") for _ in range(5)))
        games = await page_through(catalogue, 3)
        # Another replica (same store, its own memory) is served from the store too.
        replica = Catalogue(catalogue.mapping, client, store, SpecValidators(PROVIDER_SPEC))
        assert await page_through(replica, 50) == games
    finally:
        await client.close()
    assert calls["none"] == 1 and results["miss"] == 1 and results["hit"] >= 12


async def test_no_cache_when_ttl_is_zero(tmp_path, legacy, store):
    base_url, calls = legacy
    catalogue, client = catalogue_for(tmp_path, "none", base_url, store, ttl=0)
    try:
        await catalogue.entries("games")
        await catalogue.entries("games")
    finally:
        await client.close()
    assert calls["none"] == 2


async def test_updated_after_and_cursor_binding(tmp_path, legacy, store):
    base_url, _ = legacy
    catalogue, client = catalogue_for(tmp_path, "none", base_url, store)
    try:
        after = parse_instant("2025-01-03T00:00:00Z")
        recent = await page_through(catalogue, 3, updated_after=after)
        assert {g["updated_at"] for g in recent} == {"2025-01-04T00:00:00Z", "2025-01-05T00:00:00Z"}
        assert len(recent) == 8
        first = await catalogue.page("games", PARTNER, cursor=None, limit=3, updated_after=after)
        other = Partner("casino-2", (b"casino-2-secret-0123456789",))
        with pytest.raises(IgspError, match="invalid_cursor"):
            await catalogue.page("games", other, cursor=first["cursor"]["next"], limit=3, updated_after=None)
        # A cursor signed for this partner but for another list is refused too.
        forged = cursors.encode(cursors.cursor_keys(PARTNER.secrets), {"p": PARTNER.id, "k": "providers", "u": None,
                                                                       "d": "n", "t": 0, "i": ""})
        with pytest.raises(IgspError, match="invalid_cursor"):
            await catalogue.page("games", PARTNER, cursor=forged, limit=3, updated_after=None)
    finally:
        await client.close()


async def test_a_legacy_outage_is_a_retriable_error_and_is_not_cached(tmp_path, legacy, store):
    _, calls = legacy
    catalogue, client = catalogue_for(tmp_path, "none", "http://127.0.0.1:9", store)
    try:
        for _ in range(2):
            with pytest.raises(IgspError) as caught:
                await catalogue.page("games", PARTNER, cursor=None, limit=5, updated_after=None)
            assert caught.value.code == "upstream_unavailable" and caught.value.status == 503
    finally:
        await client.close()
    assert await store.kv_get("catalogue", "shapes-none:games") is None


def test_instants():
    assert format_instant(parse_instant("2025-01-02T10:00:00Z")) == "2025-01-02T10:00:00Z"
    assert format_instant(parse_instant("2025-01-02T12:00:00.5+02:00")) == "2025-01-02T10:00:00.500000Z"
    assert parse_instant(1735812000) == parse_instant(1735812000000) == parse_instant("2025-01-02T10:00:00")
    for bad in ("", "soon", "2025-02-30T00:00:00Z", True):
        with pytest.raises(ValueError):
            parse_instant(bad)
