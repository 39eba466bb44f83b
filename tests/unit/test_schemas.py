"""JSON Schemas of the policy and profiles files: each problem is one line naming the file and the field."""

from __future__ import annotations

import math

import pytest
import yaml

from lepton_lab.cluster.profile_schema import PROFILE_SCHEMA, PROFILES_FILE_SCHEMA, SITE_SCHEMA
from lepton_lab.cluster.profiles import BUILTIN, load_user_profiles
from lepton_lab.errors import ConfigError
from lepton_lab.schemas import check_schema, field_path, problem, validate
from lepton_lab.security.policy import example_policy_text, load_policy
from lepton_lab.security.policy_file import POLICY_SCHEMA
from lepton_lab.services.cluster_request import CREATE_REQUEST, check_create_request

GOOD_POLICY = {"version": 1, "teams": ["medical"], "members": {"alice": {"medical": "analyst"}}}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# -- the formatter ----------------------------------------------------------------------


def test_field_paths_join_keys_with_dots_and_positions_in_brackets():
    assert field_path(["members", "alice", "medical"]) == "members.alice.medical"
    assert field_path(["profiles", "p", "sites", 0, "workers"]) == "profiles.p.sites[0].workers"
    assert field_path([]) == ""


def test_default_reasons_name_the_key_and_the_keys_an_object_takes():
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"enum": ["x", "y"]}}}
    assert problem({"a": 1, "bb": 2}, schema) == ("", "unknown key 'bb'; did you mean 'b'? (keys: a, b, c)")
    assert problem({}, schema) == ("a", "missing")
    assert problem({"a": "1"}, schema) == ("a", "must be a whole number, got a string")
    assert problem({"a": 1, "c": "z"}, schema) == ("c", "one of x, y; got 'z'")
    assert problem({"a": 1, "b": None}, schema) == ("b", "must be a string, got nothing")
    assert problem({"a": 1}, schema) is None


def test_whole_numbers_are_ints_and_numbers_are_finite():
    whole, number = {"type": "integer"}, {"type": "number"}
    assert problem(3, whole) is None
    for bad in (True, 2.0, "2"):
        assert problem(bad, whole) is not None, bad
    assert problem(2.5, number) is None and problem(7, number) is None
    for bad in (math.inf, math.nan, False):
        assert problem(bad, number) is not None, bad


def test_sizes_are_bounded_in_bytes():
    schema = {"type": ["string", "integer"], "minBytes": 2**20, "maxBytes": 2**30}
    assert problem("512MiB", schema) is None and problem(2**21, schema) is None
    assert problem("1KiB", schema) == ("", "at least 1048576 bytes, got '1KiB'")
    assert problem("2GiB", schema) == ("", "at most 1073741824 bytes, got '2GiB'")
    assert problem("lots", schema) is not None


def test_validate_raises_one_line_with_source_and_field():
    with pytest.raises(ConfigError) as exc:
        validate({"teams": "medical", "version": 1}, POLICY_SCHEMA, "policy.yaml")
    assert one_line(exc) == "policy.yaml: teams: must be a list of team names, got a string"
    validate(GOOD_POLICY, POLICY_SCHEMA, "policy.yaml")


@pytest.mark.parametrize("schema", [POLICY_SCHEMA, PROFILES_FILE_SCHEMA, PROFILE_SCHEMA, SITE_SCHEMA,
                                    CREATE_REQUEST])
def test_every_schema_is_a_valid_draft_2020_12_schema(schema):
    check_schema(schema)


# -- the policy file --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\nteams: [medical]\ncolour: red\n", "policy.yaml: colour: unknown section (sections: "),
    ("version: 1\nteams: [medical]\nquotas: {default_user: {max_gpus: -2}}\n",
     "policy.yaml: quotas.default_user.max_gpus: must be a whole number >= 0, or null for unlimited; got -2"),
    ("version: 1\nteams: [medical]\nquotas: {default_user: {max_workers: many}}\n",
     "policy.yaml: quotas.default_user.max_workers: must be a whole number >= 0, or null for unlimited; got 'many'"),
    ("version: 1\nteams: [medical]\nquotas: {teams: {medical: {spend_cap: -1}}}\n",
     "policy.yaml: quotas.teams.medical.spend_cap: must be a number >= 0"),
    ("version: 1\nteams: [medical]\nroles: {auditor: [audit:reed]}\n",
     "policy.yaml: roles.auditor[0]: unknown permission 'audit:reed'; did you mean 'audit:read'?"),
    ("version: 1\nteams: [medical]\nmembers: {alice: [medical]}\n",
     "policy.yaml: members.alice: a user's teams ({team: role}) must be a mapping (key: value), got a list"),
    ("version: 1\nteams: [medical]\ntrusted: alice\n", "policy.yaml: trusted: must be a list of user names"),
    ("version: 1\nteams: [medical]\nprivacy: {medical: {epsilon: 0, delta: 1.0e-5}}\n",
     "policy.yaml: privacy.medical.epsilon: must be a positive number, got 0"),
    ("version: 1\nteams: [medical]\nprivacy: {medical: {epsilon: 1, delta: 2}}\n",
     "policy.yaml: privacy.medical.delta: must be between 0 and 1, got 2"),
    ("version: '1'\nteams: [medical]\n", "policy.yaml: version: unsupported version '1' (supported: 1)"),
    ("teams: [medical]\n", "policy.yaml: version: missing; add 'version: 1' at the top"),
])
def test_the_policy_schema_refuses_bad_files_in_one_line(tmp_path, text, expected):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_policy(path)
    assert one_line(exc).startswith(expected), str(exc.value)


