"""Score a data set with a trained run's model as a SageMaker Batch Transform job (`--dry-run` prints the requests).

    python -m infra.sagemaker.transform --image URI --role ARN --model-data s3://.../output/model.tar.gz \
        --input s3://bucket/to-score/ --output-path s3://bucket/scored/ \
        [--content-type application/jsonlines|text/csv] [--accept application/jsonlines|text/csv] \
        [--instance-type ml.m5.xlarge] [--max-payload-mb 6] [--env SEQCLS_INFERENCE_BACKEND=onnx] [--dry-run | --wait]

Two calls, as SageMaker's own clients make them: CreateModel (the image, serving the model.tar.gz a training job
uploaded; `seqcls serve` is the container's command) and CreateTransformJob over every object under --input,
split by line (SplitType=Line), sent as MultiRecord mini-batches of at most --max-payload-mb, and assembled one
answer line per input record (AssembleWith=Line) into <output-path>/<object>.out. docs/serving.md says what the
server answers; a record it cannot score gets an error line in its place.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3

from infra.common import SubmitError, check_environment, parse_pairs, run_cli
from infra.sagemaker.submit import ROLE_ARN, validate_request
from seqcls.uris import is_bucket_uri

LINE_TYPES = ("application/jsonlines", "text/csv")
NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's pattern for model and job names


@dataclass(frozen=True)
class Transform:
    """A checked submission: the two requests are built from it and nothing else."""

    image: str
    role: str
    region: str
    model_data: str
    input_uri: str
    output_path: str
    name: str
    content_type: str = "application/jsonlines"
    accept: str = "application/jsonlines"
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    max_payload_mb: int = 6
    environment: dict[str, str] = field(default_factory=dict)

    def model_request(self) -> dict[str, Any]:
        return {"ModelName": self.name, "ExecutionRoleArn": self.role,
                "PrimaryContainer": {"Image": self.image, "ModelDataUrl": self.model_data,
                                     "Environment": dict(self.environment)}}

    def transform_request(self) -> dict[str, Any]:
        return {"TransformJobName": self.name, "ModelName": self.name, "BatchStrategy": "MultiRecord",
                "MaxPayloadInMB": self.max_payload_mb, "MaxConcurrentTransforms": 1,
                "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": self.input_uri}},
                                   "ContentType": self.content_type, "SplitType": "Line"},
                "TransformOutput": {"S3OutputPath": self.output_path, "Accept": self.accept, "AssembleWith": "Line"},
                "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.sagemaker.transform", description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True, help="the seqcls image in ECR (infra/image/push-ecr.sh)")
    p.add_argument("--role", required=True, help="IAM role ARN SageMaker assumes (reads the model and input, writes output)")
    p.add_argument("--region", default=boto3.Session().region_name or "us-east-1")
    p.add_argument("--model-data", required=True, metavar="S3_URI", help="a training job's model.tar.gz")
    p.add_argument("--input", required=True, metavar="S3_URI", help="prefix of the files to score")
    p.add_argument("--output-path", required=True, metavar="S3_URI", help="where the .out files go")
    p.add_argument("--content-type", default="application/jsonlines", choices=LINE_TYPES,
                   help="jsonlines: a string or {\"text\", \"text_pair\"} per line; csv: text[,text_pair], no header")
    p.add_argument("--accept", default="application/jsonlines", choices=LINE_TYPES)
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--max-payload-mb", type=int, default=6, help="largest mini-batch request, 1-100 MB")
    p.add_argument("--name", help="model and job name (default: seqcls-transform-<UTC time>)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="container environment (repeat), e.g. SEQCLS_INFERENCE_BACKEND=onnx")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print both requests as JSON; call no AWS API")
    mode.add_argument("--wait", action="store_true", help="poll until the job ends; exit 1 unless it completed")
    return p


def transform_from_args(args: argparse.Namespace) -> Transform:
    for option, uri in (("--model-data", args.model_data), ("--input", args.input), ("--output-path", args.output_path)):
        if not is_bucket_uri(uri, "s3"):
            raise SubmitError(f"{option} {uri!r}: expected an s3://bucket/key URI")
    if not args.model_data.endswith(".tar.gz"):
        raise SubmitError(f"--model-data {args.model_data!r}: expected the training job's model.tar.gz")
    if not ROLE_ARN.match(args.role):
        raise SubmitError(f"--role {args.role!r}: expected an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    if not 1 <= args.max_payload_mb <= 100:
        raise SubmitError("--max-payload-mb must be between 1 and 100 (SageMaker's range)")
    if args.instance_count < 1:
        raise SubmitError("--instance-count must be at least 1")
    name = args.name or time.strftime("seqcls-transform-%Y%m%d-%H%M%S", time.gmtime())
    if not NAME.match(name):
        raise SubmitError(f"--name {name!r}: letters, digits and single hyphens, at most 63 characters")
    return Transform(args.image, args.role, args.region, args.model_data, args.input, args.output_path, name,
                     args.content_type, args.accept, args.instance_type, args.instance_count, args.max_payload_mb,
                     check_environment(parse_pairs(args.env, "--env")))


def dry_run(transform: Transform) -> dict[str, Any]:
    requests = {"CreateModel": transform.model_request(), "CreateTransformJob": transform.transform_request()}
    for operation, request in requests.items():
        validate_request(request, transform.region, operation)
    return requests


def submit(transform: Transform, wait: bool) -> dict[str, str]:
    client = boto3.Session(region_name=transform.region).client("sagemaker")
    client.create_model(**transform.model_request())
    arn = client.create_transform_job(**transform.transform_request())["TransformJobArn"]
    status = "InProgress"
    if wait:
        client.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=transform.name)
        status = client.describe_transform_job(TransformJobName=transform.name)["TransformJobStatus"]
    return {"model_name": transform.name, "transform_job_name": transform.name, "transform_job_arn": arn,
            "status": status}


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    transform = transform_from_args(args)
    if args.dry_run:
        print(json.dumps(dry_run(transform), indent=2, sort_keys=True))
        return 0
    dry_run(transform)  # refuse a request botocore's model refuses before creating anything
    result = submit(transform, wait=args.wait)
    print(json.dumps(result))
    return 0 if not args.wait or result["status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
