"""JSON Schema of the mapping file format, version 1 (published as spec/mapping.schema.json).

Keys are closed (a typo is an error naming the allowed keys); ``x-…`` keys are free
annotations. The loader (gateway/mapping.py) checks templates, JMESPath and adapters
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
        "success_codes": {"type": "array", "items": {"type": ["string", "integer"]},
                          "description": "Legacy codes that also mean success for this operation."},
        "errors": {"type": "object", "additionalProperties": ERROR_RULE,
                   "description": "Legacy code -> iGSP error code (or {error, message, status})."},
        "default_error": ERROR_RULE,
    },
}

OPERATION = {
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
        "timeout": {"type": "number", "exclusiveMinimum": 0},
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
                "base_url": {"type": "string", "pattern": "^https?://"},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
                "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
                "max_connections": {"type": "integer", "minimum": 1, "default": 100},
                "tls_verify": {"type": "boolean", "default": True},
                "idempotent": {"type": "boolean", "default": False,
                               "description": "The legacy API dedupes by transaction id (redelivery is safe)."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
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
            },
        },
        "secrets": {"type": "object", "additionalProperties": {"type": "string"}},
        "result": RESULT,
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
        "catalogue": {"type": "object", "description": "Provider face: how to read the legacy catalogue."},
        "launch": {"type": "object", "description": "Provider face: how to build the launch URL."},
        "callbacks": {"type": "object", "description": "Provider face: inbound legacy wallet callbacks."},
    },
}

#: Operations a platform-face mapping must define (``rollback`` is optional: it
#: defaults to ``refund`` for compensating an unknown bet outcome).
PLATFORM_OPERATIONS = ("balance", "bet", "win", "refund")
