"""Workers of ``launch: kubernetes`` sites: worker groups of dask-kubernetes' operator.

For a cluster with Kubernetes sites, :func:`render` gives the operator's objects:

* one ``Secret`` per site with a worker certificate from the cluster's CA that
  names the site (``ca.crt``, ``worker.crt``, ``worker.key``), mounted read-only
  into every pod of the site;
* one ``DaskCluster`` (``kubernetes.dask.org/v1``): the anchor the operator
  requires, since a ``DaskWorkerGroup`` joins a cluster by its ``cluster`` name
  and is deleted with it. Its scheduler is **not** the one workers use: Lepton's
  scheduler, with its site gate and CA, stays where the Lepton server runs, and
  every worker pod is given its address in ``DASK_SCHEDULER_ADDRESS`` (the
  operator keeps a value already set). The ``DaskCluster``'s own scheduler pod is
  a placeholder that sleeps, and its default worker group has no replicas;
* one ``DaskWorkerGroup`` per site: pods of the site's ``image`` on nodes matching
  its ``node_selector``, asking for ``threads`` CPUs, ``memory`` and
  ``gpus_per_worker`` ``nvidia.com/gpu`` devices, each running
  ``lepton-lab worker --site <site> --kind <kind> ...`` with the mounted
  certificate. The pod's worker is named ``<site>-<n>`` with ``n`` taken from the
  operator's per-pod ``DASK_WORKER_NAME``, so every pod's worker has a name of its
  own and carries the site's resources (:func:`~lepton_lab.cluster.workers.site_resources`).

:class:`KubernetesSites` applies them through ``kr8s`` (what the operator itself
uses) with the kubeconfig or in-cluster service account ``kr8s`` finds, scales a
site by the replicas of its group (removing the newest pods first, so the
operator never has to reach a scheduler it does not run) and deletes everything
at teardown. The scheduler must be able to reach the pods' addresses, as
Dask's scheduler connects to its workers.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from distributed.deploy.spec import ProcessInterface

from ..errors import ClusterError, ConfigError, first_line
from .profiles import Profile, SiteSpec
from .workers import WorkerPlan, site_resources

logger = logging.getLogger(__name__)

API_VERSION = "kubernetes.dask.org/v1"
INSTALL = "pip install dask-kubernetes"
#: Where a worker pod finds its certificate, key and the cluster's CA certificate.
CERT_DIR = "/etc/lepton/tls"
#: How long the worker certificate of a Kubernetes site stays valid.
CERT_LIFETIME = timedelta(days=7)
#: Seconds a worker waits for a lost scheduler before it exits.
DEATH_TIMEOUT = 60
#: Group every worker pod runs with, so that it can read its certificate whatever its user.
CERT_GROUP = 1000
#: Worker numbers per pod: a pod with ``gpus_per_worker`` GPUs runs one Dask worker per GPU.
PER_POD = 32
#: The pod's entry point: its worker number from the operator's unique pod suffix, then ``lepton-lab worker``.
ENTRYPOINT = ("sh", "-c",
              f'exec lepton-lab worker --index "$(( 0x${{DASK_WORKER_NAME##*-}} * {PER_POD} ))" "$@"',
              "lepton-lab-worker")
LABEL_CLUSTER = "lepton-lab/cluster"
LABEL_SITE = "lepton-lab/site"


def kubernetes_sites(profile: Profile) -> list[SiteSpec]:
    return [s for s in profile.sites if s.launch == "kubernetes"]


def check_kubernetes_sites(profile: Profile, *, tls: bool, ca_dir: Path | None, host: str,
                           advertise: str) -> None:
    """A one-line ConfigError unless the pods of every ``launch: kubernetes`` site could join."""
    for site in kubernetes_sites(profile):
        if not tls or ca_dir is None:
            raise ConfigError(f"site {site.name} runs workers on kubernetes and needs a cluster with TLS "
                              "and its own CA (start it through the Lepton server)")
        where = advertise or host
        if _has_port(where):
            where = where.rsplit(":", 1)[0]
        if where.strip("[]") in ("127.0.0.1", "localhost", "::1", ""):
            raise ConfigError(f"site {site.name} runs workers on kubernetes: the scheduler must be advertised "
                              "at an address its pods reach, not loopback (set the cluster's advertise address)")


def object_name(cluster_id: str) -> str:
    """Name of the ``DaskCluster`` of a Lepton cluster."""
    return f"lepton-{cluster_id}".lower()


def group_name(cluster_id: str, site: str) -> str:
    """Name of the ``DaskWorkerGroup`` of one site."""
    return f"{object_name(cluster_id)}-{site}"


def secret_name(cluster_id: str, site: str) -> str:
    """Name of the ``Secret`` holding a site's worker certificate."""
    return f"{group_name(cluster_id, site)}-tls"


