"""The model card (README.md in the model folder): written by a real run of `seqcls train` in a child process,
then parsed back with huggingface_hub's own `ModelCard.load`, as the Hub reads it, and checked against the
run's metrics.json, training_stats.csv and run_manifest.json."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shlex

import pytest
from huggingface_hub import ModelCard

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_subprocess, write_tree
from seqcls.saving import card
from seqcls.records import Metrics, RunManifest
from seqcls.settings import FIELDS, resolve

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def cola_as_csv(lines: str) -> str:
    """CoLA rows as the ecosystem's `sentence,label` CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sentence", "label"])
    writer.writerows([row[3], row[1]] for row in csv.reader(io.StringIO(lines), delimiter="\t", quoting=csv.QUOTE_NONE))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory, cola_dir):
    """A CSV train channel and a headerless CoLA test file; 2 epochs of a tiny model built in tmp."""
    root = tmp_path_factory.mktemp("opt_ml")
    model = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())
    write_tree(root, {"data/train/train.csv": cola_as_csv(cola_rows(cola_dir, "in_domain_train.tsv", 60)),
                      "data/test/test.tsv": cola_rows(cola_dir, "out_of_domain_dev.tsv", 30)})
    args = ["--model", str(model), "--epochs", "2", "--batch_size", "8", "--max_length", "32", "--learning_rate", "1e-4",
            "--base_model", BASE, "--run_id", "card-run"]
    outcome = run_subprocess(root, args)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return outcome


def test_the_card_is_hub_metadata_that_parses_back(run):
    model_dir = run.root / "model"
    meta = ModelCard.load(model_dir / "README.md").data.to_dict()
    assert (meta["base_model"], meta["library_name"], meta["pipeline_tag"]) == (BASE, "transformers", "text-classification")
    assert "datasets" not in meta  # local files: no Hub dataset to name
    assert "partial" not in meta["tags"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    [entry] = meta["model-index"]
    assert entry["name"] == "card-run"
    [result] = entry["results"]
    assert result["task"]["type"] == "text-classification"
    assert (result["dataset"]["type"], result["dataset"]["name"], result["dataset"]["split"]) == ("csv", "test.tsv", "test")
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"matthews_correlation": round(metrics["test"]["mcc"], 4),
                      "accuracy": round(metrics["test"]["accuracy"], 4), "f1": round(metrics["test"]["f1"], 4)}
    saved = next(e for e in run.events if e["event"] == "artifacts_saved")
    assert "README.md" in saved["files"]


def test_the_body_holds_the_runs_own_numbers(run):
    model_dir = run.root / "model"
    text = ModelCard.load(model_dir / "README.md").text
    manifest = json.loads((model_dir / "run_manifest.json").read_text())
    for f in manifest["data"]["files"]:  # every data file with its rows
        assert f"| {f['channel']} | `{f['path']}` | {f['rows']} | text `sentence`, label `label` " in text
    assert "train 54, validation 6, test 30" in text
    with (run.root / "output" / "data" / "training_stats.csv").open() as handle:
        for row in csv.DictReader(handle):  # each epoch's validation metrics, as training_stats.csv has them
            assert f"| {row['epoch']} | {float(row['train_loss']):.4f} | {float(row['val_loss']):.4f} |" in text
    test = json.loads((model_dir / "metrics.json").read_text())["test"]
    assert f"| {test['loss']:.4f} | {test['mcc']:.4f} | {test['accuracy']:.4f} |" in text
    assert "| `learning_rate` | `0.0001` | cli |" in text
    assert "Labels (id order, as in config.json's id2label): `0`, `1`." in text
    assert "## Intended use and limits" in text and "Partial model" not in text


def test_the_reproduce_command_resolves_to_the_same_weight_settings(run):
    """Parsed as `seqcls train` would parse it: the same data files, model, and every setting that changes the weights."""
    manifest = json.loads((run.root / "model" / "run_manifest.json").read_text())
    text = ModelCard.load(run.root / "model" / "README.md").text
    command = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    argv = shlex.split(command)
    assert argv[:2] == ["seqcls", "train"]
    pairs = dict(zip(argv[2::2], argv[3::2]))
    assert pairs.pop("--train") == str(run.root / "input" / "data" / "train" / "train.csv")
    assert pairs.pop("--test") == str(run.root / "input" / "data" / "test" / "test.tsv")
    assert pairs.pop("--model_name_or_path") == manifest["model_source"]
    assert not {"--text_column", "--label_column"} & pairs.keys()  # left to the header, so chosen again the same way
    again = resolve([("cli", {name.removeprefix("--"): value for name, value in pairs.items()})]).settings.as_dict()
    recorded = {name: entry["value"] for name, entry in manifest["settings"].items()}
    math = [name for name, f in FIELDS.items() if f.metadata["math"] and name != "model_name_or_path"]
    assert {n: again[n] for n in math} == {n: recorded[n] for n in math}


def test_a_partial_model_says_so(run):
    """What save_run writes for a stopped run (manifest and metrics carry `partial`): the card warns, tags it,
    and claims no test results."""
    manifest = json.loads((run.root / "model" / "run_manifest.json").read_text())
    metrics = json.loads((run.root / "model" / "metrics.json").read_text())
    partial = {"reason": "stopped by SIGTERM", "stopped_at_step": 9, "epochs_completed": 1, "weights": "end of epoch 1"}
    metrics = dataclasses.replace(Metrics.from_json(metrics), test=None, partial=partial)
    with (run.root / "output" / "data" / "training_stats.csv").open() as handle:
        stats = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)][:1]
    rendered = card.render(dataclasses.replace(RunManifest.from_json(manifest), partial=partial), metrics, stats)
    assert "**Partial model.**" in rendered.text and "end of epoch 1" in rendered.text
    meta = rendered.data.to_dict()
    assert "partial" in meta["tags"] and "model-index" not in meta


def test_a_local_folder_is_never_a_base_model(tmp_path):
    assert card.hub_id(str(tmp_path)) is None
    assert card.hub_id("/opt/ml/input/data/model") is None
    assert card.hub_id(BASE) == BASE
