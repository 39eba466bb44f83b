"""``%lepton`` and ``%%lepton``: parse, call the Python API, display.

Every subcommand is a thin door onto a function of :mod:`lepton_lab.api`, parsed by
:func:`.parser.parse`. Bad input and refused requests surface as IPython ``UsageError``:
one line, no traceback. An interrupted subcommand ends the cell as an error too, shown as
one ``interrupted: ...`` line (the verb has cancelled its cluster work by then).
"""

from __future__ import annotations

from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ...errors import Interrupted, LeptonError
from .arguments import LeptonParser, add_verb
from .parser import build_parser, parse

__all__ = ["LeptonMagics", "load", "parse"]


@magics_class
class LeptonMagics(Magics):
    """The ``%lepton`` line magic and ``%%lepton`` cell magic."""

    shell: InteractiveShell  # load() always passes the kernel's shell

    def __init__(self, shell: InteractiveShell):
        super().__init__(shell)
        self.parser = build_parser()
        self.views: list[Any] = []

    def add_verb(self, name: str, description: str, handler: Callable[..., Any], *,
                 cell: bool = False) -> LeptonParser:
        """Add a subcommand to this magic; its parser is returned for its arguments."""
        return add_verb(self.parser.subcommands, name, description, handler, cell=cell)

    @line_cell_magic
    def lepton(self, line: str = "", cell: str | None = None):
        """Lepton Lab: clusters on cloud and edge sites. `%lepton help` lists the subcommands."""
        verb, args = parse(line, cell=cell is not None, parser=self.parser)
        try:
            if cell is not None:
                return args.handler(self, args, cell)
            return args.handler(self, args)
        except LeptonError as e:
            raise UsageError(f"%lepton {verb}: {e}") from None
        except Interrupted:
            raise
        except KeyboardInterrupt:
            # One no verb turned into a cancelled job: a compression runs in this kernel, say.
            raise Interrupted(f"%lepton {verb} stopped") from None


def load(shell: InteractiveShell) -> LeptonMagics:
    """Register ``%lepton`` / ``%%lepton`` on ``shell``."""
    magics = LeptonMagics(shell)
    shell.register_magics(magics)
    return magics
