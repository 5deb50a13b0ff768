"""The whole job publishing to SeaweedFS, and `seqcls predict` loading the published copy.

The publishing run and predict run `python -m seqcls` as subprocesses, as the container would: a tiny
CoLA run (64 rows, 1 epoch, the offline MiniLM model, 100 test rows) with output_uri s3://...,
reaching the server through AWS_ENDPOINT_URL_S3. The runs that must fail before training call
cli.main in-process (same code path, one torch import for all of them).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from jobtools import FOREIGN_ENV_PREFIXES, cola_lines, json_lines, run_cli
from storage_servers import s3_with_bucket

ACCESS_KEY = "seqcls-job"
SECRET_KEY = "seqcls-job-secret-41be07aa"
BUCKET = "seqcls-models"


def run_seqcls(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[dict], str]:
    done = run_cli(args, env, timeout=300, cwd=cwd)
    return done.returncode, json_lines(done.stdout), done.stderr


def run_in_process(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, list[dict], str]:
    from seqcls import cli

    for key in [k for k in os.environ if k.startswith(FOREIGN_ENV_PREFIXES)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, json_lines(out), err


def events_named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e.get("event") == name]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cola_dir, minilm_path) -> dict[str, Path]:
    """CoLA train, the first 100 rows of its out-of-domain dev set (cheap on 2 cores), the MiniLM model."""
    test = tmp_path_factory.mktemp("data") / "test.tsv"
    test.write_text("".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, 100)), encoding="utf-8")
    return {"train": cola_dir / "in_domain_train.tsv", "test": test, "model": minilm_path}


def train_args(output_dir: Path, inputs: dict[str, Path], run_id: str = "", output_uri: str = "") -> list[str]:
    args = ["train", "--train", str(inputs["train"]), "--test", str(inputs["test"]),
            "--model_name_or_path", str(inputs["model"]), "--epochs", "1", "--max_train_samples", "64",
            "--max_length", "48", "--output_dir", str(output_dir)]
    return args + (["--run_id", run_id] if run_id else []) + (["--output_uri", output_uri] if output_uri else [])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_with_bucket(tmp_path_factory.mktemp("weed"), ACCESS_KEY, SECRET_KEY, BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def job(s3, inputs, tmp_path_factory):
    """One real job run that publishes to s3://seqcls-models/cola/job-1."""
    root = tmp_path_factory.mktemp("job")
    code, events, stderr = run_seqcls(train_args(root / "run", inputs, "job-1", f"s3://{BUCKET}/cola"), s3.env(), root)
    assert code == 0, stderr[-3000:]
    return root, events


