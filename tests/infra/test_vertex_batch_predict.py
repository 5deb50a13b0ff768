"""Vertex batch prediction submission: the dry-run job parses as aiplatform's own BatchPredictionJob type, and it is
exactly what submit() sends to JobService.CreateBatchPredictionJob."""

from __future__ import annotations

from unittest import mock

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import BatchPredictionJob, JobState

from infra.common import SubmitError
from infra.vertex import batch_predict
from seqcls import runtime

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqcls/seqcls:0123abc"
BASE = ["--project", "my-proj", "--region", "us-central1", "--image", IMAGE,
        "--artifact-uri", "gs://seqcls-out/cola/run-42/", "--output-dir", "gs://seqcls-out/scored",
        "--display-name", "score-week-49"]


def _job(argv: list[str]) -> batch_predict.BatchJob:
    return batch_predict.job_from_args(batch_predict._parser().parse_args(argv))


def test_dry_run_is_a_batch_prediction_job_running_our_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert batch_predict.main([*BASE, "--input", "gs://seqcls-data/to-score/part-*.jsonl", "--batch-size", "128",
                               "--env", "SEQCLS_INFERENCE_BACKEND=onnx", "--dry-run"]) == 0
    job = BatchPredictionJob.from_json(capsys.readouterr().out)
    container = job.unmanaged_container_model.container_spec
    assert job.unmanaged_container_model.artifact_uri == "gs://seqcls-out/cola/run-42"
    assert (container.image_uri, list(container.args)) == (IMAGE, ["serve"])
    assert [(e.name, e.value) for e in container.env] == [("SEQCLS_INFERENCE_BACKEND", "onnx")]
    assert job.input_config.instances_format == "jsonl"
    assert list(job.input_config.gcs_source.uris) == ["gs://seqcls-data/to-score/part-*.jsonl"]
    assert job.output_config.gcs_destination.output_uri_prefix == "gs://seqcls-out/scored"
    assert job.manual_batch_tuning_parameters.batch_size == 128
    # The routes Vertex gives the server as AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE, which it then answers.
    served = runtime.serving(None, None, {"AIP_PREDICT_ROUTE": container.predict_route, "AIP_HEALTH_ROUTE":
                                          container.health_route, "AIP_HTTP_PORT": str(container.ports[0].container_port),
                                          "AIP_STORAGE_URI": "gs://seqcls-out/cola/run-42"})
    assert container.predict_route in served.predict_routes and container.health_route in served.health_routes


def test_a_bigquery_table_is_read_by_its_included_fields() -> None:
    job = _job([*BASE, "--input", "bq://my-proj.cola.unscored", "--included-fields", "sentence",
                "--output-dir", "bq://my-proj.cola_scored"]).spec()
    assert job.input_config.instances_format == "bigquery"
    assert job.input_config.bigquery_source.input_uri == "bq://my-proj.cola.unscored"
    assert list(job.instance_config.included_fields) == ["sentence"]
    assert job.output_config.bigquery_destination.output_uri == "bq://my-proj.cola_scored"


@pytest.mark.parametrize(("extra", "message"), [
    (["--input", "s3://wrong-cloud/rows.jsonl"], "expected gs:// files or a bq://project.dataset.table"),
    (["--input", "gs://seqcls-data/a.csv", "--input", "gs://seqcls-data/b.jsonl"], "all files in one format"),
    (["--input", "bq://my-proj.cola"], "is not a BigQuery table"),
    (["--input", "gs://seqcls-data/a.jsonl", "--batch-size", "2000"], "between 1 and 1024"),
    (["--input", "gs://seqcls-data/a.jsonl", "--env", "SEQCLS_INFERENCE_BACKEND=gpu"], "inference_backend"),
])
def test_bad_options_fail_before_any_call(extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=message):
        _job([*BASE, *extra])


def test_submit_sends_the_dry_run_job() -> None:
    job = _job([*BASE, "--input", "gs://seqcls-data/to-score/rows.csv", "--included-fields", "text"])
    name = "projects/my-proj/locations/us-central1/batchPredictionJobs/7"
    with mock.patch.object(JobServiceClient, "create_batch_prediction_job", autospec=True) as create:
        create.side_effect = lambda self, parent, batch_prediction_job: BatchPredictionJob(
            batch_prediction_job, name=name, state=JobState.JOB_STATE_PENDING)
        created = batch_predict.submit(job, wait=False, credentials=AnonymousCredentials())
    sent = create.call_args.kwargs
    assert sent["parent"] == "projects/my-proj/locations/us-central1"
    assert sent["batch_prediction_job"] == job.spec()
    assert created.name == name and created.state == JobState.JOB_STATE_PENDING
