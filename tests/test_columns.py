"""Columns a user's file already has: with text_column / label_column left at their defaults, the job picks
them from the header the way transformers' run_glue.py does for custom files (`label` is the label,
`sentence1`/`sentence2` a pair, else the single other column the text), plus the common names
`text`/`sentence` and `labels`/`target`. Runs go through the real entry point (`seqcls.cli.main`) on
real CoLA sentences with a tiny model built in tmp; the ambiguous files are cases in test_bad_inputs.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_inprocess, write_tree
from seqcls import data
from seqcls.settings import Reading, Settings

FAST = ["--epochs", "1", "--batch_size", "8", "--max_length", "32"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


@pytest.fixture(scope="module")
def sentences(cola_dir: Path) -> list[tuple[str, str]]:
    """(sentence, label) from real CoLA rows, both labels."""
    rows = [line.rstrip("\n").split("\t") for line in cola_rows(cola_dir, "in_domain_train.tsv", 48).splitlines(keepends=True)]
    return [(row[3], row[1]) for row in rows]


def as_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def data_ready(outcome) -> dict:
    return next(e for e in outcome.events if e.get("event") == "data_ready")


def test_a_text_label_csv_trains_by_default(tmp_path, tiny_model, sentences, monkeypatch, capsys):
    train = as_csv(["text", "label"], [[s, label] for s, label in sentences])
    test = as_csv(["id", "text", "label"], [[str(i), s, label] for i, (s, label) in enumerate(sentences[:12])])
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": train, "data/test/test.csv": test})
    outcome = run_inprocess(root, ["--model", str(tiny_model), *FAST], {}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    chosen = {"text": "text", "text_pair": None, "label": "label", "chosen": "auto"}
    assert data_ready(outcome)["columns"] == {"train": chosen, "validation": chosen, "test": chosen}
    manifest = json.loads((root / "model" / "run_manifest.json").read_text())
    assert [f["columns"] for f in manifest["data"]["files"]] == [chosen, chosen]
    assert manifest["settings"]["text_column"] == {"value": "sentence", "source": "default"}

    # `seqcls predict` chooses again from its input's header: `text` beside an id, no label.
    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text(as_csv(["id", "text"], [["a", sentences[0][0]], ["b", sentences[1][0]]]), encoding="utf-8")
    from seqcls import cli

    code = cli.main(["predict", "--model", str(root / "model"), "--input", str(unlabelled),
                     "--output", str(tmp_path / "out.csv")])
    assert code == 0, capsys.readouterr().err[-2000:]
    with (tmp_path / "out.csv").open(encoding="utf-8") as handle:
        assert [row["text"] for row in csv.DictReader(handle)] == [sentences[0][0], sentences[1][0]]


def test_sentence1_sentence2_label_becomes_a_pair(tmp_path, tiny_model, sentences, monkeypatch, capsys):
    pairs = [[s, sentences[(i + 1) % len(sentences)][0], label] for i, (s, label) in enumerate(sentences)]
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": as_csv(["sentence1", "sentence2", "label"], pairs),
                                            "data/test/test.csv": as_csv(["sentence1", "sentence2", "label"], pairs[:10])})
    outcome = run_inprocess(root, ["--model", str(tiny_model), *FAST], {}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert data_ready(outcome)["columns"]["train"] == {"text": "sentence1", "text_pair": "sentence2", "label": "label",
                                                       "chosen": "auto"}
    with (root / "output" / "data" / "test_predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["text"], r["text_pair"]) for r in rows] == [(p[0], p[1]) for p in pairs[:10]]


def test_explicit_columns_still_win(tmp_path, tiny_model, sentences, monkeypatch, capsys):
    """`review,stars` has no column the rules would pick: the user names them."""
    rows = [[s, "5" if label == "1" else "1"] for s, label in sentences]
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": as_csv(["review", "stars"], rows)})
    args = ["--model", str(tiny_model), *FAST, "--text_column", "review", "--label_column", "stars"]
    outcome = run_inprocess(root, args, {}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert data_ready(outcome)["columns"]["train"] == {"text": "review", "text_pair": None, "label": "stars",
                                                       "chosen": "settings"}
    assert data_ready(outcome)["labels"] == ["1", "5"]


def test_headerless_cola_is_read_as_before(cola_dir, tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 40), encoding="utf-8")
    for explicit in (frozenset(), None):
        channel = data.read_channel(path, "train", Settings().reading, explicit=explicit)
        assert channel.columns.record() == {"text": "sentence", "text_pair": None, "label": "label", "chosen": "cola"}
        assert len(channel.frame) == 40 and channel.frame["text"].str.len().min() > 0


@pytest.mark.parametrize(("header", "expected"), [
    (["source", "label", "original_label", "sentence"], ("sentence", "", "label")),  # CoLA's columns with a header
    (["review", "target"], ("review", "", "target")),
    (["labels", "text", "id"], ("text", "", "labels")),
    (["text", "label", "target"], ("text", "", "label")),  # run_glue's `label` wins
])
def test_the_header_rules(header, expected):
    rule = data.ColumnRule.from_settings(Settings().reading, explicit=frozenset())
    columns = data.choose_columns(header, rule, labelled=True, path=Path("f.csv"))
    assert (columns.text, columns.pair, columns.label, columns.chosen) == (*expected, "auto")


def test_an_explicit_text_column_turns_off_pair_detection():
    rule = data.ColumnRule.from_settings(Settings(text_column="sentence1").reading, explicit={"text_column"})
    columns = data.choose_columns(["sentence1", "sentence2", "label"], rule, labelled=True, path=Path("f.csv"))
    assert (columns.text, columns.pair, columns.label) == ("sentence1", "", "label")


def test_the_reading_group_carries_the_flat_settings_the_readers_use():
    """data/ reads files through `Settings.reading`: the column names, the problem type and the tag delimiter."""
    given = Settings(text_column="premise", text_pair_column="hypothesis", label_column="gold",
                     problem_type="multi_label", label_delimiter="|")
    assert given.reading == Reading(problem_type="multi_label", label_delimiter="|", text_column="premise",
                                    text_pair_column="hypothesis", label_column="gold")
