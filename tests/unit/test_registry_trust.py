"""The registry trusts nothing a publisher wrote: each attack is a one-line typed error, nothing half-written.

Real files, real keys, real small models. An attacker here can write the registry
directory and ``public_keys.json``; what they cannot do is read the service's
private keys (the root key and users' signing keys).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
import xgboost as xgb
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_lab.errors import ConfigError, IntegrityError, LeptonError, NotFound, PermissionDenied
from lepton_lab.registry import Registry
from lepton_lab.registry import serialize as serialize_module
from lepton_lab.registry.serialize import from_payload, to_payload
from lepton_lab.security.policy import default_policy
from lepton_lab.security.vault import KeyRing, canonical_json

LINEAR = {"target": "torch.nn.modules.linear:Linear", "kwargs": {"in_features": 3, "out_features": 2}}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, LeptonError) and message and "\n" not in message
    return message


@pytest.fixture
def registry(tmp_path):
    # The sample policy: alice analyst in medical, bob analyst in finance, vera viewer of both.
    return Registry(tmp_path / "registry", KeyRing(tmp_path / "keys"), chunk_size=1024,
                    authorize=default_policy("owner").allows)


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).eval()


def linear_payload(module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def publish_linear(registry, module, *, name="lin", team="finance", user="bob", **kw):
    ser = from_payload(linear_payload(module), framework="torch", framework_version=torch.__version__,
                       format="state_dict", construction=LINEAR)
    return registry.publish(ser, name=name, team=team, user=user, **kw)


def nothing_written(registry, name, team="finance"):
    assert not (registry.root / team / name).exists()
    staging = registry.root / team / ".staging"
    assert not staging.exists() or os.listdir(staging) == []


def model_dir(registry, name="lin", team="finance"):
    return registry.root / team / name


# ------------------------------------------------------------------ honest paths


def test_an_honest_torch_layer_publishes_and_loads_without_any_user_code(registry, linear):
    manifest = publish_linear(registry, linear, alias="production")
    loaded = registry.load("lin@production", team="finance")
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), linear(x))
    assert loaded.manifest.signer == "bob" == manifest.signer
    entries = [json.loads(line) for line in (model_dir(registry) / "alias.log").read_bytes().splitlines()]
    assert [(e["event"], e["version"]) for e in entries] == [("publish", 1), ("alias", 1)]
    assert entries[0]["permission"] == "models:publish" and entries[0]["granted"] == "policy"
    assert entries[1]["prev"] != entries[0]["prev"]


def test_alias_moves_and_deletions_go_through_the_log(registry, linear):
    for _ in range(3):
        publish_linear(registry, linear)
    registry.set_alias("lin", "finance", "production", 2, user="bob")
    registry.set_alias("lin", "finance", "production", 3, user="bob")
    registry.remove_alias("lin", "finance", "production", user="bob")
    registry.set_alias("lin", "finance", "staging", 1, user="bob")
    registry.delete_version("lin", "finance", 1, force=True, user="bob")
    assert registry.aliases("lin", "finance") == {}
    assert [e.version for e in registry.versions("lin", "finance")] == [2, 3]
    assert registry.load("lin", team="finance").manifest.version == 3
    events = [json.loads(line)["event"] for line in (model_dir(registry) / "alias.log").read_bytes().splitlines()]
    assert events == ["publish"] * 3 + ["alias", "alias", "unalias", "alias", "delete"]


# ------------------------------------------------------------------ construction targets


@pytest.fixture
def booby_trapped_module(tmp_path, monkeypatch):
    """A module on sys.path whose import leaves a mark: importing it is the attack."""
    mark = tmp_path / "imported"
    (tmp_path / "lepton_trap_module.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(mark)!r}).write_text('ran')\n"
        "class Net(torch.nn.Linear):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mark
    sys.modules.pop("lepton_trap_module", None)


@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "lepton_trap_module:Net",
                                    "torch.nn.modules.linear:torch.os.system", "builtins:eval"])
def test_a_construction_target_off_the_allow_list_is_refused_at_publish(registry, linear, target,
                                                                         booby_trapped_module):
    with pytest.raises(ConfigError) as err:
        from_payload(linear_payload(linear), framework="torch", framework_version=torch.__version__,
                     format="state_dict", construction={"target": target, "kwargs": {}})
    assert target in one_line(err) or "module:qualname" in one_line(err) or "allowed" in one_line(err)
    assert not booby_trapped_module.exists() and "lepton_trap_module" not in sys.modules
    nothing_written(registry, "lin")


def test_a_signed_manifest_naming_an_unlisted_module_is_never_imported_at_load(registry, linear,
                                                                               booby_trapped_module):
    manifest = publish_linear(registry, linear)
    payload = registry.download("lin", "finance").read_bytes()
    manifest.construction.target = "lepton_trap_module:Net"
    with pytest.raises(ConfigError, match="not an allowed model builder and was not imported") as err:
        serialize_module.deserialize(payload, manifest)
    one_line(err)
    assert not booby_trapped_module.exists() and "lepton_trap_module" not in sys.modules
    # an administrator may allow it; then it is imported and used
    os.environ["LEPTON_MODEL_BUILDERS"] = "lepton_trap_module:Net"
    try:
        rebuilt = serialize_module.deserialize(payload, manifest)
    finally:
        del os.environ["LEPTON_MODEL_BUILDERS"]
    assert type(rebuilt).__name__ == "Net" and booby_trapped_module.exists()


def test_a_string_or_malformed_construction_is_a_config_error(registry, linear):
    for construction in ("os:system", {"kwargs": {}}, {"target": 3}, {"target": "no colon"}):
        with pytest.raises(ConfigError) as err:
            from_payload(linear_payload(linear), framework="torch", framework_version="",
                         format="state_dict", construction=construction)
        one_line(err)
    with pytest.raises(ConfigError, match="needs a construction spec"):
        from_payload(linear_payload(linear), framework="torch", framework_version="", format="state_dict")
    with pytest.raises(ConfigError, match="no construction target"):
        from_payload(b"x", framework="bytes", framework_version="", format="bytes", construction=LINEAR)


# ------------------------------------------------------------------ declared framework vs payload


def _booster_bytes() -> bytes:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, y), 2)
    return bytes(booster.save_raw("ubj"))


class Pickled:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("case", ["garbage-torch", "xgb-as-torch", "pickle-as-torch", "garbage-xgb",
                                  "torch-as-xgb", "json-declared-ubj", "wrong-format", "unknown-framework"])
def test_a_payload_that_is_not_its_declared_framework_is_refused_at_publish(registry, linear, case):
    pickled = io.BytesIO()
    torch.save({"weight": Pickled()}, pickled)
    payload, framework, fmt, construction = {
        "garbage-torch": (os.urandom(4000), "torch", "state_dict", LINEAR),
        "xgb-as-torch": (_booster_bytes(), "torch", "state_dict", LINEAR),
        "pickle-as-torch": (pickled.getvalue(), "torch", "state_dict", LINEAR),
        "garbage-xgb": (os.urandom(4000), "xgboost", "ubj", None),
        "torch-as-xgb": (linear_payload(linear), "xgboost", "ubj", None),
        "json-declared-ubj": (_booster_bytes(), "xgboost", "json", None),
        "wrong-format": (linear_payload(linear), "torch", "ubj", LINEAR),
        "unknown-framework": (b"x", "onnx", "onnx", None),
    }[case]
    with pytest.raises(ConfigError) as err:
        ser = from_payload(payload, framework=framework, framework_version="", format=fmt,
                           construction=construction)
        registry.publish(ser, name="m", team="finance", user="bob")
    one_line(err)
    nothing_written(registry, "m")


def test_real_payloads_of_each_framework_pass_the_publish_check(registry, linear):
    booster, facts = to_payload(xgb.Booster(model_file=bytearray(_booster_bytes())))
    registry.publish(from_payload(booster, **facts), name="gbm", team="finance", user="bob")
    assert isinstance(registry.load("gbm", team="finance").model, xgb.Booster)
    registry.publish(from_payload(os.urandom(100), framework="bytes", framework_version="", format="bytes"),
                     name="blob", team="finance", user="bob")
    publish_linear(registry, linear)


# ------------------------------------------------------------------ who signed, and with what right


def test_a_publisher_without_models_publish_in_the_team_is_refused(registry, linear):
    for user, team in (("vera", "finance"), ("alice", "finance"), ("nobody", "finance")):
        with pytest.raises(PermissionDenied) as err:
            publish_linear(registry, linear, user=user, team=team)
        assert one_line(err) == f"{user} may not publish models to {team}"
        nothing_written(registry, "lin", team)
    assert not (registry.keyring.directory / "users" / "vera.ed25519").exists()


def _attacker_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, base64.b64encode(raw).decode()


def _rewrite_manifest(registry, version_dir, sign, **changes):
    manifest = json.loads((version_dir / "manifest.json").read_bytes())
    manifest.update(changes)
    data = canonical_json(manifest)
    (version_dir / "manifest.json").write_bytes(data)
    (version_dir / "manifest.sig").write_bytes(sign(data))


def test_a_key_pasted_into_public_keys_json_does_not_verify(registry, linear):
    publish_linear(registry, linear)
    vdir = model_dir(registry) / "versions" / "1"
    keys_file = registry.keyring.public_keys_path
    original = keys_file.read_bytes()
    attacker, public = _attacker_key()
    # 1. replace bob's registered key with the attacker's and re-sign as bob
    listing = json.loads(original)
    for record in listing["keys"]:
        record["public_key"] = public
    keys_file.write_bytes(json.dumps(listing).encode())
    _rewrite_manifest(registry, vdir, attacker.sign, description="harmless")
    with pytest.raises(IntegrityError, match="not signed by this registry's root key") as err:
        registry.load("lin", team="finance")
    one_line(err)
    # 2. register a new user of the attacker's own and sign as them
    listing = json.loads(original)
    listing["keys"].append({"user": "mallory", "public_key": public, "created": "2026-01-01T00:00:00+00:00",
                            "algorithm": "ed25519", "certificate": ""})
    keys_file.write_bytes(json.dumps(listing).encode())
    _rewrite_manifest(registry, vdir, attacker.sign, signer="mallory")
    with pytest.raises(IntegrityError) as err:
        registry.load("lin", team="finance")
    one_line(err)


def test_a_manifest_re_signed_by_a_registered_user_of_another_team_does_not_load(registry, linear):
    publish_linear(registry, linear)
    publish_linear(registry, linear, name="scan", team="medical", user="alice")  # alice: a real, certified key
    vdir = model_dir(registry) / "versions" / "1"
    alice = registry.keyring.signing_key("alice")  # what someone holding alice's key could do
    _rewrite_manifest(registry, vdir, alice.sign, signer="alice", description="now alice's")
    with pytest.raises(IntegrityError, match="alias log") as err:
        registry.load("lin", team="finance")
    one_line(err)
    # even bob's own key cannot change what was published
    vdir_bob = registry.keyring.signing_key("bob")
    _rewrite_manifest(registry, vdir, vdir_bob.sign, signer="bob", description="changed later")
    with pytest.raises(IntegrityError, match="alias log"):
        registry.load("lin", team="finance")


# ------------------------------------------------------------------ the alias log


@pytest.fixture
def three_versions(registry, linear):
    for _ in range(3):
        publish_linear(registry, linear)
    registry.set_alias("lin", "finance", "production", 3, user="bob")
    return registry


def _edit_index(registry, change):
    path = model_dir(registry) / "index.json"
    index = json.loads(path.read_bytes())
    change(index)
    path.write_bytes(canonical_json(index))


def test_moving_an_alias_back_in_index_json_is_refused(three_versions):
    _edit_index(three_versions, lambda i: i["aliases"].update(production=1))
    with pytest.raises(IntegrityError, match="disagrees with its signed alias log") as err:
        three_versions.load("lin@production", team="finance")
    one_line(err)


def test_hiding_the_newest_version_from_index_json_is_refused(three_versions):
    def hide(index):
        index["versions"] = [v for v in index["versions"] if v["version"] != 3]
        index["aliases"] = {}
        index["last_version"] = 2

    _edit_index(three_versions, hide)
    with pytest.raises(IntegrityError, match="disagrees with its signed alias log") as err:
        three_versions.load("lin", team="finance")
    one_line(err)


def _log_lines(registry):
    return (model_dir(registry) / "alias.log").read_bytes().splitlines(keepends=True)


def test_an_edited_alias_log_entry_is_refused(three_versions):
    lines = _log_lines(three_versions)
    entry = json.loads(lines[-1])
    entry["version"] = 1
    lines[-1] = canonical_json(entry) + b"\n"
    (model_dir(three_versions) / "alias.log").write_bytes(b"".join(lines))
    _edit_index(three_versions, lambda i: i["aliases"].update(production=1))
    with pytest.raises(IntegrityError, match="not signed by this registry's root key") as err:
        three_versions.load("lin@production", team="finance")
    one_line(err)


def test_a_log_cut_back_to_an_earlier_signed_state_is_refused(three_versions):
    # The first three entries are all validly signed: only the witness knows there were four.
    (model_dir(three_versions) / "alias.log").write_bytes(b"".join(_log_lines(three_versions)[:3]))
    _edit_index(three_versions, lambda i: i.update(aliases={}))
    with pytest.raises(IntegrityError, match="rolled back") as err:
        three_versions.load("lin", team="finance")
    one_line(err)


def test_reordered_or_dropped_entries_are_refused(three_versions):
    lines = _log_lines(three_versions)
    for changed in (lines[1:], [lines[0], lines[2], lines[1], lines[3]], lines + lines[-1:]):
        (model_dir(three_versions) / "alias.log").write_bytes(b"".join(changed))
        with pytest.raises(IntegrityError) as err:
            three_versions.load("lin", team="finance")
        one_line(err)


def test_a_removed_log_or_a_model_without_one_is_refused(three_versions, linear):
    (model_dir(three_versions) / "alias.log").unlink()
    with pytest.raises(IntegrityError) as err:
        three_versions.load("lin", team="finance")
    one_line(err)
    with pytest.raises(IntegrityError):  # nor is anything published on top of it
        publish_linear(three_versions, linear)
    with pytest.raises(IntegrityError):
        three_versions.set_alias("lin", "finance", "production", 1)


def test_changes_refused_by_the_log_leave_nothing_behind(three_versions, linear):
    before = _log_lines(three_versions)
    with pytest.raises(NotFound):
        three_versions.set_alias("lin", "finance", "production", 9)
    with pytest.raises(ConfigError):
        three_versions.delete_version("lin", "finance", 3)  # aliased
    assert _log_lines(three_versions) == before
    assert three_versions.load("lin@production", team="finance").manifest.version == 3


# ------------------------------------------------------------------ through the services


def test_the_services_publish_with_the_policy_and_refuse_false_claims(tmp_path, monkeypatch, linear):
    from lepton_lab.services import Actor, Services

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    services = Services(default_policy("owner"), home=tmp_path, tls=False)
    try:
        payload = linear_payload(linear)
        meta = {"framework": "torch", "framework_version": torch.__version__, "format": "state_dict",
                "construction": LINEAR, "alias": "production"}
        bob = Actor("bob")
        assert services.publish_model(bob, "finance", "lin", payload, meta).version == 1
        out = services.predict(bob, "finance", "lin@production", [[1.0, 2.0, 3.0]])
        with torch.no_grad():
            expected = linear(torch.tensor([[1.0, 2.0, 3.0]]))
        assert out["predictions"] == expected.argmax(1).tolist()
        refused = [
            (bob, payload, {**meta, "construction": {"target": "os:system", "kwargs": {"command": "true"}}}),
            (bob, payload, {**meta, "construction": "os:system"}),
            (bob, os.urandom(2000), meta),
            (bob, payload, {**meta, "framework": "xgboost", "format": "ubj", "construction": None}),
        ]
        for who, body, claim in refused:
            with pytest.raises(ConfigError) as err:
                services.publish_model(who, "finance", "lin", body, claim)
            one_line(err)
        with pytest.raises(PermissionDenied):
            services.publish_model(Actor("vera"), "finance", "lin", payload, meta)
        assert [v.version for v in services.registry.versions("lin", "finance")] == [1]
        services.set_alias(bob, "finance", "lin", "staging", 1)
        entries = [json.loads(line) for line in
                   (services.registry.root / "finance" / "lin" / "alias.log").read_bytes().splitlines()]
        assert [(e["event"], e.get("by", e.get("signer"))) for e in entries] == [
            ("publish", "bob"), ("alias", "bob"), ("alias", "bob")]
        assert entries[0]["granted"] == "policy"
    finally:
        services.close()


def test_a_crash_between_the_log_and_the_index_is_refused_then_healed_by_the_next_write(registry, linear):
    publish_linear(registry, linear)
    publish_linear(registry, linear)

    def as_if_the_index_write_was_lost(index):
        index["versions"] = [v for v in index["versions"] if v["version"] == 1]
        index["last_version"] = 1

    _edit_index(registry, as_if_the_index_write_was_lost)
    with pytest.raises(IntegrityError):
        registry.load("lin", team="finance")
    assert publish_linear(registry, linear).version == 3
    assert [e.version for e in registry.versions("lin", "finance")] == [1, 2, 3]
    assert registry.load("lin@2", team="finance").manifest.version == 2


def test_a_failure_after_the_log_entry_is_written_takes_it_back(registry, linear, monkeypatch):
    from lepton_lab.security.signing import RootKey

    publish_linear(registry, linear)
    before = _log_lines(registry)
    real = RootKey.remember
    calls = []

    def fails_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("disk full")
        return real(self, *args)

    monkeypatch.setattr(RootKey, "remember", fails_once)
    with pytest.raises(OSError):
        publish_linear(registry, linear)
    monkeypatch.undo()
    assert _log_lines(registry) == before
    assert [e.version for e in registry.versions("lin", "finance")] == [1]
    assert registry.load("lin", team="finance").manifest.version == 1
    assert publish_linear(registry, linear).version == 2
