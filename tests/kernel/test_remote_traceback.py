"""A ``%%lepton run`` cell that fails on a worker shows, in a real kernel, the cell and line that failed."""

from __future__ import annotations

import re

from tests.kernel.test_interrupt import Kernel

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_remote_traceback_names_the_cell_and_the_failing_line(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        for code in ("%load_ext lepton_lab", "%lepton up --name tb --cloud 1 --edge 1 --no-view", "x = 1", "y = 2"):
            reply, out = kernel.run(code)
            assert reply["status"] == "ok", (code, reply, out)
        reply, _ = kernel.run("%%lepton run --site edge\nimport math\n\ndef f(x):\n    return 1 / x\n\nf(0)\n")
        assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError", reply
        shown = ANSI.sub("", "\n".join(reply["traceback"]))
        cell = reply["execution_count"]
        # The frames are the cell's own, by its In[n], with the failing line itself shown.
        assert f"In[{cell}]" in shown, shown
        assert f"In[{cell + 1}]" not in shown and f"In[{cell - 1}]" not in shown, shown
        assert "----> 4     return 1 / x" in shown, shown
        assert "----> 6 f(0)" in shown, shown
        # No frame of the package's own machinery.
        assert "lepton_lab" not in shown and "magics" not in shown, shown
        reply, out = kernel.run("%lepton down tb")
        assert reply["status"] == "ok", (reply, out)
    finally:
        kernel.close()
