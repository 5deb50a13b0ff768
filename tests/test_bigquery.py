"""BigQuery tables as channels, read by the real google-cloud-bigquery client against a loopback stub of the two
REST methods it calls (tests/bigquery_stub.py cites their reference). Vertex hands a managed dataset over as
`AIP_DATA_FORMAT=bigquery` with `AIP_*_DATA_URI=bq://project.dataset.table` ("Use managed datasets",
https://cloud.google.com/vertex-ai/docs/training/using-managed-datasets). The client reaches the stub through
BIGQUERY_EMULATOR_HOST, its own variable (google/cloud/bigquery/_helpers.py `_get_bigquery_host`), and
authenticates as on Google: Application Default Credentials from a service-account key file
(GOOGLE_APPLICATION_CREDENTIALS) whose token endpoint is the stub.

Not run here: real BigQuery (credentials, IAM, the service's own page sizes and quotas).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigquery_stub import PAGE_ROWS, TOKEN, BigQueryStub, StubTable, start
from json_stub import service_account_file
from jobtools import assert_clean_failure, build_tiny_model, cola_rows, minilm_folder, run_inprocess
from seqcls import bigquery, data, runtime
from seqcls.errors import DataError, SettingsError
from seqcls.settings import Settings

TEXT_LABEL = [{"name": "sentence", "type": "STRING", "mode": "NULLABLE"},
              {"name": "label", "type": "INTEGER", "mode": "NULLABLE"},
              {"name": "source", "type": "STRING", "mode": "NULLABLE"}]


def cola_table(cola_dir: Path, count: int, skip: int = 0) -> StubTable:
    rows = [line.split("\t") for line in cola_rows(cola_dir, "in_domain_train.tsv", skip + count).splitlines()][skip:]
    return StubTable(TEXT_LABEL, [[text, int(label), source] for source, label, _, text in rows])


EMULATOR_HOST = "BIGQUERY_EMULATOR_HOST"


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    stub = BigQueryStub()
    server = start(stub)
    monkeypatch.setenv(EMULATOR_HOST, stub.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                       str(service_account_file(tmp_path / "sa.json", f"{stub.endpoint}/token")))
    yield stub
    server.shutdown()


def test_a_table_uri_names_project_dataset_and_table_even_for_a_domain_scoped_project():
    assert bigquery.parse("bq://proj-1.ds.train") == bigquery.Table("proj-1", "ds", "train")
    assert bigquery.parse("bq://example.com:proj.ds.t") == bigquery.Table("example.com:proj", "ds", "t")
    assert str(bigquery.parse("bq://p.d.t")) == "bq://p.d.t"
    for bad in ("bq://p.d", "bq://p..t", "bq://p.d.t/x", "bq://"):
        with pytest.raises(SettingsError, match="expected bq://project.dataset.table"):
            bigquery.parse(bad)


def test_vertex_bigquery_uris_and_command_line_tables_become_tables_not_paths(tmp_path):
    env = {"AIP_DATA_FORMAT": "bigquery", "AIP_TRAINING_DATA_URI": "bq://proj.ds.training",
           "AIP_VALIDATION_DATA_URI": "bq://proj.ds.validation", "AIP_TEST_DATA_URI": "bq://proj.ds.test",
           "AIP_MODEL_DIR": "gs://bkt/out/", "SEQCLS_OPT_ML": str(tmp_path / "ml")}
    where = runtime.detect([], env)
    assert where.channels == {"train": bigquery.Table("proj", "ds", "training"),
                              "validation": bigquery.Table("proj", "ds", "validation"),
                              "test": bigquery.Table("proj", "ds", "test")}
    local = runtime.detect(["--train", "bq://p.d.t", "--output_dir", str(tmp_path / "out")], {})
    assert local.channels["train"] == bigquery.Table("p", "d", "t")
    with pytest.raises(SettingsError, match="model channel cannot be a BigQuery table"):
        runtime.detect(["--train", "bq://p.d.t", "--model", "bq://p.d.m", "--output_dir", str(tmp_path / "o")], {})


def test_a_table_is_read_page_by_page_with_rows_and_labels_as_it_holds_them(stub, cola_dir):
    table = cola_table(cola_dir, 2 * PAGE_ROWS + 7)
    stub.tables["proj.ds.train"] = table
    channel = data.read_channel(bigquery.parse("bq://proj.ds.train"), "train", Settings().reading, explicit=())
    assert list(channel.frame[data.TEXT]) == [row[0] for row in table.rows]
    assert list(channel.frame[data.LABEL]) == [str(row[1]) for row in table.rows]
    assert channel.files[0]["path"] == "bq://proj.ds.train" and channel.files[0]["rows"] == len(table.rows)
    assert channel.columns.text == "sentence" and channel.columns.label == "label"
    base = "/bigquery/v2/projects/proj/datasets/ds/tables/train"
    reads = [r for r in stub.requests if r.method == "GET"]
    assert [(r.path, r.query.get("pageToken")) for r in reads] == [
        (base, None), (base + "/data", None), (base + "/data", [str(PAGE_ROWS)]), (base + "/data", [str(2 * PAGE_ROWS)])]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in reads)  # the service account's token


def test_no_credentials_is_one_line_saying_where_credentials_come_from(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(DataError, match=r"^bq://p\.d\.t: no Google credentials \(Application Default Credentials"):
        data.read_channel(bigquery.parse("bq://p.d.t"), "train", Settings().reading, explicit=())
    assert stub.requests == []


def test_a_repeated_string_column_is_a_multi_label_tag_list(stub):
    fields = [{"name": "text", "type": "STRING", "mode": "NULLABLE"}, {"name": "labels", "type": "STRING", "mode": "REPEATED"}]
    rows = [[f"sentence number {i}", ["a", "b"][: i % 3]] for i in range(12)]
    stub.tables["p.d.tags"] = StubTable(fields, rows)
    tags = Settings(problem_type="multi_label").reading
    channel = data.read_channel(bigquery.parse("bq://p.d.tags"), "train", tags, explicit=())
    assert [tuple(tags) for tags in channel.frame[data.LABEL]] == [tuple(tags) for _, tags in rows]


def test_a_missing_and_a_denied_table_each_fail_in_one_line_naming_the_table(stub, cola_dir):
    stub.tables["p.d.secret"] = StubTable(TEXT_LABEL, [["a sentence", 1, "x"]], denied=True)
    with pytest.raises(DataError) as missing:
        data.read_channel(bigquery.parse("bq://p.d.nothere"), "train", Settings().reading, explicit=())
    assert str(missing.value).startswith("bq://p.d.nothere: no such table") and "\n" not in str(missing.value)
    with pytest.raises(DataError) as denied:
        data.read_channel(bigquery.parse("bq://p.d.secret"), "test", Settings().reading, explicit=())
    assert str(denied.value).startswith("bq://p.d.secret: read denied") and "bigquery.tables.getData" in str(denied.value)


def test_a_bad_table_is_reported_by_its_uri_not_the_temporary_export(stub):
    stub.tables["p.d.nolabel"] = StubTable([{"name": "text", "type": "STRING", "mode": "NULLABLE"}], [["only text"]] * 3)
    with pytest.raises(DataError) as err:
        data.read_channel(bigquery.parse("bq://p.d.nolabel"), "train", Settings().reading, explicit=())
    assert "bq://p.d.nolabel" in str(err.value) and "seqcls-bq-" not in str(err.value)
    stub.tables["p.d.empty"] = StubTable(TEXT_LABEL, [])
    with pytest.raises(DataError, match="train channel bq://p.d.empty has no rows"):
        data.read_channel(bigquery.parse("bq://p.d.empty"), "train", Settings().reading, explicit=())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


def vertex_bigquery_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "gcs" / "bkt").mkdir(parents=True, exist_ok=True)
    return {"AIP_DATA_FORMAT": "bigquery", "AIP_TRAINING_DATA_URI": "bq://proj.ds.training",
            "AIP_VALIDATION_DATA_URI": "bq://proj.ds.validation", "AIP_TEST_DATA_URI": "bq://proj.ds.test",
            "AIP_MODEL_DIR": "gs://bkt/out/model/", "CLOUD_ML_JOB_ID": "7", "SEQCLS_GCS_ROOT": str(tmp_path / "gcs")}


def test_a_job_on_a_missing_table_exits_2_before_training_naming_it(stub, tmp_path, tiny_model, monkeypatch, capsys):
    stub.tables["proj.ds.training"] = StubTable(TEXT_LABEL, [["a sentence", 1, "x"], ["another one", 0, "y"]] * 10)
    env = vertex_bigquery_env(tmp_path) | {EMULATOR_HOST: stub.endpoint}
    outcome = run_inprocess(tmp_path / "ml", ["--model", str(tiny_model)], env, monkeypatch, capsys)
    assert_clean_failure(outcome, ["bq://proj.ds.validation: no such table"])


@pytest.mark.slow
def test_a_vertex_bigquery_dataset_trains_end_to_end(stub, tmp_path, cola_dir, tiny_model, monkeypatch, capsys):
    stub.tables["proj.ds.training"] = cola_table(cola_dir, 60)
    stub.tables["proj.ds.validation"] = cola_table(cola_dir, 20, skip=60)
    stub.tables["proj.ds.test"] = cola_table(cola_dir, 30, skip=80)
    env = vertex_bigquery_env(tmp_path) | {EMULATOR_HOST: stub.endpoint}
    args = ["--model", str(tiny_model), "--epochs", "1", "--batch_size", "8", "--max_length", "32"]
    outcome = run_inprocess(tmp_path / "ml", args, env, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    ready = next(e for e in outcome.events if e.get("event") == "data_ready")
    assert ready["rows"] == {"train": 60, "validation": 20, "test": 30}
    record = json.loads((tmp_path / "gcs" / "bkt" / "out" / "model" / "run_manifest.json").read_text())
    assert [(f["channel"], f["path"]) for f in record["data"]["files"]] == [
        ("train", "bq://proj.ds.training"), ("validation", "bq://proj.ds.validation"), ("test", "bq://proj.ds.test")]
    assert [e["table"] for e in outcome.events if e.get("event") == "bigquery_read"] == [
        "bq://proj.ds.training", "bq://proj.ds.validation", "bq://proj.ds.test"]
