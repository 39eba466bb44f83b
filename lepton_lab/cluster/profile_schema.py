"""The JSON Schemas of cluster shapes: a site, a profile, ``profiles.yaml``, with their bounds.

:mod:`lepton_lab.cluster.profiles` checks files and inline profiles against them, then what a
schema cannot say (GPUs on cloud sites only, the fields of one launch kind); the server hands
them to the sidebar's form, which draws its bounds from them.
"""

from __future__ import annotations

import re
from typing import Any

from ..schemas import MEMORY_PATTERN

SITE_KINDS = ("cloud", "edge")
#: How a site's workers start: processes on this machine, over SSH on its hosts, or as Kubernetes pods.
LAUNCHES = ("local", "ssh", "kubernetes")
SSH_FIELDS = ("hosts", "ssh_user", "ssh_key", "known_hosts", "python")
KUBERNETES_FIELDS = ("image", "namespace", "node_selector", "gpus_per_worker", "service_account", "tolerations")
#: Site names become Dask resource names and worker-name prefixes.
SITE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Resource names Lepton gives a meaning of its own; a site may not take them.
RESERVED_NAMES = ("GPU",)

MAX_WORKERS_PER_SITE = 256
MAX_THREADS = 256


def whole(lo: int, hi: int) -> dict[str, Any]:
    """A whole number from ``lo`` to ``hi``."""
    return {"type": "integer", "minimum": lo, "maximum": hi,
            "x-reason": f"must be a whole number from {lo} to {hi}, got {{value!r}}"}


MIN_MEMORY = 64 * 2**20
#: A worker's memory: text such as ``4GiB`` or a whole number of bytes, at least 64 MiB.
MEMORY: dict[str, Any] = {
    "type": ["string", "integer"], "pattern": MEMORY_PATTERN, "minBytes": MIN_MEMORY,
    "x-reason": {"type": "not a size such as 2GiB or 512MiB: {value!r}",
                 "pattern": "not a size such as 2GiB or 512MiB: {value!r}",
                 "minBytes": "at least 64MiB, got {value!r}"},
}
WORKERS = whole(0, MAX_WORKERS_PER_SITE)
THREADS = whole(1, MAX_THREADS)
GPUS: dict[str, Any] = {"anyOf": [{"const": "auto"}, whole(0, MAX_WORKERS_PER_SITE)],
                        "x-reason": f"must be a whole number from 0 to {MAX_WORKERS_PER_SITE} or auto, got {{value!r}}"}

#: Kubernetes names: a DNS label (namespaces), a DNS subdomain (service accounts), label keys and values.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS_SUBDOMAIN = rf"^(?=.{{1,253}}$){_SUBDOMAIN}$"
_LABEL_KEY = rf"^((?=[^/]{{1,253}}/){_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
_LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
MAX_GPUS_PER_WORKER = 16
_ONE_LINE = {"type": ["string", "null"], "pattern": r"^[^\n]*\S[^\n]*$",
             "x-reason": "must be non-empty text on one line, got {value!r}"}
_LABEL = "{value!r} is not a Kubernetes label name"
_TOLERATION = {
    "type": "object", "minProperties": 1, "additionalProperties": False,
    "properties": {
        "key": {"type": "string", "pattern": _LABEL_KEY, "x-reason": {"type": "must be str; got {value!r}",
                                                                       "pattern": _LABEL}},
        "operator": {"enum": ["Exists", "Equal"], "x-reason": "must be Exists or Equal; got {value!r}"},
        "value": {"type": "string", "x-reason": "must be str; got {value!r}"},
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                   "x-reason": "must be NoSchedule or PreferNoSchedule or NoExecute; got {value!r}"},
        "tolerationSeconds": {"type": "integer", "x-reason": "must be int; got {value!r}"},
    },
    "x-reason": "a mapping with key, operator, value, effect or tolerationSeconds",
    "x-unknown": "unknown field (known: key, operator, value, effect, tolerationSeconds)",
}

