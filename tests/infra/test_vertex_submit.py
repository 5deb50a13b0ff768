"""Vertex AI submission: the dry-run spec is a valid CustomJob and is exactly what submit() sends."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import CustomJob, JobState, Scheduling

from infra.common import SubmitError
from infra.vertex import submit
from seqcls import runtime

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqcls/seqcls:0123abc"
BASE = ["--project", "my-proj", "--region", "us-central1", "--image", IMAGE,
        "--train", "gs://seqcls-data/cola/in_domain_train.tsv", "--base-output-dir", "gs://seqcls-out/run1"]
FULL = [*BASE, "--test", "gs://seqcls-data/cola/out_of_domain_dev.tsv", "--model", "gs://seqcls-data/models/minilm",
        "--hp", "epochs=3", "--hp", "learning_rate=2e-5", "--hp", "group_by_length=False",
        "--env", "HF_HUB_OFFLINE=1", "--spot", "--max-wait", "1800", "--timeout", "7200",
        "--replica-count", "3", "--restart-on-worker-restart",
        "--service-account", "trainer@my-proj.iam.gserviceaccount.com"]


def _job(argv: list[str]) -> submit.VertexJob:
    return submit.job_from_args(submit._parser().parse_args(argv))


def test_dry_run_spec_parses_as_a_custom_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main([*FULL, "--dry-run"]) == 0
    spec = CustomJob.from_json(capsys.readouterr().out)
    pools = spec.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 2]  # chief + 2 workers
    for pool in pools:
        assert pool.container_spec.image_uri == IMAGE
        assert list(pool.container_spec.args) == [
            "--train=/gcs/seqcls-data/cola/in_domain_train.tsv", "--test=/gcs/seqcls-data/cola/out_of_domain_dev.tsv",
            "--model=/gcs/seqcls-data/models/minilm", "--epochs=3", "--learning_rate=2e-05", "--group_by_length=false"]
        assert {e.name: e.value for e in pool.container_spec.env} == {"HF_HUB_OFFLINE": "1"}
        assert pool.machine_spec.machine_type == "g2-standard-8"
        assert pool.machine_spec.accelerator_count == 1
    assert spec.job_spec.base_output_directory.output_uri_prefix == "gs://seqcls-out/run1"
    assert spec.job_spec.scheduling.strategy == Scheduling.Strategy.SPOT
    assert spec.job_spec.scheduling.timeout.total_seconds() == 7200
    assert spec.job_spec.scheduling.max_wait_duration.total_seconds() == 1800
    assert spec.job_spec.scheduling.restart_job_on_worker_restart is True
    assert spec.job_spec.service_account == "trainer@my-proj.iam.gserviceaccount.com"


def test_container_args_are_what_the_job_parses() -> None:
    """The args go through seqcls.runtime's own parser: channels as /gcs paths, values unchanged."""
    paths, hyperparameters = runtime.parse_cli(_job(FULL).container_args())
    assert paths == {"train": "/gcs/seqcls-data/cola/in_domain_train.tsv",
                     "test": "/gcs/seqcls-data/cola/out_of_domain_dev.tsv", "model": "/gcs/seqcls-data/models/minilm"}
    assert hyperparameters == {"epochs": "3", "learning_rate": "2e-05", "group_by_length": "false"}


def test_cpu_job_has_no_accelerator() -> None:
    machine = _job([*BASE, "--accelerator-count", "0", "--machine-type", "n2-standard-8"]).spec().job_spec.worker_pool_specs[0].machine_spec
    assert machine.accelerator_count == 0
    assert machine.accelerator_type == 0  # unspecified


def test_submit_sends_the_dry_run_spec() -> None:
    job = _job(FULL)
    name = "projects/my-proj/locations/us-central1/customJobs/123"
    with mock.patch.object(JobServiceClient, "create_custom_job", autospec=True) as create:
        create.side_effect = lambda self, parent, custom_job, timeout=None: CustomJob(
            custom_job, name=name, state=JobState.JOB_STATE_PENDING)
        created = submit.submit(job, wait=False, credentials=AnonymousCredentials())
    assert create.call_count == 1
    sent = create.call_args.kwargs
    assert sent["parent"] == "projects/my-proj/locations/us-central1"
    assert sent["custom_job"] == job.spec()
    assert created.resource_name == name


@pytest.mark.parametrize(("extra", "message"), [
    (["--hp", "learning_rate=fast"], "expected a number"),
    (["--hp", "max_lenght=128"], "did you mean max_length"),
    (["--test", "s3://wrong-cloud/test.tsv"], "expected a gs://"),
    (["--replica-count", "0"], "at least 1"),
    (["--env", "SEQCLS_EPOCH=2"], "did you mean epochs"),
])
def test_bad_options_fail_before_any_call(extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=re.escape(message)):
        _job([*BASE, *extra])


def test_a_bigquery_table_and_mlflow_tracking_pass_through_to_the_container() -> None:
    """AIP_DATA_FORMAT=bigquery's URIs (docs/contract.md, Data) go to the job as they are; report_to and the
    tracking server reach it as a hyperparameter and an environment variable (docs/tracking.md)."""
    job = _job([*BASE[:6], "--train", "bq://my-proj.cola.train", "--test", "bq://my-proj.cola.test",
                "--base-output-dir", "gs://seqcls-out/run1", "--hp", "report_to=tensorboard,mlflow",
                "--env", "MLFLOW_TRACKING_URI=https://mlflow.example.com"])
    paths, hyperparameters = runtime.parse_cli(job.container_args())
    assert paths == {"train": "bq://my-proj.cola.train", "test": "bq://my-proj.cola.test"}
    assert hyperparameters == {"report_to": "tensorboard,mlflow"}
    assert job.environment == {"MLFLOW_TRACKING_URI": "https://mlflow.example.com"}
    with pytest.raises(SubmitError, match="--train: bq://my-proj.cola is not a BigQuery table"):
        _job([*BASE[:6], "--train", "bq://my-proj.cola", "--base-output-dir", "gs://seqcls-out/run1"])
    with pytest.raises(SubmitError, match="--model 'bq://p.d.t': expected a gs://bucket/path URI"):
        _job([*BASE, "--model", "bq://p.d.t"])
