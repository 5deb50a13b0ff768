"""Rows that cross splits: train rows whose text is also in validation or test, and train texts with two labels.
The unit tests call the data stage's check; the runs go through the real entry point on real CoLA sentences with a
tiny model built in tmp."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_inprocess, write_tree
from seqcls import data
from seqcls.errors import DataError
from seqcls.settings import Settings

FAST = ["--epochs", "1", "--batch_size", "8", "--max_length", "32"]
LEAKED = 7


def channel(name: str, rows: list[tuple[str, str]]) -> data.Channel:
    import pandas as pd

    frame = pd.DataFrame({data.TEXT: [t for t, _ in rows], data.LABEL: [label for _, label in rows]})
    return data.Channel(name, frame, [])


@pytest.fixture(scope="module")
def sentences(cola_dir: Path) -> list[tuple[str, str]]:
    rows = [line.split("\t") for line in cola_rows(cola_dir, "in_domain_train.tsv", 140).splitlines()]
    unique = list(dict.fromkeys((row[3], row[1]) for row in rows))
    assert len({t.casefold() for t, _ in unique}) == len(unique) == 140
    return unique


def leaky(sentences: list[tuple[str, str]]) -> tuple[list, list, list]:
    """train 100 rows; test 20 rows of which LEAKED are train texts, re-cased and re-spaced as exports do."""
    train, test = sentences[:100], sentences[100:]
    copied = [("  " + t.upper().replace(" ", "   ") + "\t", label) for t, label in train[10:10 + LEAKED]]
    return train, test[:20 - LEAKED] + copied, train[10:10 + LEAKED]


def test_an_overlap_of_k_rows_is_reported_as_exactly_k_with_examples(sentences):
    train, test, copied = leaky(sentences)
    kept, checks = data.check_splits(channel("train", train), {"validation": channel("validation", sentences[:0] + [("a b", "1")]),
                                                              "test": channel("test", test)}, Settings())
    assert checks.overlap == {"validation": 0, "test": LEAKED}
    assert checks.overlap_examples["test"] == [t for t, _ in copied[:3]]
    assert len(kept.frame) == len(train) and checks.dropped == 0  # warn keeps them


def test_drop_removes_exactly_the_overlapping_train_rows(sentences):
    train, test, copied = leaky(sentences)
    kept, checks = data.check_splits(channel("train", train), {"test": channel("test", test)},
                                     Settings(split_overlap="drop"))
    assert checks.dropped == LEAKED
    assert list(kept.frame[data.TEXT]) == [t for t, _ in train if (t, _) not in copied]


def test_fail_refuses_with_the_count_and_an_example(sentences):
    train, test, copied = leaky(sentences)
    with pytest.raises(DataError, match=rf"train rows cross splits: {LEAKED} also in test .*e.g. '{copied[0][0][:20]}"):
        data.check_splits(channel("train", train), {"test": channel("test", test)}, Settings(split_overlap="fail"))


def test_texts_with_two_labels_in_train_are_reported(sentences):
    train = sentences[:50] + [(sentences[3][0].lower(), "1" if sentences[3][1] == "0" else "0"), (sentences[8][0], sentences[8][1])]
    _, checks = data.check_splits(channel("train", train), {"test": channel("test", sentences[60:70])}, Settings())
    assert (checks.conflicting_texts, checks.conflicting_rows) == (1, 2)
    assert checks.conflict_examples == [{"text": sentences[3][0], "labels": ["0", "1"]}]


def test_sentence_pairs_overlap_only_when_both_texts_match():
    import pandas as pd

    def pairs(name: str, rows: list[tuple[str, str, str]]) -> data.Channel:
        return data.Channel(name, pd.DataFrame(rows, columns=[data.TEXT, data.PAIR, data.LABEL]), [])

    train = pairs("train", [("a", "b", "0"), ("a", "c", "1"), ("d", "e", "1")])
    _, checks = data.check_splits(train, {"test": pairs("test", [("A", "B", "0"), ("a", "x", "1")])}, Settings())
    assert checks.overlap == {"test": 1} and checks.conflicting_texts == 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


def as_csv(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([("text", "label"), *rows])
    return buffer.getvalue()


def run(tmp_path, sentences, tiny_model, monkeypatch, capsys, *args: str):
    train, test, _ = leaky(sentences)
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": as_csv(train), "data/test/test.csv": as_csv(test),
                                            "data/validation/validation.csv": as_csv(sentences[120:140])})
    return run_inprocess(root, ["--model", str(tiny_model), *FAST, *args], {}, monkeypatch, capsys)


@pytest.mark.slow
def test_a_run_warns_by_default_and_records_the_checks(tmp_path, sentences, tiny_model, monkeypatch, capsys):
    outcome = run(tmp_path, sentences, tiny_model, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    warned = [e for e in outcome.events if e.get("event") == "split_overlap"]
    assert len(warned) == 1 and warned[0]["overlap"]["test"] == LEAKED and warned[0]["level"] == "WARNING"
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    assert ready["split_checks"]["overlap"]["test"] == LEAKED and ready["rows"]["test"] == 20
    record = json.loads((outcome.root / "model" / "run_manifest.json").read_text())
    assert record["data"]["split_checks"]["overlap"]["test"] == LEAKED


@pytest.mark.slow
def test_a_run_with_fail_exits_2_before_training(tmp_path, sentences, tiny_model, monkeypatch, capsys):
    outcome = run(tmp_path, sentences, tiny_model, monkeypatch, capsys, "--split_overlap", "fail")
    assert outcome.code == 2
    assert not [e for e in outcome.events if e.get("event") in ("data_ready", "train_progress")]
    failure = (outcome.root / "output" / "failure").read_text()
    assert f"{LEAKED} also in test" in failure and "split_overlap=drop" in failure


@pytest.mark.slow
def test_a_run_with_drop_trains_without_the_overlapping_rows(tmp_path, sentences, tiny_model, monkeypatch, capsys):
    outcome = run(tmp_path, sentences, tiny_model, monkeypatch, capsys, "--split_overlap", "drop")
    assert outcome.code == 0, outcome.stderr[-3000:]
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    assert ready["split_checks"]["dropped"] == LEAKED
    assert ready["rows"]["train"] == 100 - LEAKED
    assert ready["split_checks"]["overlap"]["validation"] == 0
