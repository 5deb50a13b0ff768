"""TensorBoard scalars, written from the job's own events so they hold exactly the JSON log's values.

Train loss, learning rate and samples/s at each `train_progress` (x: optimizer step); validation
loss and the problem type's metrics (MCC...; micro-F1...; Pearson...) at each `epoch_end` (x: epoch) or,
with eval_every_steps, each `evaluation` (x: optimizer step); test metrics once (x: the last epoch, or the
last evaluation's step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAIN = {"loss": "train/loss", "lr": "train/learning_rate", "samples_per_s": "train/samples_per_s"}
# Every problem type's fields; an event carries only its own type's, and absent fields are skipped.
EPOCH = {"train_loss": "train/epoch_loss", "val_loss": "val/loss", "val_accuracy": "val/accuracy",
         "val_mcc": "val/mcc", "val_f1": "val/f1",
         "val_f1_micro": "val/f1_micro", "val_f1_macro": "val/f1_macro", "val_subset_accuracy": "val/subset_accuracy",
         "val_pearson": "val/pearson", "val_spearman": "val/spearman", "val_mse": "val/mse", "val_mae": "val/mae"}
TEST = {"test_loss": "test/loss", "test_accuracy": "test/accuracy", "test_mcc": "test/mcc", "test_f1": "test/f1",
        "test_precision": "test/precision", "test_recall": "test/recall",
        "test_f1_micro": "test/f1_micro", "test_f1_macro": "test/f1_macro", "test_subset_accuracy": "test/subset_accuracy",
        "test_precision_micro": "test/precision_micro", "test_recall_micro": "test/recall_micro",
        "test_pearson": "test/pearson", "test_spearman": "test/spearman", "test_mse": "test/mse", "test_mae": "test/mae"}
FLUSH_SECS = 30


class Points:
    """The scalars an event carries, as (tag, value, x): the one mapping every tracker plots (TensorBoard, MLflow)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._last_step: int | None = None  # of the last step-level evaluation: where test metrics go

    def of(self, name: str, fields: dict[str, Any]) -> list[tuple[str, float, int]]:
        if name == "train_progress":
            return _points(TRAIN, fields, int(fields["step"]))
        if name in ("epoch_end", "evaluation"):
            x = int(fields["step"] if name == "evaluation" else fields["epoch"])
            self._last_step = x if name == "evaluation" else None
            return _points(EPOCH, fields, x)
        if name == "test_metrics":
            return _points(TEST, fields, self.epochs if self._last_step is None else self._last_step)
        return []


def _points(tags: dict[str, str], fields: dict[str, Any], x: int) -> list[tuple[str, float, int]]:
    return [(tag, float(fields[field]), x) for field, tag in tags.items() if fields.get(field) is not None]


class TensorBoardScalars:
    """A logs.Listener; the event file opens with the first scalar, so a job that fails early leaves none."""

    def __init__(self, directory: Path, epochs: int) -> None:
        self.directory = directory
        self.points = Points(epochs)
        self._writer = None
        self._purge_step: int | None = None

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        if name == "resumed":
            # Steps logged after the checkpoint by the run that stopped are logged again: TensorBoard drops the old ones.
            self._purge_step = int(fields["step"]) + 1
        points = self.points.of(name, fields)
        if points and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when there is something to write

            self._writer = SummaryWriter(log_dir=str(self.directory), purge_step=self._purge_step, flush_secs=FLUSH_SECS)
        for tag, value, x in points:
            self._writer.add_scalar(tag, value, x)
        if name in ("epoch_end", "evaluation") and self._writer is not None:
            self._writer.flush()

    def record(self) -> dict[str, Any]:
        return {"directory": str(self.directory)}

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
