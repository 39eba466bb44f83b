"""A Python environment every test account can run, and the Hub's proxy.

The project's own venv may live under a 0700 directory (or link back to a Python there), so
a single-user server spawned as another account could not start from it. This builds a venv
from Debian's ``/usr/bin/python3`` in a directory every account can traverse, with JupyterHub,
the Jupyter server and the project's runtime dependencies, and copies ``lepton_lab`` into it
the way its wheel would lay it out (package plus shared data). The venv is kept between runs
under a name keyed by the dependencies and the Python version; the package copy is refreshed
whenever the source changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
CACHE_ROOT = Path("/tmp")
# Heavy runtime dependencies that lepton_lab imports lazily; pass them in ``extra`` when a test needs them.
LAZY_DEPENDENCIES = ("torch", "xgboost")
HUB_PACKAGES = ("jupyterhub>=5.3,<7", "ipykernel>=6.29")
PROXY_PACKAGE = "configurable-http-proxy@5.3.0"
LAYOUT_VERSION = "1"  # bump when the venv's layout changes, so cached ones are rebuilt
READY = ".lepton-ready"


def runtime_requirements(extra: Sequence[str] = ()) -> list[str]:
    """The project's runtime dependencies without the lazily imported heavy ones, plus the Hub's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith(LAZY_DEPENDENCIES)]
    return [*deps, *HUB_PACKAGES, *extra]


def venv_key(extra: Sequence[str] = ()) -> str:
    """A short hash of what goes into the venv and of the Python it is made from."""
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, check=True).stdout
    text = "\n".join([LAYOUT_VERSION, version, *runtime_requirements(extra)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_traversable(path: Path) -> None:
    """Raise when some directory on the way to ``path`` cannot be entered by every account."""
    for p in [path, *path.parents]:
        if p.exists() and not p.stat().st_mode & stat.S_IXOTH:
            raise PermissionError(f"{p} is not traversable by other accounts (mode "
                                  f"{stat.S_IMODE(p.stat().st_mode):o}): put the shared venv elsewhere")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``.lock, so two test runs never build the same directory at once."""
    with open(f"{path}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str]) -> None:
    """Run quietly; on failure raise with the end of what the command said."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{tail}")


def _make_readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(path)], check=True)


def _tree_digest(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _site_packages(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    return site


def _copy_tree(src: Path, dst: Path) -> None:
    """Replace ``dst`` with a copy of ``src``: swap in a fresh copy so readers never see half of one."""
    fresh = dst.with_name(dst.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, fresh, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        fresh.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, fresh)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    fresh.rename(dst)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def install_project(venv: Path) -> bool:
    """Copy ``lepton_lab`` and its wheel's shared data into ``venv``; False when already current."""
    src = ROOT / "lepton_lab"
    stamp = venv / ".lepton-package"
    digest = _tree_digest(src) + _tree_digest(ROOT / "jupyter-config")
    if stamp.exists() and stamp.read_text() == digest:
        return False
    _copy_tree(src, _site_packages(venv) / "lepton_lab")
    # Bytecode now, as root: the accounts cannot write it next to the sources themselves.
    _run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(_site_packages(venv) / "lepton_lab")])
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for source, target in shared["shared-data"].items():
        if (ROOT / source).exists():  # the built frontend is absent from a checkout that never ran the build
            _copy_tree(ROOT / source, venv / target)
    script = venv / "bin" / "lepton-lab"
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom lepton_lab.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    _make_readable(venv)
    stamp.write_text(digest)
    return True


def make_shared_venv(dest: Path | None = None, *, extra: Sequence[str] = ()) -> Path:
    """A venv every account can run, with JupyterHub and the current ``lepton_lab``; returns its path.

    Without ``dest`` it is ``/tmp/lepton-hub-venv-<hash>``, reused while the dependencies, ``extra``
    and the system Python stay the same. ``extra`` adds requirements (e.g. ``"torch==2.13.0"``).
    """
    venv = Path(dest) if dest is not None else CACHE_ROOT / f"lepton-hub-venv-{venv_key(extra)}"
    check_traversable(venv.parent)
    with _locked(venv):
        if not (venv / READY).exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *runtime_requirements(extra)])
            (venv / READY).write_text(venv_key(extra))
        venv.chmod(0o755)
        install_project(venv)
    return venv


def install_proxy(dest: Path | None = None) -> Path:
    """The npm ``configurable-http-proxy`` (JupyterHub's own default proxy), installed once; its executable."""
    where = Path(dest) if dest is not None else CACHE_ROOT / f"lepton-hub-{PROXY_PACKAGE.replace('@', '-')}"
    exe = where / "node_modules" / ".bin" / "configurable-http-proxy"
    with _locked(where):
        if not (where / READY).exists():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(where),
                  PROXY_PACKAGE])
            _run([str(exe), "--version"])
            (where / READY).write_text(PROXY_PACKAGE)
    return exe


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


if __name__ == "__main__":  # build (or reuse) the venv and the proxy, and say how long it took
    path, seconds = timed(make_shared_venv)
    print(f"venv {path}: {seconds:.1f}s")
    exe, seconds = timed(install_proxy)
    print(f"proxy {exe}: {seconds:.1f}s")
