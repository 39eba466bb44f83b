"""Checking ``compress()``'s arguments; each refusal is said twice, in Python and in the magic's flags."""

from __future__ import annotations

from torch import nn

from lepton_lab.errors import ConfigError

METRICS = ("accuracy", "auc", "rmse")

_TRAIN_DATA_PY = "pass data=(X_train, y_train, X_test, y_test), or a DataFrame with target='column'"
_TRAIN_DATA_MAGIC = ("pass --data DF --target COL, or --data with a variable holding "
                     "(X_train, y_train, X_test, y_test)")


class CompressArgumentError(ConfigError):
    """Arguments ``compress`` cannot work with; ``magic`` is the same message in ``%lepton compress`` flags."""

    def __init__(self, message: str, magic: str):
        super().__init__(message)
        self.magic = " ".join(magic.split())


def no_best_iteration(rounds: int) -> CompressArgumentError:
    """``trees="best"`` on a model that was not trained with early stopping."""
    return CompressArgumentError(
        f"trees='best' needs a model trained with early stopping (train(..., early_stopping=N)); "
        f"pass trees=N instead (the model has {rounds} rounds)",
        f"--trees best needs a model trained with early stopping (%lepton train xgboost ... "
        f"--early-stopping N); pass --trees N instead (the model has {rounds} rounds)")


def trees_cut_nothing(trees: int, rounds: int) -> CompressArgumentError:
    return CompressArgumentError(
        f"trees={trees} does not cut anything: the model has {rounds} rounds",
        f"--trees {trees} does not cut anything: the model has {rounds} rounds")


def check_arguments(framework, evald, quantize, prune, distill, trees, tolerance, metric, epochs) -> None:
    """A :class:`CompressArgumentError` or ``ConfigError`` for arguments that do not go together."""
    if quantize is None and prune is None and distill is None and trees is None:
        raise CompressArgumentError("nothing to do: pass quantize='int8', prune=, distill= or trees=",
                                    "nothing to do: pass --quantize int8, --prune F, --distill or --trees N|best")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be 'int8' or None, not {quantize!r}")
    if prune is not None and (isinstance(prune, bool) or not isinstance(prune, (int, float))):
        raise ConfigError(f"prune must be a number, not {prune!r}")
    if metric not in (None, *METRICS):
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ConfigError(f"tolerance must be a number >= 0, not {tolerance!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
        raise ConfigError(f"epochs must be an integer >= 0, not {epochs!r}")
    if framework == "torch":
        if trees is not None:
            raise CompressArgumentError("trees= is for XGBoost models; use prune= or distill= for PyTorch",
                                        "--trees is for XGBoost models; use --prune or --distill for PyTorch")
        if prune is not None and not 0 < prune < 1:
            raise ConfigError(f"prune is the fraction of hidden units to remove, in (0, 1), not {prune}")
        if distill is not None and distill != "auto" and not isinstance(distill, nn.Module):
            raise ConfigError(f"distill must be 'auto' or a student nn.Module, not {distill!r}")
        if distill is not None and (evald is None or not evald.has_train):
            raise CompressArgumentError(f"distillation trains a student: {_TRAIN_DATA_PY}",
                                        f"distillation trains a student: {_TRAIN_DATA_MAGIC}")
    else:
        if quantize is not None or distill is not None:
            raise CompressArgumentError("XGBoost models take trees= and prune=, not quantize= or distill=",
                                        "XGBoost models take --trees and --prune, not --quantize or --distill")
        if trees is not None and trees != "best" and (
                isinstance(trees, bool) or not isinstance(trees, int) or trees < 1):
            raise ConfigError(f"trees must be 'best' or a number of rounds >= 1, not {trees!r}")
        if prune is not None and prune < 0:
            raise ConfigError(f"prune is XGBoost's gamma for the prune updater, >= 0, not {prune}")
        if prune is not None and (evald is None or not evald.has_train):
            raise CompressArgumentError(f"XGBoost's prune updater needs training data: {_TRAIN_DATA_PY}",
                                        f"XGBoost's prune updater needs training data: {_TRAIN_DATA_MAGIC}")
    if metric in ("accuracy", "auc") and evald is not None and not evald.is_classification:
        raise ConfigError(f"metric {metric!r} needs integer class labels; y_test is {evald.y_test.dtype}")
