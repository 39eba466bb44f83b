"""A cluster's Dask dashboard through the Jupyter server, under the user's identity."""

import json

import pytest
from jupyter_server.utils import url_path_join
from tornado import httpclient, websocket


async def start_ward(as_user) -> dict:
    """A medical cluster alice starts through the REST API."""
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "name": "ward",
                                  "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    return c


async def test_pages_come_through_the_proxy(as_user, jp_fetch, tokens, jp_base_url, lepton_home):
    ward = await start_ward(as_user)
    # The REST API names the proxied page, under the server's base URL.
    assert ward["dashboard_link"] == url_path_join(jp_base_url, "lepton", "dashboard", ward["id"], "status")
    alice = {"Authorization": f"token {tokens['alice']}"}
    r = await jp_fetch("lepton", "dashboard", ward["id"], "status", headers=alice)
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    assert 'href="individual-task-stream"' in page and "static/js/bokeh.min.js" in page
    # A bokeh pane, its script and a static file resolve below the same prefix.
    r = await jp_fetch("lepton", "dashboard", ward["id"], "individual-task-stream", headers=alice)
    assert r.code == 200 and "Bokeh.embed.embed_items" in r.body.decode()
    r = await jp_fetch("lepton", "dashboard", ward["id"], "statics", "css", "base.css", headers=alice)
    assert r.headers["Content-Type"].startswith("text/css")
    # bokeh's own JS, twice: the second answer (kept in memory) is the same file with the same headers.
    script = page.split('src="static/js/bokeh.min.js', 1)[1].split('"', 1)[0]
    first, second = [await jp_fetch("lepton", "dashboard", ward["id"], "static", "js", "bokeh.min.js",
                                    params={"v": script.split("v=", 1)[1]}, headers=alice) for _ in range(2)]
    assert first.body == second.body and len(first.body) > 100_000
    assert first.headers["Content-Type"] == second.headers["Content-Type"]
    assert "max-age" in second.headers["Cache-Control"]
    # A browser that has it asks again with its ETag: 304, no body; HEAD answers headers only.
    etag = second.headers["Etag"]
    r = await jp_fetch("lepton", "dashboard", ward["id"], "static", "js", "bokeh.min.js", raise_error=False,
                       params={"v": script.split("v=", 1)[1]}, headers={**alice, "If-None-Match": etag})
    assert r.code == 304 and not r.body
    r = await jp_fetch("lepton", "dashboard", ward["id"], "statics", "css", "base.css", method="HEAD",
                       headers=alice)
    assert r.code == 200 and not r.body and r.headers["Content-Type"].startswith("text/css")
    r = await jp_fetch("lepton", "dashboard", ward["id"], "individual-plots.json", headers=alice)
    assert "/individual-task-stream" in json.loads(r.body).values()
    # The dashboard's own redirect stays under the prefix.
    r = await jp_fetch("lepton", "dashboard", ward["id"], "", headers=alice, follow_redirects=False,
                       raise_error=False)
    assert r.code in (301, 302) and r.headers["Location"] == url_path_join(
        jp_base_url, "lepton", "dashboard", ward["id"], "status")
    # The viewer of the team may look too.
    code, _ = await as_user("vera", "lepton", "dashboard", ward["id"], "individual-progress")
    assert code == 200
    # Page views are audited as cluster reads.
    lines = [json.loads(line) for line in (lepton_home / "audit.jsonl").read_text().splitlines()]
    views = [e for e in lines if e["outcome"] == "allow" and "/lepton/dashboard/" in json.dumps(e)]
    assert {e["user"] for e in views} >= {"alice", "vera"}


async def test_websocket_reaches_bokeh(as_user, jp_fetch, jp_ws_fetch, tokens):
    ward = await start_ward(as_user)
    alice = {"Authorization": f"token {tokens['alice']}"}
    r = await jp_fetch("lepton", "dashboard", ward["id"], "individual-task-stream", headers=alice)
    page = r.body.decode()
    token = page.split('"token":"', 1)[1].split('"', 1)[0]
    ws = await jp_ws_fetch("lepton", "dashboard", ward["id"], "individual-task-stream", "ws",
                           headers={**alice, "Sec-WebSocket-Protocol": f"bokeh, {token}"})
    try:
        # bokeh speaks first: an ACK message of its protocol, in three frames (header, metadata, content).
        header = json.loads(await ws.read_message())
        assert header["msgtype"] == "ACK"
        assert ws.selected_subprotocol == "bokeh"
    finally:
        ws.close()


async def test_refusals(as_user, jp_ws_fetch, tokens, lepton_home):
    ward = await start_ward(as_user)
    # Nobody: 401, as JSON on one line.
    code, reply = await as_user("none", "lepton", "dashboard", ward["id"], "status")
    assert code == 401 and "\n" not in reply["message"]
    # Another team's analyst: the cluster does not exist for him.
    code, reply = await as_user("bob", "lepton", "dashboard", ward["id"], "individual-task-stream")
    assert code == 404 and reply["message"] == f"no cluster {ward['id']!r}"
    # Static files too: nothing below a cluster's dashboard without the right to read it.
    code, _ = await as_user("none", "lepton", "dashboard", ward["id"], "statics", "css", "base.css")
    assert code == 401
    code, _ = await as_user("bob", "lepton", "dashboard", ward["id"], "statics", "css", "base.css")
    assert code == 404
    # Unknown cluster, even for its team.
    code, _ = await as_user("alice", "lepton", "dashboard", "nosuchcluster", "status")
    assert code == 404
    # Nor through the WebSocket.
    with pytest.raises(httpclient.HTTPClientError) as e:
        await jp_ws_fetch("lepton", "dashboard", ward["id"], "individual-task-stream", "ws",
                          headers={"Authorization": f"token {tokens['bob']}"})
    assert e.value.code == 404
    with pytest.raises((httpclient.HTTPClientError, websocket.WebSocketError)) as e:
        await jp_ws_fetch("lepton", "dashboard", ward["id"], "individual-task-stream", "ws",
                          headers={"Authorization": ""})
    assert getattr(e.value, "code", None) in (401, 403)
    # Each refusal is audited.
    denials = [json.loads(line) for line in (lepton_home / "audit.jsonl").read_text().splitlines()
               if '"deny"' in line and "dashboard" in line]
    assert {d["user"] for d in denials} >= {"bob"}


def test_asset_cache_stays_bounded():
    from lepton_lab.server.dashboard import _CACHE_BYTES, _CACHE_FILE_BYTES, AssetCache

    cache = AssetCache()
    cache.put(("http://127.0.0.1:1", "/static/big.js"), [], b"x" * (_CACHE_FILE_BYTES + 1))
    assert cache.get(("http://127.0.0.1:1", "/static/big.js")) is None
    body = b"y" * (_CACHE_FILE_BYTES - 1)
    for i in range(6):
        cache.put(("http://127.0.0.1:1", f"/static/{i}.js"), [("Content-Type", "text/javascript")], body)
    assert cache.size <= _CACHE_BYTES and cache.size == len(cache.items) * len(body)
    assert cache.get(("http://127.0.0.1:1", "/static/0.js")) is None  # oldest out first
    assert cache.get(("http://127.0.0.1:1", "/static/5.js")) == ([("Content-Type", "text/javascript")], body)
    cache.put(("http://127.0.0.1:2", "/statics/a.css"), [], b"z")
    cache.forget("http://127.0.0.1:1")
    assert list(cache.items) == [("http://127.0.0.1:2", "/statics/a.css")] and cache.size == 1
