"""Helpers for the operations tests: scrape /metrics, record what a legacy API receives,
write variants of a mapping file, wait for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.conftest import Hub88
from tests.support import ROOT


class Metrics:
    """One scrape of ``/metrics``: every sample, addressable by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
                        for s in family.samples]

    @classmethod
    def scrape(cls, base_url: str) -> Metrics:
        response = requests.get(f"{base_url}/metrics", timeout=10)
        response.raise_for_status()
        return cls(response.text)

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def value(self, name: str, **labels) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(v for n, ls, v in self.samples if n == name and all(ls.get(k) == w for k, w in labels.items()))

    def series(self, name: str) -> list[dict]:
        return [ls for n, ls, _ in self.samples if n == name]


class RecordingHub88(Hub88):
    """The Hub88 wallet simulator, remembering the path and headers of every legacy call."""

    def __init__(self, public_key_pem: str):
        self.received: list[tuple[str, dict]] = []

        @web.middleware
        async def record(request: web.Request, handler):
            if not request.path.startswith("/_control/"):
                self.received.append((request.path, dict(request.headers)))
            return await handler(request)

        app = hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=public_key_pem)
        app.middlewares.insert(0, record)
        super().__init__(start_in_thread(app))

    def headers(self, path: str | None = None) -> list[dict]:
        return [h for p, h in list(self.received) if path is None or p == path]


def write_mapping(path: Path, *, name: str | None = None, headers: dict | None = None, timeout: float | None = None,
                  base_url: str | None = None, edit: Callable[[dict], None] | None = None) -> Path:
    """A variant of mappings/hub88-wallet.yaml written to ``path``."""
    data = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    if name:
        data["name"] = name
    if headers:
        data["upstream"]["headers"] = headers
    if timeout:
        data["upstream"]["timeout"] = timeout
    if base_url:
        data["upstream"]["base_url"] = base_url
    if edit:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_for(condition: Callable[[], object], timeout: float = 15, interval: float = 0.05, what: str = "condition"):
    """Poll until ``condition()`` is truthy and return it (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
