"""Helpers for platform-face tests against any legacy wallet simulator: hook builders,
control-API access, waiting, and reading the gateway's queue metrics."""

from __future__ import annotations

import re
import time
from decimal import Decimal

import requests

from tests.support import GatewayProcess


class Simulator:
    """A running legacy simulator, driven only through its ``/_control/`` API."""

    def __init__(self, server):
        self.server, self.url = server, server.url

    def player(self, player_id: str, balance: str, currency: str = "EUR", **extra) -> None:
        r = requests.post(f"{self.url}/_control/players",
                          json={"player_id": player_id, "balance": balance, "currency": currency, **extra}, timeout=5)
        r.raise_for_status()

    def fault(self, kind: str, **options) -> None:
        requests.post(f"{self.url}/_control/faults", json={"kind": kind, **options}, timeout=5).raise_for_status()

    def reset(self) -> None:
        requests.post(f"{self.url}/_control/reset", timeout=5).raise_for_status()

    def state(self) -> dict:
        return requests.get(f"{self.url}/_control/state", timeout=5).json()

    def balance(self, player_id: str) -> Decimal:
        return Decimal(self.state()["players"][player_id]["balance"])

    def ledger(self, kind: str | None = None) -> list:
        return [e for e in self.state()["ledger"] if kind is None or e["kind"] == kind]

    def calls(self, endpoint: str) -> int:
        return self.state()["calls"].get(endpoint, 0)


def bet(txid="tx-1", amount="10.00", player="p1", **extra) -> dict:
    return {"action": "bet", "player_id": player, "amount": Decimal(amount), "currency": "EUR",
            "game_id": "vs20olympgate", "transaction_id": txid, "session_id": "s-1", "type": "bet",
            "round_id": "r-1", **extra}


def win(txid="w-1", amount="5.00", **extra) -> dict:
    return {**bet(txid, amount, **extra), "action": "win", "type": "win"}


def refund(txid="rf-1", bet_txid="tx-1", amount="10.00", **extra) -> dict:
    return {**bet(txid, amount, **extra), "action": "refund", "bet_transaction_id": bet_txid}


def balance(player="p1", currency="EUR", **extra) -> dict:
    return {"action": "balance", "player_id": player, "currency": currency, **extra}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["status"] == status and body["message"], body
    return body


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def queue_attempts(gateway: GatewayProcess, outcome: str) -> float:
    """``igsp_queue_attempts_total`` for one outcome (delivered / retry / dead) from /metrics."""
    text = requests.get(gateway.internal_url + "/metrics", timeout=5).text
    pattern = r'igsp_queue_attempts_total\{[^}]*outcome="' + re.escape(outcome) + r'"[^}]*\} ([0-9.]+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0
