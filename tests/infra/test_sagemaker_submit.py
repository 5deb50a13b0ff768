"""SageMaker submission: the request the service would get, checked offline against its own model."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from botocore.validate import ParamValidator
from moto import mock_aws

from infra.common import SubmitError, job_hyperparameters, to_job_string
from infra.sagemaker import submit
from infra.sagemaker.metrics import METRICS, metric_definitions
from seqcls import settings

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/seqcls:0123abc"
ROLE = "arn:aws:iam::123456789012:role/SeqclsTraining"
BASE = ["--image", IMAGE, "--role", ROLE, "--region", "eu-west-1",
        "--train", "s3://seqcls-data/cola/train/", "--test", "s3://seqcls-data/cola/test/",
        "--output-path", "s3://seqcls-out/jobs"]
FULL = [*BASE, "--model", "s3://seqcls-data/models/minilm/",
        "--hp", "epochs=3", "--hp", "learning_rate=2e-5", "--hp", "group_by_length=False",
        "--hp", "model_name_or_path=bert-base-uncased", "--hp", "max_train_samples=200",
        "--spot", "--max-runtime", "3600", "--checkpoint-s3-uri", "s3://seqcls-out/checkpoints/run1",
        "--network-isolation", "--instance-type", "ml.g5.2xlarge", "--volume-gb", "40"]
EXPECTED_HYPERPARAMETERS = {"epochs": "3", "learning_rate": "2e-05", "group_by_length": "false",
                            "model_name_or_path": "bert-base-uncased", "max_train_samples": "200"}


def _job(argv: list[str]) -> submit.Job:
    return submit.job_from_args(submit._parser().parse_args(argv))


def _create_training_job_shape():
    model = boto3.Session(region_name="eu-west-1").client("sagemaker").meta.service_model
    return model.operation_model("CreateTrainingJob").input_shape


def test_dry_run_prints_a_request_botocore_accepts(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main([*FULL, "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    report = ParamValidator().validate(request, _create_training_job_shape())
    assert not report.has_errors(), report.generate_report()
    assert request["HyperParameters"] == EXPECTED_HYPERPARAMETERS
    assert all(isinstance(v, str) for v in request["HyperParameters"].values())
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]} == {
        "train": "s3://seqcls-data/cola/train/", "test": "s3://seqcls-data/cola/test/",
        "model": "s3://seqcls-data/models/minilm/"}
    assert request["EnableManagedSpotTraining"] is True
    assert request["EnableNetworkIsolation"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://seqcls-out/checkpoints/run1", "LocalPath": "/opt/ml/checkpoints"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 40}
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://seqcls-out/jobs"
    assert re.fullmatch(r"seqcls-\d{8,}.*", request["TrainingJobName"])


def test_distributed_multi_node_request(aws_offline: None) -> None:
    request = submit.dry_run(_job([*BASE, "--instance-count", "2", "--instance-type", "ml.p4d.24xlarge",
                                   "--torch-distributed"]))
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["HyperParameters"] == {submit.TORCH_DISTRIBUTED_KEY: "true"}
    # seqcls.runtime drops sagemaker_* keys from hyperparameters.json, so the job's settings never see it.
    assert submit.TORCH_DISTRIBUTED_KEY.startswith("sagemaker_")


def test_every_default_survives_the_string_round_trip() -> None:
    """What we send is what the job parses: every hyperparameter's default, stringified, parses back equal."""
    for name, value in settings.Settings().as_dict().items():
        assert settings.parse_value(name, to_job_string(value)) == value, name
    assert job_hyperparameters({"learning_rate": "0.00002", "seed": "7", "group_by_length": "True"}) == {
        "learning_rate": "2e-05", "seed": "7", "group_by_length": "true"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--hp", "epoch=3"], "did you mean epochs"),
    (["--hp", "epochs=three"], "expected an integer"),
    (["--hp", "epochs=0"], "out of range"),
    (["--hp", "epochs"], "expected NAME=VALUE"),
    (["--env", "SEQCLS_LEARNING_RATES=1e-5"], "did you mean learning_rate"),
    (["--network-isolation"], "needs --model"),
    (["--network-isolation", "--model", "s3://seqcls-data/m/", "--hp", "output_uri=s3://x/y"], "output_uri"),
    (["--spot"], "needs --checkpoint-s3-uri"),
    (["--spot", "--checkpoint-s3-uri", "s3://seqcls-out/c", "--max-runtime", "600", "--max-wait", "300"], ">= --max-runtime"),
    (["--max-wait", "600"], "--spot jobs only"),
    (["--instance-count", "2"], "needs --torch-distributed"),
    (["--validation", "/local/path"], "expected an s3://"),
])
def test_bad_options_fail_before_any_call(aws_offline: None, extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=re.escape(message)):
        _job([*BASE, *extra])


