"""Shed requests are all counted but their access-log lines are thinned (gateway/ops/shedlog.py)."""

from __future__ import annotations

import time

from gateway.ops.shedlog import ShedLines
from tests.conftest import ACME, BETA
from tests.ops_support import Metrics
from tests.support import IgspClient
from tests.test_overload import held_config, hold_bets
from tests.test_platform_face import bet


def test_one_line_per_partner_a_second_saying_how_many_were_left_out():
    lines = ShedLines(every=1.0)
    assert lines.admit("acme", now=10.0) == 0  # the first is logged
    assert [lines.admit("acme", now=t) for t in (10.1, 10.5, 10.99)] == [None, None, None]
    assert lines.admit("beta", now=10.5) == 0  # each partner on its own
    assert lines.admit("acme", now=11.0) == 3  # the next line says how many it left out
    assert lines.admit("acme", now=11.2) is None
    assert lines.admit("acme", now=15.0) == 1


def test_every_shed_request_is_counted_and_none_is_lost_from_the_log(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(held_config(tmp_path, concurrency={"per_partner": 1}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    threads, answers, _ = hold_bets(hub88, [IgspClient(gw.url, ACME["api_key"], ACME["secret"])])
    started = time.monotonic()
    shed = [acme.hook(bet(f"shed-{i}", "1.00")).status_code for i in range(6)]
    within_a_second = time.monotonic() - started < 1.0
    assert shed == [503] * 6
    # Another partner's line after the sheds: the log has caught up with them when it is written.
    assert IgspClient(gw.url, BETA["api_key"], BETA["secret"]).hook(
        {"action": "balance", "player_id": "p1", "currency": "EUR"}).status_code == 200
    for t in threads:
        t.join(30)
    assert [r.status_code for r in answers.values()] == [200]
    metrics = Metrics.scrape(gw.internal_url)
    assert metrics.value("igsp_requests_total", partner=ACME["id"], outcome="internal_error") == 6
    acme_503 = [line for line in gw.log_lines()
                if line.get("msg") == "request" and line.get("status") == 503 and line.get("partner") == ACME["id"]]
    # At least the first is logged; each logged line accounts for the ones it left out before
    # it, so the lines never claim more than were shed (the last ones may still be pending).
    assert acme_503 and acme_503[0].get("shed_not_logged", 0) == 0
    assert len(acme_503) + sum(line.get("shed_not_logged", 0) for line in acme_503) <= 6
    if within_a_second:  # all six inside the first one's second: one line for them
        assert len(acme_503) == 1
