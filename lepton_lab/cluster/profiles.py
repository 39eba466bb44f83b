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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from dask.utils import format_bytes, parse_bytes

from .. import config
from ..errors import ConfigError

SITE_KINDS = ("cloud", "edge")
#: How a site's workers start: processes on this machine, over SSH on its hosts, or as Kubernetes pods.
LAUNCHES = ("local", "ssh", "kubernetes")
SSH_FIELDS = ("hosts", "ssh_user", "ssh_key", "known_hosts", "python")
KUBERNETES_FIELDS = ("image", "namespace", "node_selector", "gpus_per_worker", "service_account", "tolerations")
#: Site names become Dask resource names and worker-name prefixes.
SITE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Resource names Lepton gives a meaning of its own; a site may not take them.
RESERVED_NAMES = ("GPU",)

MAX_WORKERS_PER_SITE = 256
MAX_THREADS = 256


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
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}: must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def _memory(value: Any, where: str) -> int:
    try:
        n = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: not a size such as 2GiB or 512MiB: {value!r}") from None
    if isinstance(value, bool) or n < parse_bytes("64MiB"):
        raise ConfigError(f"{where}: at least 64MiB, got {value!r}")
    return n


def _site_from_dict(data: Any, where: str) -> SiteSpec:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a site must be a mapping with name and kind")
    known = {f.name for f in dataclasses.fields(SiteSpec)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(known))})")
    name = data.get("name")
    if not isinstance(name, str) or not SITE_NAME.match(name) or name in RESERVED_NAMES:
        raise ConfigError(
            f"{where}.name: lower-case letters, digits and '-', starting with a letter; got {name!r}"
        )
    kind = data.get("kind", "edge" if name.startswith("edge") else "cloud")
    if kind not in SITE_KINDS:
        raise ConfigError(f"{where}.kind: one of {', '.join(SITE_KINDS)}; got {kind!r}")
    if name in SITE_KINDS and name != kind:
        raise ConfigError(f"{where}.name: a site named {name!r} must be of kind {name!r}")
    workers = _int_in(data.get("workers", 1), 0, MAX_WORKERS_PER_SITE, f"{where}.workers")
    threads = _int_in(data.get("threads", 1), 1, MAX_THREADS, f"{where}.threads")
    memory = _memory(data.get("memory", "2GiB"), f"{where}.memory")
    gpus = data.get("gpus", 0)
    if gpus != "auto":
        gpus = _int_in(gpus, 0, MAX_WORKERS_PER_SITE, f"{where}.gpus")
    if gpus and kind != "cloud":
        raise ConfigError(f"{where}.gpus: only cloud sites carry GPUs")
    cost = data.get("cost_per_hour", 0.0)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
        raise ConfigError(f"{where}.cost_per_hour: a number >= 0, got {cost!r}")
    return SiteSpec(name, kind, workers, threads, memory, gpus, float(cost), **_launch_fields(data, gpus, where))


def _launch_fields(data: Mapping[str, Any], gpus: Any, where: str) -> dict[str, Any]:
    """``launch`` and, for ``launch: ssh``, the hosts and login of a site, checked."""
    launch = data.get("launch", "local")
    if launch not in LAUNCHES:
        raise ConfigError(f"{where}.launch: one of {', '.join(LAUNCHES)}; got {launch!r}")
    for field_names, needs in ((SSH_FIELDS, "ssh"), (KUBERNETES_FIELDS, "kubernetes")):
        extra = [key for key in field_names if key in data]
        if extra and launch != needs:
            raise ConfigError(f"{where}.{extra[0]}: only for sites with launch: {needs}")
    if launch == "local":
        return {}
    if launch == "kubernetes":
        return _kubernetes_fields(data, gpus, where)
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError(f"{where}.hosts: launch: ssh needs a non-empty list of host or host:port")
    checked = []
    for i, host in enumerate(hosts):
        if not isinstance(host, str):
            raise ConfigError(f"{where}.hosts[{i}]: a host name or IP, with an optional :port; got {host!r}")
        checked.append(config._address(host, f"{where}.hosts[{i}]", True))
    if gpus:
        raise ConfigError(f"{where}.gpus: ssh sites start CPU workers; join a GPU machine with "
                          "`lepton-lab worker --gpus N`")
    fields: dict[str, Any] = {"launch": "ssh", "hosts": tuple(checked)}
    for key in ("ssh_user", "ssh_key", "known_hosts", "python"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise ConfigError(f"{where}.{key}: must be non-empty text on one line, got {value!r}")
        fields[key] = value.strip()
    return fields


#: Kubernetes names: a DNS label (namespaces), a DNS subdomain (service accounts), label keys and values.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TOLERATION: dict[str, type | tuple[str, ...]] = {"key": str, "operator": ("Exists", "Equal"), "value": str,
               "effect": ("NoSchedule", "PreferNoSchedule", "NoExecute"), "tolerationSeconds": int}
MAX_GPUS_PER_WORKER = 16


def _label_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    return bool(_LABEL_NAME.match(name)) and (not prefix or bool(_DNS_SUBDOMAIN.match(prefix)))


