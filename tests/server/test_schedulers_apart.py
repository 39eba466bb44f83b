"""``LeptonApp.schedulers``: by default (``process``) a cluster the server starts runs apart from the
server, and a process is kept started ahead for the next (``in-process``: test_schedulers_in_server)."""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from lepton_lab.cluster import accounts
from tests.helpers import eventually


def _pid() -> int:
    return os.getpid()


async def test_scheduler_and_workers_are_processes_apart_and_leave_with_the_cluster(as_user, jp_serverapp):
    services = jp_serverapp.web_app.settings["lepton"]
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "name": "apart", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201 and c["tls"] is True, c
    client = services._client(services.manager.get(c["id"]))
    scheduler_pid = await asyncio.to_thread(client.run_on_scheduler, _pid)
    assert accounts.SPARES.ready(accounts.this_account()) is not None  # the next cluster's, started ahead
    worker_pids = list((await asyncio.to_thread(client.run, _pid)).values())
    assert len(worker_pids) == 1
    server = os.getpid()
    assert scheduler_pid != server and server not in worker_pids
    assert psutil.Process(scheduler_pid).username() == psutil.Process(server).username()

    # the rest of the house works the same: scale, the live allocation, a task
    code, c2 = await as_user("alice", "lepton", "api", "clusters", c["id"], method="PATCH",
                             body={"site": "edge", "workers": 1})
    assert code == 200 and {s["name"]: s["workers"] for s in c2["sites"]} == {"cloud": 1, "edge": 1}
    code, snap = await as_user("alice", "lepton", "api", "clusters", c["id"], "allocation")
    assert code == 200 and sorted(w["name"] for w in snap["workers"]) == ["cloud-0", "edge-0"]
    assert await asyncio.to_thread(lambda: client.submit(sum, [1, 2, 3], pure=False).result()) == 6
    worker_pids = list((await asyncio.to_thread(client.run, _pid)).values())

    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
    assert code == 204
    alive = [p for p in [scheduler_pid, *worker_pids] if psutil.pid_exists(p)]
    gone = await asyncio.to_thread(
        eventually, lambda: not [p for p in alive if psutil.pid_exists(p)], 60)
    assert gone, f"processes left after the cluster was deleted: {[p for p in alive if psutil.pid_exists(p)]}"


def test_a_bad_schedulers_value_is_one_line(monkeypatch):
    from lepton_lab import config
    from lepton_lab.errors import ConfigError

    monkeypatch.setattr(config, "_CONFIGURED", {})  # this module's server configured "process"
    monkeypatch.setenv("LEPTON_SCHEDULERS", "elsewhere")
    with pytest.raises(ConfigError, match=r"^LEPTON_SCHEDULERS: process or in-process, got 'elsewhere'$"):
        config.schedulers_in_process()
