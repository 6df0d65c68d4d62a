"""YAML loading that remembers where every value came from.

Config and mapping errors must name file, line and field path, so the loader keeps the
line of each mapping key and list item (as Home Assistant's loader does), and ``${VAR}``
references are resolved after loading so a missing variable is reported where it is used.

    data = load_yaml("mappings/acme.yaml")       # LineDict / LineList / scalars
    line_of(data, ("operations", "bet", "path"))  # -> 14
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gateway.errors import ConfigError, Problem
from gateway.spec import FullMatchValidator

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class LineDict(dict):
    """A dict that knows the line of itself (``line``) and of each key (``lines``)."""

    line: int = 0
    lines: dict


class LineList(list):
    line: int = 0
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_yaml(text: str, file: str) -> Any:
    """Parse YAML text; syntax errors become a ConfigError naming file and line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([Problem(file, line, "", f"YAML syntax error: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, None, "", f"YAML error: {exc}")]) from None


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read file: {exc.strerror}")]) from None
    return parse_yaml(text, str(path))


def line_of(data: Any, path: Iterable) -> int | None:
    """Best line number for ``path`` inside loaded ``data`` (deepest known ancestor)."""
    line = getattr(data, "line", None)
    node = data
    for part in path:
        if isinstance(node, LineDict) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lines[part]
            node = node[part]
        else:
            break
    return line


def dotted(path: Iterable) -> str:
    """``("operations", "bet", 0)`` -> ``operations.bet[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def interpolate_env(data: Any, file: str, env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string, reporting each missing one."""
    env = os.environ if env is None else env
    problems: list[Problem] = []

    def walk(node: Any, path: tuple) -> Any:
        if isinstance(node, LineDict):
            for key in list(node):
                node[key] = walk(node[key], path + (key,))
            return node
        if isinstance(node, LineList):
            for index, item in enumerate(node):
                node[index] = walk(item, path + (index,))
            return node
        if isinstance(node, str) and "${" in node:

            def repl(match: re.Match) -> str:
                name, default = match.group(1), match.group(2)
                if name in env:
                    return env[name]
                if default is not None:
                    return default
                problems.append(
                    Problem(file, line_of(data, path), dotted(path), f"environment variable {name} is not set",
                            hint=f"export {name}=… or write ${{{name}:-default}}")
                )
                return ""

            return _ENV_REF.sub(repl, node)
        return node

    walk(data, ())
    if problems:
        raise ConfigError(problems)
    return data


def schema_problems(data: Any, schema: dict, file: str, prefix: tuple = ()) -> list[Problem]:
    """Every JSON-Schema violation of ``data`` as a Problem with file, line and path."""
    validator = FullMatchValidator(schema)  # a pattern matches the whole string (gateway/spec.py)
    problems: list[Problem] = []

    def emit(error: jsonschema.ValidationError) -> None:
        where = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            # Point at each unknown key itself: that is the line the author must fix.
            allowed = sorted(error.schema.get("properties", {}))
            for key in error.instance:
                if key not in allowed and not str(key).startswith("x-"):
                    problems.append(Problem(file, line_of(data, where + (key,)), dotted(prefix + where + (key,)),
                                            f"unknown key {key!r}; allowed keys: {', '.join(allowed)}"))
            return
        if error.validator in ("oneOf", "anyOf") and error.context:
            # Explain the alternative whose type fits (a string that is not a known
            # code, an object with a bad key) rather than "not valid under any".
            branches: dict = {}
            for sub in error.context:
                branches.setdefault(sub.schema_path[0], []).append(sub)
            fitting = [subs for subs in branches.values()
                       if not any(s.validator == "type" and not s.path for s in subs)]
            if len(fitting) == 1:
                for sub in fitting[0]:
                    emit(sub)
                return
            wanted = [b.get("type") for b in error.validator_value if isinstance(b, dict) and "type" in b]
            if wanted:
                problems.append(Problem(file, line_of(data, where), dotted(prefix + where),
                                        f"got {_shown(error.instance)}, want {' or '.join(map(str, wanted))}"))
                return
        problems.append(Problem(file, line_of(data, where), dotted(prefix + where), _describe(error)))

    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        emit(error)
    return problems


def env_and_schema_problems(data: Any, schema: dict, file: str, env: Mapping[str, str] | None = None,
                            prepare: Callable[[Any], None] | None = None) -> list[Problem]:
    """Resolve ``${VAR}`` (then ``prepare`` the data) and check the schema, collecting both
    kinds of problem at once.

    A missing variable is reported once, where it is used, not again as the empty
    value it leaves behind.
    """
    try:
        interpolate_env(data, file, env)
        problems: list[Problem] = []
    except ConfigError as exc:
        problems = list(exc.problems)
    if prepare is not None:
        prepare(data)
    missing = {p.path for p in problems}
    return problems + [p for p in schema_problems(data, schema, file) if p.path not in missing]


def _shown(got: Any) -> str:
    return repr(got) if not isinstance(got, (dict, list)) else ("a mapping" if isinstance(got, dict) else "a list")


def _describe(error: jsonschema.ValidationError) -> str:
    got = error.instance
    shown = _shown(got)
    if error.validator == "required":
        return error.message
    if error.validator in ("minLength", "maxLength") and isinstance(got, str):
        # Without the value: a too-short secret must not be printed.
        bound = "at least" if error.validator == "minLength" else "at most"
        return f"got {len(got)} characters, want {bound} {error.validator_value}"
    if error.validator == "enum":
        return f"got {shown}, want one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        want = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        return f"got {shown}, want {want}"
    return f"got {shown}: {error.message}"
