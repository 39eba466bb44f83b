"""The argument parser every ``%lepton`` subcommand uses: errors are one ``UsageError`` line."""

from __future__ import annotations

import argparse

from IPython.core.error import UsageError


class MagicParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        valid = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
        hint = f" (valid options: {', '.join(valid)})" if valid and ("unrecognized" in message) else ""
        raise UsageError(f"%lepton {self.prog}: {message}{hint}")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise UsageError(message or self.format_usage())


def count(text: str) -> int:
    """An argparse ``type``: a whole number >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return n
