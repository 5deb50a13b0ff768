"""`seqcls train` with full length grouping: a bench-only batching, not a product setting.

Issue 15 asks to compare three batchings: random (group_by_length=false), megabatch
(group_by_length=true: sorted within windows of 50 batches) and full length grouping, where all
rows are sorted by length, cut into batches, and only the order of the batches is shuffled. This
script runs the unchanged `seqcls train` command with `seqcls.training.train.epoch_order` replaced by
`full_order` below, so the comparison trains with the product's own code; bench/whole_job.py
launches it for the variant `bench_batching=full`.

    python bench/full_grouping_job.py train --train ... [the same arguments as `seqcls train`]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from seqcls import cli, data  # noqa: E402
from seqcls.training import train  # noqa: E402


def full_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
    """epoch_order's contract (a pure function of seed and epoch; full batches, the short one last), with
    every row sorted by length (ties in a seeded random order) and the full batches shuffled."""
    del group_by_length  # this batching ignores the setting
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(lengths))
    order = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = np.split(order, range(batch_size, len(order), batch_size))
    full = len(order) // batch_size
    return [batches[i] for i in rng.permutation(full)] + batches[full:]


if __name__ == "__main__":
    data.epoch_order = train.epoch_order = full_order  # train imported the name; both, should that change
    sys.exit(cli.main())