def test_role_must_be_an_arn(aws_offline: None) -> None:
    with pytest.raises(SubmitError, match="IAM role ARN"):
        _job([*BASE[:2], "--role", "SeqclsTraining", *BASE[4:]])


@pytest.mark.slow
def test_metric_regexes_read_real_job_logs(job_log_lines: list[str]) -> None:
    """Each regex finds its number on the lines of its event (any event with the field, where no event is
    named: epoch_end and best_epoch_selected for the validation metrics), and only there, in a real run's stdout.
    The run is a first gated run (no champion: current_value and comparison null, so no value); its promotion
    line as a second run logs it, with both filled in, gives the champion's value and the difference."""
    records = [(line, json.loads(line)) for line in job_log_lines]
    promotion = next(record for _, record in records if record["event"] == "promotion")
    second = {**promotion, "current_value": 0.125, "current_run_id": "week-1",
              "comparison": {"split": "test", "rows": 64, "improvement": -0.0625, "interval": [-0.2, 0.1]}}
    records.append((json.dumps(second), second))

    def expected(record: dict, field: str) -> float | None:
        return (record.get("comparison") or {}).get(field) if field == "improvement" else record[field]

    for name, event, field in METRICS:
        regex = re.compile(next(d["Regex"] for d in metric_definitions() if d["Name"] == name))
        lines = [(line, record) for line, record in records
                 if (record["event"] == event if event else field in record)]
        assert lines, f"the run logged no {event or field} event"
        for line, record in lines:
            found = regex.search(line)
            if expected(record, field) is None:
                assert not found, f"{name}: a null matched in {line}"
                continue
            assert found, f"{name}: no match in {line}"
            assert float(found.group(1)) == expected(record, field), name
        for line, record in records:
            if (line, record) not in lines:
                assert not regex.search(line), f"{name} also matches a {record['event']} line"
    assert {r["event"] for _, r in records if "val_mcc" in r} == {"epoch_end", "best_epoch_selected"}


@mock_aws
def test_model_trainer_train_creates_the_job(aws_offline: None) -> None:
    """ModelTrainer.train() under moto: the job exists with our image, strings, channels and spot settings."""
    sent: list[dict] = []
    session = boto3.Session(region_name="eu-west-1")
    session.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                            lambda params, **_: sent.append(json.loads(json.dumps(params, default=str))))
    job = _job(FULL)
    expected = submit.dry_run(job)
    result = submit.submit(job, wait=False, session=submit.Session(boto_session=session))

    described = session.client("sagemaker").describe_training_job(TrainingJobName=result["training_job_name"])
    assert described["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert described["HyperParameters"] == EXPECTED_HYPERPARAMETERS
    assert {c["ChannelName"] for c in described["InputDataConfig"]} == {"train", "test", "model"}
    assert described["EnableManagedSpotTraining"] is True
    assert described["EnableNetworkIsolation"] is True
    assert described["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert described["CheckpointConfig"]["S3Uri"] == "s3://seqcls-out/checkpoints/run1"
    assert described["RoleArn"] == ROLE
    # moto answers MetricDefinitions with a canned list, so compare what was sent instead: the very
    # request the dry run printed, apart from the timestamped job name.
    assert len(sent) == 1
    for request in (sent[0], expected):
        request.pop("TrainingJobName")
    assert sent[0] == expected


@mock_aws
def test_wait_reports_the_final_status(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main([*BASE, "--wait"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "Completed"
    assert result["training_job_arn"].startswith("arn:aws:sagemaker:eu-west-1:")


def test_mlflow_tracking_reaches_the_training_job(aws_offline: None) -> None:
    """A SageMaker managed MLflow server's ARN in the job's environment, report_to as a hyperparameter
    (docs/tracking.md); botocore's model accepts the request."""
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team-a"
    request = submit.dry_run(_job([*BASE, "--hp", "report_to=tensorboard,mlflow", "--hp", "mlflow_registered_model=cola",
                                   "--env", f"MLFLOW_TRACKING_URI={arn}"]))
    report = ParamValidator().validate(request, _create_training_job_shape())
    assert not report.has_errors(), report.generate_report()
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": arn}
    assert request["HyperParameters"] == {"report_to": "tensorboard,mlflow", "mlflow_registered_model": "cola"}
