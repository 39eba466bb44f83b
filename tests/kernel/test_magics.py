"""`%lepton` and `%%lepton run` through a real IPython shell."""

import os
import re

import pytest

import lepton_lab
from lepton_lab.cluster.workers import workers_now


def run(shell, capsys, code):
    result = shell.run_cell(code)
    out = capsys.readouterr()
    return result, out.out, out.err


@pytest.fixture(scope="module")
def up(shell):
    result = shell.run_cell("%lepton up --name magic-test")
    assert result.success, result.error_in_exec
    return lepton_lab.current("magic-test")


def test_up_binds_client_and_shows_view(shell, up, capsys):
    client = shell.user_ns["client"]
    assert client is up.client and client.status == "running"
    names = sorted(w["name"] for w in workers_now(client).values())
    assert names == ["cloud-0", "cloud-1", "edge-0", "edge-1"]
    views = shell.magics_manager.registry["LeptonMagics"].views
    assert views and views[-1].handle is up and views[-1].running


def test_second_up_with_same_name_reuses(shell, up, capsys):
    result, out, _ = run(shell, capsys, "%lepton up --name magic-test --no-view")
    assert result.success and up.address in out
    assert shell.user_ns["client"] is up.client


def test_run_cell_on_edge_worker_streams_output_and_returns(shell, up, capsys):
    edge_pids = {pid for addr, pid in up.client.run(os.getpid).items()
                 if workers_now(up.client)[addr]["name"].startswith("edge-")}
    shell.run_cell("base = 20")
    result, out, _ = run(shell, capsys, (
        "%%lepton run --site edge --job greet --return pid,answer\n"
        "import os\n"
        "pid = os.getpid()\n"
        "print('hello from the edge', pid)\n"
        "answer = base + 22\n"
    ))
    assert result.success, result.error_in_exec
    pid = shell.user_ns["pid"]
    assert pid in edge_pids and pid != os.getpid()
    assert f"hello from the edge {pid}" in out
    assert shell.user_ns["answer"] == 42


def test_run_cell_reads_futures_on_the_worker(shell, up, capsys):
    shell.run_cell("fut = client.submit(lambda: list(range(5)), pure=False)")
    result, _, _ = run(shell, capsys, "%%lepton run --site edge-0 --return total\n"
                                      "total = sum(fut.result() if hasattr(fut, 'result') else fut)\n")
    # a site name that is not a site is refused clearly
    assert not result.success and "no worker on site 'edge-0'" in str(result.error_in_exec)
    result, _, _ = run(shell, capsys, "%%lepton run --site edge --return total\ntotal = sum(fut)\n")
    assert result.success, result.error_in_exec
    assert shell.user_ns["total"] == 10


def test_run_cell_error_points_at_cell_lines(shell, up, capsys):
    result, out, err = run(shell, capsys, "%%lepton run --site cloud\nprint('before')\nx = 1\n1 / 0\n")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out + err)
    assert "before" in text
    # the cell's body starts after the magic line: `1 / 0` is its line 3
    assert "----> 3 1 / 0" in text and "line 3" in text


@pytest.mark.parametrize("line, message", [
    ("%lepton frob", "unknown line subcommand 'frob' (valid: clusters, compress, connect, down, federate, help, load"),
    ("%lepton up --bogus 3", "unrecognized arguments: --bogus 3 (valid options: --cloud, --edge"),
    ("%lepton scale many", "argument n: not a whole number: 'many'"),
    ("%lepton scale 2 --site fog", "no site 'fog'"),
    ("%lepton status nosuch", "knows no cluster 'nosuch'"),
    ("%lepton up --profile nope", "unknown profile 'nope'"),
    ("%lepton up --gpus 1 --name g", "no GPU found on this machine"),
    ("%lepton run --site edge", "'run' is a cell magic"),
    ("%lepton connect tcp://127.0.0.1:1 --timeout 1", "could not reach a Dask scheduler"),
    ("%lepton start", "the following arguments are required: name"),
    ("%lepton start nosuch", "no cluster 'nosuch'"),
    ("%lepton start magic-test", "cluster magic-test is running"),
])
def test_bad_input_is_one_line_usage_error(shell, up, capsys, line, message):
    from IPython.core.error import UsageError

    result, out, err = run(shell, capsys, line)
    assert isinstance(result.error_in_exec, UsageError)
    text = (out + err).strip()
    assert message in text, text
    assert "Traceback" not in text
    assert len(str(result.error_in_exec).splitlines()) == 1


def test_cell_magic_without_site_is_usage_error(shell, up, capsys):
    from IPython.core.error import UsageError

    result, out, err = run(shell, capsys, "%%lepton run\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert "--site" in str(result.error_in_exec)


def test_status_clusters_scale_help(shell, up, capsys):
    result, out, _ = run(shell, capsys, "%lepton status --static")
    assert result.success
    result, out, _ = run(shell, capsys, "%lepton clusters")
    assert result.success and "magic-test" in out
    assert "/h" not in out and "cost" not in out  # the local profile sets no price
    result, out, _ = run(shell, capsys, "%lepton scale 3 --site edge")
    assert result.success and "edge=3" in out
    assert lepton_lab.status().site("edge").workers == 3
    result, out, _ = run(shell, capsys, "%lepton help")
    assert "up [--profile PROFILE]" in out and "run --site SITE" in out


def test_down_stops_and_unbinds(shell, up, capsys):
    nannies = set(up.client.run(os.getpid).values())
    magics = shell.magics_manager.registry["LeptonMagics"]
    views = [v for v in magics.views if v.handle.name == "magic-test"]
    assert views
    result, out, _ = run(shell, capsys, "%lepton down magic-test")
    assert result.success and "stopped magic-test" in out
    # the live view stays, frozen on its last snapshot, and says why
    for view in views:
        assert not view.running and view.widget.comm is not None and view not in magics.views
        assert "cluster magic-test stopped" in view.header.value
    assert "client" not in shell.user_ns
    import time

    import psutil
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in nannies):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in nannies)
