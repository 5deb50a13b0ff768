"""Batch Transform submission: CreateModel and CreateTransformJob checked offline against botocore's model, then
sent to moto's SageMaker, which records them as the service would."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from infra.common import SubmitError
from infra.sagemaker import transform

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/seqcls:0123abc"
ROLE = "arn:aws:iam::123456789012:role/SeqclsTransform"
BASE = ["--image", IMAGE, "--role", ROLE, "--region", "eu-west-1",
        "--model-data", "s3://seqcls-out/jobs/seqcls-1/output/model.tar.gz",
        "--input", "s3://seqcls-data/to-score/", "--output-path", "s3://seqcls-out/scored/", "--name", "cola-week-49"]


def _transform(argv: list[str]) -> transform.Transform:
    return transform.transform_from_args(transform._parser().parse_args(argv))


def test_dry_run_prints_both_requests_botocore_accepts(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert transform.main([*BASE, "--content-type", "text/csv", "--accept", "text/csv", "--max-payload-mb", "2",
                           "--env", "SEQCLS_INFERENCE_BACKEND=onnx", "--dry-run"]) == 0
    requests = json.loads(capsys.readouterr().out)
    model, job = requests["CreateModel"], requests["CreateTransformJob"]
    assert model["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": "s3://seqcls-out/jobs/seqcls-1/output/model.tar.gz",
                                         "Environment": {"SEQCLS_INFERENCE_BACKEND": "onnx"}}
    assert (job["BatchStrategy"], job["MaxPayloadInMB"]) == ("MultiRecord", 2)
    assert job["TransformInput"]["SplitType"] == "Line" and job["TransformInput"]["ContentType"] == "text/csv"
    assert job["TransformOutput"] == {"S3OutputPath": "s3://seqcls-out/scored/", "Accept": "text/csv", "AssembleWith": "Line"}


@pytest.mark.parametrize("extra, message", [
    (["--model-data", "s3://seqcls-out/model/"], "expected the training job's model.tar.gz"),
    (["--input", "/local/data"], "--input '/local/data': expected an s3://bucket/key URI"),
    (["--max-payload-mb", "0"], "between 1 and 100"),
    (["--name", "no_underscores"], "letters, digits and single hyphens"),
    (["--env", "SEQCLS_INFERENCE_BACKEND=tensorrt"], "inference_backend"),
])
def test_bad_options_fail_before_any_call(aws_offline: None, extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=message):
        _transform([*BASE, *extra])


def test_submit_creates_the_model_and_the_job(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    with mock_aws():
        assert transform.main(BASE) == 0
        result = json.loads(capsys.readouterr().out)
        client = boto3.client("sagemaker", region_name="eu-west-1")
        described = client.describe_transform_job(TransformJobName="cola-week-49")
        model = client.describe_model(ModelName="cola-week-49")
    assert result["transform_job_name"] == "cola-week-49" and result["transform_job_arn"].endswith("cola-week-49")
    assert described["ModelName"] == "cola-week-49"
    assert described["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://seqcls-data/to-score/"
    assert described["TransformOutput"]["AssembleWith"] == "Line"
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
