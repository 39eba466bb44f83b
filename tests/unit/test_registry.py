"""The model registry with real files, real crypto and real small models."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import random
import stat
import struct
import time

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.registry import (
    InputSchema,
    Lineage,
    Registry,
    parse_ref,
    records_init_kwargs,
)
from lepton_lab.registry import serialize as serialize_module
from lepton_lab.registry import store as store_module
from lepton_lab.security.vault import MAGIC, TAG_SIZE, KeyRing, SealedWriter

# torch's eager quantization API announces its own deprecation on every use.
pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning"),
]


class MLP(torch.nn.Module):
    """A small classifier that records its own constructor arguments."""

    def __init__(self, n_in: int, hidden: int = 16, n_out: int = 2):
        super().__init__()
        self.init_kwargs = {"n_in": n_in, "hidden": hidden, "n_out": n_out}
        self.fc1 = torch.nn.Linear(n_in, hidden)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@records_init_kwargs
class Recorded(torch.nn.Module):
    def __init__(self, width, depth=2, **extra):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))


class NeedsArgs(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = torch.nn.Linear(n, 1)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def booster(data):
    x, y = data
    return xgb.train(
        {"max_depth": 3, "objective": "binary:logistic", "nthread": 2}, xgb.DMatrix(x, y), 5
    )


@pytest.fixture(scope="module")
def mlp(data):
    x, y = data
    torch.manual_seed(0)
    model = MLP(x.shape[1], hidden=16)
    xt, yt = torch.from_numpy((x - x.mean(0)) / x.std(0)), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def quantized(mlp):
    return torch.ao.quantization.quantize_dynamic(mlp, {torch.nn.Linear}, dtype=torch.qint8)


@pytest.fixture
def registry(tmp_path):
    # Small chunks so a few-KB model spans several chunks.
    return Registry(tmp_path / "registry", KeyRing(tmp_path / "keys"), chunk_size=1024)


def snapshot(reg: Registry, name: str, team: str = "finance"):
    """What a reader could see of a model, plus leftovers in the staging area."""
    model_dir = reg.root / team / name
    index = (model_dir / "index.json").read_bytes() if (model_dir / "index.json").exists() else None
    versions = (
        sorted(os.listdir(model_dir / "versions")) if (model_dir / "versions").exists() else []
    )
    staging = reg.root / team / ".staging"
    leftovers = sorted(os.listdir(staging)) if staging.exists() else []
    return index, versions, leftovers


def version_dir(reg: Registry, name: str, version: int, team: str = "finance"):
    return reg.root / team / name / "versions" / str(version)


# ------------------------------------------------------------------ round trips


def test_booster_round_trip_gives_identical_predictions(registry, booster, data):
    x, _ = data
    manifest = registry.publish(
        booster,
        name="fraud",
        team="finance",
        user="alice",
        metrics={"auc": np.float64(0.98)},
        input_schema=x,
        lineage={"data_fingerprint": "sha256:abc", "notebook": "fraud.ipynb", "cell_hash": "c1"},
        tags=["baseline"],
        alias="production",
        description="first cut",
    )
    assert (manifest.version, manifest.framework, manifest.format) == (1, "xgboost", "ubj")
    assert manifest.framework_version == xgb.__version__
    assert manifest.lineage.user == "alice" and manifest.lineage.created
    assert manifest.input_schema.shape == [None, 30]
    loaded = registry.load("fraud@production", team="finance")
    assert loaded.manifest == manifest
    np.testing.assert_array_equal(
        loaded.model.predict(xgb.DMatrix(x)), booster.predict(xgb.DMatrix(x))
    )
    assert registry.manifest("fraud", "finance", 1).metrics == {"auc": 0.98}


def test_xgb_classifier_round_trip_keeps_wrapper_params(registry, data):
    x, y = data
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, learning_rate=0.3, n_jobs=2).fit(x, y)
    manifest = registry.publish(clf, name="clf", team="finance", user="alice")
    assert manifest.construction.target == "xgboost.sklearn:XGBClassifier"
    assert manifest.construction.kwargs["max_depth"] == 2
    model = registry.load("clf", team="finance").model
    assert isinstance(model, xgb.XGBClassifier)
    np.testing.assert_array_equal(model.predict_proba(x), clf.predict_proba(x))
    np.testing.assert_array_equal(model.predict(x), clf.predict(x))


def test_torch_mlp_round_trip(registry, mlp, data):
    x, _ = data
    manifest = registry.publish(mlp, name="mlp", team="finance", user="bob")
    assert manifest.construction.target == "test_registry:MLP"
    assert manifest.construction.kwargs == {"n_in": 30, "hidden": 16, "n_out": 2}
    assert not manifest.quantized
    model = registry.load("mlp", team="finance").model
    assert isinstance(model, MLP) and not model.training
    xt = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.equal(model(xt), mlp(xt))


def test_quantized_torch_round_trip(registry, quantized, data):
    x, _ = data
    manifest = registry.publish(
        quantized,
        name="mlp-int8",
        team="finance",
        user="bob",
        compression={"method": "dynamic-int8"},
    )
    assert manifest.quantized
    assert manifest.construction.quantization.dtype == "qint8"
    assert manifest.construction.quantization.modules == ["fc1", "fc2"]
    model = registry.load("mlp-int8", team="finance").model
    assert isinstance(model.fc1, torch.ao.nn.quantized.dynamic.Linear)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.equal(model(xt), quantized(xt))


@pytest.mark.parametrize("steps", [{"prune": 0.5}, {"prune": 0.5, "quantize": "int8"}])
def test_compressed_chain_round_trip(registry, mlp, data, steps):
    from lepton_lab.ml.compress import compress

    x, y = data
    xs = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    small, _ = compress(mlp, data=(xs, y), force=True, epochs=0, progress=False, **steps)
    manifest = registry.publish(small, name="mlp-small", team="finance", user="bob")
    assert manifest.construction.target == "lepton_lab.registry.modelspec:build_model"
    # versions published before name the builder where it lived then: in the compressor, then in ml
    for older in ("lepton_lab.ml.compress:build_model", "lepton_lab.ml.modelspec:build_model"):
        assert serialize_module.resolve(older) is serialize_module.resolve(manifest.construction.target)
    assert manifest.construction.kwargs["spec"]["layers"][0]["out_features"] == 8
    model = registry.load("mlp-small", team="finance").model
    if "quantize" in steps:
        assert isinstance(model[0], torch.ao.nn.quantized.dynamic.Linear)
    xt = torch.from_numpy(xs)
    with torch.no_grad():
        assert torch.equal(model(xt), small(xt))


def test_a_compressed_chain_whose_weights_do_not_fit_its_spec_is_refused(registry, mlp):
    from lepton_lab.ml.compress import compress

    small, _ = compress(mlp, prune=0.5, progress=False)
    small.lepton_spec = {**small.lepton_spec, "layers": [
        {**small.lepton_spec["layers"][0], "out_features": 9}, *small.lepton_spec["layers"][1:]]}
    with pytest.raises(ConfigError, match="does not rebuild from its spec"):
        registry.publish(small, name="bad", team="finance", user="bob")
    assert snapshot(registry, "bad") == (None, [], [])


def test_an_int8_chain_whose_spec_widths_are_wrong_is_refused(registry, mlp):
    """int8 Linear layers load packed weights of any shape, so this is caught by shape."""
    from lepton_lab.ml.compress import compress

    small, _ = compress(mlp, prune=0.5, quantize="int8", progress=False)
    small.lepton_spec = {**small.lepton_spec, "layers": [
        {**small.lepton_spec["layers"][0], "out_features": 9}, *small.lepton_spec["layers"][1:]]}
    with pytest.raises(ConfigError, match="layers differ from its spec"):
        registry.publish(small, name="bad", team="finance", user="bob")
    assert snapshot(registry, "bad") == (None, [], [])


def test_only_module_classes_and_marked_builders_rebuild_a_model(registry, mlp):
    manifest = registry.publish(mlp, name="mlp", team="finance", user="bob")
    payload = registry.download("mlp", team="finance").read_bytes()
    for target in ("os:getcwd", "builtins:print"):
        manifest.construction.target = target
        with pytest.raises(ConfigError, match="not an allowed model builder and was not imported"):
            serialize_module.deserialize(payload, manifest)
    # even allowed by an administrator, a name must be a module class or a marked builder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEPTON_MODEL_BUILDERS", "builtins:print")
        manifest.construction.target = "builtins:print"
        with pytest.raises(ConfigError, match="not a torch.nn.Module or a Lepton model builder"):
            serialize_module.deserialize(payload, manifest)


def test_recorded_init_kwargs_decorator(registry):
    model = Recorded(8, depth=3, note="x")
    assert model.init_kwargs == {"width": 8, "depth": 3, "note": "x"}
    manifest = registry.publish(model, name="rec", team="finance", user="bob")
    loaded = registry.load("rec", team="finance").model
    assert len(loaded.layers) == 3 and manifest.construction.kwargs["note"] == "x"


def test_explicit_init_kwargs_for_a_module_that_records_none(registry):
    registry.publish(NeedsArgs(4), name="needs", team="finance", user="bob", init_kwargs={"n": 4})
    assert registry.load("needs", team="finance").model.fc.in_features == 4


def test_bytes_and_file_round_trip(registry, tmp_path):
    registry.publish(b"\x00tokenizer", name="tok", team="finance", user="alice")
    assert registry.load("tok", team="finance").model == b"\x00tokenizer"
    path = tmp_path / "weights.onnx"
    path.write_bytes(os.urandom(5000))
    manifest = registry.publish(path, name="onnx", team="finance", user="alice")
    assert manifest.framework == "bytes" and manifest.artifact.size == 5000
    assert registry.load("onnx", team="finance").model == path.read_bytes()


def test_download_gives_native_format_bytes(registry, booster, tmp_path):
    manifest = registry.publish(booster, name="fraud", team="finance", user="alice")
    path = registry.download("fraud", "finance", 1, dest=tmp_path)
    assert path.name == "fraud-v1.ubj"
    assert path.read_bytes() == bytes(booster.save_raw("ubj"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert registry.verify("fraud", "finance") == manifest


# ------------------------------------------------------------------ refusals


def test_module_defined_in_a_function_is_refused(registry):
    class Local(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="inside a function"):
        registry.publish(Local(), name="local", team="finance", user="bob")


def test_module_that_cannot_be_rebuilt_is_refused(registry, mlp):
    with pytest.raises(ConfigError, match="init_kwargs"):
        registry.publish(NeedsArgs(3), name="x", team="finance", user="bob")
    with pytest.raises(ConfigError, match="different structure"):
        registry.publish(
            mlp, name="x", team="finance", user="bob", init_kwargs={"n_in": 30, "hidden": 99}
        )
    with pytest.raises(ConfigError):
        registry.publish(
            torch.nn.Sequential(torch.nn.Linear(2, 2)), name="x", team="finance", user="bob"
        )
    with pytest.raises(ConfigError, match="ReLU"):
        registry.publish(
            NeedsArgs(3), name="x", team="finance", user="bob", init_kwargs={"n": torch.nn.ReLU()}
        )
    with pytest.raises(ConfigError):
        registry.publish(object(), name="x", team="finance", user="bob")
    assert registry.models("finance") == []


@pytest.mark.parametrize(
    "bad", ["../etc", "a/b", "", ".hidden", "Fraud", "x" * 65, "fraud\n", "..", "-x"]
)
def test_bad_names_are_config_errors(registry, tmp_path, bad):
    with pytest.raises(ConfigError):
        registry.publish(b"x", name=bad, team="finance", user="alice")
    with pytest.raises(ConfigError):
        registry.publish(b"x", name="ok", team=bad, user="alice")
    with pytest.raises(ConfigError):
        registry.load(bad, team="finance")
    with pytest.raises(ConfigError):
        registry.models(bad)
    assert {p.name for p in tmp_path.iterdir()} <= {"keys", "registry"}
    root = registry.root
    assert not root.exists(), sorted(p.name for p in root.iterdir())  # refused before anything is written


def test_bad_aliases_tags_and_users_are_config_errors(registry):
    registry.publish(b"x", name="m", team="finance", user="alice")
    for alias in ["3", "../prod", "Prod", ""]:
        with pytest.raises(ConfigError):
            registry.set_alias("m", "finance", alias, 1)
    with pytest.raises(ConfigError):
        registry.tag("m", "finance", 1, "has space")
    with pytest.raises(ConfigError):
        registry.publish(b"x", name="m", team="finance", user="../root")
    with pytest.raises(ConfigError):
        registry.publish(
            b"x", name="m", team="finance", user="alice", metrics={"auc": float("nan")}
        )


def test_parse_ref():
    assert parse_ref("fraud") == ("fraud", None, None)
    assert parse_ref("fraud@3") == ("fraud", 3, None)
    assert parse_ref("fraud@production") == ("fraud", None, "production")
    for bad in ["fraud@", "fraud@0", "Fraud@1", "../x@1", "fraud@3@4", "fraud@Prod"]:
        with pytest.raises(ConfigError):
            parse_ref(bad)


# ------------------------------------------------------------------ not found and teams


def test_unknown_model_version_alias_are_not_found(registry):
    registry.publish(b"x", name="m", team="finance", user="alice")
    with pytest.raises(NotFound):
        registry.load("nope", team="finance")
    with pytest.raises(NotFound):
        registry.load("m@7", team="finance")
    with pytest.raises(NotFound):
        registry.load("m", team="finance", alias="production")
    with pytest.raises(NotFound):
        registry.versions("nope", "finance")


def test_other_teams_models_are_simply_not_found(registry):
    registry.publish(b"x", name="fraud", team="finance", user="alice")
    with pytest.raises(NotFound) as err:
        registry.load("fraud", team="medical")
    assert "finance" not in str(err.value)
    assert registry.models("medical") == []
    assert [m.name for m in registry.models("finance")] == ["fraud"]


def test_a_model_copied_to_another_team_does_not_load(registry):
    import shutil

    registry.publish(b"x", name="fraud", team="finance", user="alice")
    shutil.copytree(registry.root / "finance" / "fraud", registry.root / "medical" / "fraud")
    with pytest.raises(IntegrityError):
        registry.load("fraud", team="medical")


def test_wrong_keys_are_integrity_errors(registry, tmp_path):
    registry.publish(b"secret", name="fraud", team="finance", user="alice")
    stranger = Registry(registry.root, KeyRing(tmp_path / "other-keys"))
    with pytest.raises(IntegrityError):
        stranger.load("fraud", team="finance")
    (registry.keyring.directory / "teams" / "finance.key").write_bytes(os.urandom(32))
    with pytest.raises(IntegrityError):
        registry.load("fraud", team="finance")


# ------------------------------------------------------------------ tampering


@pytest.fixture
def never_deserialised(monkeypatch):
    calls = []
    real = serialize_module.deserialize

    def spy(payload, manifest):
        calls.append(manifest.ref)
        return real(payload, manifest)

    monkeypatch.setattr(serialize_module, "deserialize", spy)
    return calls


def flip_each(path, positions, seed, check):
    original = path.read_bytes()
    rng = random.Random(seed)
    try:
        for pos in positions:
            changed = bytearray(original)
            changed[pos] ^= rng.randrange(1, 256)
            path.write_bytes(bytes(changed))
            check(pos)
    finally:
        path.write_bytes(original)


def test_changed_bytes_anywhere_never_load(registry, booster, never_deserialised):
    registry.publish(booster, name="fraud", team="finance", user="alice")
    vdir = version_dir(registry, "fraud", 1)
    rng = random.Random(1234)

    def must_fail(pos):
        with pytest.raises(IntegrityError):
            registry.load("fraud", team="finance")

    artifact = vdir / "artifact.enc"
    assert artifact.stat().st_size > 5 * 1024  # several 1 KiB chunks
    flip_each(artifact, rng.sample(range(artifact.stat().st_size), 300), 1, must_fail)
    manifest = vdir / "manifest.json"
    flip_each(manifest, rng.sample(range(manifest.stat().st_size), 200), 2, must_fail)
    flip_each(vdir / "manifest.sig", range(64), 3, must_fail)
    assert never_deserialised == []
    registry.load("fraud", team="finance")  # restored: loads again
    assert never_deserialised == ["fraud@1"]


def test_truncated_extended_or_reordered_artifact_never_loads(
    registry, booster, never_deserialised
):
    registry.publish(booster, name="fraud", team="finance", user="alice")
    artifact = version_dir(registry, "fraud", 1) / "artifact.enc"
    original = artifact.read_bytes()
    block = 1024 + TAG_SIZE
    (header_length,) = struct.unpack(">I", original[len(MAGIC) : len(MAGIC) + 4])
    chunks_at = len(MAGIC) + 4 + header_length
    body = original[chunks_at:]
    chunks = [body[i : i + block] for i in range(0, len(body), block)]
    assert len(chunks) >= 5
    variants = [
        original[:-1],
        original[: chunks_at + block],
        original + b"\x00",
        original[:chunks_at] + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        original[:chunks_at] + b"".join(chunks[:2] + chunks[3:]),
    ]
    for variant in variants:
        artifact.write_bytes(variant)
        with pytest.raises(IntegrityError):
            registry.load("fraud", team="finance")
    assert never_deserialised == []


def test_files_swapped_between_versions_never_load(registry):
    registry.publish(b"version one", name="m", team="finance", user="alice")
    registry.publish(b"version two", name="m", team="finance", user="alice")
    v1, v2 = version_dir(registry, "m", 1), version_dir(registry, "m", 2)
    v2_artifact = (v2 / "artifact.enc").read_bytes()
    (v2 / "artifact.enc").write_bytes((v1 / "artifact.enc").read_bytes())
    with pytest.raises(IntegrityError):
        registry.load("m@2", team="finance")
    (v2 / "artifact.enc").write_bytes(v2_artifact)
    for name in ("manifest.json", "manifest.sig"):
        (v2 / name).write_bytes((v1 / name).read_bytes())
    with pytest.raises(IntegrityError, match="moved or copied"):
        registry.load("m@2", team="finance")


# ------------------------------------------------------------------ concurrency


def _publish_many(root, keys, start, count):
    registry = Registry(root, KeyRing(keys))
    for i in range(start, start + count):
        registry.publish(f"payload-{i}".encode(), name="shared", team="finance", user="alice")


def check_consistent(registry: Registry, n: int) -> None:
    entries = registry.versions("shared", "finance")
    assert [e.version for e in entries] == list(range(1, n + 1))
    assert sorted(os.listdir(registry.root / "finance" / "shared" / "versions"), key=int) == [
        str(i) for i in range(1, n + 1)
    ]
    index = json.loads((registry.root / "finance" / "shared" / "index.json").read_bytes())
    assert index["last_version"] == n
    payloads = {
        bytes(registry.load("shared", team="finance", version=v).model) for v in range(1, n + 1)
    }
    assert payloads == {f"payload-{i}".encode() for i in range(n)}
    assert os.listdir(registry.root / "finance" / ".staging") == []


def test_concurrent_publishes_from_threads(registry):
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(
                registry.publish,
                f"payload-{i}".encode(),
                name="shared",
                team="finance",
                user="alice",
            )
            for i in range(20)
        ]
        versions = sorted(f.result().version for f in futures)
    assert versions == list(range(1, 21))
    check_consistent(registry, 20)


def test_concurrent_publishes_from_processes(registry):
    # fork: the children only publish bytes, and skip re-importing torch and xgboost.
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_publish_many, args=(registry.root, registry.keyring.directory, 5 * p, 5)
        )
        for p in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    check_consistent(registry, 20)


# ------------------------------------------------------------------ failures leave nothing


class Boom(RuntimeError):
    pass


def test_failure_while_serialising_leaves_nothing(registry, monkeypatch):
    registry.publish(b"first", name="m", team="finance", user="alice")
    before = snapshot(registry, "m")

    def half_written(obj, *, init_kwargs=None):
        def write(w):
            w.write(os.urandom(3000))
            raise Boom("serialiser crashed")

        return serialize_module.Serialized("bytes", "", "bytes", ".bin", write)

    monkeypatch.setattr(serialize_module, "serialize", half_written)
    with pytest.raises(Boom):
        registry.publish(b"second", name="m", team="finance", user="alice")
    assert snapshot(registry, "m") == before
    monkeypatch.undo()
    assert registry.publish(b"third", name="m", team="finance", user="alice").version == 2


def test_failure_while_encrypting_leaves_nothing(registry, monkeypatch):
    registry.publish(b"first", name="m", team="finance", user="alice")
    before = snapshot(registry, "m")
    real_seal, calls = SealedWriter._seal, []

    def failing_seal(self, chunk, *, final):
        calls.append(final)
        if len(calls) == 3:
            raise Boom("cipher failed")
        return real_seal(self, chunk, final=final)

    monkeypatch.setattr(SealedWriter, "_seal", failing_seal)
    with pytest.raises(Boom):
        registry.publish(os.urandom(10_000), name="m", team="finance", user="alice")
    assert snapshot(registry, "m") == before


def test_failure_on_a_new_model_leaves_no_model(registry, monkeypatch):
    monkeypatch.setattr(
        store_module, "sign_manifest", lambda *a: (_ for _ in ()).throw(Boom("no key"))
    )
    with pytest.raises(Boom):
        registry.publish(b"x", name="fresh", team="finance", user="alice")
    assert not (registry.root / "finance" / "fresh").exists()
    assert registry.models("finance") == []
    assert os.listdir(registry.root / "finance" / ".staging") == []


def test_failure_while_updating_the_index_takes_the_version_back(registry, monkeypatch):
    registry.publish(b"first", name="m", team="finance", user="alice")
    before = snapshot(registry, "m")
    monkeypatch.setattr(
        store_module, "write_atomic", lambda *a, **k: (_ for _ in ()).throw(Boom("disk full"))
    )
    with pytest.raises(Boom):
        registry.publish(b"second", name="m", team="finance", user="alice")
    assert snapshot(registry, "m") == before
    monkeypatch.undo()
    assert registry.publish(b"third", name="m", team="finance", user="alice").version == 2


def test_leftovers_of_a_killed_publish_are_swept_later(registry):
    registry.publish(b"x", name="m", team="finance", user="alice")
    old = registry.root / "finance" / ".staging" / "0123456789abcdef"
    old.mkdir()
    (old / "artifact.enc").write_bytes(b"half")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    recent = registry.root / "finance" / ".staging" / "fedcba9876543210"
    recent.mkdir()  # a publish still running elsewhere: left alone
    registry.publish(b"y", name="m", team="finance", user="alice")
    assert os.listdir(registry.root / "finance" / ".staging") == [recent.name]


# ------------------------------------------------------------------ aliases, tags, deletion


def test_aliases_tags_and_listing(registry):
    for i in range(3):
        registry.publish(f"v{i}".encode(), name="m", team="finance", user="alice", tags=["nightly"])
    registry.set_alias("m", "finance", "production", 2)
    assert registry.load("m@production", team="finance").model == b"v1"
    assert registry.load("m", team="finance").model == b"v2"  # latest by default
    assert registry.tag("m", "finance", 2, "approved") == ["approved", "nightly"]
    assert registry.tag("m", "finance", 2, "nightly", remove=True) == ["approved"]
    assert registry.manifest("m", "finance", 2).tags == ["nightly"]  # signed tags stay
    [summary] = registry.models("finance")
    assert (summary.latest_version, summary.versions, summary.aliases) == (3, 3, {"production": 2})
    registry.remove_alias("m", "finance", "production")
    with pytest.raises(NotFound):
        registry.load("m@production", team="finance")


def test_delete_version_respects_aliases_and_never_reuses_numbers(registry):
    for i in range(3):
        registry.publish(f"v{i}".encode(), name="m", team="finance", user="alice")
    registry.set_alias("m", "finance", "production", 3)
    with pytest.raises(ConfigError, match="production"):
        registry.delete_version("m", "finance", 3)
    registry.delete_version("m", "finance", 3, force=True)
    registry.delete_version("m", "finance", 1)
    assert [e.version for e in registry.versions("m", "finance")] == [2]
    assert registry.aliases("m", "finance") == {}
    assert sorted(os.listdir(registry.root / "finance" / "m" / "versions")) == ["2"]
    with pytest.raises(NotFound):
        registry.delete_version("m", "finance", 1)
    assert registry.publish(b"v3", name="m", team="finance", user="alice").version == 4
    assert os.listdir(registry.root / "finance" / ".staging") == []


def test_input_schema_from_a_dataframe():
    frame, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    schema = InputSchema.from_example(frame)
    assert (
        schema.names[0] == "mean radius"
        and schema.dtypes[0] == "float64"
        and schema.shape == [None, 30]
    )
    assert Lineage.coerce({"parent_version": 2}).parent_version == 2


# ------------------------------------------------------------------ loading without copies


class WithScale(torch.nn.Module):
    """Keeps a buffer outside its state_dict: only a real build fills it in."""

    def __init__(self, n_in: int = 30):
        super().__init__()
        self.init_kwargs = {"n_in": n_in}
        self.fc = torch.nn.Linear(n_in, 2)
        self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)

    def forward(self, x):
        return self.fc(x) * self.scale


class Tied(torch.nn.Module):
    """Its output layer shares the input layer's weight."""

    def __init__(self, n: int = 30):
        super().__init__()
        self.init_kwargs = {"n": n}
        self.inp = torch.nn.Linear(n, n, bias=False)
        self.out = torch.nn.Linear(n, n)
        self.out.weight = self.inp.weight

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)))


