"""``LeptonApp.schedulers = "in-process"``: a cluster's scheduler runs in the server's own process."""

from __future__ import annotations

import asyncio
import os

import pytest

from lepton_lab.cluster import accounts


@pytest.fixture
def jp_server_config(jp_server_config):
    return {**jp_server_config, "LeptonApp": {"schedulers": "in-process"}}


def _pid() -> int:
    return os.getpid()


async def test_the_scheduler_runs_in_the_server_and_no_process_is_kept_ready(as_user, jp_serverapp):
    services = jp_serverapp.web_app.settings["lepton"]
    assert accounts.SPARES.ready(accounts.this_account()) is None
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "name": "inside", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201 and c["tls"] is True, c
    try:
        client = services._client(services.manager.get(c["id"]))
        assert await asyncio.to_thread(client.run_on_scheduler, _pid) == os.getpid()
        assert await asyncio.to_thread(lambda: client.submit(sum, [1, 2, 3], pure=False).result()) == 6
        code, snap = await as_user("alice", "lepton", "api", "clusters", c["id"], "allocation")
        assert code == 200 and [w["name"] for w in snap["workers"]] == ["cloud-0"]
    finally:
        code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
    assert code == 204
