"""``igsp-gateway try``: the mapping debugger.

Shows what a mapping would send to the legacy API for one iGSP input, and what iGSP
answer a legacy reply would become — without starting the gateway:

    igsp-gateway try mappings/hub88-wallet.yaml bet --input @bet.json \\
        --env HUB88_PRIVATE_KEY=@key.pem --response '{"status": "RS_OK", "balance": 8766000}'

The request goes through the same code as in production (``LegacyClient.build``: the
templates, the codec, the signer), and the reply through the same reading (``read``)
and the same iGSP shaping (``Wallet.balance_of``). With ``--live`` it is really sent.
Secret values are redacted from everything shown. Environment variables the mapping
needs but that are unset are replaced by visible placeholders; a missing signing key
leaves the request unsigned (and says so) instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from adapters.codecs import dumps
from gateway.adapter_api import Adapter
from gateway.engine.mapping import Mapping, compile_mapping
from gateway.engine.mapping_schema import MAPPING_SCHEMA
from gateway.engine.yamlload import _ENV_REF, LineDict, interpolate_env, load_yaml, schema_problems
from gateway.errors import ConfigError, IgspError, Problem, UpstreamError

#: Stands in for an unset ``upstream.base_url`` (never resolvable: RFC 2606).
UNSET_URL = "http://unset.invalid"
REDACTED = "[REDACTED]"
HOOK_ACTIONS = {"balance": "balance", "bet": "bet", "win": "win", "refund": "refund", "rollback": "refund"}
_SECRET_OPTION_WORDS = ("secret", "password", "token", "private", "key")


class Loaded:
    """A mapping compiled for ``try``, with what had to be stood in for."""

    def __init__(self, mapping: Mapping, unset: list[str], base_display: str | None, unsigned: list[str]):
        self.mapping, self.unset, self.base_display, self.unsigned = mapping, unset, base_display, unsigned

    def show_url(self, url: str) -> str:
        return url.replace(UNSET_URL, self.base_display, 1) if self.base_display else url


def _file_or_text(value: str) -> str:
    """``@path`` reads a file (for PEM keys and bodies), anything else is the value itself."""
    return Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env wants NAME=VALUE (or NAME=@file), got {pair!r}")
        env[name] = _file_or_text(value)
    return env


def _env_names(node: Any) -> set[str]:
    """Every ``${VAR}`` without a ``:-default`` in a loaded YAML tree."""
    if isinstance(node, dict):
        return set().union(*(_env_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_names(v) for v in node)) if node else set()
    if isinstance(node, str):
        return {m.group(1) for m in _ENV_REF.finditer(node) if m.group(2) is None}
    return set()


def load_for_try(path: str, env_overrides: dict[str, str]) -> Loaded:
    """Load a mapping like ``load_mapping``, standing in for unset variables."""
    file = str(path)
    data = load_yaml(file)
    if not isinstance(data, LineDict):
        raise ConfigError([Problem(file, 1, "", "a mapping file must be a YAML mapping (key: value)")])
    env = {**os.environ, **env_overrides}
    unset = sorted(name for name in _env_names(data) if name not in env)
    base_display = None
    upstream = data.get("upstream")
    if isinstance(upstream, dict) and isinstance(upstream.get("base_url"), str) and \
            _env_names(upstream["base_url"]) & set(unset):
        base_display = upstream["base_url"].rstrip("/")
        upstream["base_url"] = UNSET_URL
    interpolate_env(data, file, {**env, **{name: f"<unset:{name}>" for name in unset}})
    problems = schema_problems(data, MAPPING_SCHEMA, file)
    if problems:
        raise ConfigError(problems)
    unsigned: list[str] = []
    try:
        mapping = compile_mapping(data, file)
    except ConfigError as exc:
        placeholders = [name for name in unset if f"<unset:{name}>" in json.dumps(data.get("signer"), default=str)]
        if not placeholders or any(p.path.split(".")[0] != "signer" for p in exc.problems):
            raise
        # The signing key is what is missing: show the request, unsigned, rather than nothing.
        del data["signer"]
        mapping = compile_mapping(data, file)
        unsigned = placeholders
    return Loaded(mapping, unset, base_display, unsigned)


def parse_input(raw: bytes, mapping: Mapping, operation: str) -> dict:
    """The iGSP input: a platform wallet hook is checked against ``spec/`` like a real one."""
    try:
        payload = json.loads(raw, parse_float=Decimal)
    except ValueError as exc:
        raise IgspError("invalid_json", f"--input is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise IgspError("invalid_request", "--input must be a JSON object")
    if mapping.face == "platform" and operation in HOOK_ACTIONS:
        from gateway.faces.platform import parse_hook  # after serve's metrics set-up (gateway/cli.py)
        from gateway.spec import hook_validators

        payload.setdefault("action", HOOK_ACTIONS[operation])
        payload = parse_hook(dumps(payload), hook_validators())
        if "amount" in payload:
            mapping.amounts.check(payload["amount"], payload["currency"])
    return payload


def _secret_values(mapping: Mapping) -> list[str]:
    values = [v for v in mapping.secrets.values() if isinstance(v, str)]
    for adapter in (mapping.codec, mapping.signer, *mapping.extensions):
        if adapter is None:
            continue
        for key, value in adapter.options.items():
            if isinstance(value, str) and any(word in key.lower() for word in _SECRET_OPTION_WORDS):
                values.append(value)
    return sorted({v for v in values if len(v) >= 4 and not v.startswith("<unset:")}, key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: list[str]):
        self.secrets = secrets

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(body).decode()


def igsp_answer(mapping: Mapping, operation: str, payload: dict, fields: dict) -> bytes:
    """The iGSP body the gateway would answer for read ``fields`` (as ``Wallet`` shapes it)."""
    if mapping.face != "platform" or operation not in HOOK_ACTIONS:
        return dumps(fields)
    from gateway.faces.wallet import Wallet, amount_json, check_currency
    from gateway.outbound.legacy import LegacyClient

    wallet = Wallet("try", LegacyClient(mapping), store=None, retention=0)
    if operation == "balance":
        check_currency(fields, payload["currency"])
    balance = amount_json(wallet.balance_of(fields, payload["currency"]))
    if operation == "balance":
        return orjson.dumps({"balance": balance})
    return orjson.dumps({"balance": balance, "transaction_id": wallet.platform_txid(fields, payload["transaction_id"])})


def _error_report(exc: IgspError) -> dict:
    report = {"status": exc.status, "body": exc.body(), "retriable": exc.retriable}
    if isinstance(exc, UpstreamError):
        report["applied"] = {True: "yes", False: "no", None: "unknown"}[exc.applied]
    return report


def _guess_content_type(body: bytes) -> str:
    head = body.lstrip()[:1]
    if head == b"<":
        return "text/xml; charset=utf-8"
    if head in (b"{", b"["):
        return "application/json"
    return "application/x-www-form-urlencoded"


async def run_try(loaded: Loaded, operation: str, payload: dict, *, request_id: str, partner: str,
                  response: bytes | list[bytes] | None, status: int | list[int], content_type: str | None,
                  live: bool, ledger: dict | None = None) -> dict:
    """Everything ``try`` shows, as plain data (``--json`` prints it as is).

    A multi-step operation shows each step (``steps``: its request, the answer given for it —
    ``response`` and ``status`` are then lists, one per step, in order — and what was read),
    up to the first step without an answer or the first that fails. ``ledger``: what the
    operation's ledger reads find (``{"round_bet": {...}}``); a read not given is empty."""
    from gateway.faces.wallet import Wallet
    from gateway.outbound.legacy import LegacyClient, in_step

    mapping = loaded.mapping
    redact = Redactor(_secret_values(mapping))
    client = LegacyClient(mapping)
    wallet = Wallet(partner, client, store=None, retention=0)
    context = wallet.context(payload, request_id)
    responses = response if isinstance(response, list) else ([] if response is None else [response])
    statuses = status if isinstance(status, list) else [status]
    op = mapping.operations[operation]
    report: dict[str, Any] = {
        "mapping": {"file": mapping.file, "name": mapping.name, "face": mapping.face},
        "operation": operation,
        "unset": loaded.unset,
        "unsigned": loaded.unsigned,
        "flows": [type(a).__name__ for a in (mapping.codec, mapping.signer, *mapping.extensions)
                  if a is not None and type(a).run is not Adapter.run],
        "context": {k: (format(v, "f") if isinstance(v, Decimal) else v) for k, v in context.items()
                    if k in payload or k == "legacy_amount"},
        "request": None, "response": None, "echo": None, "proves": None, "fields": None, "answer": None,
    }
    if op.steps:
        report["steps"] = []
    try:
        if op.ledger:
            context["ledger"] = _ledger_given(op, operation, ledger or {})
            report["ledger"] = context["ledger"]
        if not op.steps:
            raw = responses[0] if responses else None
            fields = await _one_call(client, loaded, operation, context, report, raw, statuses[0], content_type, live,
                                     redact)
        else:
            done: dict[str, dict | None] = {}
            moved, fields, sent = False, None, 0
            for index, step in enumerate(op.steps, 1):
                shown: dict[str, Any] = {"step": step.step, "index": index, "of": len(op.steps),
                                         "moves_money": step.moves_money, "request": None, "response": None,
                                         "echo": None, "proves": None, "fields": None, "outcome": None}
                report["steps"].append(shown)
                if step.when is not None and not client._runs(step, {**context, "steps": done}):
                    shown["skipped"] = True  # its when is false: later steps read it as none
                    done[step.step] = None
                    continue
                sent += 1
                raw = responses[sent - 1] if sent <= len(responses) else None
                got = statuses[min(sent - 1, len(statuses) - 1)]
                try:
                    fields = await _one_call(client, loaded, step.name, {**context, "steps": done}, shown, raw, got,
                                             content_type, live, redact)
                except IgspError as exc:
                    shown["outcome"] = _error_report(exc)
                    raise in_step(exc, step, index, len(op.steps), moved) from exc
                if fields is None:
                    break  # no answer given for this step: the rest cannot be rendered
                shown["outcome"] = {"status": 200, "ok": True}
                done[step.step] = fields
                moved = moved or step.moves_money
        if fields is None:
            return report
        body = igsp_answer(mapping, operation, payload, fields)
        report["answer"] = {"status": 200, "body": json.loads(body, parse_float=Decimal), "raw": body.decode()}
    except IgspError as exc:
        report["answer"] = _error_report(exc)
    finally:
        await client.close()
    return report


