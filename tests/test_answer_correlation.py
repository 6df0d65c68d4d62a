"""Answer correlation end to end: a real gateway process, the shipped Hub88 mapping (its
``echo`` of ``request_uuid`` and ``user``), and a Hub88-style wallet on raw sockets that
misbehaves the way real ones do.

The habit that motivates it: the wallet writes an answer twice on a keep-alive connection.
The second copy waits on the idle pooled connection, and the gateway's next request there
(another player's bet, over that player's balance) reads it as its own. Without the echo
check that bet is answered 200 with the first player's balance and stored: a refused bet
recorded as accepted, and another player's balance leaked. Here it must be an unknown
outcome: a 5xx now, never stored, a compensating rollback, the connection closed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from decimal import Decimal

import pytest

from tests.conftest import ACME, platform_config
from tests.ops_support import Metrics, wait_for, write_mapping
from tests.support import GatewayProcess, IgspClient
from tests.wallet_support import assert_error, balance, bet, win

UNIT = 100000  # the Hub88 mapping's scale: 1000000 = 10.00
BET_PATH, WIN_PATH, ROLLBACK_PATH = "/transaction/bet", "/transaction/win", "/transaction/rollback"


class HabitWallet:
    """A Hub88-style wallet written on raw sockets (HTTP/1.1 keep-alive, Content-Length framing).

    It keeps balances, debits a bet when the balance allows (else ``RS_ERROR_NOT_ENOUGH_MONEY``),
    credits a win, undoes a rolled-back transaction once, and echoes ``user`` and
    ``request_uuid`` in every answer, as Hub88 does. Signatures are not checked. Habits:

    - ``repeat(path)`` writes the last answer to ``path`` again, unasked, on the connection
      it went out on (the gateway has long read the first copy and pooled the connection);
    - ``tamper(path, change)`` changes the next answer to ``path`` after the money moved.
    """

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.lock = threading.Lock()
        self.players: dict[str, int] = {}
        self.transactions: dict[str, dict] = {}
        self.requests: collections.Counter = collections.Counter()
        self.rollbacks: list[str] = []  # reference_transaction_uuid of every rollback received
        self.tampering: dict[str, object] = {}
        self.last: dict[str, tuple[asyncio.StreamWriter, bytes]] = {}
        self.connections = 0

    def start(self) -> HabitWallet:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(5)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # -- control, from the test thread ----------------------------------------------------------------
    def player(self, player_id: str, amount: str) -> None:
        with self.lock:
            self.players[player_id] = int(Decimal(amount) * UNIT)

    def balance(self, player_id: str) -> Decimal:
        with self.lock:
            return Decimal(self.players[player_id]) / UNIT

    def tamper(self, path: str, change) -> None:
        with self.lock:
            self.tampering[path] = change

    def repeat(self, path: str) -> None:
        async def write_again():
            writer, data = self.last[path]
            writer.write(data)
            await writer.drain()
        asyncio.run_coroutine_threadsafe(write_again(), self.loop).result(5)

    # -- the wallet -----------------------------------------------------------------------------------
    def answer(self, path: str, request: dict) -> dict:
        user = request.get("user")
        reply = {"user": user, "status": "RS_OK", "request_uuid": request.get("request_uuid")}
        with self.lock:
            self.requests[path] += 1
            if user not in self.players:
                return {**reply, "status": "RS_ERROR_UNKNOWN"}
            if path in (BET_PATH, WIN_PATH):
                amount = request["amount"] if path == WIN_PATH else -request["amount"]
                if self.players[user] + amount < 0:
                    reply["status"] = "RS_ERROR_NOT_ENOUGH_MONEY"
                else:
                    self.players[user] += amount
                    self.transactions[request["transaction_uuid"]] = {"user": user, "amount": amount}
            elif path == ROLLBACK_PATH:
                self.rollbacks.append(request["reference_transaction_uuid"])
                target = self.transactions.get(request["reference_transaction_uuid"])
                if target is not None and target["user"] == user and not target.get("rolled_back"):
                    self.players[user] -= target["amount"]
                    target["rolled_back"] = True
            reply.update(currency="EUR", balance=self.players[user])
            change = self.tampering.pop(path, None)
        return change(reply) if change else reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                              if line.lower().startswith("content-length:"))
                body = json.dumps(self.answer(path, json.loads(await reader.readexactly(length)))).encode()
                data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                    len(body), body)
                self.last[path] = (writer, data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def wallet():
    server = HabitWallet().start()
    yield server
    server.stop()


def start_gateway(wallet: HabitWallet, keys, tmp_path) -> GatewayProcess:
    mapping = write_mapping(tmp_path / "hub88.yaml", timeout=1.0)  # the shipped mapping; rollbacks after 2 s
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    for partner in config["partners"]:
        partner["mapping"] = str(mapping)
    proc = GatewayProcess(config, tmp_path, env={"HUB88_WALLET_URL": wallet.url, "HUB88_PRIVATE_KEY": keys[0]}).start()
    proc.client = IgspClient(proc.url, ACME["api_key"], ACME["secret"])
    return proc


@pytest.fixture
def fresh_gateway(wallet, hub88_keys, tmp_path):
    """A gateway of its own: its pool holds exactly the connections this test made."""
    proc = start_gateway(wallet, hub88_keys, tmp_path)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture(scope="module")
def gateway(wallet, hub88_keys, tmp_path_factory):
    proc = start_gateway(wallet, hub88_keys, tmp_path_factory.mktemp("correlation"))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


def uncorrelated(gateway: GatewayProcess, operation: str) -> float:
    return Metrics.scrape(gateway.internal_url).value("igsp_upstream_errors_total", mapping="hub88-wallet",
                                             operation=operation, kind="uncorrelated")


def test_a_stale_answer_on_a_pooled_connection_is_never_the_next_bets_answer(fresh_gateway, wallet):
    client = fresh_gateway.client
    wallet.player("rich", "100.00")
    wallet.player("poor", "5.00")
    connections = wallet.connections
    first = client.hook(bet("tx-rich", "10.00", player="rich"))
    assert first.status_code == 200 and first.content.startswith(b'{"balance":90.00,'), first.text
    # The wallet writes its answer to the rich player's bet a second time, on the keep-alive
    # connection the gateway has pooled; the poor player's bet goes out on that connection.
    wallet.repeat(BET_PATH)
    second = client.hook(bet("tx-poor", "10.00", player="poor"))
    assert_error(second, 502, "upstream_bad_response")
    assert "is not this request's" in second.json()["message"]
    assert wallet.balance("poor") == Decimal("5.00")

    # The connection that carried the stale answer was closed: the poor player's own answer
    # (the refusal, written after it) is never read as the next call's. Each gets its own.
    rich, poor = client.hook(balance("rich")), client.hook(balance("poor"))
    assert (rich.status_code, rich.content) == (200, b'{"balance":90.00}'), rich.text
    assert (poor.status_code, poor.content) == (200, b'{"balance":5.00}'), poor.text
    assert wallet.connections >= connections + 2
    assert [(line["operation"], line["reason"]) for line in fresh_gateway.log_lines()
            if line.get("msg", "").startswith("legacy answer does not echo its request")] == \
        [("bet", "legacy answer is not this request's (request_uuid differs); outcome unknown")]

    # The compensating rollback reaches the wallet (nothing to undo: the wallet refused the bet,
    # or never read it, the gateway having hung up first)…
    wait_for(lambda: f"{ACME['id']}:tx-poor" in wallet.rollbacks, what="the compensating rollback")
    # …and the stale 200 was never stored as the bet's answer: a retry is told it was voided,
    # without reaching the wallet again (the two bets at most).
    retry = client.hook(bet("tx-poor", "10.00", player="poor"))
    assert_error(retry, 409, "transaction_voided")
    assert wallet.requests[BET_PATH] <= 2
    assert wallet.balance("poor") == Decimal("5.00") and wallet.balance("rich") == Decimal("90.00")
    assert uncorrelated(fresh_gateway, "bet") == 1
    # Nothing of the rich player's ever reached the poor player.
    for answer in (second, poor, retry):
        assert "90" not in answer.text and "rich" not in answer.text, answer.text


@pytest.mark.parametrize(("case", "change"), [
    ("another request id", lambda a: {**a, "request_uuid": "4f1c-another-request"}),
    ("another player", lambda a: {**a, "user": "someone-else", "balance": 123400000}),
    ("no echo", lambda a: {k: v for k, v in a.items() if k not in ("user", "request_uuid")}),
])
def test_a_bet_answered_for_another_request_is_rolled_back(gateway, wallet, case, change):
    client = gateway.client
    player, txid = f"bet-{len(wallet.players)}", f"tx-mismatch-{len(wallet.players)}"
    wallet.player(player, "100.00")
    before = uncorrelated(gateway, "bet")
    wallet.tamper(BET_PATH, change)  # the wallet debits, then answers with the wrong echo
    r = client.hook(bet(txid, "10.00", player=player))
    assert_error(r, 502, "upstream_bad_response")
    assert "1234" not in r.text and "someone-else" not in r.text
    assert wallet.balance(player) == Decimal("90.00")
    # Outcome unknown, so the bet is voided and rolled back; a retry is never answered 200.
    assert_error(client.hook(bet(txid, "10.00", player=player)), 409, "transaction_voided")
    wait_for(lambda: wallet.balance(player) == Decimal("100.00"), what="the rollback of the debit")
    assert uncorrelated(gateway, "bet") == before + 1


def test_an_error_answer_for_another_request_is_not_stored(gateway, wallet):
    """Another request's refusal says nothing about this bet: not a 402 to replay, an unknown outcome."""
    client = gateway.client
    wallet.player("refused", "100.00")
    wallet.tamper(BET_PATH, lambda a: {**a, "status": "RS_ERROR_NOT_ENOUGH_MONEY", "request_uuid": "4f1c-other"})
    assert_error(client.hook(bet("tx-refused", "10.00", player="refused")), 502, "upstream_bad_response")
    assert_error(client.hook(bet("tx-refused", "10.00", player="refused")), 409, "transaction_voided")
    wait_for(lambda: wallet.balance("refused") == Decimal("100.00"), what="the rollback of the debit")


def test_a_win_answered_for_another_player_is_not_stored(gateway, wallet):
    client = gateway.client
    wallet.player("winner", "100.00")
    before = Metrics.scrape(gateway.internal_url)
    wallet.tamper(WIN_PATH, lambda a: {**a, "user": "someone-else", "balance": 123400000})
    r = client.hook(win("w-mismatch", "5.00", player="winner"))
    assert_error(r, 502, "upstream_bad_response")
    assert "1234" not in r.text and "someone-else" not in r.text
    # Paid or not, nobody knows, and this wallet pays a resend again: not resent, but
    # dead-lettered for an operator; a retry is told it is in progress, never the stale 200.
    assert_error(client.hook(win("w-mismatch", "5.00", player="winner")), 503, "transaction_in_progress")
    after = Metrics.scrape(gateway.internal_url)
    assert after.value("igsp_dead_letters_total", route="wallet") == \
        before.value("igsp_dead_letters_total", route="wallet") + 1
    assert after.value("igsp_upstream_errors_total", operation="win", kind="uncorrelated") == 1
    assert wallet.requests[WIN_PATH] == 1 and wallet.balance("winner") == Decimal("105.00")
