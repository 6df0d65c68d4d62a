"""A Hub88-shaped legacy wallet that costs next to nothing: a raw asyncio protocol.

It answers every POST with ``RS_OK``, echoing the caller's ``user``, ``request_uuid``
and ``currency`` with a large fixed balance (1/100 000 units, as Hub88 writes them).
No signature check, and no state but a tally: the benchmark measures what sits in front
of it, so the stub must never be the bottleneck (one uvloop core answers tens of thousands
a second). The tally counts each ``transaction_uuid`` it was sent (a dict increment per
call), and ``GET /ledger`` answers it as JSON ``{txid: times}``, so a run can check that
nothing was lost or paid twice (``bench.overload``).

    python -m bench.stub --port 0      # prints "READY http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import orjson

BALANCE = 100_000_000_000_000  # 1 000 000 000.00 in 1/100 000 units: a bet never runs it dry
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
#: transaction_uuid -> how many calls carried it (GET /ledger)
LEDGER: Counter = Counter()


def answer(body: bytes) -> bytes:
    try:
        request = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        request = {}
    if not isinstance(request, dict):
        request = {}
    if "transaction_uuid" in request:
        LEDGER[request["transaction_uuid"]] += 1
    out = orjson.dumps({"user": request.get("user", ""), "status": "RS_OK",
                        "request_uuid": request.get("request_uuid", ""),
                        "currency": request.get("currency", "EUR"), "balance": BALANCE})
    return _HEAD % len(out) + out


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies: all the gateway and wrk send."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                    break
            total = end + 4 + length
            if len(self.buffer) < total:
                break
            if self.buffer.startswith(b"GET /ledger "):
                tally = orjson.dumps(LEDGER)
                out.append(_HEAD % len(tally) + tally)
            else:
                out.append(answer(self.buffer[end + 4:total]))
            self.buffer = self.buffer[total:]
        if out:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"READY http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
