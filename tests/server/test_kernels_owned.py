"""Kernels and sessions are their starters'; only the server's owner and trusted users start code."""

import json

import pytest
from tornado.httpclient import HTTPClientError


async def test_others_get_404_on_every_door_of_a_kernel(as_user, jp_ws_fetch, tokens):
    code, kernel = await as_user("alice", "api", "kernels", method="POST", body={"name": "python3"})
    assert code == 201, kernel
    try:
        await _probe(kernel["id"], as_user, jp_ws_fetch, tokens)
    finally:
        await as_user("alice", "api", "kernels", kernel["id"], method="DELETE")


async def _probe(kid, as_user, jp_ws_fetch, tokens):
    tried = failures = 0
    _, listing = await as_user("fiona", "api", "kernels")
    assert kid not in [k["id"] for k in listing]
    _, mine = await as_user("alice", "api", "kernels")
    assert kid in [k["id"] for k in mine]
    for method, parts in (("GET", ()), ("POST", ("interrupt",)), ("POST", ("restart",)), ("DELETE", ())):
        for who in ("fiona", "bob", "vera"):
            code, reply = await as_user(who, "api", "kernels", kid, *parts, method=method)
            tried += 1
            failures += code != 404
            assert code == 404, (who, method, parts, code, reply)
            assert "\n" not in reply["message"]
    # a trusted user of another team does not learn of it; an untrusted one may not open channels at all
    for who, status, said in (("fiona", 404, kid), ("bob", 403, "team deployment (JupyterHub)")):
        with pytest.raises(HTTPClientError) as refused:
            await jp_ws_fetch("api", "kernels", kid, "channels",
                              headers={"Authorization": f"token {tokens[who]}"})
        tried += 1
        assert refused.value.code == status
        assert said in json.loads(refused.value.response.body)["message"]
    # the server's owner may look, and that is audited
    code, _ = await as_user("admin", "api", "kernels", kid)
    assert code == 200
    _, log = await as_user("admin", "lepton", "api", "audit", params={"resource": f"kernels:{kid}"})
    outcomes = {(e["user"], e["outcome"]) for e in log["entries"]}
    assert ("fiona", "deny") in outcomes and ("bob", "deny") in outcomes
    assert all(e["request_id"] for e in log["entries"])
    print(f"kernel matrix: {tried} requests, {failures} unauthorized successes")


async def test_sessions_follow_their_kernel(as_user):
    code, session = await as_user("alice", "api", "sessions", method="POST",
                                  body={"path": "work/alice/a.ipynb", "type": "notebook", "name": "a.ipynb",
                                        "kernel": {"name": "python3"}})
    assert code == 201, session
    sid, kid = session["id"], session["kernel"]["id"]
    try:
        _, theirs = await as_user("fiona", "api", "sessions")
        assert sid not in [s["id"] for s in theirs]
        for method, body in (("GET", None), ("PATCH", {"path": "x.ipynb"}), ("DELETE", None)):
            code, _ = await as_user("fiona", "api", "sessions", sid, method=method, body=body)
            assert code == 404, method
        # a session of one's own cannot be pointed at someone else's kernel
        code, _ = await as_user("fiona", "api", "sessions", method="POST",
                                body={"path": "f.ipynb", "type": "notebook", "name": "f.ipynb",
                                      "kernel": {"id": kid}})
        assert code == 404
        # nor be handed the session someone else has open at the same path
        code, _ = await as_user("fiona", "api", "sessions", method="POST",
                                body={"path": "work/alice/a.ipynb", "type": "notebook", "name": "a.ipynb",
                                      "kernel": {"name": "python3"}})
        assert code == 404
        _, all_sessions = await as_user("admin", "api", "sessions")
        assert sid in [s["id"] for s in all_sessions]
    finally:
        await as_user("alice", "api", "sessions", sid, method="DELETE")


