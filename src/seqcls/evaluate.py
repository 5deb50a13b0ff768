"""Evaluation: batched prediction without per-batch host syncs, scikit-learn and scipy metrics per problem
type, and multi_label decision thresholds."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from . import logs
from .data import Encoded, collate, eval_order, pad_multiple
from .devices import Compute, autocast
from .distributed import gather_rows
from .losses import row_losses
from .problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TYPES, of_config
from .records import Metrics

DEFAULT_THRESHOLD = 0.5  # a multi_label row has a label when its sigmoid reaches the label's threshold


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # float32 [rows, outputs], in row order
    loss: float  # mean of losses.row_losses over all rows
    problem_type: str = SINGLE_LABEL
    thresholds: np.ndarray | None = None  # multi_label: per label, tuned on validation; None: DEFAULT_THRESHOLD
    threshold: float | None = None  # single_label, two labels: predict the second when its probability is at least this

    @property
    def predicted(self) -> np.ndarray:
        """Class ids [rows], a 0/1 matrix [rows, labels] (multi_label) or the scores [rows] (regression)."""
        if self.problem_type == REGRESSION:
            return self.logits[:, 0]
        if self.problem_type == MULTI_LABEL:
            cut = DEFAULT_THRESHOLD if self.thresholds is None else self.thresholds
            return (self.probabilities >= cut).astype(np.int64)
        if self.threshold is None:
            return self.logits.argmax(axis=1)
        return (self.probabilities[:, 1] >= self.threshold).astype(np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over classes, or each label's sigmoid (multi_label): what transformers' pipeline returns."""
        if self.problem_type == MULTI_LABEL:
            return 1 / (1 + np.exp(-self.logits))
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


@torch.no_grad()
def predict(model: torch.nn.Module, encoded: Encoded, pad_token_id: int, batch_size: int, compute: Compute,
            window: int | None = None) -> Predictions:
    """Logits for every row, each rank predicting every world.size-th row, gathered in row order; the
    problem type and any decision thresholds come from the model's config.

    Batches are sorted by length (least padding; within each `window` rows, see data.eval_order) and results stay
    on the device until the end, so there is one host sync per split rather than one per batch.
    """
    device, world = compute.device, compute.world
    was_training = model.training
    if was_training:  # walking every submodule costs a served one-sentence request ~2 ms each way
        model.eval()
    mine = np.arange(len(encoded))[world.rank::world.size]
    logits = torch.empty((len(mine), model.config.num_labels), dtype=torch.float32, device=device)
    for positions in eval_order(encoded.lengths[mine], batch_size, window):
        batch = collate(encoded, mine[positions], pad_token_id, pad_multiple(device.type))
        inputs = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()
                  if k not in ("labels", "weights")}
        with autocast(device, compute.precision):
            out = model(**inputs).logits
        logits[torch.from_numpy(positions).to(device)] = out.float()
    if was_training:
        model.train()
    gathered = gather_rows(logits, world)
    order = np.concatenate([np.arange(len(encoded))[r::world.size] for r in range(world.size)])
    full = torch.empty_like(gathered)
    full[torch.from_numpy(order).to(device)] = gathered
    problem_type = of_config(model.config.problem_type)
    loss = row_losses(full, torch.from_numpy(encoded.labels).to(device), problem_type).mean().item()
    thresholds = getattr(model.config, "label_thresholds", None)
    return Predictions(full.cpu().numpy(), loss, problem_type,
                       None if thresholds is None else np.asarray(thresholds, dtype=np.float32))


@dataclass(frozen=True)
class Scorer:
    """A trained model with what scoring it takes (its pad id, rows per forward, device and precision): the job's
    threshold tuning, test metrics and gate rows all score with the same one, and so does predict's batch function
    for a loaded run (predict.Loaded)."""

    model: torch.nn.Module
    pad_token_id: int
    batch_size: int  # eval_batch_size
    compute: Compute

    def predict(self, encoded: Encoded, window: int | None = None) -> Predictions:
        return predict(self.model, encoded, self.pad_token_id, self.batch_size, self.compute, window)


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


