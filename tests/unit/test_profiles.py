import pytest

from lepton_lab.cluster.profiles import BUILTIN, all_profiles, get_profile, load_user_profiles
from lepton_lab.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "profiles.yaml"
    p.write_text(text)
    return p


def test_builtin_profiles_have_cloud_and_edge_sites():
    local = BUILTIN["local"]
    assert [(s.name, s.kind, s.workers) for s in local.sites] == [("cloud", "cloud", 2), ("edge", "edge", 2)]
    hybrid = BUILTIN["hybrid"]
    assert hybrid.site("cloud").gpus == "auto"
    assert {s.name for s in hybrid.sites if s.kind == "edge"} == {"edge-hospital-a", "edge-branch-b"}
    assert BUILTIN["edge-fleet"].site("edge").workers >= 4


def test_user_profile_loads_and_overrides_builtin(tmp_path):
    p = write(tmp_path, """
profiles:
  radiology:
    description: two hospitals
    sites:
      - {name: cloud, kind: cloud, workers: 1, threads: 2, memory: 4GiB, cost_per_hour: 2.5}
      - {name: edge-hospital-a, workers: 1, memory: 512MiB, cost_per_hour: 0.1}
  local:
    sites:
      - {name: cloud, workers: 1}
""")
    profiles = all_profiles(p)
    rad = profiles["radiology"]
    assert rad.site("edge-hospital-a").kind == "edge"  # inferred from the name
    assert rad.site("cloud").memory == 4 * 2**30
    assert rad.site("cloud").cost_per_hour == 2.5
    assert [s.name for s in profiles["local"].sites] == ["cloud"]
    assert "hybrid" in profiles


@pytest.mark.parametrize("body, field", [
    ("sites: [{name: cloud, workers: -1}]", "sites[0].workers"),
    ("sites: [{name: cloud, workers: two}]", "sites[0].workers"),
    ("sites: [{name: cloud, threads: 0}]", "sites[0].threads"),
    ("sites: [{name: cloud, memory: lots}]", "sites[0].memory"),
    ("sites: [{name: cloud, memory: 1MiB}]", "sites[0].memory"),
    ("sites: [{name: Edge_A}]", "sites[0].name"),
    ("sites: [{name: GPU}]", "sites[0].name"),
    ("sites: [{name: e, kind: fog}]", "sites[0].kind"),
    ("sites: [{name: edge-a, gpus: 1}]", "sites[0].gpus"),
    ("sites: [{name: cloud, cost_per_hour: -2}]", "sites[0].cost_per_hour"),
    ("sites: [{name: cloud, colour: red}]", "sites[0].colour"),
    ("sites: [{name: cloud}, {name: cloud}]", "sites[1].name"),
    ("sites: []", "sites"),
    ("workers: 3", "workers"),
])
def test_bad_field_is_named_in_one_line(tmp_path, body, field):
    p = write(tmp_path, "profiles:\n  mine:\n    " + body + "\n")
    with pytest.raises(ConfigError) as e:
        load_user_profiles(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert "profiles.yaml" in msg and f"profiles.mine.{field}" in msg


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "profiles:\n  mine: [\n")
    with pytest.raises(ConfigError, match=r"profiles.yaml: line \d+ not valid YAML"):
        load_user_profiles(p)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nope' .*local"):
        get_profile("nope")


def test_overrides_apply_per_kind():
    p = BUILTIN["hybrid"].with_overrides(cloud=3, edge=2, threads=2, memory="1GiB", gpus=0)
    assert p.site("cloud").workers == 3 and p.site("cloud").gpus == 0
    assert all(s.workers == 2 for s in p.sites if s.kind == "edge")
    assert all(s.threads == 2 and s.memory == 2**30 for s in p.sites)
    with pytest.raises(ConfigError, match="--edge"):
        BUILTIN["local"].with_overrides(edge=-1)
    with pytest.raises(ConfigError, match="--memory"):
        BUILTIN["local"].with_overrides(memory="huge")


def test_missing_file_means_no_user_profiles(tmp_path):
    assert load_user_profiles(tmp_path / "absent.yaml") == {}
