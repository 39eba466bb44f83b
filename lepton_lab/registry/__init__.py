"""The model registry: versioned, team-scoped, encrypted and signed model storage.

``Registry(root, keyring).publish(model, name=..., team=..., user=...)`` stores a
version; ``load("fraud@production", team=...)`` gets it back verified.
"""

from lepton_lab.registry.builders import allow_builder
from lepton_lab.registry.manifest import (
    ArtifactInfo,
    Construction,
    InputSchema,
    Lineage,
    Manifest,
    Quantization,
    parse_ref,
)
from lepton_lab.registry.serialize import records_init_kwargs
from lepton_lab.registry.store import (
    LoadedModel,
    ModelIndex,
    ModelSummary,
    Registry,
    VersionEntry,
)

__all__ = [
    "ArtifactInfo",
    "Construction",
    "InputSchema",
    "Lineage",
    "LoadedModel",
    "Manifest",
    "ModelIndex",
    "ModelSummary",
    "Quantization",
    "Registry",
    "VersionEntry",
    "allow_builder",
    "parse_ref",
    "records_init_kwargs",
]
