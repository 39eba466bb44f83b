"""The public Python API. Every ``%lepton`` magic is one of these functions."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import config
from .cluster import allocation
from .cluster.interrupt import stop_job
from .cluster.remote import RunResult, run_code
from .cluster.workers import kernel_environment, on_site  # noqa: F401  (re-exported)
from .errors import ClusterError, ConfigError, NotFound
from .models import deployments, load, models, predict, publish, serve, serve_stop
from .session import ClusterHandle, Session, connect_client, session
from .tuning import tune  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from distributed import Client


def up(
    profile: str | dict | None = None,
    *,
    name: str | None = None,
    cloud: int | None = None,
    edge: int | None = None,
    gpus: int | str | None = None,
    threads: int | None = None,
    memory: int | str | None = None,
    replace: bool = False,
    team: str | None = None,
) -> ClusterHandle:
    """Start a cluster from a profile (default ``local``: 2 cloud + 2 edge workers) and connect.

    ``profile`` is a profile's name, or one given inline:
    ``{"name": "hospitals", "sites": [{"name": "edge-hospital-a", "workers": 1}, ...]}``.

    ``cloud``/``edge`` set the worker count of every site of that kind, ``gpus``
    the GPU workers of cloud sites (``"auto"``: all GPUs found), ``threads`` and
    ``memory`` the shape of every worker. A running cluster of the same ``name``
    is reused when it matches what is asked (the handle's ``reused`` is then True);
    one that differs is an error naming the difference, unless ``replace`` (stop it,
    start anew). ``team`` is the team the cluster belongs to (default ``$LEPTON_TEAM``,
    else the first team the policy lets you create clusters in): its quotas apply,
    its members see it, and it serves that team's models. Returns a handle whose
    ``.client`` is a connected ``Client``.
    """
    s = session()
    overrides = {k: v for k, v in dict(cloud=cloud, edge=edge, gpus=gpus, threads=threads,
                                       memory=memory, team=team).items() if v is not None}
    if isinstance(memory, str):
        from dask.utils import parse_bytes

        try:
            parse_bytes(memory)
        except ValueError:
            raise ConfigError(f"memory: not a size such as 2GiB or 512MiB: {memory!r}") from None
    if name is not None:
        known = s.handles.get(name)
        known = known if known is not None and not known.closed else None
        info = known.info if known is not None else next(
            (c for c in s.transport.list() if c.get("name") == name and c.get("status") != "stopped"), None)
        if info is not None:
            differences = _differences(info, profile, overrides)
            if differences and not replace:
                raise ConfigError(f"cluster {name} is running with {'; '.join(differences)}; "
                                  "add --replace (replace=True) to restart it so, or pick another name")
            if replace:
                if known is not None:
                    s.let_go(known)  # stopped below, whoever started it
                s.transport.stop(info["id"])
            elif known is not None:
                known.reused = True
                return s.add(known)
    with kernel_environment():
        info, security, reused = s.transport.create(profile or config.DEFAULT_PROFILE, name=name,
                                                     overrides=overrides)
        client = _client_of(s, info, security, started=not reused)
    handle = ClusterHandle(info, client, transport=s.transport)
    handle.reused = reused
    return s.add(handle)


def _client_of(s: Session, info: dict[str, Any], security: Any, *, started: bool) -> Client:
    """A Client of the cluster ``info`` describes; one this call ``started`` is stopped if it cannot be reached."""
    try:
        return connect_client(info["scheduler_address"], security=security)
    except Exception:
        if started:
            s.transport.stop(info["id"])
        raise


def _differences(info: dict[str, Any], profile: str | dict | None, overrides: dict[str, Any]) -> list[str]:
    """What a running cluster has that differs from what is asked, one phrase each."""
    from dask.utils import parse_bytes

    out = []
    asked_profile = profile.get("name") if isinstance(profile, dict) else profile
    if asked_profile is not None and asked_profile != info.get("profile"):
        out.append(f"profile {info.get('profile')} (asked {asked_profile})")
    if overrides.get("team") is not None and info.get("team") and overrides["team"] != info["team"]:
        out.append(f"team {info['team']} (asked {overrides['team']})")
    sites = info.get("sites", [])

    def size(v: Any) -> int:
        return parse_bytes(v) if isinstance(v, str) else int(v)

    # option: (site kinds it sets, site field, what it is, how values compare)
    fields: dict[str, tuple[tuple[str, ...], str, str, Callable[[Any], int]]] = {
        "cloud": (("cloud",), "workers", "workers per cloud site", int),
        "edge": (("edge",), "workers", "workers per edge site", int),
        "gpus": (("cloud",), "gpus", "GPU workers per cloud site", int),
        "threads": (("cloud", "edge"), "threads", "threads per worker", int),
        "memory": (("cloud", "edge"), "memory", "memory per worker", size),
    }
    for option, (kinds, field, noun, norm) in fields.items():
        asked = overrides.get(option)
        if asked is None or asked == "auto":
            continue
        have = [s[field] for s in sites if s["kind"] in kinds]
        if {norm(v) for v in have} != {norm(asked)}:
            shown = "/".join(sorted({str(v) for v in have})) or "no"
            out.append(f"{shown} {noun} (asked {asked})")
    return out


def connect(address: str, *, name: str | None = None, timeout: float | None = None,
            security: Any = None) -> ClusterHandle:
    """Attach to a running scheduler at ``address``; a clear error within ``timeout`` s (default 5)."""
    timeout = config.CONNECT_TIMEOUT if timeout is None else timeout
    client = connect_client(address, security=security, timeout=timeout)
    sites: dict[str, dict[str, Any]] = {}
    from .cluster.workers import site_of, workers_now

    for w in workers_now(client).values():
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


def worker_certificate(site: str, directory: str | os.PathLike = ".", *, cluster: str | None = None) -> list[str]:
    """Files that let a machine join ``cluster`` (the current one) as a worker of ``site``.

    Writes the cluster's CA and a worker certificate bound to ``site`` (``ca.pem``,
    ``<site>-worker.pem``, ``<site>-worker-key.pem``, private to you) into ``directory`` and
    returns the ``lepton-lab worker`` arguments that use them. Copy the files to the machine
    that joins; they are good for one site of one cluster, and a certificate revoked by an
    admin stops working at once. (Behind a server, ``lepton-lab join-token`` gives a
    one-time token instead, for a machine that should fetch its own certificate.)
    """
    from pathlib import Path

    from .security.files import write_new

    handle = current(cluster)
    issued = session().transport.worker_certificate(handle.id, site)
    where = Path(directory)
    where.mkdir(parents=True, exist_ok=True)
    files = {"ca": where / "ca.pem", "cert": where / f"{site}-worker.pem", "key": where / f"{site}-worker-key.pem"}
    for kind, pem in (("ca", issued["ca_pem"]), ("cert", issued["cert_pem"]), ("key", issued["key_pem"])):
        files[kind].unlink(missing_ok=True)
        write_new(files[kind], pem.encode(), mode=0o600)
    return ["--scheduler", issued["scheduler_address"], "--site", site, "--tls-ca-file", str(files["ca"]),
            "--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])]


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


def start_again(name: str) -> ClusterHandle:
    """Start the stopped cluster ``name`` (or id) again and connect: its team, profile and sizes as
    last scaled, serving again the model versions it served (``info["redeployed"]``; what could not
    be, with why, in ``info["not_redeployed"]``). A new scheduler and certificates; the same checks
    as any start."""
    s = session()
    with kernel_environment():
        info = s.transport.start_again(name)
        client = _client_of(s, info, s.transport.security(info["id"]), started=True)
    stale = s.handles.get(info["name"])
    if stale is not None:  # this kernel's handle of the stopped one
        s.let_go(stale)
    return s.add(ClusterHandle(info, client, transport=s.transport))


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

        label = str(job or getattr(code, "__name__", "task"))
        with dask.annotate(job=label):
            future = handle.client.submit(code, *args, resources=on_site(site, gpus), pure=False, **kwargs)
        try:
            return future.result()
        except KeyboardInterrupt:
            raise stop_job(handle.client, label, futures=[future]) from None
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


def train(kind: str, *, client: Any = None, **kwargs: Any):
    """Train XGBoost (``xgboost.dask``) or PyTorch on the cluster; see :func:`lepton_lab.ml.train.train`.

    ``client`` defaults to the current cluster's. Without ``site`` the planner picks the
    site (cheapest with ``workers`` free workers, default 1) and says so in one line.
    """
    from .ml.train import train as _train

    if client is None:
        handle = current()
        client = handle.client
        if not kwargs.get("checkpoint_dir") and kwargs.get("name"):
            kwargs["checkpoint_dir"] = _profile_checkpoints(handle, kwargs["name"])
    if kwargs.get("site") is None:
        from .cluster.placement import JobRequest

        choice = _auto_place(JobRequest("train", workers=kwargs.get("workers") or 1), client)
        kwargs["site"] = choice.site
    return _train(kind, client=client, **kwargs)


def _profile_checkpoints(handle: ClusterHandle, name: str) -> str | None:
    """``<checkpoints>/<name>`` when the cluster's profile sets ``checkpoints:`` (a path or fsspec URL)."""
    from .cluster.profiles import resolve_profile

    try:
        where = resolve_profile(handle.info.get("profile") or "").checkpoints
    except ConfigError:  # a profile this kernel does not know (another server's, an inline one)
        return None
    return f"{where.rstrip('/')}/{name}" if where else None


