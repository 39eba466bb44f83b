"""Kernel → Interrupt during cluster work: the work is cancelled, its workers freed, one line shown.

``%%lepton run``, ``%lepton train``, ``predict``, ``federate`` and ``tune`` go through a real kernel
(``jupyter_client``): the interrupt is the SIGINT Jupyter sends to the kernel's whole process
group, workers included, sent once the test sees the job's task running on its worker.
"""

from __future__ import annotations

import json
import os
import queue
import re
import time

from distributed import Client, Security
from jupyter_client.manager import start_new_kernel

from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import Interrupted

LINE = re.compile(r"^interrupted: cancelled job (?P<job>.+?) on (?P<workers>[\w-]+(, [\w-]+)*)"
                  r"( \(restarted (?P<restarted>[\w-]+(, [\w-]+)*) to stop its running code\))?$")


class Kernel:
    """A real kernel with a private LEPTON_HOME and the in-process services."""

    def __init__(self, home):
        env = {**os.environ, "LEPTON_HOME": str(home), "LEPTON_TRANSPORT": "embedded"}
        env.pop("JPY_PARENT_PID", None)
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)

    def submit(self, code: str) -> str:
        return self.kc.execute(code)

    def messages(self, msg_id: str, *, until, timeout: float = 300) -> list[dict]:
        """iopub messages of ``msg_id`` up to the first for which ``until(msg)`` holds.

        ``until(None)`` is asked too, every second without a message of this cell (output of
        other cells' threads, such as a progress bar's, may keep arriving meanwhile).
        """
        out = []
        end = time.monotonic() + timeout
        while True:
            assert time.monotonic() < end, f"no end within {timeout} s: {_texts(out)}"
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                if until(None):
                    return out
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                if until(None):
                    return out
                continue
            out.append(msg)
            if until(msg):
                return out

    def reply(self, msg_id: str, timeout: float = 300) -> dict:
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"]

    def run(self, code: str, timeout: float = 300) -> tuple[dict, str]:
        """Execute ``code``; its reply and everything it printed."""
        msg_id = self.submit(code)
        msgs = self.messages(msg_id, until=_idle, timeout=timeout)
        return self.reply(msg_id, timeout), "".join(m["content"].get("text", "") for m in msgs
                                                    if m["msg_type"] == "stream")

    def interrupt_after(self, code: str, ready, timeout: float = 300) -> tuple[dict, list[dict]]:
        """Execute ``code``, interrupt the kernel once ``ready(msg)`` holds for one of its messages."""
        msg_id = self.submit(code)
        before = self.messages(msg_id, until=lambda m: _idle(m) or ready(m), timeout=timeout)
        assert not (before and _idle(before[-1])), f"the cell ended before it could be interrupted: {_texts(before)}"
        self.km.interrupt_kernel()
        after = self.messages(msg_id, until=_idle, timeout=timeout)
        return self.reply(msg_id, timeout), before + after

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def _idle(msg: dict | None) -> bool:
    return msg is not None and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def _texts(msgs: list[dict]) -> str:
    parts = []
    for m in msgs:
        c = m["content"]
        parts.append(c.get("text", "") + "\n".join(c.get("traceback", [])))
    return "\n".join(parts)


def _assert_one_line(reply: dict, msgs: list[dict], job: str, worker: str) -> re.Match:
    """The cell ended as an error shown as one ``interrupted: ...`` line, no package frames."""
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert len(errors) == 1, _texts(msgs)
    assert reply["status"] == "error" and reply["ename"] == "Interrupted", reply
    assert errors[0]["traceback"] == reply["traceback"] and len(reply["traceback"]) == 1, reply["traceback"]
    line = reply["traceback"][0]
    match = LINE.match(line)
    assert match, line
    assert match["job"] == job and match["workers"] == worker, line
    shown = _texts(msgs)
    assert "Traceback" not in shown and not re.search(r'File ".*lepton_lab', shown), shown
    assert "KeyboardInterrupt" not in shown and "lepton_lab" not in line, shown
    return match


