"""Envelope encryption of artifacts that leave a notebook.

Every artifact gets a fresh random 256-bit data key. The data key is wrapped
with the team's key-encryption key using AES key wrap (RFC 3394,
``cryptography``'s ``aes_key_wrap``), and the artifact is encrypted with
AES-256-GCM in chunks. On disk an envelope is::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (canonical JSON)
    | chunk 0 ciphertext + tag | chunk 1 ciphertext + tag | ... | final chunk + tag

Each chunk's nonce is an 8-byte random prefix followed by the 4-byte chunk
counter. Its associated data is SHA-256(magic, length, header) + the chunk index
+ a final-chunk flag, so a changed header, a dropped tail, reordered or swapped
chunks, or bytes appended after the final chunk all fail authentication.
The SHA-256 of the plaintext, computed while encrypting and again while
decrypting, ties the content to a signed manifest: even someone holding the
team key cannot put other content under it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lepton_lab.errors import ConfigError, IntegrityError
from lepton_lab.security.digest import BackgroundSha256, StreamDigest
from lepton_lab.security.keys import KeyRing, _b64, _unb64
from lepton_lab.security.signing import canonical_json

#: Plaintext bytes per encrypted chunk; memory use of a stream is a few of these.
CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024

MAGIC = b"LPTNENV1"
ENVELOPE_FORMAT = "lepton-envelope/1"
TAG_SIZE = 16
_NONCE_PREFIX_SIZE = 8
_MAX_HEADER_SIZE = 64 * 1024
_MAX_CHUNKS = 2**32  # the counter is 4 bytes of the 12-byte nonce


@dataclass(frozen=True)
class EnvelopeHeader:
    """What a reader needs to open an envelope: team, wrapped data key, nonce prefix."""

    team: str
    kek_id: str
    wrapped_key: str  # base64, AES key wrap (RFC 3394) of the data key
    nonce_prefix: str  # base64, 8 random bytes
    chunk_size: int
    cipher: str = "AES-256-GCM"
    key_wrap: str = "AES-KW"
    format: str = ENVELOPE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> EnvelopeHeader:
        """Parse an untrusted header; IntegrityError for anything unexpected."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            raise IntegrityError("the envelope header is malformed; the artifact was changed")
        header = cls(**raw)
        if (
            header.format != ENVELOPE_FORMAT
            or header.cipher != "AES-256-GCM"
            or header.key_wrap != "AES-KW"
            or not isinstance(header.chunk_size, int)
            or isinstance(header.chunk_size, bool)
            or not MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE
            or not all(
                isinstance(v, str)
                for v in (header.team, header.kek_id, header.wrapped_key, header.nonce_prefix)
            )
        ):
            raise IntegrityError("the envelope header is not one this version can open")
        return header

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _envelope_prefix(header_bytes: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes


class SealedWriter:
    """A write-only stream that encrypts everything written to it into ``dst``.

    Use it where a library wants a file to write into (``torch.save``), so
    the plaintext never touches disk. ``close()`` seals the final chunk and
    returns ``(header, digest)``; until then the envelope is incomplete.
    """

    def __init__(self, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE):
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        data_key = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = keyring.wrap(team, data_key)
        self._aead = AESGCM(data_key)
        del data_key
        self._prefix = secrets.token_bytes(_NONCE_PREFIX_SIZE)
        self.header = EnvelopeHeader(
            team=team,
            kek_id=kek_id,
            wrapped_key=_b64(wrapped),
            nonce_prefix=_b64(self._prefix),
            chunk_size=chunk_size,
        )
        self._dst = dst
        self._chunk_size = chunk_size
        self._index = 0
        self._pending: bytes | bytearray = b""
        self._closed = False
        prefix = _envelope_prefix(self.header.to_bytes())
        self._header_digest = hashlib.sha256(prefix).digest()
        self._plain = BackgroundSha256()
        self._stored_size = 0
        try:
            self._emit(prefix)
        except BaseException:
            self.abort()
            raise

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing to do: a chunk is written as soon as it is known not to be the last."""

    def write(self, data) -> int:
        """Encrypt ``data`` (any bytes-like object); returns the number of bytes taken."""
        if self._closed:
            raise ValueError("write to a closed SealedWriter")
        view = memoryview(data).cast("B")
        n, pos, size = len(view), 0, self._chunk_size
        borrowed = not isinstance(data, bytes)
        if self._pending and n:
            if len(self._pending) < size:
                if not isinstance(self._pending, bytearray):
                    self._pending = bytearray(self._pending)
                pos = min(size - len(self._pending), n)
                self._pending += view[:pos]
            if len(self._pending) == size and pos < n:
                # A new object replaces it, so the hashing thread may keep this one.
                self._seal(self._pending, final=False)
                self._pending = b""
        # A chunk is sealed only once a byte after it exists: the last one is final.
        while n - pos > size:
            self._seal(view[pos : pos + size], final=False)
            pos += size
        if pos < n:
            self._pending = data if pos == 0 and not borrowed else bytes(view[pos:])
        if borrowed:
            # The caller may reuse its buffer once write returns.
            self._plain.wait()
        return n

    def close(self) -> tuple[EnvelopeHeader, StreamDigest]:
        """Seal the final chunk; returns the header and the digests of the stream."""
        if self._closed:
            raise ValueError("SealedWriter is already closed")
        try:
            self._seal(self._pending, final=True)
            self._pending = b""
            digest = StreamDigest(
                size=self._plain.size,
                sha256=self._plain.hexdigest(),
                stored_size=self._stored_size,
            )
        finally:
            self.abort()
        return self.header, digest

    def abort(self) -> None:
        """Stop the hashing thread without sealing (after an error)."""
        self._closed = True
        self._plain.close()

    def _seal(self, chunk, *, final: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise ConfigError("artifact too large for this chunk size; raise chunk_size")
        self._plain.update(chunk)
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._index), chunk, _aad(self._header_digest, self._index, final)
        )
        self._index += 1
        self._emit(sealed)

    def _emit(self, data: bytes) -> None:
        self._stored_size += len(data)
        self._dst.write(data)


def seal_stream(
    src: BinaryIO, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE
) -> tuple[EnvelopeHeader, StreamDigest]:
    """Encrypt ``src`` into ``dst``; returns the header and the plaintext/stored digests."""
    writer = SealedWriter(dst, team, keyring, chunk_size=chunk_size)
    try:
        while data := src.read(chunk_size):
            writer.write(data)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def encrypt_stream(
    src: BinaryIO, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE
) -> EnvelopeHeader:
    """Encrypt ``src`` into ``dst`` for ``team`` in O(chunk_size) memory; returns the header."""
    return seal_stream(src, dst, team, keyring, chunk_size=chunk_size)[0]


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if data is None or len(data) == n or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_header(src: BinaryIO) -> EnvelopeHeader:
    """Read and parse the header at the start of an envelope; IntegrityError if malformed."""
    return _read_header(src)[0]


def _read_header(src: BinaryIO) -> tuple[EnvelopeHeader, bytes]:
    lead = _read_exact(src, len(MAGIC) + 4)
    if len(lead) != len(MAGIC) + 4 or lead[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a Lepton envelope, or its header was changed")
    (length,) = struct.unpack(">I", lead[len(MAGIC) :])
    if length > _MAX_HEADER_SIZE:
        raise IntegrityError("the envelope header length is implausible; the artifact was changed")
    header_bytes = _read_exact(src, length)
    if len(header_bytes) != length:
        raise IntegrityError("the envelope is truncated inside its header")
    try:
        raw = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(
            "the envelope header is not valid JSON; the artifact was changed"
        ) from None
    header = EnvelopeHeader.from_dict(raw)
    if header.to_bytes() != header_bytes:
        raise IntegrityError(
            "the envelope header is not in canonical form; the artifact was changed"
        )
    return header, lead + header_bytes


def _open_into(
    src: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None,
    dst: BinaryIO | _Discard | None = None,
    into: bytearray | None = None,
) -> StreamDigest:
    """Decrypt ``src`` chunk by chunk into the file ``dst`` or the buffer ``into``.

    Raises IntegrityError on the first bad chunk; whatever was written by then
    is unauthenticated and must be thrown away by the caller (the public
    functions below make sure it never reaches theirs).
    """
    header, prefix = _read_header(src)
    if header.team != team:
        raise IntegrityError(f"the artifact is sealed for another team, not {team}")
    if expected_header is not None and header != expected_header:
        raise IntegrityError("the envelope header does not match the signed manifest")
    data_key = keyring.unwrap(team, _unb64(header.wrapped_key, "wrapped key"), header.kek_id)
    aead = AESGCM(data_key)
    del data_key
    nonce_prefix = _unb64(header.nonce_prefix, "nonce prefix")
    if len(nonce_prefix) != _NONCE_PREFIX_SIZE:
        raise IntegrityError("the envelope nonce prefix is malformed")
    header_digest = hashlib.sha256(prefix).digest()
    block = header.chunk_size + TAG_SIZE
    out = memoryview(into) if into is not None else None
    offset = 0
    plain = BackgroundSha256()
    stored_size = len(prefix)
    try:
        index = 0
        current = _read_exact(src, block)
        while True:
            # Read one block ahead: a chunk is final exactly when nothing follows it.
            ahead = _read_exact(src, block) if len(current) == block else b""
            final = not ahead
            if len(current) < TAG_SIZE or index >= _MAX_CHUNKS:
                raise IntegrityError(f"the artifact is truncated at chunk {index}")
            stored_size += len(current)
            nonce, aad = _nonce(nonce_prefix, index), _aad(header_digest, index, final)
            chunk: bytes | memoryview
            try:
                if out is not None:
                    n = len(current) - TAG_SIZE
                    if offset + n > len(out):
                        raise IntegrityError("the artifact is longer than its signed size")
                    chunk = out[offset : offset + n]
                    aead.decrypt_into(nonce, current, aad, chunk)
                else:
                    chunk = aead.decrypt(nonce, current, aad)
                    assert dst is not None, "either dst or into is given"
                    dst.write(chunk)
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {index} of the artifact failed authentication: "
                    "it was changed, truncated, reordered or extended"
                ) from None
            offset += len(chunk)
            plain.update(chunk)
            if final:
                break
            current = ahead
            index += 1
        return StreamDigest(size=offset, sha256=plain.hexdigest(), stored_size=stored_size)
    finally:
        plain.close()


def _check(digest: StreamDigest, expected: StreamDigest | None) -> None:
    if expected is None:
        return
    if (
        digest.size != expected.size
        or digest.stored_size != expected.stored_size
        or digest.sha256 != expected.sha256
    ):
        raise IntegrityError(
            "the artifact does not match the sizes and SHA-256 digest it was signed with"
        )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Decrypt the envelope in ``src`` into ``dst``; returns the digests.

    The plaintext goes to an anonymous temporary file first and reaches
    ``dst`` only after the last tag verified (and ``expected`` matched, when
    given), so on IntegrityError ``dst`` has received nothing. Memory stays at
    a few chunks whatever the size.
    """
    # Spool beside the destination when it is a named file: same disk, same privacy.
    name = getattr(dst, "name", None)
    spool_dir = None
    if isinstance(name, (str, bytes)):
        spool_dir = os.path.dirname(os.fsdecode(name)) or None
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        digest = _open_into(src, keyring, team, expected_header=expected_header, dst=spool)
        _check(digest, expected)
        spool.seek(0)
        shutil.copyfileobj(spool, dst, 1 << 20)
    return digest


def decrypt_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Decrypt the envelope file ``src`` to the file ``dst`` (mode 0600).

    ``dst`` appears only once every tag verified and, when ``expected`` is
    given, both digests and sizes match it; otherwise IntegrityError and no
    file. Returns the digests.
    """
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as out, open(src, "rb") as inp:
            digest = _open_into(inp, keyring, team, expected_header=expected_header, dst=out)
        _check(digest, expected)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


class _Discard:
    def write(self, data) -> int:
        return len(data)


def verify_stream(
    src: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Authenticate a whole envelope and return its digests, keeping no plaintext."""
    digest = _open_into(src, keyring, team, expected_header=expected_header, dst=_Discard())
    _check(digest, expected)
    return digest


def decrypt_bytes(
    src: str | os.PathLike | BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> bytearray:
    """The whole plaintext of an envelope in memory, returned only once verified.

    For artifacts that end up in memory anyway (a model about to be loaded):
    no plaintext touches disk. With ``expected`` the buffer is allocated once
    at the signed size and the plaintext hash is skipped, because the signed
    ciphertext digest already pins every plaintext byte.
    """
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as handle:
            return decrypt_bytes(
                handle, keyring, team, expected_header=expected_header, expected=expected
            )
    if expected is None:
        spool = io.BytesIO()
        _open_into(src, keyring, team, expected_header=expected_header, dst=spool)
        return bytearray(spool.getbuffer())
    buffer = bytearray(expected.size)
    digest = _open_into(
        src, keyring, team, expected_header=expected_header, into=buffer
    )
    _check(digest, expected)
    return buffer


__all__ = [
    "CHUNK_SIZE",
    "ENVELOPE_FORMAT",
    "MAGIC",
    "TAG_SIZE",
    "EnvelopeHeader",
    "SealedWriter",
    "StreamDigest",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_stream",
    "read_header",
    "seal_stream",
    "verify_stream",
]
