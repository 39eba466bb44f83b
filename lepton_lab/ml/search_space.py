"""Search spaces for hyper-parameter tuning: parsed from text or a dict into Optuna distributions.

    parse_space("max_depth=int:2..8 eta=float:0.01..0.3:log booster=cat:gbtree,dart")
    parse_space({"max_depth": (2, 8), "eta": "float:0.01..0.3:log", "booster": ["gbtree", "dart"]})

A range is ``int:LO..HI`` or ``float:LO..HI``, optionally followed by ``:log``
(sampled on a log scale) and ``:step=S`` (only multiples of S from LO); a choice
is ``cat:A,B,C`` (values that read as numbers or true/false become those).
In a dict, a ``(lo, hi)`` tuple is an int range when both ends are whole numbers,
else a float range; a list is a choice; an Optuna distribution is taken as it is.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from ..errors import ConfigError, first_line

__all__ = ["parse_space", "grid_of", "describe"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
#: More grid points than this is a mistake, not a plan.
MAX_GRID = 100_000


def parse_space(space: Any) -> dict[str, Any]:
    """Name → Optuna distribution, from text (``name=kind:...`` words) or a dict; ConfigError when bad."""
    if isinstance(space, str):
        words = space.split()
        if not words:
            raise ConfigError("tune: the search space is empty; e.g. 'max_depth=int:2..8 eta=float:0.01..0.3:log'")
        items: dict[str, Any] = {}
        for word in words:
            name, sep, spec = word.partition("=")
            if not sep or not spec:
                raise ConfigError(f"tune: search space word {word!r} is not name=kind:range "
                                  "(e.g. max_depth=int:2..8)")
            if name in items:
                raise ConfigError(f"tune: {name!r} appears twice in the search space")
            items[name] = spec
        space = items
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("tune: space must be text such as 'max_depth=int:2..8' or a non-empty dict")
    return {_checked_name(str(k)): _distribution(str(k), v) for k, v in space.items()}


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"tune: {name!r} is not a parameter name (letters, digits, '_' and '.')")
    return name


def _distribution(name: str, value: Any) -> Any:
    from optuna.distributions import BaseDistribution, CategoricalDistribution

    if isinstance(value, BaseDistribution):
        return value
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"tune: {name}: a choice needs at least one value")
        return CategoricalDistribution(value)
    if isinstance(value, tuple):
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise ConfigError(f"tune: {name}: a range is (low, high), got {value!r}")
        lo, hi = value
        kind = "int" if all(float(v).is_integer() and not isinstance(v, float) for v in value) else "float"
        return _range(name, kind, lo, hi, log=False, step=None)
    if not isinstance(value, str):
        raise ConfigError(f"tune: {name}: give a range such as 'int:2..8', a (low, high) tuple or a list "
                          f"of choices, got {type(value).__name__}")
    kind, _, rest = value.partition(":")
    if kind in ("cat", "choice"):
        choices = [_scalar(v) for v in rest.split(",") if v != ""]
        if not choices:
            raise ConfigError(f"tune: {name}: a choice needs values, e.g. cat:gbtree,dart")
        return CategoricalDistribution(choices)
    if kind not in ("int", "float"):
        raise ConfigError(f"tune: {name}: kind must be int, float or cat, got {kind!r} (e.g. {name}=int:2..8)")
    bounds, *options = rest.split(":")
    lo_text, sep, hi_text = bounds.partition("..")
    if not sep:
        raise ConfigError(f"tune: {name}: a range is LOW..HIGH, got {bounds!r} (e.g. {name}={kind}:1..10)")
    lo, hi = _number(name, lo_text, kind), _number(name, hi_text, kind)
    log, step = False, None
    for opt in options:
        if opt == "log":
            log = True
        elif opt.startswith("step="):
            step = _number(name, opt[5:], kind)
        else:
            raise ConfigError(f"tune: {name}: unknown range option {opt!r} (log, step=S)")
    return _range(name, kind, lo, hi, log=log, step=step)


def _range(name: str, kind: str, lo: Any, hi: Any, *, log: bool, step: Any) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    if not lo <= hi:
        raise ConfigError(f"tune: {name}: low {lo} is above high {hi}")
    if log and lo <= 0:
        raise ConfigError(f"tune: {name}: a log range needs low > 0, got {lo}")
    if step is not None and not step > 0:
        raise ConfigError(f"tune: {name}: step must be > 0, got {step}")
    if log and step is not None and (kind == "float" or step != 1):
        raise ConfigError(f"tune: {name}: a log range takes no step")
    try:
        if kind == "int":
            return IntDistribution(int(lo), int(hi), log=log, step=int(step or 1))
        return FloatDistribution(float(lo), float(hi), log=log, step=None if step is None else float(step))
    except ValueError as e:
        raise ConfigError(f"tune: {name}: {first_line(e)}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(name: str, text: str, kind: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"tune: {name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"tune: {name}: {text!r} is not a finite number")
    if kind == "int":
        if not value.is_integer():
            raise ConfigError(f"tune: {name}: an int range takes whole numbers, got {text!r}")
        return int(value)
    return value


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def grid_of(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid a ``grid`` sampler walks: every value of each parameter; ConfigError for a continuous one."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list[Any]] = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            grid[name] = list(range(d.low, d.high + 1, d.step))
        elif isinstance(d, FloatDistribution) and d.step is not None:
            n = int(round((d.high - d.low) / d.step))
            grid[name] = [round(d.low + i * d.step, 12) for i in range(n + 1)]
        else:
            raise ConfigError(f"tune: the grid sampler needs a finite space; give {name} a step "
                              f"(e.g. {name}=float:0.1..0.3:step=0.1) or list its values (cat:...)")
    if math.prod(len(v) for v in grid.values()) > MAX_GRID:
        raise ConfigError(f"tune: the grid has more than {MAX_GRID:,} points; coarsen the steps")
    return grid


def describe(space: dict[str, Any]) -> str:
    """The space written back as text (what ``parse_space`` reads)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    words = []
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            words.append(f"{name}=cat:{','.join(str(c) for c in d.choices)}")
            continue
        kind = "int" if isinstance(d, IntDistribution) else "float"
        extra = ":log" if d.log else ""
        if d.step is not None and not (kind == "int" and d.step == 1):
            extra += f":step={d.step:g}"
        words.append(f"{name}={kind}:{d.low:g}..{d.high:g}{extra}")
    return " ".join(words)
