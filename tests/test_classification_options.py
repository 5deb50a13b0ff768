"""Imbalance and length options end to end on real CoLA rows with MiniLM: class_weights=balanced,
decision_threshold=auto and max_length=auto in one `seqcls train`, then `seqcls predict` and
`transformers.pipeline` on the saved model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef
from sklearn.utils.class_weight import compute_class_weight

from jobtools import json_lines, make_tree, run_cli

pytestmark = pytest.mark.slow

OPTIONS = {"epochs": "2", "batch_size": "16", "learning_rate": "5e-5", "select_best": "mcc",
           "class_weights": "balanced", "decision_threshold": "auto", "max_length": "auto",
           "max_length_percentile": "95"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, cola_dir, minilm_path):
    root = make_tree(tmp_path_factory.mktemp("options"), cola_dir, OPTIONS, model=minilm_path)
    result = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "options"})
    assert result.returncode == 0, result.stderr[-3000:]
    return root, {e["event"]: e for e in json_lines(result.stdout)}


def _rows(path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_balanced_weights_are_scikit_learns_for_the_training_labels(run):
    _, events = run
    ready = events["data_ready"]
    balance = ready["label_balance"]["train"]
    ids = np.repeat([0, 1], [balance["0"], balance["1"]])
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=ids)
    assert [ready["class_weights"][label] for label in ("0", "1")] == pytest.approx(expected, rel=1e-5)


def test_max_length_auto_is_logged_recorded_and_used(run):
    root, events = run
    chosen = events["max_length_chosen"]
    manifest = json.loads((root / "model" / "run_manifest.json").read_text())
    assert chosen["max_length"] % 8 == 0 and chosen["percentile"] == 95
    assert chosen["max_length"] >= chosen["percentile_tokens"] and chosen["max_length"] - chosen["percentile_tokens"] < 8
    assert events["data_ready"]["max_length"] == manifest["data"]["max_length"] == chosen["max_length"]
    assert manifest["settings"]["max_length"]["value"] == "auto"
    assert events["data_ready"]["truncated_rows"]["train"] == chosen["train_rows_truncated"] > 0


def test_the_auto_threshold_is_saved_and_decides_the_test_metrics(run):
    root, events = run
    threshold = events["decision_threshold_chosen"]["threshold"]
    config = json.loads((root / "model" / "config.json").read_text())
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert 0 < threshold < 1 and config["decision_threshold"] == pytest.approx(threshold, abs=1e-6)
    assert metrics["decision_threshold"] == pytest.approx(threshold, abs=1e-6)
    assert events["decision_threshold_chosen"]["val_mcc"] >= events["decision_threshold_chosen"]["val_mcc_at_half"]
    rows = _rows(root / "output" / "data" / "test_predictions.csv")
    scores = np.array([float(r["prob_1"]) for r in rows])
    clear = np.abs(scores - config["decision_threshold"]) > 1e-5  # the CSV rounds probabilities to 6 places
    assert [r["predicted"] for r, keep in zip(rows, clear) if keep] == \
        [str(int(s >= config["decision_threshold"])) for s, keep in zip(scores, clear) if keep]
    labels = [int(r["label"]) for r in rows]
    assert metrics["test"]["mcc"] == pytest.approx(matthews_corrcoef(labels, [int(r["predicted"]) for r in rows]))


def test_predict_and_pipeline_agree_with_the_job(run, tmp_path):
    """`seqcls predict` reuses the run's worked-out max_length and its threshold; transformers.pipeline gives
    the same scores (it takes the argmax, so its labels ignore the threshold: docs/classification.md)."""
    from transformers import pipeline

    root, _ = run
    output = tmp_path / "predictions.csv"
    result = run_cli(["predict", "--model", str(root / "model"), "--input", str(root / "input" / "data" / "test"),
                      "--output", str(output)])
    assert result.returncode == 0, result.stderr[-2000:]
    got, expected = _rows(output), _rows(root / "output" / "data" / "test_predictions.csv")
    assert [r["predicted"] for r in got] == [r["predicted"] for r in expected]
    assert [float(r["prob_1"]) for r in got] == pytest.approx([float(r["prob_1"]) for r in expected], abs=2e-6)
    classify = pipeline("text-classification", model=str(root / "model"), device="cpu", top_k=None)
    manifest = json.loads((root / "model" / "run_manifest.json").read_text())
    texts = [r["text"] for r in got[:16]]
    scored = classify(texts, truncation=True, max_length=manifest["data"]["max_length"])
    # precision=auto computes in bf16 on a CPU with native bf16, the pipeline in fp32: equal to ~1e-4.
    assert [next(s["score"] for s in row if s["label"] == "1") for row in scored] == \
        pytest.approx([float(r["prob_1"]) for r in got[:16]], abs=1e-3)


def test_predict_truncates_to_the_length_config_json_names(run, tmp_path):
    """config.json is the one inference contract: its inference_max_length (what code/inference.py and the ONNX
    export read) decides predict's truncation, not run_manifest.json's copy; --max_length still overrides it."""
    import shutil

    from seqcls import predict

    root, _ = run
    folder = shutil.copytree(root / "model", tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    manifest = json.loads((folder / "run_manifest.json").read_text())
    assert config["inference_max_length"] == manifest["data"]["max_length"]
    config["inference_max_length"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    assert predict.load(str(folder), {}).max_length == 7
    assert predict.load(str(folder), {"max_length": "12"}).max_length == 12
    del config["inference_max_length"]  # a folder from before config.json carried it: the manifest's
    (folder / "config.json").write_text(json.dumps(config))
    assert predict.load(str(folder), {}).max_length == manifest["data"]["max_length"]
