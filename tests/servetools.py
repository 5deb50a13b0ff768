"""Models for the serving tests, trained once per session by the real `seqcls train` on real CoLA rows, and
the reference answers `seqcls predict` gives for the rows the endpoints are asked about.

Three problem types, each on MiniLM cut to one layer (a fresh head per problem type), so a model trains in
seconds on CPU:
- binary: CoLA's acceptability label, decision_threshold=auto (a threshold tuned on validation, in config.json);
- multi_label: tags derived from each sentence (acceptable, long, negation, question), thresholds per label;
- regression: the CoLA label plus the word count / 10.
The rows asked about are the first 32 of CoLA's out_of_domain_dev.tsv, never seen in training.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import os
import shutil
import signal

import pytest

from jobtools import FOREIGN_ENV_PREFIXES, TOKENIZER_FILES
from targets import score, tags, write_csv

TRAIN_ROWS, ASKED_ROWS = 240, 32
TRAIN_ARGS = ["--epochs", "3", "--batch_size", "16", "--learning_rate", "1e-3", "--log_every_steps", "50"]


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path  # the run's model folder (what SageMaker gets as model.tar.gz, Vertex as AIP_STORAGE_URI)
    texts: list[str]  # the rows asked about
    expected: list[dict[str, object]]  # `seqcls predict` on those rows, as the endpoint's JSON records


def small_encoder(folder: Path, minilm: Path) -> Path:
    """MiniLM cut to its first layer (pretrained embeddings and layer 0, no head): rows get distinct scores after
    a few seconds of training, where a randomly initialised tiny BERT answers every row alike."""
    from transformers import AutoModel

    AutoModel.from_pretrained(minilm, num_hidden_layers=1).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (minilm / name).exists():
            shutil.copy(minilm / name, folder / name)
    return folder


def _cola(cola_dir: Path, name: str) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in (cola_dir / name).open(encoding="utf-8")]


def seqcls(args: list[str]) -> None:
    """The real CLI (`seqcls.cli.main`, what the console script calls) in this process, to spare a torch import per
    call; with the platforms' variables removed and the SIGTERM handler it installs put back afterwards."""
    from seqcls import cli

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(FOREIGN_ENV_PREFIXES)]:
            patch.delenv(key)
        patch.setenv("SEQCLS_GIT_COMMIT", "test")
        try:
            code = cli.main(args)
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert code == 0, f"seqcls {' '.join(args)} exited {code}"


def _train(folder: Path, tiny: Path, train: Path, args: list[str]) -> Path:
    seqcls(["train", "--train", str(train), "--model_name_or_path", str(tiny), "--output_dir", str(folder / "run"),
            *TRAIN_ARGS, *args])
    return folder / "run" / "model"


def predicted_records(predictions_csv: Path, problem_type: str, labels: list[str], delimiter: str = ",") -> list[dict]:
    """`seqcls predict`'s CSV columns as the endpoint's records: {"label"|"labels", "scores"} or {"score"}."""
    with predictions_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if problem_type == "regression":
        return [{"score": float(row["predicted"])} for row in rows]
    key = "labels" if problem_type == "multi_label" else "label"
    records = []
    for row in rows:
        value = row["predicted"]
        name = ([tag for tag in value.split(delimiter) if tag] if problem_type == "multi_label" else value)
        records.append({key: name, "scores": {label: float(row[f"prob_{label}"]) for label in labels}})
    return records


def reference(model: Path, texts: list[str], scratch: Path) -> list[dict]:
    """`seqcls predict` on the texts."""
    rows = write_csv(scratch / "asked.csv", ["text"], [[t] for t in texts])
    out = scratch / "asked.predictions.csv"
    seqcls(["predict", "--model", str(model), "--input", str(rows), "--output", str(out)])
    config = json.loads((model / "config.json").read_text())
    problem_type = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}.get(
        config.get("problem_type"), "regression")
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return predicted_records(out, problem_type, labels)


def train_models(root: Path, cola_dir: Path, minilm: Path) -> dict[str, ServedModel]:
    """The three models and `seqcls predict`'s answers for the 32 asked rows."""
    tiny = small_encoder(root / "small", minilm)
    rows = _cola(cola_dir, "in_domain_train.tsv")
    train = rows[::len(rows) // TRAIN_ROWS][:TRAIN_ROWS]
    asked = [row[3] for row in _cola(cola_dir, "out_of_domain_dev.tsv")[:ASKED_ROWS]]
    files = {
        "binary": (write_csv(root / "binary.csv", ["text", "label"], [[r[3], r[1]] for r in train]),
                   ["--decision_threshold", "auto"]),
        "multi_label": (write_csv(root / "multi.csv", ["text", "labels"], [[r[3], ",".join(tags(r))] for r in train]),
                        ["--problem_type", "multi_label", "--select_best", "f1_micro"]),
        "regression": (write_csv(root / "score.csv", ["text", "label"],
                                  [[r[3], score(r)] for r in train]),
                       ["--problem_type", "regression"]),
    }
    models = {}
    for name, (train_file, args) in files.items():
        folder = root / name
        folder.mkdir()
        model = _train(folder, tiny, train_file, args)
        models[name] = ServedModel(name, model, asked, reference(model, asked, folder))
    return models
