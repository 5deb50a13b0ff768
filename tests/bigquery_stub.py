"""A stand-in for the two BigQuery REST methods google-cloud-bigquery calls to read a table, on loopback.

There is no BigQuery emulator offline, so this answers exactly what the real client asks for, in the shapes of
BigQuery's REST reference (API v2):
- `tables.get`: GET /bigquery/v2/projects/{p}/datasets/{d}/tables/{t} -> a Table resource (schema, numRows)
  https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/get
- `tabledata.list`: GET .../tables/{t}/data[?pageToken=...] -> {"totalRows", "pageToken", "rows": [{"f": [{"v"}]}]},
  a REPEATED field's value being a list of {"v"} cells
  https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/list
- the OAuth token endpoint a service-account key file names (`token_uri`), so the client authenticates as it does
  against Google: a signed JWT posted for an access token (google-auth, google/oauth2/_client.py `jwt_grant`)
- errors: {"error": {"code", "message", "errors": [{"reason"}], "status"}} with the HTTP status
  https://cloud.google.com/bigquery/docs/error-messages (notFound 404, accessDenied 403)
Every request is recorded (method, path, query, headers) so tests can assert what the client sent.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from json_stub import JsonHandler, serve

PAGE_ROWS = 25
TOKEN = "stub-access-token"  # the server decides the page size when the client sends no maxResults


@dataclass
class StubTable:
    fields: list[dict[str, str]]  # BigQuery schema fields: name, type, mode
    rows: list[list[Any]]  # one value (or list, for REPEATED) per field
    denied: bool = False  # answer 403 accessDenied, as for credentials without bigquery.tables.get


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased


@dataclass
class BigQueryStub:
    tables: dict[str, StubTable] = field(default_factory=dict)  # "project.dataset.table" -> table
    requests: list[Request] = field(default_factory=list)
    endpoint: str = ""


def _cell(value: Any, repeated: bool) -> dict:
    if repeated:
        return {"v": [{"v": str(item)} for item in value]}
    return {"v": None if value is None else str(value)}


def _handler(stub: BigQueryStub) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _error(self, status: int, reason: str, state: str, message: str) -> None:
            self._send(status, {"error": {"code": status, "message": message, "status": state,
                                          "errors": [{"message": message, "domain": "global", "reason": reason}]}})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            stub.requests.append(Request("GET", url.path, query, {k.lower(): v for k, v in self.headers.items()}))
            parts = url.path.strip("/").split("/")
            # bigquery v2 projects P datasets D tables T [data]
            if len(parts) < 8 or parts[:2] != ["bigquery", "v2"]:
                return self._error(404, "notFound", "NOT_FOUND", f"no such method: {url.path}")
            project, dataset, name = parts[3], parts[5], parts[7]
            table = stub.tables.get(f"{project}.{dataset}.{name}")
            if table is not None and table.denied:
                return self._error(403, "accessDenied", "PERMISSION_DENIED",
                                   f"Access Denied: Table {project}:{dataset}.{name}: Permission bigquery.tables.get "
                                   "denied on table (or it may not exist).")
            if table is None:
                return self._error(404, "notFound", "NOT_FOUND",
                                   f"Not found: Table {project}:{dataset}.{name} was not found in location US")
            if len(parts) == 8:
                return self._send(200, {
                    "kind": "bigquery#table", "id": f"{project}:{dataset}.{name}", "type": "TABLE",
                    "tableReference": {"projectId": project, "datasetId": dataset, "tableId": name},
                    "schema": {"fields": table.fields}, "numRows": str(len(table.rows))})
            start = int(query.get("pageToken", ["0"])[0])
            page = table.rows[start:start + PAGE_ROWS]
            repeated = [f.get("mode") == "REPEATED" for f in table.fields]
            body: dict = {"kind": "bigquery#tableDataList", "totalRows": str(len(table.rows)),
                          "rows": [{"f": [_cell(v, r) for v, r in zip(row, repeated)]} for row in page]}
            if start + PAGE_ROWS < len(table.rows):
                body["pageToken"] = str(start + PAGE_ROWS)
            return self._send(200, body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            stub.requests.append(Request("POST", self.path, form, {k.lower(): v for k, v in self.headers.items()}))
            if self.path != "/token" or "assertion" not in form:
                return self._error(400, "invalid", "INVALID_ARGUMENT", "expected a JWT grant at /token")
            return self._send(200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    return Handler


def start(stub: BigQueryStub) -> ThreadingHTTPServer:
    server, stub.endpoint = serve(_handler(stub))
    return server