def workers_per_pod(site: SiteSpec) -> int:
    """Dask workers in one pod of ``site``: one per GPU, else one."""
    return max(site.gpus_per_worker, 1)


def _labels(cluster_id: str, site: str | None = None) -> dict[str, str]:
    labels = {LABEL_CLUSTER: cluster_id}
    if site is not None:
        labels[LABEL_SITE] = site
    return labels


def worker_args(site: SiteSpec, scheduler: str) -> list[str]:
    """``lepton-lab worker`` arguments of every pod of ``site`` (the pod adds ``--index``)."""
    return [
        "--scheduler", scheduler, "--site", site.name, "--kind", site.kind,
        "--nworkers", "1", "--nthreads", str(site.threads), "--memory-limit", str(site.memory),
        "--gpus", str(site.gpus_per_worker), "--death-timeout", str(DEATH_TIMEOUT),
        "--tls-ca-file", f"{CERT_DIR}/ca.crt", "--tls-cert", f"{CERT_DIR}/worker.crt",
        "--tls-key", f"{CERT_DIR}/worker.key",
    ]


def cert_secret(ca: Any, cluster_id: str, site: SiteSpec) -> dict[str, Any]:
    """A ``Secret`` with a fresh worker certificate of ``ca`` (a ClusterCA) bound to ``site``."""
    cert = ca.issue(f"{site.name}-kubernetes", "worker", ("localhost",), CERT_LIFETIME,
                    site=site.name, kind=site.kind)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret_name(cluster_id, site.name), "namespace": site.namespace,
                     "labels": _labels(cluster_id, site.name)},
        "stringData": {"ca.crt": cert.ca_pem, "worker.crt": cert.cert_pem, "worker.key": cert.key_pem},
    }


def worker_group(cluster_id: str, site: SiteSpec, scheduler: str, replicas: int) -> dict[str, Any]:
    """The ``DaskWorkerGroup`` of ``site``: ``replicas`` pods, each a ``lepton-lab worker`` of the site."""
    requests = {"cpu": str(site.threads), "memory": str(site.memory)}
    limits = dict(requests)
    if site.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(site.gpus_per_worker)
    container = {
        "name": "worker",
        "image": site.image,
        "command": list(ENTRYPOINT),
        "args": worker_args(site, scheduler),
        "env": [
            {"name": "DASK_SCHEDULER_ADDRESS", "value": scheduler},
            {"name": "LEPTON_HOME", "value": "/tmp/lepton"},
            {"name": "DASK_TEMPORARY_DIRECTORY", "value": "/tmp/dask-scratch"},
        ],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "lepton-tls", "mountPath": CERT_DIR, "readOnly": True}],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "lepton-tls",
                     "secret": {"secretName": secret_name(cluster_id, site.name), "defaultMode": 0o440}}],
        "securityContext": {"fsGroup": CERT_GROUP},
        # Long enough for a worker to hand its results over after SIGTERM.
        "terminationGracePeriodSeconds": 60,
    }
    if site.node_selector:
        pod["nodeSelector"] = dict(site.node_selector)
    if site.tolerations:
        pod["tolerations"] = [dict(t) for t in site.tolerations]
    if site.service_account:
        pod["serviceAccountName"] = site.service_account
    labels = _labels(cluster_id, site.name)
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskWorkerGroup",
        "metadata": {"name": group_name(cluster_id, site.name), "namespace": site.namespace, "labels": labels},
        "spec": {
            "cluster": object_name(cluster_id),
            "worker": {"replicas": replicas, "metadata": {"labels": labels}, "spec": pod},
        },
    }