def _ledger_given(op: Any, operation: str, given: dict) -> dict:
    """The ``ledger`` variable for ``try``: each declared read as given (``--ledger``), else
    empty; an empty read declared ``missing`` fails as it would in the gateway."""
    found = {}
    for name, rule in op.ledger.items():
        value = given.get(name)
        if value is None and rule is not None:
            raise IgspError(rule.code, rule.message or f"ledger.{name} is empty for this {operation}", rule.status)
        found[name] = value
    return found


async def _one_call(client: Any, loaded: Loaded, name: str, context: dict, shown: dict, response: bytes | None,
                    status: int, content_type: str | None, live: bool, redact: Redactor) -> dict | None:
    """One legacy call of ``try`` (an operation's, or a step's): fills ``shown`` with its request,
    the answer and what was read; returns the fields read, None when no answer was given."""
    mapping = loaded.mapping
    call = client.calls[name]
    try:
        req = client.build(name, context)
        expected = client.expect(name, context)
    except Exception as exc:  # noqa: BLE001 - shown to the mapping author, who needs the reason
        error = client.build_error(name, context, exc, where=True)
        if error is exc:
            raise
        if error.code == "invalid_request":
            error = IgspError("invalid_request", f"cannot build the legacy request: {type(exc).__name__}: {exc}")
        raise error from exc
    url = loaded.show_url(req.url) + (("?" + urlencode(req.params)) if req.params else "")
    headers = dict(req.headers)
    if loaded.unsigned:
        headers["(signature)"] = f"<not signed: {', '.join(loaded.unsigned)} unset>"
    shown["request"] = {"method": req.method, "url": redact(url),
                        "headers": {k: redact(str(v)) for k, v in headers.items()},
                        "body": redact(_text(req.body))}
    if live:
        answer = await client.send(req, call.timeout)
        got_status, got_type, raw = answer.status, answer.content_type, answer.body
        source = "live"
    elif response is not None:
        got_status, got_type, raw, source = status, content_type or _guess_content_type(response), response, "given"
    else:
        return None
    shown["response"] = {"status": got_status, "content_type": got_type, "body": redact(_text(raw)), "source": source}
    shown["echo"] = _echo_report(mapping, call, expected, got_type, raw, redact)
    shown["proves"] = _proof_report(mapping, call, expected, got_type, raw, redact)
    fields, _ = client.read(name, got_status, got_type, raw, expected)
    shown["fields"] = {k: (format(v, "f") if isinstance(v, Decimal) else v) for k, v in fields.items()}
    return fields