def _up(kernel: Kernel) -> str:
    """Start the small cluster; its scheduler address."""
    reply, out = kernel.run("%load_ext lepton_lab")
    assert reply["status"] == "ok", reply
    reply, out = kernel.run("%lepton up --name k --cloud 1 --edge 1 --no-view")
    assert reply["status"] == "ok", reply
    address = re.search(r"cluster k at (\S+);", out)
    assert address, out
    return address[1]


def _probe():
    """A function for ``Client.run``: the keys whose code still runs in a thread of the worker.

    Made here so that it travels by value: a worker cannot import this test module.
    """

    def running(dask_worker) -> list[str]:
        out = []
        for ts in list(dask_worker.state.tasks.values()):
            state = ts.previous if ts.state in ("cancelled", "resumed") else ts.state
            if state in ("executing", "long-running"):
                out.append(str(ts.key))
        return out

    return running


def _outside(kernel: Kernel, address: str) -> Client:
    """A client of the kernel's cluster from this test process, with the kernel's own certificate
    (clusters speak TLS with or without a server)."""
    reply, out = kernel.run(
        "import json as _json, lepton_lab as _ll\n"
        "_sec = _ll.current().client.security\n"
        "print(_json.dumps({k: getattr(_sec, k) for k in ('tls_ca_file', 'tls_client_cert', 'tls_client_key')}))")
    assert reply["status"] == "ok", (reply, out)
    creds = json.loads(out.strip().splitlines()[-1])
    return Client(address, security=Security(require_encryption=True, **creds), timeout=30)


def _wait_free(kernel: Kernel, address: str, worker: str, timeout: float = 60) -> None:
    """Within ``timeout``: the live view shows no job on ``worker``, and its threads run nothing."""
    probe = ("import lepton_lab\n"
             f"print({{w.name: sorted(w.jobs) for w in lepton_lab.status().workers}}.get({worker!r}))")
    with _outside(kernel, address) as outside:
        end = time.monotonic() + timeout
        while True:
            reply, out = kernel.run(probe)
            assert reply["status"] == "ok", reply
            running = {str(workers_now(outside)[a]["name"]): keys
                       for a, keys in outside.run(_probe()).items()}
            if out.strip() == "[]" and not running.get(worker):
                return
            assert time.monotonic() < end, f"{worker} still busy: jobs {out.strip()}, running {running}"
            time.sleep(0.5)


def _run_returns(kernel: Kernel, site: str) -> None:
    reply, _ = kernel.run(f"%%lepton run --site {site} --return x --timeout 120\nx = 6 * 7")
    assert reply["status"] == "ok", reply
    reply, out = kernel.run("print(x)")
    assert out.strip() == "42"


