"""JSON Schemas checked with ``jsonschema`` (Draft 2020-12), each problem told as one line.

A schema may carry, beside the standard keywords, the words its problems are told in:

``x-reason``
    a template, or ``{keyword: template}``, for a failure of this subschema's own keywords
    (``type``, ``minimum``, ``enum``, ``pattern``, ``uniqueItems`` ...);
``x-unknown``
    the template for a key ``additionalProperties: false`` refuses;
``x-missing``
    ``{key: template}`` (or one template) for a ``required`` key that is absent;
``x-at-key``
    in a ``propertyNames`` subschema: the field path names the key at fault.

Templates are ``str.format`` text over ``value`` (the instance at fault), ``kind`` ("a string",
"a list", ...), ``expected`` (the kind the schema wants), ``choices`` (an enum), ``key`` (the key
refused or missing), ``known`` (the keys an object takes) and ``close`` ("; did you mean 'x'?" or
""). When a template names ``{key}`` the field path stops at the object; otherwise it names the key.

Two keywords of the project's own: ``minBytes`` and ``maxBytes`` bound a size given as text
(``4GiB``, ``512MiB``) or a whole number of bytes.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from jsonschema import ValidationError

#: Sizes ``dask.utils.parse_bytes`` reads: a number and an optional unit (k, M, GiB, ...).
MEMORY_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*([kKmMgGtTpP][iI]?)?[bB]?\s*$"

_FLOAT_MAX = int(sys.float_info.max)
_KINDS = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
_EXPECTED = {"object": "a mapping (key: value)", "array": "a list", "string": "a string", "integer": "a whole number",
             "number": "a number", "boolean": "true or false", "null": "null"}


def kind(value: Any) -> str:
    """What a value is, in words: "a mapping", "a list", "a string", "a number", "nothing"."""
    if isinstance(value, float) and not math.isfinite(value) or type(value) is int and abs(value) > _FLOAT_MAX:
        return "a number out of range"
    return _KINDS.get(type(value), "nothing" if value is None else f"a {type(value).__name__}")


def suggest(name: str, known: Iterable[str], label: str = "known") -> str:
    """``"; did you mean 'x'? (known: a, b)"``: the closest known name, then all of them."""
    known = sorted(known)
    return _close(name, known) + f" ({label}: {', '.join(known) or 'none'})"


def _close(name: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_size(value: Any) -> int | None:
    """Bytes in ``value`` (``"4GiB"``, ``"512 MB"`` or a whole number); None when it is no size."""
    from dask.utils import parse_bytes

    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    try:
        return parse_bytes(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _bytes_bound(lower: bool):
    def check(validator: Any, bound: int, instance: Any, schema: Mapping[str, Any]):
        from jsonschema import ValidationError

        if not (validator.is_type(instance, "string") or validator.is_type(instance, "integer")):
            return
        size = parse_size(instance)
        if size is None:
            yield ValidationError(f"{instance!r} is not a size")
        elif (size < bound) if lower else (size > bound):
            yield ValidationError(f"{instance!r} is {'under' if lower else 'over'} {bound} bytes")

    return check


def _whole(checker: Any, value: Any) -> bool:
    # 2.0 is a float the code downstream would carry as one: whole numbers are ints.
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(checker: Any, value: Any) -> bool:
    # YAML's .inf and .nan, and ints no float holds, are numbers to Python, never a limit anyone means.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) and math.isfinite(value) or isinstance(value, int) and abs(value) <= _FLOAT_MAX


@functools.cache
def _validator() -> Any:
    """Draft 2020-12 with byte-size bounds and Python's idea of whole and finite numbers.

    Built on first use: importing ``jsonschema`` loads its format checkers (seconds on a
    busy machine), which processes that never check a document — workers, most kernels —
    should not pay.
    """
    from jsonschema import Draft202012Validator, validators

    return validators.extend(
        Draft202012Validator,
        validators={"minBytes": _bytes_bound(True), "maxBytes": _bytes_bound(False)},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _whole, "number": _finite}),
    )


def problem(instance: Any, schema: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first problem of ``instance`` against ``schema``: (dotted field path, reason), or None."""
    from jsonschema.exceptions import best_match

    error = next(_validator()(schema).iter_errors(instance), None)
    if error is None:
        return None
    while error.context and _template(error) is None:
        error = best_match(error.context)
    return _describe(error)


