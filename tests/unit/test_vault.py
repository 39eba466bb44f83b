"""Envelope encryption, key ring and manifest signatures, with real files and real crypto."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import stat
import struct
import threading
import tracemalloc

import pytest

from lepton_lab.errors import ConfigError, IntegrityError
from lepton_lab.security.vault import (
    MAGIC,
    TAG_SIZE,
    KeyRing,
    SealedWriter,
    canonical_json,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_stream,
    read_header,
    seal_stream,
    sign_manifest,
    verify_manifest,
    verify_stream,
)

SMALL = 64  # chunk size that makes a few hundred bytes span several chunks


@pytest.fixture
def keyring(tmp_path):
    return KeyRing(tmp_path / "keys")


def seal(data: bytes, keyring: KeyRing, team: str = "finance", chunk_size: int = SMALL) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, team, keyring, chunk_size=chunk_size)
    return out.getvalue()


def unseal(blob: bytes, keyring: KeyRing, team: str = "finance") -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, keyring, team)
    return out.getvalue()


def layout(blob: bytes, chunk_size: int = SMALL) -> tuple[int, list[tuple[int, int]]]:
    """Offset where chunks start, and (start, end) of each sealed chunk."""
    (length,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4 + length
    block = chunk_size + TAG_SIZE
    spans = [(i, min(i + block, len(blob))) for i in range(start, len(blob), block)]
    return start, spans


# ------------------------------------------------------------------ canonical JSON


def test_canonical_json_is_sorted_compact_utf8():
    expected = '{"a":[1,2],"b":1,"é":"ü"}'.encode()
    assert canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_canonical_json_refuses_inexact_values(bad):
    with pytest.raises(ConfigError):
        canonical_json({"x": bad})


# ------------------------------------------------------------------ keys


def test_team_key_is_created_once_private_and_shared(tmp_path):
    a, b = KeyRing(tmp_path / "k"), KeyRing(tmp_path / "k")
    assert a.key_id("finance") == b.key_id("finance")
    path = tmp_path / "k" / "teams" / "finance.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert a.key_id("medical") != a.key_id("finance")
    # Only a path is held: no key bytes live on the object.
    assert set(vars(a)) == {"directory"}


def test_concurrent_team_key_creation_yields_one_key(tmp_path):
    ids, ring = [], KeyRing(tmp_path / "k")
    threads = [threading.Thread(target=lambda: ids.append(ring.key_id("race"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1


def test_signing_keys_are_private_and_public_keys_registered(keyring):
    sig = sign_manifest(b"manifest", "alice@example.org", keyring)
    private = keyring.directory / "users" / "alice@example.org.ed25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert keyring.users() == ["alice@example.org"]
    verify_manifest(b"manifest", sig, "alice@example.org", keyring)


def test_verifier_needs_only_the_public_files(tmp_path, keyring):
    sig = sign_manifest(b"payload", "alice", keyring)
    verifier = KeyRing(tmp_path / "verifier")
    verifier.directory.mkdir()
    shutil.copy(keyring.public_keys_path, verifier.public_keys_path)
    shutil.copy(keyring.directory / "root.pub", verifier.directory / "root.pub")
    verify_manifest(b"payload", sig, "alice", verifier)
    assert not (verifier.directory / "users").exists()


def test_bad_signatures_are_integrity_errors(keyring):
    data = canonical_json({"name": "fraud", "version": 1})
    sig = sign_manifest(data, "alice", keyring)
    sign_manifest(b"x", "bob", keyring)
    with pytest.raises(IntegrityError):
        verify_manifest(data + b" ", sig, "alice", keyring)
    with pytest.raises(IntegrityError):
        verify_manifest(data, sig[:-1] + bytes([sig[-1] ^ 1]), "alice", keyring)
    with pytest.raises(IntegrityError):
        verify_manifest(data, sig, "bob", keyring)  # someone else's key
    with pytest.raises(IntegrityError):
        verify_manifest(data, sig, "mallory", keyring)  # nobody registered
    with pytest.raises(IntegrityError):
        verify_manifest(data, sig, "../alice", keyring)  # not even a valid name
    with pytest.raises(ConfigError):
        sign_manifest(data, "alice\n", keyring)


def test_lost_private_key_is_not_silently_replaced(keyring):
    sign_manifest(b"x", "alice", keyring)
    (keyring.directory / "users" / "alice.ed25519").unlink()
    with pytest.raises(ConfigError, match="restore"):
        sign_manifest(b"x", "alice", keyring)


@pytest.mark.parametrize("team", ["../x", "Finance", "", ".hidden", "a/b", "finance\n"])
def test_bad_team_names_never_reach_the_filesystem(keyring, team):
    with pytest.raises(ConfigError):
        keyring.key_id(team)


# ------------------------------------------------------------------ envelope round trips


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 10 * SMALL + 7])
def test_round_trip_at_chunk_boundaries(keyring, size):
    data = os.urandom(size)
    blob = seal(data, keyring)
    chunks = max(1, -(-size // SMALL))
    start, spans = layout(blob)
    assert len(spans) == chunks
    assert len(blob) == start + size + chunks * TAG_SIZE
    assert unseal(blob, keyring) == data


def test_writer_accepts_any_buffer_in_any_pieces(keyring):
    data = os.urandom(1000)
    for pieces in ([data], [bytearray(data)], [data[i : i + 7] for i in range(0, 1000, 7)]):
        out = io.BytesIO()
        writer = SealedWriter(out, "finance", keyring, chunk_size=SMALL)
        for piece in pieces:
            buf = bytearray(piece)
            writer.write(memoryview(buf))
            buf[:] = bytes(len(buf))  # the writer must not depend on the caller's buffer afterwards
        header, digest = writer.close()
        assert digest.size == 1000
        assert unseal(out.getvalue(), keyring) == data


def test_fresh_data_key_and_nonce_prefix_per_artifact(keyring):
    a = read_header(io.BytesIO(seal(b"same", keyring)))
    b = read_header(io.BytesIO(seal(b"same", keyring)))
    assert a.wrapped_key != b.wrapped_key and a.nonce_prefix != b.nonce_prefix
    assert (a.cipher, a.key_wrap, a.team) == ("AES-256-GCM", "AES-KW", "finance")


def test_digests_describe_plaintext_and_stored_bytes(keyring):
    import hashlib

    data = os.urandom(5000)
    out = io.BytesIO()
    header, digest = seal_stream(io.BytesIO(data), out, "finance", keyring, chunk_size=SMALL)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.stored_size == len(out.getvalue())
    assert verify_stream(io.BytesIO(out.getvalue()), keyring, "finance", expected=digest) == digest
    assert (
        decrypt_bytes(
            io.BytesIO(out.getvalue()), keyring, "finance", expected_header=header, expected=digest
        )
        == data
    )


# ------------------------------------------------------------------ tampering


def test_every_changed_byte_is_detected_and_nothing_is_written(keyring):
    data = os.urandom(5 * SMALL + 11)
    blob = seal(data, keyring)
    rng = random.Random(7)
    for pos in range(len(blob)):
        changed = bytearray(blob)
        changed[pos] ^= rng.randrange(1, 256)
        out = io.BytesIO()
        with pytest.raises(IntegrityError):
            decrypt_stream(io.BytesIO(bytes(changed)), out, keyring, "finance")
        assert out.getvalue() == b"", f"plaintext escaped after a change at byte {pos}"


def test_truncation_anywhere_is_detected(keyring):
    blob = seal(os.urandom(4 * SMALL + 5), keyring)
    start, spans = layout(blob)
    cuts = {
        0,
        5,
        start - 1,
        start,
        *(e for _, e in spans[:-1]),
        *(s + 3 for s, _ in spans),
        len(blob) - 1,
    }
    for cut in sorted(cuts):
        with pytest.raises(IntegrityError):
            unseal(blob[:cut], keyring)


def test_dropping_the_final_chunk_exactly_is_detected(keyring):
    blob = seal(os.urandom(4 * SMALL), keyring)  # all chunks full: the cut lands on a boundary
    _, spans = layout(blob)
    with pytest.raises(IntegrityError, match="chunk 2"):
        unseal(blob[: spans[-1][0]], keyring)


REARRANGEMENTS = {
    "swap 1 and 2": lambda c: [c[0], c[2], c[1], *c[3:]],
    "drop a middle chunk": lambda c: [x for i, x in enumerate(c) if i != 2],
    "duplicate a chunk": lambda c: [*c[:3], c[2], *c[3:]],
    "final chunk moved first": lambda c: [c[-1], *c[:-1]],
    "bytes appended": lambda c: [*c, b"\x00" * 20],
    "chunk appended": lambda c: [*c, c[1]],
}


@pytest.mark.parametrize("rearrange", REARRANGEMENTS.values(), ids=REARRANGEMENTS.keys())
def test_reordered_swapped_duplicated_or_extended_chunks_are_detected(keyring, rearrange):
    blob = seal(os.urandom(5 * SMALL), keyring)
    start, spans = layout(blob)
    chunks = [blob[s:e] for s, e in spans]
    with pytest.raises(IntegrityError):
        unseal(blob[:start] + b"".join(rearrange(chunks)), keyring)


def test_chunks_cannot_move_between_artifacts(keyring):
    a, b = seal(os.urandom(3 * SMALL), keyring), seal(os.urandom(3 * SMALL), keyring)
    start_a, spans_a = layout(a)
    _, spans_b = layout(b)
    mixed = a[: spans_a[1][0]] + b[spans_b[1][0] : spans_b[1][1]] + a[spans_a[1][1] :]
    with pytest.raises(IntegrityError):
        unseal(mixed, keyring)


def test_wrong_team_or_replaced_team_key_is_an_integrity_error(tmp_path, keyring):
    blob = seal(b"secret weights", keyring)
    with pytest.raises(IntegrityError, match="another team, not medical"):
        unseal(blob, keyring, team="medical")
    with pytest.raises(IntegrityError):
        unseal(blob, KeyRing(tmp_path / "elsewhere"))
    (keyring.directory / "teams" / "finance.key").write_bytes(os.urandom(32))
    with pytest.raises(IntegrityError, match="another finance team key"):
        unseal(blob, keyring)


def test_header_must_match_what_was_signed(keyring):
    first = io.BytesIO()
    expected, _ = seal_stream(io.BytesIO(b"a"), first, "finance", keyring)
    other = seal(b"a", keyring)  # same plaintext, same key ring, another envelope
    with pytest.raises(IntegrityError, match="signed manifest"):
        decrypt_stream(
            io.BytesIO(other), io.BytesIO(), keyring, "finance", expected_header=expected
        )
    plain = io.BytesIO()
    decrypt_stream(
        io.BytesIO(first.getvalue()), plain, keyring, "finance", expected_header=expected
    )
    assert plain.getvalue() == b"a"


def test_decrypt_file_leaves_no_file_on_failure(tmp_path, keyring):
    src = tmp_path / "a.enc"
    with open(src, "wb") as out:
        encrypt_stream(io.BytesIO(os.urandom(500)), out, "finance", keyring, chunk_size=SMALL)
    data = bytearray(src.read_bytes())
    data[-3] ^= 0xFF
    src.write_bytes(bytes(data))
    dst = tmp_path / "out" / "a.bin"
    dst.parent.mkdir()
    with pytest.raises(IntegrityError):
        decrypt_file(src, dst, keyring, "finance")
    assert list(dst.parent.iterdir()) == []


def test_decrypt_file_writes_private_file(tmp_path, keyring):
    src = tmp_path / "a.enc"
    with open(src, "wb") as out:
        encrypt_stream(io.BytesIO(b"hello"), out, "finance", keyring)
    dst = tmp_path / "a.bin"
    decrypt_file(src, dst, keyring, "finance")
    assert dst.read_bytes() == b"hello"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600


def test_implausible_header_length_is_refused_without_reading_it(keyring):
    blob = MAGIC + struct.pack(">I", 2**31) + b"{}"
    with pytest.raises(IntegrityError, match="header length"):
        unseal(blob, keyring)


def test_header_fields_are_validated(keyring):
    blob = seal(b"x", keyring)
    (length,) = struct.unpack(">I", blob[8:12])
    header = json.loads(blob[12 : 12 + length])
    header["chunk_size"] = 10**12
    raw = canonical_json(header)
    with pytest.raises(IntegrityError):
        unseal(MAGIC + struct.pack(">I", len(raw)) + raw + blob[12 + length :], keyring)


# ------------------------------------------------------------------ streaming memory


def test_streaming_memory_stays_a_few_chunks(tmp_path, keyring):
    chunk = 1 << 20
    size = 64 << 20
    src, enc, dec = tmp_path / "plain", tmp_path / "enc", tmp_path / "dec"
    with open(src, "wb") as out:
        for _ in range(size // chunk):
            out.write(os.urandom(chunk))

    tracemalloc.start()
    try:
        with open(src, "rb") as inp, open(enc, "wb") as out:
            encrypt_stream(inp, out, "finance", keyring, chunk_size=chunk)
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(enc, "rb") as inp, open(dec, "wb") as out:
            decrypt_stream(inp, out, keyring, "finance")
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Holding the artifact would need 64 MiB, a naive encrypt 128 MiB or more.
    assert enc_peak < 10 * chunk, f"encrypt peak {enc_peak / 2**20:.1f} MiB"
    assert dec_peak < 10 * chunk, f"decrypt peak {dec_peak / 2**20:.1f} MiB"
    assert os.path.getsize(dec) == size
    with open(src, "rb") as a, open(dec, "rb") as b:
        while block := a.read(chunk):
            assert block == b.read(chunk)


def test_aborted_writer_refuses_more_writes(keyring):
    writer = SealedWriter(io.BytesIO(), "finance", keyring, chunk_size=SMALL)
    writer.write(b"x" * 10)
    writer.abort()
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_a_holder_of_the_team_key_cannot_put_other_content_under_a_signed_digest(keyring):
    """With the team key one can unwrap the data key and seal other bytes under the same
    header, and every GCM tag then verifies; the plaintext SHA-256 still refuses them."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from lepton_lab.security import envelope

    data = b"the published model" * 5
    forged = bytes(reversed(data))  # same size, other content
    out = io.BytesIO()
    header, digest = seal_stream(io.BytesIO(data), out, "finance", keyring, chunk_size=SMALL)
    prefix = envelope._envelope_prefix(header.to_bytes())
    key = keyring.unwrap("finance", base64.b64decode(header.wrapped_key), header.kek_id)
    aead, nonce_prefix = AESGCM(key), base64.b64decode(header.nonce_prefix)
    header_digest = hashlib.sha256(prefix).digest()
    chunks = [forged[i : i + SMALL] for i in range(0, len(forged), SMALL)]
    blob = prefix + b"".join(
        aead.encrypt(envelope._nonce(nonce_prefix, i), c,
                     envelope._aad(header_digest, i, i == len(chunks) - 1))
        for i, c in enumerate(chunks)
    )
    assert len(blob) == digest.stored_size
    with pytest.raises(IntegrityError, match="SHA-256 digest it was signed with"):
        verify_stream(io.BytesIO(blob), keyring, "finance", expected_header=header, expected=digest)
    with pytest.raises(IntegrityError, match="SHA-256 digest it was signed with"):
        decrypt_bytes(io.BytesIO(blob), keyring, "finance", expected_header=header, expected=digest)
