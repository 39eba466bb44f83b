"""`%lepton up --name N` never reuses a running cluster that differs from what is asked."""

import pytest
from IPython.core.error import UsageError

import lepton_lab
from lepton_lab.api import _differences
from lepton_lab.errors import ConfigError

RUNNING = {
    "name": "ward", "profile": "local",
    "sites": [{"name": "cloud", "kind": "cloud", "workers": 1, "gpus": 0, "threads": 1, "memory": "1.00 GiB"},
              {"name": "edge", "kind": "edge", "workers": 1, "gpus": 0, "threads": 1, "memory": "1.00 GiB"}],
}


def test_differences_name_each_option_that_differs():
    assert _differences(RUNNING, None, {}) == []
    assert _differences(RUNNING, "local", {"cloud": 1, "edge": 1, "threads": 1, "memory": "1GiB"}) == []
    assert _differences(RUNNING, "hybrid", {"edge": 3, "memory": "2GiB"}) == [
        "profile local (asked hybrid)", "1 workers per edge site (asked 3)", "1.00 GiB memory per worker (asked 2GiB)"]
    assert _differences(RUNNING, None, {"gpus": "auto"}) == []


def run(shell, capsys, code):
    result = shell.run_cell(code)
    out = capsys.readouterr()
    return result, (out.out + out.err).strip()


def refused(shell, capsys, line: str) -> str:
    result, text = run(shell, capsys, line)
    assert isinstance(result.error_in_exec, UsageError), text
    message = str(result.error_in_exec)
    assert len(message.splitlines()) == 1 and "Traceback" not in text
    return message


def test_up_by_name_reuses_only_what_matches(shell, capsys):
    result, text = run(shell, capsys, "%lepton up --name opts --cloud 1 --edge 1 --no-view")
    assert result.success, text
    first = lepton_lab.current("opts")
    assert "already running" not in text

    # A bad option is an error even though the name exists.
    assert "not a size such as 2GiB or 512MiB: 'lots'" in refused(shell, capsys, "%lepton up --name opts --memory lots")
    with pytest.raises(ConfigError, match="memory: not a size"):
        lepton_lab.up(name="opts", memory="lots")

    # The same options: the running cluster, and the output says so.
    result, text = run(shell, capsys, "%lepton up --name opts --edge 1 --no-view")
    assert result.success, text
    assert "already running with these options" in text
    assert lepton_lab.current("opts") is first

    # Other options: one line naming the difference; nothing reused, nothing changed.
    message = refused(shell, capsys, "%lepton up --name opts --edge 2 --threads 2 --no-view")
    assert "cluster opts is running with 1 workers per edge site (asked 2); 1 threads per worker (asked 2)" in message
    assert "--replace" in message
    assert {s["name"]: s["workers"] for s in first.info["sites"]} == {"cloud": 1, "edge": 1}
    assert not first.closed

    # --replace restarts it with the new options.
    result, text = run(shell, capsys, "%lepton up --name opts --edge 2 --replace --no-view")
    assert result.success, text
    second = lepton_lab.current("opts")
    assert second is not first and first.closed
    assert second.address != first.address
    assert {s["name"]: s["workers"] for s in second.info["sites"]} == {"cloud": 2, "edge": 2}  # profile + --edge
    assert shell.user_ns["client"] is second.client


def test_an_unnamed_cluster_gets_a_readable_name(shell, capsys):
    from lepton_lab.security.identity import local_user

    result, text = run(shell, capsys, "%lepton up --cloud 1 --edge 0 --no-view")
    assert result.success, text
    name = f"local-{local_user()}-1"
    assert f"cluster {name} at " in text
    assert lepton_lab.current().name == name
    run(shell, capsys, f"%lepton down {name}")