def _echo_report(mapping: Mapping, operation: Any, expected: dict | None, content_type: str, raw: bytes,
                 redact: Redactor) -> list[dict] | None:
    """Each declared echo of ``operation`` (an Operation) with the value expected and the one the answer
    carries (None when nothing is declared or the answer cannot be decoded)."""
    from gateway.engine import echo

    if not expected:
        return None
    try:
        data = mapping.codec.decode(raw, content_type) if raw else None
    except Exception:  # noqa: BLE001 - read() reports the unreadable body
        return None

    def shown(value: Any) -> Any:
        return value if value is None or isinstance(value, (bool, int)) else redact(str(value))

    rows = echo.compare(operation.echo, expected, mapping.search, data)
    return [{"field": path, "expected": shown(want), "got": shown(got), "ok": ok} for path, want, got, ok in rows]


def _proof_report(mapping: Mapping, operation: Any, expected: dict | None, content_type: str, raw: bytes,
                  redact: Redactor) -> dict | None:
    """For an "already done" answer whose code needs proof (``success_codes: [{code, proves}]``):
    the code and each proof with the value expected and the one the answer carries."""
    from gateway.engine import echo

    rules = operation.result
    if not rules.proofs or rules.code is None:
        return None
    try:
        data = mapping.codec.decode(raw, content_type) if raw else None
        code = mapping.search(rules.code, data)
    except Exception:  # noqa: BLE001 - read() reports the unreadable body
        return None
    if code is None or str(code) not in rules.proofs:
        return None
    wanted = (getattr(expected, "proofs", None) or {}).get(str(code)) or {}

    def shown(value: Any) -> Any:
        return value if value is None or isinstance(value, (bool, int)) else redact(str(value))

    rows = echo.compare(rules.proofs[str(code)], wanted, mapping.search, data)
    return {"code": str(code), "rows": [{"field": path, "expected": shown(want), "got": shown(got), "ok": ok}
                                        for path, want, got, ok in rows]}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))  # exact, as the gateway writes it
    return str(value)


