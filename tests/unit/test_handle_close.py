"""Closing a cluster handle whose scheduler is already gone still disconnects and stops what it owns."""

from __future__ import annotations

import logging

from lepton_lab.session import ClusterHandle


class _Client:
    def close(self, timeout=None):
        raise ValueError("IOStream is not idle; cannot convert to SSL")


class _Transport:
    def __init__(self):
        self.stopped: list[str] = []

    def stop(self, cluster_id):
        self.stopped.append(cluster_id)


def test_a_client_that_fails_to_close_does_not_fail_the_handle(caplog):
    transport = _Transport()
    handle = ClusterHandle({"id": "c1", "name": "ward"}, _Client(), transport=transport)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        handle.close()
    assert handle.closed and transport.stopped == ["c1"]
    assert "cluster ward: its client did not close cleanly (ValueError: IOStream is not idle" in caplog.text


def test_a_handle_let_go_leaves_its_cluster_running():
    transport = _Transport()
    handle = ClusterHandle({"id": "c2", "name": "ward"}, _Client(), transport=transport,  # type: ignore[arg-type]
                           owned=False)
    handle.close()
    assert handle.closed and transport.stopped == []