def dask_cluster(cluster_id: str, site: SiteSpec) -> dict[str, Any]:
    """The ``DaskCluster`` the worker groups belong to (its scheduler is a placeholder; see the module doc)."""
    name = object_name(cluster_id)
    small = {"cpu": "10m", "memory": "32Mi"}
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": site.namespace, "labels": _labels(cluster_id)},
        "spec": {
            "worker": {"replicas": 0, "spec": {"containers": [
                {"name": "worker", "image": site.image, "command": ["sleep", "infinity"]}]}},
            "scheduler": {
                "spec": {"containers": [{"name": "scheduler", "image": site.image,
                                         "command": ["sleep", "infinity"],
                                         "resources": {"requests": small, "limits": small}}]},
                "service": {"type": "ClusterIP",
                            "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                            "ports": [{"name": "tcp-comm", "port": 8786, "protocol": "TCP"}]},
            },
        },
    }


def render(profile: Profile, *, cluster_id: str, scheduler: str, ca: Any,
           replicas: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every object of the Kubernetes sites of ``profile``, in the order they are created.

    ``scheduler`` is the Lepton scheduler's address as pods reach it; ``ca`` the
    cluster's ClusterCA; ``replicas`` pods per site (default: the site's ``workers``).
    """
    sites = kubernetes_sites(profile)
    if not sites:
        return []
    replicas = replicas or {}
    objects = [cert_secret(ca, cluster_id, s) for s in sites]
    objects.append(dask_cluster(cluster_id, sites[0]))
    objects += [worker_group(cluster_id, s, scheduler, replicas.get(s.name, s.workers)) for s in sites]
    return objects


# -- in the launcher --------------------------------------------------------------------------


class KubernetesSlot(ProcessInterface):
    """A pod of a Kubernetes site as the cluster's worker spec counts it; the operator starts the pod."""

    def __init__(self, scheduler: str | None = None, *, name: str, site: str, resources: dict | None = None):
        super().__init__(scheduler, name)
        self.site = site
        self.resources = dict(resources or {})


def slot_spec(plan: WorkerPlan, site: SiteSpec) -> dict[str, Any]:
    """The worker-spec entry for one pod of ``site``."""
    resources = site_resources(site.kind, site.name, site.threads, gpu=bool(site.gpus_per_worker))
    return {"cls": KubernetesSlot, "options": {"name": plan.name, "site": site.name, "resources": resources}}


def is_slot(spec: dict[str, Any]) -> bool:
    return spec.get("cls") is KubernetesSlot


def split_joined(names: set[str], sites: dict[str, int]) -> tuple[set[str], dict[str, int]]:
    """Joined worker names of other sites, and how many workers each Kubernetes site in ``sites`` has."""
    counts = dict.fromkeys(sites, 0)
    others = set()
    for name in names:
        site, _, n = str(name).rpartition("-")
        if site in counts and n.isdigit():
            counts[site] += 1
        else:
            others.add(name)
    return others, counts


def _kr8s() -> Any:
    try:
        import kr8s
        import kr8s.objects
    except ImportError:
        raise ClusterError(f"kubernetes sites need the kr8s client: {INSTALL}") from None
    return kr8s


