"""The promotion gate on the same rows (issue 25): the current run scores this run's rows as `seqcls predict` would.

Real jobs (the 1-layer model, CoLA rows, seconds each) publish to a local output_uri; the gate fetches the
champion through its manifest, scores the challenger's test rows, bootstraps the paired difference, and decides
by `promote_rule`; a champion that cannot score the rows gives the `promote_if_incomparable` outcome.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_inprocess

pytestmark = pytest.mark.slow  # whole jobs, in-process


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cola_dir) -> dict[str, Path]:
    """200 CoLA training rows, 120 test rows (and the same rows with 30% of labels flipped), a multi_label set."""
    base = tmp_path_factory.mktemp("inputs")
    (base / "train.tsv").write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    test = cola_rows(cola_dir, "out_of_domain_dev.tsv", 120)
    (base / "test.tsv").write_text(test, encoding="utf-8")
    rng, noisy = random.Random(7), []
    for line in test.splitlines():
        source, label, mark, text = line.split("\t")
        noisy.append("\t".join([source, str(1 - int(label)) if rng.random() < 0.3 else label, mark, text]))
    (base / "noisy.tsv").write_text("\n".join(noisy) + "\n", encoding="utf-8")
    tags = ["text,label"] + [f'sentence number {i} about {("cats", "dogs", "both")[i % 3]},"{("a", "b", "a,b")[i % 3]}"'
                             for i in range(90)]
    (base / "tags.csv").write_text("\n".join(tags) + "\n", encoding="utf-8")
    return {"train": base / "train.tsv", "test": base / "test.tsv", "noisy": base / "noisy.tsv", "tags": base / "tags.csv",
            "model": build_tiny_model(base / "tiny", minilm_folder())}


def job(root: Path, inputs: dict[str, Path], uri: str, run_id: str, monkeypatch, capsys, *extra: str,
        train: str = "train", test: str = "test") -> dict:
    """One gated run; returns its `promotion` event."""
    args = ["--train", str(inputs[train]), "--test", str(inputs[test]), "--model_name_or_path", str(inputs["model"]),
            "--epochs", "1", "--max_length", "32", "--learning_rate", "1e-3", "--output_dir", str(root / run_id),
            "--run_id", run_id, "--output_uri", uri, "--promote_if", "test_loss", *extra]
    outcome = run_inprocess(root / run_id, args, {}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    [event] = [e for e in outcome.events if e.get("event") == "promotion"]
    return event


def latest(uri: str) -> str:
    return json.loads((Path(uri) / "latest.json").read_text())["run_id"]


def test_an_identical_retrain_is_promoted_by_not_worse_and_kept_by_better(inputs, tmp_path, monkeypatch, capsys) -> None:
    uri = str(tmp_path / "models")
    job(tmp_path, inputs, uri, "week-1", monkeypatch, capsys)
    same = job(tmp_path, inputs, uri, "week-2", monkeypatch, capsys)  # same data, seed and settings: same weights
    assert same["promoted"] and same["comparison"]["improvement"] == pytest.approx(0, abs=1e-6)
    assert same["comparison"]["interval"] == pytest.approx([0, 0], abs=1e-6)
    assert same["comparison"]["rows"] == 120 and len(same["comparison"]["rows_sha256"]) == 64
    strict = job(tmp_path, inputs, uri, "week-3", monkeypatch, capsys, "--promote_rule", "better")
    assert not strict["promoted"] and "lower bound not above tolerance 0 (promote_rule=better)" in strict["reason"]
    assert latest(uri) == "week-2"


def test_the_bootstrap_interval_is_reproducible_and_brackets_the_difference(inputs, tmp_path, monkeypatch, capsys) -> None:
    runs = []
    for place in ("a", "b"):  # the same champion and challenger, twice
        uri = str(tmp_path / place / "models")
        job(tmp_path / place, inputs, uri, "week-1", monkeypatch, capsys)
        runs.append(job(tmp_path / place, inputs, uri, "week-2", monkeypatch, capsys, "--epochs", "2",
                        "--promote_rule", "better"))
    first, second = (run["comparison"] for run in runs)
    assert first["interval"] == second["interval"] and first["resamples"] == 1000
    low, high = first["interval"]
    assert low <= first["improvement"] <= high and low < high


def test_the_gate_decides_on_the_challengers_rows_and_records_the_published_number_beside(inputs, tmp_path, monkeypatch,
                                                                                         capsys) -> None:
    """Week 1 is tested on clean rows, week 2 on the same texts with 30% of labels flipped: the champion's number on
    week 2's rows differs from the one it published, and the decision follows the number on week 2's rows.
    (The issue's full contrast, a better model kept by the old rule, needs models that learn CoLA: MiniLM runs in
    tests/test_promotion_contrast.py.)"""
    uri = str(tmp_path / "models")
    weak = job(tmp_path, inputs, uri, "week-1", monkeypatch, capsys, "--learning_rate", "0.9")
    strong = job(tmp_path, inputs, uri, "week-2", monkeypatch, capsys, "--epochs", "3", test="noisy")
    assert strong["current_published_value"] == weak["value"]
    assert abs(strong["current_value"] - weak["value"]) > 0.01, "the champion scored other rows than it published on"
    assert strong["value"] < strong["current_value"] and strong["promoted"] and latest(uri) == "week-2"
    again = job(tmp_path, inputs, uri, "week-3", monkeypatch, capsys, "--learning_rate", "0.9")
    assert again["value"] > again["current_value"] and not again["promoted"] and latest(uri) == "week-2"


@pytest.mark.parametrize("policy", ["keep", "promote"])
def test_an_incomparable_champion_gives_the_configured_outcome_and_the_run_is_published(policy, inputs, tmp_path,
                                                                                       monkeypatch, capsys) -> None:
    uri = str(tmp_path / "models")
    job(tmp_path, inputs, uri, "tagger", monkeypatch, capsys, "--problem_type", "multi_label", train="tags", test="tags")
    event = job(tmp_path, inputs, uri, "classifier", monkeypatch, capsys, "--promote_if_incomparable", policy)
    assert event["promoted"] is (policy == "promote")
    assert event["incomparable"] == "it is a multi_label model and this run is single_label"
    assert f"promote_if_incomparable={policy}" in event["reason"]
    assert (Path(uri) / "classifier" / "manifest.json").is_file()
    assert latest(uri) == ("classifier" if policy == "promote" else "tagger")


def test_a_corrupt_champion_is_incomparable_not_a_crash(inputs, tmp_path, monkeypatch, capsys) -> None:
    uri = str(tmp_path / "models")
    job(tmp_path, inputs, uri, "week-1", monkeypatch, capsys)
    weights = Path(uri) / "week-1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    event = job(tmp_path, inputs, uri, "week-2", monkeypatch, capsys)
    assert not event["promoted"] and "cannot be loaded" in event["incomparable"] and "sha256" in event["incomparable"]
    assert latest(uri) == "week-1" and (Path(uri) / "week-2" / "manifest.json").is_file()
