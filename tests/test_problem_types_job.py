"""Each problem type end to end through `seqcls train` and `seqcls predict` on CPU, with MiniLM cut to its first
layer (tests/servetools.py: what is checked here needs a trained model, not a good one, at a fraction of the cost),
on targets derived from real CoLA rows (in_domain_train.tsv, 240 rows at a stride for train, 60 other rows for test):

- multi-class (single_label, more than two classes): CoLA's own `source` column (the paper a sentence comes
  from, e.g. `bc01`, `ks08`) as the label; test rows are the ones whose source occurs in train.
- multi_label: tags derived from each sentence: `acceptable` (CoLA label 1), `long` (more than 8 words),
  `question` (ends with '?'), `negation` (contains "not" or "n't"); a row may have none. Train is a CSV
  `text,labels` with cells like `acceptable,long`; test is JSONL with lists, so both formats are read.
- regression: the score CoLA label + word count / 10 (e.g. an acceptable 7-word sentence scores 1.7).

For each: the job succeeds, config.json carries transformers' problem_type, metrics.json the type's
metrics, its picture or table exists, and the saved model loaded by `transformers.pipeline` scores the
rows as `seqcls predict` does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from jobtools import json_lines, run_cli
from storage_servers import free_port
from servetools import small_encoder
from targets import QUICK, cola, score, tags, write_csv

pytestmark = pytest.mark.slow



def train_and_predict(folder: Path, model: Path, train: Path, test: Path, args: list[str]) -> dict[str, object]:
    """`seqcls train` into folder/run, then `seqcls predict` (fp32) of the run's model on the test file."""
    trained = run_cli(["train", "--train", str(train), "--test", str(test), "--model_name_or_path", str(model),
                       "--output_dir", str(folder / "run"), *QUICK, *args], env={"SEQCLS_GIT_COMMIT": "test"})
    assert trained.returncode == 0, trained.stderr[-3000:]
    model_dir = folder / "run" / "model"
    output = folder / "predictions.csv"
    # fp32 as the pipeline computes (auto precision is bf16 on CPUs that compute it natively).
    predicted = run_cli(["predict", "--model", str(model_dir), "--input", str(test), "--output", str(output),
                         "--precision", "fp32"])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with output.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"events": json_lines(trained.stdout), "model": model_dir, "out": folder / "run" / "output" / "data",
            "tensorboard": folder / "run" / "output" / "tensorboard",
            "predictions": rows, "config": json.loads((model_dir / "config.json").read_text()),
            "metrics": json.loads((model_dir / "metrics.json").read_text())}


def card_metrics(model_dir: Path) -> dict[str, tuple[float, object]]:
    """The model card's model-index test metrics, parsed as the Hub parses them: {name: (value, config)}."""
    from huggingface_hub import ModelCard

    [entry] = ModelCard.load(model_dir / "README.md").data.to_dict()["model-index"]
    return {m["name"]: (m["type"], m["value"], m.get("config")) for m in entry["results"][0]["metrics"]}


