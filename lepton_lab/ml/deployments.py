"""Standing deployments: a model version kept loaded on the workers of one site.

A deployment is a :class:`ModelDeployment` worker plugin registered on the
scheduler under ``lepton-deploy:<name>``. The scheduler hands its plugins to
every worker, those running now and those that join later (the replacement of a
lost worker included), so the site never goes without the model while it has a
worker; workers of other sites drop the bytes and keep nothing. A prediction is
a task restricted to the site's resource that calls the loaded model. What each
deployment is lives in the scheduler's metadata, so it outlives the client (a
kernel, or the server) that made it.

The plugin carries the model's verified plaintext in its framework's own format
and the signed manifest, over the cluster's comms (TLS on the server's
clusters); each site worker checks the bytes against the manifest's SHA-256
before loading them. No key ever reaches a worker.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin, get_worker

from ..cluster.workers import site_workers
from ..errors import ClusterError, ConfigError, IntegrityError, LeptonError, NotFound, first_line

#: Scheduler plugin names of deployments begin with this.
PLUGIN_PREFIX = "lepton-deploy:"
#: Where in the scheduler's metadata the deployments are described.
METADATA = ("lepton", "deployments")
#: Seconds a prediction waits for a worker of its site.
PREDICT_TIMEOUT = 60.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass
class Deployment:
    """A model version kept loaded on a site's workers; ``lepton_lab.predict(name, X)`` scores with it."""

    name: str
    model: str
    version: int
    site: str
    cluster: str
    team: str = ""
    alias: str | None = None
    workers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, record: dict[str, Any], cluster: str) -> "Deployment":
        return cls(record["name"], record["model"], int(record["version"]), record["site"], cluster,
                   record.get("team", ""), record.get("alias"), list(record.get("workers") or []))

    def __repr__(self) -> str:
        return (f"<Deployment {self.name}: {self.model} v{self.version} on {self.site} of {self.cluster} "
                f"({len(self.workers)} workers)>")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"deployment name {name!r}: lower-case letters, digits, '_', '.', '-' (at most 64)")
    return name


def _holds(worker: Any, site: str) -> bool:
    return float(worker.state.total_resources.get(site, 0)) > 0


class ModelDeployment(WorkerPlugin):
    """A model version loaded on every worker of ``site`` (a site name or kind), as they join."""

    def __init__(self, name: str, site: str, payload: bytes, manifest_json: str, builders: tuple[Any, ...] = ()):
        self.name = name
        self.site = site
        self.payload = bytes(payload)
        self.manifest_json = manifest_json
        #: Model classes the deploying process allowed itself (e.g. defined in its notebook), sent by value.
        self.builders = tuple(builders)
        self.model: Any = None
        self.manifest: Any = None

    def setup(self, worker: Any) -> None:
        payload, self.payload = self.payload, b""
        if not _holds(worker, self.site):
            return  # another site's worker: it keeps nothing of the model
        from ..registry import Manifest, allow_builder
        from ..registry.serialize import deserialize

        for builder in self.builders:
            allow_builder(builder)
        manifest = Manifest.from_json(self.manifest_json)
        if len(payload) != manifest.artifact.size or hashlib.sha256(payload).hexdigest() != manifest.artifact.sha256:
            raise IntegrityError(f"deployment {self.name}: the model bytes do not match {manifest.ref}'s signed digest")
        self.model = deserialize(payload, manifest)
        self.manifest = manifest

    def teardown(self, worker: Any) -> None:
        self.model = None


def predict_on_site(name: str, inputs: Any) -> dict[str, Any]:
    """(A task on a site worker.) Predictions from deployment ``name``'s loaded model."""
    from .serve import predict_with

    worker = get_worker()
    plugin: Any = worker.plugins.get(PLUGIN_PREFIX + name)
    if plugin is None or getattr(plugin, "model", None) is None:
        raise ClusterError(f"worker {worker.name} holds no model of deployment {name}")
    try:
        out = predict_with(plugin.model, inputs, plugin.manifest)
    except LeptonError:
        raise
    except (ValueError, TypeError, RuntimeError, IndexError) as e:
        raise ConfigError(f"inputs do not fit {plugin.manifest.ref}: {first_line(e)}") from None
    out["worker"] = worker.name
    return out


def _loaded_here(name: str, dask_worker: Any = None) -> bool:
    """(Run on a worker by ``client.run``.) Whether deployment ``name``'s model is loaded there."""
    plugin = dask_worker.plugins.get(PLUGIN_PREFIX + name)
    return plugin is not None and getattr(plugin, "model", None) is not None


