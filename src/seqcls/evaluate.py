"""Evaluation: batched prediction without per-batch host syncs, and scikit-learn metrics."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # float32 [rows, labels], in row order
    loss: float  # mean cross-entropy over all rows

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

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
        inputs = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
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
                 compute: Compute) -> tuple[dict[str, object], Predictions]:
    """Step 4 of the tutorial: the test split's metrics (logged as `test_metrics`) and its predictions."""
    predictions = predict(model, test_set, pad_token_id, batch_size, compute)
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