def _same_outputs(a, b, x) -> bool:
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return torch.equal(a(xt), b(xt))


def test_loaded_module_owns_real_trainable_weights(registry, mlp, data):
    x, _ = data
    registry.publish(mlp, name="mlp", team="finance", user="bob")
    model = registry.load("mlp", team="finance").model
    assert _same_outputs(model, mlp, x) and not model.training
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(dict(mlp.named_parameters()))
    for name, p in params.items():
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad, name
        assert p.device.type == "cpu" and p.dtype == torch.float32, name
    # Trainable as built: a step changes the weights.
    loss = model(torch.from_numpy(x)).sum()
    loss.backward()
    assert all(p.grad is not None for p in params.values())


def test_a_module_the_meta_device_cannot_fill_in_still_loads(registry, data):
    x, _ = data
    torch.manual_seed(3)
    original = WithScale().eval()
    registry.publish(original, name="odd", team="finance", user="bob")
    model = registry.load("odd", team="finance").model
    assert type(model) is WithScale and _same_outputs(model, original, x)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.scale, torch.full((2,), 3.0))


def test_weights_of_the_wrong_shape_are_a_config_error(registry, mlp, monkeypatch):
    registry.publish(mlp, name="mlp", team="finance", user="bob")
    manifest = registry.manifest("mlp", "finance")
    monkeypatch.setattr(manifest.construction, "kwargs", {"n_in": 30, "hidden": 8, "n_out": 2})
    payload = serialize_module.to_payload(mlp)[0]
    with pytest.raises(ConfigError, match="do not fit"):
        serialize_module.deserialize(payload, manifest)


