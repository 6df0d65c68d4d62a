r"""Request and response validation from the project's own OpenAPI files in ``spec/``.

The spec is the single source of truth: the gateway compiles a JSON-Schema validator
for each component it needs once at start-up and validates with it; nothing restates
the protocol's field rules in code.

Speed without a second truth: each component is also compiled, ``$ref``s inlined, into
generated Python by ``fastjsonschema`` (a few microseconds instead of ~80). It only
answers "valid"; anything it refuses goes to the ``jsonschema`` validator, which names
the field and has the last word. Components using a keyword outside ``_FAST_KEYWORDS``
(whose meaning both libraries share) are checked by ``jsonschema`` alone.

**Patterns match the whole string.** JSON Schema's ``pattern`` is an unanchored
``re.search``, and even an anchored ``'^[A-Z]{3}$'`` accepts ``"JPY\n"`` that way (``$``
also matches before a final newline), which would then be priced with EUR's decimals.
Every ``pattern`` the gateway checks — in ``spec/`` and in its own config and mapping
schemas — is therefore applied as ``re.fullmatch``: the whole string, a trailing newline
included, must match (``FullMatchValidator``; the fast path compiles ``\A(?:…)\Z``). A
pattern meant as a prefix says so (``'^https?://.*$'``). Likewise no string ending in a
newline satisfies a ``format`` (``FORMAT_CHECKER``). ``patternProperties`` keeps JSON
Schema's meaning (it names keys, it checks no value).
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import IgspError
from gateway.resources import data_dir

HOOKS_SPEC = "igsp-platform-hooks.yaml"
PROVIDER_SPEC = "igsp-provider.yaml"

#: The request schema of each wallet hook: what the platform face checks coming in and
#: the provider face checks before sending one out.
HOOK_SCHEMAS = {"balance": "BalanceRequest", "bet": "BetRequest", "win": "WinRequest", "refund": "RefundRequest"}


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def full_match(pattern: str, text: str) -> bool:
    """Whether the whole of ``text`` matches ``pattern`` (``^``/``$`` in it are redundant then)."""
    return _compiled(pattern).fullmatch(text) is not None


def whole_string(pattern: str) -> str:
    """``pattern`` as a search that only a whole-string match satisfies (for ``re.search`` users)."""
    return rf"\A(?:{pattern})\Z"


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not full_match(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _whole_string_formats() -> jsonschema.FormatChecker:
    """jsonschema's 2020-12 format checks, none of which a string ending in a newline passes
    (``rfc3339-validator``'s date-time regex ends in ``$``)."""
    base = jsonschema.Draft202012Validator.FORMAT_CHECKER
    checker = jsonschema.FormatChecker(formats=())
    for name, (func, raises) in base.checkers.items():
        def strict(instance, func=func):
            return not (isinstance(instance, str) and instance.endswith("\n")) and func(instance)
        checker.checkers[name] = (strict, raises)
    return checker


#: JSON Schema 2020-12 with ``pattern`` as a whole-string match (see the module docstring).
FullMatchValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})
FORMAT_CHECKER = _whole_string_formats()


@cache
def load_spec(name: str) -> dict:
    return yaml.safe_load((data_dir("spec") / name).read_text(encoding="utf-8"))


class SpecValidators:
    """Compiled validators for the components of one spec file."""

    def __init__(self, name: str, spec_dir: Path | None = None):
        if spec_dir is not None:
            self.document = yaml.safe_load((spec_dir / name).read_text(encoding="utf-8"))
        else:
            self.document = load_spec(name)
        self.uri = f"urn:igsp:{name}"
        self.registry = Registry().with_resource(self.uri, Resource.from_contents(self.document, DRAFT202012))
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self._fast: dict[str, Any] = {}

    def validator(self, component: str) -> jsonschema.protocols.Validator:
        found = self._validators.get(component)
        if found is None:
            if component not in self.document.get("components", {}).get("schemas", {}):
                raise KeyError(f"{component} is not a schema in {self.uri}")
            found = FullMatchValidator(
                {"$ref": f"{self.uri}#/components/schemas/{component}"},
                registry=self.registry,
                format_checker=FORMAT_CHECKER,
            )
            self._validators[component] = found
            self._fast[component] = fast_validator(self.document, component)
        return found

    def check(self, component: str, instance: Any) -> None:
        """Raise ``invalid_request`` naming the first offending field."""
        fast = self._fast.get(component)
        if fast is not None:
            try:
                fast(instance)
                return
            except fastjsonschema.JsonSchemaValueException:
                pass  # jsonschema names the field, and decides
        error = jsonschema.exceptions.best_match(self.validator(component).iter_errors(instance))
        if error is not None:
            raise IgspError("invalid_request", describe(error))

    def errors(self, component: str, instance: Any) -> list[str]:
        return [describe(e) for e in self.validator(component).iter_errors(instance)]


