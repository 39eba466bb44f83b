"""``import lepton_lab`` and ``%load_ext lepton_lab`` leave the heavy libraries for first use."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "xgboost", "optuna", "distributed", "dask", "numpy", "pandas", "sklearn", "cryptography",
         "lepton_lab.cluster", "lepton_lab.session", "lepton_lab.registry", "lepton_lab.ml")


def _fresh(code: str) -> dict:
    """Run ``code`` as a cell of a fresh ``ipython`` process; it prints one JSON line."""
    out = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner", "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(lines[-1])


PROBE = ("import sys, json; print(json.dumps({'loaded': sorted(m for m in %r if m in sys.modules), "
         "'magics': 'lepton' in get_ipython().magics_manager.magics['line']}))" % (HEAVY,))


def test_load_ext_imports_no_heavy_library():
    got = _fresh("%load_ext lepton_lab\n" + PROBE)
    assert got == {"loaded": [], "magics": True}


def test_refused_magic_lines_import_no_heavy_library():
    # %load_ext builds every subcommand's parser; the training choices are read only when used.
    lines = ["frob", "up --bogus 3", "scale many", "plan sing", "train --rounds many", "federate --model m",
             "tune", "help nope"]
    got = _fresh(
        "%load_ext lepton_lab\n"
        "from IPython.core.error import UsageError\n"
        "refused = 0\n"
        f"for line in {lines!r}:\n"
        "    try:\n"
        "        get_ipython().run_line_magic('lepton', line)\n"
        "    except UsageError:\n"
        "        refused += 1\n"
        f"assert refused == {len(lines)}, refused\n" + PROBE)
    assert got == {"loaded": [], "magics": True}


def test_import_lepton_lab_imports_no_heavy_library():
    got = _fresh("import lepton_lab\n" + PROBE)
    assert got["loaded"] == []


def test_api_names_load_on_first_use():
    got = _fresh(
        "import sys, json\n"
        "import lepton_lab\n"
        "from lepton_lab import up, publish, ClusterHandle\n"
        "import lepton_lab.api as api\n"
        "print(json.dumps({'same': up is api.up and publish is api.publish and lepton_lab.load is api.load,"
        " 'dir': all(n in dir(lepton_lab) for n in ('up', 'publish', 'status', 'LeptonError')),"
        " 'distributed': 'distributed' in sys.modules}))")
    assert got == {"same": True, "dir": True, "distributed": True}


def test_unknown_name_is_an_attribute_error():
    import lepton_lab

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lepton_lab.nope  # noqa: B018
    assert callable(lepton_lab.up) and lepton_lab.api.up is lepton_lab.up


def test_verbs_keep_their_names_once_their_modules_are_imported():
    got = _fresh(
        "import sys, json\n"
        "import lepton_lab\n"
        "import lepton_lab.models, lepton_lab.api\n"
        "from lepton_lab import models\n"
        "print(json.dumps({'verb': lepton_lab.models is lepton_lab.api.models is models,"
        " 'module': sys.modules['lepton_lab.models'].publish is lepton_lab.publish}))")
    assert got == {"verb": True, "module": True}
