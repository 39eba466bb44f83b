"""Envelope encryption and signatures for artifacts that leave a notebook, in one place.

The work is done by :mod:`lepton_lab.security.keys` (team and user keys),
:mod:`lepton_lab.security.signing` (canonical JSON, manifest signatures, the
registry root key) and :mod:`lepton_lab.security.envelope` (the chunked AES-GCM
envelope); this module gathers what the registry and checkpoints use.
"""

from __future__ import annotations

from lepton_lab.security.envelope import (
    CHUNK_SIZE,
    MAGIC,
    TAG_SIZE,
    EnvelopeHeader,
    SealedWriter,
    StreamDigest,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_stream,
    read_header,
    seal_stream,
    verify_stream,
)
from lepton_lab.security.keys import KeyRing, PublicKeyFile, PublicKeyRecord
from lepton_lab.security.signing import canonical_json, sign_manifest, verify_manifest

__all__ = [
    "CHUNK_SIZE",
    "MAGIC",
    "TAG_SIZE",
    "EnvelopeHeader",
    "KeyRing",
    "PublicKeyFile",
    "PublicKeyRecord",
    "SealedWriter",
    "StreamDigest",
    "canonical_json",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_stream",
    "read_header",
    "seal_stream",
    "sign_manifest",
    "verify_manifest",
    "verify_stream",
]