def plan(kind: str = "train", *, workers: int | None = None, gpus: int = 0, memory: int | str | None = None,
         hours: float = 1.0, data_site: str | None = None, data_gb: float = 0.0, data_moves: bool = True,
         sites: Iterable[str] | str | None = None, name: str | None = None):
    """Where the planner would put a job on the cluster ``name`` (default: the current one), and why.

    ``kind`` is ``train``, ``serve`` (one site), ``tune`` (a worker per trial, any site) or
    ``federate`` (a worker on each of ``sites``, default every edge site). ``workers``
    (GPU ones: ``gpus``) of ``memory`` each, for ``hours``; ``data_site`` holds
    ``data_gb`` of its data, which stays there unless ``data_moves``. Returns a
    :class:`~lepton_lab.cluster.placement.Choice`: sites, workers, GPUs, cost per hour, data
    locality and the reasons; a request that cannot fit is a one-line ConfigError naming
    the constraint. Nothing is started.
    """
    from dask.utils import parse_bytes

    from .cluster.placement import JobRequest
    from .session import place

    try:
        mem = parse_bytes(memory) if isinstance(memory, str) else int(memory or 0)
    except ValueError:
        raise ConfigError(f"plan: memory is not a size such as 2GiB: {memory!r}") from None
    names = tuple(s.strip() for s in sites.split(",") if s.strip()) if isinstance(sites, str) else tuple(sites or ())
    request = JobRequest(str(kind), workers=1 if workers is None else workers, gpus=gpus, memory=mem, hours=hours,
                         data_site=data_site, data_gb=data_gb, data_moves=data_moves, sites=names)
    handle = current(name)
    return place(request, handle.client, handle)


