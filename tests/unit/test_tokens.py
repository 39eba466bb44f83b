"""Personal access tokens: shown once, stored as Scrypt hashes, verified and revoked."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from lepton_lab.errors import ConfigError, NotFound
from lepton_lab.security.tokens import TokenInfo, TokenStore


@pytest.fixture
def store(tmp_path):
    return TokenStore(tmp_path / "tokens.json")


def test_token_verifies_to_its_user(store):
    token = store.add("alice")
    assert token.startswith("lpt_") and len(token) > 50
    assert store.verify(token) == "alice"
    assert store.verify(token) == "alice"  # second time from the cache
    assert TokenStore(store.path).verify(token) == "alice"  # a fresh process has no cache


def test_file_holds_only_salted_scrypt_hashes(store):
    token = store.add("alice")
    store.add("alice")
    text = store.path.read_text()
    secret = token.split("_", 2)[2]  # lpt_<id>_<secret>; the secret itself may hold "_"
    assert len(secret) >= 40
    assert token not in text and secret not in text
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    records = json.loads(text)["tokens"]
    assert len({r["salt"] for r in records}) == 2
    record = next(r for r in records if token.startswith(f"lpt_{r['token_id']}_"))
    expected = Scrypt(
        salt=base64.b64decode(record["salt"]), length=32, n=record["n"], r=record["r"], p=record["p"]
    )
    expected.verify(token.encode(), base64.b64decode(record["hash"]))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nonsense",
        "lpt_",
        "lpt_zzzzzzzzzzzz_secret",
        "lpt_0123456789ab",
        "lpt_0123456789ab_wrong",
        None,
        42,
    ],
)
def test_malformed_or_unknown_tokens_are_refused(store, bad):
    store.add("alice")
    assert store.verify(bad) is None


def test_altered_secret_is_refused(store):
    token = store.add("alice")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert store.verify(flipped) is None
    another_id = store.add("bob")
    forged = another_id[: len("lpt_") + 12] + token[len("lpt_") + 12 :]  # bob's id, alice's secret
    assert store.verify(forged) is None


def test_revoke_removes_every_token_of_a_user_even_if_cached(store):
    first, second, bobs = store.add("alice"), store.add("alice"), store.add("bob")
    assert store.verify(first) == "alice"
    assert store.revoke("alice") == 2
    assert store.verify(first) is None and store.verify(second) is None
    assert store.verify(bobs) == "bob"
    assert store.revoke("alice") == 0


def test_revoke_from_another_store_object_is_seen(store):
    token = store.add("alice")
    assert store.verify(token) == "alice"
    TokenStore(store.path).revoke("alice")
    assert store.verify(token) is None


def test_cached_answers_only_for_tokens_verified_against_the_current_file(store):
    token, other = store.add("alice"), store.add("bob")
    assert store.cached(token) is None  # never verified: no key derivation happens here
    assert store.verify(token) == "alice" and store.cached(token) == "alice"
    assert store.cached(other) is None and store.cached("lpt_nonsense") is None
    TokenStore(store.path).revoke("alice")  # another process changes the file
    assert store.cached(token) is None and store.verify(token) is None


def test_revoke_one_token_by_id(store):
    keep, drop = store.add("alice"), store.add("alice")
    drop_id = drop.split("_")[1]
    assert store.revoke("alice", drop_id) == 1
    assert store.verify(keep) == "alice" and store.verify(drop) is None
    with pytest.raises(NotFound, match="alice has no token"):
        store.revoke("alice", drop_id)


def test_list_shows_ids_never_hashes(store):
    token = store.add("alice")
    store.add("bob")
    listed = store.list()
    assert [info.user for info in listed] == ["alice", "bob"]
    assert all(isinstance(info, TokenInfo) for info in listed)
    assert listed[0].token_id == token.split("_")[1]
    assert set(vars(listed[0])) == {"token_id", "user", "created"}
    assert [info.user for info in store.list("bob")] == ["bob"]
    assert TokenStore(store.path.with_name("none.json")).list() == []


def test_bad_inputs(store, tmp_path):
    with pytest.raises(ConfigError, match="non-empty user"):
        store.add("")
    broken = TokenStore(tmp_path / "broken.json")
    broken.path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not a token file"):
        broken.list()
