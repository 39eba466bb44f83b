"""Team template notebooks: ``<templates>/<team>/<name>.ipynb``, described by their first cell."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import NotFound

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")


def _describe(path: Path) -> tuple[str, str]:
    """Title (first markdown heading) and description (the paragraph after it)."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return path.stem, ""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell.get("source", []))
        lines = [ln.strip() for ln in text.splitlines()]
        title = next((ln.lstrip("#").strip() for ln in lines if ln.startswith("#")), path.stem)
        body = [ln for ln in lines if ln and not ln.startswith("#")]
        return title, body[0] if body else ""
    return path.stem, ""


def list_templates(root: Path) -> list[dict[str, Any]]:
    """Every template under ``root``, as ``{team, name, title, description, path}``."""
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for team_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for nb in sorted(team_dir.glob("*.ipynb")):
            title, description = _describe(nb)
            out.append({"team": team_dir.name, "name": nb.stem, "title": title,
                        "description": description, "path": f"{team_dir.name}/{nb.name}"})
    return out


def template_file(root: Path, team: str, name: str) -> Path:
    """The notebook file of template ``team/name``; NotFound for anything else (no traversal)."""
    if not NAME.match(team) or not NAME.match(name) or ".." in name:
        raise NotFound(f"no template {team}/{name}")
    path = (root / team / f"{name}.ipynb").resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise NotFound(f"no template {team}/{name}")
    return path


async def save_copy(cm: Any, user: str, name: str, content: dict[str, Any]) -> str:
    """Save a template's notebook as ``work/<user>/<name>[-n].ipynb`` (never over a file) through a
    Jupyter contents manager ``cm``; its path."""
    from jupyter_core.utils import ensure_async

    folder = f"work/{user}"
    for part in ("work", folder):
        if not await ensure_async(cm.dir_exists(part)):
            await ensure_async(cm.save({"type": "directory"}, part))
    target = f"{folder}/{name}.ipynb"
    n = 1
    while await ensure_async(cm.file_exists(target)):
        target = f"{folder}/{name}-{n}.ipynb"
        n += 1
    await ensure_async(cm.save({"type": "notebook", "format": "json", "content": content}, target))
    return target