def deploy(client: Any, *, name: str, site: str, payload: bytes, manifest_json: str,
           info: dict[str, Any], builders: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Keep the model loaded on ``site``'s workers under ``name``; its description, with the workers.

    The same version asked again on the same site is the deployment already running.
    ``builders`` are model classes the caller allowed itself, sent to the workers by value.
    """
    check_name(name)
    existing = deployments(client).get(name)
    if existing is not None:
        same = ("model", "team", "version")
        if existing["site"] == site and all(existing.get(k) == info.get(k) for k in same):
            return describe(client, existing)  # asked again (a cell run twice): the same deployment
        from ..errors import AlreadyExists

        raise AlreadyExists(f"deployment {name!r} already serves {existing['model']} v{existing['version']} on "
                            f"{existing['site']}; stop it first or pick another name")
    if not site_workers(client, site):
        raise ConfigError(f"no worker on site {site!r} to serve {info.get('model', name)}; scale the site up")
    try:
        client.register_plugin(ModelDeployment(name, site, payload, manifest_json, builders),
                               name=PLUGIN_PREFIX + name)
    except LeptonError:
        _unregister(client, name)
        raise
    except Exception as e:  # a framework that cannot read the model on a worker
        _unregister(client, name)
        raise ConfigError(f"deployment {name}: a worker of {site} could not load the model "
                          f"({first_line(e, named=True, limit=160)})") from None
    record = {**info, "name": name, "site": site}
    client.set_metadata([*METADATA, name], record)
    return describe(client, record)


def _unregister(client: Any, name: str) -> None:
    try:
        client.unregister_worker_plugin(PLUGIN_PREFIX + name)
    except ValueError:
        pass  # never registered


def deployments(client: Any) -> dict[str, dict[str, Any]]:
    """The deployments the scheduler keeps, by name."""
    found = client.get_metadata(list(METADATA), default={}) or {}
    return {n: r for n, r in found.items() if isinstance(r, dict)}


def deployment(client: Any, name: str) -> dict[str, Any]:
    record = deployments(client).get(name)
    if record is None:
        raise NotFound(f"no deployment {name!r} on this cluster")
    return record


def describe(client: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the names of the site workers that hold the model now."""
    holders = site_workers(client, record["site"])
    loaded = client.run(_loaded_here, record["name"], workers=list(holders), on_error="return") if holders else {}
    return {**record, "workers": sorted(holders[a] for a, ok in loaded.items() if ok is True)}


def undeploy(client: Any, name: str) -> None:
    """Stop deployment ``name``: every worker drops the model, and later ones never load it."""
    deployment(client, name)
    _unregister(client, name)
    client.set_metadata([*METADATA, name], None)


def submit_predict(client: Any, name: str, inputs: Any) -> tuple[Any, dict[str, Any]]:
    """The task computing deployment ``name``'s predictions on a worker of its site, and its record."""
    from .serve import as_rows

    record = deployment(client, name)
    as_rows(inputs)  # bad inputs are one line here, before any task
    future = client.submit(predict_on_site, name, inputs, resources={record["site"]: 1}, pure=False,
                           key=f"predict-{name}-{uuid.uuid4().hex[:12]}")
    return future, record


def predict_label(record: dict[str, Any]) -> str:
    """How a prediction of deployment ``record`` is named when it is stopped: ``predict fraud@3``."""
    return f"predict {record['model']}@{record['version']}"


def wait_predict(future: Any, record: dict[str, Any], *, timeout: float = PREDICT_TIMEOUT) -> dict[str, Any]:
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        future.cancel()
        raise ClusterError(f"no worker of site {record['site']} answered deployment {record['name']} within "
                           f"{timeout:g} s; scale the site up") from None


def predict(client: Any, name: str, inputs: Any, *, timeout: float = PREDICT_TIMEOUT) -> dict[str, Any]:
    """Predictions from deployment ``name``, computed on a worker of its site (``worker`` names it)."""
    future, record = submit_predict(client, name, inputs)
    return wait_predict(future, record, timeout=timeout)


def record_info(manifest: Any, *, team: str, alias: str | None, by: str) -> dict[str, Any]:
    """What a deployment records of the version it serves."""
    import dataclasses
    from datetime import datetime, timezone

    schema = manifest.input_schema
    if dataclasses.is_dataclass(schema) and not isinstance(schema, type):
        schema = dataclasses.asdict(schema)
    return {"model": manifest.name, "team": team, "version": manifest.version, "alias": alias,
            "framework": manifest.framework, "by": by, "input_schema": schema,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
