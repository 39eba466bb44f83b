"""Model registry routes: list, versions, manifest, artifact, publish, alias, delete, predict.

A model of a team the user may not read is a 404, never a 403: its name is not
disclosed. Team keys never leave the server: a kernel sends native-format bytes
to publish and receives verified plaintext to load.
"""

from __future__ import annotations

import base64
import json
import os

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..schemas import problem
from .base import PREDICT_MAX_BODY, LeptonHandler, fields_schema

AUTH_RESOURCE = "lepton:models"
TEAM = r"(?P<team>[a-z0-9][a-z0-9_-]{0,63})"
NAME = r"(?P<name>[a-z0-9][a-z0-9_.-]{0,63})"
REF = r"(?P<ref>[a-z0-9][a-z0-9_.-]{0,63})"
#: Largest artifact a publish may upload.
MAX_ARTIFACT = 2 * 1024**3
#: Types of the manifest fields a publisher sends (unknown fields are refused by the service).
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "framework": str, "framework_version": str, "format": str, "construction": dict, "metrics": dict,
    "input_schema": dict, "lineage": dict, "compression": dict, "description": str, "tags": list, "alias": str,
}
#: The header's schema: these fields' types; other fields are left to the service, which refuses them by name.
MANIFEST_HEADER = {**fields_schema(MANIFEST_FIELDS), "additionalProperties": True}


def _manifest_json(manifest) -> dict:
    return json.loads(manifest.to_json())


class ModelBase(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    def ref(self, name: str, ref: str) -> str:
        return f"{name}@{ref}" if ref != "latest" else name


class ModelsHandler(ModelBase):
    @web.authenticated
    @authorized
    async def get(self):
        team = self.get_argument("team", None)
        self.reply({"models": await self.run(self.services.models, self.actor, team)})


class ModelHandler(ModelBase):
    @web.authenticated
    @authorized
    async def get(self, team: str, name: str):
        self.reply(await self.run(self.services.model_versions, self.actor, team, name))


class ManifestHandler(ModelBase):
    @web.authenticated
    @authorized
    async def get(self, team: str, name: str, ref: str):
        manifest = await self.run(self.services.model_manifest, self.actor, team, self.ref(name, ref))
        self.reply(_manifest_json(manifest))


class ArtifactHandler(ModelBase):
    @web.authenticated
    @authorized
    async def get(self, team: str, name: str, ref: str):
        manifest, path = await self.run(self.services.model_artifact, self.actor, team, self.ref(name, ref))
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("X-Lepton-Manifest", base64.b64encode(manifest.to_json().encode()).decode())
            with open(path, "rb") as f:
                while chunk := f.read(4 * 1024 * 1024):
                    self.write(chunk)
                    await self.flush()
            self.finish()
        finally:
            os.unlink(path)


class VersionsHandler(ModelBase):
    """``POST``: publish a version; body = the artifact bytes, header ``X-Lepton-Manifest`` = base64 JSON."""

    @web.authenticated
    @authorized
    async def post(self, team: str, name: str):
        raw_meta = self.request.headers.get("X-Lepton-Manifest", "")
        try:
            meta = json.loads(base64.b64decode(raw_meta, validate=True)) if raw_meta else None
        except (ValueError, TypeError):
            raise web.HTTPError(400, "X-Lepton-Manifest: not base64-encoded JSON") from None
        if not isinstance(meta, dict):
            raise web.HTTPError(400, "X-Lepton-Manifest: a JSON object with framework, format, ... is required")
        found = problem(meta, MANIFEST_HEADER)
        if found is not None:
            raise web.HTTPError(400, f"X-Lepton-Manifest: {found[0]}: {found[1]}".replace("%", "%%"))
        body = self.request.body or b""
        if len(body) > MAX_ARTIFACT:
            raise web.HTTPError(400, "artifact over 2 GiB")
        manifest = await self.run(self.services.publish_model, self.actor, team, name, body, meta)
        self.reply(_manifest_json(manifest), status=201)


class VersionHandler(ModelBase):
    @web.authenticated
    @authorized
    async def delete(self, team: str, name: str, ref: str):
        if not ref.isdigit():
            raise web.HTTPError(400, "delete takes a version number")
        await self.run(self.services.delete_model_version, self.actor, team, name, int(ref))
        self.set_status(204)
        self.finish()


class AliasHandler(ModelBase):
    @web.authenticated
    @authorized
    async def put(self, team: str, name: str, ref: str):
        body = self.body({"version": int}, required=("version",))
        await self.run(self.services.set_alias, self.actor, team, name, ref, body["version"])
        self.reply(await self.run(self.services.model_versions, self.actor, team, name))


class PredictHandler(ModelBase):
    """``POST``: predictions from a model version; authorized like reading it."""

    max_body = PREDICT_MAX_BODY

    @web.authenticated
    @authorized
    async def post(self, team: str, name: str, ref: str):
        body = self.body({"inputs": list}, required=("inputs",))
        self.reply(await self.run(self.services.predict, self.actor, team, self.ref(name, ref), body["inputs"]))


def routes() -> list[tuple[str, type]]:
    base = f"models/{TEAM}/{NAME}"
    return [
        ("models", ModelsHandler),
        (base, ModelHandler),
        (f"{base}/versions", VersionsHandler),
        (f"{base}/versions/{REF}", VersionHandler),
        (f"{base}/versions/{REF}/manifest", ManifestHandler),
        (f"{base}/versions/{REF}/artifact", ArtifactHandler),
        (f"{base}/versions/{REF}/predict", PredictHandler),
        (f"{base}/aliases/{REF}", AliasHandler),
    ]
