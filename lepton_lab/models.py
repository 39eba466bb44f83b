"""The model verbs of the public API: publish, load, models, serve, deployments, predict.

They accept what training, compression and federated runs return (anything with
``.model``, and ``.metrics`` / ``.report`` / ``.lineage`` where present) and go
through the session's transport: in-process for the local user, or the Jupyter
server's REST API, where team keys never leave the server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import statistics
import time
from datetime import datetime, timezone
from typing import Any

from .errors import ConfigError, NotFound
from .ml import deployments as deployments_domain
from .ml.deployments import Deployment
from .session import session


def _team(team: str | None, ref: str | None = None) -> str:
    """``team``, else ``LEPTON_TEAM``, else the one team of those the user may read that has model ``ref``."""
    team = team or os.environ.get("LEPTON_TEAM")
    if team:
        return team
    if ref:
        name = ref.split("@")[0]
        teams = sorted({m["team"] for m in session().transport.models(None) if m["name"] == name})
        if len(teams) == 1:
            return teams[0]
        if teams:
            raise ConfigError(f"model {name} is in teams {', '.join(teams)}; pass team=... (or --team)")
        raise NotFound(f"no model {name} in the teams you may read; see lepton_lab.models()")
    raise ConfigError("which team? pass team=... (or --team, or set LEPTON_TEAM)")


def _unwrap(obj: Any) -> tuple[Any, dict[str, Any]]:
    """The model inside a result object, and the metadata the result carries."""
    meta: dict[str, Any] = {}
    model = getattr(obj, "model", obj)
    metrics = getattr(obj, "metrics", None)
    if isinstance(metrics, dict):
        meta["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    report = getattr(obj, "report", None)
    if report is not None and hasattr(report, "to_dict"):
        meta["compression"] = report.to_dict()
        after = getattr(report, "after", None)
        if after is not None and getattr(report, "metric_name", None):
            meta.setdefault("metrics", {})[report.metric_name] = getattr(after, "metric", None)
    schema = getattr(obj, "input_schema", None)
    if schema is not None:
        meta["input_schema"] = _registry_schema(schema)
    lineage = getattr(obj, "lineage", None)
    if isinstance(lineage, dict):
        meta["lineage_extra"] = lineage
    fingerprint = getattr(obj, "data_fingerprint", None)
    if fingerprint:
        meta["data_fingerprint"] = fingerprint
    return model, meta


def _registry_schema(schema: Any) -> Any:
    """The registry's ``{names, dtypes, shape}`` from what training records (``features``, dtypes by name)."""
    if dataclasses.is_dataclass(schema) and not isinstance(schema, type):
        return dataclasses.asdict(schema)
    if isinstance(schema, dict) and "features" in schema:
        names = [str(n) for n in schema["features"]]
        dtypes = schema.get("dtypes") or {}
        dtype_list = [str(dtypes.get(n, "unknown")) for n in names] if isinstance(dtypes, dict) else list(dtypes)
        shape = list(schema.get("shape") or [None, len(names)])
        return {"names": names, "dtypes": dtype_list, "shape": [None, *shape[1:]]}
    return schema


def _cell_lineage() -> dict[str, Any]:
    """The notebook and the hash of the cell running now, when there is one."""
    out: dict[str, Any] = {"notebook": os.environ.get("JPY_SESSION_NAME")}
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            cell = shell.user_ns.get("_ih", [""])[-1] if shell.user_ns.get("_ih") else ""
            out["cell_hash"] = hashlib.sha256(cell.encode()).hexdigest()[:16] if cell else None
    except Exception:
        pass
    try:
        out["cluster"] = session().get().id
    except Exception:
        out["cluster"] = None
    return out