def _call_text(report: dict) -> list[str]:
    """One call of ``try``'s report: request, answer, echoes, proofs, fields read."""
    lines: list[str] = []
    req = report["request"]
    if req is not None:
        lines += ["", "--> legacy request", f"{req['method']} {req['url']}"]
        lines += [f"{k}: {v}" for k, v in req["headers"].items()]
        lines += ["", req["body"]] if req["body"] else []
    resp = report["response"]
    if resp is not None:
        lines += ["", f"<-- legacy response ({resp['source']}): HTTP {resp['status']} {resp['content_type']}",
                  resp["body"]]
    if report["echo"]:
        lines.append("")
        for row in report["echo"]:
            if row["ok"]:
                lines.append(f"echo:      {row['field']} = {row['got']!r}, as sent")
            elif row["got"] is None:
                lines.append(f"echo:      {row['field']} is missing; the request sent {row['expected']!r}")
            else:
                lines.append(f"echo:      {row['field']} = {row['got']!r}, but the request sent {row['expected']!r}")
        if not all(row["ok"] for row in report["echo"]):
            lines.append("           another request's answer to the gateway (a pasted answer must echo --input "
                         "and --request-id)")
    if report.get("proves"):
        proof = report["proves"]
        lines.append("")
        for row in proof["rows"]:
            if row["ok"]:
                lines.append(f"proves:    {row['field']} = {row['got']!r}, this transaction's")
            elif row["got"] is None:
                lines.append(f"proves:    {row['field']} is missing; this transaction's is {row['expected']!r}")
            else:
                lines.append(f"proves:    {row['field']} = {row['got']!r}, but this transaction's is "
                             f"{row['expected']!r}")
        ok = proof["rows"] and all(row["ok"] for row in proof["rows"])
        lines.append(f"           {proof['code']} (already done) is {'' if ok else 'NOT '}proven to be this "
                     "transaction" + ("" if ok else ": the outcome is unknown"))
    if report["fields"] is not None:
        lines += ["", "read:      " + ", ".join(f"{k} = {v!r}" for k, v in report["fields"].items())]
    return lines


