"""Data as the platforms hand it over. Vertex passes a managed dataset as wildcard URIs, `gs://…/training-*`,
`validation-*` and `test-*`, with every split's files in one export folder ("Use managed datasets",
https://cloud.google.com/vertex-ai/docs/training/using-managed-datasets: "the URIs are provided in wildcard format"
because "training, validation, or test data might be split into multiple files"). Runs go through the real entry
point on real CoLA sentences with a tiny model built in tmp; the bucket is a folder standing in for the /gcs mount.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_inprocess
from seqcls import data, runtime
from seqcls.errors import DataError
from seqcls.settings import Settings

FAST = ["--epochs", "1", "--batch_size", "8", "--max_length", "32"]
SHARD_ROWS = 30


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


def export_folder(folder: Path, cola_dir: Path) -> dict[str, list[str]]:
    """A managed-dataset export: two training shards, one validation and one test file, side by side (CSV text,label
    rows, disjoint CoLA sentences). Returns each split's sentences."""
    lines = cola_rows(cola_dir, "in_domain_train.tsv", 5 * SHARD_ROWS).splitlines()
    rows = [line.split("\t") for line in lines]
    names = {"training-00000-of-00002.csv": rows[:SHARD_ROWS], "training-00001-of-00002.csv": rows[SHARD_ROWS:2 * SHARD_ROWS],
             "validation-00000-of-00001.csv": rows[2 * SHARD_ROWS:3 * SHARD_ROWS],
             "test-00000-of-00001.csv": rows[3 * SHARD_ROWS:4 * SHARD_ROWS]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in names.items():
        body = "".join(f'"{row[3].replace(chr(34), chr(34) * 2)}",{row[1]}\n' for row in part)
        (folder / name).write_text("text,label\n" + body, encoding="utf-8")
    return {name: [row[3] for row in part] for name, part in names.items()}


def test_a_wildcard_reads_exactly_its_files_in_name_order_not_their_folder(tmp_path, cola_dir):
    written = export_folder(tmp_path / "export", cola_dir)
    channel = data.read_channel(tmp_path / "export" / "training-*", "train", Settings().reading, explicit=())
    assert [Path(f["path"]).name for f in channel.files] == ["training-00000-of-00002.csv", "training-00001-of-00002.csv"]
    assert list(channel.frame[data.TEXT]) == written["training-00000-of-00002.csv"] + written["training-00001-of-00002.csv"]


def test_a_wildcard_that_matches_nothing_or_an_unsupported_file_is_refused_by_name(tmp_path, cola_dir):
    export_folder(tmp_path / "export", cola_dir)
    with pytest.raises(DataError, match=r"train channel .*/export/train-\*: no files match the wildcard"):
        data.channel_files(tmp_path / "export" / "train-*", "train")
    (tmp_path / "export" / "test-00001-of-00001.txt").write_text("text,label\n")
    with pytest.raises(DataError, match=r"unsupported type \(test-00001-of-00001.txt\)"):
        data.channel_files(tmp_path / "export" / "test-*", "test")


def test_a_wildcard_cannot_reach_a_file_outside_its_folder_through_a_symlink(tmp_path, cola_dir):
    export_folder(tmp_path / "export", cola_dir)
    secret = tmp_path / "elsewhere.csv"
    secret.write_text("text,label\nx,1\n")
    (tmp_path / "export" / "training-00002-of-00002.csv").symlink_to(secret)
    with pytest.raises(DataError, match="is a symlink to .*elsewhere.csv, outside the channel folder"):
        data.channel_files(tmp_path / "export" / "training-*", "train")


def vertex_env(tmp_path: Path) -> dict[str, str]:
    prefix = "gs://bkt/exports/dataset-1-text_classification-2026-12-04"
    return {"AIP_DATA_FORMAT": "csv", "AIP_TRAINING_DATA_URI": f"{prefix}/training-*",
            "AIP_VALIDATION_DATA_URI": f"{prefix}/validation-*", "AIP_TEST_DATA_URI": f"{prefix}/test-*",
            "AIP_MODEL_DIR": "gs://bkt/out/model/", "CLOUD_ML_JOB_ID": "42", "SEQCLS_GCS_ROOT": str(tmp_path / "gcs")}


def test_vertex_wildcard_uris_stay_wildcards_through_the_fuse_mount(tmp_path):
    (tmp_path / "gcs" / "bkt").mkdir(parents=True)
    where = runtime.detect([], vertex_env(tmp_path) | {"SEQCLS_OPT_ML": str(tmp_path / "ml")})
    export = tmp_path / "gcs" / "bkt" / "exports" / "dataset-1-text_classification-2026-12-04"
    assert where.channels == {"train": export / "training-*", "validation": export / "validation-*",
                              "test": export / "test-*"}


@pytest.mark.slow
def test_a_vertex_managed_dataset_trains_on_its_training_shards_only(tmp_path, cola_dir, tiny_model, monkeypatch, capsys):
    export = tmp_path / "gcs" / "bkt" / "exports" / "dataset-1-text_classification-2026-12-04"
    export_folder(export, cola_dir)
    outcome = run_inprocess(tmp_path / "ml", ["--model", str(tiny_model), *FAST], vertex_env(tmp_path), monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    assert ready["rows"] == {"train": 2 * SHARD_ROWS, "validation": SHARD_ROWS, "test": SHARD_ROWS}
    assert ready["validation_source"] == "channel"
    record = json.loads((tmp_path / "gcs" / "bkt" / "out" / "model" / "run_manifest.json").read_text())
    read = [(f["channel"], Path(f["path"]).name) for f in record["data"]["files"]]
    assert read == [("train", "training-00000-of-00002.csv"), ("train", "training-00001-of-00002.csv"),
                    ("validation", "validation-00000-of-00001.csv"), ("test", "test-00000-of-00001.csv")]


@pytest.mark.slow
def test_a_gs_glob_on_the_command_line_means_its_files_too(tmp_path, cola_dir, tiny_model, monkeypatch, capsys):
    export_folder(tmp_path / "gcs" / "bkt" / "export", cola_dir)
    args = ["--train", "gs://bkt/export/training-*", "--test", "gs://bkt/export/test-*", "--model", str(tiny_model), *FAST]
    outcome = run_inprocess(tmp_path / "ml", args, {"SEQCLS_GCS_ROOT": str(tmp_path / "gcs")}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    held_out = ready["rows"]["validation"]
    assert ready["rows"]["train"] + held_out == 2 * SHARD_ROWS and ready["rows"]["test"] == SHARD_ROWS


# --- Vertex's text-dataset schema ----------------------------------------------------------------------------------
# "Prepare text training data for classification", JSON Lines:
# https://cloud.google.com/vertex-ai/docs/text-data/classification/prepare-data
# {"classificationAnnotation": {"displayName": ...}, "textContent": ..., "dataItemResourceLabels":
#  {"aiplatform.googleapis.com/ml_use": "training|test|validation"}}; multi-label: "classificationAnnotations": [...].

def vertex_jsonl(path: Path, cola_dir: Path, uses: list[str | None], multi: bool = False) -> list[dict]:
    """CoLA sentences in Vertex's text schema, one row per entry of `uses` (its ml_use, or none)."""
    rows = [line.split("\t") for line in cola_rows(cola_dir, "in_domain_train.tsv", len(uses)).splitlines()]
    records = []
    for (_, label, _, text), use in zip(rows, uses):
        name = "acceptable" if label == "1" else "unacceptable"
        record: dict = {"textContent": text}
        if multi:
            record["classificationAnnotations"] = [{"displayName": name}] + ([{"displayName": "short"}] if len(text) < 30 else [])
        else:
            record["classificationAnnotation"] = {"displayName": name}
        if use:
            record["dataItemResourceLabels"] = {"aiplatform.googleapis.com/ml_use": use}
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def test_vertex_text_rows_are_read_by_their_keys_and_each_channel_keeps_its_ml_use(tmp_path, cola_dir):
    uses = ["training"] * 6 + ["validation"] * 2 + ["test"] * 3 + [None]
    records = vertex_jsonl(tmp_path / "dataset.jsonl", cola_dir, uses)
    for channel, use in (("train", "training"), ("validation", "validation"), ("test", "test")):
        read = data.read_channel(tmp_path / "dataset.jsonl", channel, Settings().reading, explicit=())
        expected = [r for r, u in zip(records, uses) if u in (use, None)]
        assert list(read.frame[data.TEXT]) == [r["textContent"] for r in expected]
        assert list(read.frame[data.LABEL]) == [r["classificationAnnotation"]["displayName"] for r in expected]


def test_vertex_multi_label_rows_give_tag_sets(tmp_path, cola_dir):
    records = vertex_jsonl(tmp_path / "tags.jsonl", cola_dir, ["training"] * 8, multi=True)
    read = data.read_channel(tmp_path / "tags.jsonl", "train", Settings(problem_type="multi_label").reading, explicit=())
    assert list(read.frame[data.LABEL]) == [tuple(sorted(a["displayName"] for a in r["classificationAnnotations"]))
                                            for r in records]
    with pytest.raises(DataError, match="holds classificationAnnotations .*: set problem_type=multi_label"):
        data.read_channel(tmp_path / "tags.jsonl", "train", Settings().reading, explicit=())


def test_vertex_rows_without_inline_text_or_for_no_row_of_the_split_are_refused(tmp_path, cola_dir):
    (tmp_path / "uris.jsonl").write_text(json.dumps({"textGcsUri": "gs://b/doc.txt",
                                                     "classificationAnnotation": {"displayName": "a"}}) + "\n")
    with pytest.raises(DataError, match="reads inline textContent only"):
        data.read_channel(tmp_path / "uris.jsonl", "train", Settings().reading, explicit=())
    vertex_jsonl(tmp_path / "train-only.jsonl", cola_dir, ["training"] * 4)
    with pytest.raises(DataError, match="no row is for the test split .*the file has training"):
        data.read_channel(tmp_path / "train-only.jsonl", "test", Settings().reading, explicit=())


@pytest.mark.slow
def test_one_vertex_file_with_every_split_trains_tests_and_validates_on_its_own_rows(tmp_path, cola_dir, tiny_model,
                                                                                   monkeypatch, capsys):
    dataset = tmp_path / "dataset.jsonl"
    vertex_jsonl(dataset, cola_dir, ["training"] * 60 + ["validation"] * 20 + ["test"] * 25)
    args = ["--train", str(dataset), "--validation", str(dataset), "--test", str(dataset), "--model_name_or_path",
            str(tiny_model), "--output_dir", str(tmp_path / "out"), *FAST]
    outcome = run_inprocess(tmp_path / "ml", args, {}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    assert ready["rows"] == {"train": 60, "validation": 20, "test": 25}
    assert ready["split_checks"]["overlap"] == {"validation": 0, "test": 0}
