"""JSON Schema of the mapping file format, version 1 (published as spec/mapping.schema.json).

Keys are closed (a typo is an error naming the allowed keys); ``x-…`` keys are free
annotations. The loader (gateway/engine/mapping.py) checks templates, JMESPath and adapters
on top of this.
"""

from __future__ import annotations

from gateway.errors import ERROR_CODES

_ANNOTATIONS = {"^x-": {}}

ADAPTER_SPEC = {
    "description": "An adapter key, or {adapter: key, ...options}.",
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "required": ["adapter"], "properties": {"adapter": {"type": "string", "minLength": 1}}},
    ],
}

ERROR_RULE = {
    "oneOf": [
        {"type": "string", "enum": sorted(ERROR_CODES)},
        {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "enum": sorted(ERROR_CODES)},
                "message": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "outcome": {"enum": ["not_applied", "unknown"], "default": "not_applied",
                            "description": "not_applied: the legacy side says nothing was applied. unknown: it "
                                           "does not know (retriable; a bet is rolled back, a win or refund "
                                           "queued or dead-lettered). Needs a 5xx error."},
            },
        },
    ]
}

SUCCESS_CODE = {
    "oneOf": [
        {"type": ["string", "integer"]},
        {
            "type": "object",
            "required": ["code", "proves"],
            "additionalProperties": False,
            "patternProperties": _ANNOTATIONS,
            "properties": {
                "code": {"type": ["string", "integer"]},
                "proves": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"},
                           "description": "JMESPath on the answer -> template of the value it must carry (as in "
                                          "echo): every one must match, or the answer does not prove the earlier "
                                          "attempt was this transaction and the outcome is unknown."},
            },
        },
    ]
}

RESULT = {
    "type": "object",
    "description": "How to tell success from failure in a legacy answer.",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "properties": {
        "success": {"type": "string", "description": "JMESPath, truthy on success. Default: HTTP 2xx."},
        "code": {"type": "string", "description": "JMESPath to the legacy error code."},
        "message": {"type": "string", "description": "JMESPath to the legacy error text."},
        "success_codes": {"type": "array", "items": SUCCESS_CODE,
                          "description": "Legacy codes that also mean success for this operation (\"already "
                                         "done\"), each taken as is or only with proof that it is this "
                                         "transaction ({code, proves})."},
        "errors": {"type": "object", "additionalProperties": ERROR_RULE,
                   "description": "Legacy code -> iGSP error code (or {error, message, status})."},
        "default_error": ERROR_RULE,
    },
}

ECHO = {
    "type": "object",
    "description": "Answer correlation: JMESPath on the legacy answer -> template of the value it must "
                   "echo from the request (\"{{ request_id }}\"). An answer that does not echo is an unknown "
                   "outcome (502 upstream_bad_response, kind uncorrelated), never stored.",
    "additionalProperties": {"type": ["string", "null"]},
}

CALL = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["path"],
    "properties": {
        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "POST"},
        "path": {"type": "string", "description": "Path under upstream.base_url (a template)."},
        "query": {"type": "object", "description": "Query parameters (templates)."},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"description": "The request body as a tree of templates, encoded by the codec."},
        "response": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "iGSP field -> JMESPath over the decoded legacy answer."},
        "result": RESULT,
        "echo": {**ECHO, "description": "This operation's echoes, merged over the file's echo: an entry "
                                        "replaces the file's one of the same expression, null removes it."},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "keep": {"type": "object", "additionalProperties": {"type": "string"},
                 "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                 "description": "A bet's values to keep in the ledger (name -> JMESPath over its answer), that "
                                "later operations read as ledger.bet.NAME / ledger.round_bet.NAME."},
    },
}

#: What a wallet operation may read of the ledger (gateway/faces/ledger_reads.py).
LEDGER_READ = {
    "description": "optional: an empty read is none and the templates say what then (a step's when, a "
                   "default); or {missing: error rule}: the operation fails with it, nothing sent.",
    "oneOf": [
        {"type": "string", "enum": ["optional"]},
        {"type": "object", "additionalProperties": False, "required": ["missing"],
         "properties": {"missing": ERROR_RULE}},
    ],
}

#: One step of a multi-step operation: a call, named, that later steps read as ``steps.NAME``.
STEP = {
    **CALL,
    "required": ["name", "path"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                 "description": "The step's name: later steps read its response fields as steps.NAME.FIELD."},
        **CALL["properties"],
        "moves_money": {"type": "boolean", "default": True,
                        "description": "false: this call changes nothing on the legacy side (a token, a lookup), "
                                       "so it is safe to rerun whatever it sends."},
        "when": {"type": "string",
                 "description": "A template: the step runs only when it renders true; a skipped step reads as "
                                "steps.NAME = none. Not on the last step."},
    },
}