def format_text(report: dict) -> str:
    """A readable rendering of ``run_try``'s report."""
    m = report["mapping"]
    lines = [f"mapping:   {m['file']} ({m['name']}, {m['face']} face)", f"operation: {report['operation']}"]
    if report["unset"]:
        lines.append(f"unset:     {', '.join(report['unset'])} (placeholders used; pass --env NAME=VALUE)")
    if report["unsigned"]:
        lines.append(f"unsigned:  the signer needs {', '.join(report['unsigned'])}")
    if report["flows"]:
        lines.append(f"note:      {', '.join(report['flows'])} define a multi-step flow (run); "
                     "this shows the mapping's own step")
    if report["context"].get("legacy_amount") is not None:
        lines.append(f"amount:    {report['context'].get('amount')} -> legacy_amount {report['context']['legacy_amount']}")
    for name, value in (report.get("ledger") or {}).items():
        lines.append(f"ledger:    {name} = " + ("(empty)" if value is None else json.dumps(value, default=str)))
    if "steps" in report:
        for step in report["steps"]:
            money = "" if step["moves_money"] else ", moves no money"
            lines += ["", f"=== step {step['index']}/{step['of']}: {step['step']}{money}"]
            if step.get("skipped"):
                lines += ["", f"--- step {step['step']} skipped: its when is false (later steps read it as none)"]
                continue
            lines += _call_text(step)
            outcome = step["outcome"]
            if outcome is None and step["request"] is not None:
                lines += ["", f"(give a --response for step {step['index']} to see the rest: one per step, in order)"]
            elif outcome is not None and outcome["status"] >= 400:
                lines += ["", f"--- step {step['step']} failed: HTTP {outcome['status']} {outcome['body']['error']}"]
            elif outcome is not None:
                lines += ["", f"--- step {step['step']} succeeded"]
        lines.append("")
        lines.append("A redelivery (queue, or a retry after a timeout) runs every step again from step 1"
                     + (", with the ledger reads of the first run." if report.get("ledger") is not None else "."))
    else:
        lines += _call_text(report)
    resp = report["response"] if "steps" not in report else (report["steps"][-1]["response"]
                                                             if report["steps"] else None)
    answer = report["answer"]
    if answer is not None:
        if answer["status"] < 400 and m["face"] == "platform" and report["operation"] in HOOK_ACTIONS:
            lines += ["", f"==> iGSP answer: HTTP {answer['status']}", answer["raw"]]
        elif answer["status"] < 400:
            # Provider face and helper operations: the catalogue/launch sections shape these further.
            lines += ["", "==> read successfully (fields for the rest of the flow)", answer["raw"]]
        else:
            kind = "retriable" if answer["retriable"] else "fatal"
            if "applied" in answer:
                kind += f", money moved: {answer['applied']}"
            lines += ["", f"==> iGSP error: HTTP {answer['status']} ({kind})",
                      json.dumps(answer["body"], ensure_ascii=False)]
    elif resp is None:
        lines += ["", "(give --response BODY|@file or --live to see the iGSP answer)"]
    return "\n".join(lines)


