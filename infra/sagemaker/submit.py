"""Submit seqcls as a SageMaker training job with SDK v3's ModelTrainer (`--dry-run` prints the request).

    python -m infra.sagemaker.submit --image URI --role ARN --train s3://... --output-path s3://... \
        [--hp epochs=4 ...] [--spot --checkpoint-s3-uri s3://...] [--network-isolation --model s3://...] \
        [--dry-run | --wait]

The image runs as `docker run IMAGE train`; channels land in /opt/ml/input/data/<channel>, the model in
/opt/ml/model (uploaded by SageMaker to --output-path), checkpoints in /opt/ml/checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.validate import ParamValidator
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.shapes import MetricDefinition
from sagemaker.core.training.configs import (
    CheckpointConfig,
    Compute,
    InputData,
    Networking,
    OutputDataConfig,
    StoppingCondition,
)
from sagemaker.core.utils.exceptions import FailedStatusError
from sagemaker.train import ModelTrainer

from infra.common import (
    SubmitError,
    check_environment,
    job_hyperparameters,
    parse_pairs,
    run_cli,
)
from infra.sagemaker.metrics import metric_definitions
from seqcls.runtime import CHANNELS
from seqcls.uris import is_bucket_uri

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # the job's <root>/checkpoints (seqcls.runtime)
# SDK v2's `distribution={"torch_distributed": {"enabled": True}}` sent this hyperparameter; we send it
# too, so the image's entrypoint knows to start torchrun on every host. seqcls.runtime ignores
# `sagemaker_*` keys, so it never reaches the job's settings.
TORCH_DISTRIBUTED_KEY = "sagemaker_torch_distributed_enabled"
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntimeInSeconds
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")


@dataclass(frozen=True)
class Job:
    """A checked submission: everything ModelTrainer needs, nothing read from the environment later."""

    image: str
    role: str
    region: str
    output_path: str
    channels: dict[str, str]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    base_job_name: str = "seqcls"
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1
    volume_gb: int = 50
    max_runtime_s: int = 4 * 3600
    spot: bool = False
    max_wait_s: int | None = None
    checkpoint_s3_uri: str | None = None
    network_isolation: bool = False
    torch_distributed: bool = False


def add_job_options(p: argparse.ArgumentParser) -> None:
    """The options that describe one training job; `job_from_args` checks them (submit and tune share both)."""
    p.add_argument("--image", required=True, help="ECR image URI (make push-ecr prints it)")
    p.add_argument("--role", required=True, help="SageMaker execution role ARN")
    p.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                   help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    p.add_argument("--base-job-name", default="seqcls", help="job name prefix; the SDK appends a timestamp")
    p.add_argument("--instance-type", default="ml.g5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--volume-gb", type=int, default=50, help="EBS volume per instance")
    p.add_argument("--max-runtime", type=int, default=4 * 3600, metavar="SECONDS")
    for channel in CHANNELS:
        p.add_argument(f"--{channel}", metavar="S3_URI", help=f"S3 prefix or object for the {channel} channel")
    p.add_argument("--output-path", required=True, metavar="S3_URI", help="where SageMaker uploads model.tar.gz")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a seqcls hyperparameter (repeat)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment (repeat)")
    p.add_argument("--spot", action="store_true", help="managed spot training (needs --checkpoint-s3-uri)")
    p.add_argument("--max-wait", type=int, metavar="SECONDS", help="spot: wait + run limit (default 2 x max runtime)")
    p.add_argument("--checkpoint-s3-uri", metavar="S3_URI", help="synced with /opt/ml/checkpoints")
    p.add_argument("--network-isolation", action="store_true",
                   help="no network in the container: the model must come in the model channel")
    p.add_argument("--torch-distributed", action="store_true",
                   help="torchrun on every host and GPU (required for --instance-count > 1)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.sagemaker.submit", description=__doc__.split("\n")[0])
    add_job_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request; call no AWS API")
    mode.add_argument("--wait", action="store_true", help="stream status and logs until the job ends")
    return p


def _check_s3(option: str, uri: str | None) -> None:
    if uri is not None and not is_bucket_uri(uri, "s3"):
        raise SubmitError(f"{option} {uri!r}: expected an s3://bucket/prefix URI")


def job_from_args(args: argparse.Namespace) -> Job:
    """Check the options against each other and the job's contract; raise SubmitError with the fix."""
    if not args.region:
        raise SubmitError("no AWS region: pass --region or set AWS_REGION")
    if not ROLE_ARN.match(args.role):
        raise SubmitError(f"--role {args.role!r}: expected an IAM role ARN, arn:aws:iam::<account>:role/<name>")
    channels = {c: getattr(args, c) for c in CHANNELS if getattr(args, c)}
    if "train" not in channels:
        raise SubmitError("--train is required: the job has no training data otherwise")
    for channel, uri in channels.items():
        _check_s3(f"--{channel}", uri)
    _check_s3("--output-path", args.output_path)
    _check_s3("--checkpoint-s3-uri", args.checkpoint_s3_uri)
    hyperparameters = job_hyperparameters(parse_pairs(args.hp, "--hp"))
    environment = check_environment(parse_pairs(args.env, "--env"))
    if args.instance_count < 1:
        raise SubmitError("--instance-count must be at least 1")
    if args.instance_count > 1 and not args.torch_distributed:
        raise SubmitError("--instance-count > 1 needs --torch-distributed; otherwise every host trains its own copy")
    if not 1 <= args.max_runtime <= MAX_RUNTIME_LIMIT_S:
        raise SubmitError(f"--max-runtime must be between 1 and {MAX_RUNTIME_LIMIT_S} seconds")
    max_wait = None
    if args.spot:
        if not args.checkpoint_s3_uri:
            raise SubmitError("--spot needs --checkpoint-s3-uri, so a reclaimed job resumes instead of restarting")
        max_wait = args.max_wait if args.max_wait is not None else min(2 * args.max_runtime, MAX_RUNTIME_LIMIT_S)
        if max_wait < args.max_runtime:
            raise SubmitError(f"--max-wait {max_wait} must be >= --max-runtime {args.max_runtime} (it includes the run)")
    elif args.max_wait is not None:
        raise SubmitError("--max-wait applies to --spot jobs only")
    if args.network_isolation:
        if "model" not in channels:
            raise SubmitError("--network-isolation needs --model s3://...: the container cannot download a model")
        if hyperparameters.get("output_uri"):
            raise SubmitError("--network-isolation: drop the output_uri hyperparameter; the container cannot reach "
                              "storage, SageMaker uploads /opt/ml/model to --output-path itself")
    if args.torch_distributed:
        hyperparameters[TORCH_DISTRIBUTED_KEY] = "true"
    return Job(image=args.image, role=args.role, region=args.region, output_path=args.output_path,
               channels=channels, hyperparameters=hyperparameters, environment=environment,
               base_job_name=args.base_job_name, instance_type=args.instance_type,
               instance_count=args.instance_count, volume_gb=args.volume_gb, max_runtime_s=args.max_runtime,
               spot=args.spot, max_wait_s=max_wait, checkpoint_s3_uri=args.checkpoint_s3_uri,
               network_isolation=args.network_isolation, torch_distributed=args.torch_distributed)