#: An operation: one call (``path`` …), or several in order (``steps``).
OPERATION = {
    **CALL,
    "required": [],
    "properties": {
        **CALL["properties"],
        "steps": {"type": "array", "minItems": 1, "items": STEP,
                  "description": "Several legacy calls in order, each with its own request, response and "
                                 "result; the operation answers the last one's fields. A redelivery reruns them "
                                 "all from the first. Beside steps, only result, echo and ledger (defaults for each)."},
        "ledger": {"type": "object", "additionalProperties": LEDGER_READ,
                   "description": "What this operation reads of the gateway's ledger, as ledger.NAME: bet (a "
                                  "refund's or rollback's bet), round_bet (a win's: the accepted bet of its round)."},
    },
}

MAPPING_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://igsp-gateway.dev/schemas/mapping-v1.json",
    "title": "iGSP Gateway mapping file, version 1",
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["version", "name", "face", "upstream", "operations"],
    "properties": {
        "version": {"const": 1},
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
        "description": {"type": "string"},
        "face": {"enum": ["platform", "provider"],
                 "description": "platform: a legacy wallet behind iGSP hooks; provider: a legacy game provider."},
        "upstream": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": _ANNOTATIONS,
            "required": ["base_url"],
            "properties": {
                "base_url": {"type": "string", "pattern": "^https?://.*$"},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
                "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
                "max_connections": {"type": "integer", "minimum": 1, "default": 100},
                "tls_verify": {"type": "boolean", "default": True},
                "max_response_bytes": {"type": "integer", "minimum": 1024, "default": 1048576,
                                       "description": "The largest legacy answer read, counted after "
                                                      "decompression; a larger one is a 502 (outcome unknown)."},
                "idempotent": {"type": "boolean", "default": False,
                               "description": "The legacy API dedupes by transaction id (redelivery is safe)."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "reuse_connections": {"type": "boolean",
                                      "description": "Keep connections to this API alive between calls. Default: "
                                                     "only when every operation declares an echo, so that an "
                                                     "answer left on a connection is never read as another "
                                                     "call's."},
                "propagate_trace": {"type": "boolean", "default": True,
                                    "description": "With tracing on, send the W3C traceparent header with every "
                                                   "legacy call (and, provider face, every iGSP hook)."},
            },
        },
        "codec": ADAPTER_SPEC,
        "signer": ADAPTER_SPEC,
        "extensions": {"type": "array", "items": ADAPTER_SPEC},
        "amounts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "unit": {"enum": ["decimal", "minor", "scaled"], "default": "decimal"},
                "scale": {"type": "integer", "minimum": 1},
                "max": {"type": "number", "exclusiveMinimum": 0, "maximum": 2**63 - 1,
                        "description": "The largest amount the legacy side takes, in its unit (e.g. 2147483647 "
                                       "for a 32-bit column); a larger iGSP amount is a 400 naming the limit. "
                                       "Default: a signed 64-bit integer (minor, scaled), 18 digits (decimal)."},
            },
        },
        "secrets": {"type": "object", "additionalProperties": {"type": "string"}},
        "extra_inputs": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                         "uniqueItems": True,
                         "description": "Fields callers send beyond the iGSP spec's (hook or launch extras) that "
                                        "templates read; always optional at run time. Every other variable a "
                                        "template reads must be one the gateway gives it."},
        "result": RESULT,
        "echo": ECHO,
        "operations": {"type": "object", "additionalProperties": OPERATION, "minProperties": 1},
        "queue": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_attempts": {"type": "integer", "minimum": 1, "default": 10},
                "backoff_initial": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
                "backoff_max": {"type": "number", "exclusiveMinimum": 0, "default": 300.0},
            },
        },
        "catalogue": {"$ref": "#/$defs/catalogue"},
        "launch": {"$ref": "#/$defs/launch"},
        "callbacks": {"$ref": "#/$defs/callbacks"},
    },
}

# -- provider face: catalogue, launch and legacy wallet callbacks --------------------------

#: How one value is read from legacy data. A string is a JMESPath expression; an object
#: gives exactly one of ``path`` (JMESPath), ``template`` (Jinja2 text or a tree of
#: templates) or ``value`` (a constant), then optionally ``map`` (a lookup table applied
#: to the value) and ``default`` (when the value is missing or not in ``map``).
FIELD = {
    "type": ["string", "object"],
    "minLength": 1,
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "minProperties": 1,
    "properties": {
        "path": {"type": "string", "minLength": 1, "description": "JMESPath over the legacy data."},
        "template": {"description": "Jinja2 template (or a tree of them)."},
        "value": {"description": "A constant."},
        "map": {"type": "object", "description": "Lookup table: legacy value -> iGSP value."},
        "default": {"description": "Used when the value is missing or not in map."},
    },
}

