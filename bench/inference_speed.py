"""Inference throughput on one device, in one process: the serving batcher and predict's batch function.

`make gpu-check` runs this so that the first GPU we are lent measures inference as well as training. The GPU image
has no fastapi or uvicorn, so the server's HTTP layer is left out: `--clients` threads each send one-sentence
requests to the batcher `seqcls serve` uses (shared passes, its default max_batch_rows), beside the same batcher
taking one request per pass; then predict's one batch function labels every CoLA row. bench/serve_load.py measures
the whole server over HTTP (on CPU).

The model is a `seqcls train` run of a few optimizer steps on CoLA (its labels are not the point: throughput is),
loaded as `seqcls predict` and `seqcls serve` load it (`predict.load`) and scored with the weights' casts held, as
both do.

    python bench/inference_speed.py --model DIR [--device auto|cuda|cpu] [--requests 1000] [--clients 10] \
        [--rows 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from seqcls import data, predict
from seqcls.serving import batching
from seqcls.settings import Settings

COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))


def train_run(model: str, device: str, output: Path) -> Path:
    """A run folder to load: a few optimizer steps on CoLA, as `seqcls train` writes it."""
    command = [sys.executable, "-m", "seqcls", "train", "--train", str(COLA / "in_domain_train.tsv"),
               "--model_name_or_path", model, "--device", device, "--max_train_samples", "256", "--max_steps", "4",
               "--epochs", "1", "--output_dir", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the training run failed: {(done.stdout + done.stderr)[-2000:]}")
    return output / "model"


def serve_requests(loaded: predict.Loaded, sentences: list[str], clients: int, max_batch_rows: int) -> dict:
    """`clients` threads, each sending its share of one-sentence requests and waiting for each answer; timed on the
    second of two rounds, so that the first meets every batch shape (oneDNN and cuBLAS choose kernels per shape)."""
    batcher = batching.Batcher(functools.partial(predict.predict_frame, loaded), max_batch_rows,
                               batching.MAX_QUEUE_ROWS, functools.partial(predict.casting_once, loaded))
    _round(batcher, sentences, clients)
    batcher.requests = batcher.passes = 0
    seconds, latencies = _round(batcher, sentences, clients)
    return {"requests_per_s": round(len(sentences) / seconds, 1), "passes": batcher.passes,
            **{f"p{q}_ms": round(1000 * float(np.percentile(latencies, q)), 2) for q in (50, 99)}}


def _round(batcher: batching.Batcher, sentences: list[str], clients: int) -> tuple[float, list[float]]:
    """Every sentence sent once: the wall seconds, and each request's latency."""
    latencies: list[float] = []

    def client(share: list[str]) -> None:
        for sentence in share:
            sent = time.perf_counter()
            batcher.submit(pd.DataFrame({"text": [sentence]})).result()
            latencies.append(time.perf_counter() - sent)

    threads = [threading.Thread(target=client, args=(sentences[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies


def predict_rows(loaded: predict.Loaded, sentences: list[str]) -> dict:
    """Predict's one batch function over the rows at the run's eval_batch_size, casts held as `seqcls predict` does."""
    frame = pd.DataFrame({"text": sentences})
    with predict.casting_once(loaded):
        predict.predict_frame(loaded, frame)  # warm-up: every batch shape once
        start = time.perf_counter()
        predict.predict_frame(loaded, frame)
        seconds = time.perf_counter() - start
    return {"rows": len(sentences), "rows_per_s": round(len(sentences) / seconds, 1)}


PARTS = ("shared_passes", "one_pass_per_request", "predict")


def measure(part: str, run: Path, device: str, args: argparse.Namespace) -> dict:
    """One part, in a process of its own: a second thread running torch beside a live one that did (another
    batcher's worker) makes every pass about 2x slower on CPU (OpenMP teams; 11.5 vs 26.4 ms, MiniLM), and
    `seqcls serve` scores in one thread only."""
    loaded = predict.load(str(run), {"device": device})
    sentences = cola_sentences()
    if part == "predict":
        return {"device": str(loaded.scorer.compute.device), "precision": loaded.scorer.compute.precision,
                **predict_rows(loaded, sentences[:args.rows] if args.rows else sentences)}
    rows = batching.MAX_BATCH_ROWS if part == "shared_passes" else 1
    return serve_requests(loaded, sentences[:args.requests], args.clients, rows)


def cola_sentences() -> list[str]:
    """CoLA's training sentences, read as the job reads them."""
    return data.read_channel(COLA / "in_domain_train.tsv", "train", Settings().reading).frame[data.TEXT].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the pretrained model to train the run from")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rows", type=int, default=0, help="rows predict labels (0: every CoLA training row)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child: one part, on --run
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print("RESULT " + json.dumps(measure(args.part, args.run, args.device, args)))
        return
    if not args.model:
        parser.error("--model is required")
    with tempfile.TemporaryDirectory(prefix="inference-speed-") as scratch:
        run = train_run(args.model, args.device, Path(scratch) / "run")
        parts = {part: child(part, run, args) for part in PARTS}
    predicted = parts["predict"]
    result = {"device": predicted.pop("device"), "precision": predicted.pop("precision"), "clients": args.clients,
              "requests": args.requests, "shared_passes": parts["shared_passes"],
              "one_pass_per_request": parts["one_pass_per_request"],
              "ratio": round(parts["shared_passes"]["requests_per_s"] / parts["one_pass_per_request"]["requests_per_s"], 2),
              "predict": predicted}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def child(part: str, run: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--part", part, "--run", str(run), "--device", args.device,
               "--requests", str(args.requests), "--clients", str(args.clients), "--rows", str(args.rows)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{part} failed: {(done.stdout + done.stderr)[-2000:]}")
    return json.loads(line[len("RESULT "):])


if __name__ == "__main__":
    main()
