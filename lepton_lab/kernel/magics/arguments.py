"""The parser every ``%lepton`` subcommand uses, on IPython's ``MagicArgumentParser``.

Errors are one ``UsageError`` line that names the subcommand (and, for an unknown option,
the valid ones). Choices that live in the training modules are read when a line is parsed
or help is shown (:class:`Later`), so building the parser imports neither torch nor XGBoost.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Iterator, Sequence

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser


class LeptonParser(MagicArgumentParser):
    """``%lepton`` or one of its subcommands; ``cell`` marks a ``%%lepton`` (cell) subcommand."""

    def __init__(self, *, cell: bool = False, formatter_class: type = argparse.HelpFormatter, **kwargs: Any):
        super().__init__(formatter_class=formatter_class, **kwargs)
        self.cell = cell
        self.subcommands: Any = None  # the sub-parsers action of the top-level parser

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.subcommands = super().add_subparsers(**kwargs)
        return self.subcommands

    @property
    def verbs(self) -> dict[str, LeptonParser]:
        """The subcommands' parsers by name, in the order they were added."""
        return dict(self.subcommands.choices) if self.subcommands is not None else {}

    def error(self, message: str):  # type: ignore[override]
        valid = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
        hint = f" (valid options: {', '.join(valid)})" if valid and "unrecognized" in message else ""
        raise UsageError(f"{self.prog}: {message}{hint}")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise UsageError(message or self.format_usage())


def add_verb(subcommands: Any, name: str, description: str, handler: Callable[..., Any], *,
             cell: bool = False) -> LeptonParser:
    """A subcommand's parser; ``handler(magics, args)`` (``(magics, args, cell)`` for a cell one) runs it."""
    parser: LeptonParser = subcommands.add_parser(name, help=description, description=description, cell=cell)
    parser.set_defaults(handler=handler)
    return parser


class Later:
    """Choices read when they are needed (a parse, a help text), not when the parser is built."""

    def __init__(self, read: Callable[[], Sequence[str]]):
        self._read = read

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __contains__(self, value: object) -> bool:
        return value in self._read()

    def __len__(self) -> int:
        return len(self._read())


def choices_later(action: argparse.Action, read: Callable[[], Sequence[str]]) -> argparse.Action:
    """Give ``action`` the choices ``read()`` returns, read on first need.

    Set after ``add_argument``: argparse formats an argument's choices once as it is added.
    """
    action.choices = Later(read)
    return action


def count(text: str) -> int:
    """An argparse ``type``: a whole number >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return n
