"""Soak test: a steady mixed load through two gateway processes, then a full reconciliation.

    python bench/soak.py --duration 600            # the long run (10 minutes), on demand
    python bench/soak.py --duration 25 --json      # the short run tests/test_soak.py does

Everything runs on loopback: a Hub88-style wallet simulator (NOT idempotent), N gateway
processes sharing one store (Redis when the Redis store and ``redis-server`` are
available, else one SQLite file), and this load generator, which alternates gateways
per request. The mix is balance/bet/win/refund, with ``--duplicates`` of money requests
re-sent (newly signed, often to the other gateway) and ``--faults`` of legacy calls
failing through the simulator's fault API (reset, HTML 500, garbage, down, applied then
hung). A provider's usual retries are played for 5xx answers.

At the end the faults stop, the retry queue drains, every transaction is sent once more
to learn its final answer, and the gateway's answers are reconciled against the
wallet's own ledger: no transaction answered as done may be missing there (lost), none
may appear twice (doubled), and every player's balance must equal what the answers
say, give or take the few outcomes the gateway reports as unknown (dead-lettered for an
operator, because the wallet is not idempotent). Gateway RSS is sampled throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.codecs import dumps  # noqa: E402
from gateway import signing  # noqa: E402
from gateway.tools.simulators import hub88_wallet, spawn  # noqa: E402
from tests.support import GatewayProcess, RedisServer, unique_timestamp  # noqa: E402

API_KEY, SECRET = "soak-key-0001", "soak-secret-0123456789abcdef"
HOOKS = "/platforms/game-provider/hooks"
AMOUNTS = [Decimal(a) for a in ("0.10", "0.50", "1.00", "2.50", "5.00", "12.34", "20.00")]
FAULTS = ["reset", "http_500_html", "garbage", "down", "apply_then_hang"]
START_BALANCE = Decimal("1000000.00")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, args, wallet_url: str, gateway_urls: list[str], internal_urls: list[str]):
        self.args, self.wallet_url, self.urls, self.internal_urls = args, wallet_url, gateway_urls, internal_urls
        self.rng = random.Random(args.seed)
        self.players = [f"soak-p{i}" for i in range(args.players)]
        self.sent: dict[str, dict] = {}  # txid -> payload (money requests, in order)
        self.first: dict[str, tuple[int, bytes]] = {}  # txid -> first answer
        self.open_bets: list[str] = []  # bets answered 200 and not refunded yet
        self.answers: Counter = Counter()
        self.inconsistent: list[str] = []
        self.latencies: list[float] = []
        self.faults_injected = 0
        self.ids = itertools.count()
        self.next_gateway = itertools.cycle(range(len(gateway_urls)))

    async def post(self, http: aiohttp.ClientSession, payload: dict) -> tuple[int, bytes]:
        body = dumps(payload)
        url = self.urls[next(self.next_gateway)] + HOOKS
        started = time.perf_counter()
        async with http.post(url, data=body, headers=signing.signed_headers(API_KEY, SECRET, body, unique_timestamp()),
                             timeout=aiohttp.ClientTimeout(total=10)) as resp:
            out = resp.status, await resp.read()
        self.latencies.append(time.perf_counter() - started)
        return out

    async def send(self, http: aiohttp.ClientSession, payload: dict) -> tuple[int, bytes]:
        """Like a provider: retry 5xx answers a few times, then give up for now."""
        for attempt in range(3):
            status, body = await self.post(http, payload)
            self.answers[(payload["action"], status, json.loads(body).get("error", "ok"))] += 1
            if status < 500:
                return status, body
            await asyncio.sleep(0.2 * (attempt + 1))
        return status, body

    def new_payload(self) -> dict:
        player = self.rng.choice(self.players)
        base = {"player_id": player, "currency": "EUR", "game_id": "vs20olympgate", "session_id": "s-soak",
                "round_id": f"r-{next(self.ids)}"}
        roll = self.rng.random()
        if roll < 0.3:
            return {**base, "action": "balance"}
        txid = f"t-{next(self.ids)}"
        amount = self.rng.choice(AMOUNTS)
        if roll < 0.4 and self.open_bets:
            bet = self.sent[self.open_bets.pop(self.rng.randrange(len(self.open_bets)))]
            return {**bet, "action": "refund", "transaction_id": txid, "bet_transaction_id": bet["transaction_id"]}
        action = "bet" if roll < 0.75 else "win"
        return {**base, "action": action, "amount": amount, "type": action, "transaction_id": txid}

    async def one(self, http: aiohttp.ClientSession, wallet: aiohttp.ClientSession) -> None:
        if self.sent and self.rng.random() < self.args.duplicates:
            txid = self.rng.choice(list(self.sent))
            first = self.first.get(txid)
            status, body = await self.send(http, self.sent[txid])
            if first is not None and first[0] < 500 and status < 500 and (status, body) != first:
                self.inconsistent.append(txid)
            return
        payload = self.new_payload()
        if payload["action"] != "balance" and self.rng.random() < self.args.faults:
            endpoint = {"refund": "rollback"}.get(payload["action"], payload["action"])
            kind = self.rng.choice(FAULTS)
            fault = {"kind": kind, "endpoint": endpoint, **({"seconds": 3} if kind == "apply_then_hang" else {})}
            async with wallet.post(self.wallet_url + "/_control/faults", json=fault) as resp:
                resp.raise_for_status()
            self.faults_injected += 1
        if "transaction_id" in payload:
            self.sent[payload["transaction_id"]] = payload
        status, body = await self.send(http, payload)
        if "transaction_id" in payload:
            self.first[payload["transaction_id"]] = (status, body)
            if payload["action"] == "bet" and status == 200:
                self.open_bets.append(payload["transaction_id"])

    async def load(self, http, wallet, pids: list[int]) -> list[list[int]]:
        """Steady rate for ``duration`` seconds, bounded concurrency; RSS sampled every second."""
        interval, inflight = 1.0 / self.args.rate, set()
        limit = asyncio.Semaphore(self.args.concurrency)
        samples: list[list[int]] = []
        started = time.monotonic()
        next_sample = started
        for tick in itertools.count():
            now = time.monotonic()
            if now - started >= self.args.duration:
                break
            if now >= next_sample:
                samples.append([rss_kib(pid) for pid in pids])
                next_sample += 1.0
            await limit.acquire()
            task = asyncio.create_task(self.one(http, wallet))
            task.add_done_callback(lambda t: (limit.release(), inflight.discard(t)))
            inflight.add(task)
            await asyncio.sleep(max(0.0, started + (tick + 1) * interval - time.monotonic()))
        await asyncio.gather(*inflight)
        samples.append([rss_kib(pid) for pid in pids])
        return samples

    async def drain(self, http) -> bool:
        deadline = time.monotonic() + self.args.drain_seconds
        while time.monotonic() < deadline:
            depths = []
            for url in self.internal_urls:
                async with http.get(url + "/metrics") as resp:
                    text = await resp.text()
                depths += [float(line.split()[-1]) for line in text.splitlines() if line.startswith("igsp_queue_depth ")]
            if depths and max(depths) == 0:
                return True
            await asyncio.sleep(0.5)
        return False


def reconcile(soak: Soak, finals: dict[str, tuple[int, dict]], state: dict) -> dict:
    """Compare the gateway's final answers with the wallet's own ledger."""
    entries = Counter((e["kind"], e["txid"]) for e in state["ledger"])
    txs = state["transactions"]
    lost, doubled, unknown = [], [], Decimal(0)
    expected = dict.fromkeys(soak.players, START_BALANCE)
    refunded = {p["bet_transaction_id"] for t, p in soak.sent.items() if p["action"] == "refund" and finals[t][0] == 200}
    for txid, payload in soak.sent.items():
        status, body = finals[txid]
        uuid, amount, player = f"soak:{txid}", payload.get("amount", Decimal(0)), payload["player_id"]
        action = payload["action"]
        if action in ("bet", "win") and entries[(action, uuid)] > 1:
            doubled.append(txid)
        if action == "bet":
            applied, rolled_back = entries[("bet", uuid)] == 1, txs.get(uuid, {}).get("rolled_back", False)
            if status == 200:
                if not applied:
                    lost.append(txid)
                expected[player] -= amount
                if txid in refunded:
                    expected[player] += amount
                    if not rolled_back:
                        lost.append(f"refund of {txid}")
            elif applied and not rolled_back:
                lost.append(txid)  # answered as not done, yet the money left the player
        elif action == "win":
            if status == 200:
                expected[player] += amount
                if entries[("win", uuid)] != 1:
                    lost.append(txid)
            elif status >= 500:
                unknown += amount  # dead-lettered: an operator decides
            elif entries[("win", uuid)]:
                lost.append(txid)
        elif action == "refund" and status >= 500:
            unknown += amount
    off = {p: Decimal(state["players"][p]["balance"]) - expected[p] for p in soak.players}
    unexplained = {p: str(d) for p, d in off.items() if d < 0 or d > unknown}
    return {"lost": lost, "doubled": doubled, "unknown_outcome_amount": str(unknown),
            "balance_mismatches": unexplained, "balance_offsets_total": str(sum(off.values()))}


async def run(args, during_load=None) -> dict:
    """One soak; ``during_load(soak)``, if given, runs in a thread while the load runs (a test's
    fault: a store failover) and its answer is reported as ``during_load``."""
    work = Path(tempfile.mkdtemp(prefix="igsp-soak-"))
    private_pem, public_pem = hub88_wallet.generate_keypair()
    (work / "wallet.pub").write_text(public_pem)
    wallet_proc, wallet_url = spawn("hub88_wallet", "--public-key-file", str(work / "wallet.pub"))
    redis = None
    use_redis = args.store == "redis" or (args.store == "auto" and (ROOT / "gateway" / "store" / "redis.py").exists()
                                          and shutil.which("redis-server") is not None)
    if getattr(args, "store_url", None):
        store_url = args.store_url
    elif use_redis:
        redis = RedisServer().start()
        store_url = redis.url
    else:
        store_url = f"sqlite:///{work}/gateway.db"
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False, "drain_seconds": 5,
                   "shutdown_grace_seconds": 0},
        "store": {"url": store_url},
        "partners": [{"id": "soak", "face": "platform", "mapping": str(ROOT / "mappings" / "hub88-wallet.yaml"),
                      "api_key": API_KEY, "secrets": [SECRET]}],
    }
    env = {"HUB88_WALLET_URL": wallet_url, "HUB88_PRIVATE_KEY": private_pem}
    gateways = [GatewayProcess(config, work, env=env).start() for _ in range(args.gateways)]
    report: dict = {"store": store_url.split(":", 1)[0] if not redis else "redis", "gateways": args.gateways, "duration_s": args.duration,
                    "target_rate": args.rate}
    try:
        soak = Soak(args, wallet_url, [g.url for g in gateways], [g.internal_url for g in gateways])
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as wallet:
            for player in soak.players:
                async with wallet.post(wallet_url + "/_control/players",
                                       json={"player_id": player, "balance": str(START_BALANCE)}) as resp:
                    resp.raise_for_status()
            started = time.monotonic()
            fault = asyncio.create_task(asyncio.to_thread(during_load, soak)) if during_load else None
            samples = await soak.load(http, wallet, [g.proc.pid for g in gateways])
            elapsed = time.monotonic() - started
            if fault is not None:
                report["during_load"] = await fault
            lat = sorted(soak.latencies)
            report["drained"] = await soak.drain(http)
            # Final answers: each transaction once more, in the order first sent.
            finals = {}
            for txid, payload in soak.sent.items():
                status, body = await soak.post(http, payload)
                finals[txid] = (status, json.loads(body))
            report["drained_after_final_pass"] = await soak.drain(http)
            async with wallet.get(wallet_url + "/_control/state") as resp:
                state = await resp.json()
        warm = samples[max(1, len(samples) // 5)] if len(samples) > 2 else samples[0]
        report.update({
            "load_requests": len(lat), "achieved_rate": round(len(lat) / elapsed, 1),
            "money_transactions": len(soak.sent), "faults_injected": soak.faults_injected,
            "latency_ms": {"p50": round(lat[len(lat) // 2] * 1000, 2), "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2)},
            "answers": {f"{a}:{s}:{e}": n for (a, s, e), n in sorted(soak.answers.items())},
            "internal_errors": sum(n for (a, s, e), n in soak.answers.items() if s == 500),
            "inconsistent_replays": soak.inconsistent,
            "final_5xx": sum(1 for s, _ in finals.values() if s >= 500),
            "rss_kib": {"start": samples[0], "after_warmup": warm, "max": [max(c) for c in zip(*samples, strict=True)],
                        "end": samples[-1]},
            "rss_growth_after_warmup_kib": max(e - w for e, w in zip(samples[-1], warm, strict=True)),
            **reconcile(soak, finals, state),
        })
        report["ok"] = not (report["lost"] or report["doubled"] or report["balance_mismatches"]
                            or report["inconsistent_replays"] or report["internal_errors"] or not report["drained"])
    finally:
        for gateway in gateways:
            gateway.stop()
        report["gateway_tracebacks"] = sum(g.log_text().count("Traceback") for g in gateways)
        wallet_proc.terminate()
        wallet_proc.wait()
        if redis is not None:
            redis.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of steady load (default 600)")
    parser.add_argument("--rate", type=float, default=150, help="requests per second offered")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes sharing the store")
    parser.add_argument("--store", choices=("auto", "sqlite", "redis"), default="auto")
    parser.add_argument("--store-url", default=None, help="a running store every gateway shares instead "
                        "(e.g. redis+cluster://host:port/)")
    parser.add_argument("--players", type=int, default=40)
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of money requests re-sent")
    parser.add_argument("--faults", type=float, default=0.01, help="share of legacy calls made to fail")
    parser.add_argument("--drain-seconds", type=float, default=90, help="max wait for the retry queue to empty")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>30}: {value}")
    return 0 if report["ok"] and not report["gateway_tracebacks"] else 1


if __name__ == "__main__":
    sys.exit(main())
