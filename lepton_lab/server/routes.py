"""URL routes of the Lepton REST API, under ``<base_url>/lepton/api/``."""

from __future__ import annotations

from jupyter_server.utils import url_path_join

from . import admin, audit, clusters, dashboard, deployments, join, models, plan, privacy, studies, templates, whoami
from .base import NotFoundHandler


def setup_route_handlers(web_app) -> None:
    base = url_path_join(web_app.settings["base_url"], "lepton", "api")
    cid = clusters.CLUSTER_ID
    routes = [
        ("whoami", whoami.WhoAmIHandler),
        ("profiles", clusters.ProfilesHandler),
        ("clusters", clusters.ClustersHandler),
        (f"clusters/{cid}", clusters.ClusterHandler),
        (f"clusters/{cid}/start", clusters.StartAgainHandler),
        (f"clusters/{cid}/allocation", clusters.AllocationHandler),
        (f"clusters/{cid}/stream", clusters.StreamHandler),
        (f"clusters/{cid}/credentials", clusters.CredentialsHandler),
        (f"clusters/{cid}/worker-certificate", clusters.WorkerCertificateHandler),
        (f"clusters/{cid}/plan", plan.PlanHandler),
        ("templates", templates.TemplatesHandler),
        ("templates/copy", templates.TemplateCopyHandler),
        (r"templates/(?P<team>[^/]+)/(?P<name>[^/]+)", templates.TemplateContentHandler),
        ("audit", audit.AuditHandler),
        ("admin/revoke", admin.RevokeHandler),
        ("admin/policy", admin.PolicyReloadHandler),
        ("join", join.JoinHandler),
        (f"studies/{studies.STUDY}/journal", studies.StudyJournalHandler),
        (f"privacy/{privacy.TEAM}", privacy.PrivacyHandler),
        (f"privacy/{privacy.TEAM}/charge", privacy.PrivacyChargeHandler),
        *models.routes(),
        *deployments.routes(),
    ]
    handlers = [(url_path_join(base, path) + "/?", handler) for path, handler in routes]
    handlers.append((base + r"(?:/.*)?", NotFoundHandler))
    # Dashboards are pages, not API answers: their own prefix, linked from the clusters' replies.
    proxied = url_path_join(web_app.settings["base_url"], "lepton", "dashboard") + "/"
    path, handler = dashboard.route()
    handlers.insert(0, (proxied + path, handler))
    web_app.settings["lepton"].dashboard_prefix = proxied
    web_app.add_handlers(".*$", handlers)
