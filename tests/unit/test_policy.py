"""Policy file: validation messages, role and permission queries, quotas, the example file."""

from __future__ import annotations

import copy
import os
import stat

import pytest
import yaml

from lepton_lab.errors import ConfigError, QuotaExceeded
from lepton_lab.security.policy import (
    PERMISSIONS,
    Policy,
    Quota,
    Usage,
    check_quota,
    default_policy,
    ensure_policy_file,
    example_policy_text,
    load_policy,
    role_rank,
)

BASE = {
    "version": 1,
    "teams": ["medical", "finance"],
    "roles": {"auditor": ["audit:read", "clusters:read"]},
    "members": {
        "alice": {"medical": "analyst"},
        "bob": {"finance": "analyst"},
        "vera": {"medical": "viewer", "finance": "viewer"},
        "lee": {"medical": "lead"},
        "root": {"*": "admin"},
    },
    "groups": {"hub-medical": {"medical": "analyst"}, "hub-audit": {"medical": "auditor"}},
    "quotas": {
        "teams": {"finance": {"max_gpus": 2, "max_workers": 16, "max_clusters": 4}},
        "users": {"bob": {"max_clusters": 1}, "root": {"max_gpus": None}},
        "default_user": {"max_gpus": 1, "max_workers": 8, "max_clusters": 2},
    },
    "terminals": ["admin"],
}


def policy(**changes) -> Policy:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return Policy.from_dict(data, source="policy.yaml")


def message_of(data, source="policy.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        Policy.from_dict(data, source=source)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{source}: ")
    return text


def changed(path: list, value):
    """BASE with the value at ``path`` replaced (``...`` deletes it)."""
    data = copy.deepcopy(BASE)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["members", "alice", "medical"],
            "analist",
            "members.alice.medical: unknown role 'analist'; did you mean 'analyst'?",
        ),
        (["members", "alice"], {"oncology": "analyst"}, "members.alice.oncology: unknown team 'oncology'"),
        (["members", "alice"], "analyst", "members.alice: a user's teams ({team: role}) must be a mapping"),
        (["members", "alice", "medical"], 3, "members.alice.medical: a role is a string, got a number"),
        (["groups", "hub-medical", "medical"], "boss", "groups.hub-medical.medical: unknown role 'boss'"),
        (["groups", "hub-medical"], {"sales": "viewer"}, "groups.hub-medical.sales: unknown team 'sales'"),
        (
            ["roles", "auditor"],
            ["audit:read", "model:read"],
            "roles.auditor[1]: unknown permission 'model:read'; did you mean 'models:read'?",
        ),
        (["roles", "auditor"], "audit:read", "roles.auditor: must be a list of permissions, got a string"),
        (["roles", "auditor"], [7], "roles.auditor[0]: a permission is a string"),
        (
            ["roles", "auditor"],
            ["terminals:use"],
            "roles.auditor[0]: terminals:use is given by the top-level 'terminals' list",
        ),
        (
            ["roles"],
            {"bad name": ["models:read"]},
            "roles.bad name: role name 'bad name' may hold only letters",
        ),
        (["teams"], "medical", "teams: must be a list of team names, got a string"),
        (["teams"], ["medical", "medical"], "teams[1]: team 'medical' is listed twice"),
        (["teams"], ["medical", ""], "teams[1]: a team name must be a non-empty string"),
        (["teams"], ["medical", "*"], "teams[1]: team name '*' may hold only letters"),
        (["terminals"], ["admin", "root"], "terminals[1]: unknown role 'root'"),
        (
            ["quotas", "teams", "finance", "max_gpus"],
            -1,
            "quotas.teams.finance.max_gpus: must be a whole number >= 0",
        ),
        (
            ["quotas", "teams", "finance", "max_gpus"],
            1.5,
            "quotas.teams.finance.max_gpus: must be a whole number >= 0",
        ),
        (
            ["quotas", "teams", "finance", "max_gpus"],
            "2",
            "quotas.teams.finance.max_gpus: must be a whole number",
        ),
        (
            ["quotas", "teams", "finance", "max_gpus"],
            True,
            "quotas.teams.finance.max_gpus: must be a whole number",
        ),
        (
            ["quotas", "users", "bob", "max_clusters"],
            -3,
            "quotas.users.bob.max_clusters: must be a whole number",
        ),
        (
            ["quotas", "default_user", "max_workers"],
            -1,
            "quotas.default_user.max_workers: must be a whole number",
        ),
        (["quotas", "users", "bob"], {"max_cpus": 1}, "quotas.users.bob.max_cpus: unknown quota field"),
        (["quotas", "teams"], {"sales": {"max_gpus": 1}}, "quotas.teams.sales: unknown team 'sales'"),
        (["quotas", "teams"], ["finance"], "quotas.teams: team quotas must be a mapping"),
        (["quotas"], {"team": {}}, "quotas.team: unknown section; did you mean 'teams'?"),
        (["version"], 2, "version: unsupported version 2"),
        (["version"], ..., "version: missing; add 'version: 1'"),
        (["memebers"], {}, "memebers: unknown section; did you mean 'members'?"),
        (
            ["members"],
            {123: {"medical": "viewer"}},
            "members: keys must be strings, got a number 123 (quote it)",
        ),
        (["members"], ["alice"], "members: members must be a mapping"),
    ],
)
def test_each_bad_field_gives_one_line_naming_it(path, value, expected):
    assert expected in message_of(changed(path, value))


