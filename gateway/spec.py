"""Request and response validation from the project's own OpenAPI files in ``spec/``.

The spec is the single source of truth: the gateway compiles a JSON-Schema validator
for each component it needs once at start-up and validates with it; nothing restates
the protocol's field rules in code.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import IgspError
from gateway.resources import data_dir

HOOKS_SPEC = "igsp-platform-hooks.yaml"
PROVIDER_SPEC = "igsp-provider.yaml"


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
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def validator(self, component: str) -> jsonschema.Draft202012Validator:
        found = self._validators.get(component)
        if found is None:
            if component not in self.document.get("components", {}).get("schemas", {}):
                raise KeyError(f"{component} is not a schema in {self.uri}")
            found = jsonschema.Draft202012Validator(
                {"$ref": f"{self.uri}#/components/schemas/{component}"},
                registry=self.registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
            self._validators[component] = found
        return found

    def check(self, component: str, instance: Any) -> None:
        """Raise ``invalid_request`` naming the first offending field."""
        error = jsonschema.exceptions.best_match(self.validator(component).iter_errors(instance))
        if error is not None:
            raise IgspError("invalid_request", describe(error))

    def errors(self, component: str, instance: Any) -> list[str]:
        return [describe(e) for e in self.validator(component).iter_errors(instance)]


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
