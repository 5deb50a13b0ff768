"""Labels: each problem type's label cells parsed and checked, `LabelMap` (names to ids and back), their balance and
class weights."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, SettingsError
from ..problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from ..settings import Reading, class_weight_map
from .columns import LABEL, Channel


def _label_kind(label: str) -> str:
    try:
        number = float(label)
    except ValueError:
        return "name"
    return "integer" if number.is_integer() else "fraction"


def _check_label_kinds(labels: pd.Series, path: Path, column: str) -> str:
    """Classes are integers or names. Fractions, or numbers mixed with names, mean a wrong column or a broken file.

    Returns the file's kind ("integer" or "name") so a channel can refuse files that disagree.
    """
    kinds = labels.map({value: _label_kind(value) for value in labels.unique()}).to_numpy()
    fractions = np.flatnonzero(kinds == "fraction")
    if len(fractions):
        row = int(fractions[0])
        raise DataError(f"{path}: row {row + 1} has label {labels.iloc[row]!r} in column {column!r}: classes must be "
                        "integers or names (a fractional score is a regression target: use problem_type=regression)")
    odd = np.flatnonzero(kinds != kinds[0])
    if len(odd):
        row = int(odd[0])
        raise DataError(f"{path}: column {column!r} mixes numbers and names: row 1 has label {labels.iloc[0]!r}, "
                        f"row {row + 1} has {labels.iloc[row]!r}")
    return str(kinds[0])


def normalise_label(value: object) -> str:
    """Labels compare as strings: 1, 1.0 and "1" are the same label across files and formats."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    text = str(value).strip()
    try:
        number = float(text)
        if number.is_integer():
            return str(int(number))
    except ValueError:
        pass
    return text


