"""A real Jupyter kernel that started a cluster takes it along when it shuts down."""

import os
import time

import psutil
from jupyter_client.manager import start_new_kernel


def _run(kc, code, timeout=120):
    msg_id = kc.execute(code)
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"]


def test_kernel_shutdown_stops_its_cluster(tmp_path):
    env = {**os.environ, "LEPTON_HOME": str(tmp_path), "LEPTON_TRANSPORT": "embedded"}
    env.pop("JPY_PARENT_PID", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        assert _run(kc, "%load_ext lepton_lab")["status"] == "ok"
        assert _run(kc, "%lepton up --name k --cloud 1 --edge 1 --no-view")["status"] == "ok"
        kernel_pid = km.provisioner.process.pid
        kernel = psutil.Process(kernel_pid)
        deadline = time.monotonic() + 30
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [p for p in kernel.children(recursive=True) if "multiprocessing" in " ".join(p.cmdline())
                       and "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert len(workers) >= 2
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    deadline = time.monotonic() + 20
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert not alive, f"worker processes outlived the kernel: {[p.pid for p in alive]}"
