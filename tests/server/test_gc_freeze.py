"""A real server freezes its start-up objects out of the garbage collector once it runs."""

from __future__ import annotations

import gc
import time

from lepton_lab.server.extension import freeze_startup_objects
from lepton_lab.testing import start_jupyter

POLICY = """
version: 1
teams: [medical]
members:
  ada: {medical: admin}
"""


def test_freeze_moves_live_objects_out_of_collections():
    try:
        frozen = freeze_startup_objects()
        assert frozen > 1000 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_started_server_freezes_once_its_loop_runs(tmp_path):
    server = start_jupyter(tmp_path, POLICY, app="jupyter_server", env={"LEPTON_GC_FREEZE": "1"})
    try:
        deadline = time.monotonic() + 20
        while "frozen out of the garbage collector" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        line = next(x for x in server.log.read_text().splitlines() if "frozen out" in x)
        assert int(line.split("Lepton Lab: ")[1].split()[0]) > 10_000
        status, _ = server.api("api", "status")
        assert status == 200
    finally:
        server.stop()
