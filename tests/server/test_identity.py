"""Identity mapping: JupyterHub users and groups through the policy."""

import pytest

from lepton_lab.security.identity import from_hub_model, make_user
from lepton_lab.security.policy import parse_policy_text

from .conftest import POLICY


@pytest.fixture
def policy():
    return parse_policy_text(POLICY.format(admin="root"), "policy.yaml")


def test_hub_group_grants_team_role(policy):
    user = from_hub_model(policy, {"name": "carol", "groups": ["hub-medical", "unrelated"]})
    assert user.username == "carol" and user.roles == {"medical": "analyst"} and user.via == "jupyterhub"
    assert policy.allows(user.username, user.groups, "clusters:create", "medical")
    assert not policy.allows(user.username, user.groups, "clusters:create", "finance")


def test_hub_user_without_rules_has_no_team(policy):
    user = from_hub_model(policy, {"name": "dave", "groups": []})
    assert user.teams == [] and user.roles == {}


def test_member_and_group_rules_merge(policy):
    user = from_hub_model(policy, {"name": "vera", "groups": ["hub-medical"]})
    assert user.roles == {"medical": "analyst", "finance": "viewer"}


def test_bad_hub_model(policy):
    with pytest.raises(ValueError):
        from_hub_model(policy, {"groups": ["x"]})


def test_make_user_reads_policy_now(policy):
    assert make_user(policy, "alice").roles == {"medical": "analyst"}