def cmd_try(args: argparse.Namespace) -> int:
    try:
        overrides = parse_env(args.env)
        raw_input = _file_or_text(args.input).encode()
        responses = [Path(r[1:]).read_bytes() if r.startswith("@") else r.encode() for r in args.response or ()]
    except (OSError, ValueError) as exc:
        print(f"try: {exc}", file=sys.stderr)
        return 2
    try:
        loaded = load_for_try(args.mapping, overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    mapping = loaded.mapping
    if args.operation not in mapping.operations:
        print(f"try: unknown operation {args.operation!r}; {mapping.name} has: {', '.join(mapping.operations)}",
              file=sys.stderr)
        return 2
    if args.live and (loaded.unset or loaded.unsigned):
        print(f"try: --live needs every variable set; unset: {', '.join(loaded.unset)}", file=sys.stderr)
        return 2
    try:
        payload = parse_input(raw_input, mapping, args.operation)
    except IgspError as exc:
        print(f"try: the input would be refused: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    try:
        ledger = json.loads(_file_or_text(args.ledger), parse_float=Decimal) if args.ledger else None
    except (OSError, ValueError) as exc:
        print(f"try: --ledger: {exc}", file=sys.stderr)
        return 2
    if ledger is not None and not isinstance(ledger, dict):
        print("try: --ledger takes a JSON object: {\"round_bet\": {...}}", file=sys.stderr)
        return 2
    if len(responses) > max(1, len(mapping.operations[args.operation].steps)):
        print(f"try: {len(responses)} --response given, but {args.operation} makes "
              f"{max(1, len(mapping.operations[args.operation].steps))} legacy call(s)", file=sys.stderr)
        return 2
    report = asyncio.run(run_try(loaded, args.operation, payload, request_id=args.request_id or uuid.uuid4().hex,
                                 partner=args.partner, response=responses or None, status=args.status or [200],
                                 content_type=args.content_type, live=args.live, ledger=ledger))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=_json_default).decode())
    else:
        print(format_text(report))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("try", help="show the legacy request a mapping sends for an iGSP input, and the answer it reads")
    p.add_argument("mapping", help="mapping file")
    p.add_argument("operation", help="operation name in the mapping (balance, bet, win, refund, ...)")
    p.add_argument("--input", required=True, help="iGSP input as JSON, or @file (a hook body for a wallet)")
    p.add_argument("--response", action="append",
                   help="a legacy response body, or @file, to read as the legacy answer; for an operation with "
                        "steps, one per step, in order")
    p.add_argument("--status", type=int, action="append",
                   help="HTTP status of --response (default 200); one per --response, or one for all")
    p.add_argument("--content-type", help="Content-Type of --response (default: guessed from the body)")
    p.add_argument("--live", action="store_true", help="send the request to the real upstream")
    p.add_argument("--ledger", help="what the operation's ledger reads find, as JSON or @file: "
                                    "{\"round_bet\": {\"wallet_bet_id\": \"B1\", ...}}; a read not given is empty")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set a variable the mapping uses (NAME=@file reads a file); repeatable")
    p.add_argument("--request-id", help="request id for the templates (default: random)")
    p.add_argument("--partner", default="try", help="partner id for the templates (default: try)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_try)
