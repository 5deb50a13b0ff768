"""run_manifest.json and metrics.json have one writer and one reader each (seqcls.records): a run's files read back
into the same bytes, a folder written before a field existed still reads, and no other module spells the files'
names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_subprocess, write_tree
from seqcls.errors import ModelError
from seqcls.problem_types import SINGLE_LABEL
from seqcls.records import METRICS, RUN_MANIFEST, Metrics, RunManifest

SRC = Path(__file__).resolve().parents[1] / "src" / "seqcls"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, cola_dir) -> Path:
    """A real run with a test split and the promotion gate on, so the manifest holds every field the job writes."""
    root = tmp_path_factory.mktemp("opt_ml")
    model = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())
    write_tree(root, {"data/train/train.tsv": cola_rows(cola_dir, "in_domain_train.tsv", 60),
                      "data/test/test.tsv": cola_rows(cola_dir, "out_of_domain_dev.tsv", 30)})
    published = tmp_path_factory.mktemp("published")
    outcome = run_subprocess(root, ["--model", str(model), "--epochs", "1", "--batch_size", "8", "--max_length", "32",
                                    "--run_id", "records-run", "--output_uri", str(published), "--promote_if", "test_mcc"])
    assert outcome.code == 0, outcome.stderr[-3000:]
    return root / "model"


@pytest.mark.slow
def test_a_runs_manifest_reads_back_into_the_same_file(model_dir) -> None:
    text = (model_dir / RUN_MANIFEST).read_text()
    manifest = RunManifest.read(model_dir)
    assert json.dumps(manifest.to_json(), indent=2) + "\n" == text
    assert manifest.run_id == "records-run" and manifest.promotion.promoted is True
    assert manifest.value("max_length") == 32 and manifest.given("max_length") and not manifest.given("seed")
    assert manifest.problem_type == SINGLE_LABEL and manifest.trained_on_pairs() is False
    assert [f["channel"] for f in manifest.data.files] == ["train", "test"] and manifest.data.rows["test"] == 30


@pytest.mark.slow
def test_a_runs_metrics_read_back_into_the_same_file(model_dir) -> None:
    text = (model_dir / METRICS).read_text()
    metrics = Metrics.read(model_dir)
    assert json.dumps(metrics.to_json(), indent=2) + "\n" == text
    assert metrics.labels == ["0", "1"] and metrics.decision_threshold is not None and metrics.best_epoch == 1
    assert metrics.value("test_mcc") == metrics.test["mcc"] and metrics.promotion == RunManifest.read(model_dir).promotion
    assert metrics.best_step is None and "best_step" not in metrics.to_json()  # decisions not made are left out


def test_a_manifest_from_before_a_field_existed_still_reads(tmp_path) -> None:
    (tmp_path / RUN_MANIFEST).write_text(json.dumps({"run_id": "old", "settings": {"max_length": {"value": 64,
                                                                                                    "source": "cli"}}}))
    manifest = RunManifest.read(tmp_path)
    assert (manifest.run_id, manifest.value("max_length"), manifest.problem_type) == ("old", 64, SINGLE_LABEL)
    assert manifest.trained_on_pairs() is None and manifest.data.max_length is None and manifest.promotion is None
    assert "onnx_int8" not in manifest.to_json() and "promotion" not in manifest.to_json()
    assert RunManifest.read(tmp_path / "no-such-folder") is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"settings": "max_length=64"}'])
def test_a_manifest_that_is_not_one_says_so(tmp_path, content) -> None:
    (tmp_path / RUN_MANIFEST).write_text(content)
    with pytest.raises(ModelError, match=RUN_MANIFEST):
        RunManifest.read(tmp_path)


def test_only_the_records_module_names_the_record_files() -> None:
    """Every reader and writer goes through records.RUN_MANIFEST and METRICS, so each file's shape has one owner."""
    spelled = [f"{path.relative_to(SRC)}:{node.lineno}" for path in sorted(SRC.rglob("*.py")) if path.name != "records.py"
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
               and node.value in (RUN_MANIFEST, METRICS)]
    assert not spelled, spelled


def test_the_gates_decision_reads_back_as_it_was_decided() -> None:
    """What the registries act on is the record the gate wrote: record() and from_json() are inverse, and a block
    that is not a decision (a foreign or broken file) reads as none rather than as a promotion."""
    from seqcls.records import Comparison, Decision

    compared = Comparison(0.41, 0.38, 527, "ab" * 32, "test", 0.03, (-0.01, 0.07), 0.95, 1000)
    decision = Decision(True, "test_mcc", 0.41, 0.38, "week-1", 0.0, "better", "not_worse", 0.37, compared, None)
    assert Decision.from_json(json.loads(json.dumps(decision.record()))) == decision
    kept = Decision(False, "validation_loss", 0.6, None, "week-1", 0.01, "incomparable", incomparable="other labels")
    assert Decision.from_json(kept.record()) == kept and Metrics.from_json({"promotion": kept.record()}).promotion == kept
    for broken in (None, [], {"promoted": "yes"}, {"metric": "test_mcc"}):
        assert Decision.from_json(broken) is None
