"""Every example of README.md's magic table runs, in order, in one real kernel against a small cluster.

The table is parsed, so a new row is run as soon as it is written; a row without an example,
a magic missing from the table, or an example that fails is a failure here.
"""

from __future__ import annotations

import os
import queue
import re
import time
from pathlib import Path

import pytest
from distributed import LocalCluster
from jupyter_client.manager import start_new_kernel

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.timeout(400)

#: Small data under the names the examples use (see the note under the table).
SETUP = """\
import numpy as np, pandas as pd, torch
rng = np.random.default_rng(1)
F = rng.normal(size=(800, 6))
df = pd.DataFrame(F, columns=[f"f{i}" for i in range(6)])
df["is_fraud"] = ((np.sin(2 * F[:, 0]) + F[:, 1] * F[:, 2] + 0.3 * rng.normal(size=800)) > 0).astype(int)
X_new = df.drop(columns="is_fraud").head(5)
X = rng.normal(size=(240, 8)).astype("float32")
y = (X[:, 0] > 0).astype("int64") + (X[:, 1] > 1).astype("int64")
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

def load_site(site):
    part = 0 if site.endswith("a") else 1
    return X[part::2], y[part::2]
"""

#: What the examples cannot say literally: the address of a plain Dask scheduler started elsewhere (here by
#: this test; Lepton's own clusters speak TLS and are joined with connect_cluster), and smaller loops.
#: Each must match.
SUBSTITUTIONS = [
    (r"tcp://10\.0\.0\.5:8786", "{address}"),
    (r"(%lepton tune .*--trials )\d+", r"\g<1>2"),
    (r"(%lepton federate .*--rounds )\d+", r"\g<1>2"),
]


#: What must be true before an example of a magic can run, made the way it happens in use.
BEFORE = {
    # a stopped cluster to start again: one stopped as the idle watch stops it
    "start": """\
import lepton_lab
from lepton_lab.services.watch import stop_idle
_t = lepton_lab.session.session().transport
_ward = lepton_lab.up(name="ward", cloud=0, edge=1, team="finance")
stop_idle(_t.services, _t.services.manager.get(_ward.id), 3600.0, (1800.0, "team finance"))
""",
}


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(syntax, examples) of each row of the table under ``### Magics``."""
    section = text.split("### Magics", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\0", "|") for c in line.replace("\\|", "\0").strip("|").split(" | ")]
        assert len(cells) == 3, f"a row of the magic table needs magic | example | what it does: {line}"
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def command(line: str) -> str:
    """``up`` of ``%lepton up ...``."""
    match = re.match(r"%%?lepton (\S+)", line)
    assert match, f"not a %lepton line: {line!r}"
    return match[1]


def cell_body(example: str) -> str:
    """A body for a ``%%lepton`` cell magic that defines the names it returns."""
    names = re.search(r"--return (\S+)", example)
    defined = "".join(f"{n} = 42\n" for n in (names[1].split(",") if names else []))
    return f"import os\nprint('on', os.getpid())\n{defined}"


class Kernel:
    def __init__(self, home: Path):
        env = {**os.environ, "LEPTON_HOME": str(home), "LEPTON_TRANSPORT": "embedded"}
        env.pop("JPY_PARENT_PID", None)
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)

    def run(self, code: str, timeout: float = 240) -> tuple[dict, list[dict]]:
        """The reply to ``code`` and its iopub messages."""
        msg_id = self.kc.execute(code)
        msgs = []
        end = time.monotonic() + timeout
        while True:
            assert time.monotonic() < end, f"{code!r} did not end within {timeout} s"
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"], msgs

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def _text(msgs: list[dict], stream: str | None = None) -> str:
    out = []
    for m in msgs:
        c = m["content"]
        if m["msg_type"] == "stream" and (stream is None or c["name"] == stream):
            out.append(c["text"])
        elif m["msg_type"] == "error":
            out.append("\n".join(c["traceback"]))
        elif m["msg_type"] in ("display_data", "execute_result") and stream is None:
            out.append(c["data"].get("text/plain", ""))
    return "".join(out)


def test_table_rows_each_have_examples_of_their_own_magic():
    rows = table_rows(README.read_text(encoding="utf-8"))
    assert len(rows) >= 15
    for syntax, examples in rows:
        assert examples, f"the row {syntax!r} has no example"
        for part, example in zip(re.findall(r"`([^`]+)`", syntax) or [syntax], examples):
            assert command(example) == command(part), (syntax, example)
    parsed = table_rows("### Magics\n| `%lepton up` | `%lepton up --name a` · `%lepton down` | x \\| y |\n### Next")
    assert parsed == [("`%lepton up`", ["%lepton up --name a", "%lepton down"])]


def test_every_readme_magic_example_runs_in_a_real_kernel(tmp_path):
    examples = [e for _, row in table_rows(README.read_text(encoding="utf-8")) for e in row]
    kernel = Kernel(tmp_path)
    started = time.monotonic()
    elsewhere = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                             dashboard_address=None)
    try:
        reply, msgs = kernel.run("%load_ext lepton_lab")
        assert reply["status"] == "ok", _text(msgs)
        reply, msgs = kernel.run("%lepton frob")
        valid = re.search(r"\(valid: ([^)]+)\)", _text(msgs))
        assert valid, _text(msgs)
        documented = {command(e) for e in examples}
        missing = {c.strip() for c in valid[1].split(",")} - documented
        assert not missing, f"magics the README table does not show: {sorted(missing)}"
        reply, msgs = kernel.run(SETUP)
        assert reply["status"] == "ok", _text(msgs)
        used = set()
        address = elsewhere.scheduler_address
        for example in examples:
            line = example
            for i, (pattern, replacement) in enumerate(SUBSTITUTIONS):
                if re.search(pattern, line):
                    used.add(i)
                    line = re.sub(pattern, replacement.format(address=address), line)
            code = line + ("\n" + cell_body(line) if line.startswith("%%") else "")
            if command(line) in BEFORE:
                reply, msgs = kernel.run(BEFORE[command(line)])
                assert reply["status"] == "ok", f"before {line}\n{_text(msgs)}"
            t0 = time.monotonic()
            reply, msgs = kernel.run(code)
            print(f"{time.monotonic() - t0:6.1f} s  {line}")
            shown = _text(msgs)
            assert reply["status"] == "ok", f"{line}\n{shown}"
            assert not [m for m in msgs if m["msg_type"] == "error"], f"{line}\n{shown}"
            errors = _text(msgs, "stderr")
            assert "Traceback" not in errors and "Error" not in errors, f"{line}\n{errors}"
        assert used == set(range(len(SUBSTITUTIONS))), "a substitution matched no example: remove it"
        reply, msgs = kernel.run("print(type(fraud_small).__name__, fraud_small.model.num_boosted_rounds(), "
                                 "fraud.model.num_boosted_rounds(), sorted(predictions)[:0])")
        assert reply["status"] == "ok", _text(msgs)
        name, cut, full, _ = _text(msgs).split(maxsplit=3)
        assert name == "CompressionResult" and int(cut) < int(full)
    finally:
        kernel.close()
        elsewhere.close()
    print(f"README magic examples: {len(examples)} in {time.monotonic() - started:.0f} s")
