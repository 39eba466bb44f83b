"""A machine joins a TLS cluster with a one-time token: `lepton-lab join-token` then `lepton-lab worker`."""

import asyncio
import os
import subprocess
import sys


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "lepton_lab.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


async def test_join_token_admits_one_worker_of_its_site(as_user, jp_http_port, jp_base_url, lepton_home):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    env = {**os.environ, "LEPTON_HOME": str(lepton_home)}
    issued = await asyncio.to_thread(cli, "join-token", c["name"], "--site", "edge-hospital-z", env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith(c["id"] + ".ljt_")
    server = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    worker = subprocess.Popen([sys.executable, "-m", "lepton_lab.cli", "worker", "--site", "edge-hospital-z",
                               "--join-token", token, "--server", server, "--index", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(120):
            _, snap = await as_user("alice", "lepton", "api", "clusters", c["id"], "allocation")
            if any(w["name"] == "edge-hospital-z-0" for w in snap["workers"]):
                break
            await asyncio.sleep(0.5)
        else:
            worker.terminate()
            raise AssertionError(f"the worker did not join: {worker.communicate(timeout=20)}")
        joined = next(w for w in snap["workers"] if w["name"] == "edge-hospital-z-0")
        assert joined["site"] == "edge-hospital-z" and joined["kind"] == "edge"
        # the token is spent
        again = await asyncio.to_thread(cli, "worker", "--site", "edge-hospital-z", "--join-token", token,
                                        "--server", server, env=env)
        assert again.returncode == 2 and "already used" in again.stderr
        # a token for one site does not admit another
        other = (await asyncio.to_thread(cli, "join-token", c["id"], "--site", "edge-a", env=env)).stdout.strip()
        wrong = await asyncio.to_thread(cli, "worker", "--site", "edge-b", "--join-token", other,
                                        "--server", server, env=env)
        assert wrong.returncode == 2 and "site edge-a, not edge-b" in wrong.stderr
        forged = await asyncio.to_thread(cli, "worker", "--site", "edge-a", "--join-token", c["id"] + ".ljt_forged",
                                         "--server", server, env=env)
        assert forged.returncode == 2 and "not known" in forged.stderr
    finally:
        worker.terminate()
        worker.wait(30)
    _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:join"})
    outcomes = [e["outcome"] for e in log["entries"]]
    assert "allow" in outcomes and "deny" in outcomes
