"""A stand-in for the Vertex AI REST methods aiplatform's SDK calls to log an experiment run, on loopback.

There is no Vertex AI emulator, so this keeps the resources the SDK creates in memory and answers in the shapes
of the Vertex AI REST reference (v1), which the SDK's own REST transport parses:
- Vertex ML Metadata: metadataStores, and their contexts (experiments and runs), artifacts and executions:
  get, list, create (`?contextId=`...), patch, and the verbs `:addContextChildren`,
  `:addContextArtifactsAndExecutions`, `:queryContextLineageSubgraph`
  https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.metadataStores.contexts
- Vertex AI TensorBoard: tensorboards (seeded: a backing TensorBoard is made by its owner, not by a job), their
  experiments, runs and timeSeries, and `runs/*:write` (writeTensorboardRunData)
  https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.tensorboards.experiments.runs/write
- Vertex AI Model Registry: `models:upload` (UploadModel: a new model, or with `parentModel` a new version of one,
  answered as a finished Operation with its UploadModelResponse), and get by `models/ID` (the default version) or
  `models/ID@VERSION`; an alias given to the new version is taken from the version that had it, as the registry
  does (https://cloud.google.com/vertex-ai/docs/model-registry/model-alias)
  https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models/upload
- the OAuth token endpoint a service-account key file names (tests/json_stub.py's service_account_file)
- errors: {"error": {"code", "message", "status"}}, 404 NOT_FOUND for a missing resource, 403 PERMISSION_DENIED
  for everything when `denied`
Every request is recorded (method, path, query, JSON body) so tests can assert what the SDK sent.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from json_stub import JsonHandler, serve

# A collection's key in its list response (ListTensorboardTimeSeriesResponse.tensorboard_time_series, ...).
LIST_KEYS = {"timeSeries": "tensorboardTimeSeries", "experiments": "tensorboardExperiments", "runs": "tensorboardRuns"}
ID_PARAMS = ("contextId", "artifactId", "executionId", "tensorboardExperimentId", "tensorboardRunId",
             "tensorboardTimeSeriesId", "metadataStoreId")


@dataclass
class Request:
    method: str
    path: str  # without /v1/
    query: dict[str, list[str]]
    body: Any


@dataclass
class VertexStub:
    resources: dict[str, dict] = field(default_factory=dict)  # resource name -> resource
    requests: list[Request] = field(default_factory=list)
    endpoint: str = ""
    denied: bool = False  # answer every API call 403 PERMISSION_DENIED, as for a service account without the role

    def seed(self, name: str, **resource: Any) -> None:
        self.resources[name] = {"name": name, **resource}

    def sent(self, method: str, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _merge(old: dict, new: dict) -> dict:
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _handler(stub: VertexStub) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _not_found(self, name: str) -> None:
            self._send(404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}})

        def _read(self) -> tuple[str, dict[str, list[str]], Any]:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode() if length else ""
            if url.path == "/token":
                return url.path, {}, urllib.parse.parse_qs(raw)
            body = json.loads(raw) if raw else None
            path = urllib.parse.unquote(url.path).removeprefix("/v1/")
            stub.requests.append(Request(self.command, path, urllib.parse.parse_qs(url.query), body))
            if stub.denied:
                self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message":
                                           f"Permission 'aiplatform.metadataStores.get' denied on resource '{path}'"}})
                return "", {}, None
            return path, urllib.parse.parse_qs(url.query), body

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path, _, _ = self._read()
            if not path:
                return None
            if path in stub.resources:
                return self._send(200, stub.resources[path])
            collection = path.rsplit("/", 1)[-1]
            if len(path.split("/")) % 2 == 1:  # a collection: list its members
                items = [r for n, r in stub.resources.items() if n.rsplit("/", 1)[0] == path]
                return self._send(200, {LIST_KEYS.get(collection, collection): items})
            return self._not_found(path)

        def do_PATCH(self) -> None:  # noqa: N802
            path, _, body = self._read()
            if not path:
                return None
            if path not in stub.resources:
                return self._not_found(path)
            stub.resources[path] = _merge(stub.resources[path], {**body, "updateTime": _now()})
            return self._send(200, stub.resources[path])

        def do_POST(self) -> None:  # noqa: N802
            path, query, body = self._read()
            if not path:
                return None
            if path == "/token":
                return self._send(200, {"access_token": "stub-access-token", "expires_in": 3600, "token_type": "Bearer"})
            target, _, verb = path.partition(":")
            if verb:
                return self._verb(target, verb, body or {})
            given = next((query[p][0] for p in ID_PARAMS if p in query), None)
            name = f"{path}/{given or uuid.uuid4().hex[:12]}"
            if name in stub.resources:
                return self._send(409, {"error": {"code": 409, "message": f"{name} already exists",
                                                  "status": "ALREADY_EXISTS"}})
            stub.resources[name] = {**(body or {}), "name": name, "createTime": _now(), "updateTime": _now(),
                                    "etag": uuid.uuid4().hex}
            return self._send(200, stub.resources[name])

        def _upload(self, collection: str, body: dict) -> None:
            model = body["model"]
            name = body.get("parentModel") or f"{collection}/{body.get('modelId') or uuid.uuid4().hex[:12]}"
            if body.get("parentModel") and name not in stub.resources:
                return self._not_found(name)
            versions = [r for n, r in stub.resources.items() if n.startswith(name + "@")]
            version = str(len(versions) + 1)
            aliases = model.get("versionAliases", [])
            for other in versions:  # an alias names one version at a time: the new one takes it
                other["versionAliases"] = [a for a in other.get("versionAliases", []) if a not in aliases]
            resource = {**model, "name": name, "versionId": version, "versionAliases": aliases,
                        "createTime": _now(), "versionCreateTime": _now()}
            stub.resources[f"{name}@{version}"] = resource
            if "default" in aliases or not versions:
                stub.resources[name] = resource
            return self._send(200, {"name": f"{collection.rsplit('/', 1)[0]}/operations/{uuid.uuid4().int % 10**12}",
                                    "done": True, "response": {
                                        "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
                                        "model": name, "modelVersionId": version}})

        def _verb(self, target: str, verb: str, body: dict) -> None:
            if verb == "upload":
                return self._upload(target, body)
            if target not in stub.resources:
                return self._not_found(target)
            if verb == "queryContextLineageSubgraph":
                return self._send(200, {"artifacts": [], "executions": [], "events": []})
            return self._send(200, {})  # addContextChildren, addContextArtifactsAndExecutions, write

    return Handler


def start(stub: VertexStub) -> ThreadingHTTPServer:
    server, stub.endpoint = serve(_handler(stub))
    return server
