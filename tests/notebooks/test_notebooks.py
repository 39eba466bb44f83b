"""Every template and notebook runs top to bottom in a fresh kernel, at small sizes.

Each notebook is executed with nbclient in the venv's ``python3`` kernel, in a
temporary working directory with its own ``LEPTON_HOME``, after its
``parameters``-tagged cell is rewritten with the small values below (the same
names, other values). The kernel gets no ``JPY_PARENT_PID`` and no server
variables, so it finds no Jupyter server and uses the embedded services, as a
script or CI would. A notebook passes when no output is an error, no ``stderr``
stream carries a traceback (the last cell, ``%lepton down``, may carry the one
known teardown record listed in ``TEARDOWN_NOISE``), and no Dask process is left
behind.

Set ``LEPTON_NOTEBOOK_SIZES=default`` to run them at their own (default)
parameters instead.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.helpers import wait_no_dask_children

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(
    str(p.relative_to(ROOT))
    for pattern in ("templates/*/*.ipynb", "notebooks/*.ipynb")
    for p in ROOT.glob(pattern)
)

#: Small parameters per notebook: the whole set runs in a few minutes on 2 cores.
SMALL: dict[str, dict[str, object]] = {
    "templates/medical/federated-diagnosis.ipynb": {"FED_ROUNDS": 5, "DP_ROUNDS": 5, "DP_NOISES": [4.0]},
    "templates/medical/scan-classification.ipynb": {"EPOCHS": 2, "LATENCY_CALLS": 5},
    "templates/finance/fraud-detection.ipynb": {"N_ROWS": 20_000, "ROWS_PER_PARTITION": 5_000, "ROUNDS": 10},
    "templates/finance/credit-risk.ipynb": {"N_BORROWERS": 5_000, "ROUNDS": 15},
    "notebooks/quickstart.ipynb": {"ROUNDS": 10},
    "notebooks/cloud-edge-tour.ipynb": {"JOIN_TIMEOUT": 60},
}

#: Seconds a single cell may run before the notebook fails.
CELL_TIMEOUT = 600
#: Variables that would point the kernel at a Jupyter server.
SERVER_VARIABLES = ("JPY_PARENT_PID", "JPY_SESSION_NAME", "LEPTON_SERVER_URL", "LEPTON_TOKEN",
                    "LEPTON_TRANSPORT", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL")


def test_every_notebook_has_small_parameters():
    assert NOTEBOOKS, "no notebooks found under templates/ and notebooks/"
    assert sorted(SMALL) == NOTEBOOKS


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """``python3``, checked to start this very interpreter (the venv's python)."""
    specs = KernelSpecManager().find_kernel_specs()
    assert "python3" in specs, f"no python3 kernel spec (found: {sorted(specs)})"
    argv = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve(), (
        f"the python3 kernel would run {argv[0]}, not {sys.executable}")
    return "python3"


def parameters_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"want exactly one cell tagged 'parameters', found {len(cells)}"
    assert cells[0].cell_type == "code"
    return cells[0]


def with_parameters(source: str, values: dict[str, object]) -> str:
    """``source`` with the assignments of ``values`` replaced; every name must be assigned there."""
    tree = ast.parse(source)
    lines = source.splitlines()
    seen = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in values:
                assert node.lineno == node.end_lineno, f"parameter {name} spans several lines"
                comment = lines[node.lineno - 1].partition("#")[2]
                lines[node.lineno - 1] = f"{name} = {values[name]!r}" + (f"  #{comment}" if comment else "")
                seen.add(name)
    missing = sorted(set(values) - seen)
    assert not missing, f"parameters cell assigns no {', '.join(missing)}"
    return "\n".join(lines) + "\n"


#: A log record's first line, as distributed's workers print them on stderr.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - "
                        r"(?P<logger>[\w.]+) - (?P<level>[A-Z]+) - (?P<message>.*)$",
                        re.MULTILINE)
#: Known teardown noise, accepted in the last cell only (`%lepton down`): a worker that has
#: not yet exited (torch makes worker processes slow to exit, and the nanny kills them after
#: 4 s) sends a heartbeat after the scheduler retired it, and logs the closed stream.
TEARDOWN_NOISE = (("distributed.worker", "Failed to communicate with scheduler during heartbeat."),)


def without_teardown_noise(text: str) -> str:
    """``text`` without the log records of :data:`TEARDOWN_NOISE` (each with its traceback)."""
    starts = [m.start() for m in LOG_RECORD.finditer(text)] + [len(text)]
    keep = [text[:starts[0]]]
    for a, b in zip(starts, starts[1:]):
        m = LOG_RECORD.match(text, a)
        if (m["logger"], m["message"].strip()) not in TEARDOWN_NOISE:
            keep.append(text[a:b])
    return "".join(keep)


def problems(nb) -> list[str]:
    """Error outputs, and tracebacks printed on stderr, with the cell they came from."""
    found = []
    last = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i}: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr":
                text = without_teardown_noise(out.text) if i == last else out.text
                if "Traceback" in text:
                    text = text[text.index("Traceback"):].strip()
                    found.append(f"cell {i}: traceback on stderr:\n{text[-2000:]}")
    return found


def dask_descendants(pid: int, timeout: float = 20.0) -> list[psutil.Process]:
    """Dask workers and nannies still running under process ``pid``, after waiting up to ``timeout``."""

    def find() -> list[psutil.Process]:
        out = []
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for p in children:
            try:
                cmd = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "resource_tracker" not in cmd and ("multiprocessing" in cmd or "distributed" in cmd
                                                  or "lepton_lab.cli" in cmd):
                out.append(p)
        return out

    end = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = find()
    return left


def kernel_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SERVER_VARIABLES and not k.startswith("PYTEST_")}
    env["LEPTON_HOME"] = str(home)
    return env


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(path, kernel_name, tmp_path):
    nb = nbformat.read(ROOT / path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), \
        "the first cell is the template's title: a markdown '# Title' and a paragraph"
    assert any("%load_ext lepton_lab" in c.source for c in nb.cells if c.cell_type == "code")
    assert "%lepton down" in [c for c in nb.cells if c.cell_type == "code"][-1].source
    cell = parameters_cell(nb)
    if os.environ.get("LEPTON_NOTEBOOK_SIZES", "small") != "default":
        cell.source = with_parameters(cell.source, SMALL[path])
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    left: list[int] = []
    last = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code")

    def check_processes(cell_index, **_):
        # After the last cell, while the kernel still runs: its clusters must be gone.
        if cell_index != last:
            return
        stray = dask_descendants(client.km.provisioner.pid)
        left.extend(p.pid for p in stray)
        for p in stray:
            p.kill()

    client = NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(work)}}, on_cell_executed=check_processes)
    started = time.perf_counter()
    try:
        # independent: the launcher then sets no JPY_PARENT_PID, so no server is looked for.
        client.execute(env=kernel_env(home), independent=True)
    except CellExecutionError as e:
        nbformat.write(nb, tmp_path / "executed.ipynb")
        pytest.fail(f"{path} failed (executed copy: {tmp_path / 'executed.ipynb'}):\n{e}", pytrace=False)
    finally:
        seconds = time.perf_counter() - started
        print(f"{path}: {seconds:.1f} s")
    nbformat.write(nb, tmp_path / "executed.ipynb")
    found = problems(nb)
    assert not found, f"{path}: " + "; ".join(found)
    assert not left, f"{path} left Dask processes running after its last cell: {left}"
    stray = wait_no_dask_children()
    for p in stray:
        p.kill()
    assert not stray, f"{path}: Dask processes outlived the kernel: {[p.pid for p in stray]}"
