"""The kernel's side of Lepton Lab: which clusters it knows and how it reaches the services.

Two transports lead to the same services. :class:`~lepton_lab.embedded.EmbeddedTransport`
runs them in this process for the local user (plain IPython, scripts, tests); a
REST transport reaches the Jupyter server's extension with the user's own
identity. Either way the kernel ends up with a :class:`ClusterHandle`: the
cluster's description plus a ``distributed.Client`` connected to it.
"""

from __future__ import annotations

import builtins
import logging
import threading
from typing import Any, Protocol

from distributed import Client, Security

from . import config
from .cluster import allocation
from .cluster.clients import open_client
from .embedded import EmbeddedTransport
from .errors import ClusterError, ConfigError, NotFound, first_line

logger = logging.getLogger(__name__)


class Transport(Protocol):
    """Every verb the kernel asks of the services; :class:`~lepton_lab.embedded.EmbeddedTransport`
    (in this process) and :class:`~lepton_lab.rest.RestTransport` (a Jupyter server) implement all of them."""

    def create(self, profile: str | dict, *, name: str | None,
               overrides: dict[str, Any]) -> tuple[dict, Security | None, bool]: ...
    def scale(self, cluster_id: str, n: int, site: str) -> dict: ...
    def stop(self, cluster_id: str) -> None: ...
    def start_again(self, cluster: str) -> dict: ...
    def list(self) -> list[dict]: ...
    def info(self, cluster_id: str) -> dict: ...
    def security(self, cluster_id: str) -> Security | None: ...
    def worker_certificate(self, cluster_id: str, site: str) -> dict: ...
    def publish(self, team: str, name: str, payload: Any, meta: dict) -> dict: ...
    def load(self, team: str, ref: str) -> tuple[Any, dict]: ...
    def models(self, team: str | None) -> builtins.list[dict]: ...  # `list` here is the verb above
    def artifact(self, team: str, ref: str) -> tuple[bytes, str]: ...
    def deploy(self, cluster_id: str, body: dict[str, Any]) -> dict: ...
    def deployments(self, cluster_id: str) -> Any: ...
    def undeploy(self, cluster_id: str, name: str) -> None: ...
    def predict_deployed(self, cluster_id: str, name: str, inputs: Any) -> dict: ...
    def study(self, team: str | None, name: str, *, direction: str, sampler: Any = None,
              pruner: Any = None) -> tuple[str, Any]: ...
    def privacy(self, team: str, dataset: str | None = None) -> dict: ...
    def privacy_charge(self, team: str, dataset: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                       what: str, delta: float | None = None) -> dict: ...


