"""What the local stand-ins for Google's REST APIs (bigquery_stub.py, vertex_stub.py) share: a handler that answers
JSON, a loopback server on a free port, and a service-account key file whose token_uri is the stub, so the real
clients authenticate as they do against Google (google-auth, google/oauth2/_client.py `jwt_grant`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class JsonHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """The server (on a daemon thread) and its http://127.0.0.1:<port> endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def service_account_file(path: Path, token_uri: str) -> Path:
    """A service-account key file (fresh RSA key) whose token_uri is the stub: what GOOGLE_APPLICATION_CREDENTIALS
    names for Application Default Credentials."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "stub-project", "private_key_id": "1", "private_key": pem.decode(),
        "client_email": "trainer@stub-project.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return path
