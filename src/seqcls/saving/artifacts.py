"""Artifacts: the save_pretrained model, metrics, per-epoch stats, plots, predictions and the run manifest.

Every file is written to a temporary name and renamed into place, and a run's files are written
into a hidden staging folder that moves into place only once all of them are written and checked,
so a crash never leaves a half-written artifact, or half a set, where the platform (or a consumer) looks.
"""

from __future__ import annotations

import errno
import os
import platform as host_platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .. import logs
from . import card, onnxmodel
from ..atomic import current_umask, visible_files, write_atomic, write_json
from ..data import PAIR, TEXT, Channel, LabelMap, file_sha256
from ..errors import SeqclsError
from ..evaluate import EpochStats, Predictions, probability_columns, validation_metrics
from ..problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL, of_config
from ..records import METRICS, RUN_MANIFEST, DataRecord, Metrics, RunManifest

RELOAD_CHECK_ROWS = 8


@contextmanager
def staged(final_dir: Path) -> Iterator[Path]:
    """A hidden folder inside final_dir (same filesystem, so moves are renames) to write a set of files into.

    On success every file moves into final_dir; on any failure (disk full, reload check) the folder is
    deleted, so final_dir never holds a partial set.
    """
    final_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final_dir, prefix=".staging-"))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            for path in [item, *item.rglob("*")]:  # artifacts are for other users too (a folder: its files)
                os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
            if item.is_dir() and (final_dir / item.name).is_dir():
                shutil.rmtree(final_dir / item.name)  # an earlier run's code/: a folder cannot replace a full one
            os.replace(item, final_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_model(model: torch.nn.Module, tokenizer, folder: Path) -> list[str]:
    """save_pretrained (safetensors) of the model and its tokenizer; returns the file names."""
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except SafetensorError as err:
        # safetensors reports a full disk as text ("... (os error 28)"): make it the OSError the CLI explains.
        if f"os error {errno.ENOSPC})" in str(err):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder)) from err
        raise
    tokenizer.save_pretrained(folder)
    return sorted(p.name for p in folder.iterdir())


INFERENCE_HOOK = "code/inference.py"  # where sagemaker-huggingface-inference-toolkit looks for a custom hook


def write_inference_hook(folder: Path) -> str:
    """code/inference.py (seqcls/serving/hf_inference.py, verbatim): AWS's Hugging Face inference image then applies the
    run's thresholds, problem type and label names instead of its pipeline's argmax (docs/serving-hf.md)."""
    hook = folder / INFERENCE_HOOK
    hook.parent.mkdir(exist_ok=True)
    write_atomic(hook, resources.files("seqcls.serving").joinpath("hf_inference.py").read_bytes())
    return INFERENCE_HOOK


def model_source_files(source: str) -> list[dict[str, object]]:
    """sha256 and size of a local model folder's files (none for a hub id): the exact start a rerun needs."""
    folder = Path(source)
    if not folder.is_dir():
        return []
    found = []
    for path in visible_files(folder, recursive=False):
        found.append({"name": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size})
    return found


def write_training_stats(path: Path, stats: list[EpochStats]) -> None:
    write_atomic(path, pd.DataFrame([s.row() for s in stats]).to_csv(index=False).encode())


def prediction_columns(predictions: Predictions, label_map: LabelMap, delimiter: str) -> dict[str, object]:
    """`predicted` (a class, the tags joined by `delimiter`, or the score) and the `prob_<label>` columns:
    test_predictions.csv and `seqcls predict` write the same ones."""
    names = label_map.names(predictions.predicted)
    if label_map.problem_type == MULTI_LABEL:
        names = [delimiter.join(tags) for tags in names]
    return {"predicted": names, **probability_columns(predictions, label_map.labels)}


def write_predictions(path: Path, channel: Channel, labels: np.ndarray, predictions: Predictions, label_map: LabelMap,
                      delimiter: str = ",") -> None:
    """test_predictions.csv: the rows, their true label(s) or target, and the prediction columns."""
    frame = pd.DataFrame({TEXT: channel.frame[TEXT]})
    if PAIR in channel.frame:
        frame[PAIR] = channel.frame[PAIR]
    truth = label_map.names(labels)
    frame["label"] = [delimiter.join(t) for t in truth] if label_map.problem_type == MULTI_LABEL else truth
    for column, values in prediction_columns(predictions, label_map, delimiter).items():
        frame[column] = values
    write_atomic(path, frame.to_csv(index=False).encode())


