"""The laws a game provider's iGSP API keeps (``spec/igsp-provider.yaml``).

Target: the provider's base URL (``…/igsp/v1``; ``/games``, ``/providers`` and
``/sessions`` are appended) and the key pair it issued. Nothing here moves money:
``POST /sessions`` only launches a game for the test player.

Paging is checked by walking each list twice — with a small ``limit`` and with the
largest one — and comparing: an id seen twice is a duplicate, an id only the large walk
found is a gap.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gateway.tools.conformance.client import Answer, SignedClient, dumps
from gateway.tools.conformance.laws import expect_error, expect_ok, flip_byte, flipped_signature, raise_violations
from gateway.tools.conformance.runner import CheckFailed, CheckSkipped, Registry

CHECKS = Registry()
UNKNOWN_KEY = "igsp-conformance-unknown-key"
MAX_LIMIT, DEFAULT_LIMIT = 200, 50
MAX_PAGES = 1000
LISTS = {"/games": "GameList", "/providers": "ProviderList"}


@dataclass(frozen=True)
class ProviderTarget:
    url: str
    api_key: str
    secret: str
    player_id: str = "igsp-conformance-player"
    currency: str = "EUR"
    game_id: str | None = None  # default: the first active game of GET /games
    page_limit: int = 5
    language: str = "en"


class ProviderContext:
    def __init__(self, target: ProviderTarget, client: SignedClient, run_id: str | None = None):
        self.target, self.client = target, client
        self.run_id = run_id or secrets.token_hex(4)
        self.full: dict[str, list[dict]] = {}  # path -> every item, from the walk with the largest limit
        self.saved: dict[str, tuple[bytes, Answer]] = {}

    async def get(self, path: str, params: dict | None = None) -> Answer:
        return await self.client.call("GET", path, params=params, expect=LISTS.get(path))

    def session_body(self, game_id: str, **extra) -> dict:
        t = self.target
        return {"game_id": game_id, "player_id": t.player_id, "player_name": "Conformance Tester",
                "currency": t.currency, "session_id": f"conf-{self.run_id}-session", "balance": Decimal("100.00"),
                "device": "desktop", "language": t.language, "return_url": "https://casino.example.com/lobby",
                **extra}

    async def everything(self, path: str) -> list[dict]:
        if path not in self.full:
            items, problems = await walk(self, path, MAX_LIMIT)
            if problems:
                raise CheckFailed(f"GET {path} with limit={MAX_LIMIT}: {problems[0]}")
            self.full[path] = [row for _, row in items]
        return self.full[path]

    async def game_id(self) -> str:
        if self.target.game_id:
            return self.target.game_id
        games = await self.everything("/games")
        active = [g for g in games if g.get("status") == "active" and not g.get("deleted_at")]
        if not active:
            raise CheckSkipped("the catalogue has no active game to launch (give --game-id)")
        return str(active[0]["id"])


async def walk(ctx: ProviderContext, path: str, limit: int, extra: dict | None = None):
    """Page through ``path``; returns ``([(page, item)…], [problem…])``."""
    items, problems, cursors, cursor = [], [], set(), None
    for page in range(1, MAX_PAGES + 1):
        params = {"limit": str(limit), **(extra or {}), **({"cursor": cursor} if cursor else {})}
        answer = await ctx.get(path, params)
        expect_ok(answer, 200, f"GET {path} page {page} (limit={limit})")
        rows, meta = answer.data.get("data"), answer.data.get("meta") or {}
        following = (answer.data.get("cursor") or {}).get("next")
        if not isinstance(rows, list):
            raise CheckFailed(f"GET {path} page {page}: 'data' is not a list ({answer.brief()})")
        if len(rows) > limit:
            problems.append(f"page {page} holds {len(rows)} items, more than limit={limit}")
        if meta.get("returned") != len(rows):
            problems.append(f"page {page}: meta.returned is {meta.get('returned')!r} but it holds {len(rows)} items")
        if meta.get("limit") != limit:
            problems.append(f"page {page}: meta.limit is {meta.get('limit')!r}, the request said {limit}")
        if bool(meta.get("has_more")) != (following is not None):
            problems.append(f"page {page}: meta.has_more is {meta.get('has_more')!r} but cursor.next is {following!r}")
        items += [(page, row) for row in rows]
        if following is None or not meta.get("has_more"):
            return items, problems
        if following in cursors:
            problems.append(f"page {page}: cursor.next {following!r} was already given (the walk loops)")
            return items, problems
        cursors.add(following)
        cursor = following
    problems.append(f"still more after {MAX_PAGES} pages")
    return items, problems


def _ids(rows) -> list[str]:
    return [str(row.get("id")) for row in rows]


def _some(values, n: int = 3) -> str:
    values = sorted(values)
    return ", ".join(values[:n]) + (f" (+{len(values) - n} more)" if len(values) > n else "")


async def check_walk(ctx: ProviderContext, path: str) -> None:
    full = await ctx.everything(path)
    if len(full) < 2:
        raise CheckSkipped(f"GET {path} has {len(full)} item(s): nothing to page through")
    limit = max(1, min(ctx.target.page_limit, math.ceil(len(full) / 2)), math.ceil(len(full) / 200))
    items, problems = await walk(ctx, path, limit)
    pages_of: dict[str, list[int]] = {}
    for page, row in items:
        pages_of.setdefault(str(row.get("id")), []).append(page)
    duplicates = {i: p for i, p in pages_of.items() if len(p) > 1}
    if duplicates:
        shown = "; ".join(f"{i} on pages {', '.join(map(str, p))}" for i, p in list(duplicates.items())[:3])
        problems.append(f"{len(duplicates)} item(s) came twice: {shown}")
    missing = set(_ids(full)) - set(pages_of)
    if missing:
        problems.append(f"{len(missing)} item(s) of the limit={MAX_LIMIT} walk never came (gaps): {_some(missing)}")
    if problems:
        raise CheckFailed(f"paging GET {path} with limit={limit}: " + "; ".join(problems))


# -- signatures ---------------------------------------------------------------------------------------

@CHECKS.check("signature.valid", "a correctly signed request is accepted")
async def signature_valid(ctx: ProviderContext) -> None:
    expect_ok(await ctx.get("/games", {"limit": "1"}), 200, "a correctly signed GET /games")


@CHECKS.check("signature.missing_credentials", "a request without Authorization/X-Signature is 401")
async def signature_missing(ctx: ProviderContext) -> None:
    answer = await ctx.client.send("GET", "/games", b"", {}, params={"limit": "1"})
    expect_error(answer, 401, "an unsigned GET /games without Authorization")


@CHECKS.check("signature.unknown_key", "an unknown api_key is 401")
async def signature_unknown_key(ctx: ProviderContext) -> None:
    answer = await ctx.client.send("GET", "/games", b"", ctx.client.headers(b"", api_key=UNKNOWN_KEY),
                                   params={"limit": "1"})
    expect_error(answer, 401, f"GET /games signed for the unknown api_key {UNKNOWN_KEY!r}")


@CHECKS.check("signature.flipped_signature", "a signature with one hex digit changed is 403")
async def signature_flipped(ctx: ProviderContext) -> None:
    answer = await ctx.client.send("GET", "/games", b"", flipped_signature(ctx.client.headers(b"")),
                                   params={"limit": "1"})
    expect_error(answer, 403, "GET /games with one hex digit of the signature changed")


@CHECKS.check("signature.flipped_body_byte", "a POST /sessions body changed after signing (one byte) is 403")
async def signature_flipped_body(ctx: ProviderContext) -> None:
    # A real game, so that a target which ignores the signature visibly launches it.
    try:
        game = await ctx.game_id()
    except (CheckFailed, CheckSkipped):
        game = str(uuid.uuid4())
    body = dumps(ctx.session_body(game, session_id=f"conf-{ctx.run_id}-flipped",
                                  nonce="conformance" + secrets.token_hex(8)))
    headers = ctx.client.headers(body)
    answer = await ctx.client.send("POST", "/sessions", flip_byte(body, b"conformance"), headers,
                                   expect="SessionResponse")
    expect_error(answer, 403, "POST /sessions with one body byte flipped after signing")


@CHECKS.check("signature.stale_timestamp", "a timestamp 10 minutes old or ahead is 403")
async def signature_stale(ctx: ProviderContext) -> None:
    for seconds, what in ((-600, "10 minutes old"), (600, "10 minutes in the future")):
        headers = ctx.client.headers(b"", timestamp=ctx.client.clock.shifted(seconds))
        answer = await ctx.client.send("GET", "/games", b"", headers, params={"limit": "1"})
        expect_error(answer, 403, f"a correctly signed GET /games whose X-Timestamp is {what}")


# -- catalogue paging ---------------------------------------------------------------------------------

@CHECKS.check("pagination.games_walk", "paging GET /games gives every game once, with consistent meta")
async def pagination_games(ctx: ProviderContext) -> None:
    await check_walk(ctx, "/games")


@CHECKS.check("pagination.providers_walk", "paging GET /providers gives every provider once, with consistent meta")
async def pagination_providers(ctx: ProviderContext) -> None:
    await check_walk(ctx, "/providers")


@CHECKS.check("pagination.limits", "limit defaults to 50, is honoured, and 0 / 201 / 'abc' are refused or capped")
async def pagination_limits(ctx: ProviderContext) -> None:
    answer = await ctx.get("/games")
    expect_ok(answer, 200, "GET /games without limit")
    meta, rows = answer.data.get("meta") or {}, answer.data.get("data") or []
    if meta.get("limit") != DEFAULT_LIMIT or len(rows) > DEFAULT_LIMIT:
        raise CheckFailed(f"GET /games without limit: meta.limit={meta.get('limit')!r} with {len(rows)} items, "
                          f"want the default limit {DEFAULT_LIMIT}")
    answer = await ctx.get("/games", {"limit": "1"})
    expect_ok(answer, 200, "GET /games?limit=1")
    if len(answer.data.get("data") or []) > 1:
        raise CheckFailed(f"GET /games?limit=1 returned {len(answer.data['data'])} items")
    for bad in ("0", "abc", "-5"):
        expect_error(await ctx.get("/games", {"limit": bad}), 400, f"GET /games?limit={bad}")
    answer = await ctx.get("/games", {"limit": str(MAX_LIMIT + 1)})
    if answer.status == 200:  # capping is allowed (PageMeta.limit is "after capping")
        got = answer.data.get("meta", {}).get("limit") if isinstance(answer.data, dict) else None
        if not isinstance(got, int) or got > MAX_LIMIT or len(answer.data.get("data") or []) > MAX_LIMIT:
            raise CheckFailed(f"GET /games?limit={MAX_LIMIT + 1} was neither refused nor capped: meta.limit={got!r}")
    else:
        expect_error(answer, 400, f"GET /games?limit={MAX_LIMIT + 1}")


@CHECKS.check("pagination.invalid_cursor", "a cursor the provider never issued is a 400")
async def pagination_invalid_cursor(ctx: ProviderContext) -> None:
    answer = await ctx.get("/games", {"cursor": "not-a-cursor-" + secrets.token_hex(4)})
    expect_error(answer, 400, "GET /games with a cursor the provider never issued")


@CHECKS.check("pagination.updated_after", "updated_after returns exactly the items updated strictly after it")
async def pagination_updated_after(ctx: ProviderContext) -> None:
    checked = 0
    for path in LISTS:
        full = await ctx.everything(path)
        stamps = sorted({(_when(row.get("updated_at")), row.get("updated_at")) for row in full
                         if _when(row.get("updated_at")) is not None})
        if not stamps:
            continue
        pivot_when, pivot = stamps[len(stamps) // 2]
        want = {str(row["id"]) for row in full if (_when(row.get("updated_at")) or pivot_when) > pivot_when}
        items, problems = await walk(ctx, path, MAX_LIMIT, {"updated_after": pivot})
        got = {str(row.get("id")): row for _, row in items}
        early = [i for i, row in got.items() if (_when(row.get("updated_at")) or pivot_when) <= pivot_when]
        extra = [i for i in set(got) - want - set(early) if not got[i].get("deleted_at")]
        if early:
            problems.append(f"{len(early)} item(s) not updated strictly after it came back: {_some(early)}")
        if extra:
            problems.append(f"{len(extra)} item(s) unknown to the full list came back: {_some(extra)}")
        if want - set(got):
            problems.append(f"{len(want - set(got))} item(s) updated after it are missing: {_some(want - set(got))}")
        if problems:
            raise CheckFailed(f"GET {path}?updated_after={pivot}: " + "; ".join(problems))
        checked += 1
    if not checked:
        raise CheckSkipped("no game or provider carries updated_at")


def _when(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# -- sessions -----------------------------------------------------------------------------------------

@CHECKS.check("sessions.create", "POST /sessions answers 201 SessionResponse {url}")
async def sessions_create(ctx: ProviderContext) -> None:
    body = dumps(ctx.session_body(await ctx.game_id()))
    answer = await ctx.client.call("POST", "/sessions", body, expect="SessionResponse")
    expect_ok(answer, 201, "POST /sessions for the test player")
    if not isinstance(answer.field("url"), str) or not answer.field("url"):
        raise CheckFailed(f"POST /sessions: no launch url in {answer.brief()}")
    ctx.saved["session"] = (body, answer)


@CHECKS.check("sessions.retry_idempotent", "a retried POST /sessions (same session_id) gets the same answer",
              needs=("sessions.create",))
async def sessions_retry(ctx: ProviderContext) -> None:
    body, first = ctx.saved["session"]
    again = await ctx.client.call("POST", "/sessions", body, expect="SessionResponse")
    if again.status != first.status or again.field("url") != first.field("url"):
        raise CheckFailed(f"the retried launch (same session_id, same body) got {again.brief()}, "
                          f"the first answer was {first.brief()}")


@CHECKS.check("sessions.invalid_request", "a launch missing player_id, or with currency 'eur', is a 400")
async def sessions_invalid(ctx: ProviderContext) -> None:
    game = await ctx.game_id()
    body = {k: v for k, v in ctx.session_body(game, session_id=f"conf-{ctx.run_id}-bad-1").items()
            if k != "player_id"}
    expect_error(await ctx.client.call("POST", "/sessions", body), 400, "POST /sessions without player_id")
    body = ctx.session_body(game, session_id=f"conf-{ctx.run_id}-bad-2", currency="eur")
    expect_error(await ctx.client.call("POST", "/sessions", body), 400, "POST /sessions with currency 'eur'")


@CHECKS.check("sessions.unknown_game", "a launch of a game the provider does not have is a 4xx")
async def sessions_unknown_game(ctx: ProviderContext) -> None:
    body = ctx.session_body(str(uuid.uuid4()), session_id=f"conf-{ctx.run_id}-unknown-game")
    expect_error(await ctx.client.call("POST", "/sessions", body), "4xx", "POST /sessions for a random game id")


@CHECKS.check("schema.every_answer", "every answer matches spec/igsp-provider.yaml")
async def schema_every_answer(ctx: ProviderContext) -> None:
    raise_violations(ctx.client)