def test_loaded_tensors_do_not_share_memory_with_the_payload(mlp):
    payload = bytearray(serialize_module.to_payload(mlp)[0])
    state = serialize_module._torch_load(payload, torch)
    payload[:] = bytes(len(payload))  # the decrypted buffer is reused or freed after loading
    for key, value in mlp.state_dict().items():
        assert torch.equal(state[key], value), key


def test_buffer_reader_reads_seeks_and_stops_at_the_end():
    reader = serialize_module._BufferReader(bytearray(b"0123456789"))
    assert reader.read(4) == b"0123" and reader.tell() == 4
    assert reader.seek(-2, os.SEEK_END) == 8 and reader.read(10) == b"89" and reader.read(1) == b""
    assert reader.seek(1, os.SEEK_SET) == 1 and reader.seek(2, os.SEEK_CUR) == 3
    buf = bytearray(3)
    assert reader.readinto(buf) == 3 and buf == b"345"
    with pytest.raises(ValueError):
        reader.seek(-1)


def test_changed_bytes_in_a_torch_artifact_never_load(registry, mlp, never_deserialised):
    registry.publish(mlp, name="mlp", team="finance", user="bob")
    artifact = version_dir(registry, "mlp", 1) / "artifact.enc"
    assert artifact.stat().st_size > 3 * 1024

    def must_fail(pos):
        with pytest.raises(IntegrityError):
            registry.load("mlp", team="finance")

    flip_each(artifact, random.Random(7).sample(range(artifact.stat().st_size), 60), 4, must_fail)
    assert never_deserialised == []
    registry.load("mlp", team="finance")
    assert never_deserialised == ["mlp@1"]


