"""The kernel's REST transport: the Jupyter server's Lepton API, with the user's own identity.

Inside a kernel started by a Jupyter server, ``%lepton up`` must go through the
server (which owns clusters, checks the policy and issues certificates), as the
user who owns the kernel. The server and the credential are found the way
Jupyter tools find them:

* the team deployment: the control plane at ``LEPTON_CONTROL_PLANE_URL``, with this
  kernel's own ``JUPYTERHUB_API_TOKEN`` (the Hub says whose it is);
* JupyterHub: ``JUPYTERHUB_API_TOKEN`` and ``JUPYTERHUB_SERVICE_URL``;
* a plain server: the runtime file of the server that started this kernel
  (``JPY_PARENT_PID``), as listed by ``jupyter_server.serverapp.list_running_servers``;
* or explicitly: ``LEPTON_SERVER_URL`` and ``LEPTON_TOKEN``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import (
    AlreadyExists,
    ClusterError,
    ConfigError,
    Interrupted,
    LeptonError,
    NotFound,
    PermissionDenied,
    by_kind,
)

_BY_STATUS = {400: ConfigError, 403: PermissionDenied, 404: NotFound, 409: AlreadyExists}


@dataclass
class ServerInfo:
    url: str
    token: str
    how: str


def find_server() -> ServerInfo | None:
    """The Jupyter server this kernel belongs to, or None (plain IPython, scripts, tests)."""
    if os.environ.get("LEPTON_SERVER_URL"):
        return ServerInfo(os.environ["LEPTON_SERVER_URL"], os.environ.get("LEPTON_TOKEN", ""), "environment")
    from . import config

    if config.control_plane_url() and os.environ.get("JUPYTERHUB_API_TOKEN"):
        return ServerInfo(config.control_plane_url(), os.environ["JUPYTERHUB_API_TOKEN"], "control plane")
    if os.environ.get("JUPYTERHUB_API_TOKEN") and os.environ.get("JUPYTERHUB_SERVICE_URL"):
        return ServerInfo(os.environ["JUPYTERHUB_SERVICE_URL"], os.environ["JUPYTERHUB_API_TOKEN"], "jupyterhub")
    parent = os.environ.get("JPY_PARENT_PID")
    if not parent or os.environ.get("LEPTON_KERNEL_USER"):
        # A kernel started for someone other than the server's owner gets its own token
        # (above); the server's runtime file holds the owner's.
        return None
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    for server in list_running_servers():
        if str(server.get("pid")) == parent:
            return ServerInfo(server["url"], server.get("token", ""), "runtime file")
    return None


class RestTransport:
    """Cluster operations as REST calls to ``<server>/lepton/api``."""

    #: Seconds to wait for the server to cancel an interrupted job (it may restart a worker).
    CANCEL_TIMEOUT = 90.0

    def __init__(self, server: ServerInfo, timeout: float = 120.0):
        self.server = server
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, want_response: bool = False) -> Any:
        url = self.server.url.rstrip("/") + "/lepton/api/" + path.lstrip("/")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if self.server.token:
            req.add_header("Authorization", f"token {self.server.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                content = resp.read()
                if want_response:
                    return content, dict(resp.headers)
                return json.loads(content) if content else None
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read())
                message, kind = answer.get("message") or e.reason, answer.get("kind")
            except (ValueError, AttributeError):
                message, kind = e.reason, None
            raise (by_kind(kind) or _BY_STATUS.get(e.code, LeptonError))(message) from None
        except urllib.error.URLError as e:
            raise ClusterError(f"the Jupyter server at {self.server.url} did not answer ({e.reason})") from None

    # -- Transport -----------------------------------------------------------------------------

    def _team(self, team: str | None) -> str:
        if team:
            return team
        me = self.call("GET", "whoami")
        for t in me["teams"]:
            if me["roles"].get(t) in ("admin", "lead", "analyst"):
                return t
        raise PermissionDenied(f"{me['name']} may create clusters in no team; ask an admin")

    def create(self, profile, *, name, overrides):
        overrides = dict(overrides)
        team = self._team(overrides.pop("team", None) or os.environ.get("LEPTON_TEAM"))
        workers = {k: overrides.pop(k) for k in ("cloud", "edge") if k in overrides}
        body: dict[str, Any] = {"team": team, "profile": profile}
        if name:
            body["name"] = name
        if workers:
            body["workers"] = workers
        if "gpus" in overrides:
            body["gpus"] = overrides.pop("gpus")  # a number, or "auto": every free GPU
        for key in ("threads", "memory"):
            if key in overrides:
                body[key] = overrides.pop(key)
        reused = False
        try:
            info = self.call("POST", "clusters", body)
        except AlreadyExists:
            info = next(c for c in self.call("GET", "clusters")["clusters"] if c["name"] == name)
            reused = True
        return info, self.security(info["id"]), reused

    def security(self, cluster_id: str):
        cred = self.call("GET", f"clusters/{cluster_id}/credentials")
        if not cred.get("tls"):
            return None
        from .security.certs import IssuedCert

        return IssuedCert.from_dict({k: cred[k] for k in
                                     ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")}).security()

    def info(self, cluster_id: str) -> dict:
        return self.call("GET", f"clusters/{cluster_id}")

    def scale(self, cluster_id, n, site):
        return self.call("PATCH", f"clusters/{cluster_id}", {"site": site, "workers": n})

    def stop(self, cluster_id):
        self.call("DELETE", f"clusters/{cluster_id}")

    def start_again(self, cluster: str) -> dict:
        return self.call("POST", f"clusters/{urllib.parse.quote(cluster, safe='')}/start", {})

    def list(self):
        return self.call("GET", "clusters")["clusters"]

    def worker_certificate(self, cluster_id: str, site: str) -> dict:
        return self.call("POST", f"clusters/{cluster_id}/worker-certificate", {"site": site})

    # -- models --------------------------------------------------------------------------------

    def publish(self, team: str, name: str, payload: Any, meta: dict) -> dict:
        import base64

        header = base64.b64encode(json.dumps(meta).encode()).decode()
        if not isinstance(payload, (bytes, bytearray)):
            payload = payload.to_bytes()  # a Serialized: one request body
        return self.call("POST", f"models/{team}/{name}/versions", raw=payload,
                         headers={"X-Lepton-Manifest": header})

    def load(self, team: str, ref: str):
        import base64

        from .registry import Manifest
        from .registry.serialize import deserialize

        name, _, which = ref.partition("@")
        content, headers = self.call("GET", f"models/{team}/{name}/versions/{which or 'latest'}/artifact",
                                     want_response=True)
        text = base64.b64decode(headers.get("X-Lepton-Manifest", "")).decode()
        manifest = Manifest.from_json(text)
        return deserialize(content, manifest), json.loads(text)

    def models(self, team: str | None):
        return self.call("GET", "models" + (f"?team={team}" if team else ""))["models"]

    def artifact(self, team: str, ref: str) -> tuple[bytes, str]:
        """The verified artifact of ``ref`` in its framework's format, and its signed manifest (JSON)."""
        import base64

        name, _, which = ref.partition("@")
        content, headers = self.call("GET", f"models/{team}/{name}/versions/{which or 'latest'}/artifact",
                                     want_response=True)
        return content, base64.b64decode(headers.get("X-Lepton-Manifest", "")).decode()

    # -- deployments ---------------------------------------------------------------------------

    def deploy(self, cluster_id: str, body: dict[str, Any]) -> dict:
        return self.call("POST", f"clusters/{cluster_id}/deployments", body)

    def deployments(self, cluster_id: str) -> Any:
        return self.call("GET", f"clusters/{cluster_id}/deployments")["deployments"]

    def undeploy(self, cluster_id: str, name: str) -> None:
        self.call("DELETE", f"clusters/{cluster_id}/deployments/{urllib.parse.quote(name, safe='')}")

    def predict_deployed(self, cluster_id: str, name: str, inputs: Any) -> dict:
        """Predictions computed on the deployment's site; an interrupt (Kernel → Interrupt) cancels the task."""
        import uuid

        path = f"clusters/{cluster_id}/deployments/{urllib.parse.quote(name, safe='')}/predict"
        job = uuid.uuid4().hex
        try:
            return self.call("POST", path, {"inputs": inputs}, headers={"X-Lepton-Job": job})
        except KeyboardInterrupt:
            raise self._cancel(f"{path}/{job}", f"predict {name}") from None

    def _cancel(self, path: str, label: str) -> Interrupted:
        """Ask the server to stop the job at ``path``; the one line to raise."""
        try:
            out = RestTransport(self.server, timeout=RestTransport.CANCEL_TIMEOUT).call("DELETE", path)
            return Interrupted(out["message"])
        except NotFound:
            return Interrupted(f"{label} stopped waiting; the server had already finished it")
        except (LeptonError, KeyboardInterrupt) as e:
            return Interrupted(f"{label} stopped waiting, but cancelling it on the server failed "
                               f"({type(e).__name__}); check the cluster with lepton_lab.status()")


    # -- studies -------------------------------------------------------------------------------

    def study(self, team: str | None, name: str, *, direction: str, sampler: Any = None, pruner: Any = None):
        """``(team, study)``: the Optuna study ``name`` kept by the services for ``team``."""
        from optuna.storages.journal import JournalStorage

        from .services.studies import open_study

        team = self._team(team)
        return team, open_study(JournalStorage(rest_journal_backend(self, team, name)), team, name,
                                direction=direction, sampler=sampler, pruner=pruner)

    # -- privacy ledger ------------------------------------------------------------------------

    def privacy(self, team: str, dataset: str | None = None) -> dict:
        """``team``'s privacy budget and what was spent of it, per dataset (or of ``dataset`` alone)."""
        query = f"?dataset={urllib.parse.quote(dataset, safe='')}" if dataset is not None else ""
        return self.call("GET", f"privacy/{urllib.parse.quote(team, safe='')}{query}")

    def privacy_charge(self, team: str, dataset: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                       what: str, delta: float | None = None) -> dict:
        """Charge one run's mechanism to the services' ledger of ``team``/``dataset``; PermissionDenied past
        the budget (the server's policy's), with the one line that says what was spent."""
        body: dict[str, Any] = {"dataset": dataset, "noise_multiplier": noise_multiplier,
                                "sample_rate": sample_rate, "steps": steps, "what": what}
        if delta is not None:
            body["delta"] = delta
        return self.call("POST", f"privacy/{urllib.parse.quote(team, safe='')}/charge", body)


def rest_journal_backend(transport: RestTransport, team: str, name: str) -> Any:
    """An Optuna journal kept by the services: read from an entry number on, appended to, over REST.

    (The class is made on first use: importing Optuna would slow every kernel's start.)
    """
    global _RestJournalBackend
    if _RestJournalBackend is None:
        from optuna.storages.journal import BaseJournalBackend

        class RestJournalBackend(BaseJournalBackend):
            def __init__(self, transport: RestTransport, team: str, name: str):
                self.transport = transport
                self.path = (f"studies/{urllib.parse.quote(team, safe='')}/"
                             f"{urllib.parse.quote(name, safe='')}/journal")

            def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
                return self.transport.call("GET", f"{self.path}?from={int(log_number_from)}")["logs"]

            def append_logs(self, logs: list[dict[str, Any]]) -> None:
                self.transport.call("POST", self.path, {"logs": logs})

        _RestJournalBackend = RestJournalBackend
    return _RestJournalBackend(transport, team, name)


_RestJournalBackend: Any = None
