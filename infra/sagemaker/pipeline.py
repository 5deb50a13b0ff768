"""SageMaker Pipelines: train, read the promotion gate's outcome, branch on it (SDK v3's own pipeline classes).

    python -m infra.sagemaker.pipeline <the options of infra.sagemaker.submit> --hp promote_if=test_mcc \
        --hp output_uri=s3://bucket/seqcls/published [--pipeline-name seqcls-retrain] [--gate-instance-type ml.t3.medium] \
        [--model-package-group NAME] [--dry-run | --upsert [--pipeline-role ARN]]

Steps: `Train` (a TrainingStep whose CreateTrainingJob arguments come from the same ModelTrainer
`infra.sagemaker.submit` builds), `PromotionGate` (a ProcessingStep on the same image that takes
promotion.json out of the job's output.tar.gz into a PropertyFile), `Promoted` (a ConditionStep on
that file's `promoted_flag`) and, on its true branch, `Register`: a ProcessingStep running `seqcls register sagemaker`
in the image, which adds the run to a Model Package Group as an `Approved` version (this image serving the
job's model.tar.gz, its test metrics as ModelMetrics, the gate's record as CustomerMetadataProperties). A kept
run is not registered; its promotion.json (the gate step's output) says why. A ProcessingStep rather than
a RegisterModel step: SDK v3's ModelStep takes only ModelBuilder output, and local pipelines run no
RegisterModel step (sagemaker-mlops sagemaker/mlops/local/pipeline.py `_StepExecutorFactory`). The
`--env` variables reach every container the pipeline runs.

Why a ProcessingStep rather than the job's `promotion:promoted` metric: the service reports metric
definitions in DescribeTrainingJob's FinalMetricDataList, but SDK local mode does not (sagemaker-core
sagemaker/core/local/entities.py `_LocalTrainingJob.describe` has no FinalMetricDataList), while a
PropertyFile read by JsonGet works in both (sagemaker-mlops sagemaker/mlops/local/pipeline.py
`_evaluate_json_get_property_file_reference`). Airflow, which sees FinalMetricDataList, uses the metric.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
from sagemaker.core.processing import Processor
from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
from sagemaker.core.workflow.conditions import ConditionEquals
from sagemaker.core.workflow.functions import Join, JsonGet, PropertyFile
from sagemaker.core.workflow.pipeline_context import PipelineSession

from infra.common import SubmitError, run_cli
from infra.sagemaker import submit

GATE_INPUT = "/opt/ml/processing/training-output"
GATE_OUTPUT = "/opt/ml/processing/promotion"
REGISTER_INPUT = "/opt/ml/processing/model"
# Runs in the training image (its python3). The service's output.tar.gz holds /opt/ml/output/data's files
# at its root; local mode's holds /opt/ml/output itself (data/promotion.json: sagemaker-core
# sagemaker/core/local/image.py `retrieve_artifacts`), so the member is found by its base name.
EXTRACT = f"""
import json, os, sys, tarfile
with tarfile.open({GATE_INPUT + '/output.tar.gz'!r}) as tar:
    found = [m for m in tar.getmembers() if os.path.basename(m.name) == 'promotion.json']
    if not found:
        sys.exit('output.tar.gz has no promotion.json: set the promote_if hyperparameter so the job runs the gate')
    record = json.load(tar.extractfile(found[-1]))
with open({GATE_OUTPUT + '/promotion.json'!r}, 'w') as out:
    json.dump(record, out)
print(json.dumps({{'event': 'promotion_gate', **record}}))
"""


@contextlib.contextmanager
def default_region(region: str) -> Iterator[None]:
    """sagemaker-mlops needs a default region beyond the session's: importing it imports sagemaker.serve, whose
    ai_registry makes a boto3 client at class definition (sagemaker/ai_registry/air_hub.py,
    `AIRHub._sagemaker_client = boto3.client("sagemaker")`), and ProcessingStep() makes a LocalSession
    (sagemaker/mlops/workflow/steps.py, `LocalSagemakerClient().create_processing_job.__name__`). Without
    one both fail, so the job's region is the default while the pipeline is built."""
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)


@dataclass(frozen=True)
class Shape:
    """What the pipeline adds to the training job: its name, the small steps' instance, the registry group."""

    name: str = "seqcls-retrain"
    gate_instance_type: str = "ml.t3.medium"
    model_package_group: str = "seqcls"


def build(job: submit.Job, session: PipelineSession, shape: Shape = Shape()) -> Any:
    """The pipeline on `session` (a PipelineSession, or sagemaker-core's LocalPipelineSession to run it locally)."""
    if "promote_if" not in job.hyperparameters:
        raise SubmitError("the pipeline branches on the promotion gate: pass --hp promote_if=<metric> "
                          "(and --hp output_uri=s3://..., where latest.json lives)")
    with default_region(job.region):
        return _steps(importlib.import_module("sagemaker.mlops.workflow"), job, session, shape)