def validate(instance: Any, schema: Mapping[str, Any], source: str = "") -> None:
    """Raise a one-line ConfigError ``source: field.path: reason`` for the first problem, if any."""
    found = problem(instance, schema)
    if found is not None:
        path, reason = found
        raise ConfigError(": ".join(part for part in (source, path, reason) if part))


def object_schema(properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of a request: these fields and no other, the ``required`` ones present."""
    return {"type": "object", "properties": dict(properties), "additionalProperties": False,
            "required": list(required), "x-unknown": "unknown field {key!r} (fields: {known})",
            "x-missing": "missing field {key!r}"}


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.SchemaError`` unless ``schema`` is a valid Draft 2020-12 schema."""
    _validator().check_schema(schema)


def field_path(parts: Iterable[Any]) -> str:
    """``members.alice.medical``, ``sites[0].workers``: keys joined by dots, list positions in brackets."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _template(error: ValidationError) -> str | None:
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    reason = schema.get("x-reason")
    if isinstance(reason, Mapping):
        return reason.get(error.validator)
    return reason


def _describe(error: ValidationError) -> tuple[str, str]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    value = error.instance
    words: dict[str, Any] = {"key": "", "known": "", "close": ""}
    template = _template(error)
    if error.validator == "additionalProperties" and isinstance(value, Mapping):
        known = sorted(str(k) for k in schema.get("properties", {}))
        key = next(k for k in value if k not in schema.get("properties", {}))
        words.update(key=key, known=", ".join(known) or "none", close=_close(key, known))
        template = schema.get("x-unknown", "unknown key {key!r}{close} (keys: {known})")
        value = value[key]
    elif error.validator == "required" and isinstance(value, Mapping):
        key = next(k for k in error.validator_value if k not in value)
        missing = schema.get("x-missing", "missing")
        words["key"] = key
        template = missing.get(key, "missing") if isinstance(missing, Mapping) else missing
        value = None
    elif error.validator == "uniqueItems" and isinstance(value, list):
        position = next(i for i, item in enumerate(value) if item in value[:i])
        path.append(position)
        value = value[position]
        template = template or "{value!r} is listed twice"
    elif schema.get("x-at-key"):
        path.append(value)
    if template is None:
        template = _default(error)
    elif error.validator in ("additionalProperties", "required") and "{key" not in template:
        path.append(words["key"])
    if error.validator == "enum":
        words["close"] = _close(value, [str(c) for c in error.validator_value])
    types = schema.get("type", ())
    types = [types] if isinstance(types, str) else [t for t in types if t != "null"] or list(types)
    expected = " or ".join(_EXPECTED.get(t, t) for t in types)
    choices = ", ".join(str(c) for c in schema.get("enum", ()))
    text = template.format(value=value, kind=kind(value), expected=expected, choices=choices, **words)
    return field_path(path), text


def _default(error: ValidationError) -> str:
    """The reason for a keyword no ``x-reason`` words: plain, with the value at fault."""
    value, bound = error.instance, error.validator_value
    defaults = {
        "type": "must be {expected}, got {kind}",
        "enum": "one of {choices}; got {value!r}",
        "const": f"must be {bound!r}, got {{value!r}}",
        "minimum": f"must be >= {bound}, got {{value!r}}",
        "maximum": f"must be <= {bound}, got {{value!r}}",
        "exclusiveMinimum": f"must be > {bound}, got {{value!r}}",
        "exclusiveMaximum": f"must be < {bound}, got {{value!r}}",
        "minItems": f"needs at least {bound} item{'s' if bound != 1 else ''}",
        "maxItems": f"takes at most {bound} items",
        "minLength": "must not be empty" if bound == 1 else f"at least {bound} characters",
        "maxLength": f"at most {bound} characters, got {len(value) if isinstance(value, str) else value!r}",
        "minProperties": "must not be empty",
        "pattern": "{value!r} is not of the right form",
        "minBytes": f"at least {bound} bytes, got {{value!r}}",
        "maxBytes": f"at most {bound} bytes, got {{value!r}}",
        "not": "{value!r} is not allowed here",
    }
    return defaults.get(str(error.validator), " ".join(error.message.split()).replace("{", "{{").replace("}", "}}"))


__all__ = ["MEMORY_PATTERN", "check_schema", "field_path", "kind", "object_schema", "parse_size", "problem",
           "suggest", "validate"]
