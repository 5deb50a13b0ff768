"""Scheduled retraining: the state machine, its job name, the CloudFormation stack, the Vertex body."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.validate import ParamValidator
from croniter import croniter
from google.cloud.aiplatform_v1.types import CustomJob
from moto import mock_aws

from infra.schedule.aws import render
from infra.vertex import submit as vertex_submit

ROOT = Path(__file__).resolve().parents[2]
AWS_DIR = ROOT / "infra" / "schedule" / "aws"
EXAMPLE_ASL = AWS_DIR / "retrain.example.asl.json"
EXAMPLE_BODY = ROOT / "infra" / "schedule" / "vertex" / "retrain.example.json"
SFN_ROLE = "arn:aws:iam::123456789012:role/StepFunctions"


def _example_commands() -> dict[str, list[str]]:
    """The argv of each python command `make schedule-examples` runs, as make expands them."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "schedule-examples"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    commands = {}
    for line in out.splitlines():
        argv = shlex.split(line.split(" > ")[0])
        commands[argv[2]] = argv[3:]  # python -m MODULE ARGS...
    return commands


def _asl() -> dict:
    return json.loads(EXAMPLE_ASL.read_text(encoding="utf-8"))


def test_committed_examples_match_the_submitters(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The examples are what the renderers print today (rerun `make schedule-examples` after a change)."""
    commands = _example_commands()
    assert render.main(commands["infra.schedule.aws.render"]) == 0
    assert json.loads(capsys.readouterr().out) == _asl()
    assert vertex_submit.main(commands["infra.vertex.submit"]) == 0
    assert CustomJob.from_json(capsys.readouterr().out) == CustomJob.from_json(EXAMPLE_BODY.read_text(encoding="utf-8"))


def test_state_machine_runs_one_sync_training_job_and_fails_loudly() -> None:
    states = _asl()["States"]
    assert _asl()["StartAt"] == "SplitStartTime"
    assert states["SplitStartTime"]["Next"] == "NameJob" and states["NameJob"]["Next"] == "Train"
    train = states["Train"]
    assert train["Type"] == "Task"
    assert train["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    assert train["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "TrainingFailed"}]
    assert states["TrainingFailed"] == {"Type": "Fail", "Error": "SeqclsTrainingFailed", "CausePath": "$.error.Cause"}


def test_training_parameters_are_a_valid_create_training_job_request() -> None:
    """With the run-time fields filled in, the Task's Parameters pass botocore's CreateTrainingJob model."""
    parameters = copy.deepcopy(_asl()["States"]["Train"]["Parameters"])
    assert parameters.pop("TrainingJobName.$") == "$.job.name"
    checkpoint = parameters["CheckpointConfig"]
    assert checkpoint.pop("S3Uri.$") == "States.Format('s3://example-seqcls-artifacts/checkpoints/{}', $.job.name)"
    parameters["TrainingJobName"] = "seqcls-20261124-030000"
    checkpoint["S3Uri"] = "s3://example-seqcls-artifacts/checkpoints/seqcls-20261124-030000"
    shape = boto3.Session(region_name="eu-west-1").client("sagemaker").meta.service_model \
        .operation_model("CreateTrainingJob").input_shape
    report = ParamValidator().validate(parameters, shape)
    assert not report.has_errors(), report.generate_report()
    assert parameters["HyperParameters"] == {"epochs": "4"}
    assert parameters["EnableNetworkIsolation"] is True
    assert {c["ChannelName"] for c in parameters["InputDataConfig"]} == {"train", "test", "model"}
    assert len(parameters["AlgorithmSpecification"]["MetricDefinitions"]) >= 5


def _run(definition: dict, execution_input: dict) -> dict:
    sfn = boto3.client("stepfunctions", region_name="eu-west-1")
    arn = sfn.create_state_machine(name=f"t{time.monotonic_ns()}", definition=json.dumps(definition),
                                   roleArn=SFN_ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, input=json.dumps(execution_input))["executionArn"]
    for _ in range(100):
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError("execution did not finish")


@mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
def test_job_name_intrinsics_evaluate_to_a_valid_timestamped_name(aws_offline: None) -> None:
    """moto's ASL interpreter parses the whole definition and evaluates the naming states for real.

    moto cannot run createTrainingJob.sync, so the run stops before Train, and its context object holds
    StartTime as a datetime where AWS gives an ISO string: the test feeds that string as input instead.
    """
    asl = _asl()
    boto3.client("stepfunctions", region_name="eu-west-1").create_state_machine(
        name="full", definition=json.dumps(asl), roleArn=SFN_ROLE)  # the grammar accepts the real definition
    states = asl["States"]
    split = copy.deepcopy(states["SplitStartTime"])
    split["Parameters"]["parts.$"] = split["Parameters"]["parts.$"].replace("$$.Execution.StartTime", "$.isoStartTime")
    checkpoint = {"Type": "Pass", "Parameters": {
        "name.$": "$.job.name", "checkpoint.$": states["Train"]["Parameters"]["CheckpointConfig"]["S3Uri.$"]}, "End": True}
    naming = {"StartAt": "SplitStartTime", "States": {
        "SplitStartTime": split, "NameJob": {**states["NameJob"], "Next": "Show"}, "Show": checkpoint}}
    done = _run(naming, {"isoStartTime": "2026-11-24T03:00:07.123Z"})
    assert done["status"] == "SUCCEEDED", done
    output = json.loads(done["output"])
    assert output == {"name": "seqcls-20261124-030007",
                      "checkpoint": "s3://example-seqcls-artifacts/checkpoints/seqcls-20261124-030007"}
    pattern = boto3.client("sagemaker", region_name="eu-west-1").meta.service_model \
        .shape_for("TrainingJobName").metadata["pattern"]
    assert re.fullmatch(pattern, output["name"])


def _aws_cron_to_unix(expression: str) -> str:
    """cron(min hour dom month dow year) -> the 5-field form croniter reads; `?` means 'any'."""
    found = re.fullmatch(r"cron\((.+)\)", expression)
    assert found, expression
    fields = found.group(1).split()
    assert len(fields) == 6, "AWS cron has six fields"
    assert (fields[2] == "?") != (fields[4] == "?"), "exactly one of day-of-month and day-of-week is '?'"
    return " ".join("*" if f == "?" else f for f in fields[:5])


def test_cloudformation_stack_wires_schedule_to_state_machine() -> None:
    template = json.loads((AWS_DIR / "retrain.cfn.json").read_text(encoding="utf-8"))
    resources = template["Resources"]
    assert resources["StateMachine"]["Type"] == "AWS::StepFunctions::StateMachine"
    assert resources["StateMachine"]["Properties"]["DefinitionS3Location"] == "retrain.asl.json"
    schedule = resources["Schedule"]
    assert schedule["Type"] == "AWS::Scheduler::Schedule"
    assert schedule["Properties"]["Target"]["Arn"] == {"Ref": "StateMachine"}
    statements = resources["StateMachineRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    # What createTrainingJob.sync needs: the job calls, the managed EventBridge rule, passing the job's role.
    assert {"sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
            "events:PutTargets", "events:PutRule", "events:DescribeRule", "iam:PassRole"} <= actions
    assert resources["FailureAlarm"]["Properties"]["MetricName"] == "ExecutionsFailed"

    unix = _aws_cron_to_unix(template["Parameters"]["ScheduleExpression"]["Default"])
    assert croniter.is_valid(unix)
    after = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)  # a Tuesday
    assert croniter(unix, after).get_next(datetime) == datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)


def test_vertex_scheduler_job_posts_the_custom_job(tmp_path: Path) -> None:
    env = {**os.environ, "DRY_RUN": "1", "SCHEDULER_SA": "scheduler@example-project.iam.gserviceaccount.com",
           "SCHEDULE": "30 2 * * *", "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "infra/schedule/vertex/create-scheduler-job.sh"), *_example_commands()["infra.vertex.submit"][:-1]],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    command, body = done.stdout.split("\n", 1)
    argv = shlex.split(command)
    assert argv[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]
    option = {argv[i]: argv[i + 1] for i in range(5, len(argv) - 1) if argv[i].startswith("--")}
    assert option["--uri"] == ("https://us-central1-aiplatform.googleapis.com/v1/projects/example-project"
                               "/locations/us-central1/customJobs")
    assert option["--http-method"] == "POST"
    assert croniter.is_valid(option["--schedule"])
    assert CustomJob.from_json(body) == CustomJob.from_json(EXAMPLE_BODY.read_text(encoding="utf-8"))
