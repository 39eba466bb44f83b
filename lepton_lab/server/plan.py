"""``GET /lepton/api/clusters/{id}/plan?kind=train&workers=1...``: where the planner would put a job; nothing starts.

The sidebar's Plan section asks it; the answer is the planner's ``Choice`` (the
sites, workers, GPUs and cost per hour it picked, its one line and its reasons) over
the cluster's live allocation, for a caller who may read the cluster. A job that
cannot fit is a 400 whose one line names the constraint.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..cluster.placement import KINDS, JobRequest
from .base import LeptonHandler

AUTH_RESOURCE = "lepton:clusters"
FIELDS = ("kind", "workers", "gpus", "memory", "hours", "data_site", "data_gb", "data_stays", "sites")


def job_request(arg: Any) -> JobRequest:
    """The ``JobRequest`` the query asks (``arg(name, default)`` reads one argument); HTTP 400 for bad input."""
    def number(name: str, default: str, kind: type) -> Any:
        raw = arg(name, default)
        try:
            return kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise web.HTTPError(400, f"{name} must be {what}, got {raw!r}") from None

    kind = arg("kind", "train")
    if kind not in KINDS:
        raise web.HTTPError(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    raw_memory = arg("memory", "0") or "0"
    try:
        from dask.utils import parse_bytes

        memory = int(parse_bytes(raw_memory))
    except (ValueError, TypeError):
        raise web.HTTPError(400, f"memory must be bytes or a size such as 2GiB, got {raw_memory!r}") from None
    stays = arg("data_stays", "0").lower()
    if stays not in ("0", "1", "true", "false"):
        raise web.HTTPError(400, f"data_stays must be 1 or 0, got {stays!r}")
    sites = tuple(s.strip() for s in arg("sites", "").split(",") if s.strip())
    return JobRequest(kind, workers=number("workers", "1", int), gpus=number("gpus", "0", int), memory=memory,
                      hours=number("hours", "1", float), data_site=arg("data_site", "") or None,
                      data_gb=number("data_gb", "0", float), data_moves=stays in ("0", "false"), sites=sites)


class PlanHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, cluster_id: str):
        unknown = sorted(set(self.request.query_arguments) - set(FIELDS))
        if unknown:
            raise web.HTTPError(400, f"unknown argument {unknown[0]!r} (arguments: {', '.join(FIELDS)})")
        request = job_request(self.get_query_argument)
        self.reply(await self.run(self.services.plan, self.actor, cluster_id, request))
