"""Adaptive concurrency limits (``concurrency.adaptive``): a legacy API's limit follows the
latency of its calls, so a wallet that slows down gets fewer requests at once — each answered
inside its timeout — instead of as many as before, each timing out into an unknown outcome.

The limit's arithmetic is tested with an injected clock; the behaviour with real processes: a
gateway in front of a Hub88 wallet that serves four calls at a time (a fixed thread pool: its
latency grows with the calls in flight), under more concurrent bets than it can answer in time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally

import pytest
import requests
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.ratelimit import HELD, AdaptiveLimit, AdaptiveSettings, Concurrency, Limit, Overloaded, release_slots
from tests.conftest import ACME, platform_config
from tests.ops_support import Metrics
from tests.support import ROOT, IgspClient
from tests.test_platform_face import bet

# -- the arithmetic, with an injected clock -----------------------------------------------------------
SPAN = AdaptiveLimit.window * 1.01  # first call to last of a window (past it, whatever the rounding)


def window(limit: AdaptiveLimit, now: float, durations: list[float], answered: bool = True) -> float:
    """One window of calls taking ``durations``, all admitted after ``now``; the time it ends."""
    start = now + max(durations)
    for i, seconds in enumerate(durations):  # the last call closes the window
        limit.call_done(seconds, start + SPAN * i / (len(durations) - 1), answered)
    return start + SPAN


QUEUED = [0.1] + [0.5] * 9  # the fastest call 0.1 s, the rest queued behind: mean 0.46 s


def test_the_limit_shrinks_while_calls_queue_and_grows_back_by_its_square_root():
    limit = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.2, floor=2), now=0.0)
    now = window(limit, 0.0, [0.1] * 10)  # fast: nothing to learn but the wallet's speed
    assert limit.value == 64
    now = window(limit, now, [0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])  # mean 0.24 > 0.2 = 2 x 0.1
    assert limit.value == int(64 * 0.2 / 0.24)
    now = window(limit, now, QUEUED)  # twice the allowance and more: at most halved per window
    assert limit.value == int(int(64 * 0.2 / 0.24) * 0.5) or limit.value == int(64 * 0.2 / 0.24 * 0.5)
    for _ in range(10):
        now = window(limit, now, QUEUED)
    assert limit.value == 2  # never below the floor
    now = window(limit, now, [0.1] * 10)  # fast again: + sqrt(limit)
    assert limit.value == int(2 + 2 ** 0.5)
    for _ in range(30):
        now = window(limit, now, [0.1] * 10)
    assert limit.value == 64  # never above the configured limit


def test_a_wallet_slow_at_any_load_is_not_queueing():
    """Above the target, but its fastest call is as slow as the rest (a failover added a
    round trip): fewer calls at once would not make them faster, so the limit stays."""
    limit = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.3), now=0.0)
    now = 0.0
    for _ in range(10):
        now = window(limit, now, [0.35] * 10)
    assert limit.value == 64


def test_calls_admitted_before_a_cut_and_rare_calls_decide_nothing():
    limit = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.2), now=0.0)
    now = window(limit, 0.0, QUEUED)
    assert limit.value == 32
    for i in range(1, 50):  # still arriving, but sent before the cut: they say nothing of 32
        limit.call_done(0.5, now + 0.01 * i - 0.5)
    assert limit.value == 32
    for i in range(1, AdaptiveLimit.min_calls):  # a few slow calls, minutes apart: no window closes
        limit.call_done(1.4, now + 100.0 * i)
    assert limit.value == 32


def test_a_window_not_full_within_seconds_begins_again():
    """Four fast calls, then a lone timeout a minute later: no window of five."""
    limit = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.3), now=0.0)
    for i in range(4):
        limit.call_done(0.01, 0.1 * i)
    for minute in range(1, 6):
        limit.call_done(1.5, 60.0 * minute, answered=False)
    assert limit.value == 64


def test_only_calls_the_wallet_did_teach_its_speed():
    """An instant refusal or 5xx is not the wallet's speed: a wallet that takes 0.35 s at any
    load keeps its limit against a 0.3 s target, whatever fast failures come between."""
    limit = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.3), now=0.0)
    now = 0.0
    for _ in range(10):
        start = now + 0.35
        for i in range(10):
            answered = i != 3  # one instant failure a window
            limit.call_done(0.35 if answered else 0.0, start + SPAN * i / 9, answered)
        now = start + SPAN
    assert limit.value == 64
    # Every call timing out, with no success yet to learn a speed from: the target decides.
    fresh = AdaptiveLimit(64, AdaptiveSettings(target_seconds=0.3), now=0.0)
    window(fresh, 0.0, [1.5] * 10, answered=False)
    assert fresh.value == 32


def test_a_floor_above_the_ceiling_is_the_ceiling():
    limit = AdaptiveLimit(3, AdaptiveSettings(target_seconds=0.1, floor=10), now=0.0)
    window(limit, 0.0, QUEUED)
    assert limit.value == 3


def test_each_partner_has_its_own_share_and_learns_from_its_own_calls():
    now = [0.0]
    seen = []
    limits = Concurrency({"acme": None, "beta": None}, {"acme": "wallet", "beta": "wallet"}, {"wallet": 8},
                         adaptive=AdaptiveSettings(0.2), clock=lambda: now[0],
                         on_limit=lambda limit, upstream, partner: seen.append((upstream, partner, limit.value)))
    limits.export()
    assert sorted(seen) == [("wallet", "acme", 8), ("wallet", "beta", 8)]

    def calls(partner: str, durations: list[float], kind: str = "ok") -> None:
        held = []
        token = HELD.set(held)
        try:
            limits.enter(partner)
            now[0] += max(durations)
            for i, seconds in enumerate(durations):
                now[0] += SPAN / (len(durations) - 1) if i else 0.0
                limits.call_done("wallet", seconds, kind)
        finally:
            release_slots(held)
            HELD.reset(token)

    for kind in ("connect", "tls", "reset", "mapping"):  # no answer: nothing about the wallet's speed
        calls("acme", QUEUED * 3, kind)
    assert limits.adaptive[("wallet", "acme")].value == 8
    limits.call_done("wallet", 5.0, "timeout")  # outside a request (a queued delivery): holds no share
    calls("acme", QUEUED)  # acme's calls queue: acme's share shrinks, beta's does not
    assert limits.adaptive[("wallet", "acme")].value == 4 and limits.adaptive[("wallet", "beta")].value == 8
    assert seen[-1] == ("wallet", "acme", 4)
    held = []
    token = HELD.set(held)
    try:
        for _ in range(4):
            limits.enter("acme")
        with pytest.raises(Overloaded) as refused:
            limits.enter("acme")
        assert "upstream" in refused.value.message
        for _ in range(4):  # the legacy API's own limit (8) is still shared: beta has the rest
            limits.enter("beta")
        with pytest.raises(Overloaded):
            limits.enter("beta")
    finally:
        release_slots(held)
        HELD.reset(token)
    assert set(limits.counts.values()) == {0}


def test_a_reload_carries_the_adaptive_state():
    settings = AdaptiveSettings(0.2)
    first = Concurrency({}, {"acme": "wallet"}, {"wallet": 16}, adaptive=settings, clock=lambda: 0.0)
    share = first.adaptive[("wallet", "acme")]
    window(share, 0.0, QUEUED)
    assert share.value == 8
    share.warned = True
    same = Concurrency({}, {"acme": "wallet"}, {"wallet": 16}, adaptive=AdaptiveSettings(0.2), previous=first)
    assert same.adaptive[("wallet", "acme")] is share
    lower = Concurrency({}, {"acme": "wallet"}, {"wallet": 6}, adaptive=settings, previous=first)
    higher = Concurrency({}, {"acme": "wallet"}, {"wallet": 64}, adaptive=AdaptiveSettings(0.3), previous=first)
    assert lower.adaptive[("wallet", "acme")].value == 6  # never above the new ceiling
    assert higher.adaptive[("wallet", "acme")].value == 8  # where it was, not back at the ceiling
    assert higher.adaptive[("wallet", "acme")].warned  # so the "back" line still comes
    fixed = Concurrency({}, {"acme": "wallet"}, {"wallet": 16}, previous=first)
    assert not fixed.adaptive and [type(limit) for _, limit, _ in fixed.slots["acme"]] == [Limit]


def test_adaptive_config(tmp_path, hub88_keys):
    def load(**concurrency):
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(platform_config(f"sqlite:///{tmp_path}/gw.db", concurrency=concurrency)))
        return load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})

    assert load(per_upstream=20).concurrency_adaptive is None
    config = load(per_upstream=20, adaptive={"target_ms": 250, "min": 3})
    assert config.concurrency_adaptive == AdaptiveSettings(0.25, 3)
    with pytest.raises(ConfigError, match=r"concurrency\.adaptive.*ceiling") as missing:
        load(per_partner=5, adaptive={"target_ms": 250})
    assert "per_upstream" in str(missing.value)
    with pytest.raises(ConfigError, match=r"concurrency\.adaptive"):
        load(per_upstream=20, adaptive={"target_ms": 0})
    with pytest.raises(ConfigError, match=r"concurrency\.adaptive"):
        load(per_upstream=20, adaptive={"min": 2})
    with pytest.raises(ConfigError, match=r"concurrency\.adaptive\.target_ms.*hub88-wallet \(1\.5 s\)"):
        load(per_upstream=20, adaptive={"target_ms": 1500})  # never exceeded: a timeout takes 1.5 s



def test_the_target_is_checked_against_the_mappings_that_adapt(tmp_path, hub88_keys):
    """A second wallet with a 0.25 s timeout: refused under a 300 ms target once it has a
    limit (it would adapt), accepted while it has none (it does not)."""
    quick = tmp_path / "quick-wallet.yaml"
    quick.write_text((ROOT / "mappings" / "hub88-wallet.yaml").read_text()
                     .replace("name: hub88-wallet", "name: quick-wallet").replace("  timeout: 1.5 ", "  timeout: 0.25 "))
    path = tmp_path / "gateway.yaml"

    def load(**concurrency):
        config = platform_config(f"sqlite:///{tmp_path}/gw.db", concurrency={"adaptive": {"target_ms": 300},
                                                                               **concurrency})
        config["partners"][1]["mapping"] = str(quick)
        path.write_text(yaml.safe_dump(config))
        return load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})

    assert load(upstreams={"hub88-wallet": 20}).concurrency_adaptive == AdaptiveSettings(0.3)
    with pytest.raises(ConfigError, match=r"target_ms.*quick-wallet \(0\.25 s\)"):
        load(upstreams={"hub88-wallet": 20, "quick-wallet": 10})


# -- real processes: a wallet with four workers ---------------------------------------------------------
WORKERS, CALL_SECONDS = 4, 0.15  # the wallet answers ~27 calls a second, 0.15 s each at best
CLIENTS = 48  # bets in flight: at the wallet at once, 48 / 4 * 0.15 = 1.8 s each, past the 1.5 s timeout


class Load:
    """``CLIENTS`` threads sending bets back to back: each answer's status and latency."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.answers: list[tuple[float, int, float, str]] = []  # (sent at, status, seconds, txid)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def run(self, index: int) -> None:
        client = IgspClient(self.url, ACME["api_key"], ACME["secret"])
        n = 0
        while not self.stop.is_set():
            n += 1
            txid = f"load-{index}-{n}"
            sent = time.monotonic()
            try:
                status = client.hook(bet(txid, "0.10"), timeout=10).status_code
            except requests.RequestException:
                status = 0
            self.answers.append((sent, status, time.monotonic() - sent, txid))
            if status == 503:
                time.sleep(0.02)  # a polite caller waits a moment before its next request

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def timeouts(gw) -> float:
    return Metrics.scrape(gw.internal_url).value("igsp_upstream_errors_total", mapping="hub88-wallet", kind="timeout")