#: One site of a profile. What depends on other fields (GPUs on cloud sites only, fields of
#: one launch kind, hosts an ssh site needs) is checked after it, in code.
SITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": SITE_NAME.pattern, "not": {"enum": list(RESERVED_NAMES)},
                 "x-reason": "lower-case letters, digits and '-', starting with a letter; got {value!r}"},
        "kind": {"enum": list(SITE_KINDS)},
        "workers": WORKERS,
        "threads": THREADS,
        "memory": MEMORY,
        "gpus": GPUS,
        "cost_per_hour": {"type": "number", "minimum": 0, "x-reason": "a number >= 0, got {value!r}"},
        "launch": {"enum": list(LAUNCHES)},
        "hosts": {"type": "array", "minItems": 1,
                  "items": {"type": "string",
                            "x-reason": "a host name or IP, with an optional :port; got {value!r}"},
                  "x-reason": "launch: ssh needs a non-empty list of host or host:port"},
        **{key: _ONE_LINE for key in ("ssh_user", "ssh_key", "known_hosts", "python")},
        "image": {"type": "string", "pattern": r"^\S+$",
                  "x-reason": "launch: kubernetes needs a container image with lepton-lab installed, "
                              "e.g. registry.example.org/lepton-lab:0.1; got {value!r}"},
        "namespace": {"type": "string", "pattern": _DNS_LABEL,
                      "x-reason": "a Kubernetes namespace (lower-case letters, digits and '-', at most 63); "
                                  "got {value!r}"},
        "node_selector": {
            "type": "object",
            "propertyNames": {"type": "string", "pattern": _LABEL_KEY, "x-reason": _LABEL},
            "additionalProperties": {"type": "string", "pattern": _LABEL_VALUE,
                                     "x-reason": "a label value (text, at most 63 characters of letters, "
                                                 "digits, '-', '_', '.'); got {value!r}"},
            "x-reason": "a mapping of node label to value; got {value!r}",
        },
        "gpus_per_worker": whole(0, MAX_GPUS_PER_WORKER),
        "service_account": {"type": ["string", "null"], "pattern": _DNS_SUBDOMAIN,
                            "x-reason": "a Kubernetes service account name; got {value!r}"},
        "tolerations": {"type": "array", "items": _TOLERATION,
                        "x-reason": "a list of tolerations (key, operator, value, effect)"},
    },
    "x-reason": "a site must be a mapping with name and kind",
    "x-unknown": "unknown field (known: {known})",
    "x-missing": "missing; a site's name is lower-case letters, digits and '-', starting with a letter",
}

#: One profile: its sites and the settings of the whole cluster.
PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sites"],
    "properties": {
        "description": {"type": "string", "x-reason": "must be text"},
        "sites": {"type": "array", "minItems": 1, "items": SITE_SCHEMA, "x-reason": "a non-empty list of sites"},
        "idle_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1e9,
                         "x-reason": "minutes, a number > 0 (or leave it out); got {value!r}"},
        "checkpoints": {"type": ["string", "null"], "pattern": r"^([/~]|.*://)",
                        "x-reason": "an absolute path or an fsspec URL such as file:///shared/ckpt "
                                    "or s3://bucket/ckpt; got {value!r}"},
    },
    "x-reason": "a profile must be a mapping with 'sites'",
    "x-unknown": "unknown field (known: {known})",
    "x-missing": "a non-empty list of sites",
}

#: ``$LEPTON_HOME/profiles.yaml``.
PROFILES_FILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Lepton Lab profiles file",
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "profiles": {
            "type": ["object", "null"],
            "propertyNames": {"type": "string", "pattern": PROFILE_NAME.pattern, "x-at-key": True,
                              "x-reason": "bad profile name {value!r}"},
            "additionalProperties": PROFILE_SCHEMA,
            "x-reason": "must map profile names to profiles",
        },
    },
    "x-reason": "top level must be a mapping with one key, 'profiles'",
    "x-unknown": "unknown key {key!r}; the top level has one key, 'profiles'",
}


__all__ = ["GPUS", "KUBERNETES_FIELDS", "LAUNCHES", "MAX_THREADS", "MAX_WORKERS_PER_SITE", "MEMORY", "MIN_MEMORY",
           "PROFILES_FILE_SCHEMA", "PROFILE_NAME", "PROFILE_SCHEMA", "RESERVED_NAMES", "SITE_KINDS", "SITE_NAME",
           "SITE_SCHEMA", "SSH_FIELDS", "THREADS", "WORKERS", "whole"]
