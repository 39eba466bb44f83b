"""Predictions waiting by job id: stopped once, a second stop answered alike, ended ones unknown."""

import threading

import pytest

from lepton_lab.cluster import interrupt
from lepton_lab.errors import AlreadyExists, Interrupted, NotFound
from lepton_lab.services.predictions import KEEP_STOPPED, Predictions


class FakeFuture:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


RECORD = {"model": "fraud", "version": 3}


@pytest.fixture
def stops(monkeypatch):
    calls = []
    release = threading.Event()

    def stop_job(client, label, *, futures=()):
        calls.append((label, list(futures)))
        release.wait(10)
        return Interrupted(f"cancelled job {label} on edge-0")

    monkeypatch.setattr(interrupt, "stop_job", stop_job)
    release.set()
    return calls, release


def test_a_job_is_stopped_once_and_a_second_stop_gets_the_same_answer(stops):
    calls, release = stops
    release.clear()
    waiting = Predictions()
    future = FakeFuture()
    answers = []
    with waiting.waiting("alice", "j1", future, RECORD, client=None):
        assert len(waiting) == 1
        first = threading.Thread(target=lambda: answers.append(waiting.stop("alice", "j1")))
        first.start()
        while not calls:
            threading.Event().wait(0.01)
        second = threading.Thread(target=lambda: answers.append(waiting.stop("alice", "j1")))
        second.start()
        release.set()
        first.join(10)
        second.join(10)
    assert answers == ["cancelled job predict fraud@3 on edge-0"] * 2
    assert calls == [("predict fraud@3", [future])]
    assert len(waiting) == 0
    # after the wait ended, a late stop still gets the answer; the job id cannot be used again
    assert waiting.stop("alice", "j1") == "cancelled job predict fraud@3 on edge-0"
    with pytest.raises(AlreadyExists), waiting.waiting("alice", "j1", FakeFuture(), RECORD, client=None):
        pass


def test_an_ended_job_or_another_users_is_not_found(stops):
    waiting = Predictions()
    with waiting.waiting("alice", "j1", FakeFuture(), RECORD, client=None):
        with pytest.raises(NotFound, match="no prediction j1 of bob is waiting"):
            waiting.stop("bob", "j1")
    with pytest.raises(NotFound, match="it has ended"):
        waiting.stop("alice", "j1")


def test_stopped_jobs_are_remembered_up_to_a_bound(stops):
    waiting = Predictions()
    for n in range(KEEP_STOPPED + 5):
        with waiting.waiting("alice", f"j{n}", FakeFuture(), RECORD, client=None):
            waiting.stop("alice", f"j{n}")
    with pytest.raises(NotFound):
        waiting.stop("alice", "j0")
    assert waiting.stop("alice", f"j{KEEP_STOPPED + 4}").startswith("cancelled job")
