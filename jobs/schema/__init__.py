"""The page schema: the shape a provider's answer must have before a job can succeed.

``page.schema.json`` is the contract. It is written in the subset of JSON Schema that
OpenAI strict structured outputs and Gemini's ``response_json_schema`` both accept
(type, properties, required, items, enum, anyOf, $defs/$ref, min/max items and lengths,
description; every object closed and every property required), so providers can send it
as their structured-output schema; ``model_schema`` adapts it where a provider accepts less.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError

SCHEMA_PATH = Path(__file__).with_name("page.schema.json")

PAGE_SCHEMA: dict = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
Draft202012Validator.check_schema(PAGE_SCHEMA)
# The validator keeps its own copy: PAGE_SCHEMA is handed to SDKs, which must not be able to change validation.
_VALIDATOR = Draft202012Validator(copy.deepcopy(PAGE_SCHEMA))

# The hot path: a compiled validator (several times faster than jsonschema on a full page) decides
# valid or not; only an invalid page pays for jsonschema's detailed errors. Our schema uses only
# keywords both implement alike (type, properties, required, additionalProperties, items, enum,
# anyOf, $ref, min/max items and lengths); tests/jobs/test_page_schema.py checks they agree.
_fast_check = fastjsonschema.compile({k: v for k, v in copy.deepcopy(PAGE_SCHEMA).items() if k != "$schema"})

MAX_ERRORS = 10
_MAX_SHOWN_CHARS = 40

# Block type -> its index in the sections anyOf, so a bad section is reported against the
# block it claims to be instead of as "not valid under any of the given schemas".
_BLOCK_BRANCHES: dict[str, int] = {
    PAGE_SCHEMA["$defs"][alt["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"][0]: index
    for index, alt in enumerate(PAGE_SCHEMA["properties"]["sections"]["items"]["anyOf"])
}
BLOCK_TYPES: tuple[str, ...] = tuple(_BLOCK_BRANCHES)

# Models wrap JSON in a markdown fence often enough to accept exactly that wrapping.
_FENCE = re.compile(r"\A```(?:json)?[ \t]*\r?\n?(?P<body>.*?)\r?\n?```\Z", re.DOTALL | re.IGNORECASE)


class PageInvalid(ValueError):
    """Model output that is not JSON or not a valid page; ``errors`` lists what is wrong."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)


def validate_page(page: object) -> list[str]:
    """Human-readable problems with ``page`` (at most ten, sorted by JSON path); empty when valid."""
    return _page_errors(page)[:MAX_ERRORS]


def parse_page(text: str) -> dict:
    """Parse model output into a page dict, or raise ``PageInvalid``."""
    if not isinstance(text, str):
        message = f"model output is not text: got {type(text).__name__}"
        raise PageInvalid(message, [message])
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body")
    try:
        page = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise PageInvalid("model output is not valid JSON: nested too deeply", ["nested too deeply"]) from None
    except ValueError as exc:
        raise PageInvalid(f"model output is not valid JSON: {exc}", [str(exc)]) from None
    try:
        errors = _page_errors(page)
    except RecursionError:
        errors = ["(root): nested too deeply"]
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PageInvalid(f"model output is not a valid page: {errors[0]}{more}", errors[:MAX_ERRORS])
    return page


def model_schema(*, string_lengths: bool = True, refs: bool = True) -> dict:
    """A fresh copy of the page schema to send to a provider as its structured-output schema.

    ``string_lengths=False`` drops minLength/maxLength (OpenAI strict mode rejects them);
    ``refs=False`` inlines every ``$ref`` and drops ``$defs`` (Gemini's OpenAPI-style
    ``response_schema`` has no references). ``$schema`` is always dropped. Whatever is
    dropped is still enforced, because every answer goes through ``parse_page``.
    """
    schema = copy.deepcopy(PAGE_SCHEMA)
    schema.pop("$schema", None)
    defs = schema.pop("$defs", {})

    def adapt(node: object) -> object:
        if isinstance(node, list):
            return [adapt(item) for item in node]
        if not isinstance(node, dict):
            return node
        if not refs and "$ref" in node:
            return adapt(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[1]]))
        out = {}
        for key, value in node.items():
            if not string_lengths and key in ("minLength", "maxLength"):
                continue
            # "properties" maps names to schemas: adapt the schemas, keep every name.
            out[key] = {k: adapt(v) for k, v in value.items()} if key == "properties" else adapt(value)
        return out

    result = adapt(schema)
    if refs:
        result["$defs"] = adapt(defs)
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _page_errors(page: object) -> list[str]:
    try:
        _fast_check(page)
        return []
    except fastjsonschema.JsonSchemaException:
        pass  # invalid: the full validator explains why, with every error and its path
    found: list[tuple[list, str]] = []
    for error in _VALIDATOR.iter_errors(page):
        found.extend(_flatten(error))
    found.sort(key=lambda item: (_path_key(item[0]), item[1]))
    return [f"{_path_text(path)}: {message}" for path, message in found]


def _flatten(error: ValidationError) -> Iterator[tuple[list, str]]:
    path = list(error.absolute_path)
    if error.validator != "anyOf" or not error.context:
        yield path, _describe(error)
        return
    section = error.instance
    if not isinstance(section, dict):
        yield path, f"expected object, got {_json_type(section)}"
    elif "type" not in section:
        yield path, "'type' is a required property"
    elif section["type"] not in _BLOCK_BRANCHES:
        yield path + ["type"], f"{_show(section['type'])} is not a block type; expected one of {', '.join(BLOCK_TYPES)}"
    else:
        branch = _BLOCK_BRANCHES[section["type"]]
        for sub in error.context:
            if sub.relative_schema_path and sub.relative_schema_path[0] == branch:
                yield from _flatten(sub)


def _describe(error: ValidationError) -> str:
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        return f"expected {value}, got {_json_type(instance)}"
    if kind == "maxLength":
        return f"{_show(instance)} is too long ({len(instance)} characters, at most {value})"
    if kind == "minLength":
        return f"{_show(instance)} is too short (at least {value} character{'' if value == 1 else 's'})"
    if kind == "maxItems":
        return f"too many items ({len(instance)}, at most {value})"
    if kind == "minItems":
        return f"too few items ({len(instance)}, at least {value})"
    if kind == "enum":
        return f"{_show(instance)} is not one of {', '.join(_show(v) for v in value)}"
    if kind == "additionalProperties" and isinstance(instance, dict):
        extra = [key for key in instance if key not in error.schema.get("properties", {})]
        shown = ", ".join(_show(key) for key in extra[:5]) + (", ..." if len(extra) > 5 else "")
        return f"unexpected propert{'y' if len(extra) == 1 else 'ies'} {shown}"
    message = error.message
    return message if len(message) <= 300 else message[:299] + "…"


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= _MAX_SHOWN_CHARS else value[:_MAX_SHOWN_CHARS] + "…")
    if isinstance(value, (dict, list)):
        return f"an {_json_type(value)}"
    text = json.dumps(value, default=repr)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _path_key(path: list) -> tuple:
    # Array indexes sort numerically (sections/2 before sections/10) and before property names.
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path)


def _path_text(path: list) -> str:
    return "/".join(str(part) for part in path) or "(root)"
