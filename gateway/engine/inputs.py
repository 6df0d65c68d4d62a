"""What each template of a mapping may read: the variables the gateway gives it.

``validate`` (gateway/engine/mapping.py) checks every template variable against these
sets, so that ``{{ sesion_id }}`` fails the load with its file and line instead of every
call at run time. The names here are the contract of the code that builds each context;
tests/test_template_inputs.py checks them against that code:

    wallet operations (balance, bet, win, refund, rollback)   gateway/faces/wallet.py  Wallet.context
    launch steps, launch.url / launch.token                   gateway/faces/sessions.py  Launcher._run
    the catalogue's operations and fields                     gateway/faces/catalogue.py  Catalogue.fetch/_one
    callbacks: fields, reply, error_reply                     gateway/faces/callbacks.py  Callbacks

Hook and launch fields come from the iGSP spec (``spec/``): every property of the request
schema, required or not. Fields a caller sends beyond those are not known to the spec; a
mapping that reads one declares it in ``extra_inputs``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

#: What Wallet.context adds to every hook for a wallet operation's templates.
WALLET_CONTEXT = frozenset({"request_id", "partner", "now", "now_ms", "secrets"})
#: Added when the hook carries an amount (bet, win, refund, rollback).
AMOUNT_CONTEXT = frozenset({"legacy_amount"})
#: The hook whose fields each wallet operation is rendered with. ``rollback`` (the
#: gateway's compensating rollback of a bet whose outcome is unknown) is a refund built
#: from the bet: the bet's fields with ``bet_transaction_id``.
WALLET_HOOKS = {"balance": ("balance",), "bet": ("bet",), "win": ("win",), "refund": ("refund",),
                "rollback": ("bet", "refund")}

#: What Launcher._run adds to the launch request for the launch steps and launch.url/token.
LAUNCH_CONTEXT = frozenset({"game", "legacy_game_id", "token", "partner", "request_id", "secrets", "now", "now_ms",
                            "device", "is_demo"})
#: What Catalogue.fetch gives the operation that fetches (a page of) a legacy list.
CATALOGUE_CONTEXT = frozenset({"page", "offset", "page_size", "cursor", "request_id", "secrets", "now"})
#: What Catalogue._one gives the templates of a catalogue field.
CATALOGUE_ITEM_CONTEXT = frozenset({"item", "secrets"})
#: What Callbacks gives the templates reading an endpoint's fields from a legacy request.
CALLBACK_CONTEXT = frozenset({"req", "session", "secrets"})
#: ... and a success reply, once the platform answered.
REPLY_CONTEXT = CALLBACK_CONTEXT | {"hook", "balance", "legacy_balance", "transaction_id", "currency"}
#: ... and an error reply (it may fail before any of the reply's variables exist).
ERROR_REPLY_CONTEXT = REPLY_CONTEXT | {"legacy_code", "legacy_message", "error"}

_HOOK_SCHEMAS = {"balance": "BalanceRequest", "bet": "BetRequest", "win": "WinRequest", "refund": "RefundRequest"}


@cache
def _schemas() -> tuple[dict, dict]:
    from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, load_spec

    return (load_spec(HOOKS_SPEC)["components"]["schemas"], load_spec(PROVIDER_SPEC)["components"]["schemas"])


@cache
def hook_fields(action: str) -> frozenset[str]:
    """Every property of the iGSP hook ``action`` (spec/igsp-platform-hooks.yaml)."""
    return frozenset(_schemas()[0][_HOOK_SCHEMAS[action]]["properties"])


@cache
def launch_fields() -> frozenset[str]:
    """Every property of the iGSP launch request (spec/igsp-provider.yaml, SessionRequest)."""
    return frozenset(_schemas()[1]["SessionRequest"]["properties"])


def wallet_inputs(operation: str, extra: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """The variables wallet operation ``operation`` is rendered with; None for an operation the
    gateway never calls itself (a step of an adapter's ``run`` flow: its context is the adapter's)."""
    hooks = WALLET_HOOKS.get(operation)
    if hooks is None:
        return None
    fields = frozenset().union(*(hook_fields(h) for h in hooks))
    money = AMOUNT_CONTEXT if "amount" in fields else frozenset()
    return fields | WALLET_CONTEXT | money | extra


def provider_inputs(data: dict, extra: frozenset[str] = frozenset()) -> tuple[dict[str, frozenset[str]], frozenset]:
    """``(operation -> its variables, launch.url's variables)`` for a provider mapping's raw
    ``data``. An operation used in several places gets the union; one used nowhere is left out
    (its templates' variables are not checked)."""
    operations = data.get("operations") or {}
    found: dict[str, frozenset[str]] = {}

    def add(name: Any, names: frozenset[str]) -> None:
        if isinstance(name, str) and name in operations:
            found[name] = found.get(name, frozenset()) | names

    catalogue = data.get("catalogue") if isinstance(data.get("catalogue"), dict) else {}
    for kind in ("games", "providers"):
        source = catalogue.get(kind)
        if isinstance(source, dict):
            add(source.get("operation"), CATALOGUE_CONTEXT)
    launch = launch_fields() | LAUNCH_CONTEXT | extra
    steps = (data.get("launch") or {}).get("steps") if isinstance(data.get("launch"), dict) else None
    for step in steps if isinstance(steps, list) else ():
        add(step, launch)
        spec = operations.get(step) if isinstance(step, str) else None
        if isinstance(spec, dict) and isinstance(spec.get("steps"), list) and spec["steps"]:
            spec = spec["steps"][-1] if isinstance(spec["steps"][-1], dict) else None  # answers its last call's
        if isinstance(spec, dict) and isinstance(spec.get("response"), dict):
            launch = launch | frozenset(map(str, spec["response"]))  # each step's fields join the context
    return found, launch


__all__ = ["CALLBACK_CONTEXT", "CATALOGUE_CONTEXT", "CATALOGUE_ITEM_CONTEXT", "ERROR_REPLY_CONTEXT",
           "LAUNCH_CONTEXT", "REPLY_CONTEXT", "WALLET_CONTEXT", "hook_fields", "launch_fields",
           "provider_inputs", "wallet_inputs"]