def test_interrupt_cancels_a_running_cell_and_frees_its_worker(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        address = _up(kernel)
        cell = '%%lepton run --site edge\nimport time\nprint("sleeping", flush=True)\ntime.sleep(600)'
        reply, msgs = kernel.interrupt_after(
            cell, lambda m: m["msg_type"] == "stream" and "sleeping" in m["content"]["text"])
        _assert_one_line(reply, msgs, job="cell", worker="edge-0")
        _wait_free(kernel, address, "edge-0")
        _run_returns(kernel, "edge")
        # The interrupt reached the workers' process group too; every worker is still there.
        reply, out = kernel.run("import lepton_lab\nprint(sorted(w.name for w in lepton_lab.status().workers))")
        assert out.strip() == "['cloud-0', 'edge-0']"
    finally:
        kernel.close()


def test_interrupt_cancels_training_and_frees_its_worker(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        address = _up(kernel)
        reply, _ = kernel.run(
            "from sklearn.datasets import load_digits\nfrom torch import nn\n"
            "X, y = load_digits(return_X_y=True)\nX = (X / 16).astype('float32')\n"
            "net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))")
        assert reply["status"] == "ok", reply
        with _outside(kernel, address) as outside:
            def first_epoch(msg: dict | None) -> bool:
                events = outside.get_events("lepton-train:slow") or ()
                return any("epoch" in e for _, e in events)

            reply, msgs = kernel.interrupt_after(
                "%lepton train torch --model net --data X,y --epochs 100000 --batch-size 16 --name slow "
                "--site cloud --checkpoint-every 100000", first_epoch)
        _assert_one_line(reply, msgs, job="train-slow", worker="cloud-0")
        _wait_free(kernel, address, "cloud-0")
        _run_returns(kernel, "cloud")
        reply, out = kernel.run("print('slow' in dir())")
        assert out.strip() == "False"
    finally:
        kernel.close()


TUNE = """\
from sklearn.datasets import make_classification
import lepton_lab
X, y = make_classification(20000, 20, random_state=4)
kw = dict(data=(X, y), space="max_depth=int:1..6 eta=float:0.001..0.5:log", study="interrupted", team="finance",
          rounds=150, pruner="none", site="cloud", progress=False, view=False)
"""

TUNE_AFTER = """\
import json
from lepton_lab import config
from lepton_lab.security.audit import AuditLog
from lepton_lab.security.policy import default_policy
from lepton_lab.services import Actor
from lepton_lab.services.studies import StudyStore
study = StudyStore(default_policy("me"), home=config.home(), audit=AuditLog()).open(
    Actor("me"), "finance", "interrupted", direction="maximize")
cut = [t for t in study.trials if t.state.name == "FAIL"]
running = [t for t in study.trials if t.state.name == "RUNNING"]
again = lepton_lab.tune("xgboost", trials=len(cut), **kw)
redone = [t for t in again.study.trials if t.number > max(c.number for c in cut)]
print(json.dumps({"cut": len(cut), "errors": sorted({str(t.user_attrs.get("error")) for t in cut}),
                  "running": len(running), "ran_now": again.ran_now,
                  "same": [t.params for t in redone] == [t.params for t in cut]}))
"""


def test_interrupt_fails_the_running_tune_trials_and_resume_runs_them_first(tmp_path):
    import json

    kernel = Kernel(tmp_path)
    try:
        address = _up(kernel)
        reply, _ = kernel.run(TUNE)
        assert reply["status"] == "ok", reply
        with _outside(kernel, address) as outside:
            def trial_runs(msg: dict | None) -> bool:
                return any(str(k).startswith("tune-interrupted-")
                           for keys in outside.processing().values() for k in keys)

            reply, msgs = kernel.interrupt_after('lepton_lab.tune("xgboost", trials=4, **kw)', trial_runs)
        assert reply["status"] == "error" and reply["ename"] in ("KeyboardInterrupt", "Interrupted"), reply
        _wait_free(kernel, address, "cloud-0")
        reply, out = kernel.run(TUNE_AFTER)
        assert reply["status"] == "ok", reply
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["cut"] >= 1 and seen["errors"] == ["interrupted"] and seen["running"] == 0, seen
        assert seen["ran_now"] == seen["cut"] and seen["same"], seen
    finally:
        kernel.close()


# -- in this process ------------------------------------------------------------------------


def test_magic_shows_an_interrupt_of_kernel_side_work_as_one_line(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from lepton_lab.kernel.magics import LeptonMagics

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "lepton_lab")
    loaded = shell.magics_manager.registry["LeptonMagics"]
    magics = LeptonMagics(shell)  # a magic of its own: the loaded one keeps its subcommands

    def nap(magics, a):
        raise KeyboardInterrupt

    magics.add_verb("nap", "raises KeyboardInterrupt", nap)
    shell.register_magics(magics)
    try:
        capsys.readouterr()
        result = shell.run_cell("%lepton nap")
        out = capsys.readouterr()
    finally:
        shell.register_magics(loaded)
    assert isinstance(result.error_in_exec, Interrupted)
    assert str(result.error_in_exec) == "%lepton nap stopped"
    assert (out.out + out.err).strip() == "interrupted: %lepton nap stopped"


def _busy_workers(outside: Client, key: str = "") -> set[str]:
    """Names of the workers whose threads run a task whose key has ``key`` in it."""
    names = {a: str(w["name"]) for a, w in workers_now(outside).items()}
    return {names.get(a, a) for a, keys in outside.run(_probe()).items() if any(key in k for k in keys)}


SLEEPY = """\
import time, torch
import lepton_lab
from lepton_lab.ml.deployments import METADATA, PLUGIN_PREFIX, ModelDeployment

class Sleepy(torch.nn.Module):  # a model whose predictions take ten minutes
    def forward(self, x):
        time.sleep(600)
        return x

class SleepyDeployment(ModelDeployment):  # a deployment keeping a Sleepy loaded on the edge worker
    def setup(self, worker):
        if "edge" in worker.state.total_resources:
            self.model, self.manifest = Sleepy(), {}

client = lepton_lab.current("k").client
client.register_plugin(SleepyDeployment("sleepy", "edge", b"", "{}"), name=PLUGIN_PREFIX + "sleepy")
client.set_metadata([*METADATA, "sleepy"], {"name": "sleepy", "model": "sleepy", "version": 1, "site": "edge"})
"""


def test_interrupt_cancels_predict_and_frees_its_worker(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        address = _up(kernel)
        reply, out = kernel.run(SLEEPY)
        assert reply["status"] == "ok", (reply, out)
        with _outside(kernel, address) as outside:
            reply, msgs = kernel.interrupt_after("lepton_lab.predict('sleepy', [[1.0, 2.0]])",
                                                 lambda m: "edge-0" in _busy_workers(outside))
        match = _assert_one_line(reply, msgs, job="predict sleepy@1", worker="edge-0")
        assert match
        _wait_free(kernel, address, "edge-0")
        _run_returns(kernel, "edge")
    finally:
        kernel.close()


FEDERATE = """\
import numpy as np
from torch import nn
from lepton_lab.ml import federated as fed

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4)).astype("float32")
y = (X[:, 0] > 0).astype("float32")

def load_site(site):
    return X, y

client = lepton_lab.current("fl").client
fed.inject_fault(client, "edge-a", "train", rounds=[1], mode="hang", seconds=600)
"""


def test_interrupt_cancels_a_federated_round_and_frees_the_hung_site(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        reply, _ = kernel.run("%load_ext lepton_lab")
        assert reply["status"] == "ok", reply
        reply, out = kernel.run(
            "import lepton_lab\n"
            "handle = lepton_lab.up({'name': 'interrupt-fl', 'sites': ["
            "{'name': 'edge-a', 'kind': 'edge', 'workers': 1, 'memory': '512MiB'}, "
            "{'name': 'edge-b', 'kind': 'edge', 'workers': 1, 'memory': '512MiB'}]}, name='fl')\n"
            "print(handle.address)")
        assert reply["status"] == "ok", (reply, out)
        address = out.strip().splitlines()[-1]
        reply, out = kernel.run(FEDERATE)
        assert reply["status"] == "ok", (reply, out)
        with _outside(kernel, address) as outside:
            # once edge-b has sent its update: the round then waits on the hung site alone
            reply, msgs = kernel.interrupt_after(
                "fed.federate(nn.Linear(4, 1), loader=load_site, sites=['edge-a', 'edge-b'], rounds=3, "
                "secure=False, client=client, progress=False, round_timeout=120, name='hung')",
                lambda m: _busy_workers(outside, "federated-round-") == {"edge-a-0"})
        _assert_one_line(reply, msgs, job="federated-hung", worker="edge-a-0")
        _wait_free(kernel, address, "edge-a-0")
        # the job runs no more: gone from the snapshot, or listed as ended
        reply, out = kernel.run("job = lepton_lab.status('fl').job('federated-hung')\n"
                                "print(job is None or (job.tasks == 0 and job.finished is not None))\n"
                                "print(lepton_lab.run_on('edge-a', lambda: 6 * 7))")
        assert reply["status"] == "ok" and out.split() == ["True", "42"], (reply, out)
    finally:
        kernel.close()
