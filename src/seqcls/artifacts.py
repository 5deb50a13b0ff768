"""Artifacts: the save_pretrained model, metrics, per-epoch stats, plots, predictions and the run manifest.

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written artifact where the platform (or a consumer) looks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .data import PAIR, TEXT, Channel, LabelMap
from .errors import SeqclsError
from .evaluate import Predictions
from .train import EpochStats

RELOAD_CHECK_ROWS = 8


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are for other users too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=False, default=str) + "\n").encode())


def save_model(model: torch.nn.Module, tokenizer, model_dir: Path) -> list[str]:
    """save_pretrained into a hidden staging folder inside model_dir, then rename each file into place."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        names = sorted(p.name for p in staging.iterdir())
        for name in names:
            os.chmod(staging / name, 0o666 & ~_umask())
            os.replace(staging / name, model_dir / name)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_training_stats(path: Path, stats: list[EpochStats]) -> None:
    write_atomic(path, pd.DataFrame([asdict(s) for s in stats]).to_csv(index=False).encode())


def write_predictions(path: Path, channel: Channel, labels: np.ndarray, predictions: Predictions, label_map: LabelMap) -> None:
    frame = pd.DataFrame({TEXT: channel.frame[TEXT]})
    if PAIR in channel.frame:
        frame[PAIR] = channel.frame[PAIR]
    frame["label"] = [label_map.labels[i] for i in labels]
    frame["predicted"] = [label_map.labels[i] for i in predictions.predicted]
    for i, label in enumerate(label_map.labels):
        frame[f"prob_{label}"] = predictions.probabilities[:, i].round(6)
    write_atomic(path, frame.to_csv(index=False).encode())


def _save_figure(figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def plot_loss_curve(path: Path, stats: list[EpochStats]) -> None:
    """Training vs validation loss per epoch, as in the tutorial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    epochs = [s.epoch for s in stats]
    axes.plot(epochs, [s.train_loss for s in stats], "b-o", label="Training")
    axes.plot(epochs, [s.val_loss for s in stats], "g-o", label="Validation")
    axes.set(title="Training & validation loss", xlabel="Epoch", ylabel="Loss", xticks=epochs)
    axes.legend()
    axes.grid(alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)


def plot_confusion_matrix(path: Path, matrix: list[list[int]], label_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    image = axes.imshow(np.asarray(matrix), cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(label_names))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=label_names, yticklabels=label_names,
             xlabel="Predicted", ylabel="True", title="Test confusion matrix")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axes.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    _save_figure(figure, path)
    plt.close(figure)


@torch.no_grad()
def reload_check(model: torch.nn.Module, tokenizer, model_dir: Path, channel: Channel) -> int:
    """Reload the saved folder as a consumer would and check it predicts what the trained model predicts."""
    frame = channel.frame.head(RELOAD_CHECK_ROWS)
    texts = frame[TEXT].tolist()
    pairs = frame[PAIR].tolist() if PAIR in frame else None
    device = next(model.parameters()).device
    reloaded = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True,
                                                                  trust_remote_code=False).to(device).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    was_training = model.training
    model.eval()
    try:
        expected = model(**tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt").to(device)).logits.argmax(-1)
        got = reloaded(**reloaded_tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt").to(device)).logits.argmax(-1)
    finally:
        model.train(was_training)
    if not torch.equal(expected, got):
        raise SeqclsError(f"reload check failed: the saved model in {model_dir} predicts {got.tolist()} "
                          f"but the trained model predicts {expected.tolist()} on the same {len(texts)} rows")
    return len(texts)
