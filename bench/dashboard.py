"""Dashboard benchmark: the task-stream pane through the Jupyter server's proxy vs direct.

    python bench/dashboard.py [--rounds 15] [--out bench/results/dashboard.json]

A real ``jupyter server`` subprocess (Lepton extension, identity provider and authorizer
as the wheel enables them; a test policy) starts a cluster through the REST API; a
client with the admin's certificate runs a few hundred tasks so the task stream has
bars to draw, and asks the scheduler where its dashboard listens.

One page load is what a browser does for the pane, without its cache: the HTML of
``individual-task-stream``, every script and style it names (bokeh's JS, about 2 MB),
then bokeh's WebSocket (``<pane>/ws`` with the session token as subprotocol) until
the document arrives (``ACK``, then ``PULL-DOC-REQ`` answered by ``PULL-DOC-REPLY``).
The same load goes to ``<server>/lepton/dashboard/<id>/`` with the user's token and
to the dashboard's own loopback port. One warm-up each, then alternating order,
medians with their spread. Target: proxied / direct <= 1.3 for the full load.
Each part is reported too: the HTML alone (a page view, audited by the server),
the assets (the proxy keeps bokeh's immutable files in memory after the warm-up
has brought them through once; the direct server reads them from disk each time)
and the WebSocket until the document arrived.

Everything runs in a private temporary directory, removed at the end; the cluster
and the server are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATIO_TARGET = 1.3
PANE = "individual-task-stream"


def policy_text(local: str) -> str:
    return "\n".join(["version: 1", "teams: [medical]", "members:", f"  {json.dumps(local)}: {{\"*\": admin}}",
                      f"trusted: [{json.dumps(local)}]", ""])


async def read_bokeh_message(ws) -> dict:
    """One bokeh protocol message: header, metadata, content (and its binary buffers)."""
    header = json.loads(await ws.read_message())
    await ws.read_message()  # metadata
    content = await ws.read_message()
    for _ in range(int(header.get("num_buffers") or 0)):
        await ws.read_message()
    return {"header": header, "content_bytes": len(content or "")}


async def load_pane(root: str, headers: dict[str, str]) -> dict[str, float]:
    """Seconds for the pane's HTML alone and for the full load (HTML, assets, WebSocket document)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    http = AsyncHTTPClient()
    started = time.perf_counter()
    r = await http.fetch(root + PANE, headers=headers)
    html_done = time.perf_counter()
    page = r.body.decode()
    assets = sorted({a for a in re.findall(r'(?:src|href)="([^"#]+)"', page) if "://" not in a})
    replies = await asyncio.gather(*(http.fetch(root + a, headers=headers) for a in assets))
    assets_done = time.perf_counter()
    size = len(r.body) + sum(len(x.body) for x in replies)
    token = re.search(r'"token":"([^"]+)"', page)
    assert token, "no bokeh session token in the pane"
    ws = await websocket_connect(HTTPRequest("ws" + root[len("http"):] + PANE + "/ws", headers=headers),
                                 subprotocols=["bokeh", token.group(1)])
    try:
        ack = await read_bokeh_message(ws)
        assert ack["header"]["msgtype"] == "ACK", ack
        frames = [json.dumps({"msgid": "1", "msgtype": "PULL-DOC-REQ"}), "{}", "{}"]
        for frame in frames:
            await ws.write_message(frame)
        reply = await read_bokeh_message(ws)
        assert reply["header"]["msgtype"] == "PULL-DOC-REPLY", reply["header"]
    finally:
        ws.close()
    done = time.perf_counter()
    return {"html": html_done - started, "assets": assets_done - html_done, "websocket": done - assets_done,
            "full": done - started, "bytes": size + reply["content_bytes"],
            "files": len(assets)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 2), "min_ms": round(min(values) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2)}


async def measure(proxied: str, direct: str, headers: dict[str, str], rounds: int) -> dict:
    runs: dict[str, list[dict[str, float]]] = {"proxied": [], "direct": []}
    await load_pane(proxied, headers)  # warm-up: first sessions, imports, connections
    await load_pane(direct, {})
    for i in range(rounds):
        order = [("proxied", proxied, headers), ("direct", direct, {})]
        for name, root, h in (order if i % 2 == 0 else order[::-1]):
            runs[name].append(await load_pane(root, h))
    out: dict = {}
    for part in ("html", "assets", "websocket", "full"):
        p = [r[part] for r in runs["proxied"]]
        d = [r[part] for r in runs["direct"]]
        out[part] = {"proxied": spread(p), "direct": spread(d),
                     "ratio": round(statistics.median(p) / statistics.median(d), 3)}
    out["bytes_per_load"] = int(statistics.median(r["bytes"] for r in runs["direct"]))
    out["assets_per_load"] = runs["direct"][0]["files"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = parser.parse_args()

    from distributed import Client

    from lepton_lab.security.certs import IssuedCert
    from lepton_lab.security.identity import local_user
    from lepton_lab.testing import start_jupyter

    tmp = Path(tempfile.mkdtemp(prefix="lepton-bench-dashboard-"))
    server = start_jupyter(tmp, policy_text(local_user()), app="jupyter_server")
    cluster_id = None
    try:
        status, c = server.api("lepton", "api", "clusters", method="POST", timeout=180,
                               body={"team": "medical", "profile": "local", "name": "bench",
                                     "workers": {"cloud": 1, "edge": 1}})
        assert status == 201, c
        cluster_id = c["id"]
        status, cred = server.api("lepton", "api", "clusters", cluster_id, "credentials")
        assert status == 200, cred
        security = IssuedCert.from_dict({k: cred[k] for k in ("cert_pem", "key_pem", "ca_pem", "role",
                                                               "common_name", "expires")}).security()
        with Client(cred["scheduler_address"], security=security, timeout=60) as client:
            client.gather(client.map(lambda x: x + 1, range(300)))
            port = client.scheduler_info()["services"]["dashboard"]
        direct = f"http://127.0.0.1:{port}/"
        proxied = f"{server.url}{c['dashboard_link'].rsplit('/', 1)[0]}/"
        result = asyncio.run(measure(proxied, direct, {"Authorization": f"token {server.token}"}, args.rounds))
    finally:
        if cluster_id:
            server.api("lepton", "api", "clusters", cluster_id, method="DELETE", timeout=60)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "benchmark": "dashboard task-stream pane: through the Jupyter server's proxy vs direct",
        "rounds": args.rounds,
        "pane": PANE,
        **result,
        "target_ratio": RATIO_TARGET,
        "meets_target": result["full"]["ratio"] <= RATIO_TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
