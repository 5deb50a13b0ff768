"""`seqcls register` (issue 25): a promoted run becomes an Approved version in a SageMaker Model Package Group.

Real gated jobs (the 1-layer model, CoLA rows) write the records; their model folder is packed as SageMaker packs
model.tar.gz, and the command runs against moto's SageMaker and S3, which record the CreateModelPackage request
and the statistics object as the service would. The request is also checked against botocore's model of
CreateModelPackage, the API reference moto and the service share.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.validate import ParamValidator
from moto import mock_aws

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_subprocess

pytestmark = pytest.mark.slow  # whole jobs

GROUP, IMAGE = "seqcls-cola", "123456789012.dkr.ecr.us-east-1.amazonaws.com/seqcls:abc"
MODEL_URL = "s3://models/jobs/week-2/output/model.tar.gz"
STATS_URI = "s3://models/jobs/week-2/model-metrics.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cola_dir) -> dict[str, Path]:
    """week-1 (promoted: the first gated run), week-2 (promoted: two epochs beat one on test_loss), week-3 (kept:
    `better` needs a clear win over an identical retrain); each as the model.tar.gz SageMaker would upload."""
    base = tmp_path_factory.mktemp("registry")
    (base / "train.tsv").write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    (base / "test.tsv").write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 120), encoding="utf-8")
    model = build_tiny_model(base / "tiny", minilm_folder())
    packed = {}
    for run_id, extra in (("week-1", []), ("week-2", ["--epochs", "2"]), ("week-3", ["--epochs", "2", "--promote_rule", "better"])):
        args = ["--train", str(base / "train.tsv"), "--test", str(base / "test.tsv"), "--model_name_or_path", str(model),
                "--epochs", "1", "--max_length", "32", "--learning_rate", "1e-3", "--output_dir", str(base / run_id),
                "--run_id", run_id, "--output_uri", str(base / "published"), "--promote_if", "test_loss", *extra]
        outcome = run_subprocess(base / run_id, args)
        assert outcome.code == 0, outcome.stderr[-3000:]
        packed[run_id] = base / f"{run_id}.tar.gz"
        with tarfile.open(packed[run_id], "w:gz") as tar:  # files at the archive's root, as the service packs /opt/ml/model
            for path in sorted((base / run_id / "model").iterdir()):
                tar.add(path, arcname=path.name)
    return packed


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        yield boto3.client("sagemaker")


def register(model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from seqcls import cli

    code = cli.main(["register", "sagemaker", "--model", str(model), "--model_package_group", GROUP, "--image", IMAGE,
                     "--model_data_url", MODEL_URL, "--statistics_uri", STATS_URI])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_promoted_run_is_registered_approved_with_its_metrics_and_the_gate_record(runs, aws, capsys) -> None:
    code, out = register(runs["week-2"], capsys)
    assert code == 0, out
    (summary,) = aws.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    package = aws.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
    assert package["ModelApprovalStatus"] == "Approved"
    (container,) = package["InferenceSpecification"]["Containers"]
    assert container["Image"] == IMAGE and container["ModelDataUrl"] == MODEL_URL
    assert "text/csv" in package["InferenceSpecification"]["SupportedContentTypes"]
    meta = package["CustomerMetadataProperties"]
    metrics = json.loads(tarfile.open(runs["week-2"]).extractfile("metrics.json").read())
    record = metrics["promotion"]
    assert meta["seqcls:run_id"] == "week-2" and meta["seqcls:champion_run_id"] == "week-1"
    assert meta["seqcls:metric"] == "test_loss" and float(meta["seqcls:value"]) == record["value"]
    assert float(meta["seqcls:champion_value"]) == record["current_value"]
    assert float(meta["seqcls:difference"]) == record["comparison"]["improvement"] > 0
    assert meta["seqcls:rows"] == "120"
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == STATS_URI
    stats = json.loads(boto3.client("s3").get_object(Bucket="models", Key="jobs/week-2/model-metrics.json")["Body"].read())
    assert stats["binary_classification_metrics"]["mcc"]["value"] == metrics["test"]["mcc"]
    assert stats["binary_classification_metrics"]["loss"]["value"] == metrics["test"]["loss"]
    [event] = [json.loads(line) for line in out.splitlines() if '"model_registered"' in line]
    assert event["model_package_arn"] == summary["ModelPackageArn"]


def test_the_request_is_valid_for_the_service_model(runs) -> None:
    from seqcls.promotion import registry

    metrics, manifest = registry.read_records(runs["week-2"])
    request = registry.create_request(registry.Registration(GROUP, IMAGE, MODEL_URL, STATS_URI), manifest,
                                      registry.promoted_record(metrics))
    model = boto3.Session(region_name="us-east-1").client("sagemaker").meta.service_model
    report = ParamValidator().validate(request, model.operation_model("CreateModelPackage").input_shape)
    assert not report.has_errors(), report.generate_report()


def test_a_kept_run_is_not_registered_and_says_why(runs, aws, capsys) -> None:
    code, out = register(runs["week-3"], capsys)
    assert code == 2
    assert "the gate kept the current run, so this run is not registered" in out and "promote_rule=better" in out
    with pytest.raises(aws.exceptions.ClientError):  # no group was even created
        aws.describe_model_package_group(ModelPackageGroupName=GROUP)


def test_a_second_promotion_adds_a_version_to_the_same_group(runs, aws, capsys) -> None:
    assert register(runs["week-1"], capsys)[0] == 0
    assert register(runs["week-2"], capsys)[0] == 0
    versions = aws.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    assert sorted(v["ModelPackageVersion"] for v in versions) == [1, 2]


def test_not_a_run_and_a_bad_statistics_uri_are_clear_errors(runs, aws, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out = register(tmp_path / "empty", capsys)
    assert code == 2 and "has no metrics.json, run_manifest.json: is it a seqcls run's model?" in out
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    code, out = register(tmp_path / "junk.tar.gz", capsys)
    assert code == 2 and "not a readable model.tar.gz" in out
    from seqcls import cli

    code = cli.main(["register", "sagemaker", "--model", str(runs["week-2"]), "--model_package_group", GROUP, "--image", IMAGE,
                     "--model_data_url", MODEL_URL, "--statistics_uri", "s3://models/stats"])
    assert code == 2 and "must be s3://bucket/key.json" in capsys.readouterr().err


# --- Vertex AI Model Registry: `seqcls register vertex` ---------------------------------------------------------

PROJECT, REGION = "stub-project", "us-central1"
VERTEX_IMAGE = "us-central1-docker.pkg.dev/stub-project/seqcls/seqcls:abc"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    from storage_servers import FakeGCS

    server = FakeGCS(tmp_path_factory.mktemp("gcs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vertex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcs):
    """The Vertex REST stub with service-account ADC, a fresh SDK configuration, and the GCS emulator."""
    import vertex_stub
    from google.cloud.aiplatform import initializer
    from json_stub import service_account_file

    stub = vertex_stub.VertexStub()
    server = vertex_stub.start(stub)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path / "key.json",
                                                                                  f"{stub.endpoint}/token")))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    initializer.global_config.__init__()  # aiplatform.init is process-wide
    yield stub
    initializer.global_config.__init__()
    server.shutdown()


def publish(tmp_path: Path, cola_dir: Path, gcs, uri: str, run_id: str, *extra: str) -> None:
    """A gated run published to the GCS emulator (its first run is promoted; `extra` decides the next)."""
    (tmp_path / "train.tsv").write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    (tmp_path / "test.tsv").write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 120), encoding="utf-8")
    model = tmp_path / "tiny"
    if not model.exists():
        build_tiny_model(model, minilm_folder())
    outcome = run_subprocess(tmp_path / run_id, [
        "--train", str(tmp_path / "train.tsv"), "--test", str(tmp_path / "test.tsv"), "--model_name_or_path", str(model),
        "--epochs", "1", "--max_length", "32", "--learning_rate", "1e-3", "--output_dir", str(tmp_path / run_id),
        "--run_id", run_id, "--output_uri", uri, "--promote_if", "test_loss", *extra], {"STORAGE_EMULATOR_HOST": gcs.url})
    assert outcome.code == 0, outcome.stderr[-3000:]


def register_vertex(stub, uri: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from seqcls import cli

    code = cli.main(["register", "vertex", "--published", uri, "--project", PROJECT, "--region", REGION,
                     "--model_id", "seqcls-cola", "--image", VERTEX_IMAGE, "--api_endpoint", stub.endpoint])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_vertex_promoted_runs_become_versions_of_one_model_and_champion_moves(vertex, gcs, tmp_path, cola_dir, capsys) -> None:
    from google.cloud import storage as gcs_storage

    gcs_storage.Client().create_bucket("seqcls-vertex")
    uri = "gs://seqcls-vertex/published"
    publish(tmp_path, cola_dir, gcs, uri, "week-1")
    code, out = register_vertex(vertex, uri, capsys)
    assert code == 0, out
    publish(tmp_path, cola_dir, gcs, uri, "week-2", "--epochs", "2")
    code, out = register_vertex(vertex, uri, capsys)
    assert code == 0, out
    first, second = (r.body for r in vertex.sent("POST", "models:upload"))
    model = f"projects/{PROJECT}/locations/{REGION}/models/seqcls-cola"
    assert first["modelId"] == "seqcls-cola" and "parentModel" not in first  # the first registration creates it
    assert second["parentModel"] == model and "modelId" not in second
    spec = second["model"]["containerSpec"]
    assert spec["imageUri"] == VERTEX_IMAGE and spec["args"] == ["serve"]
    assert (spec["predictRoute"], spec["healthRoute"], spec["ports"]) == ("/predict", "/health", [{"containerPort": 8080}])
    assert second["model"]["artifactUri"] == f"{uri}/week-2" and second["model"]["labels"] == {"seqcls-run": "week-2"}
    assert sorted(second["model"]["versionAliases"]) == ["champion", "default"]
    assert "test_loss" in second["model"]["versionDescription"]
    assert vertex.resources[f"{model}@1"]["versionAliases"] == []  # the alias moved to version 2
    [event] = [json.loads(line) for line in out.splitlines() if '"model_registered"' in line]
    assert event["version_id"] == "2" and event["run_id"] == "week-2" and event["alias"] == "champion"


def test_vertex_refuses_a_location_vertex_cannot_read(vertex, tmp_path, capsys) -> None:
    code, out = register_vertex(vertex, str(tmp_path / "published"), capsys)
    assert code == 2 and "Vertex AI reads models from gs://bucket/prefix (or its /gcs/ mount)" in out
    assert vertex.requests == []  # nothing was fetched or sent
    from seqcls.promotion import registry

    with pytest.raises(registry.RegistryError, match="Vertex AI reads models from gs://"):
        registry.vertex_artifact_uri("s3://bucket/published", "week-1")
    assert registry.vertex_artifact_uri("/gcs/bucket/published", "week-1") == "gs://bucket/published/week-1"