def resolve_threshold(scorer: Scorer, validation: Encoded, given: float | str, tune: bool = True) -> float | None:
    """decision_threshold for the weights the model ends on, as config.json and metrics.json both record it:
    for a two-label single_label model 0.5 (the default), the number given, or for `auto` the validation split's
    best by MCC (logged beside the MCC at 0.5); `auto` without `tune` (a stopped run, whose grace period is for
    saving) stays at 0.5. None for every other model (no second label to decide)."""
    config = scorer.model.config
    binary = of_config(config.problem_type) == SINGLE_LABEL and config.num_labels == 2
    default = DEFAULT_THRESHOLD if binary else None
    if given != "auto" or not tune:
        return default if given in (0.5, "auto") else float(given)
    predictions = scorer.predict(validation)
    labels = validation.labels
    if len(np.unique(labels)) < 2:
        logs.warning("decision_threshold_kept", "decision_threshold=auto: validation holds one label only; keeping 0.5")
        return default
    threshold, mcc = best_threshold(labels, predictions.probabilities[:, 1])
    at_half = float(matthews_corrcoef(labels, predictions.predicted))
    logs.event("decision_threshold_chosen", f"decision_threshold=auto: {threshold:.4f} (validation MCC {mcc:.4f}, "
                                            f"{at_half:.4f} at 0.5)", threshold=round(threshold, 6),
               val_mcc=round(mcc, 6), val_mcc_at_half=round(at_half, 6))
    return threshold


def f1_average(num_labels: int) -> str:
    """F1, precision and recall are binary for 2 labels, macro otherwise."""
    return "binary" if num_labels == 2 else "macro"


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, object]:
    """MCC is the headline (CoLA's metric); F1/precision/recall as `f1_average` says."""
    average = f1_average(num_labels)
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


def multi_label_metrics(labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, object]:
    """Micro-F1 is the headline (every row-label decision counts once); macro-F1 weighs rare labels like
    common ones; subset accuracy is the share of rows whose whole label set is right. Per label:
    precision, recall, F1 and support (rows that have it)."""
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None, zero_division=0,
                                                                     labels=list(range(len(names))))
    micro = precision_recall_fscore_support(labels, predicted, average="micro", zero_division=0)
    return {
        "f1_micro": float(micro[2]),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "precision_micro": float(micro[0]),
        "recall_micro": float(micro[1]),
        "subset_accuracy": float(accuracy_score(labels, predicted)),
        "per_label": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                      for name, p, r, f, n in zip(names, precision, recall, f1, support)},
    }


def regression_metrics(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Pearson is the headline (scale-free, as STS-B reports it); Spearman ranks; MSE and MAE in the targets' units.
    A constant prediction has no correlation: Pearson and Spearman are then NaN, as scipy says."""
    from scipy.stats import pearsonr, spearmanr

    constant = np.ptp(scores) == 0 or np.ptp(targets) == 0
    return {
        "pearson": float("nan") if constant else float(pearsonr(targets, scores)[0]),
        "spearman": float("nan") if constant else float(spearmanr(targets, scores)[0]),
        "mse": float(mean_squared_error(targets, scores)),
        "mae": float(mean_absolute_error(targets, scores)),
    }


def epoch_validation(labels: np.ndarray, predictions: Predictions, num_labels: int) -> dict[str, float]:
    """The tutorial's per-epoch columns for the problem type: loss, then its metrics (multi_label at the
    default threshold: thresholds are tuned once, on the kept weights)."""
    predicted = predictions.predicted
    if predictions.problem_type == MULTI_LABEL:
        found = multi_label_metrics(labels, predicted, [str(i) for i in range(num_labels)])
        return {"val_loss": predictions.loss, **{f"val_{k}": found[k] for k in ("f1_micro", "f1_macro", "subset_accuracy")}}
    if predictions.problem_type == REGRESSION:
        return {"val_loss": predictions.loss, **{f"val_{k}": v for k, v in regression_metrics(labels, predicted).items()}}
    average = f1_average(num_labels)
    return {
        "val_loss": predictions.loss,
        "val_accuracy": float(accuracy_score(labels, predicted)),
        "val_mcc": float(matthews_corrcoef(labels, predicted)),
        "val_f1": float(f1_score(labels, predicted, average=average, zero_division=0)),
    }


def validation_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The validation metrics of one epoch's stats (as a dict): what metrics.json and best_epoch_selected report."""
    return {k: v for k, v in stats.items() if k.startswith("val_") and k != "val_seconds"}


