"""A model name unique among the user's readable teams needs no team=; an ambiguous one names the teams."""

import pytest

import lepton_lab
from lepton_lab import session as session_module
from lepton_lab.errors import ConfigError, NotFound


class Catalogue:
    """A transport that only knows which models each team holds, and what was loaded."""

    def __init__(self, models):
        self._models = models
        self.loaded = []

    def models(self, team):
        return [m for m in self._models if team in (None, m["team"])]

    def load(self, team, ref):
        self.loaded.append((team, ref))
        return object(), {"name": ref, "team": team}


@pytest.fixture
def catalogue(monkeypatch):
    def use(*models):
        transport = Catalogue([{"name": n, "team": t} for n, t in models])
        monkeypatch.setattr(session_module, "_session", session_module.Session(transport=transport))
        monkeypatch.delenv("LEPTON_TEAM", raising=False)
        return transport
    return use


def test_a_name_in_one_readable_team_resolves_without_team(catalogue):
    transport = catalogue(("fraud", "finance"), ("tumour", "medical"))
    lepton_lab.load("fraud@production")
    assert transport.loaded == [("finance", "fraud@production")]


def test_an_ambiguous_name_lists_the_teams(catalogue):
    transport = catalogue(("fraud", "finance"), ("fraud", "medical"))
    with pytest.raises(ConfigError) as e:
        lepton_lab.load("fraud")
    assert str(e.value) == "model fraud is in teams finance, medical; pass team=... (or --team)"
    assert transport.loaded == []
    lepton_lab.load("fraud", team="medical")
    assert transport.loaded == [("medical", "fraud")]


def test_an_unknown_name_says_where_to_look(catalogue):
    catalogue(("fraud", "finance"))
    with pytest.raises(NotFound, match="no model scans in the teams you may read"):
        lepton_lab.load("scans")