class KubernetesSites:
    """The operator objects of one Lepton cluster's Kubernetes sites, created, scaled and deleted."""

    def __init__(self, profile: Profile, *, cluster_id: str, scheduler: str, ca_dir: Path):
        self.sites = {s.name: s for s in kubernetes_sites(profile)}
        self.profile = profile
        self.cluster_id = cluster_id
        self.scheduler = scheduler
        self.ca_dir = Path(ca_dir)
        self.namespace = next(iter(self.sites.values())).namespace
        self.created: list[Any] = []  # kr8s objects, in creation order
        self.groups: dict[str, Any] = {}
        self._api: Any = None

    def expected(self, replicas: dict[str, int]) -> dict[str, int]:
        """Dask workers each site has once its pods run."""
        return {name: n * workers_per_pod(self.sites[name]) for name, n in replicas.items()}

    def _connect(self) -> Any:
        if self._api is None:
            kr8s = _kr8s()
            try:
                self._api = kr8s.api(namespace=self.namespace)
            except Exception as e:
                raise ClusterError(f"kubernetes: no cluster to reach (kubeconfig or in-cluster service "
                                   f"account): {first_line(e, named=True)}") from None
        return self._api

    def _classes(self) -> tuple[Any, Any]:
        from kr8s.objects import new_class

        cluster_cls = new_class("DaskCluster", API_VERSION, namespaced=True)
        group_cls = new_class("DaskWorkerGroup", API_VERSION, namespaced=True, scalable=True,
                              scalable_spec="worker.replicas")
        return cluster_cls, group_cls

    def scale(self, replicas: dict[str, int]) -> None:
        """Create every object on first use, then set each site's pods to ``replicas[site]``."""
        api = self._connect()
        if not self.created:
            self._create(api, replicas)
            return
        for name, n in replicas.items():
            group = self.groups[name]
            what = f"scale worker group {group.name} to {n}"
            try:
                pods = sorted(api.get("deployments", namespace=self.namespace,
                                      label_selector={"dask.org/workergroup-name": group.name}),
                              key=lambda d: (d.metadata.get("creationTimestamp", ""), d.name))
                # Newest first, as the operator would, but without asking a scheduler it does not run.
                for extra in pods[n:]:
                    extra.delete()
                group.patch({"spec": {"worker": {"replicas": n}}})
            except Exception as e:
                raise ClusterError(f"kubernetes: could not {what} in {self.namespace}: "
                                   + first_line(e, named=True)) from None

    def _create(self, api: Any, replicas: dict[str, int]) -> None:
        from kr8s.objects import Secret

        from ..security.certs import ClusterCA

        cluster_cls, group_cls = self._classes()
        objects = render(self.profile, cluster_id=self.cluster_id, scheduler=self.scheduler,
                         ca=ClusterCA.load(self.ca_dir), replicas=replicas)
        kinds = {"Secret": Secret, "DaskCluster": cluster_cls, "DaskWorkerGroup": group_cls}
        for manifest in objects:
            obj = kinds[manifest["kind"]](manifest, api=api)
            try:
                obj.create()
            except Exception as e:
                self.delete()  # nothing half-made stays behind
                raise ClusterError(f"kubernetes: could not create {manifest['kind']} {manifest['metadata']['name']} "
                                   f"in {self.namespace}: {first_line(e, named=True)}") from None
            self.created.append(obj)
            if manifest["kind"] == "DaskWorkerGroup":
                self.groups[manifest["metadata"]["labels"][LABEL_SITE]] = obj

    def delete(self) -> None:
        """Delete every object this created (worker groups, then the cluster, then the certificates)."""
        for obj in reversed(self.created):
            try:
                obj.delete()
            except Exception as e:
                if "NotFound" not in type(e).__name__:
                    logger.warning("kubernetes: could not delete %s %s: %s", obj.kind, obj.name,
                                   first_line(e, named=True))
        self.created.clear()
        self.groups.clear()


def _has_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and not host.endswith(":")
