"""`lepton-lab worker` as real processes joining a scheduler on loopback."""

import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from distributed import Client, LocalCluster

import lepton_lab
from lepton_lab.cluster.workers import workers_now
from tests.helpers import Output, dump_stacks, traceable


def start_worker(address, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "lepton_lab.cli", "worker", "--scheduler", address, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=traceable(),
    )


def joined(proc, out: Output, name: str, timeout: float = 45) -> str:
    """The command's line saying its worker ``name`` joined; on none, every thread's stack in the failure."""
    if out.has("stdout", f"worker {name} (", timeout):
        return next(line for line in out.text["stdout"].splitlines() if line.startswith(f"worker {name} ("))
    dump_stacks(proc.pid)
    said = out.done(10)
    pytest.fail(f"lepton-lab worker said nothing of {name} joining in {timeout:.0f} s "
                f"(stdout {said['stdout']!r}); its stderr, stacks at the end:\n{said['stderr'][-8000:]}")


def test_workers_join_by_site_and_take_placed_work():
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        procs = [start_worker(cluster.scheduler_address, "--site", "edge-hospital-a", "--index", "0"),
                 start_worker(cluster.scheduler_address, "--site", "cloud", "--nthreads", "2", "--index", "0")]
        outs = [Output(p) for p in procs]
        try:
            # A user waits for the command's word that its worker joined, as the test does.
            line = joined(procs[0], outs[0], "edge-hospital-a-0")
            assert line.startswith("worker edge-hospital-a-0 (edge, resources {'edge': 1, 'edge-hospital-a': 1}) "
                                   f"joined {cluster.scheduler_address} from tcp://127.0.0.1:"), line
            joined(procs[1], outs[1], "cloud-0")
            client.wait_for_workers(2, timeout=60)
            info = {w["name"]: w for w in workers_now(client).values()}
            assert info["edge-hospital-a-0"]["resources"] == {"edge": 1, "edge-hospital-a": 1}
            assert info["cloud-0"]["resources"] == {"cloud": 2} and info["cloud-0"]["nthreads"] == 2
            pid = client.submit(os.getpid, resources=lepton_lab.on_site("edge-hospital-a"), pure=False).result()
            children = {c.pid for c in psutil.Process(procs[0].pid).children(recursive=True)}
            assert pid in children  # ran in the process tree of the edge worker command
            handle = lepton_lab.connect(cluster.scheduler_address, name="joined")
            snap = handle.snapshot()
            assert {(w.site, w.kind) for w in snap.workers} == {("edge-hospital-a", "edge"), ("cloud", "cloud")}
            lepton_lab.down("joined")
        finally:
            for p in procs:
                p.terminate()
            codes = [p.wait(30) for p in procs]
        said = [o.done() for o in outs]
        assert codes == [0, 0], [s["stderr"][-2000:] for s in said]


def test_a_worker_stopped_while_joining_exits_cleanly():
    # A scheduler that takes the connection and never answers holds the worker in its start.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        port = silent.getsockname()[1]
        proc = start_worker(f"tcp://127.0.0.1:{port}", "--site", "edge-a", "--index", "0")
        try:
            conn, _ = silent.accept()  # the nanny is registering: the command is past its start-up
            with conn:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
        finally:
            proc.kill()
    assert code == 0, proc.stderr.read()
    assert "stopped before joining" in proc.stderr.read()


@pytest.mark.parametrize("args, message", [
    (["--site", "Edge_A"], "name: lower-case letters"),
    (["--site", "edge-a", "--nthreads", "0"], "threads"),
    (["--site", "edge-a", "--gpus", "lots"], "--gpus"),
    (["--site", "cloud", "--gpus", "1"], "no GPU found on this machine"),
    (["--site", "edge-a", "--gpus", "1"], "site.gpus: only cloud sites carry GPUs"),
    (["--site", "edge-a", "--tls-cert", "x.pem"], "go together"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    p = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "worker", "--scheduler", "tcp://127.0.0.1:9", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
