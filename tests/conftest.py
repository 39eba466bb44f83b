"""Suite-wide setup: a private LEPTON_HOME, and no Dask process left behind at the end."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.helpers import wait_no_dask_children

_home = tempfile.mkdtemp(prefix="lepton-test-home-")
os.environ["LEPTON_HOME"] = _home
os.environ.setdefault("LEPTON_CONNECT_TIMEOUT", "5")


@pytest.fixture(scope="session", autouse=True)
def no_dask_process_left_behind():
    """At the end of the suite, every cluster is stopped and no Dask process remains."""
    yield
    from lepton_lab.cluster.launcher import close_all
    from lepton_lab.session import session

    session().close_all()
    close_all()
    left = wait_no_dask_children()
    for p in left:
        p.kill()
    assert not left, f"Dask processes left behind: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def cluster_slot():
    """A module's cluster, kept for :func:`tests.helpers.checked_cluster`; stopped when the module ends."""
    slot: dict = {}
    yield slot
    handle = slot.get("handle")
    if handle is not None and not handle.closed:
        import lepton_lab

        lepton_lab.down(handle.name)