def _processor(job: submit.Job, session: PipelineSession, shape: Shape, entrypoint: list[str], name: str) -> Processor:
    return Processor(role=job.role, image_uri=job.image, instance_count=1, instance_type=shape.gate_instance_type,
                     entrypoint=entrypoint, env=dict(job.environment) or None, sagemaker_session=session,
                     base_job_name=name)


def _beside_job(job: submit.Job, train: Any, *names: str) -> Join:
    """<S3OutputPath>/<this execution's job name>/<names>: where SageMaker writes the job's output (local mode
    too: sagemaker-core sagemaker/core/local/utils.py `move_to_destination`) and the pipeline its own files."""
    return Join(on="/", values=[job.output_path.rstrip("/"), train.properties.TrainingJobName, *names])


def _register(wf: ModuleType, job: submit.Job, session: PipelineSession, shape: Shape, train: Any) -> Any:
    """`seqcls register` on the promoted run's model.tar.gz (its records), writing the statistics beside the job."""
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    statistics = _beside_job(job, train, "model-metrics.json")
    processor = _processor(job, session, shape, ["python3", "-m", "seqcls", "register", "sagemaker"], "seqcls-register")
    return wf.ProcessingStep(name="Register", step_args=processor.run(
        inputs=[ProcessingInput(input_name="model", s3_input=ProcessingS3Input(
            s3_uri=model_data, local_path=REGISTER_INPUT, s3_data_type="S3Prefix", s3_input_mode="File"))],
        arguments=["--model", REGISTER_INPUT + "/model.tar.gz", "--model_package_group", shape.model_package_group,
                   "--image", job.image, "--model_data_url", model_data, "--statistics_uri", statistics,
                   "--region", job.region]))


def _steps(wf: ModuleType, job: submit.Job, session: PipelineSession, shape: Shape) -> Any:
    train = wf.TrainingStep(name="Train", step_args=submit.build_trainer(job, session).train())
    training_output = _beside_job(job, train, "output", "output.tar.gz")
    processor = _processor(job, session, shape, ["python3", "-c", EXTRACT], "seqcls-gate")
    promotion = PropertyFile(name="Promotion", output_name="promotion", path="promotion.json")
    gate = wf.ProcessingStep(name="PromotionGate", property_files=[promotion], step_args=processor.run(
        inputs=[ProcessingInput(input_name="training-output", s3_input=ProcessingS3Input(
            s3_uri=training_output, local_path=GATE_INPUT, s3_data_type="S3Prefix", s3_input_mode="File"))],
        outputs=[ProcessingOutput(output_name="promotion", s3_output=ProcessingS3Output(
            s3_uri=_beside_job(job, train, "promotion"),
            local_path=GATE_OUTPUT, s3_upload_mode="EndOfJob"))]))
    promoted = wf.ConditionStep(
        name="Promoted",
        conditions=[ConditionEquals(left=JsonGet(step_name=gate.name, property_file=promotion, json_path="promoted_flag"),
                                    right=1)],
        if_steps=[_register(wf, job, session, shape, train)], else_steps=[])
    return wf.Pipeline(name=shape.name, steps=[train, gate, promoted], sagemaker_session=session)


def definition(pipeline: Any) -> dict[str, Any]:
    return json.loads(pipeline.definition())


def create_request(pipeline: Any, role: str) -> dict[str, Any]:
    """The CreatePipeline request `pipeline.create()` sends (the SDK's own builder), with the idempotency token
    botocore adds before it validates (botocore/handlers.py `generate_idempotent_uuid`)."""
    request = pipeline._create_args(role, "seqcls retraining; latest.json moves only when the gate passes", None)
    request.setdefault("ClientRequestToken", str(uuid.uuid4()))
    return request


def validate_definition(pipeline: Any, region: str, role: str) -> None:
    """The CreatePipeline request this definition makes, checked against botocore's model of the API."""
    submit.validate_request(create_request(pipeline, role), region, "CreatePipeline")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.sagemaker.pipeline", description=__doc__.split("\n")[0])
    submit.add_job_options(p)
    p.add_argument("--pipeline-name", default="seqcls-retrain")
    p.add_argument("--gate-instance-type", default="ml.t3.medium",
                   help="the processing instance that reads the outcome and registers a promoted run")
    p.add_argument("--pipeline-role", help="the role SageMaker Pipelines runs as (default: --role)")
    p.add_argument("--model-package-group", default="seqcls",
                   help="the Model Package Group a promoted run is registered in (created on the first one)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the pipeline definition JSON; call no AWS API")
    mode.add_argument("--upsert", action="store_true", help="create or update the pipeline in the account")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    job = submit.job_from_args(args)
    session = PipelineSession(boto_session=boto3.Session(region_name=job.region))
    with submit.role_check_skipped():
        pipeline = build(job, session, Shape(args.pipeline_name, args.gate_instance_type, args.model_package_group))
        validate_definition(pipeline, job.region, args.pipeline_role or job.role)
    if args.dry_run:
        print(json.dumps(definition(pipeline), indent=2, sort_keys=True))
        return 0
    print(json.dumps(pipeline.upsert(role_arn=args.pipeline_role or job.role), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
