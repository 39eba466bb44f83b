"""The notebook HTML of Lepton's objects, rendered from the Jinja templates beside this module.

Every template is HTML and autoescaped: names, metrics and messages a user or a site
supplied come out as text, never as markup.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jinja2

__all__ = ["environment", "num", "render", "seconds", "short"]


def num(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` (as in an f-string); ``""`` for a missing value."""
    return "" if value is None else format(value, spec)


def short(value: Any) -> str:
    """A non-integral number to four significant digits, anything else as text; ``""`` for a missing value."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return format(value, ".4g")
    return str(value)


def seconds(value: float) -> str:
    """A duration in seconds, one decimal: ``"12.3 s"``."""
    return f"{value:.1f} s"


@functools.cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescaped, strict about undefined names, with the shared filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lepton_lab.reprs", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, short=short, seconds=seconds)
    return env


def render(name: str, **context: Any) -> str:
    """The HTML of template ``templates/<name>.html.j2`` with ``context``."""
    return environment().get_template(f"{name}.html.j2").render(**context)
