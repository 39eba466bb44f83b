"""What the registry records about a model version, and the names it accepts.

A ``Manifest`` is signed as canonical JSON (sorted keys, no spaces, UTF-8), so
every field here is plain JSON: strings, numbers, lists and dicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lepton_lab.errors import ConfigError
from lepton_lab.security.vault import EnvelopeHeader, StreamDigest, canonical_json

MANIFEST_FORMAT = "lepton-manifest/1"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+/-]{0,63}$")


def check_name(value: Any, what: str = "model name") -> str:
    """``value`` if it is a valid model or team name; ConfigError otherwise.

    Names become directory names, so anything but ``[a-z0-9][a-z0-9_.-]{0,63}``
    (no slashes, no leading dot, no ``..``) is refused.
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_alias(value: Any) -> str:
    """``value`` if it is a valid alias (it starts with a letter, so never reads as a version)."""
    if not isinstance(value, str) or not ALIAS_RE.fullmatch(value):
        raise ConfigError(
            f"invalid alias {value!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    return value


def check_tag(value: Any) -> str:
    """``value`` if it is a valid tag (1-64 visible characters, no spaces)."""
    if not isinstance(value, str) or not TAG_RE.fullmatch(value):
        raise ConfigError(
            f"invalid tag {value!r}: use 1-64 letters, digits or '_.:=+/-', no spaces"
        )
    return value


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``"fraud"``, ``"fraud@3"`` or ``"fraud@production"`` into (name, version, alias)."""
    if not isinstance(ref, str):
        raise ConfigError(f"a model reference is a string like 'fraud@3', not {ref!r}")
    name, at, rest = ref.partition("@")
    check_name(name)
    if not at:
        return name, None, None
    if rest.isdigit() and rest.isascii():
        version = int(rest)
        if version < 1:
            raise ConfigError(f"invalid version in {ref!r}: versions start at 1")
        return name, version, None
    return name, None, check_alias(rest)


def to_plain_json(value: Any, what: str) -> Any:
    """``value`` as plain JSON (numpy scalars become numbers); ConfigError if it cannot be."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} is {value}; only finite numbers can be recorded")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_plain_json(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain_json(v, f"{what}[{k!r}]") for k, v in value.items()}
    raise ConfigError(f"{what} is a {type(value).__name__}; use numbers, strings, lists or dicts")


@dataclass
class InputSchema:
    """Column names, dtypes and the shape (``None`` for the batch axis) a model expects."""

    names: list[str]
    dtypes: list[str]
    shape: list[int | None]

    @classmethod
    def from_example(cls, x: Any) -> InputSchema:
        """Infer the schema from an example input: a DataFrame, an array or a tensor."""
        columns = getattr(x, "columns", None)
        if columns is not None:
            names = [str(c) for c in columns]
            dtypes = [str(t) for t in x.dtypes]
            return cls(names=names, dtypes=dtypes, shape=[None, len(names)])
        shape = [int(n) for n in getattr(x, "shape", ())]
        if not shape:
            raise ConfigError("cannot infer an input schema from a scalar; pass an array")
        width = shape[1] if len(shape) > 1 else 1
        dtype = str(getattr(x, "dtype", "unknown")).replace("torch.", "")
        return cls(
            names=[f"x{i}" for i in range(width)], dtypes=[dtype] * width, shape=[None, *shape[1:]]
        )

    @classmethod
    def coerce(cls, value: Any) -> InputSchema | None:
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            try:
                return cls(
                    names=[str(n) for n in value["names"]],
                    dtypes=[str(d) for d in value["dtypes"]],
                    shape=[None if s is None else int(s) for s in value["shape"]],
                )
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    "input_schema needs 'names', 'dtypes' and 'shape' lists"
                ) from None
        return cls.from_example(value)


@dataclass
class Lineage:
    """Where a version came from: data, notebook cell, cluster, who and when, and its parent."""

    data_fingerprint: str | None = None
    notebook: str | None = None
    cell_hash: str | None = None
    cluster: str | None = None
    user: str = ""
    created: str = ""
    parent_version: int | None = None
    #: Anything else worth knowing, never data: e.g. the sites and rounds of a federated run.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Any) -> Lineage:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return dataclasses.replace(value)
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ConfigError(f"unknown lineage field(s): {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ConfigError("lineage must be a Lineage or a dict")


@dataclass
class Quantization:
    """Dynamic quantization to re-apply on the rebuilt float module before loading weights."""

    method: str  # "dynamic"
    dtype: str  # "qint8" or "float16"
    modules: list[str]  # qualified names of the quantized submodules
    engine: str = ""


@dataclass
class Construction:
    """How to rebuild the Python object around the weights: ``module:qualname`` + kwargs."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    quantization: Quantization | None = None


@dataclass
class ArtifactInfo:
    """The encrypted artifact: its plaintext size and SHA-256, its size as stored, its envelope."""

    size: int
    sha256: str
    ciphertext_size: int
    envelope: EnvelopeHeader
    filename: str = "artifact.enc"

    def digest(self) -> StreamDigest:
        """The digests ``decrypt_*`` must reproduce."""
        return StreamDigest(
            size=self.size,
            sha256=self.sha256,
            stored_size=self.ciphertext_size,
        )


@dataclass
class Manifest:
    """Everything recorded about one model version; signed by ``signer``."""

    name: str
    team: str
    version: int
    framework: str
    framework_version: str
    format: str
    artifact: ArtifactInfo
    signer: str
    lineage: Lineage = field(default_factory=Lineage)
    input_schema: InputSchema | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None
    construction: Construction | None = None
    description: str = ""
    tags: list[str] = field(default_factory=list)
    schema: str = MANIFEST_FORMAT

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def quantized(self) -> bool:
        return self.construction is not None and self.construction.quantization is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON text; its UTF-8 bytes are what gets signed and stored."""
        return self.to_bytes().decode("utf-8")

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse manifest JSON; ConfigError naming the problem if it is not one."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError("manifest is not valid JSON") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise ConfigError("manifest must be a JSON object")
        if raw.get("schema") != MANIFEST_FORMAT:
            raise ConfigError(f"manifest format {raw.get('schema')!r} is not {MANIFEST_FORMAT}")
        try:
            data = dict(raw)
            art = dict(data["artifact"])
            # Older manifests also carry the ciphertext's SHA-256; the plaintext digest
            # and the GCM tags already cover every byte, so it is not checked again.
            art.pop("ciphertext_sha256", None)
            art["envelope"] = EnvelopeHeader(**art["envelope"])
            data["artifact"] = ArtifactInfo(**art)
            data["lineage"] = Lineage(**data.get("lineage") or {})
            if data.get("input_schema") is not None:
                data["input_schema"] = InputSchema(**data["input_schema"])
            if data.get("construction") is not None:
                cons = dict(data["construction"])
                if cons.get("quantization") is not None:
                    cons["quantization"] = Quantization(**cons["quantization"])
                data["construction"] = Construction(**cons)
            manifest = cls(**data)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"manifest is missing or has unexpected fields: {err}") from None
        if not isinstance(manifest.version, int) or manifest.version < 1:
            raise ConfigError("manifest version must be a positive integer")
        return manifest


__all__ = [
    "ArtifactInfo",
    "Construction",
    "InputSchema",
    "Lineage",
    "Manifest",
    "Quantization",
    "check_alias",
    "check_name",
    "check_tag",
    "parse_ref",
    "to_plain_json",
]
