"""Every decision is audited; the chain detects edits; a restart keeps policy, log and cluster records."""

import json
import subprocess
import sys

from lepton_lab.errors import ClusterError
from lepton_lab.security.policy import load_policy
from lepton_lab.services import Actor, Services


async def test_allows_and_denies_are_recorded(as_user):
    await as_user("alice", "lepton", "api", "templates")
    await as_user("bob", "lepton", "api", "audit")
    code, log = await as_user("admin", "lepton", "api", "audit", params={"user": "bob", "verify": "1"})
    assert code == 200
    denial = [e for e in log["entries"] if e["resource"] == "lepton:audit"]
    assert denial and denial[-1]["outcome"] == "deny" and "audit:read" in denial[-1]["reason"]
    assert denial[-1]["request_id"]
    assert log["verify"]["ok"] is True
    code, log = await as_user("admin", "lepton", "api", "audit", params={"outcome": "allow", "user": "alice"})
    assert any(e["resource"] == "lepton:templates" for e in log["entries"])
    code, err = await as_user("admin", "lepton", "api", "audit", params={"colour": "red"})
    assert code == 400 and "unknown filter" in err["message"]


async def test_tampering_is_detected_by_the_cli(as_user, lepton_home):
    await as_user("bob", "lepton", "api", "audit")
    await as_user("alice", "lepton", "api", "whoami")
    await as_user("alice", "lepton", "api", "templates")
    path = lepton_home / "audit.jsonl"
    ok = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "audit", "verify", "--file", str(path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    lines = path.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["outcome"] = "allow"  # turn a denial into an allow
    lines[0] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "audit", "verify", "--file", str(path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "TAMPERED at line 1" in bad.stderr


async def test_restart_knows_which_clusters_are_gone(as_user, lepton_home, jp_serverapp):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    # The server dies without a clean shutdown: its processes go, its records stay.
    services = jp_serverapp.web_app.settings["lepton"]
    services.manager.stop_all()
    restarted = Services(load_policy())
    alice = Actor("alice")
    [record] = restarted.visible_clusters(alice)
    assert record["id"] == c["id"] and record["status"] == "stopped"
    try:
        restarted.cluster(alice, c["id"])
        raise AssertionError("a stopped cluster must not be usable")
    except ClusterError as e:
        assert "stopped" in str(e)
    restarted.stop_cluster(alice, c["id"])
    assert restarted.visible_clusters(alice) == []
    assert restarted.audit.verify().ok


def test_invalid_policy_stops_the_server(tmp_path, monkeypatch):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nteams: [medical]\nmembers:\n  alice: {medical: analist}\n")
    monkeypatch.setenv("LEPTON_POLICY", str(bad))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))

    class log:
        critical = staticmethod(lambda msg: None)

    from lepton_lab.server.extension import open_services

    try:
        open_services(log, bad, "personal")
        raise AssertionError("the server must not start on an invalid policy")
    except SystemExit as e:
        assert "members.alice.medical" in str(e) and "analist" in str(e)
    check = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "policy", "check", str(bad)],
                           capture_output=True, text=True)
    assert check.returncode == 2 and len(check.stderr.strip().splitlines()) == 1
    assert "members.alice.medical: unknown role 'analist'" in check.stderr
