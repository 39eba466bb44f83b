"""What a declared framework and format promise, checked when a version is published.

Bytes sent by a kernel come with a claim ("this is a torch state_dict"); the
claim is checked against the bytes here, at publish time, so a mismatch is a
400 to the publisher rather than a failure of whoever loads it later.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from typing import Any

from lepton_lab.errors import ConfigError, first_line
from lepton_lab.registry.builders import resolve_builder

#: The formats each framework is stored in.
FORMATS = {"bytes": ("bytes",), "xgboost": ("ubj", "json"), "torch": ("state_dict",)}


def check_facts(framework: Any, format: Any, construction: Any) -> None:
    """ConfigError unless ``format`` is one of ``framework``'s and its construction target is allowed."""
    if framework not in FORMATS:
        raise ConfigError(f"unknown framework {framework!r} ({', '.join(FORMATS)})")
    if format not in FORMATS[framework]:
        raise ConfigError(
            f"a {framework} model is stored as {' or '.join(FORMATS[framework])}, not {format!r}"
        )
    if construction is not None:
        # Allow-listed by name first, then resolved (only allowed modules are ever imported).
        resolve_builder(getattr(construction, "target", None), framework)  # type: ignore[arg-type]
    elif framework == "torch":
        raise ConfigError("a torch model needs a construction spec (its class and arguments)")


def check_payload(payload: bytes | bytearray | memoryview, framework: str, format: str) -> None:
    """ConfigError unless ``payload`` parses as ``framework``'s ``format``; nothing is executed."""
    data = bytes(payload) if isinstance(payload, memoryview) else payload
    if framework == "bytes":
        return
    if framework == "xgboost":
        _check_xgboost(data, format)
    elif framework == "torch":
        _check_torch(data)


def _check_xgboost(data: bytes | bytearray, format: str) -> None:
    import xgboost as xgb

    try:
        json.loads(data)
        is_json = True
    except (ValueError, UnicodeDecodeError):
        is_json = False
    if is_json != (format == "json"):
        raise ConfigError(f"the payload declared as XGBoost {format} is {'JSON' if is_json else 'not JSON'}")
    try:
        xgb.Booster().load_model(bytearray(data))
    except (xgb.core.XGBoostError, ValueError, TypeError) as err:
        raise ConfigError(
            f"the payload declared as XGBoost {format} is not an XGBoost model: {first_line(err)}"
        ) from None


def _check_torch(data: bytes | bytearray) -> None:
    import torch

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ConfigError("the payload declared as a torch state_dict is not a torch archive")
    try:
        # weights_only: tensors and plain containers, never arbitrary pickles.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad archive; all mean "not a state_dict"
        raise ConfigError(
            f"the payload declared as a torch state_dict does not load: {first_line(err)}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConfigError("the payload declared as a torch state_dict is not a dict of named tensors")


__all__ = ["FORMATS", "check_facts", "check_payload"]