def scalar_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def pipeline_scores(model_dir: Path, texts: list[str]) -> list[dict[str, float]]:
    """transformers' own text-classification pipeline on the saved folder: every label's score per text."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None, device="cpu")
    return [{entry["label"]: entry["score"] for entry in result} for result in classify(texts)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, minilm_path) -> Path:
    return small_encoder(tmp_path_factory.mktemp("encoder"), minilm_path)


@pytest.fixture(scope="module")
def multi_class(tmp_path_factory, cola_dir, encoder):
    folder = tmp_path_factory.mktemp("multi_class")
    train, test = cola(cola_dir)
    sources = {row[0] for row in train}
    train_file = write_csv(folder / "train.csv", ["text", "label"], [[r[3], r[0]] for r in train])
    test_file = write_csv(folder / "test.csv", ["text", "label"], [[r[3], r[0]] for r in test if r[0] in sources])
    return train_and_predict(folder, encoder, train_file, test_file, [])


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory, cola_dir, encoder):
    folder = tmp_path_factory.mktemp("multi_label")
    train, test = cola(cola_dir)
    train_file = write_csv(folder / "train.csv", ["text", "labels"], [[r[3], ",".join(tags(r))] for r in train])
    test_file = folder / "test.jsonl"
    test_file.write_text("".join(json.dumps({"text": r[3], "labels": tags(r)}) + "\n" for r in test), encoding="utf-8")
    return train_and_predict(folder, encoder, train_file, test_file,
                             ["--problem_type", "multi_label", "--select_best", "f1_micro"])


@pytest.fixture(scope="module")
def regression(tmp_path_factory, cola_dir, encoder):
    folder = tmp_path_factory.mktemp("regression")
    train, test = cola(cola_dir)
    train_file = write_csv(folder / "train.csv", ["text", "label"], [[r[3], score(r)] for r in train])
    test_file = write_csv(folder / "test.csv", ["text", "label"], [[r[3], score(r)] for r in test])
    return train_and_predict(folder, encoder, train_file, test_file, ["--problem_type", "regression"])


def test_multi_class_trains_on_cola_sources_and_pipeline_agrees_with_predict(multi_class):
    config, metrics = multi_class["config"], multi_class["metrics"]
    assert config["problem_type"] == "single_label_classification"
    assert len(config["id2label"]) > 2 and metrics["labels"] == [config["id2label"][str(i)] for i in range(len(metrics["labels"]))]
    assert metrics["test"]["f1_average"] == "macro"
    assert len(metrics["test"]["confusion_matrix"]) == len(metrics["labels"])
    assert {"val_mcc", "val_accuracy", "val_f1", "val_loss"} == set(metrics["validation"])
    assert (multi_class["out"] / "confusion_matrix.png").stat().st_size > 0
    rows = multi_class["predictions"]
    piped = pipeline_scores(multi_class["model"], [r["text"] for r in rows])
    for row, scores in zip(rows, piped, strict=True):
        assert max(scores, key=scores.get) == row["predicted"]
        for label, value in scores.items():
            assert abs(value - float(row[f"prob_{label}"])) < 1e-5


def test_multi_label_trains_saves_thresholds_and_pipeline_gives_predicts_scores(multi_label):
    config, metrics, events = multi_label["config"], multi_label["metrics"], multi_label["events"]
    assert config["problem_type"] == "multi_label_classification"
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert labels == sorted(labels) and {"acceptable", "long"} <= set(labels)
    thresholds = dict(zip(labels, config["label_thresholds"], strict=True))
    assert metrics["label_thresholds"] == {k: round(v, 6) for k, v in thresholds.items()}
    assert {"val_loss", "val_f1_micro", "val_f1_macro", "val_subset_accuracy"} == set(metrics["validation"])
    test = metrics["test"]
    assert {"f1_micro", "f1_macro", "subset_accuracy", "precision_micro", "recall_micro", "loss"} <= test.keys()
    assert set(test["per_label"]) == set(labels)
    assert [e["event"] for e in events if e["event"] in ("epoch_end", "best_epoch_selected")] == ["epoch_end", "best_epoch_selected"]
    with (multi_label["out"] / "per_label_metrics.csv").open() as handle:
        table = {r["label"]: r for r in csv.DictReader(handle)}
    assert set(table) == set(labels) and all(int(table[k]["support"]) == test["per_label"][k]["support"] for k in labels)
    assert card_metrics(multi_label["model"]) == {
        "micro-F1": ("f1", round(test["f1_micro"], 4), "micro"), "macro-F1": ("f1", round(test["f1_macro"], 4), "macro"),
        "subset accuracy": ("accuracy", round(test["subset_accuracy"], 4), None)}
    assert {"val/f1_micro", "val/subset_accuracy", "test/f1_micro", "test/f1_macro"} <= scalar_tags(multi_label["tensorboard"])
    rows = multi_label["predictions"]
    piped = pipeline_scores(multi_label["model"], [r["text"] for r in rows])
    for row, scores in zip(rows, piped, strict=True):
        assert set(scores) == set(labels)
        for label, value in scores.items():
            assert abs(value - float(row[f"prob_{label}"])) < 1e-5
            if abs(value - thresholds[label]) > 1e-4:  # predict decides by the saved thresholds
                assert (label in row["predicted"].split(",")) == (value >= thresholds[label]), (label, row)


def test_regression_trains_and_pipeline_gives_predicts_scores(regression):
    config, metrics = regression["config"], regression["metrics"]
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    assert {"val_loss", "val_pearson", "val_spearman", "val_mse", "val_mae"} == set(metrics["validation"])
    assert {"pearson", "spearman", "mse", "mae", "loss"} <= metrics["test"].keys()
    assert metrics["test"]["mse"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    assert (regression["out"] / "predicted_vs_true.png").stat().st_size > 0
    assert not (regression["out"] / "confusion_matrix.png").exists()
    assert {name: kind for name, (kind, _, _) in card_metrics(regression["model"]).items()} == {
        "Pearson": "pearsonr", "Spearman": "spearmanr", "MSE": "mse", "MAE": "mae"}
    assert "A `regression` text regressor" in (regression["model"] / "README.md").read_text()
    assert {"val/pearson", "val/mse", "test/pearson", "test/mae"} <= scalar_tags(regression["tensorboard"])
    assert "val/mcc" not in scalar_tags(regression["tensorboard"])
    rows = regression["predictions"]
    assert list(rows[0]) == ["text", "predicted"]
    piped = pipeline_scores(regression["model"], [r["text"] for r in rows])
    np.testing.assert_allclose([s["score"] for s in piped], [float(r["predicted"]) for r in rows], atol=1e-5)


@pytest.mark.parametrize("problem_type", ["multi_label", "regression"])
def test_two_gloo_processes_score_the_test_split_as_one_process_does(tmp_path, cola_dir, encoder, problem_type):
    """torch.distributed (2 CPU processes): sharded multi-hot rows or targets train, the gathered test
    predictions (and, multi_label, the thresholds tuned on gathered validation scores) give the metrics
    one process computes from the saved model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from seqcls import data, devices, evaluate, settings

    train, test = cola(cola_dir)
    if problem_type == "multi_label":
        header, target = ["text", "labels"], lambda r: ",".join(tags(r))
    else:
        header, target = ["text", "label"], score
    train_file = write_csv(tmp_path / "train.csv", header, [[r[3], target(r)] for r in train[:120]])
    test_file = write_csv(tmp_path / "test.csv", header, [[r[3], target(r)] for r in test[:51]])
    result = run_cli(["train", "--train", str(train_file), "--test", str(test_file), "--model_name_or_path", str(encoder),
                      "--output_dir", str(tmp_path / "run"), "--problem_type", problem_type, "--precision", "fp32", *QUICK],
                     env={"SEQCLS_NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()), "SEQCLS_GIT_COMMIT": "test",
                          "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert next(r for r in json_lines(result.stdout) if r["event"] == "job_start")["world_size"] == 2
    model_dir = tmp_path / "run" / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())["test"]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    run_settings = settings.resolve([("cli", {"problem_type": problem_type})]).settings
    channel = data.read_channel(test_file, "test", run_settings.reading, explicit=())
    label_map = data.LabelMap([model.config.id2label[i] for i in range(model.config.num_labels)], problem_type)
    encoded, _ = data.tokenize(AutoTokenizer.from_pretrained(model_dir), channel, label_map.encode(channel), 64)
    one = evaluate.predict(model, encoded, 0, 256, devices.Compute(torch.device("cpu"), "fp32"))
    assert one.loss == pytest.approx(metrics["loss"], rel=1e-4)
    if problem_type == "multi_label":
        again = evaluate.multi_label_metrics(encoded.labels, one.predicted, label_map.labels)
        assert again["f1_micro"] == pytest.approx(metrics["f1_micro"])
        for label, values in again["per_label"].items():
            assert values == pytest.approx(metrics["per_label"][label]), label
    else:
        again = evaluate.regression_metrics(encoded.labels, one.predicted)
        assert again == pytest.approx({k: metrics[k] for k in again}, rel=1e-4)

