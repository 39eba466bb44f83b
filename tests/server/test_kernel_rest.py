"""A kernel inside a Jupyter server goes through the REST API with the user's own identity."""

import asyncio

import pytest

import lepton_lab
from lepton_lab import session as session_mod
from lepton_lab.errors import NotFound, PermissionDenied
from lepton_lab.rest import RestTransport, ServerInfo, find_server


@pytest.fixture
def rest_session(jp_serverapp, jp_fetch, jp_http_port, jp_base_url, tokens, monkeypatch):
    # jp_fetch brings up the listening HTTP server the transport talks to.
    def make(user):
        token = tokens[user] if user != "admin" else jp_serverapp.identity_provider.token
        server = ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", token, "test")
        sess = session_mod.Session(RestTransport(server))
        monkeypatch.setattr(session_mod, "_session", sess)
        return sess
    yield make
    monkeypatch.setattr(session_mod, "_session", None)


async def test_up_scale_down_through_the_server(rest_session, as_user):
    rest_session("alice")
    run = asyncio.to_thread
    handle = await run(lepton_lab.up, name="from-kernel", cloud=1, edge=1)
    assert handle.address.startswith("tls://") and handle.info["owner"] == "alice"
    assert await run(lambda: handle.client.submit(lambda: 6 * 7, pure=False).result()) == 42
    snap = await run(handle.snapshot)
    assert {w.site for w in snap.workers} == {"cloud", "edge"}
    await run(lepton_lab.scale, 2, "edge")
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    assert {s["name"]: s["workers"] for s in listing["clusters"][0]["sites"]} == {"cloud": 1, "edge": 2}
    again = await run(lepton_lab.up, name="from-kernel")
    assert again.address == handle.address
    await run(lepton_lab.down, "from-kernel")
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    assert listing == {"clusters": []}


async def test_connect_cluster_uses_issued_certificate(rest_session, as_user):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    rest_session("admin")
    handle = await asyncio.to_thread(lepton_lab.connect_cluster, c["id"])
    assert await asyncio.to_thread(lambda: handle.client.submit(lambda: 1, pure=False).result()) == 1
    await asyncio.to_thread(lepton_lab.down)
    code, still = await as_user("alice", "lepton", "api", "clusters", c["id"])
    assert code == 200 and still["status"] == "running"  # joined, not owned: left running
    rest_session("bob")
    with pytest.raises(NotFound):
        await asyncio.to_thread(lepton_lab.connect_cluster, c["id"])
    rest_session("vera")
    with pytest.raises(PermissionDenied, match="clusters:use"):
        await asyncio.to_thread(lepton_lab.connect_cluster, c["id"])


async def test_refusals_reach_the_kernel_as_one_line(rest_session):
    rest_session("bob")
    with pytest.raises(PermissionDenied, match="user bob may hold 3 workers"):
        await asyncio.to_thread(lepton_lab.up, name="too-big")
    rest_session("vera")
    with pytest.raises(PermissionDenied):
        await asyncio.to_thread(lepton_lab.up, name="viewer")


def test_server_discovery(monkeypatch):
    for var in ("LEPTON_SERVER_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL", "JPY_PARENT_PID"):
        monkeypatch.delenv(var, raising=False)
    assert find_server() is None
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hubtok")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:9/user/carol/")
    s = find_server()
    assert s.token == "hubtok" and s.how == "jupyterhub"
    monkeypatch.setenv("LEPTON_SERVER_URL", "http://127.0.0.1:9/")
    assert find_server().how == "environment"


async def test_a_study_kept_by_the_server_continues_from_another_kernel(rest_session, as_user, jp_serverapp):
    from lepton_lab.errors import ConfigError

    run = asyncio.to_thread

    def optimize(study, n):
        study.optimize(lambda t: -(t.suggest_float("x", -2.0, 2.0) - 0.5) ** 2, n_trials=n)
        return len(study.trials)

    team, study = await run(rest_session("alice").transport.study, "medical", "hpo-rest", direction="maximize")
    assert team == "medical" and await run(optimize, study, 3) == 3
    # Another kernel of alice's continues it: the journal is the server's, not the kernel's.
    _, again = await run(rest_session("alice").transport.study, None, "hpo-rest", direction="maximize")
    assert await run(optimize, again, 2) == 5
    assert (jp_serverapp.web_app.settings["lepton"].home / "studies" / "medical" / "hpo-rest.log").is_file()
    with pytest.raises(ConfigError, match="stored to maximize"):
        await run(rest_session("alice").transport.study, "medical", "hpo-rest", direction="minimize")
    # bob (finance) may not open medical's studies; vera (a viewer) may run no trials.
    for who in ("bob", "vera"):
        with pytest.raises(PermissionDenied):
            await run(rest_session(who).transport.study, "medical", "hpo-rest", direction="maximize")
    code, err = await as_user("alice", "lepton", "api", "studies", "medical", "hpo-rest", "journal",
                              method="POST", body={"logs": [{"not": "an operation"}]})
    assert code == 400 and "op_code" in err["message"]
    code, err = await as_user("alice", "lepton", "api", "studies", "medical", "hpo-rest", "journal",
                              params={"from": "-1"})
    assert code == 400
    _, log = await as_user("admin", "lepton", "api", "audit", params={"resource": "studies:medical/hpo-rest"})
    assert {(e["user"], e["outcome"]) for e in log["entries"]} >= {("alice", "allow"), ("bob", "deny")}