@cache
def hook_validators() -> SpecValidators:
    """The wallet hooks' validators, compiled once per process and shared by both faces."""
    validators = SpecValidators(HOOKS_SPEC)
    for component in HOOK_SCHEMAS.values():
        validators.validator(component)
    return validators


@cache
def provider_validators() -> SpecValidators:
    """The provider API's validators (launch requests, catalogue pages), compiled once per process."""
    validators = SpecValidators(PROVIDER_SPEC)
    validators.validator("SessionRequest")
    return validators


#: Keywords whose meaning fastjsonschema (draft-07 code) and jsonschema (2020-12) share
#: exactly, plus annotations; ``enum``/``const`` only with string values (``1 == True``).
_FAST_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "patternProperties", "enum", "const",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "items", "minItems", "maxItems", "minProperties", "maxProperties", "allOf", "anyOf", "oneOf", "not", "format",
    "description", "examples", "example", "title", "default", "deprecated", "readOnly", "writeOnly",
    "discriminator", "externalDocs", "$comment",
})
_ANNOTATIONS = frozenset({"description", "examples", "example", "title", "default", "deprecated", "readOnly",
                          "writeOnly", "discriminator", "externalDocs", "$comment"})


class _NotFast(Exception):
    """This schema uses something the fast path does not promise to judge alike."""


def fast_validator(document: dict, component: str):
    """A fastjsonschema function for ``component`` with every local ``$ref`` inlined, or None."""
    formats: set[str] = set()

    def inline(node: Any, seen: tuple) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
                raise _NotFast(ref)  # remote or recursive: leave it to jsonschema
            target: Any = document
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            resolved = inline(target, seen + (ref,))
            rest = {k: v for k, v in node.items() if k != "$ref" and k not in _ANNOTATIONS}
            # 2020-12: keywords beside $ref apply too (draft-07 would ignore them).
            return {"allOf": [resolved, inline(rest, seen)]} if rest else resolved
        out = {}
        for key, value in node.items():
            if key not in _FAST_KEYWORDS and not key.startswith("x-"):
                raise _NotFast(key)
            if key in ("enum", "const") and not all(isinstance(v, str) or v is None
                                                    for v in (value if key == "enum" else [value])):
                raise _NotFast(key)
            if key == "items" and not isinstance(value, dict):
                raise _NotFast(key)  # the tuple form means different things in the two drafts
            if key in ("properties", "patternProperties"):
                out[key] = {name: inline(sub, seen) for name, sub in value.items()}
            elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
                out[key] = inline(value, seen)
            elif key in _ANNOTATIONS or key.startswith("x-"):
                continue
            elif key == "pattern":
                out[key] = whole_string(value)
            else:
                if key == "format":
                    formats.add(value)
                out[key] = value
        return out

    try:
        schema = inline({"$ref": f"#/components/schemas/{component}"}, ())
        checker = FORMAT_CHECKER
        # Formats are judged by the same checker jsonschema uses (absent ones pass, as there).
        return fastjsonschema.compile(schema, formats={f: (lambda v, f=f: checker.conforms(v, f)) for f in formats},
                                      use_default=False, detailed_exceptions=False)
    except (_NotFast, KeyError, TypeError, fastjsonschema.JsonSchemaDefinitionException):
        return None


def describe(error: jsonschema.ValidationError) -> str:
    """A short, client-safe sentence: ``amount: must be >= 0``."""
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        field = f"{path}.{missing}" if path else missing
        return f"{field}: is required"
    reasons = {
        "type": lambda: f"must be of type {error.validator_value if isinstance(error.validator_value, str) else ' or '.join(error.validator_value)}",
        "minimum": lambda: f"must be >= {error.validator_value}",
        "maximum": lambda: f"must be <= {error.validator_value}",
        "enum": lambda: f"must be one of {', '.join(map(str, error.validator_value))}",
        "const": lambda: f"must be {error.validator_value!r}",
        "pattern": lambda: f"must match {error.validator_value}",
        "minLength": lambda: f"must have at least {error.validator_value} characters",
        "maxLength": lambda: f"must have at most {error.validator_value} characters",
        "format": lambda: f"must be a valid {error.validator_value}",
    }
    reason = reasons.get(error.validator, lambda: "is invalid")()
    return f"{path or 'body'}: {reason}"