def _auto_place(request: Any, client: Any):
    """The planner's choice for a verb given no site, said in one line."""
    from .session import place

    handle = next((h for h in clusters() if h.client is client), None)
    choice = place(request, client, handle)
    print(choice.line())
    return choice


def federate(model: Any, *, client: Any = None, **kwargs: Any):
    """Federated training across edge sites; see :func:`lepton_lab.ml.federated.federate`.

    ``client`` defaults to the current cluster's, else to the process's default Dask client.
    Without ``sites`` the planner takes every edge site with a worker and says so in one line.
    """
    from .ml.federated import federate as _federate

    client = _default_client() if client is None else client
    if not kwargs.get("sites"):
        from .cluster.placement import JobRequest

        kwargs["sites"] = _auto_place(JobRequest("federate"), client).sites
    return _federate(model, client=client, **kwargs)


def _default_client() -> Any:
    """The current cluster's client, else the process's default ``distributed`` client."""
    try:
        return current().client
    except NotFound:
        pass
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        raise ClusterError("no cluster to run on; start one with lepton_lab.up() or pass client=") from None

__all__ = ["up", "connect", "connect_cluster", "current", "clusters", "status", "scale", "down", "run_on", "on_site",
           "RunResult", "ClusterHandle", "compress", "train", "tune", "federate", "publish", "load", "models", "serve",
    "predict", "serve_stop", "deployments", "plan", "worker_certificate"]
