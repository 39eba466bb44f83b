"""``%lepton``'s one parser and :func:`parse`: a line to its subcommand and arguments, nothing run.

One ``MagicArgumentParser`` named ``%lepton`` with a sub-parser per subcommand, each verb group
(:mod:`.cluster`, :mod:`.model`, :mod:`.plan`, :mod:`.train`, :mod:`.federate`, :mod:`.tune`)
adding its own. Every refusal is one ``UsageError`` line.
"""

from __future__ import annotations

import argparse
import functools
import shlex

from IPython.core.error import UsageError

from . import cluster, federate, model, plan, train, tune
from .arguments import LeptonParser

#: The verb groups, in the order ``%lepton help`` lists them.
GROUPS = (cluster, model, plan, train, federate, tune)


def build_parser() -> LeptonParser:
    """A fresh ``%lepton`` parser with every subcommand."""
    top = LeptonParser(prog="%lepton", description="Lepton Lab: clusters on cloud and edge sites")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in GROUPS:
        group.add_parsers(verbs)
    return top


@functools.cache
def _default() -> LeptonParser:
    return build_parser()


def parse(line: str, *, cell: bool = False, parser: LeptonParser | None = None) -> tuple[str, argparse.Namespace]:
    """The subcommand of a ``%lepton`` line (``%%lepton`` with ``cell=True``) and its arguments.

    An empty line is ``help``. ``args.handler`` is the function that runs the subcommand.
    """
    parser = parser or _default()
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"%lepton: cannot parse the line ({e})") from None
    words = words or ["help"]
    verb, verbs = words[0], parser.verbs
    valid = sorted(name for name, p in verbs.items() if p.cell == cell)
    if verb not in valid:
        kind, other = ("cell", "line") if cell else ("line", "cell")
        extra = f"; {verb!r} is a {other} magic" if verb in verbs else ""
        raise UsageError(f"%lepton: unknown {kind} subcommand {verb!r} (valid: {', '.join(valid)}){extra}")
    args, unknown = parser.parse_known_args(words)
    if unknown:
        verbs[verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    return verb, args