@dataclass
class EpochStats:
    """One evaluation's row of the tutorial's table (per epoch, or every eval_every_steps): what
    training_stats.csv, epoch_end (or evaluation) and the checkpoint hold.
    A problem type fills its own validation metrics; `row()` leaves out the others, so a single_label row
    has exactly the tutorial's columns."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None = None  # single_label
    val_mcc: float | None = None
    val_f1: float | None = None
    val_f1_micro: float | None = None  # multi_label
    val_f1_macro: float | None = None
    val_subset_accuracy: float | None = None
    val_pearson: float | None = None  # regression
    val_spearman: float | None = None
    val_mse: float | None = None
    val_mae: float | None = None
    train_seconds: float = 0.0
    val_seconds: float = 0.0
    step: int | None = None  # the optimizer step evaluated after, with eval_every_steps (None: an epoch's end)

    def row(self) -> dict[str, Any]:
        """The set fields, `step` right after `epoch` when there is one."""
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return {"epoch": fields.pop("epoch"), **({"step": fields.pop("step")} if "step" in fields else {}), **fields}


def headline(stats: dict[str, Any], problem_type: str) -> str:
    """The problem type's headline validation metric, as epoch_end's message says it."""
    name, shown = f"val_{TYPES[problem_type].headline}", f"val {TYPES[problem_type].headline_shown}"
    return f"{shown} {stats[name]:.4f}"


def test_metrics(scorer: Scorer, test_set: Encoded, threshold: float | None = None) -> tuple[dict[str, object], Predictions]:
    """Step 4 of the tutorial: the test split's metrics (logged as `test_metrics`) and its predictions, decided
    by the run's decision threshold (single_label, two labels) or per-label thresholds (multi_label, from the config)."""
    predictions = dataclasses.replace(scorer.predict(test_set), threshold=threshold)
    config = scorer.model.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    if predictions.problem_type == MULTI_LABEL:
        metrics = multi_label_metrics(test_set.labels, predictions.predicted, names)
        message = f"test micro-F1 {metrics['f1_micro']:.4f}, subset accuracy {metrics['subset_accuracy']:.4f}"
    elif predictions.problem_type == REGRESSION:
        metrics = regression_metrics(test_set.labels, predictions.predicted)
        message = f"test Pearson {metrics['pearson']:.4f}, MSE {metrics['mse']:.4f}"
    else:
        metrics = classification_metrics(test_set.labels, predictions.predicted, config.num_labels)
        message = f"test MCC {metrics['mcc']:.4f}, accuracy {metrics['accuracy']:.4f}"
    metrics["loss"] = predictions.loss
    logs.event("test_metrics", message, **test_fields(metrics))
    return metrics, predictions


def test_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The test_metrics event's fields: each number as test_<name>, then the confusion matrix or per-label table."""
    fields = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
    fields.update({k: metrics[k] for k in ("confusion_matrix", "per_label") if k in metrics})
    return fields


def test_headline(metrics: Metrics, problem_type: str) -> dict[str, float | None]:
    """job_end's test field: test_mcc, test_f1_micro or test_pearson (None without a test split)."""
    name = TYPES[problem_type].headline
    return {f"test_{name}": metrics.test[name] if metrics.test else None}


def best_f1_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The cut on one label's scores (a row has the label when score >= cut) with the highest F1 on these
    rows; DEFAULT_THRESHOLD when no row has the label (no F1 to maximise). Ties keep the highest cut."""
    positives = float(truth.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(truth[order])
    chosen = np.arange(1, len(scores) + 1)
    # Cutting at a score takes every row with that score: only the last of a run of equal scores is a real cut.
    real = np.r_[ranked[1:] != ranked[:-1], True]
    f1 = np.where(real, 2 * hits / (chosen + positives), -1.0)
    return float(ranked[int(f1.argmax())])


def tune_thresholds(scorer: Scorer, validation: Encoded, tune: bool = True) -> dict[str, float] | None:
    """multi_label: per label, the threshold with the best F1 on validation, stored in the config (so it is
    saved with the model and used by the test metrics and `seqcls predict`); returned by label name for
    metrics.json. None for the other problem types, and without `tune` (a stopped run: 0.5 stays)."""
    config = scorer.model.config
    if of_config(config.problem_type) != MULTI_LABEL or not tune:
        return None
    config.label_thresholds = None  # tune on the raw scores, not on earlier thresholds
    scores = scorer.predict(validation).probabilities
    thresholds = [best_f1_threshold(validation.labels[:, i], scores[:, i]) for i in range(scores.shape[1])]
    config.label_thresholds = thresholds
    named = {config.id2label[i]: round(t, 6) for i, t in enumerate(thresholds)}
    logs.event("thresholds_tuned", f"decision thresholds tuned on {len(validation)} validation rows",
               label_thresholds=named)
    return named


def probability_columns(predictions: Predictions, labels: list[str]) -> dict[str, np.ndarray]:
    """`prob_<label>` columns, rounded (none for regression): test_predictions.csv and `seqcls predict` write the same ones."""
    if predictions.problem_type == REGRESSION:
        return {}
    return {f"prob_{label}": predictions.probabilities[:, i].round(6) for i, label in enumerate(labels)}