def read_labels(labels: pd.Series, path: Path, column: str, reading: Reading) -> tuple[list, str]:
    """One file's labels as the problem type reads them, and their kind: "integer" or "name" classes
    (single_label), "tags" (multi_label: a tuple of names per row, possibly empty) or "number" (regression)."""
    if reading.problem_type == MULTI_LABEL:
        return [_tag_set(value, reading.label_delimiter) for value in labels.tolist()], "tags"
    empty = labels.isna() | (labels.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{path}: row {row + 1} has an empty label in column {column!r} ({int(empty.sum())} such rows)")
    normalised = [normalise_label(v) for v in labels.tolist()]
    if reading.problem_type == REGRESSION:
        return _targets(normalised, path, column), "number"
    return normalised, _check_label_kinds(pd.Series(normalised), path, column)


def _tag_set(value: object, delimiter: str) -> tuple[str, ...]:
    """A multi_label cell: a list (JSONL, Parquet) or a delimited string (CSV/TSV); sorted, repeats dropped.
    An empty cell or list is a row with no labels, which is allowed (every label's sigmoid learns "no")."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        items = []
    else:
        items = str(value).split(delimiter)
    tags = {normalise_label(item) for item in items}
    return tuple(sorted(tags - {""}))


def _targets(labels: list[str], path: Path, column: str) -> list[float]:
    """Regression targets, used as given (no scaling): every one a finite number."""
    targets = []
    for row, label in enumerate(labels):
        try:
            number = float(label)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number):
            raise DataError(f"{path}: row {row + 1} has label {label!r} in column {column!r}: problem_type=regression "
                            "needs a finite number in every row")
        targets.append(number)
    return targets


REGRESSION_LABEL = "score"  # the one output of a regression model, as config.json's id2label names it


@dataclass(frozen=True)
class LabelMap:
    """The model's outputs: class or tag names in id order (sorted from train), or the one regression score."""

    labels: list[str]  # id -> label
    problem_type: str = SINGLE_LABEL

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @classmethod
    def from_labels(cls, values: pd.Series, problem_type: str = SINGLE_LABEL) -> "LabelMap":
        """Sorted for determinism: integers numerically, anything else as text; multi_label: every tag seen."""
        if problem_type == REGRESSION:
            return cls([REGRESSION_LABEL], problem_type)
        unique = sorted(set(chain.from_iterable(values) if problem_type == MULTI_LABEL else values.tolist()))
        if all(v.lstrip("-").isdigit() for v in unique):
            unique.sort(key=int)
        return cls(unique, problem_type)

    def check_known(self, channel: Channel) -> None:
        """A label the model never saw in training cannot be scored: refuse it before any model work."""
        if self.problem_type == REGRESSION:
            return
        values = channel.frame[LABEL]
        seen = set(chain.from_iterable(values)) if self.problem_type == MULTI_LABEL else set(values)
        unseen = sorted(seen - set(self.labels))
        if unseen:
            raise DataError(f"{channel.name} channel has label(s) {', '.join(map(repr, unseen[:10]))} not seen in training "
                            f"(training labels: {', '.join(map(repr, self.labels[:20]))})")

    def encode(self, channel: Channel) -> np.ndarray:
        """int64 class ids [rows], float32 multi-hot [rows, labels] or float32 targets [rows]; writable: torch shares it."""
        self.check_known(channel)
        values = channel.frame[LABEL]
        if self.problem_type == REGRESSION:
            return np.array(values.to_numpy(dtype=np.float32))
        if self.problem_type == MULTI_LABEL:
            hot = np.zeros((len(values), len(self.labels)), dtype=np.float32)
            ids = self.label2id
            for row, tags in enumerate(values):
                hot[row, [ids[tag] for tag in tags]] = 1.0
            return hot
        return np.array(values.map(self.label2id).to_numpy(dtype=np.int64))

    def blank(self, rows: int) -> np.ndarray:
        """Labels of the right dtype and shape for unlabelled rows (predict): never read as truth."""
        if self.problem_type == MULTI_LABEL:
            return np.zeros((rows, len(self.labels)), dtype=np.float32)
        return np.zeros(rows, dtype=np.float32 if self.problem_type == REGRESSION else np.int64)

    def names(self, labels: np.ndarray) -> list:
        """Encoded labels or predictions back to what a person reads: class names, tag lists, or the numbers."""
        if self.problem_type == REGRESSION:
            return [round(float(v), 6) for v in labels]
        if self.problem_type == MULTI_LABEL:
            return [[self.labels[i] for i in np.flatnonzero(row)] for row in labels]
        return [self.labels[i] for i in labels]


def label_balance(labels: np.ndarray, label_map: LabelMap) -> dict[str, float]:
    """Rows per class (single_label), rows per tag (multi_label), or the targets' min, mean and max (regression)."""
    if label_map.problem_type == REGRESSION:
        return {"min": round(float(labels.min()), 6), "mean": round(float(labels.mean()), 6),
                "max": round(float(labels.max()), 6)}
    counts = labels.sum(axis=0) if label_map.problem_type == MULTI_LABEL else np.bincount(labels, minlength=len(label_map.labels))
    return {label: int(count) for label, count in zip(label_map.labels, counts)}


def check_binary_only(decision_threshold: float, label_map: LabelMap) -> None:
    """A decision threshold is for two labels; set for more, it would be silently ignored."""
    if decision_threshold != 0.5 and len(label_map.labels) != 2:
        raise SettingsError(f"hyperparameter decision_threshold={decision_threshold} needs exactly two labels; "
                            f"train has {len(label_map.labels)} ({', '.join(map(repr, label_map.labels[:10]))})")


def label_weights(setting: str, label_map: LabelMap, train: Channel) -> np.ndarray | None:
    """class_weights per label id: `balanced` as scikit-learn computes it (n_rows / (n_labels * label_rows), so
    the mean row weight over train is 1 and the learning rate keeps its meaning), or the given map."""
    if setting == "none":
        return None
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        ids = label_map.encode(train)
        return compute_class_weight("balanced", classes=np.arange(len(label_map.labels)), y=ids).astype(np.float32)
    given = {normalise_label(label): weight for label, weight in class_weight_map(setting).items()}
    unknown = sorted(set(given) - set(label_map.labels))
    if unknown:
        raise SettingsError(f"hyperparameter class_weights names label(s) {', '.join(map(repr, unknown))} that train "
                            f"does not have (labels: {', '.join(map(repr, label_map.labels[:20]))})")
    return np.array([given.get(label, 1.0) for label in label_map.labels], dtype=np.float32)


def check_label_count(label_map: LabelMap, train: Channel) -> None:
    """A single_label classifier needs two classes; a multi_label one at least one tag somewhere in train."""
    if label_map.problem_type == SINGLE_LABEL and len(label_map.labels) < 2:
        raise DataError(f"train channel has a single label {label_map.labels[0]!r} in column "
                        f"{train.columns.label!r}: a classifier needs at least two")
    if label_map.problem_type == MULTI_LABEL and not label_map.labels:
        raise DataError(f"train channel has no labels in any row of column {train.columns.label!r}: "
                        "problem_type=multi_label needs at least one")
