"""A request to start a cluster: its JSON Schema (served to the sidebar's form) and the check both doors go through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..cluster.profile_schema import SITE_KINDS, THREADS, WORKERS, whole
from ..schemas import MEMORY_PATTERN, object_schema, validate

#: Largest GPU count and memory a request may ask for.
MAX_GPUS = 64
MAX_MEMORY = 2**50


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


#: A profile by name (or inline) and what to change of it.
CREATE_REQUEST = object_schema({
    "team": {"type": "string", "x-reason": "wrong type: a team name, got {kind}"},
    "profile": {"type": ["string", "object", "null"], "x-reason": "a profile name or a profile, got {kind}"},
    "name": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
             "x-reason": "letters, digits, '_', '.', '-' (at most 64); got {value!r}"},
    "workers": {"type": ["object", "null"], "additionalProperties": False,
                "properties": {kind: WORKERS for kind in SITE_KINDS}},
    "gpus": {"anyOf": [{"type": "null"}, {"const": "auto"}, whole(0, MAX_GPUS)],
             "x-reason": f"a whole number from 0 to {MAX_GPUS}, or auto (every free GPU); got {{value!r}}"},
    "threads": _or_null(THREADS),
    "memory": {"type": ["string", "integer", "null"], "pattern": MEMORY_PATTERN, "minBytes": 2**20,
               "maxBytes": MAX_MEMORY, "x-reason": "a size such as 4GiB, from 1MiB to 1PiB; got {value!r}"},
}, required=("team",))


def check_create_request(request: Mapping[str, Any]) -> None:
    """Raise a one-line ConfigError ``field.path: reason`` for the first problem of ``request``.

    No source leads the line: the sidebar's form finds the field at fault from its first word.
    """
    validate(request, CREATE_REQUEST)
