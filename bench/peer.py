"""The reference peer: the minimal translator a user would write instead of the gateway.

One aiohttp handler: check the iGSP HMAC signature and timestamp, ``json.loads`` the
hook, call the Hub88-shaped wallet once through a pooled ``aiohttp`` client (signing the
call with the wallet's RSA key, as that wallet demands), answer the balance. No schema
validation, no ledger, no idempotency, no replay protection, no metrics, no logs: what
the gateway must beat while doing all of those.

    python -m bench.peer --port 0 --upstream http://127.0.0.1:9001 --api-key K --secret S [--rsa-key key.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime
from decimal import Decimal

import aiohttp
from aiohttp import web

PATHS = {"bet": "/transaction/bet", "win": "/transaction/win"}
SCALE = Decimal(100000)


def error(status: int, code: str) -> web.Response:
    return web.json_response({"error": code, "message": code, "status": status}, status=status)


def make_app(upstream: str, api_key: str, secret: bytes, rsa_key=None) -> web.Application:
    app = web.Application()
    session: dict[str, aiohttp.ClientSession] = {}

    async def client_ctx(app: web.Application):
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30))
        yield
        await session["s"].close()

    def sign(raw: bytes) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return base64.b64encode(rsa_key.sign(raw, padding.PKCS1v15(), hashes.SHA256())).decode()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return error(401, "unauthorized")
        timestamp, signature = request.headers.get("X-Timestamp", ""), request.headers.get("X-Signature", "")
        try:
            when = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return error(403, "invalid_signature")
        expected = hmac.new(secret, body + timestamp.encode(), hashlib.sha256).hexdigest()
        if abs(time.time() - when) > 300 or not hmac.compare_digest(expected, signature):
            return error(403, "invalid_signature")
        try:
            hook = json.loads(body, parse_float=Decimal)
            path = PATHS[hook["action"]]
            legacy = {
                "user": hook["player_id"], "token": hook["session_id"], "request_uuid": uuid.uuid4().hex,
                "game_code": hook["game_id"], "transaction_uuid": hook["transaction_id"],
                "supplier_transaction_id": hook["transaction_id"], "round": hook.get("round_id", hook["transaction_id"]),
                "round_closed": hook.get("finished", False), "currency": hook["currency"],
                "amount": int(Decimal(hook["amount"]) * SCALE), "is_free": hook["type"] == "freespin",
                "bet": hook["type"],
            }
        except (ValueError, KeyError, TypeError, ArithmeticError):
            return error(400, "invalid_request")
        raw = json.dumps(legacy).encode()
        headers = {"Content-Type": "application/json"}
        if rsa_key is not None:
            headers["X-Hub88-Signature"] = sign(raw)
        try:
            async with session["s"].post(upstream + path, data=raw, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=1.5)) as resp:
                answer = json.loads(await resp.read(), parse_float=Decimal)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return error(502, "upstream_error")
        if answer.get("status") != "RS_OK":
            return error(402, "insufficient_funds")
        balance = Decimal(answer["balance"]) / SCALE
        return web.Response(body=f'{{"balance":{balance:.2f},"transaction_id":{json.dumps(answer["request_uuid"])}}}',
                            content_type="application/json")

    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/platforms/game-provider/hooks", hook)
    return app


async def serve(args: argparse.Namespace) -> None:
    rsa_key = None
    if args.rsa_key:
        from cryptography.hazmat.primitives import serialization

        with open(args.rsa_key, "rb") as f:
            rsa_key = serialization.load_pem_private_key(f.read(), None)
    app = make_app(args.upstream.rstrip("/"), args.api_key, args.secret.encode(), rsa_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY http://{args.host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--rsa-key", help="PEM private key: sign each wallet call (X-Hub88-Signature)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
