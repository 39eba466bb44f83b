"""Which data-parallel ranks a stall names: the one silent past the limit, and every rank
silent for at least half as long with it (ranks blocked in one collective stop together)."""

import time

from lepton_lab.ml.progress import ProgressListener


def listener_with(beats_ago: dict[int, float]) -> ProgressListener:
    listener = ProgressListener(None, "topic", "run", total=3, unit="epoch", desc="t", show=False)
    now = time.monotonic()
    for rank, ago in beats_ago.items():
        listener.beats[(1, rank)] = (now - ago, f"step {rank}", f"cloud-{rank}")
    return listener


RANKS = {0: "tls://a", 1: "tls://b", 2: "tls://c"}


def test_nobody_past_the_limit_is_no_stall():
    assert listener_with({0: 14.0, 1: 14.0, 2: 14.0}).silent(1, RANKS, since=0.0, longer_than=15) == []


def test_the_stalled_rank_and_those_nearly_as_silent_are_named():
    silent = listener_with({0: 16.0, 1: 9.0, 2: 1.0}).silent(1, RANKS, since=0.0, longer_than=15)
    assert [(rank, worker, phase) for rank, worker, _, phase in silent] == [
        (0, "cloud-0", "step 0"), (1, "cloud-1", "step 1")]
    assert silent[0][2] >= 16.0 and 9.0 <= silent[1][2] < 15


def test_a_rank_that_never_beat_counts_from_the_start():
    silent = listener_with({0: 20.0}).silent(1, RANKS, since=time.monotonic() - 18, longer_than=15)
    assert [(rank, phase) for rank, _, _, phase in silent] == [
        (0, "step 0"), (1, "not started"), (2, "not started")]