def slow_wallet_gateway(hub88, gateway_factory, tmp_path, **concurrency):
    hub88.player("p1", "1000000.00")
    r = requests.post(f"{hub88.url}/_control/workers", json={"workers": WORKERS, "seconds": CALL_SECONDS}, timeout=5)
    r.raise_for_status()
    return gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db",
                                           concurrency={"per_upstream": 64, **concurrency}))


QUIET = 4.0  # seconds without a legacy timeout that count as settled


def test_a_fixed_limit_lets_a_slow_wallet_time_out(hub88, gateway_factory, tmp_path):
    """The case for adaptive limits: with a fixed limit above what the wallet can answer in
    time, the calls queue at the wallet until the mapping's timeout (1.5 s) expires — and keep
    doing so for as long as the load lasts."""
    gw = slow_wallet_gateway(hub88, gateway_factory, tmp_path)
    with Load(gw.url):
        deadline = time.monotonic() + 30
        while timeouts(gw) < 10:
            assert time.monotonic() < deadline, "the wallet's calls never timed out under a fixed limit"
            time.sleep(0.2)
        before, since = timeouts(gw), time.monotonic()
        while time.monotonic() < since + QUIET:
            time.sleep(0.2)
        assert timeouts(gw) > before  # not settled: still timing out


def test_an_adaptive_limit_keeps_a_slow_wallet_inside_its_timeout(hub88, gateway_factory, tmp_path):
    """Under the same load, the limit comes down and the wallet's calls stop timing out: once
    the calls the wallet still had (timed out, abandoned, still worked on) and the rollbacks of
    the timed-out bets have gone through, every call is answered inside its timeout."""
    gw = slow_wallet_gateway(hub88, gateway_factory, tmp_path, adaptive={"target_ms": 300, "min": 2})
    with Load(gw.url) as load:
        deadline = time.monotonic() + 60
        seen, last_timeout = timeouts(gw), time.monotonic()
        while time.monotonic() < last_timeout + QUIET:
            assert time.monotonic() < deadline, f"still timing out after a minute ({seen} timeouts)"
            time.sleep(0.2)
            now = timeouts(gw)
            if now != seen:
                seen, last_timeout = now, time.monotonic()
        since = last_timeout
        limit = Metrics.scrape(gw.internal_url).value("igsp_concurrency_limit", mapping="hub88-wallet",
                                                      partner=ACME["id"])
    quiet = [a for a in load.answers if a[0] >= since + 1.5 and a[0] + a[2] <= since + QUIET]
    statuses = Tally(status for _, status, _, _ in quiet)
    admitted = sorted(seconds for _, status, seconds, _ in quiet if status == 200)
    assert 3 <= limit <= 24  # about what keeps 4 workers' queue under the target: 4 x 0.3 / 0.15 = 8
    assert statuses[200] > 10 and statuses[503] > 0 and set(statuses) <= {200, 503}, statuses
    assert admitted[int(len(admitted) * 0.9)] < 1.0  # answered well inside the 1.5 s timeout
    slower = [line for line in gw.log_lines() if line.get("msg", "").startswith("legacy API slower than its latency")]
    assert slower and slower[0]["mapping"] == "hub88-wallet" and slower[0]["partner"] == ACME["id"]
    assert slower[0]["ceiling"] == 64 and slower[0]["limit"] <= 32
    # Nothing paid twice; every bet answered 200 is in the wallet once.
    paid = Tally(entry["txid"] for entry in hub88.ledger("bet"))
    assert not [txid for txid, n in paid.items() if n > 1]
    for _, status, _, txid in load.answers:
        if status == 200:
            assert paid[f"{ACME['id']}:{txid}"] == 1, txid


