"""Registries written before alias logs: refused with the command to run, migrated only when every version verifies.

The old registry is written the way the code before alias logs wrote it: signed,
encrypted versions and an ``index.json``, no ``alias.log``, no registry root key,
and users' public keys in ``public_keys.json`` without certificates.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_lab.cli import main as cli_main
from lepton_lab.errors import IntegrityError, LeptonError, PermissionDenied
from lepton_lab.registry import Registry
from lepton_lab.registry.layout import ARTIFACT, MANIFEST, SIGNATURE, ModelIndex, VersionEntry
from lepton_lab.registry.manifest import ArtifactInfo, Lineage, Manifest
from lepton_lab.registry.migrate import migrate
from lepton_lab.security.policy import default_policy
from lepton_lab.security.vault import KeyRing, SealedWriter, canonical_json


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, LeptonError) and message and "\n" not in message
    return message


def _old_user_key(keys, user: str) -> Ed25519PrivateKey:
    """A signing key and its public record as the old key ring kept them: no certificate."""
    path = keys / "users" / f"{user}.ed25519"
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    records_path = keys / "public_keys.json"
    records = json.loads(records_path.read_bytes()) if records_path.exists() else {"keys": [], "format": 1}
    records["keys"].append({"user": user, "public_key": base64.b64encode(public).decode(),
                            "created": "2026-01-01T00:00:00+00:00", "algorithm": "ed25519"})
    records_path.write_bytes(canonical_json(records))
    return key


def write_old_model(root, keys, *, team="finance", name="fraud", signer="bob", payloads=(b"v1", b"v2", b"v3"),
                    aliases=None, last_version=None):
    """Versions and index.json as the registry wrote them before alias logs."""
    keyring = KeyRing(keys)
    key = _old_user_key(keys, signer)
    model_dir = root / team / name
    index = ModelIndex(name=name, team=team)
    for version, payload in enumerate(payloads, start=1):
        vdir = model_dir / "versions" / str(version)
        vdir.mkdir(parents=True)
        with open(vdir / ARTIFACT, "xb") as out:
            writer = SealedWriter(out, team, keyring, chunk_size=1024)
            writer.write(payload)
            header, digest = writer.close()
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        manifest = Manifest(name=name, team=team, version=version, framework="bytes", framework_version="",
                            format="bytes", signer=signer, lineage=Lineage(user=signer, created=created),
                            artifact=ArtifactInfo(size=digest.size, sha256=digest.sha256,
                                                  ciphertext_size=digest.stored_size, envelope=header))
        data = manifest.to_bytes()
        (vdir / MANIFEST).write_bytes(data)
        (vdir / SIGNATURE).write_bytes(key.sign(data))
        index.versions.append(VersionEntry(version=version, created=created, signer=signer, framework="bytes",
                                           format="bytes", size=digest.size, sha256=digest.sha256))
    index.last_version = last_version or len(payloads)
    index.aliases = dict(aliases if aliases is not None else {"production": len(payloads)})
    (model_dir / "index.json").write_bytes(index.to_bytes())
    return model_dir


@pytest.fixture
def old(tmp_path):
    root, keys = tmp_path / "registry", tmp_path / "keys"
    write_old_model(root, keys, aliases={"production": 2, "staging": 3}, last_version=5)
    write_old_model(root, keys, name="churn", signer="fiona", payloads=(b"only",))
    registry = Registry(root, KeyRing(keys), authorize=default_policy("owner").allows)
    return registry


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_an_old_model_is_refused_with_the_command_that_migrates_it(old):
    with pytest.raises(IntegrityError, match="lepton-lab registry migrate --team finance") as err:
        old.load("fraud@production", team="finance")
    one_line(err)


def test_migrating_gives_every_old_model_its_log_and_loads_work(old):
    done = migrate(old, ["finance"], by="owner")
    assert [(m.name, m.versions, m.aliases) for m in done] == [
        ("churn", [1], {"production": 1}), ("fraud", [1, 2, 3], {"production": 2, "staging": 3})]
    assert bytes(old.load("fraud@production", team="finance").model) == b"v2"
    assert bytes(old.load("fraud@staging", team="finance").model) == b"v3"
    assert bytes(old.load("churn", team="finance").model) == b"only"
    entries = [json.loads(line) for line in (old.root / "finance" / "fraud" / "alias.log").read_bytes().splitlines()]
    assert [e["event"] for e in entries] == ["publish"] * 3 + ["alias", "alias", "migrate"]
    assert {e["granted"] for e in entries if e["event"] == "publish"} == {"migration"}
    # numbers of versions deleted before the migration are not handed out again
    manifest = old.publish(b"v6", name="fraud", team="finance", user="bob")
    assert manifest.version == 6
    old.set_alias("fraud", "finance", "production", 6, user="bob")
    assert bytes(old.load("fraud@production", team="finance").model) == b"v6"


def test_migrating_twice_changes_nothing(old):
    migrate(old, ["finance"], by="owner")
    before = _tree(old.root), _tree(old.keyring.directory)
    assert migrate(old, ["finance", "medical"], by="owner") == []
    assert (_tree(old.root), _tree(old.keyring.directory)) == before


@pytest.mark.parametrize("tamper", ["manifest", "signature", "artifact", "truncated", "alias", "key"])
def test_a_tampered_version_blocks_the_whole_migration_and_nothing_is_written(old, tamper):
    vdir = old.root / "finance" / "fraud" / "versions" / "2"
    if tamper == "manifest":
        data = json.loads((vdir / MANIFEST).read_bytes())
        data["metrics"] = {"auc": 0.99}
        (vdir / MANIFEST).write_bytes(canonical_json(data))
    elif tamper == "signature":
        (vdir / SIGNATURE).write_bytes(Ed25519PrivateKey.generate().sign((vdir / MANIFEST).read_bytes()))
    elif tamper == "artifact":
        blob = bytearray((vdir / ARTIFACT).read_bytes())
        blob[-20] ^= 1
        (vdir / ARTIFACT).write_bytes(bytes(blob))
    elif tamper == "truncated":
        os.truncate(vdir / ARTIFACT, (vdir / ARTIFACT).stat().st_size - 1)
    elif tamper == "alias":
        index = json.loads((vdir.parent.parent / "index.json").read_bytes())
        index["aliases"]["production"] = 9
        (vdir.parent.parent / "index.json").write_bytes(canonical_json(index))
    else:  # a key pasted into public_keys.json whose private half the services do not hold
        attacker = Ed25519PrivateKey.generate()
        records_path = old.keyring.directory / "public_keys.json"
        records = json.loads(records_path.read_bytes())
        public = attacker.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        records["keys"] = [dict(k, public_key=base64.b64encode(public).decode()) if k["user"] == "bob" else k
                           for k in records["keys"]]
        records_path.write_bytes(canonical_json(records))
        for v in (1, 2, 3):
            d = vdir.parent / str(v)
            (d / SIGNATURE).write_bytes(attacker.sign((d / MANIFEST).read_bytes()))
    before = _tree(old.root), _tree(old.keyring.directory)
    with pytest.raises(IntegrityError) as err:
        migrate(old, ["finance"], by="owner")
    one_line(err)
    # not even the model that verified (churn) got a log, nor any key a certificate
    assert (_tree(old.root), _tree(old.keyring.directory)) == before


def test_a_new_model_whose_log_was_removed_is_not_migrated_back(tmp_path):
    registry = Registry(tmp_path / "registry", KeyRing(tmp_path / "keys"))
    registry.publish(b"x", name="lin", team="finance", user="bob", alias="production")
    (registry.root / "finance" / "lin" / "alias.log").unlink()
    with pytest.raises(IntegrityError, match="rolled back") as err:
        migrate(registry, ["finance"], by="owner")
    one_line(err)
    assert not (registry.root / "finance" / "lin" / "alias.log").exists()


def test_the_command_migrates_for_an_admin_audited_and_refuses_others(tmp_path, monkeypatch, capsys):
    from lepton_lab.security.audit import AuditLog
    from lepton_lab.security.identity import local_user
    from lepton_lab.services import Actor, Services

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    for var in ("LEPTON_AUDIT", "LEPTON_REGISTRY", "LEPTON_KEYS", "LEPTON_POLICY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "policy.yaml").write_text(
        f"version: 1\nteams: [medical, finance]\nmembers:\n  {local_user()}: {{'*': admin}}\n"
        "  bob: {finance: analyst}\n")
    services = Services(default_policy(local_user()), home=tmp_path, tls=False)
    root, keys = services.registry.root, services.registry.keyring.directory
    services.close()
    write_old_model(root, keys)
    services = Services(default_policy(local_user()), home=tmp_path, tls=False)
    try:
        with pytest.raises(PermissionDenied):
            services.migrate_registry(Actor("bob"), "finance")
    finally:
        services.close()
    assert cli_main(["registry", "migrate", "--team", "medical"]) == 0
    assert "migrated 0 model(s)" in capsys.readouterr().out
    assert cli_main(["registry", "migrate", "--team", "finance"]) == 0
    out = capsys.readouterr().out
    assert "finance/fraud: signed alias log written for versions [1, 2, 3] (production=3)" in out
    assert cli_main(["registry", "migrate"]) == 0
    assert "migrated 0 model(s)" in capsys.readouterr().out
    assert cli_main(["registry", "migrate", "--team", "nosuch"]) == 2
    assert "no team 'nosuch'" in capsys.readouterr().err
    assert bytes(Registry(root, KeyRing(keys)).load("fraud@production", team="finance").model) == b"v3"
    lines = [e for e in AuditLog(tmp_path / "audit.jsonl").entries() if e["resource"].startswith("models:")]
    assert [(e["user"], e["outcome"], e["resource"]) for e in lines] == [
        ("bob", "deny", "models:finance"), (local_user(), "allow", "models:finance/fraud")]
