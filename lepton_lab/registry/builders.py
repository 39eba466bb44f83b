"""Which ``module:qualname`` a manifest may name to rebuild a model: an allow-list.

A manifest is data written by a publisher; the name in its ``construction`` is
checked against this list *before* anything is imported, so loading or
predicting never runs a module a publisher chose. Allowed are:

- the package's own builders (``lepton_lab.registry.modelspec:build_model``);
- PyTorch's layers (classes in ``torch.nn.modules.*``) and XGBoost's
  scikit-learn estimators (``xgboost.sklearn``);
- classes this process registered itself: with :func:`allow_builder`, with
  ``@records_init_kwargs``, or by publishing an instance (the live class is
  already here, so trusting it imports nothing new);
- the names an administrator lists in ``$LEPTON_MODEL_BUILDERS``
  (comma-separated ``module:qualname``).

Whatever is named must also resolve to exactly itself (``obj.__module__`` and
``obj.__qualname__``), so an allowed module cannot be used as a path to an
object imported into it.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from lepton_lab.errors import ConfigError

PACKAGE_BUILDERS = frozenset({"lepton_lab.registry.modelspec:build_model"})
#: Names older versions recorded for a package builder, and where it lives now.
_RENAMED = {"lepton_lab.ml.compress:build_model": "lepton_lab.registry.modelspec:build_model",
            "lepton_lab.ml.modelspec:build_model": "lepton_lab.registry.modelspec:build_model"}
_TORCH_LAYERS = "torch.nn.modules."
_XGB_ESTIMATORS = "xgboost.sklearn"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TARGET_RE = re.compile(rf"^({_DOTTED}):({_DOTTED})$")

_registered: set[str] = set()
#: target -> the object :func:`allow_builder` was given.
_live: dict[str, Any] = {}


def target_of(obj: Any) -> str:
    """``module:qualname`` of a class or function."""
    return f"{obj.__module__}:{obj.__qualname__}"


def allow_builder(obj: Any) -> Any:
    """Let this process rebuild models with ``obj`` (a class or function); usable as a decorator.

    The object itself is kept: rebuilding with it imports nothing, so a class defined in a
    notebook (``__main__``) and shipped to a worker by value works there too.
    """
    if "<locals>" in getattr(obj, "__qualname__", "<locals>"):
        raise ConfigError(f"{obj!r} is defined inside a function; define it at module level")
    _registered.add(target_of(obj))
    _live[target_of(obj)] = obj
    return obj


def registered_builder(target: Any) -> Any:
    """The live object this process allowed under ``target`` with :func:`allow_builder`, or None."""
    return _live.get(target) if isinstance(target, str) else None


def configured() -> frozenset[str]:
    """The builders an administrator allowed in ``$LEPTON_MODEL_BUILDERS``."""
    raw = os.environ.get("LEPTON_MODEL_BUILDERS", "")
    return frozenset(t for t in (p.strip() for p in raw.replace("\n", ",").split(",")) if t)


def check_target(target: Any, framework: str) -> str:
    """``target`` if a ``framework`` model may be rebuilt with it; ConfigError, importing nothing, if not."""
    target = _RENAMED.get(target, target) if isinstance(target, str) else target
    if not isinstance(target, str) or not _TARGET_RE.fullmatch(target):
        raise ConfigError(f"construction target {target!r} is not a 'module:qualname' name")
    module, _, qualname = target.partition(":")
    if "__" in qualname or ("__" in module and module != "__main__"):
        raise ConfigError(f"construction target {target!r} names a private or special object")
    if framework == "torch":
        builtin = target in PACKAGE_BUILDERS or module.startswith(_TORCH_LAYERS)
    elif framework == "xgboost":
        builtin = module == _XGB_ESTIMATORS
    else:
        raise ConfigError(f"a {framework!r} model has no construction target; leave it out")
    if not (builtin or target in _registered or target in configured()):
        raise ConfigError(
            f"{target} is not an allowed model builder and was not imported; allow it with "
            "lepton_lab.registry.allow_builder or $LEPTON_MODEL_BUILDERS"
        )
    return target


def resolve_builder(target: str, framework: str) -> Any:
    """The allowed class or builder function named ``target``; ConfigError saying why not."""
    target = check_target(target, framework)
    module_name, _, qualname = target.partition(":")
    live = _live.get(target)
    if live is not None:
        return _check_kind(live, target, framework)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"cannot import {target} to rebuild the model ({err}); make that module importable"
        ) from None
    if getattr(obj, "__module__", None) != module_name or getattr(obj, "__qualname__", None) != qualname:
        raise ConfigError(f"{target} names an object defined elsewhere; name it where it is defined")
    return _check_kind(obj, target, framework)


def _check_kind(obj: Any, target: str, framework: str) -> Any:
    if framework == "torch":
        import torch

        is_module = isinstance(obj, type) and issubclass(obj, torch.nn.Module)
        # Besides module classes, only functions marked as model builders are called.
        if not (is_module or getattr(obj, "lepton_model_builder", False) is True):
            raise ConfigError(f"{target} is not a torch.nn.Module or a Lepton model builder")
    else:
        import xgboost as xgb

        if not (isinstance(obj, type) and issubclass(obj, xgb.XGBModel)):
            raise ConfigError(f"{target} is not an XGBoost estimator")
    return obj


__all__ = ["PACKAGE_BUILDERS", "allow_builder", "check_target", "configured", "registered_builder", "resolve_builder",
           "target_of"]