def _kubernetes_fields(data: Mapping[str, Any], gpus: Any, where: str) -> dict[str, Any]:
    """The pod shape of a ``launch: kubernetes`` site, checked as the Kubernetes API would."""
    if gpus:
        raise ConfigError(f"{where}.gpus: kubernetes sites ask for GPUs with gpus_per_worker "
                          "(Kubernetes assigns the devices)")
    image = data.get("image")
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ConfigError(f"{where}.image: launch: kubernetes needs a container image with lepton-lab "
                          f"installed, e.g. registry.example.org/lepton-lab:0.1; got {image!r}")
    fields: dict[str, Any] = {"launch": "kubernetes", "image": image}
    namespace = data.get("namespace", "default")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise ConfigError(f"{where}.namespace: a Kubernetes namespace (lower-case letters, digits and '-', "
                          f"at most 63); got {namespace!r}")
    fields["namespace"] = namespace
    selector = data.get("node_selector", {})
    if not isinstance(selector, Mapping):
        raise ConfigError(f"{where}.node_selector: a mapping of node label to value; got {selector!r}")
    for key, value in selector.items():
        if not _label_key(key):
            raise ConfigError(f"{where}.node_selector: {key!r} is not a Kubernetes label name")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ConfigError(f"{where}.node_selector.{key}: a label value (text, at most 63 characters "
                              f"of letters, digits, '-', '_', '.'); got {value!r}")
    fields["node_selector"] = tuple(sorted(selector.items()))
    fields["gpus_per_worker"] = _int_in(data.get("gpus_per_worker", 0), 0, MAX_GPUS_PER_WORKER,
                                        f"{where}.gpus_per_worker")
    kind = data.get("kind", "edge" if str(data.get("name", "")).startswith("edge") else "cloud")
    if fields["gpus_per_worker"] and kind != "cloud":
        raise ConfigError(f"{where}.gpus_per_worker: only cloud sites carry GPUs")
    account = data.get("service_account")
    if account is not None:
        if not isinstance(account, str) or not _DNS_SUBDOMAIN.match(account):
            raise ConfigError(f"{where}.service_account: a Kubernetes service account name; got {account!r}")
        fields["service_account"] = account
    tolerations = data.get("tolerations", [])
    if not isinstance(tolerations, list):
        raise ConfigError(f"{where}.tolerations: a list of tolerations (key, operator, value, effect)")
    checked = []
    for i, tol in enumerate(tolerations):
        at = f"{where}.tolerations[{i}]"
        if not isinstance(tol, Mapping) or not tol:
            raise ConfigError(f"{at}: a mapping with key, operator, value, effect or tolerationSeconds")
        for key, value in tol.items():
            allowed = _TOLERATION.get(key)
            if allowed is None:
                raise ConfigError(f"{at}.{key}: unknown field (known: {', '.join(_TOLERATION)})")
            if isinstance(allowed, tuple):
                ok, want = value in allowed, " or ".join(allowed)
            else:
                ok, want = isinstance(value, allowed) and not isinstance(value, bool), allowed.__name__
            if not ok:
                raise ConfigError(f"{at}.{key}: must be {want}; got {value!r}")
        if "key" in tol and not _label_key(tol["key"]):
            raise ConfigError(f"{at}.key: {tol['key']!r} is not a Kubernetes label name")
        if tol.get("operator") == "Exists" and tol.get("value"):
            raise ConfigError(f"{at}.value: operator Exists takes no value")
        checked.append(tuple(sorted(tol.items())))
    fields["tolerations"] = tuple(checked)
    return fields


def profile_from_dict(name: str, data: Any, where: str) -> Profile:
    """Build and validate one profile; ``where`` prefixes error messages."""
    if not isinstance(name, str) or not PROFILE_NAME.match(name):
        raise ConfigError(f"{where}: bad profile name {name!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a profile must be a mapping with 'sites'")
    for key in data:
        if key not in ("description", "sites", "idle_timeout"):
            raise ConfigError(f"{where}.{key}: unknown field (known: description, idle_timeout, sites)")
    sites_data = data.get("sites")
    if not isinstance(sites_data, list) or not sites_data:
        raise ConfigError(f"{where}.sites: a non-empty list of sites")
    sites = tuple(_site_from_dict(s, f"{where}.sites[{i}]") for i, s in enumerate(sites_data))
    seen: set[str] = set()
    for i, s in enumerate(sites):
        if s.name in seen:
            raise ConfigError(f"{where}.sites[{i}].name: site {s.name!r} appears twice")
        seen.add(s.name)
    namespaces = {s.namespace for s in sites if s.launch == "kubernetes"}
    if len(namespaces) > 1:
        raise ConfigError(f"{where}.sites: kubernetes sites of one profile share one namespace "
                          f"(they belong to one DaskCluster); got {', '.join(sorted(namespaces))}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.description: must be text")
    idle = data.get("idle_timeout")
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 < idle < 1e9):
        raise ConfigError(f"{where}.idle_timeout: minutes, a number > 0 (or leave it out); got {idle!r}")
    return Profile(name, sites, description, idle_timeout=None if idle is None else float(idle))


def load_user_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Profiles from ``profiles.yaml``; an empty dict when the file does not exist."""
    path = Path(path or config.profiles_path())
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path.name}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, Mapping) or set(data) - {"profiles"}:
        raise ConfigError(f"{path.name}: top level must be a mapping with one key, 'profiles'")
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError(f"{path.name}: profiles: must map profile names to profiles")
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
