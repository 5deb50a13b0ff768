"""The SageMaker pipeline (infra/sagemaker/pipeline.py): its definition, and a run in SDK v3's local pipeline mode.

Local pipeline mode in SDK v3 is split across two sessions: sagemaker-core's
`sagemaker.core.workflow.pipeline_context.LocalPipelineSession` (a PipelineSession, so `ModelTrainer.train()`
and `Processor.run()` return step arguments instead of starting jobs) and sagemaker-mlops's
`sagemaker.mlops.local.LocalPipelineSession`, which owns `create_pipeline`/`start_pipeline_execution` and
runs each step through local mode (sagemaker/mlops/local/local_pipeline_session.py, pipeline.py
`_TrainingStepExecutor`, `_ProcessingStepExecutor`, `_ConditionStepExecutor`). Channels, output.tar.gz and
the PropertyFile travel through S3, which the SDK reads and writes from the host: SeaweedFS on loopback,
reached with `s3_endpoint_url`; the containers never talk to it. The `Register` step's container calls SageMaker and
S3 itself (CreateModelPackage, the statistics object), as it does on the service with the job's role: here moto's
server, listening on the host's own address, since local mode's compose network cannot reach loopback; the
pipeline's `--env` AWS_ENDPOINT_URL_* (botocore's service-specific endpoint variables) point it there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.common import SubmitError
from infra.sagemaker import pipeline, submit
from jobtools import cola_lines

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SEQCLS_IMAGE", "")
ROLE = "arn:aws:iam::123456789012:role/SeqclsTraining"


def _example_argv() -> list[str]:
    out = subprocess.run(["make", "-n", "--no-print-directory", "schedule-examples"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if "-m infra.sagemaker.pipeline " in line]
    return shlex.split(line.split(" > ")[0])[3:]


def test_definition_validates_as_a_create_pipeline_request(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run validates the CreatePipeline request against botocore's model and prints the definition."""
    assert pipeline.main(_example_argv()) == 0
    definition = json.loads(capsys.readouterr().out)
    steps = {step["Name"]: step for step in definition["Steps"]}
    assert [s["Type"] for s in definition["Steps"]] == ["Training", "Processing", "Condition"]
    argv = _example_argv()
    job = submit.job_from_args(pipeline._parser().parse_args(argv))
    request = {k: v for k, v in submit.dry_run(job).items() if k != "TrainingJobName"}
    # The TrainingStep's arguments are the request infra.sagemaker.submit --dry-run prints, apart from the
    # job name, which the service gives each execution.
    assert steps["Train"]["Arguments"] == json.loads(json.dumps(request))
    (condition,) = steps["Promoted"]["Arguments"]["Conditions"]
    assert condition == {"Type": "Equals", "RightValue": 1, "LeftValue": {"Std:JsonGet": {
        "Path": "promoted_flag", "PropertyFile": {"Get": "Steps.PromotionGate.PropertyFiles.Promotion"}}}}
    (gate_input,) = steps["PromotionGate"]["Arguments"]["ProcessingInputs"]
    assert gate_input["S3Input"]["S3Uri"] == {"Std:Join": {"On": "/", "Values": [
        job.output_path, {"Get": "Steps.Train.TrainingJobName"}, "output", "output.tar.gz"]}}
    # The promoted branch registers the run; the kept branch does nothing.
    (register,) = steps["Promoted"]["Arguments"]["IfSteps"]
    assert steps["Promoted"]["Arguments"]["ElseSteps"] == []
    app = register["Arguments"]["AppSpecification"]
    assert app["ContainerEntrypoint"] == ["python3", "-m", "seqcls", "register", "sagemaker"] and app["ImageUri"] == job.image
    model_data = {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    args = app["ContainerArguments"]
    assert args[args.index("--model_data_url") + 1] == model_data and args[args.index("--image") + 1] == job.image
    assert register["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] == model_data


def test_a_pipeline_without_the_gate_is_refused(aws_offline: None) -> None:
    argv = _example_argv()
    at = argv.index("promote_if=test_mcc")
    job = submit.job_from_args(pipeline._parser().parse_args(argv[:at - 1] + argv[at + 1:]))
    with pytest.raises(SubmitError, match="promote_if"):
        pipeline.build(job, None)


def test_register_arguments_are_what_seqcls_register_parses(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The step's ContainerArguments name only options the image's `seqcls register` accepts (argparse would exit 2)."""
    from seqcls import cli

    assert pipeline.main(_example_argv()) == 0
    steps = {step["Name"]: step for step in json.loads(capsys.readouterr().out)["Steps"]}
    args = steps["Promoted"]["Arguments"]["IfSteps"][0]["Arguments"]["AppSpecification"]["ContainerArguments"]
    resolved = [a if isinstance(a, str) else "s3://bucket/jobs/job-1/model-metrics.json" for a in args]
    parsed = cli.register_parser().parse_args(["sagemaker", *resolved])  # an unknown or missing option exits 2
    assert parsed.model == Path("/opt/ml/processing/model/model.tar.gz") and parsed.model_package_group == "seqcls"
    assert parsed.region == "eu-west-1" and parsed.statistics_uri.endswith("/model-metrics.json")


def test_committed_example_is_the_dry_run(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Rerun `make schedule-examples` after changing the pipeline."""
    assert pipeline.main(_example_argv()) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((ROOT / "infra" / "sagemaker" / "retrain-pipeline.example.json")
                                                             .read_text(encoding="utf-8"))


@pytest.mark.image
@pytest.mark.skipif(not IMAGE, reason="SEQCLS_IMAGE is not set: `make image-test` builds the image and runs these")
def test_pipeline_runs_in_local_pipeline_mode(tmp_path: Path, cola_dir: Path, minilm_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Train -> PromotionGate -> Promoted -> Register on the built image: the first gated run is promoted, so the
    condition holds and the run lands in the Model Package Group as an Approved version."""
    import boto3
    from sagemaker.core.workflow.pipeline_context import LocalPipelineSession as StepArgumentsSession

    from storage_servers import s3_with_bucket

    with s3_with_bucket(tmp_path / "weed", "seqcls-local", "seqcls-local-secret", "seqcls") as s3, \
            moto_on_host_address() as (registry_endpoint, local_endpoint):
        for key, value in {**s3.env(), "SAGEMAKER_VALIDATE_ROLE": "false"}.items():
            monkeypatch.setenv(key, value)
        client = s3.client()
        client.put_object(Bucket="seqcls", Key="data/train/train.tsv",
                          Body="".join(cola_lines(cola_dir, "in_domain_train.tsv", 0, 160)).encode())
        client.put_object(Bucket="seqcls", Key="data/test/test.tsv",
                          Body="".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, 64)).encode())
        for path in (p for p in minilm_path.rglob("*") if p.is_file()):
            client.upload_file(str(path), "seqcls", f"data/model/{path.relative_to(minilm_path)}")
        job = submit.job_from_args(pipeline._parser().parse_args([
            "--image", IMAGE, "--role", ROLE, "--region", "us-east-1", "--train", "s3://seqcls/data/train/",
            "--test", "s3://seqcls/data/test/", "--model", "s3://seqcls/data/model/", "--output-path", "s3://seqcls/jobs",
            "--instance-type", "local", "--hp", "epochs=1", "--hp", "promote_if=test_mcc",
            # A folder in the container: local mode's compose network cannot reach the loopback S3 server.
            "--hp", "output_uri=/tmp/published", "--env", f"AWS_ENDPOINT_URL_SAGEMAKER={registry_endpoint}",
            "--env", f"AWS_ENDPOINT_URL_S3={registry_endpoint}", "--dry-run"]))
        moto = {"endpoint_url": local_endpoint, "region_name": "us-east-1"}
        boto3.client("s3", **moto).create_bucket(Bucket="seqcls")  # where the register step writes the statistics
        session = {"boto_session": boto3.Session(region_name="us-east-1"), "s3_endpoint_url": s3.endpoint}
        built = pipeline.build(job, StepArgumentsSession(**session), pipeline.Shape(gate_instance_type="local"))
        from sagemaker.mlops.local import LocalPipelineSession

        runner = LocalPipelineSession(**session)
        runner.create_pipeline(built, "seqcls local pipeline test")
        execution = runner.start_pipeline_execution(PipelineName=built.name)
        steps = {step["StepName"]: step for step in execution.list_steps()["PipelineExecutionSteps"]}
        assert execution.describe()["PipelineExecutionStatus"] == "Succeeded", steps
        assert steps["Promoted"]["Metadata"]["Condition"]["Outcome"] is True
        # The PropertyFile the condition read is the job's own promotion record, uploaded by the gate step.
        job_name = steps["Train"]["Metadata"]["TrainingJob"]["Arn"]
        record = json.loads(client.get_object(Bucket="seqcls", Key=f"jobs/{job_name}/promotion/promotion.json")["Body"].read())
        assert record["promoted_flag"] == 1 and record["metric"] == "test_mcc" and record["current_run_id"] is None
        # The Register step ran `seqcls register` in the image: one Approved version of this run, serving its model.tar.gz.
        sagemaker = boto3.client("sagemaker", **moto)
        (summary,) = sagemaker.list_model_packages(ModelPackageGroupName="seqcls")["ModelPackageSummaryList"]
        package = sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        assert package["ModelApprovalStatus"] == "Approved"
        (container,) = package["InferenceSpecification"]["Containers"]
        assert container["Image"] == IMAGE
        assert container["ModelDataUrl"] == f"s3://seqcls/jobs/{job_name}/output/model.tar.gz"
        meta = package["CustomerMetadataProperties"]
        assert meta["seqcls:metric"] == "test_mcc" and float(meta["seqcls:value"]) == record["value"]
        statistics_key = f"jobs/{job_name}/model-metrics.json"
        assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == f"s3://seqcls/{statistics_key}"
        stats = json.loads(boto3.client("s3", **moto).get_object(Bucket="seqcls", Key=statistics_key)["Body"].read())
        assert set(stats["binary_classification_metrics"]) >= {"mcc", "accuracy", "loss"}


@contextlib.contextmanager
def moto_on_host_address() -> Iterator[tuple[str, str]]:
    """moto's server on every interface; yields the URL containers use (this host's outbound address, which a
    container on a bridge network reaches) and the loopback URL the test uses."""
    from moto.server import ThreadedMotoServer

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface of the default route
        address = probe.getsockname()[0]
    with socket.socket() as free:
        free.bind(("0.0.0.0", 0))
        port = free.getsockname()[1]
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=port, verbose=False)
    server.start()
    try:
        yield f"http://{address}:{port}", f"http://127.0.0.1:{port}"
    finally:
        server.stop()