def write_per_label_metrics(path: Path, per_label: dict[str, dict[str, float]]) -> None:
    """multi_label: one row per label (precision, recall, F1, support on test, at its tuned threshold)."""
    frame = pd.DataFrame([{"label": name, **values} for name, values in per_label.items()])
    write_atomic(path, frame.to_csv(index=False).encode())


def _save_figure(figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def plot_loss_curve(path: Path, stats: list[EpochStats]) -> None:
    """Training vs validation loss per epoch, as in the tutorial; per evaluation step with eval_every_steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    stepwise = any(s.step for s in stats)
    x = [s.step if stepwise else s.epoch for s in stats]
    axes.plot(x, [s.train_loss for s in stats], "b-o", label="Training")
    axes.plot(x, [s.val_loss for s in stats], "g-o", label="Validation")
    axes.set(title="Training & validation loss", xlabel="Optimizer step" if stepwise else "Epoch", ylabel="Loss")
    if not stepwise or len(x) <= 20:
        axes.set_xticks(x)
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


def plot_scatter(path: Path, targets: np.ndarray, scores: np.ndarray) -> None:
    """Regression: predicted vs true test targets, with the line where they are equal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.scatter(targets, scores, s=10, alpha=0.6)
    low, high = float(min(targets.min(), scores.min())), float(max(targets.max(), scores.max()))
    axes.plot([low, high], [low, high], "k--", linewidth=1, label="predicted = true")
    axes.set(title="Test: predicted vs true", xlabel="True", ylabel="Predicted")
    axes.legend()
    axes.grid(alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)


def _test_files(out: Path, record: "RunRecord") -> None:
    """The test split's predictions and its picture: a confusion matrix, a per-label table, or a scatter."""
    channel, label_ids, predictions = record.test
    delimiter = record.manifest.value("label_delimiter")
    write_predictions(out / "test_predictions.csv", channel, label_ids, predictions, record.label_map, delimiter)
    test = record.metrics.test
    if record.label_map.problem_type == MULTI_LABEL:
        write_per_label_metrics(out / "per_label_metrics.csv", test["per_label"])
    elif record.label_map.problem_type == REGRESSION:
        plot_scatter(out / "predicted_vs_true.png", label_ids, predictions.predicted)
    else:
        plot_confusion_matrix(out / "confusion_matrix.png", test["confusion_matrix"], record.label_map.labels)


def _shown(logits: torch.Tensor, problem_type: str) -> list:
    """What the reload check compares and reports: the class per row for single_label; the outputs otherwise
    (sigmoid thresholds and regression scores depend on their values, and an argmax over one output says nothing)."""
    return logits.argmax(-1).tolist() if problem_type == SINGLE_LABEL else logits.float().round(decimals=4).tolist()


def _agree(expected: torch.Tensor, got: torch.Tensor, problem_type: str) -> bool:
    if problem_type == SINGLE_LABEL:
        return torch.equal(expected.argmax(-1), got.argmax(-1))
    return torch.allclose(expected.float(), got.float(), rtol=0, atol=1e-4)


def _problem_record(config) -> tuple[object, object]:
    return config.problem_type, getattr(config, "label_thresholds", None)


@torch.no_grad()
def reload_check(model: torch.nn.Module, tokenizer, model_dir: Path, channel: Channel) -> int:
    """Reload the saved folder as a consumer would and check it predicts what the trained model predicts,
    with the same problem type and decision thresholds in its config."""
    frame = channel.frame.head(RELOAD_CHECK_ROWS)
    texts = frame[TEXT].tolist()
    pairs = frame[PAIR].tolist() if PAIR in frame else None
    device = next(model.parameters()).device
    reloaded = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True,
                                                                  trust_remote_code=False).to(device).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if _problem_record(reloaded.config) != _problem_record(model.config):
        raise SeqclsError(f"reload check failed: the saved config.json in {model_dir} has (problem_type, label_thresholds) "
                          f"{_problem_record(reloaded.config)}, the trained model {_problem_record(model.config)}")
    was_training = model.training
    model.eval()
    try:
        inputs = tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt").to(device)
        expected = model(**inputs).logits
        got = reloaded(**reloaded_tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt").to(device)).logits
    finally:
        model.train(was_training)
    problem_type = of_config(model.config.problem_type)
    if not _agree(expected, got, problem_type):
        raise SeqclsError(f"reload check failed: the saved model in {model_dir} predicts {_shown(got, problem_type)} "
                          f"but the trained model predicts {_shown(expected, problem_type)} on the same {len(texts)} rows")
    if (model_dir / onnxmodel.ONNX_FILE).exists():
        onnxmodel.check(model_dir / onnxmodel.ONNX_FILE, dict(inputs), expected)
    return len(texts)


@dataclass(frozen=True)
class RunRecord:
    """What one run saves beside its model: metrics.json, run_manifest.json, per-epoch stats and, when
    there was a test split, its rows and predictions."""

    metrics: Metrics
    manifest: RunManifest
    stats: list[EpochStats]
    label_map: LabelMap
    test: tuple[Channel, np.ndarray, Predictions] | None = None  # rows, label ids, predictions
    check_rows: Channel | None = None  # held-out rows (test, else validation) for the reload and int8 checks
    onnx: tuple[str, ...] = ()  # "onnx": also model.onnx, checked like the safetensors; "onnx_int8": model.int8.onnx


def metrics_record(stats: list[EpochStats], best_epoch: int, labels: list[str], facts: dict[str, Any]) -> Metrics:
    """metrics.json before the test split: the kept epoch's validation metrics (no timings, so identical
    runs give identical files), the labels, and the `facts` that are set: decision_threshold (single_label, two
    labels: 0.5 when unset), label_thresholds (multi_label), early_stopped_after_epoch, best_step (with
    eval_every_steps), and `partial`, what a
    stopped run's model holds. `problem_type` only decides whether decision_threshold applies."""
    best_step = facts.get("best_step") or 0  # with eval_every_steps several evaluations share an epoch
    kept = next((s.row() for s in stats if s.epoch == best_epoch and (s.step or 0) == best_step), {})
    two_labels = len(labels) == 2 and facts.get("problem_type", SINGLE_LABEL) == SINGLE_LABEL
    return Metrics(best_epoch, validation_metrics(kept), labels,
                   (facts.get("decision_threshold") or 0.5) if two_labels else None,
                   *(facts.get(name) or None for name in ("label_thresholds", "early_stopped_after_epoch", "best_step",
                                                          "partial")))


def save_run(model: torch.nn.Module, tokenizer, model_dir: Path, output_data_dir: Path, record: RunRecord) -> list[str]:
    """Step 5: the model and everything a person needs to judge it, into staging folders that move into
    place only after the reload check: a failure here (disk full...) leaves no partial set. Returns the
    model folder's file names."""
    with staged(model_dir) as staged_model, staged(output_data_dir) as out:
        saved = save_model(model, tokenizer, staged_model) + [write_inference_hook(staged_model)]
        if "onnx" in record.onnx:
            saved.append(onnxmodel.export(model, tokenizer, staged_model))
        if "onnx_int8" in record.onnx:
            record = replace(record, manifest=replace(record.manifest, onnx_int8=onnxmodel.quantize_int8(
                model, tokenizer, staged_model, record.check_rows)))
            saved += [onnxmodel.ONNX_INT8_FILE] if record.manifest.onnx_int8["kept"] else []
        write_json(staged_model / METRICS, record.metrics.to_json())
        write_training_stats(out / "training_stats.csv", record.stats)
        plot_loss_curve(out / "loss_curve.png", record.stats)
        if record.test is not None:
            _test_files(out, record)
        write_json(staged_model / RUN_MANIFEST, record.manifest.to_json())
        write_atomic(staged_model / "README.md", str(card.render(record.manifest, record.metrics,
                                                                 [s.row() for s in record.stats])).encode())
        checked = reload_check(model, tokenizer, staged_model, record.check_rows)
    logs.event("artifacts_saved", f"model saved to {model_dir} (reload check passed on {checked} rows)",
               model_dir=str(model_dir), output_data_dir=str(output_data_dir),
               files=saved + [METRICS, RUN_MANIFEST, "README.md"], reload_check_rows=checked)
    return saved


PACKAGES = ("seqcls", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "scikit-learn")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = host_platform.python_version()
    return found


def device_record(device: torch.device, precision: str) -> dict[str, object]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else host_platform.processor() or host_platform.machine()
    return {"type": device.type, "precision": precision, "name": name, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def run_manifest(run: dict[str, Any], model_source: str, channels: list[Channel], data_facts: dict[str, Any]) -> RunManifest:
    """run_manifest.json: `run` (id, platform, commit, settings, device, timing, partial, trackers) plus the inputs
    with their digests, what the data stage settled (rows per split, validation source, the max_length
    used) and the package versions: enough to rerun the job, or to predict like it, from this file alone."""
    return RunManifest(run["run_id"], run["platform"], run["git_commit"], run["settings"], model_source,
                       model_source_files(model_source),
                       DataRecord([f for channel in channels for f in channel.files], **data_facts), package_versions(),
                       run.get("device"), run.get("timing"), run.get("partial"), run.get("trackers"))
