"""Named cluster shapes: which sites, how many workers each, threads, memory, GPUs, cost.

A profile is data only; :mod:`lepton_lab.cluster.launcher` turns it into processes.
Built-in profiles are below; users add their own in ``$LEPTON_HOME/profiles.yaml``::

    profiles:
      radiology:
        description: one GPU box in the cloud, two hospitals at the edge
        idle_timeout: 30          # minutes with no task and no client activity: the server stops it
        sites:
          - {name: cloud, kind: cloud, workers: 1, threads: 2, memory: 4GiB, gpus: auto, cost_per_hour: 2.5}
          - {name: edge-hospital-a, kind: edge, workers: 1, threads: 1, memory: 1GiB, cost_per_hour: 0.1}
          - {name: edge-hospital-b, kind: edge, workers: 1, threads: 1, memory: 1GiB, cost_per_hour: 0.1}

Every field is checked on load; a bad one gives a one-line :class:`ConfigError`
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from dask.utils import format_bytes, parse_bytes

from .. import config
from ..errors import ConfigError
from ..schemas import parse_size, problem, validate
from .profile_schema import (
    KUBERNETES_FIELDS,
    MAX_THREADS,
    MAX_WORKERS_PER_SITE,
    MEMORY,
    PROFILE_NAME,
    PROFILE_SCHEMA,
    PROFILES_FILE_SCHEMA,
    SITE_KINDS,
    SITE_SCHEMA,
    SSH_FIELDS,
    whole,
)


@dataclass(frozen=True)
class SiteSpec:
    """One site of a profile: ``workers`` Dask workers of the same shape.

    ``gpus`` is a count of GPU workers (one per GPU), or ``"auto"`` for every GPU
    NVML finds (none on a CPU machine). GPU workers replace CPU workers of the
    site, one for one, up to ``workers``; a site with ``gpus > workers`` gets
    ``gpus`` workers.

    ``launch`` says where its workers start: ``local`` (processes on this
    machine) or ``ssh``: worker ``n`` runs ``python -m lepton_lab.cli worker`` on
    ``hosts[n % len(hosts)]`` (``host`` or ``host:port``), logged in as
    ``ssh_user`` with the private key ``ssh_key`` and checked against
    ``known_hosts`` (each defaulting to what ``ssh`` would use); ``python`` is
    the interpreter on those hosts.

    ``launch: kubernetes`` runs the site's workers as pods of the container
    ``image`` in ``namespace``, one ``DaskWorkerGroup`` of dask-kubernetes'
    operator per site (see :mod:`lepton_lab.cluster.kubernetes`), on nodes
    matching ``node_selector`` (label -> value pairs), each pod asking for
    ``threads`` CPUs, ``memory`` and ``gpus_per_worker`` ``nvidia.com/gpu``
    devices, run as ``service_account`` and tolerating ``tolerations``.
    """

    name: str
    kind: str
    workers: int = 1
    threads: int = 1
    memory: int = parse_bytes("2GiB")
    gpus: int | str = 0
    cost_per_hour: float = 0.0
    launch: str = "local"
    hosts: tuple[str, ...] = ()
    ssh_user: str = ""
    ssh_key: str = ""
    known_hosts: str = ""
    python: str = "python3"
    image: str = ""
    namespace: str = "default"
    node_selector: tuple[tuple[str, str], ...] = ()
    gpus_per_worker: int = 0
    service_account: str = ""
    tolerations: tuple[tuple[tuple[str, Any], ...], ...] = ()

    @property
    def memory_text(self) -> str:
        return format_bytes(self.memory)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "kind": self.kind,
            "workers": self.workers,
            "threads": self.threads,
            "memory": self.memory_text,
            "gpus": self.gpus,
            "cost_per_hour": self.cost_per_hour,
        }
        if self.launch == "ssh":
            data.update(launch=self.launch, hosts=list(self.hosts), ssh_user=self.ssh_user,
                        ssh_key=self.ssh_key, known_hosts=self.known_hosts, python=self.python)
        if self.launch == "kubernetes":
            data.update(launch=self.launch, image=self.image, namespace=self.namespace,
                        node_selector=dict(self.node_selector), gpus_per_worker=self.gpus_per_worker,
                        tolerations=[dict(t) for t in self.tolerations])
            if self.service_account:
                data["service_account"] = self.service_account
        return data


@dataclass(frozen=True)
class Profile:
    """A named cluster shape: its sites, in order."""

    name: str
    sites: tuple[SiteSpec, ...]
    description: str = ""
    builtin: bool = False
    #: Minutes with no task and no client activity after which the server stops the cluster.
    idle_timeout: float | None = None
    #: Where training checkpoints go (a path or fsspec URL every worker and the kernel reach).
    checkpoints: str | None = None

    def site(self, name: str) -> SiteSpec:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(
            f"profile {self.name!r} has no site {name!r} (sites: {', '.join(s.name for s in self.sites)})"
        )

    def sites_matching(self, site_or_kind: str) -> list[SiteSpec]:
        """Sites named ``site_or_kind``, or else every site of that kind."""
        exact = [s for s in self.sites if s.name == site_or_kind]
        if exact:
            return exact
        return [s for s in self.sites if s.kind == site_or_kind]

    def with_overrides(
        self,
        *,
        cloud: int | None = None,
        edge: int | None = None,
        gpus: int | str | None = None,
        threads: int | None = None,
        memory: int | str | None = None,
    ) -> "Profile":
        """A copy with workers per site kind, GPUs (cloud sites), threads or memory replaced."""
        where = f"profile {self.name}"
        if cloud is not None:
            _int_in(cloud, 0, MAX_WORKERS_PER_SITE, f"{where}: --cloud")
        if edge is not None:
            _int_in(edge, 0, MAX_WORKERS_PER_SITE, f"{where}: --edge")
        if threads is not None:
            _int_in(threads, 1, MAX_THREADS, f"{where}: --threads")
        mem = _memory(memory, f"{where}: --memory") if memory is not None else None
        if gpus is not None and gpus != "auto":
            _int_in(gpus, 0, MAX_WORKERS_PER_SITE, f"{where}: --gpus")
        if gpus not in (None, 0) and not any(s.kind == "cloud" for s in self.sites):
            raise ConfigError(f"{where} has no cloud site to put GPUs on; use --profile hybrid")
        sites = []
        for s in self.sites:
            changes: dict[str, Any] = {}
            if s.kind == "cloud" and cloud is not None:
                changes["workers"] = cloud
            if s.kind == "edge" and edge is not None:
                changes["workers"] = edge
            if s.kind == "cloud" and gpus is not None:
                changes["gpus"] = gpus
            if threads is not None:
                changes["threads"] = threads
            if mem is not None:
                changes["memory"] = mem
            sites.append(dataclasses.replace(s, **changes))
        return dataclasses.replace(self, sites=tuple(sites))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "builtin": self.builtin,
            "idle_timeout": self.idle_timeout,
            "checkpoints": self.checkpoints,
            "sites": [s.to_dict() for s in self.sites],
        }


def _cloud(workers=2, threads=1, memory="2GiB", gpus: int | str = 0, cost=0.0, name="cloud"):
    return SiteSpec(name, "cloud", workers, threads, parse_bytes(memory), gpus, cost)


def _edge(workers=2, threads=1, memory="1GiB", cost=0.0, name="edge"):
    return SiteSpec(name, "edge", workers, threads, parse_bytes(memory), 0, cost)


BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "local",
            (_cloud(2, cost=0.0), _edge(2, cost=0.0)),
            "this machine: 2 cloud and 2 edge workers, one thread each",
            builtin=True,
        ),
        Profile(
            "hybrid",
            (
                _cloud(1, threads=2, memory="4GiB", gpus="auto", cost=2.48),
                _edge(1, memory="1GiB", cost=0.12, name="edge-hospital-a"),
                _edge(1, memory="1GiB", cost=0.12, name="edge-branch-b"),
            ),
            "a cloud worker per GPU where GPUs exist (else one CPU worker), two named edge sites",
            builtin=True,
        ),
        Profile(
            "edge-fleet",
            (_cloud(1, cost=0.34), _edge(6, memory="512MiB", cost=0.05)),
            "one coordinating cloud worker and many small edge workers",
            builtin=True,
        ),
    )
}


# -- validation ---------------------------------------------------------------------------


def _int_in(value: Any, lo: int, hi: int, where: str) -> int:
    validate(value, whole(lo, hi), where)
    return value


def _memory(value: Any, where: str) -> int:
    validate(value, MEMORY, where)
    return parse_size(value) or 0


def _site_from_dict(data: Any, where: str) -> SiteSpec:
    _check(data, SITE_SCHEMA, where)
    name = data["name"]
    kind = data.get("kind", "edge" if name.startswith("edge") else "cloud")
    if name in SITE_KINDS and name != kind:
        raise ConfigError(f"{where}.name: a site named {name!r} must be of kind {name!r}")
    gpus = data.get("gpus", 0)
    if gpus and kind != "cloud":
        raise ConfigError(f"{where}.gpus: only cloud sites carry GPUs")
    return SiteSpec(name, kind, data.get("workers", 1), data.get("threads", 1),
                    _memory(data.get("memory", "2GiB"), f"{where}.memory"), gpus,
                    float(data.get("cost_per_hour", 0.0)), **_launch_fields(data, gpus, kind, where))


def _launch_fields(data: Mapping[str, Any], gpus: Any, kind: str, where: str) -> dict[str, Any]:
    """``launch`` and what a launch of that kind needs, beyond the schema."""
    launch = data.get("launch", "local")
    for field_names, needs in ((SSH_FIELDS, "ssh"), (KUBERNETES_FIELDS, "kubernetes")):
        extra = [key for key in field_names if key in data]
        if extra and launch != needs:
            raise ConfigError(f"{where}.{extra[0]}: only for sites with launch: {needs}")
    if launch == "local":
        return {}
    if launch == "kubernetes":
        return _kubernetes_fields(data, gpus, kind, where)
    if "hosts" not in data:
        raise ConfigError(f"{where}.hosts: launch: ssh needs a non-empty list of host or host:port")
    hosts = tuple(config._address(host, f"{where}.hosts[{i}]", True) for i, host in enumerate(data["hosts"]))
    if gpus:
        raise ConfigError(f"{where}.gpus: ssh sites start CPU workers; join a GPU machine with "
                          "`lepton-lab worker --gpus N`")
    fields: dict[str, Any] = {"launch": "ssh", "hosts": hosts}
    for key in ("ssh_user", "ssh_key", "known_hosts", "python"):
        if data.get(key) is not None:
            fields[key] = data[key].strip()
    return fields


def _kubernetes_fields(data: Mapping[str, Any], gpus: Any, kind: str, where: str) -> dict[str, Any]:
    """The pod shape of a ``launch: kubernetes`` site, beyond the schema."""
    if gpus:
        raise ConfigError(f"{where}.gpus: kubernetes sites ask for GPUs with gpus_per_worker "
                          "(Kubernetes assigns the devices)")
    if "image" not in data:
        raise ConfigError(f"{where}.image: launch: kubernetes needs a container image with lepton-lab "
                          "installed, e.g. registry.example.org/lepton-lab:0.1; got None")
    gpus_per_worker = data.get("gpus_per_worker", 0)
    if gpus_per_worker and kind != "cloud":
        raise ConfigError(f"{where}.gpus_per_worker: only cloud sites carry GPUs")
    tolerations = data.get("tolerations", [])
    for i, tol in enumerate(tolerations):
        if tol.get("operator") == "Exists" and tol.get("value"):
            raise ConfigError(f"{where}.tolerations[{i}].value: operator Exists takes no value")
    fields: dict[str, Any] = {
        "launch": "kubernetes", "image": data["image"], "namespace": data.get("namespace", "default"),
        "node_selector": tuple(sorted(data.get("node_selector", {}).items())),
        "gpus_per_worker": gpus_per_worker, "tolerations": tuple(tuple(sorted(t.items())) for t in tolerations),
    }
    if data.get("service_account") is not None:
        fields["service_account"] = data["service_account"]
    return fields


def _check(data: Any, schema: Mapping[str, Any], where: str) -> None:
    """A ConfigError ``where.field: reason`` for the first problem of ``data``."""
    found = problem(data, schema)
    if found is not None:
        path, reason = found
        raise ConfigError(f"{where}{'.' + path if path else ''}: {reason}")


def profile_from_dict(name: str, data: Any, where: str) -> Profile:
    """Build and validate one profile; ``where`` prefixes error messages."""
    if not isinstance(name, str) or not PROFILE_NAME.match(name):
        raise ConfigError(f"{where}: bad profile name {name!r}")
    _check(data, PROFILE_SCHEMA, where)
    sites = tuple(_site_from_dict(s, f"{where}.sites[{i}]") for i, s in enumerate(data["sites"]))
    seen: set[str] = set()
    for i, s in enumerate(sites):
        if s.name in seen:
            raise ConfigError(f"{where}.sites[{i}].name: site {s.name!r} appears twice")
        seen.add(s.name)
    namespaces = {s.namespace for s in sites if s.launch == "kubernetes"}
    if len(namespaces) > 1:
        raise ConfigError(f"{where}.sites: kubernetes sites of one profile share one namespace "
                          f"(they belong to one DaskCluster); got {', '.join(sorted(namespaces))}")
    idle = data.get("idle_timeout")
    return Profile(name, sites, data.get("description", ""), idle_timeout=None if idle is None else float(idle),
                   checkpoints=data.get("checkpoints"))


def load_user_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Profiles from ``profiles.yaml``; an empty dict when the file does not exist."""
    path = Path(path or config.profiles_path())
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path.name}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
    validate(data, PROFILES_FILE_SCHEMA, path.name)
    profiles = (data or {}).get("profiles") or {}
    return {
        name: profile_from_dict(name, body, f"{path.name}: profiles.{name}")
        for name, body in profiles.items()
    }


def all_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Built-in profiles, overridden or extended by the user's."""
    return {**BUILTIN, **load_user_profiles(path)}


def get_profile(name: str, path: Path | None = None) -> Profile:
    """The profile called ``name``; a ConfigError lists the known ones."""
    profiles = all_profiles(path)
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})")
    return profiles[name]


def resolve_profile(profile: "str | Mapping[str, Any] | Profile") -> Profile:
    """A profile by name, or one given inline as ``{"name": ..., "sites": [...]}`` (validated)."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        body = dict(profile)
        name = body.pop("name", "inline")
        return profile_from_dict(name, body, f"profile {name}")
    return get_profile(profile)
