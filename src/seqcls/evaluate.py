"""Evaluation: batched prediction without per-batch host syncs, and scikit-learn metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                             precision_recall_fscore_support)

from .data import Encoded, collate, eval_order, pad_multiple
from . import logs
from .devices import Compute, autocast
from .distributed import gather_rows
from .settings import Settings


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # float32 [rows, labels], in row order
    loss: float  # mean cross-entropy over all rows
    threshold: float | None = None  # two labels: predict the second when its probability is at least this

    @property
    def predicted(self) -> np.ndarray:
        if self.threshold is None:
            return self.logits.argmax(axis=1)
        return (self.probabilities[:, 1] >= self.threshold).astype(np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


@torch.no_grad()
def predict(model: torch.nn.Module, encoded: Encoded, pad_token_id: int, batch_size: int, compute: Compute) -> Predictions:
    """Logits for every row, each rank predicting every world.size-th row, gathered in row order.

    Batches are sorted by length (least padding) and results stay on the device until the end, so
    there is one host sync per split rather than one per batch.
    """
    device, world = compute.device, compute.world
    was_training = model.training
    model.eval()
    mine = np.arange(len(encoded))[world.rank::world.size]
    logits = torch.empty((len(mine), model.config.num_labels), dtype=torch.float32, device=device)
    for positions in eval_order(encoded.lengths[mine], batch_size):
        batch = collate(encoded, mine[positions], pad_token_id, pad_multiple(device.type))
        inputs = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()
                  if k not in ("labels", "weights")}
        with autocast(device, compute.precision):
            out = model(**inputs).logits
        logits[torch.from_numpy(positions).to(device)] = out.float()
    model.train(was_training)
    gathered = gather_rows(logits, world)
    order = np.concatenate([np.arange(len(encoded))[r::world.size] for r in range(world.size)])
    full = torch.empty_like(gathered)
    full[torch.from_numpy(order).to(device)] = gathered
    labels = torch.from_numpy(encoded.labels).to(device)
    loss = torch.nn.functional.cross_entropy(full, labels).item()
    return Predictions(full.cpu().numpy(), loss)


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The decision threshold on `scores` (the second label's probability) with the highest MCC, and that MCC.

    Every distinct score is a candidate (scikit-learn's roc_curve lists them with their confusion counts); the
    threshold returned lies halfway to the next lower score, so it splits the rows exactly as the candidate
    does. Among equal MCCs the one nearest 0.5 wins."""
    from sklearn.metrics import roc_curve

    fpr, tpr, candidates = roc_curve(labels, scores, drop_intermediate=False)
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    tp, fp = tpr * positives, fpr * negatives
    fn, tn = positives - tp, negatives - fp
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.divide(tp * tn - fp * fn, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    lower = np.append(candidates[1:], 0.0)
    midpoints = np.clip((np.minimum(candidates, 1.0) + lower) / 2, 1e-6, 1 - 1e-6)
    best = np.flatnonzero(np.isclose(mcc, mcc.max(), rtol=0, atol=1e-12))
    chosen = best[np.argmin(np.abs(midpoints[best] - 0.5))]
    return float(midpoints[chosen]), float(mcc[chosen])


def resolve_threshold(model: torch.nn.Module, validation: Encoded, pad_token_id: int, settings: Settings,
                      compute: Compute, tune: bool = True) -> float | None:
    """decision_threshold for the weights the model ends on: None at 0.5 (the plain argmax), the number given,
    or for `auto` the validation split's best by MCC (logged beside the MCC at 0.5); `auto` without `tune`
    (a stopped run, whose grace period is for saving) stays at 0.5."""
    given = settings.decision_threshold
    if given != "auto" or not tune:
        return None if given in (0.5, "auto") else float(given)
    predictions = predict(model, validation, pad_token_id, settings.eval_batch_size, compute)
    labels = validation.labels
    if len(np.unique(labels)) < 2:
        logs.warning("decision_threshold_kept", "decision_threshold=auto: validation holds one label only; keeping 0.5")
        return None
    threshold, mcc = best_threshold(labels, predictions.probabilities[:, 1])
    at_half = float(matthews_corrcoef(labels, predictions.predicted))
    logs.event("decision_threshold_chosen", f"decision_threshold=auto: {threshold:.4f} (validation MCC {mcc:.4f}, "
                                            f"{at_half:.4f} at 0.5)", threshold=round(threshold, 6),
               val_mcc=round(mcc, 6), val_mcc_at_half=round(at_half, 6))
    return threshold


def _average(num_labels: int) -> str:
    """F1, precision and recall are binary for 2 labels, macro otherwise."""
    return "binary" if num_labels == 2 else "macro"


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, object]:
    """MCC is the headline (CoLA's metric); F1/precision/recall as `_average` says."""
    average = _average(num_labels)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average=average, zero_division=0,
                                                               labels=list(range(num_labels)) if average == "macro" else None)
    return {
        "mcc": float(matthews_corrcoef(labels, predicted)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "f1_average": average,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=list(range(num_labels))).tolist(),
    }


