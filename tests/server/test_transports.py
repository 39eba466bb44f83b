"""The same behaviour through both doors to the services: in this process, and over REST.

Each test runs twice: with :class:`EmbeddedTransport` (the services in the kernel's own
process, as plain IPython has them) and with :class:`RestTransport` (the Jupyter
server's extension). Both ask as the local user, admin under the test policy.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest

import lepton_lab
from lepton_lab import session as session_mod
from lepton_lab.cluster.workers import workers_now
from lepton_lab.embedded import EmbeddedTransport
from lepton_lab.errors import AlreadyExists, ConfigError, NoGPUError, NotFound, QuotaExceeded
from lepton_lab.rest import RestTransport, ServerInfo
from tests.fake_gpu import install_fake_dask_cuda
from tests.helpers import fake_nvml

run = asyncio.to_thread


@pytest.fixture(params=["embedded", "rest"])
def door(request, jp_serverapp, jp_fetch, jp_http_port, jp_base_url, monkeypatch):
    # jp_fetch brings up the listening HTTP server the REST transport talks to.
    if request.param == "rest":
        server = ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", jp_serverapp.identity_provider.token,
                            "test")
        transport: object = RestTransport(server)
    else:
        transport = EmbeddedTransport()
    sess = session_mod.Session(transport)
    monkeypatch.setattr(session_mod, "_session", sess)
    monkeypatch.setenv("LEPTON_TEAM", "medical")
    yield request.param
    sess.close_all()
    if isinstance(transport, EmbeddedTransport):
        transport.close()
    monkeypatch.setattr(session_mod, "_session", None)


def _audit_lines(home, action: str) -> list[dict]:
    return [e for e in map(json.loads, (home / "audit.jsonl").read_text().splitlines()) if e["action"] == action]


async def test_up_scale_down_with_tls_quota_and_audit(door, lepton_home):
    handle = await run(lepton_lab.up, name=f"both-{door}", cloud=1, edge=1)
    try:
        assert handle.address.startswith("tls://")  # TLS with or without a server
        assert handle.info["team"] == "medical" and handle.info["owner"]
        assert await run(lambda: handle.client.submit(lambda: 6 * 7, pure=False).result()) == 42
        await run(lepton_lab.scale, 2, "edge")
        listed = {c["name"]: c for c in await run(session_mod.session().transport.list)}
        assert {s["name"]: s["workers"] for s in listed[f"both-{door}"]["sites"]} == {"cloud": 1, "edge": 2}
        # The policy's quota holds the same way, the same error type through both doors:
        # a user may hold 8 workers (quotas.default_user).
        with pytest.raises(QuotaExceeded, match="may hold 8 workers"):
            await run(lepton_lab.scale, 200, "edge")
    finally:
        await run(lepton_lab.down, f"both-{door}")
    created = [e for e in _audit_lines(lepton_home, "clusters:create") if e["outcome"] == "allow"]
    assert created and created[-1]["detail"]["team"] == "medical"
    assert [e for e in _audit_lines(lepton_home, "clusters:scale") if e["outcome"] == "deny"]


async def test_gpus_auto_takes_every_free_gpu(door, monkeypatch, tmp_path, jp_serverapp):
    # The fake GPUs exist in this process only: the server's clusters run their schedulers here, not
    # apart (where the workers would look for GPUs themselves and rightly find none).
    monkeypatch.setattr(jp_serverapp.web_app.settings["lepton"], "out_of_process", False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(2))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    install_fake_dask_cuda(tmp_path, monkeypatch)
    handle = await run(lambda: lepton_lab.up("hybrid", name=f"auto-{door}", edge=0, gpus="auto", memory="512MiB"))
    try:
        assert [s["gpus"] for s in handle.info["sites"] if s["kind"] == "cloud"] == [2]
        workers = await run(lambda: workers_now(handle.client).values())
        assert sorted(w["resources"].get("GPU", 0) for w in workers) == [1, 1]
    finally:
        await run(lepton_lab.down, f"auto-{door}")


@pytest.mark.parametrize("options, words", [
    ({"cloud": -1}, "workers.cloud: must be a whole number from 0 to 256, got -1"),
    ({"edge": 2.5}, "workers.edge: must be a whole number from 0 to 256, got 2.5"),
    ({"gpus": 65}, "gpus: a whole number from 0 to 64, or auto (every free GPU); got 65"),
    ({"threads": 0}, "threads: must be a whole number from 1 to 256, got 0"),
])
async def test_bad_options_are_refused_in_one_line(door, options, words):
    # The services check the request against the schema GET profiles serves, whichever door it came by.
    with pytest.raises(ConfigError) as e:
        await run(lambda: lepton_lab.up(name=f"bad-{door}", **options))
    assert str(e.value) == words
    assert not [c for c in await run(session_mod.session().transport.list) if c["name"] == f"bad-{door}"]


async def test_errors_keep_their_type_through_both_doors(door, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(0))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(NoGPUError, match="GPU"):  # a 400 like ConfigError, and still a ClusterError
        await run(lambda: lepton_lab.up(name=f"nogpu-{door}", gpus=1, edge=0))
    with pytest.raises(NotFound):
        await run(lambda: session_mod.session().transport.info("no-such-cluster"))


async def test_a_stopped_cluster_starts_again_from_the_kernel(door, jp_serverapp):
    from lepton_lab.services.watch import stop_idle

    sess = session_mod.session()
    services = jp_serverapp.web_app.settings["lepton"] if door == "rest" else sess.transport.services
    handle = await run(lepton_lab.up, name=f"again-{door}", cloud=0, edge=1)
    await run(lepton_lab.scale, 2, "edge")
    await run(stop_idle, services, services.manager.get(handle.id), 3600.0, (1800.0, "team medical"))
    [stopped] = [c for c in await run(sess.transport.list) if c["name"] == f"again-{door}"]
    assert stopped["status"] == "stopped"
    again = await run(lepton_lab.start_again, f"again-{door}")
    try:
        assert again.id != handle.id and again.info["team"] == "medical" and again.info["redeployed"] == []
        assert {s["name"]: s["workers"] for s in again.info["sites"]} == {"cloud": 0, "edge": 2}
        assert await run(lambda: again.client.submit(lambda: 6 * 7, pure=False).result()) == 42
        assert lepton_lab.current() is again and handle.closed  # the stale handle let go, nothing stopped
        with pytest.raises(AlreadyExists, match=f"cluster again-{door} is running"):
            await run(lepton_lab.start_again, f"again-{door}")
    finally:
        await run(lepton_lab.down, f"again-{door}")
    with pytest.raises(NotFound):
        await run(lepton_lab.start_again, "never-was")


async def test_publish_then_load_the_same_model(door, lepton_home):
    xgb = pytest.importorskip("xgboost")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y)
    manifest = await run(lambda: lepton_lab.publish(model, f"net-{door}", team="medical", alias="staging"))
    assert manifest["version"] == 1 and manifest["team"] == "medical"
    loaded = await run(lambda: lepton_lab.load(f"net-{door}@staging", team="medical"))
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    names = [m["name"] for m in await run(lambda: lepton_lab.models("medical"))]
    assert f"net-{door}" in names
    assert [e for e in _audit_lines(lepton_home, "models:publish") if e["resource"].endswith(f"net-{door}@1")]


async def test_train_on_the_cluster(door):
    pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32)
    handle = await run(lepton_lab.up, name=f"train-{door}", cloud=1, edge=1)
    try:
        result = await run(lambda: lepton_lab.train("xgboost", data=(X, y), name=f"fraud-{door}", site="cloud",
                                                    params={"max_depth": 3}, rounds=10, progress=False))
        assert result.metrics["auc"] > 0.9
        assert handle.client.status == "running"
    finally:
        await run(lepton_lab.down, f"train-{door}")


async def test_a_machine_joins_a_site_with_the_worker_certificate(door, tmp_path):
    import subprocess

    handle = await run(lepton_lab.up, name=f"join-{door}", cloud=1, edge=0)
    joiner = None
    try:
        args = await run(lambda: lepton_lab.worker_certificate("edge-clinic-c", tmp_path / "certs"))
        assert (tmp_path / "certs" / "edge-clinic-c-worker-key.pem").stat().st_mode & 0o077 == 0
        joiner = subprocess.Popen([sys.executable, "-m", "lepton_lab.cli", "worker", *args, "--nthreads", "1",
                                   "--memory-limit", "512MiB", "--index", "0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await run(handle.client.wait_for_workers, 2, 120)
        where = await run(lambda: lepton_lab.run_on("edge-clinic-c", "import distributed\n"
                                                    "print(distributed.get_worker().name)"))
        assert "edge-clinic-c-0" in str(where)
    finally:
        if joiner is not None:
            joiner.terminate()
            joiner.wait(timeout=60)
        await run(lepton_lab.down, f"join-{door}")


async def test_worker_certificates_follow_the_scale_rule(as_user):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    try:
        code, err = await as_user("vera", "lepton", "api", "clusters", c["id"], "worker-certificate",
                                  method="POST", body={"site": "edge-x"})
        assert code == 403, err
        code, err = await as_user("bob", "lepton", "api", "clusters", c["id"], "worker-certificate",
                                  method="POST", body={"site": "edge-x"})
        assert code == 404, err
        code, err = await as_user("alice", "lepton", "api", "clusters", c["id"], "worker-certificate",
                                  method="POST", body={"site": "bad site!"})
        assert code == 400 and "site" in err["message"], err
        code, cert = await as_user("alice", "lepton", "api", "clusters", c["id"], "worker-certificate",
                                   method="POST", body={"site": "edge-x"})
        assert code == 200 and cert["site"] == "edge-x" and "BEGIN CERTIFICATE" in cert["cert_pem"]
    finally:
        await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")


def _site_data(site):
    import numpy as np

    rng = np.random.default_rng(0 if site.endswith("a") else 1)
    X = rng.normal(size=(120, 4)).astype("float32")
    return X, (X[:, 0] > 0).astype("float32")


async def test_federate_over_two_edge_sites(door):
    torch = pytest.importorskip("torch")
    profile = {"name": f"fl-{door}", "sites": [
        {"name": "edge-site-a", "kind": "edge", "workers": 1, "memory": "512MiB"},
        {"name": "edge-site-b", "kind": "edge", "workers": 1, "memory": "512MiB"}]}
    await run(lambda: lepton_lab.up(profile, name=f"fl-{door}"))
    try:
        torch.manual_seed(0)
        result = await run(lambda: lepton_lab.federate(torch.nn.Linear(4, 1), loader=_site_data,
                                                       sites=["edge-site-a", "edge-site-b"], rounds=2,
                                                       progress=False, round_timeout=120))
        assert result.completed_rounds == 2, [(r.round, r.skipped, r.dropped) for r in result.history]
        assert sorted(result.history[-1].sites) == ["edge-site-a", "edge-site-b"]
    finally:
        await run(lepton_lab.down, f"fl-{door}")
