"""`seqcls predict` on one model with each inference backend, side by side in one run: PyTorch fp32, PyTorch with
the automatic precision (bf16 on a CPU with AVX512-BF16 or AMX, else fp32), and onnxruntime (model.onnx in fp32,
model.int8.onnx).

Trains MiniLM for one epoch on 320 CoLA rows with export_onnx(_int8)=true (or takes --model, a run saved so), then
scores the same N CoLA sentences with each backend in turn, --rounds times, through the real CLI in a child
process, and reports the scoring rows/s from the `predictions_written` event's seconds (model load included,
as a user waits for it) and the ratio of each to PyTorch fp32. Agreement: the share of rows whose label equals
PyTorch fp32's, and the largest probability difference.

  python bench/predict_backends.py [--rows 5000] [--rounds 3] [--model runs/<run>/model]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import cpu_model, train_minilm  # noqa: E402  (the same trained MiniLM as the load test)

REPO = Path(__file__).resolve().parents[1]
BACKENDS = {"torch fp32": ["--precision", "fp32"], "torch auto": [], "onnx": ["--inference_backend", "onnx"],
            "onnx int8": ["--inference_backend", "onnx_int8"]}


def score(model: Path, rows: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "seqcls", "predict", "--model", str(model), "--input", str(rows),
                           "--output", str(out), *extra], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"predict {' '.join(extra)} failed:\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    written = next(e for e in events if e["event"] == "predictions_written")
    return time.perf_counter() - started, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, help="a run saved with export_onnx=true (default: train one)")
    parser.add_argument("--cola", type=Path, default=Path(os.environ.get("COLA_DIR", REPO.parent / "shared/data/cola")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqcls-bench-") as scratch:
        scratch = Path(scratch)
        model = args.model or train_minilm(args.cola, scratch)
        sentences = [line.split("\t")[3] for line in (args.cola / "in_domain_train.tsv").read_text().splitlines()]
        rows = scratch / "rows.csv"
        pd.DataFrame({"text": (sentences * (args.rows // len(sentences) + 1))[:args.rows]}).to_csv(rows, index=False)
        seconds: dict[str, list[float]] = {name: [] for name in BACKENDS}
        outputs: dict[str, pd.DataFrame] = {}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every backend alike
            for name, extra in BACKENDS.items():
                _, written = score(model, rows, scratch / f"{name}.csv", extra)
                seconds[name].append(written["seconds"])
                outputs[name] = pd.read_csv(scratch / f"{name}.csv")
        reference = outputs["torch fp32"]
        probabilities = [c for c in reference.columns if c.startswith("prob")]
        print(f"{args.rows} CoLA rows, {args.rounds} rounds, median of seconds per `seqcls predict` (load + score) "
              f"on {cpu_model()} ({os.cpu_count()} cores)")
        base = sorted(seconds["torch fp32"])[args.rounds // 2]
        for name in BACKENDS:
            median = sorted(seconds[name])[args.rounds // 2]
            agree = float((outputs[name]["predicted"] == reference["predicted"]).mean())
            worst = float((outputs[name][probabilities] - reference[probabilities]).abs().max().max())
            print(f"  {name:11s} {median:7.2f} s  {args.rows / median:8.0f} rows/s  {base / median:5.2f}x torch fp32  "
                  f"labels equal {agree:.4f}, largest probability difference {worst:.2e}")


if __name__ == "__main__":
    main()
