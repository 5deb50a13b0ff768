"""Batches: the order rows are visited in (shuffled per epoch, optionally grouped by length; sorted for evaluation),
the padded width of each batch, and collation into arrays."""

from __future__ import annotations

import numpy as np

from .encoding import Encoded, padded_width


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order.

    Every batch holds batch_size rows except the last. With group_by_length, a shuffled order is cut
    into megabatches of 50 batches whose rows are sorted by length, so batches pad less yet stay random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = 50 * batch_size
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(mega, len(order), mega))])
    return np.split(order, range(batch_size, len(order), batch_size))


def eval_order(lengths: np.ndarray, batch_size: int, window: int | None = None) -> list[np.ndarray]:
    """Evaluation batches sorted by length (least padding); callers restore row order by index.

    With a `window`, rows are sorted and batched within each `window` consecutive rows, so a row's batch depends
    on its window alone: a file scored a multiple of `window` rows at a time is batched, and so scored to the
    bit, exactly as when scored whole (the CPU kernels' summation order follows a batch's shape)."""
    window = window or max(len(lengths), 1)
    batches: list[np.ndarray] = []
    for start in range(0, len(lengths), window):
        order = start + np.argsort(lengths[start:start + window], kind="stable")
        batches += np.split(order, range(batch_size, len(order), batch_size))
    return batches


def pad_multiple(device_type: str) -> int:
    """GPU tensor cores want widths in multiples of 8 (and the CUDA graphs one bucket per multiple);
    a CPU only pays for the extra columns."""
    return 8 if device_type == "cuda" else 1


def batch_widths(lengths: np.ndarray, batches: list[np.ndarray], pad_to_multiple_of: int) -> list[int]:
    """Every padded width `collate` will produce for these batches (the CUDA graph path captures one each)."""
    return sorted({padded_width(int(lengths[rows].max()), pad_to_multiple_of) for rows in batches})


def collate(encoded: Encoded, rows: np.ndarray, pad_token_id: int, pad_to_multiple_of: int) -> dict[str, np.ndarray]:
    """Pad one batch to its own longest row (rounded up), not to max_length. `weights` is each row's share of
    the batch loss: 1/rows, times its label's class weight when there are class weights."""
    starts, ends = encoded.offsets[rows], encoded.offsets[rows + 1]
    width = padded_width(int((ends - starts).max()), pad_to_multiple_of)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts, ends)):
        n = end - start
        input_ids[i, :n] = encoded.input_ids[start:end]
        token_type_ids[i, :n] = encoded.token_type_ids[start:end]
        attention_mask[i, :n] = 1
    weights = encoded.weights[rows] if encoded.weights is not None else np.ones(len(rows), dtype=np.float32)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": encoded.labels[rows], "weights": weights / np.float32(len(rows))}
