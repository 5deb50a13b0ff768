"""Evaluation: batched prediction without per-batch host syncs, and scikit-learn metrics."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                             precision_recall_fscore_support)

from .data import Encoded, collate, eval_order, pad_multiple
from .distributed import World, gather_rows


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """bf16/fp16 autocast where asked; fp32 runs plain. CUDA graph capture needs cache_enabled=False."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                          cache_enabled=cache_enabled)


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
def predict(model: torch.nn.Module, encoded: Encoded, pad_token_id: int, device: torch.device, precision: str,
            batch_size: int, world: World = World()) -> Predictions:
    """Logits for every row, each rank predicting every world.size-th row, gathered in row order.

    Batches are sorted by length (least padding) and results stay on the device until the end, so
    there is one host sync per split rather than one per batch.
    """
    was_training = model.training
    model.eval()
    mine = np.arange(len(encoded))[world.rank::world.size]
    logits = torch.empty((len(mine), model.config.num_labels), dtype=torch.float32, device=device)
    for positions in eval_order(encoded.lengths[mine], batch_size):
        batch = collate(encoded, mine[positions], pad_token_id, pad_multiple(device.type))
        inputs = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        with autocast(device, precision):
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


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, object]:
    """MCC is the headline (CoLA's metric); F1/precision/recall are binary for 2 labels, macro otherwise."""
    average = "binary" if num_labels == 2 else "macro"
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
    average = "binary" if num_labels == 2 else "macro"
    predicted = predictions.predicted
    return {
        "val_loss": predictions.loss,
        "val_accuracy": float(accuracy_score(labels, predicted)),
        "val_mcc": float(matthews_corrcoef(labels, predicted)),
        "val_f1": float(f1_score(labels, predicted, average=average, zero_division=0)),
    }
