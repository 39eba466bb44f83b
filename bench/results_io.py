"""Writing a benchmark's results: JSON under bench/results/, and the exit code ``--strict`` asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, results: dict[str, Any], *, all_met: bool, strict: bool) -> int:
    """Write ``results`` to ``path``; 1 when ``strict`` and a target was missed, else 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {path}" + ("" if all_met else "; some targets missed"))
    return 1 if strict and not all_met else 0