class ClusterHandle:
    """A cluster as this kernel sees it: ``.client`` is connected; ``.view()`` shows it live."""

    #: True when ``up`` found it already running with the options asked.
    reused: bool = False

    def __init__(self, info: dict[str, Any], client: Client, *, transport: Transport | None,
                 adopted: bool = False, owned: bool = True):
        self.info = info
        self.client = client
        self.transport = transport
        self.adopted = adopted
        # A cluster this kernel asked for is stopped with it; one it only joined is left running.
        self.owned = owned and not adopted
        self.closed = False

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def address(self) -> str:
        return self.info["scheduler_address"]

    @property
    def dashboard_link(self) -> str:
        return self.info.get("dashboard_link") or ""

    def costs(self) -> dict[str, float]:
        return {s["name"]: float(s["cost_per_hour"]) for s in self.info.get("sites", [])}

    def snapshot(self) -> allocation.Snapshot:
        """Who holds what on this cluster right now."""
        return allocation.snapshot(self.client, cluster=self.name, costs=self.costs())

    def scale(self, n: int, site: str = "edge") -> "ClusterHandle":
        """Set the worker count of ``site`` (a site name, or every site of a kind) to ``n``."""
        if self.adopted or self.transport is None:
            raise ClusterError(f"cluster {self.name} was adopted with connect(); scale it where it was started")
        self.info = self.transport.scale(self.id, n, site)
        return self

    def close(self) -> None:
        """Disconnect; a cluster this kernel started is stopped too, one it joined is left running."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client.close(timeout=10)
        except Exception as e:  # the scheduler already gone: its client was mid-reconnect, nothing to keep
            logger.warning("cluster %s: its client did not close cleanly (%s)", self.name,
                           first_line(e, named=True))
        finally:
            if self.owned and self.transport is not None:
                try:
                    self.transport.stop(self.id)
                except NotFound:
                    pass

    def view(self, interval: float = config.REFRESH_INTERVAL):
        """The live allocation view (ipywidgets + plotly), refreshed every ``interval`` seconds."""
        from .views import AllocationView

        return AllocationView(self, interval=interval)

    def __repr__(self) -> str:
        sites = ", ".join(f"{s['name']}={s['workers']}" for s in self.info.get("sites", []))
        state = "closed" if self.closed else self.info.get("status", "running")
        return f"<LeptonCluster {self.name!r} {self.address} [{sites}] {state}>"

    def _repr_html_(self) -> str:
        from .views import snapshot_html

        try:
            return snapshot_html(self.snapshot(), title=f"Lepton cluster {self.name}",
                                 dashboard=self.dashboard_link)
        except Exception:
            import html

            return f"<pre>{html.escape(repr(self))}</pre>"


def default_transport() -> Transport:
    """REST to the Jupyter server this kernel belongs to, else the services in-process.

    ``LEPTON_TRANSPORT=embedded`` or ``rest`` forces one.
    """
    import os

    from .rest import RestTransport, find_server

    choice = os.environ.get("LEPTON_TRANSPORT", "auto")
    if choice not in ("auto", "embedded", "rest"):
        raise ConfigError(f"LEPTON_TRANSPORT: auto, embedded or rest, got {choice!r}")
    server = None if choice == "embedded" else find_server()
    if server is None:
        if choice == "rest":
            raise ClusterError("LEPTON_TRANSPORT=rest but no Jupyter server found; set LEPTON_SERVER_URL")
        return EmbeddedTransport()
    return RestTransport(server)


class Session:
    """This kernel's clusters, by name, and the one used when no name is given."""

    def __init__(self, transport: Transport | None = None):
        self.transport = transport or default_transport()
        self.handles: dict[str, ClusterHandle] = {}
        self.served: dict[str, Any] = {}
        self.current: ClusterHandle | None = None
        self.lock = threading.RLock()

    def get(self, name: str | None = None) -> ClusterHandle:
        with self.lock:
            if name is None:
                if self.current is None or self.current.closed:
                    raise NotFound("no cluster yet; start one with `%lepton up` or lepton_lab.up()")
                return self.current
            handle = self.handles.get(name)
            if handle is None or handle.closed:
                known = ", ".join(sorted(n for n, h in self.handles.items() if not h.closed)) or "none"
                raise NotFound(f"this kernel knows no cluster {name!r} (known: {known})")
            return handle

    def add(self, handle: ClusterHandle) -> ClusterHandle:
        with self.lock:
            self.handles[handle.name] = handle
            self.current = handle
            return handle

    def remove(self, handle: ClusterHandle) -> None:
        with self.lock:
            self.handles.pop(handle.name, None)
            if self.current is handle:
                live = [h for h in self.handles.values() if not h.closed]
                self.current = live[-1] if live else None

    def let_go(self, handle: ClusterHandle) -> None:
        """Disconnect ``handle`` and forget it, leaving its cluster as it is (running or not)."""
        handle.owned = False
        handle.close()
        self.remove(handle)

    def close_all(self) -> None:
        for handle in list(self.handles.values()):
            handle.close()
            self.remove(handle)


_session: Session | None = None
_session_lock = threading.Lock()


def session() -> Session:
    """This process's session (made on first use)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
        return _session


def connect_client(address: str, *, security: Security | None = None,
                   timeout: float = config.CONNECT_TIMEOUT) -> Client:
    """A Client for ``address``, or a one-line ClusterError within ``timeout`` seconds."""
    if not isinstance(address, str) or "://" not in address and ":" not in address:
        raise ConfigError(f"not a scheduler address: {address!r} (expected tcp://HOST:PORT or tls://HOST:PORT)")
    if address.startswith("tls://") and security is None:
        raise ConfigError(f"{address} speaks TLS: pass security= (a distributed.Security with a client "
                          "certificate), or connect_cluster(ID) for a Lepton cluster")
    try:
        return open_client(address, security=security, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"could not reach a Dask scheduler at {address} within {timeout:g} s "
            f"({type(e).__name__}); check the address and that the scheduler is running"
        ) from None
    except ValueError as e:
        raise ConfigError(f"not a scheduler address: {address!r} ({e})") from None


def place(request: Any, client: Client | None = None, handle: ClusterHandle | None = None) -> Any:
    """Where the planner puts ``request`` (a ``placement.JobRequest``) on a cluster, from a live snapshot.

    ``handle`` gives the sites' costs per worker-hour; a bare ``client`` plans on capacity alone.
    With the services in this process, GPUs free in their ledger are named when GPU workers run short.
    """
    from .cluster.placement import choose

    if handle is not None:
        snap, costs = handle.snapshot(), handle.costs()
        transport = handle.transport
    else:
        snap, costs, transport = allocation.snapshot(client), {}, None
    free_gpus = None
    if getattr(request, "gpus", 0) and isinstance(transport, EmbeddedTransport):
        from .cluster import gpus

        free_gpus = len(transport.manager.ledger.free(gpus.discover()))
    return choose(request, snap, costs, free_gpus=free_gpus)
