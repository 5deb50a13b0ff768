"""The champion on this run's rows: the promotion gate compares two models on the same rows.

A scheduled retrain tests on new rows every time, so the number the current run published was measured on
other rows than this run's: comparing the two keeps a better model tested on a harder week and promotes a
worse one tested on an easier week. Here the current run (latest.json's) is fetched and loaded exactly as
`seqcls predict` loads it (files verified against its manifest; its own max_length and decision thresholds),
scores this run's rows of the gate's split, and a seeded paired bootstrap over those rows gives an interval
for the difference. A champion that cannot score the rows is `Incomparable`, with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

from .. import evaluate, losses, predict
from ..data import PAIR, TEXT, Encoded, LabelMap, Splits
from ..evaluate import Predictions
from ..problem_types import MINIMIZED_METRICS, MULTI_LABEL, REGRESSION, SINGLE_LABEL
from .rule import Incomparable
from ..records import Comparison
from ..settings import Promotion

RESAMPLES = 1000


@dataclass(frozen=True)
class GateRows:
    """The gate's split as this run scored it."""

    split: str  # "test" or "validation"
    frame: pd.DataFrame  # text[, text_pair]
    labels: np.ndarray  # as encoded: label ids, multi-hot rows or regression targets
    label_map: LabelMap
    predictions: Predictions  # this run's, with its thresholds

    @property
    def sha256(self) -> str:
        """Of the texts and labels, in order: the same rows give the same digest in any run."""
        digest = hashlib.sha256()
        for column in (TEXT, PAIR):
            if column in self.frame:
                digest.update(pd.util.hash_pandas_object(self.frame[column].astype(str), index=False).to_numpy().tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


def gate_rows(metric: str, splits: Splits, encoded: dict[str, Encoded], test: Predictions | None,
              validation: Callable[[], Predictions]) -> GateRows | None:
    """The rows the gate compares on (test for test_*, validation for validation_*) with this run's predictions;
    `validation` predicts them when asked (a collective under torch.distributed: every rank calls this)."""
    if metric == "none":
        return None
    split = "test" if metric.startswith("test_") else "validation"
    channel = splits.test if split == "test" else splits.validation
    predictions = test if split == "test" else validation()
    if channel is None or predictions is None or len(channel.frame) != len(predictions.logits):
        return None  # no such split, or a rank that holds its arrays but not its text (data.Prepared.without_text)
    columns = [column for column in (TEXT, PAIR) if column in channel.frame]
    return GateRows(split, channel.frame[columns], encoded[split].labels, splits.label_map, predictions)


def comparer(promotion: Promotion, rows: GateRows | None) -> Callable[[str], Comparison]:
    """What the gate calls with the current run's URI (promotion.Gate)."""
    def scored(champion_uri: str) -> Comparison:
        if rows is None:
            raise Incomparable("this run has no scored rows of the gate's split")
        return compare(champion_uri, rows, promotion.metric, promotion.confidence, promotion.seed)
    return scored


def compare(champion_uri: str, rows: GateRows, metric: str, confidence: float, seed: int) -> Comparison:
    """Score the champion on `rows` as `seqcls predict` would, then bootstrap the paired difference."""
    try:
        loaded = predict.load(champion_uri, {})
    except Exception as err:  # noqa: BLE001 - missing files, failed verification, an unloadable model: all incomparable
        raise Incomparable(f"it cannot be loaded ({' '.join(str(err).split())[:300]})") from None
    _check_comparable(loaded, rows)
    theirs = predict.predict_frame(loaded, rows.frame)
    name = metric.partition("_")[2]
    ours_per_row = _per_row(name, rows.labels, rows.predictions, rows.label_map.problem_type)
    theirs_per_row = _per_row(name, rows.labels, _in_our_order(theirs, loaded.label_map, rows.label_map),
                              rows.label_map.problem_type)
    value = _metric(name, rows.labels, rows.label_map)
    sign = -1.0 if name in MINIMIZED_METRICS else 1.0
    challenger, champion = value(ours_per_row, None), value(theirs_per_row, None)
    low, high = bootstrap(lambda idx: sign * (value(ours_per_row, idx) - value(theirs_per_row, idx)),
                          len(rows.labels), confidence, seed)
    return Comparison(challenger, champion, len(rows.labels), rows.sha256, rows.split, sign * (challenger - champion),
                      (low, high), confidence, RESAMPLES)


def bootstrap(difference: Callable[[np.ndarray | None], float], rows: int, confidence: float,
              seed: int) -> tuple[float, float]:
    """Percentile interval of a paired statistic over RESAMPLES seeded resamples of the rows (with replacement)."""
    rng = np.random.default_rng(seed)
    values = np.array([difference(rng.integers(0, rows, rows)) for _ in range(RESAMPLES)])
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def _check_comparable(loaded: predict.Loaded, rows: GateRows) -> None:
    theirs, ours = loaded.label_map, rows.label_map
    if theirs.problem_type != ours.problem_type:
        raise Incomparable(f"it is a {theirs.problem_type} model and this run is {ours.problem_type}")
    if ours.problem_type != REGRESSION and sorted(theirs.labels) != sorted(ours.labels):
        raise Incomparable(f"its labels {theirs.labels} differ from this run's {ours.labels}")
    pairs = PAIR in rows.frame
    if loaded.pairs is not None and loaded.pairs != pairs:
        raise Incomparable(f"it was trained on {'text pairs' if loaded.pairs else 'single texts'} and these rows are "
                           f"{'text pairs' if pairs else 'single texts'}")


def _in_our_order(predictions: Predictions, theirs: LabelMap, ours: LabelMap) -> Predictions:
    """The champion's predictions with label ids (and logit columns) in this run's label order."""
    if ours.problem_type == REGRESSION or theirs.labels == ours.labels:
        return predictions
    order = [theirs.labels.index(label) for label in ours.labels]
    decided = predictions.predicted
    # The champion decides in its own order (its thresholds are per its labels); only the outcome is reordered.
    mapped = decided[:, order] if ours.problem_type == MULTI_LABEL else np.array(order).argsort()[decided]
    return _Decided(predictions.logits[:, order], predictions.loss, predictions.problem_type, decided=mapped)


@dataclass(frozen=True)
class _Decided(Predictions):
    decided: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.decided


def _per_row(name: str, labels: np.ndarray, predictions: Predictions, problem_type: str) -> np.ndarray:
    """What the metric is computed from, per row: each row's loss for `loss`, else the prediction."""
    if name == "loss":
        return losses.row_losses(torch.from_numpy(predictions.logits), torch.from_numpy(labels), problem_type).numpy()
    return predictions.predicted


def _metric(name: str, labels: np.ndarray, label_map: LabelMap) -> Callable[[np.ndarray, np.ndarray | None], float]:
    """The metric on all rows (idx None) or on a resample; the same functions the run's own metrics use."""
    problem_type, num_labels = label_map.problem_type, len(label_map.labels)
    # As evaluate.classification_metrics averages them: every label counts in a macro average, also one a
    # resample happens to lack.
    kind = evaluate.f1_average(num_labels)
    average = {"average": kind, "zero_division": 0, "labels": list(range(num_labels)) if kind == "macro" else None}
    direct = {"mcc": matthews_corrcoef, "accuracy": accuracy_score,
              "f1": lambda y, p: f1_score(y, p, **average),
              "precision": lambda y, p: precision_score(y, p, **average),
              "recall": lambda y, p: recall_score(y, p, **average)}

    def value(per_row: np.ndarray, idx: np.ndarray | None) -> float:
        chosen = per_row if idx is None else per_row[idx]
        truth = labels if idx is None else labels[idx]
        if name == "loss":
            return float(chosen.mean())
        if problem_type == SINGLE_LABEL:
            return float(direct[name](truth, chosen))
        if problem_type == MULTI_LABEL:
            return float(evaluate.multi_label_metrics(truth, chosen, label_map.labels)[name])
        return float(evaluate.regression_metrics(truth, chosen)[name])
    return value