async def test_untrusted_users_run_no_code_as_the_server(as_user):
    for parts, body in ((("api", "kernels"), {"name": "python3"}),
                        (("api", "sessions"), {"path": "b.ipynb", "type": "notebook", "name": "b.ipynb",
                                               "kernel": {"name": "python3"}}),
                        (("api", "terminals"), None)):
        code, err = await as_user("bob", *parts, method="POST", body=body)
        assert code == 403, parts
        message = err["message"]
        assert "\n" not in message and "team deployment (JupyterHub)" in message and "trusted:" in message
    code, cluster = await as_user("bob", "lepton", "api", "clusters", method="POST",
                                  body={"team": "finance", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, cluster
    code, err = await as_user("bob", "lepton", "api", "clusters", cluster["id"], "credentials")
    assert code == 403 and "team deployment (JupyterHub)" in err["message"]
    # a trusted analyst of the same team still may not use a teammate's cluster: analysts use their own
    code, err = await as_user("fiona", "lepton", "api", "clusters", cluster["id"], "credentials")
    assert code == 403 and "lead or admin" in err["message"]
    code, cred = await as_user("admin", "lepton", "api", "clusters", cluster["id"], "credentials")
    assert code == 200 and cred["tls"]
    _, log = await as_user("admin", "lepton", "api", "audit", params={"user": "bob", "outcome": "deny"})
    assert any("JupyterHub" in e["reason"] and e["request_id"] for e in log["entries"]
               if e["resource"].startswith("clusters:"))
    await as_user("bob", "lepton", "api", "clusters", cluster["id"], method="DELETE")


def test_trusted_list_is_validated():
    from lepton_lab.errors import ConfigError
    from lepton_lab.security.policy import parse_policy_text

    base = "version: 1\nteams: [medical]\n"
    assert parse_policy_text(base + "trusted: [alice]\n").trusts("alice")
    assert not parse_policy_text(base).trusts("alice")
    for bad, where in (("trusted: alice", "trusted: must be a list"),
                       ("trusted: [alice, alice]", "trusted[1]: user 'alice' is listed twice"),
                       ("trusted: [3]", "trusted[0]: a user name must be a non-empty string")):
        with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")) as e:
            parse_policy_text(base + bad + "\n")
        assert "\n" not in str(e.value)


def test_the_hub_user_owns_their_own_server(monkeypatch):
    from lepton_lab.security.authz import runs_code_here
    from lepton_lab.security.identity import local_user, server_owner
    from lepton_lab.security.policy import parse_policy_text

    policy = parse_policy_text("version: 1\nteams: [medical]\n")
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    assert server_owner() == local_user()
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    assert server_owner() == "alice"
    assert runs_code_here(policy, "alice", server_owner()) and not runs_code_here(policy, "bob", server_owner())


async def test_a_kernel_started_for_another_user_reaches_the_server_as_that_user(as_user, jp_fetch, jp_serverapp):
    import psutil

    async def whoami(token):
        try:
            r = await jp_fetch("lepton", "api", "whoami", headers={"Authorization": f"token {token}"})
            return r.code, json.loads(r.body)["name"]
        except HTTPClientError as e:
            return e.code, None

    code, kernel = await as_user("alice", "api", "kernels", method="POST", body={"name": "python3"})
    assert code == 201, kernel
    code, own = await as_user("admin", "api", "kernels", method="POST", body={"name": "python3"})
    assert code == 201, own
    km = jp_serverapp.kernel_manager
    try:
        env = psutil.Process(km.get_kernel(kernel["id"]).provisioner.pid).environ()
        assert env["LEPTON_KERNEL_USER"] == "alice"
        assert env["LEPTON_TOKEN"].startswith("lkt_") and env["LEPTON_SERVER_URL"]
        token = env["LEPTON_TOKEN"]
        assert await whoami(token) == (200, "alice")  # alice's own identity, not the owner's
        # The owner's kernel finds the server the usual way and gets no token of another's.
        owner_env = psutil.Process(km.get_kernel(own["id"]).provisioner.pid).environ()
        assert "LEPTON_TOKEN" not in owner_env and "LEPTON_KERNEL_USER" not in owner_env
    finally:
        await as_user("alice", "api", "kernels", kernel["id"], method="DELETE")
        await as_user("admin", "api", "kernels", own["id"], method="DELETE")
    assert (await whoami(token))[0] == 401  # the token died with its kernel: no one
