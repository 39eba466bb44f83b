"""Lepton Lab: cloud and edge Dask clusters, training, compression and a signed model
registry, from JupyterLab.

    import lepton_lab
    cluster = lepton_lab.up()            # 2 cloud + 2 edge workers on this machine
    cluster.client.submit(f, x, resources=lepton_lab.on_site("edge"))

In IPython: ``%load_ext lepton_lab`` then ``%lepton help``.
"""

import importlib.util
import sys
import types
from typing import Any

from .errors import LeptonError  # noqa: F401

__version__ = "0.1.0"

# The API pulls in Dask (and, when used, PyTorch or XGBoost): it is imported on the
# first use of one of its names, so ``import lepton_lab`` and ``%load_ext lepton_lab``
# stay as quick as a bare shell.
_API = frozenset({
    "ClusterHandle", "RunResult", "clusters", "compress", "connect", "connect_cluster", "current", "deployments",
    "down", "federate", "load", "models", "on_site", "plan", "predict", "publish", "run_on", "scale", "serve",
    "serve_stop", "start_again", "status", "train", "tune", "up", "worker_certificate",
})
__all__ = sorted(_API | {"LeptonError"})


def _lazy_api() -> Any:
    """``lepton_lab.api``, executed on its first attribute access (``importlib.util.LazyLoader``)."""
    name = f"{__name__}.api"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.loader is not None, f"{name} is part of this package"
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
    return module


def __getattr__(name: str) -> Any:
    if name == "api":
        return _lazy_api()
    if name in _API:
        value = getattr(_lazy_api(), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)


class _Package(types.ModuleType):
    """The package, whose API verbs keep their names when a submodule shares one.

    Importing ``lepton_lab.models`` (the module behind the verbs) binds it on the
    package; ``lepton_lab.models`` stays the verb that lists models.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load_ipython_extension(ipython) -> None:
    """``%load_ext lepton_lab``: register the ``%lepton`` magics."""
    from .kernel.magics import load as register_magics

    register_magics(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "lepton-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The server extension: :class:`~lepton_lab.server.app.LeptonApp` (REST API, identity, authorization)."""
    from .server.app import LeptonApp

    return [{"module": "lepton_lab", "app": LeptonApp}]