async def test_a_reload_carries_the_shares_and_only_the_current_generation_writes_the_gauge(
        tmp_path, hub88_keys, monkeypatch):
    from prometheus_client import REGISTRY

    from gateway.runtime import Runtime
    from gateway.store import open_store

    monkeypatch.setenv("HUB88_WALLET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HUB88_PRIVATE_KEY", hub88_keys[0])
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db",
                             concurrency={"per_upstream": 16, "adaptive": {"target_ms": 200}})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("igsp_concurrency_limit", {"mapping": "hub88-wallet", "partner": ACME["id"]})

    store = open_store(config["store"]["url"])
    await store.open()
    runtime = Runtime(load_config(path), store)
    try:
        old = runtime.current.limiter.concurrency
        assert gauge() == 16
        held = []
        token = HELD.set(held)
        try:
            old.enter(ACME["id"])  # a request of the first generation, still running after the reload
            share = old.adaptive[("hub88-wallet", ACME["id"])]
            start = time.monotonic()
            for i, seconds in enumerate(QUEUED):
                share.call_done(seconds, start + SPAN * i / (len(QUEUED) - 1))
            assert share.value == 8
            config["concurrency"]["per_upstream"] = 32
            path.write_text(yaml.safe_dump(config))
            assert await runtime.reload()
            new = runtime.current.limiter.concurrency
            assert new.adaptive[("hub88-wallet", ACME["id"])].value == 8  # carried, not back at 32
            assert gauge() == 8
            # The retired generation's request goes on: its share (replaced: the ceiling
            # changed) moves without writing over the current generation's gauge.
            later = start + SPAN + 1.0
            for i, seconds in enumerate(QUEUED):
                share.call_done(seconds, later + SPAN * i / (len(QUEUED) - 1))
            assert share.value == 4
            old._moved("hub88-wallet", ACME["id"], share)
            assert gauge() == 8
            new._moved("hub88-wallet", ACME["id"], new.adaptive[("hub88-wallet", ACME["id"])])
            assert gauge() == 8
        finally:
            release_slots(held)
            HELD.reset(token)
    finally:
        await runtime.close()
        await store.close()
