"""The public Python API. Every ``%lepton`` magic is one of these functions."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from . import config
from .cluster import allocation
from .cluster.remote import RunResult, run_code
from .cluster.workers import kernel_environment, on_site  # noqa: F401  (re-exported)
from .errors import ConfigError
from .session import ClusterHandle, connect_client, session


def up(
    profile: str | dict | None = None,
    *,
    name: str | None = None,
    cloud: int | None = None,
    edge: int | None = None,
    gpus: int | str | None = None,
    threads: int | None = None,
    memory: int | str | None = None,
) -> ClusterHandle:
    """Start a cluster from a profile (default ``local``: 2 cloud + 2 edge workers) and connect.

    ``profile`` is a profile's name, or one given inline:
    ``{"name": "hospitals", "sites": [{"name": "edge-hospital-a", "workers": 1}, ...]}``.

    ``cloud``/``edge`` set the worker count of every site of that kind, ``gpus``
    the GPU workers of cloud sites (``"auto"``: all GPUs found), ``threads`` and
    ``memory`` the shape of every worker. A running cluster of the same ``name``
    is reused. Returns a handle whose ``.client`` is a connected ``Client``.
    """
    s = session()
    overrides = {k: v for k, v in dict(cloud=cloud, edge=edge, gpus=gpus, threads=threads,
                                       memory=memory).items() if v is not None}
    if name is not None:
        known = s.handles.get(name)
        if known is not None and not known.closed:
            return s.add(known)
    with kernel_environment():
        info, security, reused = s.transport.create(profile or config.DEFAULT_PROFILE, name=name,
                                                     overrides=overrides)
        try:
            client = connect_client(info["scheduler_address"], security=security)
        except Exception:
            if not reused:
                s.transport.stop(info["id"])
            raise
    return s.add(ClusterHandle(info, client, transport=s.transport))


def connect(address: str, *, name: str | None = None, timeout: float | None = None,
            security: Any = None) -> ClusterHandle:
    """Attach to a running scheduler at ``address``; a clear error within ``timeout`` s (default 5)."""
    timeout = config.CONNECT_TIMEOUT if timeout is None else timeout
    client = connect_client(address, security=security, timeout=timeout)
    sites: dict[str, dict[str, Any]] = {}
    for w in client.scheduler_info(n_workers=-1)["workers"].values():
        from .cluster.workers import site_of

        site, kind = site_of(w.get("name", ""), w.get("resources"))
        entry = sites.setdefault(site, {"name": site, "kind": kind, "workers": 0, "gpus": 0,
                                        "threads": w.get("nthreads", 1), "memory": "",
                                        "cost_per_hour": 0.0})
        entry["workers"] += 1
        entry["gpus"] += int(w.get("resources", {}).get("GPU", 0))
    info = {
        "id": address, "name": name or address, "owner": "", "team": "", "profile": "adopted",
        "created": "", "status": "running", "scheduler_address": address,
        "dashboard_link": client.dashboard_link or "", "cost_per_hour": 0.0,
        "sites": list(sites.values()), "tls": address.startswith("tls://"), "adopted": True,
    }
    return session().add(ClusterHandle(info, client, transport=None, adopted=True))


def connect_cluster(cluster_id: str) -> ClusterHandle:
    """Connect to a cluster the Lepton service runs (by id or name), with this user's certificate.

    This is what the sidebar's "Use in notebook" inserts.
    """
    s = session()
    for h in s.handles.values():
        if not h.closed and cluster_id in (h.id, h.name):
            return s.add(h)
    transport = s.transport
    info = transport.info(cluster_id)
    client = connect_client(info["scheduler_address"], security=transport.security(info["id"]))
    return s.add(ClusterHandle(info, client, transport=transport, owned=False))


def current(name: str | None = None) -> ClusterHandle:
    """The cluster called ``name``, or the one this kernel used last."""
    return session().get(name)


def clusters() -> list[ClusterHandle]:
    """Clusters this kernel knows (started or adopted), oldest first."""
    return [h for h in session().handles.values() if not h.closed]


def status(name: str | None = None) -> allocation.Snapshot:
    """One allocation snapshot of a cluster: per worker its site, CPU, memory, GPU, tasks and jobs."""
    return current(name).snapshot()


def scale(n: int, site: str = "edge", *, name: str | None = None) -> ClusterHandle:
    """Set the number of workers of ``site`` (a site name or a kind) to ``n``."""
    return current(name).scale(n, site)


def down(name: str | None = None, *, all: bool = False) -> list[str]:
    """Stop a cluster this kernel started (one it connected to is only disconnected). Returns the names."""
    s = session()
    handles = clusters() if all else [current(name)]
    for h in handles:
        h.close()
        s.remove(h)
    return [h.name for h in handles]


def run_on(
    site: str,
    code: str | Callable[..., Any],
    *args: Any,
    namespace: dict[str, Any] | None = None,
    gpus: int = 0,
    job: str | None = None,
    returns: Iterable[str] = (),
    name: str | None = None,
    filename: str = "<lepton-cell>",
    echo: Callable[[str, str], None] | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run code on a worker of ``site`` (a site name, or ``cloud``/``edge``).

    With a function: ``run_on("edge", f, x)`` runs ``f(x)`` there and returns its
    result. With source text: the code runs with the names it reads taken from
    ``namespace``; its printed output streams back; returns a ``RunResult`` whose
    ``values`` holds the names listed in ``returns``.
    """
    handle = current(name)
    if callable(code):
        import dask

        with dask.annotate(job=job or getattr(code, "__name__", "task")):
            return handle.client.submit(code, *args, resources=on_site(site, gpus), pure=False,
                                        **kwargs).result()
    if not isinstance(code, str):
        raise ConfigError("run_on: code must be a function or Python source text")
    return run_code(handle.client, code, site=site, namespace=namespace, gpus=gpus, job=job,
                    returns=returns, filename=filename, echo=echo, timeout=timeout)


def compress(model: Any, **kwargs: Any):
    """Quantize / prune / distill a model with a measured before-and-after report.

    See :func:`lepton_lab.ml.compress.compress`; ``model`` may be a ``train`` result.
    """
    from .ml.compress import compress as _compress

    inner = getattr(model, "model", model)
    return _compress(inner, **kwargs)


def train(kind: str, **kwargs: Any):
    """Train XGBoost (``xgboost.dask``) or PyTorch on the cluster; see :func:`lepton_lab.ml.train.train`."""
    from .ml.train import train as _train

    return _train(kind, **kwargs)


def federate(model: Any, **kwargs: Any):
    """Federated training across edge sites; see :func:`lepton_lab.ml.federated.federate`."""
    from .ml.federated import federate as _federate

    return _federate(model, **kwargs)


from .models import load, models, predict, publish, serve, serve_stop  # noqa: E402

__all__ = ["up", "connect", "connect_cluster", "current", "clusters", "status", "scale", "down", "run_on", "on_site",
           "RunResult", "ClusterHandle", "compress", "train", "federate", "publish", "load", "models", "serve",
    "predict", "serve_stop"]