def publish(model: Any, name: str, *, team: str | None = None, alias: str | None = None,
            metrics: dict[str, Any] | None = None, description: str = "", tags: tuple[str, ...] = (),
            input_schema: Any = None, parent_version: int | None = None,
            init_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish a new version of ``name`` to ``team``'s registry; returns its signed manifest.

    ``model`` may be a model or what ``train``/``compress``/``federate`` returned;
    metrics, compression report, input schema and lineage are taken from it.
    """
    from .registry.serialize import serialize

    obj, meta = _unwrap(model)
    # Streamed by the transport: the model is written in its format only as it is sealed.
    payload = serialize(obj, init_kwargs=init_kwargs)
    fmt = payload.facts()
    lineage = {**_cell_lineage(), "data_fingerprint": meta.get("data_fingerprint"),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "parent_version": parent_version, "extra": meta.get("lineage_extra") or {}}
    body = {**fmt, "metrics": {**meta.get("metrics", {}), **(metrics or {})},
            "input_schema": input_schema if input_schema is not None else meta.get("input_schema"),
            "lineage": lineage, "compression": meta.get("compression"), "description": description,
            "tags": list(tags), "alias": alias}
    if hasattr(body["input_schema"], "shape") and not isinstance(body["input_schema"], dict):
        from .registry import InputSchema

        body["input_schema"] = dataclasses.asdict(InputSchema.from_example(body["input_schema"]))
    return session().transport.publish(_team(team), name, payload, body)


def load(ref: str, *, team: str | None = None) -> Any:
    """The model ``ref`` (``"fraud"``, ``"fraud@3"``, ``"fraud@production"``), verified; ``.manifest`` set."""
    model, manifest = session().transport.load(_team(team, ref), ref)
    try:
        model.lepton_manifest = manifest
    except (AttributeError, TypeError):
        pass
    return model


def models(team: str | None = None) -> list[dict[str, Any]]:
    """The models this user may read (of ``team``, or of all their teams)."""
    return session().transport.models(team)


def _through_services(handle: Any) -> bool:
    """Deployments of a cluster the services started go through them (on a server's, they outlive this
    kernel); a scheduler adopted with ``connect`` is the kernel's own business."""
    return not handle.adopted


def serve(ref: str, *, site: str | None = None, team: str | None = None, cluster: str | None = None,
          name: str | None = None) -> Deployment:
    """Keep a published model loaded on every worker of ``site``, ready for :func:`predict`.

    The deployment ``name`` (default: the model's name) lives on the cluster, not in this
    kernel: a worker that replaces a lost one loads the model as it joins, and on a cluster
    the Jupyter server runs it keeps serving (REST ``.../deployments/{name}/predict``) after
    this kernel is gone. Without ``site`` the planner picks the cheapest site with a free
    worker and says so in one line.
    """
    handle = session().get(cluster)
    if site is None:
        from .cluster.placement import JobRequest
        from .session import place

        choice = place(JobRequest("serve"), handle.client, handle)
        print(choice.line())
        site = choice.site
    model_name, _, which = ref.partition("@")
    name = name or model_name
    transport: Any = session().transport
    if _through_services(handle):
        owner_team = handle.info.get("team")
        if team and owner_team and team != owner_team:
            raise ConfigError(f"cluster {handle.name} belongs to team {owner_team}: it serves {owner_team}'s "
                              f"models only; start a cluster of team {team}")
        body: dict[str, Any] = {"model": model_name, "site": site, "name": name}
        if which:
            body["version" if which.isdigit() else "alias"] = int(which) if which.isdigit() else which
        record = transport.deploy(handle.id, body)
    else:
        from .registry import Manifest
        from .security.identity import local_user

        team = _team(team, ref)
        payload, manifest_json = transport.artifact(team, ref)
        manifest = Manifest.from_json(manifest_json)
        info = deployments_domain.record_info(manifest, team=team, alias=which if which and not which.isdigit()
                                              else None, by=local_user())
        record = deployments_domain.deploy(handle.client, name=name, site=site, payload=payload,
                                           manifest_json=manifest_json, info=info)
    deployed = Deployment.of(record, handle.name)
    session().served[name] = deployed
    return deployed


def deployments(cluster: str | None = None) -> list[Deployment]:
    """The models kept loaded on ``cluster``'s sites (the current cluster by default)."""
    handle = session().get(cluster)
    if _through_services(handle):
        records = session().transport.deployments(handle.id)  # type: ignore[attr-defined]
    else:
        client = handle.client
        records = [deployments_domain.describe(client, r)
                   for _, r in sorted(deployments_domain.deployments(client).items())]
    return [Deployment.of(r, handle.name) for r in records]


def _handle_of(name: str, cluster: str | None) -> Any:
    known = session().served.get(name)
    return session().get(cluster or (known.cluster if known is not None else None))


def predict(name: str, inputs: Any, *, cluster: str | None = None) -> dict[str, Any]:
    """Predictions from deployment ``name``, computed on a worker of its site; latency recorded."""
    from .cluster.interrupt import stop_job
    from .ml.serve import as_rows

    name = name.split("@")[0]
    handle = _handle_of(name, cluster)
    start = time.perf_counter()
    if _through_services(handle):
        rows = as_rows(inputs).tolist()
        out = session().transport.predict_deployed(handle.id, name, rows)  # type: ignore[attr-defined]
    else:
        future, record = deployments_domain.submit_predict(handle.client, name, inputs)
        try:
            out = deployments_domain.wait_predict(future, record)
        except KeyboardInterrupt:
            raise stop_job(handle.client, deployments_domain.predict_label(record), futures=[future]) from None
    out["round_trip_ms"] = round((time.perf_counter() - start) * 1000, 3)
    latencies = _LATENCIES.setdefault((handle.name, name), [])
    latencies.append(out["round_trip_ms"])
    out["median_round_trip_ms"] = round(statistics.median(latencies), 3)
    return out


#: Round trips of this kernel's predictions, per (cluster, deployment).
_LATENCIES: dict[tuple[str, str], list[float]] = {}


def serve_stop(name: str | None = None, *, cluster: str | None = None) -> list[str]:
    """Stop deployment ``name`` (every one this kernel started when None); the workers drop the model."""
    names = [name.split("@")[0]] if name else list(session().served)
    for n in names:
        handle = _handle_of(n, cluster)
        if _through_services(handle):
            session().transport.undeploy(handle.id, n)  # type: ignore[attr-defined]
        else:
            deployments_domain.undeploy(handle.client, n)
        session().served.pop(n, None)
    return names