def _traced_peak(fn):
    """Peak bytes allocated through Python's allocators while ``fn`` runs (torch's own
    tensor storage is not counted: what is left is copies of the payload)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_load_holds_the_payload_once(registry):
    big = Recorded(256, depth=4)  # ~1 MB of weights
    size = sum(t.numel() * t.element_size() for t in big.state_dict().values())
    registry.publish(big, name="big", team="finance", user="bob")
    loaded, peak = _traced_peak(lambda: registry.load("big", team="finance").model)
    assert peak < 1.5 * size, (peak, size)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), big.state_dict().values()))


def test_public_publish_streams_into_the_registry(registry, monkeypatch, data):
    import importlib

    from lepton_lab.embedded import EmbeddedTransport
    from lepton_lab.security.identity import local_user
    from lepton_lab.security.policy import default_policy
    from lepton_lab.services import Services

    models_module = importlib.import_module("lepton_lab.models")

    # The in-process door: the services (policy, audit) with this registry behind them.
    services = Services(default_policy(local_user()), keep_records=False)
    services._registry = registry
    transport = EmbeddedTransport(services)

    class Local:
        def __init__(self):
            self.transport = transport

        def get(self):
            raise LookupError("no cluster")

    monkeypatch.setattr(models_module, "session", Local)

    def no_copies(self):
        raise AssertionError("the whole payload was copied into memory")

    monkeypatch.setattr(serialize_module.Serialized, "to_bytes", no_copies)
    models_module.publish(Recorded(4), "warm-up", team="finance")  # imports are not copies
    big = Recorded(256, depth=4)
    size = sum(t.numel() * t.element_size() for t in big.state_dict().values())
    manifest, peak = _traced_peak(lambda: models_module.publish(big, "streamed", team="finance"))
    assert manifest["version"] == 1 and manifest["artifact"]["size"] > size
    assert peak < 0.5 * size, (peak, size)
    loaded = registry.load("streamed", team="finance").model
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), big.state_dict().values()))


def test_tied_weights_stay_tied(registry, data):
    x, _ = data
    torch.manual_seed(5)
    original = Tied().eval()
    registry.publish(original, name="tied", team="finance", user="bob")
    model = registry.load("tied", team="finance").model
    assert model.out.weight is model.inp.weight and _same_outputs(model, original, x)
    assert len(list(model.parameters())) == len(list(original.parameters())) == 2