CATALOGUE_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["id", "fields"],
    "properties": {
        "operation": {"type": "string", "description": "The operation that fetches (one page of) the list."},
        "static": {"type": "array", "items": {"type": "object"},
                   "description": "Legacy-shaped items written in the mapping (instead of an operation)."},
        "items": {"type": "string", "default": "@", "description": "JMESPath to the item list in an answer."},
        "paging": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": _ANNOTATIONS,
            "properties": {
                "style": {"enum": ["none", "page", "offset", "cursor"], "default": "none"},
                "size": {"type": "integer", "minimum": 1, "default": 100,
                         "description": "Page size, given to templates as page_size."},
                "start": {"type": "integer", "minimum": 0, "default": 1, "description": "First page number."},
                "next": {"type": "string", "description": "cursor style: JMESPath to the next legacy cursor."},
                "has_more": {"type": "string",
                             "description": "JMESPath, truthy while more pages follow (default: a full page)."},
                "max_pages": {"type": "integer", "minimum": 1, "default": 1000},
            },
        },
        "id": {**FIELD, "description": "The legacy id (shown to iGSP as a stable UUIDv5 unless it is a UUID)."},
        "fields": {"type": "object", "additionalProperties": FIELD, "minProperties": 1,
                   "description": "iGSP field -> how to read it from one legacy item."},
    },
}

CATALOGUE = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["games", "providers"],
    "properties": {
        "cache_ttl": {"type": "number", "minimum": 0, "default": 300,
                      "description": "Seconds a fetched legacy catalogue is served from the store."},
        "id_scope": {"type": "string", "minLength": 1,
                     "description": "Name mixed into UUIDv5 ids (default: the mapping name)."},
        "games": CATALOGUE_SOURCE,
        "providers": CATALOGUE_SOURCE,
    },
}

LAUNCH = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "properties": {
        "steps": {"type": "array", "items": {"type": "string"}, "default": [],
                  "description": "Operations run in order; each one's response fields join the context."},
        "url": {"type": "string", "default": "{{ url }}", "description": "Template of the launch URL."},
        "token": {"type": "string", "description": "Template of the legacy token (default: a random one)."},
        "session_ttl": {"type": "number", "exclusiveMinimum": 0, "default": 86400},
        "check_currency": {"type": "boolean", "default": True},
    },
}

LEGACY_CODE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["code"],
    "properties": {"code": {"type": ["string", "integer"]}, "message": {"type": "string"}},
}

CALLBACK_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["hook"],
    "properties": {
        "path": {"type": "string", "pattern": "^/.*$", "description": "Default: /<endpoint name>."},
        "method": {"enum": ["GET", "POST"], "default": "POST"},
        "hook": {"enum": ["balance", "bet", "win", "refund"]},
        "type": {"type": "string", "description": "The hook's type (default: bet, win, bet)."},
        "fields": {"type": "object", "additionalProperties": FIELD,
                   "description": "Hook field -> how to read it from the legacy request."},
        "reply": {"description": "Success body (template tree), overriding callbacks.reply."},
        "succeed_on": {"type": "array", "items": {"type": "string"},
                       "description": "iGSP error codes answered as a success with the current balance."},
        "queued": {"type": "boolean", "default": False,
                   "description": "win/refund: when the platform fails retriably, also put the signed hook on "
                                  "the durable queue, so it arrives even if the legacy server stops retrying."},
    },
}

CALLBACKS = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _ANNOTATIONS,
    "required": ["token", "error_reply", "default_error", "retriable_error", "endpoints"],
    "properties": {
        "codec": ADAPTER_SPEC,
        "reply_codec": ADAPTER_SPEC,
        "verify": ADAPTER_SPEC,
        "token": {"type": "string", "description": "JMESPath to the launch token in a legacy request."},
        "player": {"type": "string", "description": "JMESPath to the player id (latest session) when no token."},
        "hook_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 3.0},
        "reply_status": {"type": "integer", "minimum": 200, "maximum": 599, "default": 200},
        "reply": {"description": "Default success body (template tree)."},
        "error_reply": {"description": "Error body (template tree) with legacy_code and legacy_message."},
        "errors": {"type": "object", "additionalProperties": LEGACY_CODE,
                   "description": "iGSP error code -> legacy {code, message}."},
        "default_error": LEGACY_CODE,
        "retriable_error": LEGACY_CODE,
        "endpoints": {"type": "object", "additionalProperties": CALLBACK_ENDPOINT, "minProperties": 1},
    },
}

MAPPING_SCHEMA["$defs"] = {"catalogue": CATALOGUE, "launch": LAUNCH, "callbacks": CALLBACKS}

#: Operations a platform-face mapping must define (``rollback`` is optional: it
#: defaults to ``refund`` for compensating an unknown bet outcome).
PLATFORM_OPERATIONS = ("balance", "bet", "win", "refund")


def schema_json() -> str:
    """The published form of MAPPING_SCHEMA (``spec/mapping.schema.json``)."""
    import json

    return json.dumps(MAPPING_SCHEMA, indent=2, ensure_ascii=False) + "\n"
