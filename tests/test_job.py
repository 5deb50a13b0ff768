"""End to end through the real entry point: real CoLA rows, the real MiniLM model, a temp SageMaker tree."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file

from jobtools import json_lines, make_tree, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cola_dir, minilm_path):
    root = make_tree(tmp_path_factory.mktemp("opt_ml"), cola_dir, model=minilm_path, hyperparameters={
        "epochs": "2", "batch_size": "16", "learning_rate": "5e-5", "log_every_steps": "5",
        "select_best": "loss", "group_by_length": "True",
    })
    result = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "e2e-job"})
    return root, result


def test_exit_zero_and_stdout_is_only_json(finished_run):
    _, result = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    for record in records:
        assert {"timestamp", "level", "severity", "message", "event", "rank", "host"} <= record.keys()
        assert record["level"] == record["severity"]
    events = [r["event"] for r in records]
    stages = ["job_start", "data_ready", "training_path", "train_progress", "epoch_end", "test_metrics",
              "artifacts_saved", "job_end"]
    assert [e for e in dict.fromkeys(events) if e in stages] == stages
    assert events.count("epoch_end") == 2


def test_events_carry_the_tutorial_numbers(finished_run):
    _, result = finished_run
    records = {r["event"]: r for r in json_lines(result.stdout)}
    start = records["job_start"]
    assert start["run_id"] == "e2e-job" and start["platform"] == "sagemaker"
    assert start["settings"]["epochs"] == {"value": 2, "source": "hyperparameters.json"}
    ready = records["data_ready"]
    assert ready["rows"] == {"train": 216, "validation": 24, "test": 120}
    assert ready["validation_source"] == "split"
    assert sum(ready["label_balance"]["train"].values()) == 216
    assert 10 < ready["longest_tokens"]["train"] <= 64 and ready["truncated_rows"]["train"] == 0
    assert records["training_path"]["path"] == "eager" and records["training_path"]["reason"] == "device is cpu"
    progress = [r for r in json_lines(result.stdout) if r["event"] == "train_progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 2 * 14
    assert all(k in progress[0] for k in ("loss", "lr", "samples_per_s", "eta_s", "elapsed_s", "epoch"))
    epoch = records["epoch_end"]
    assert {"train_loss", "val_loss", "val_accuracy", "val_mcc", "val_f1", "train_seconds", "val_seconds"} <= epoch.keys()
    assert -1 <= records["test_metrics"]["test_mcc"] <= 1
    assert records["job_end"]["test_mcc"] == records["test_metrics"]["test_mcc"]


def test_every_artifact_is_written(finished_run):
    root, _ = finished_run
    model_dir, out = root / "model", root / "output" / "data"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.json", "run_manifest.json",
                 "README.md"):
        assert (model_dir / name).is_file(), name
    assert not any(p.name.endswith(".bin") for p in model_dir.iterdir())
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")], "staging left behind"
    for name in ("training_stats.csv", "loss_curve.png", "confusion_matrix.png", "test_predictions.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (root / "output" / "failure").exists()

    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["label2id"] == {"0": 0, "1": 1}
    assert "classifier.weight" in load_file(model_dir / "model.safetensors")

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert {"mcc", "accuracy", "f1", "precision", "recall", "confusion_matrix"} <= metrics["test"].keys()
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 120
    with (out / "training_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert metrics["best_epoch"] == int(best["epoch"])
    with (out / "test_predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 120 and {"text", "label", "predicted", "prob_0", "prob_1"} <= predictions[0].keys()
    assert abs(float(predictions[0]["prob_0"]) + float(predictions[0]["prob_1"]) - 1) < 1e-4

    manifest = json.loads((model_dir / "run_manifest.json").read_text())
    assert manifest["run_id"] == "e2e-job"
    assert manifest["settings"]["select_best"] == {"value": "loss", "source": "hyperparameters.json"}
    assert {f["channel"] for f in manifest["data"]["files"]} == {"train", "test"}
    assert all(len(f["sha256"]) == 64 for f in manifest["data"]["files"])
    assert manifest["data"]["rows"] == {"train": 216, "validation": 24, "test": 120}
    assert {"torch", "transformers", "python"} <= manifest["packages"].keys()
    assert manifest["device"]["type"] == "cpu"


def test_the_saved_model_reloads_and_agrees(finished_run):
    _, result = finished_run
    saved = next(r for r in json_lines(result.stdout) if r["event"] == "artifacts_saved")
    assert saved["reload_check_rows"] == 8


def test_a_reload_that_predicts_differently_fails_the_job(tmp_path, minilm_path):
    """The check itself: a saved folder whose model disagrees with the trained one must raise, not pass."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from jobtools import build_tiny_model
    from seqcls import data
    from seqcls.saving import artifacts
    from seqcls.errors import SeqclsError

    folder = build_tiny_model(tmp_path / "tiny", minilm_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    channel = data.Channel("test", pd.DataFrame({data.TEXT: [f"sentence {i} here." for i in range(8)]}), [])
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([-100.0, 100.0]))
    model.save_pretrained(folder)  # the saved model predicts label 1 everywhere
    assert artifacts.reload_check(model, tokenizer, folder, channel) == 8
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([100.0, -100.0]))  # the trained one now says 0
    with pytest.raises(SeqclsError, match="reload check failed"):
        artifacts.reload_check(model, tokenizer, folder, channel)
