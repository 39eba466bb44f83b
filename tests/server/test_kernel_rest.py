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
