"""Rows that cross splits: the same text in train and in validation or test (a leak that inflates every metric,
and the promotion gate, read from those splits), and the same text with different labels within train.

Texts are compared after normalisation (`NORMALISATION`) through a 64-bit hash per row, so the check costs one
pass over the rows and eight bytes a row; two different texts share a hash with odds of about n²/2⁶⁵.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NORMALISATION = "runs of whitespace collapsed to one space, ends stripped, Unicode case-folded"
EXAMPLES = 3
EXAMPLE_CHARS = 120
CHUNK_ROWS = 500_000  # normalised copies of at most this many texts exist at once


def _normalised(texts: pd.Series) -> pd.Series:
    return texts.astype(str).str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()


def row_keys(texts: pd.Series, pairs: pd.Series | None = None) -> np.ndarray:
    """One uint64 per row: the hash of its normalised text (and pair, after a separator no text holds)."""
    keys = [np.empty(0, dtype=np.uint64)]
    for start in range(0, len(texts), CHUNK_ROWS):
        chunk = _normalised(texts.iloc[start:start + CHUNK_ROWS])
        if pairs is not None:
            chunk = chunk + "\x1f" + _normalised(pairs.iloc[start:start + CHUNK_ROWS])
        keys.append(pd.util.hash_array(chunk.to_numpy(dtype=object)))
    return np.concatenate(keys)


def _example(text: object) -> str:
    text = str(text)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


@dataclass(frozen=True)
class SplitReport:
    """What `data_ready` reports under `split_checks` and the run manifest keeps."""

    overlap: dict[str, int]  # per other split: train rows whose text is also there
    overlap_examples: dict[str, list[str]]
    conflicting_texts: int  # distinct train texts seen with more than one label
    conflicting_rows: int
    conflict_examples: list[dict[str, object]]
    dropped: int = 0
    normalisation: str = field(default=NORMALISATION)

    def record(self) -> dict[str, object]:
        return {"overlap": self.overlap, "overlap_examples": self.overlap_examples,
                "conflicting_texts": self.conflicting_texts, "conflicting_rows": self.conflicting_rows,
                "conflict_examples": self.conflict_examples, "dropped": self.dropped, "normalisation": self.normalisation}


def overlapping(train_keys: np.ndarray, others: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per other split, a boolean mask over train: the rows whose key that split also holds."""
    return {name: np.isin(train_keys, keys) for name, keys in others.items()}


def conflicts(train_keys: np.ndarray, labels: pd.Series, texts: pd.Series) -> tuple[int, int, list[dict[str, object]]]:
    """Texts with more than one label in train: (distinct texts, rows, a few examples with their labels).
    Labels are compared as codes (a multi_label row's sorted tag tuple is one code), keys and codes sorted together."""
    codes = pd.factorize(labels)[0]
    order = np.lexsort((codes, train_keys))
    keys, sorted_codes = train_keys[order], codes[order]
    differs = (keys[1:] == keys[:-1]) & (sorted_codes[1:] != sorted_codes[:-1])
    conflicting = np.unique(keys[1:][differs])
    if not len(conflicting):
        return 0, 0, []
    rows = np.isin(train_keys, conflicting)
    examples = []
    for key in conflicting[:EXAMPLES]:
        where = np.flatnonzero(train_keys == key)
        examples.append({"text": _example(texts.iloc[where[0]]), "labels": sorted({str(labels.iloc[i]) for i in where})})
    return len(conflicting), int(rows.sum()), examples


def report(train_texts: pd.Series, masks: dict[str, np.ndarray],
           conflict: tuple[int, int, list[dict[str, object]]], dropped: int) -> SplitReport:
    examples = {name: [_example(t) for t in train_texts[mask].drop_duplicates().head(EXAMPLES)] for name, mask in masks.items()}
    return SplitReport({name: int(mask.sum()) for name, mask in masks.items()}, examples, *conflict, dropped=dropped)
