"""What the kernel tests share: one IPython shell per module with the extension loaded."""

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture(scope="module")
def shell():
    """The IPython shell with ``%load_ext lepton_lab``; the module's clusters are stopped after it."""
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "lepton_lab")
    yield sh
    sh.run_cell("%lepton down --all")
