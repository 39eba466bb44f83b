"""Who a new policy no longer lets hold a cluster's client certificate, and the file stamp that triggers a reload."""

from __future__ import annotations

import os
from types import SimpleNamespace

from lepton_lab.security.identity import server_owner
from lepton_lab.security.policy import parse_policy_text
from lepton_lab.services.policy_reload import lapse_reason, stamp

BASE = """
version: 1
teams: [medical, finance]
members:
  alice: {medical: analyst}
  lena: {medical: lead}
  gus: {finance: analyst}
groups:
  hub-medical: {medical: analyst}
trusted: [alice, lena, gus]
"""


def cluster(owner: str, team: str = "medical", run_as: str | None = None):
    return SimpleNamespace(owner=owner, team=team, run_as=run_as)


def test_what_lapses_with_each_kind_of_edit():
    before = parse_policy_text(BASE)
    assert lapse_reason(before, "alice", (), cluster("alice")) is None
    assert lapse_reason(before, "lena", (), cluster("alice")) is None  # a lead uses others' clusters
    assert lapse_reason(before, "gus", ("hub-medical",), cluster("gus", run_as="gus")) is None

    out = parse_policy_text(BASE.replace("  alice: {medical: analyst}\n", ""))
    assert "alice is in no team" in lapse_reason(out, "alice", (), cluster("alice"))
    viewer = parse_policy_text(BASE.replace("alice: {medical: analyst}", "alice: {medical: viewer}"))
    assert "lacks clusters:use" in lapse_reason(viewer, "alice", (), cluster("alice"))
    demoted = parse_policy_text(BASE.replace("lena: {medical: lead}", "lena: {medical: analyst}"))
    assert lapse_reason(demoted, "lena", (), cluster("lena")) is None
    assert "needs the lead or admin role" in lapse_reason(demoted, "lena", (), cluster("alice"))
    # a right that came through a group goes with the group's rule
    no_group = parse_policy_text(BASE.replace("  hub-medical: {medical: analyst}\n", ""))
    assert "gus has no role in medical" in lapse_reason(no_group, "gus", ("hub-medical",), cluster("gus", run_as="gus"))
    # on the server's own clusters, code runs as the server: only its owner and trusted users hold certificates
    untrusted = parse_policy_text(BASE.replace("trusted: [alice, lena, gus]", "trusted: [lena]"))
    if server_owner() != "alice":
        assert "trusted" in lapse_reason(untrusted, "alice", (), cluster("alice"))
    assert lapse_reason(untrusted, "alice", (), cluster("alice", run_as="alice")) is None


def test_stamp_changes_with_an_edit_in_place_or_a_replacement(tmp_path):
    path = tmp_path / "policy.yaml"
    assert stamp(path) is None
    path.write_text(BASE)
    first = stamp(path)
    assert stamp(path) == first
    path.write_text(BASE + "# same size? no\n")
    second = stamp(path)
    assert second != first
    other = tmp_path / "new.yaml"
    other.write_text(BASE + "# same size? no\n")
    os.utime(other, ns=(second[1], second[1]))
    os.replace(other, path)  # same size, same time, another file
    assert stamp(path) != second