def test_unknown_role_lists_the_known_ones():
    text = message_of(changed(["members", "alice", "medical"], "analist"))
    assert text == (
        "policy.yaml: members.alice.medical: unknown role 'analist'; did you mean 'analyst'? "
        "(known: admin, analyst, auditor, lead, viewer)"
    )


def test_empty_and_non_mapping_documents_are_refused():
    assert "empty" in message_of(None)
    assert "the top level must be a mapping" in message_of(["version", 1])


def test_yaml_syntax_error_is_one_line_with_line_number(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nteams: [medical\nmembers: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    text = str(caught.value)
    assert text.startswith("policy.yaml: line ") and str(path.parent) not in text
    assert "YAML syntax error" in text and "\n" not in text


def test_yaml_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nteams: [medical]\nmembers:\n  alice: {medical: viewer}\n  alice: {medical: admin}\n"
    )
    with pytest.raises(ConfigError, match=r"line 5, column 3: YAML syntax error: duplicate key 'alice'"):
        load_policy(path)


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(
        ConfigError, match="no policy file; write a commented example with .*ensure_policy_file"
    ):
        load_policy(tmp_path / "nope.yaml")


def test_load_policy_names_the_file_in_errors(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(changed(["members", "bob", "finance"], "nobody")))
    with pytest.raises(ConfigError, match=r"^policy.yaml: members.bob.finance: unknown role 'nobody'"):
        load_policy(path)


# -- roles and permissions --------------------------------------------------------------


def test_builtin_roles_and_their_ranks():
    p = policy()
    assert p.roles["admin"] == frozenset(PERMISSIONS)
    assert p.roles["lead"] == frozenset(PERMISSIONS) - {"audit:read", "policy:admin", "terminals:use"}
    assert p.roles["viewer"] == {"clusters:read", "models:read", "templates:read"}
    assert "models:delete" not in p.roles["analyst"] and "models:publish" in p.roles["analyst"]
    assert (
        role_rank("admin")
        > role_rank("lead")
        > role_rank("analyst")
        > role_rank("viewer")
        > role_rank("auditor")
    )


def test_star_expands_to_every_team_and_groups_merge_highest_role():
    p = policy()
    assert p.roles_of("root") == {"medical": "admin", "finance": "admin"}
    assert p.roles_of("vera") == {"medical": "viewer", "finance": "viewer"}
    assert p.roles_of("vera", ["hub-medical"]) == {"medical": "analyst", "finance": "viewer"}
    assert p.roles_of("nobody") == {}
    assert p.roles_of("nobody", ["hub-medical", "unknown-group"]) == {"medical": "analyst"}
    assert p.teams_of("alice") == ["medical"]
    assert p.teams_of("vera") == ["medical", "finance"]


def test_permissions_are_per_team_or_union():
    p = policy()
    assert p.permissions("vera", (), "medical") == {"clusters:read", "models:read", "templates:read"}
    assert "models:publish" in p.permissions("alice")
    assert p.permissions("alice", (), "finance") == set()
    assert p.permissions("nobody") == set()


def test_group_permissions_add_to_a_users_own():
    p = policy()
    # vera is a viewer; the auditor group adds audit:read without taking anything away.
    perms = p.permissions("vera", ["hub-audit"], "medical")
    assert {"audit:read", "models:read", "templates:read"} <= perms
    assert p.roles_of("vera", ["hub-audit"])["medical"] == "viewer"


def test_allows():
    p = policy()
    assert p.allows("alice", [], "models:publish", "medical")
    assert not p.allows("alice", [], "models:publish", "finance")
    assert not p.allows("vera", [], "models:publish", "medical")
    assert p.allows("vera", [], "models:read")
    assert not p.allows("vera", [], "models:read", "oncology")
    assert p.allows("root", [], "policy:admin", "finance")
    assert not p.allows("lee", [], "audit:read", "medical")
    with pytest.raises(ValueError, match="unknown permission 'models:write'"):
        p.allows("alice", [], "models:write")


def test_analysts_act_on_their_own_clusters_leads_on_anyones():
    p = policy()
    assert p.allows("alice", [], "clusters:delete", "medical", owner="alice")
    assert not p.allows("alice", [], "clusters:delete", "medical", owner="carol")
    assert p.allows("lee", [], "clusters:delete", "medical", owner="carol")
    assert p.allows("root", [], "clusters:scale", "finance", owner="bob")
    assert "needs the lead or admin role" in p.explain(
        "alice", [], "clusters:delete", "medical", owner="carol"
    )
    with pytest.raises(ValueError, match="needs the team"):
        p.allows("lee", [], "clusters:delete", owner="carol")


def test_groups_must_be_a_list_not_a_string():
    with pytest.raises(TypeError, match="not the string 'hub-medical'"):
        policy().roles_of("vera", "hub-medical")


def test_terminals_follow_the_terminals_list():
    assert policy().allows("root", [], "terminals:use")
    assert not policy().allows("lee", [], "terminals:use")
    opened = policy(terminals=["admin", "lead"])
    assert opened.allows("lee", [], "terminals:use", "medical")
    assert not policy(terminals=[]).allows("root", [], "terminals:use")


def test_a_file_can_redefine_a_builtin_role():
    p = policy(roles={"viewer": ["models:read"], "auditor": ["audit:read"]})
    assert p.permissions("vera", (), "medical") == {"models:read"}


def test_explain_gives_the_reason_in_one_line():
    p = policy()
    assert p.explain("vera", [], "models:publish", "medical") == (
        "vera has role viewer in medical, which lacks models:publish; roles with it: admin, analyst, lead"
    )
    assert "via group hub-audit" in p.explain("nobody", ["hub-audit"], "models:publish", "medical")
    assert (
        p.explain("alice", [], "models:publish", "finance")
        == "alice has no role in finance (their teams: medical)"
    )
    assert "is in no team" in p.explain("carol", [], "models:read", "medical")
    assert "oncology is not a team" in p.explain("alice", [], "models:read", "oncology")
    assert p.explain("alice", [], "models:publish", "medical").startswith(
        "alice may use models:publish in medical"
    )
    assert "roles viewer in medical, viewer in finance, which lack" in p.explain("vera", [], "models:delete")


# -- quotas ---------------------------------------------------------------------------


def test_quota_lookup_inherits_defaults_field_by_field():
    p = policy()
    assert p.quota_for(user="bob") == Quota(max_gpus=1, max_workers=8, max_clusters=1)
    assert p.quota_for(user="alice") == Quota(max_gpus=1, max_workers=8, max_clusters=2)
    assert p.quota_for(user="root") == Quota(max_gpus=None, max_workers=8, max_clusters=2)
    assert p.quota_for(team="finance") == Quota(max_gpus=2, max_workers=16, max_clusters=4)
    assert p.quota_for(team="medical") == Quota()  # no default_team: unlimited
    assert p.quota_for(user="root", team="finance") == Quota(max_gpus=2, max_workers=8, max_clusters=2)
    with pytest.raises(TypeError):
        p.quota_for()


def test_quotas_asked_again_give_the_same_answer_and_the_memo_stays_bounded(monkeypatch):
    p = policy()
    first = [p.quota_for(user="bob"), p.quota_for(user="root", team="finance"), p.quota_for(team="finance")]
    assert [p.quota_for(user="bob"), p.quota_for(user="root", team="finance"), p.quota_for(team="finance")] == first
    assert p == policy()  # what a policy remembers is not part of what it is
    monkeypatch.setattr("lepton_lab.security.policy.QUOTA_MEMO", 8)
    for i in range(50):
        assert p.quota_for(user=f"stranger-{i}") == Quota(max_gpus=1, max_workers=8, max_clusters=2)
    assert len(p._quotas) <= 8
    assert p.quota_for(user="bob") == first[0]


def test_check_quota_team_message_has_the_numbers():
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(policy(), "root", "finance", Usage(), Usage(gpus=2), Usage(gpus=1))
    assert str(caught.value).startswith(
        "team finance may hold 2 GPUs; 2 are in use and this request asks for 1"
    )
    assert "quotas.teams.finance.max_gpus" in str(caught.value)


def test_check_quota_user_message_has_the_numbers():
    with pytest.raises(
        QuotaExceeded, match=r"^user bob may hold 1 cluster; 1 is in use and this request asks for 1"
    ):
        check_quota(
            policy(), "bob", "finance", Usage(clusters=1), Usage(clusters=1), Usage(clusters=1, workers=2)
        )


def test_check_quota_passes_within_limits_and_ignores_what_is_not_asked():
    p = policy()
    check_quota(
        p, "bob", "finance", Usage(gpus=0, workers=4), Usage(gpus=1, workers=8), Usage(gpus=1, workers=4)
    )
    # Over quota on workers already, but asking only for a cluster is not blocked by workers.
    check_quota(p, "alice", None, Usage(workers=20), Usage(), Usage(clusters=1))
    with pytest.raises(QuotaExceeded, match="8 workers; 20 are in use"):
        check_quota(p, "alice", None, Usage(workers=20), Usage(), Usage(workers=1))


# -- the example policy -----------------------------------------------------------------


def test_example_policy_is_commented_and_makes_the_local_user_admin():
    text = example_policy_text("ada")
    for section in ("teams:", "roles:", "members:", "groups:", "quotas:", "terminals:"):
        before = text[: text.index(f"\n{section}")]
        assert before.rstrip().splitlines()[-1].startswith("#"), f"{section} has no comment above it"
    p = default_policy("ada")
    assert p.roles_of("ada") == {"medical": "admin", "finance": "admin"}
    assert p.roles_of("alice") == {"medical": "analyst"}
    assert p.roles_of("bob") == {"finance": "analyst"}
    assert p.roles_of("vera") == {"medical": "viewer", "finance": "viewer"}
    assert p.quota_for(user="ada") == Quota()


@pytest.mark.parametrize("user", ["alice", "bob", "vera", "no", "123", "jane doe", "o'neil"])
def test_example_policy_parses_for_awkward_local_user_names(user):
    p = default_policy(user)
    assert p.roles_of(user) == {"medical": "admin", "finance": "admin"}
    analysts = [name for name in p.members if p.roles_of(name).get("finance") == "analyst"]
    assert analysts and user not in analysts


def test_ensure_policy_file_writes_once_and_keeps_edits(tmp_path):
    path = tmp_path / "home" / "policy.yaml"
    first = ensure_policy_file(path, "ada")
    assert first.roles_of("ada")["medical"] == "admin"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "policy.yaml"]
    path.write_text(path.read_text().replace("bob: {finance: analyst}", "bob: {finance: viewer}"))
    again = ensure_policy_file(path, "someone-else")
    assert again.roles_of("bob") == {"finance": "viewer"}
    assert "someone-else" not in again.members