def epoch_validation(labels: np.ndarray, predictions: Predictions, num_labels: int) -> dict[str, float]:
    """The tutorial's per-epoch columns: loss, accuracy, MCC, plus F1."""
    average = _average(num_labels)
    predicted = predictions.predicted
    return {
        "val_loss": predictions.loss,
        "val_accuracy": float(accuracy_score(labels, predicted)),
        "val_mcc": float(matthews_corrcoef(labels, predicted)),
        "val_f1": float(f1_score(labels, predicted, average=average, zero_division=0)),
    }


def objective(select_best: str) -> tuple[str, str]:
    """(epoch_end field, goal) of the metric that ranks epochs: the select_best metric, else validation MCC.
    select_best, early stopping and a tuning trial's reported objective all follow it."""
    return ("val_loss", "MINIMIZE") if select_best == "loss" else ("val_mcc", "MAXIMIZE")


def better(select_best: str, value: float, reference: float, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `reference` on the objective by more than min_delta."""
    goal = objective(select_best)[1]
    return value > reference + min_delta if goal == "MAXIMIZE" else value < reference - min_delta


def validation_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The validation metrics of one epoch's stats (as a dict): what metrics.json and best_epoch_selected report."""
    return {k: v for k, v in stats.items() if k.startswith("val_") and k != "val_seconds"}


@dataclass
class EpochStats:
    """One epoch's row of the tutorial's table: what training_stats.csv, epoch_end and the checkpoint hold."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_mcc: float
    val_f1: float
    train_seconds: float
    val_seconds: float


def test_metrics(model: torch.nn.Module, test_set: Encoded, pad_token_id: int, batch_size: int,
                 compute: Compute, threshold: float | None = None) -> tuple[dict[str, object], Predictions]:
    """Step 4 of the tutorial: the test split's metrics (logged as `test_metrics`) and its predictions, decided
    by the run's decision threshold."""
    predictions = dataclasses.replace(predict(model, test_set, pad_token_id, batch_size, compute), threshold=threshold)
    metrics = classification_metrics(test_set.labels, predictions.predicted, model.config.num_labels)
    metrics["loss"] = predictions.loss
    logs.event("test_metrics", f"test MCC {metrics['mcc']:.4f}, accuracy {metrics['accuracy']:.4f}",
               test_mcc=metrics["mcc"], test_accuracy=metrics["accuracy"], test_f1=metrics["f1"],
               test_precision=metrics["precision"], test_recall=metrics["recall"], test_loss=predictions.loss,
               confusion_matrix=metrics["confusion_matrix"])
    return metrics, predictions


def probability_columns(predictions: Predictions, labels: list[str]) -> dict[str, np.ndarray]:
    """`prob_<label>` columns, rounded: test_predictions.csv and `seqcls predict` write the same ones."""
    return {f"prob_{label}": predictions.probabilities[:, i].round(6) for i, label in enumerate(labels)}