def build_trainer(job: Job, session: Session | None = None) -> ModelTrainer:
    """The ModelTrainer for `job`; no API call happens here when role validation is off."""
    session = session or Session(boto_session=boto3.Session(region_name=job.region))
    trainer = ModelTrainer(
        training_image=job.image,
        role=job.role,
        sagemaker_session=session,
        base_job_name=job.base_job_name,
        compute=Compute(instance_type=job.instance_type, instance_count=job.instance_count,
                        volume_size_in_gb=job.volume_gb, enable_managed_spot_training=job.spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=job.max_runtime_s,
                                             max_wait_time_in_seconds=job.max_wait_s),
        networking=Networking(enable_network_isolation=True) if job.network_isolation else None,
        checkpoint_config=(CheckpointConfig(s3_uri=job.checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH)
                           if job.checkpoint_s3_uri else None),
        output_data_config=OutputDataConfig(s3_output_path=job.output_path),
        hyperparameters=dict(job.hyperparameters),
        environment=dict(job.environment),
        input_data_config=[InputData(channel_name=name, data_source=uri) for name, uri in job.channels.items()],
    )
    problem_type = job.hyperparameters.get("problem_type", "single_label")
    return trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"])
                                            for m in metric_definitions(problem_type)])


@contextlib.contextmanager
def role_check_skipped() -> Iterator[None]:
    """The SDK checks the role with IAM while building; a dry run must call no AWS API."""
    saved = os.environ.get("SAGEMAKER_VALIDATE_ROLE")
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SAGEMAKER_VALIDATE_ROLE"]
        else:
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = saved


def create_request(trainer: ModelTrainer) -> dict[str, Any]:
    """The CreateTrainingJob request exactly as `trainer.train()` builds it (same SDK code path)."""
    return trainer._create_training_job_args(boto3=True)


def validate_request(request: dict[str, Any], region: str, operation: str = "CreateTrainingJob") -> None:
    """Check the request against botocore's model of `operation` (types, required keys, ranges)."""
    model = boto3.Session(region_name=region).client("sagemaker").meta.service_model
    report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
    if report.has_errors():
        raise SubmitError(f"{operation} request is invalid:\n{report.generate_report()}")


def training_request(job: Job) -> dict[str, Any]:
    """The CreateTrainingJob request for `job`, built offline (no IAM call); the tuning job reuses it."""
    with role_check_skipped():
        return create_request(build_trainer(job))


def dry_run(job: Job) -> dict[str, Any]:
    request = training_request(job)
    validate_request(request, job.region)
    return request


def submit(job: Job, wait: bool, session: Session | None = None) -> dict[str, str]:
    """Create the job; with `wait`, stream its logs and status until it ends. Returns name and ARN."""
    trainer = build_trainer(job, session)
    trainer.train(wait=wait, logs=wait)
    created = trainer._latest_training_job  # the SDK's documented handle on the job it created
    return {"training_job_name": created.training_job_name, "training_job_arn": created.training_job_arn,
            "status": str(created.training_job_status)}


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    job = job_from_args(args)
    if args.dry_run:
        print(json.dumps(dry_run(job), indent=2, sort_keys=True, default=str))
        return 0
    try:
        result = submit(job, wait=args.wait)
    except FailedStatusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    # A stopped job (someone stopped it, or spot never found capacity) is not a success either.
    return 0 if not args.wait or result["status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