@pytest.mark.slow
def test_job_publishes_every_artifact_with_a_manifest_matching_the_bytes(s3, job):
    root, events = job
    published = events_named(events, "artifacts_published")
    assert len(published) == 1 and published[0]["uri"] == f"s3://{BUCKET}/cola/job-1"
    assert [e["event"] for e in events].index("artifacts_published") < [e["event"] for e in events].index("job_end")
    local = {p.relative_to(d).as_posix(): p.read_bytes() for d in (root / "run" / "model", root / "run" / "output" / "data")
             for p in d.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "run_manifest.json",
            "training_stats.csv", "test_predictions.csv", "loss_curve.png", "README.md", "code/inference.py"} <= set(local)
    assert published[0]["files"] == len(local) and published[0]["bytes"] == sum(map(len, local.values()))

    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="cola/job-1/")["Contents"]]
    downloaded = {k.removeprefix("cola/job-1/"): client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
    manifest = json.loads(downloaded.pop("manifest.json"))
    assert downloaded == local
    assert {f["name"]: (f["size"], f["sha256"]) for f in manifest["files"]} == \
        {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in local.items()}
    assert json.loads(local["run_manifest.json"])["run_id"] == "job-1"
    card = ModelCard(downloaded["README.md"].decode())  # the published card parses as Hub metadata
    assert card.data.to_dict()["model-index"][0]["name"] == "job-1"


@pytest.mark.slow
def test_predict_loads_the_published_s3_copy_and_matches_the_jobs_test_predictions(s3, job, inputs, tmp_path):
    root, _ = job
    output = tmp_path / "predictions.csv"
    code, events, stderr = run_seqcls(["predict", "--model", f"s3://{BUCKET}/cola/job-1",
                                       "--input", str(inputs["test"]), "--output", str(output)], s3.env(), tmp_path)
    assert code == 0, stderr[-3000:]
    assert events_named(events, "predictions_written")[0]["rows"] == 100
    with output.open() as got, (root / "run" / "output" / "data" / "test_predictions.csv").open() as expected:
        got_rows, expected_rows = list(csv.DictReader(got)), list(csv.DictReader(expected))
    assert [r["predicted"] for r in got_rows] == [r["predicted"] for r in expected_rows]
    assert [r["text"] for r in got_rows] == [r["text"] for r in expected_rows]


@pytest.mark.slow
def test_rerun_with_a_published_run_id_is_refused_before_training(s3, job, inputs, tmp_path, monkeypatch, capsys):
    code, events, _ = run_in_process(train_args(tmp_path / "run", inputs, "job-1", f"s3://{BUCKET}/cola"), s3.env(),
                                     monkeypatch, capsys)
    assert code == 1
    assert not events_named(events, "data_ready"), "refused before reading data or training"
    reason = (tmp_path / "run" / "output" / "failure").read_text()
    assert f"s3://{BUCKET}/cola/job-1/manifest.json already exists" in reason
    assert events_named(events, "job_failed")[0]["message"] == reason.strip()


@pytest.mark.slow
def test_wrong_credentials_fail_before_training_without_leaking_the_secret(s3, inputs, tmp_path, monkeypatch, capsys):
    wrong = "wrong-job-secret-99aa11"
    code, events, stderr = run_in_process(train_args(tmp_path / "run", inputs, "job-2", f"s3://{BUCKET}/cola"),
                                          s3.env(secret_key=wrong), monkeypatch, capsys)
    assert code == 1 and not events_named(events, "data_ready")
    reason = (tmp_path / "run" / "output" / "failure").read_text()
    assert f"s3://{BUCKET}/cola/job-2" in reason and "403" in reason and "credentials" in reason
    everything = reason + stderr + json.dumps(events)
    assert wrong not in everything and SECRET_KEY not in everything


def test_bad_output_uri_fails_as_a_settings_error(tmp_path, monkeypatch, capsys):
    code, events, _ = run_in_process(["train", "--output_dir", str(tmp_path / "run"), "--output_uri", "ftp://host/models"],
                                     {}, monkeypatch, capsys)
    assert code == 2
    reason = (tmp_path / "run" / "output" / "failure").read_text()
    assert "hyperparameter output_uri 'ftp://host/models': unsupported location" in reason
    assert events_named(events, "job_failed")[0]["error_kind"] == "user"


def test_vertex_replaces_the_last_run_in_aip_model_dir(inputs, tmp_path, monkeypatch, capsys):
    """AIP_MODEL_DIR is the model folder itself (Vertex model upload reads it): this run's files, flat,
    replace the last run's, whose files this run lacks are removed; no run-id folder, no latest.json."""
    model_dir = tmp_path / "aip-model"
    model_dir.mkdir()
    (model_dir / "old_only.csv").write_text("last week")
    (model_dir / "manifest.json").write_text(json.dumps({"run_id": "vertex-41", "files": [{"name": "old_only.csv"}]}))
    vertex = {"AIP_MODEL_DIR": str(model_dir), "CLOUD_ML_JOB_ID": "vertex-42",
              "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "hypertune" / "output.metrics")}
    code, events, _ = run_in_process(train_args(tmp_path / "run", inputs), vertex, monkeypatch, capsys)
    assert code == 0 and events_named(events, "job_start")[0]["platform"] == "vertex"
    assert events_named(events, "artifacts_published")[0]["uri"] == str(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["run_id"] == "vertex-42"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()) == sorted(
        [f["name"] for f in manifest["files"]] + ["manifest.json"])