def test_names_a_schema_cannot_check_are_checked_after_it():
    data = {**GOOD_POLICY, "members": {"alice": {"medical": "analist"}}}
    assert problem(data, POLICY_SCHEMA) is None  # well-formed ...
    path = "members.alice.medical: unknown role 'analist'"
    with pytest.raises(ConfigError, match=path):  # ... but names a role nobody defined
        from lepton_lab.security.policy import Policy

        Policy.from_dict(data, source="policy.yaml")


def test_the_shipped_example_policy_validates():
    data = yaml.safe_load(example_policy_text("ada"))
    assert problem(data, POLICY_SCHEMA) is None
    validate(data, POLICY_SCHEMA, "<default policy>")


# -- the profiles file ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("sites: [{name: cloud, memory: 2 gigs}]", "sites[0].memory: not a size such as 2GiB or 512MiB: '2 gigs'"),
    ("sites: [{name: cloud, memory: 12KiB}]", "sites[0].memory: at least 64MiB, got '12KiB'"),
    ("sites: [{name: cloud, memory: [4GiB]}]", "sites[0].memory: not a size such as 2GiB or 512MiB: ['4GiB']"),
    ("sites: [{name: cloud, workers: 257}]", "sites[0].workers: must be a whole number from 0 to 256, got 257"),
    ("sites: [{name: cloud, threads: 2.5}]", "sites[0].threads: must be a whole number from 1 to 256, got 2.5"),
    ("sites: [{name: cloud, gpus: some}]", "sites[0].gpus: must be a whole number from 0 to 256 or auto, got 'some'"),
    ("sites: [{name: cloud, launch: slurm}]", "sites[0].launch: one of local, ssh, kubernetes; got 'slurm'"),
    ("sites: [{name: cloud, cost_per_hour: .nan}]", "sites[0].cost_per_hour: a number >= 0, got nan"),
    ("sites: [{kind: cloud}]", "sites[0].name: missing; a site's name is lower-case letters"),
    ("sites: [{name: cloud, threads: 1, treads: 2}]", "sites[0].treads: unknown field (known: cost_per_hour"),
    ("idle_timeout: -5\n    sites: [{name: cloud}]", "idle_timeout: minutes, a number > 0 (or leave it out); got -5"),
    ("description: [a]\n    sites: [{name: cloud}]", "description: must be text"),
    ("sites: {name: cloud}", "sites: a non-empty list of sites"),
])
def test_the_profiles_schema_refuses_bad_files_in_one_line(tmp_path, body, expected):
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  mine:\n    " + body + "\n")
    with pytest.raises(ConfigError) as exc:
        load_user_profiles(path)
    assert one_line(exc).startswith(f"profiles.yaml: profiles.mine.{expected}"), str(exc.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("profile:\n  mine: {sites: [{name: cloud}]}\n", "profiles.yaml: unknown key 'profile'; the top level has one key"),
    ("- mine\n", "profiles.yaml: top level must be a mapping with one key, 'profiles'"),
    ("profiles: [mine]\n", "profiles.yaml: profiles: must map profile names to profiles"),
    ("profiles:\n  'my profile': {sites: [{name: cloud}]}\n", "profiles.yaml: profiles.my profile: bad profile name"),
])
def test_the_top_of_the_profiles_file_is_checked(tmp_path, text, expected):
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_user_profiles(path)
    assert one_line(exc).startswith(expected), str(exc.value)


def test_an_empty_profiles_file_is_no_profiles(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text("")
    assert load_user_profiles(path) == {}
    path.write_text("profiles:\n")
    assert load_user_profiles(path) == {}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_the_builtin_profiles_validate(name):
    body = BUILTIN[name].to_dict()
    for key in ("name", "builtin"):
        body.pop(key)
    assert problem(body, PROFILE_SCHEMA) is None
    assert problem({"profiles": {name: body}}, PROFILES_FILE_SCHEMA) is None


# -- a request to start a cluster -------------------------------------------------------


@pytest.mark.parametrize(("request_", "expected"), [
    ({"team": "medical", "workers": {"fog": 1}}, "workers: unknown key 'fog' (keys: cloud, edge)"),
    ({"team": "medical", "workers": {"cloud": -1}}, "workers.cloud: must be a whole number from 0 to 256, got -1"),
    ({"team": "medical", "workers": {"edge": 2.0}}, "workers.edge: must be a whole number from 0 to 256, got 2.0"),
    ({"team": "medical", "gpus": 65}, "gpus: a whole number from 0 to 64, or auto (every free GPU); got 65"),
    ({"team": "medical", "memory": "lots"}, "memory: a size such as 4GiB, from 1MiB to 1PiB; got 'lots'"),
    ({"team": "medical", "memory": 1024}, "memory: a size such as 4GiB, from 1MiB to 1PiB; got 1024"),
    ({"team": None}, "team: wrong type: a team name, got nothing"),
    ({"profile": "local"}, "missing field 'team'"),
])
def test_a_bad_create_request_is_one_line_naming_the_field(request_, expected):
    with pytest.raises(ConfigError) as exc:
        check_create_request(request_)
    assert one_line(exc) == expected


def test_a_create_request_takes_counts_sizes_and_nulls():
    for good in ({"team": "medical", "profile": None, "name": None, "workers": None, "gpus": None, "threads": None,
                  "memory": None},
                 {"team": "medical", "profile": {"name": "p", "sites": [{"name": "cloud"}]}, "name": "ward-1",
                  "workers": {"cloud": 2, "edge": 0}, "gpus": "auto", "threads": 4, "memory": "4GiB"},
                 {"team": "medical", "memory": 2**30, "gpus": 0}):
        check_create_request(good)
