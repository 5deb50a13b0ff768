"""`seqcls register`: a promoted run becomes an `Approved` version in a SageMaker Model Package Group
(`seqcls register sagemaker`), or the `champion` version of a Vertex AI Model Registry model (`seqcls register vertex`).

The SageMaker pipeline runs it in this image on the gate's promoted branch (infra/sagemaker/pipeline.py),
because SDK v3's ModelStep takes only ModelBuilder output and local pipelines run no RegisterModel step. It
reads the run's own record from model.tar.gz (metrics.json, run_manifest.json: what the gate decided, on
which rows), writes the test metrics as a model-quality statistics file to S3, and creates the package
version: this image as the inference container (it serves: `serve`), the training job's model.tar.gz,
ModelMetrics, CustomerMetadataProperties (run id, metric, both models' values, the difference) and
`Approved`. A run the gate kept is refused: it is not registered, and its record says why.

On Vertex the KFP pipeline runs `seqcls register vertex` on its promoted branch (infra/vertex/pipeline.py): the run
`<output_uri>/latest.json` names, fetched and verified as `seqcls predict` fetches it, is uploaded through
aiplatform's SDK as a new version of one model (created on the first registration), serving with this image on
its AIP routes, with the alias `champion` (and `default`): an alias names one version of a model at a time, so
giving it to the new version takes it from the old one (cloud.google.com/vertex-ai/docs/model-registry/model-alias).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import logs, runtime, storage
from ..errors import ModelError, UserError
from ..problem_types import TYPES
from ..records import METRICS, RUN_MANIFEST, Decision, Metrics, RunManifest
from ..uris import parse_uri

READ_LIMIT = 1024 * 1024  # metrics.json and run_manifest.json are a few KiB
RECORDS = (METRICS, RUN_MANIFEST)
# What `seqcls serve` takes and answers on /invocations (docs/serving.md), requests and responses alike.
SERVED_TYPES = ["application/json", "application/jsonlines", "text/csv"]
METADATA_VALUE_LIMIT = 256  # CustomerMetadataProperties values (botocore: CustomerMetadataValue max 256)


class RegistryError(UserError):
    kind = "registry"


@dataclass(frozen=True)
class Registration:
    """Where the version goes and what it serves with: the command's arguments."""

    group: str
    image: str
    model_data_url: str
    statistics_uri: str
    region: str | None = None


@dataclass(frozen=True)
class VertexRegistration:
    """The Vertex AI model the run becomes a version of, and the image that serves it."""

    project: str
    region: str
    model_id: str
    image: str
    alias: str = "champion"
    api_endpoint: str | None = None  # Private Service Connect, or a test server


def read_records(model: Path) -> tuple[Metrics, RunManifest]:
    """metrics.json and run_manifest.json from a model folder or a model.tar.gz (found by base name: the
    service's archive holds the model folder's files at its root)."""
    if model.is_dir():
        found = {}
        for name in (name for name in RECORDS if (model / name).is_file()):
            with (model / name).open("rb") as handle:
                found[name] = handle.read(READ_LIMIT + 1)
    else:
        try:
            with tarfile.open(model) as tar:
                found = {Path(m.name).name: tar.extractfile(m).read(READ_LIMIT + 1) for m in tar.getmembers()
                         if m.isfile() and Path(m.name).name in RECORDS}
        except (OSError, tarfile.TarError) as err:
            raise RegistryError(f"{model}: not a readable model.tar.gz ({err})") from None
    missing = [name for name in RECORDS if name not in found]
    if missing:
        raise RegistryError(f"{model} has no {', '.join(missing)}: is it a seqcls run's model?")
    too_large = [name for name, raw in found.items() if len(raw) > READ_LIMIT]
    if too_large:
        raise RegistryError(f"{model}: {', '.join(too_large)} is over {READ_LIMIT // 2**20} MiB, not a seqcls run's record")
    try:
        metrics, manifest = (json.loads(found[name]) for name in RECORDS)
        if not isinstance(metrics, dict):
            raise ModelError(f"{METRICS} is not an object")
        return Metrics.from_json(metrics), RunManifest.from_json(manifest, f"{model}: {RUN_MANIFEST}")
    except (ValueError, ModelError) as err:
        raise RegistryError(f"{model}: {METRICS} or {RUN_MANIFEST} is not a seqcls record ({err})") from None


def promoted_record(metrics: Metrics) -> Decision:
    """The gate's record; a run without one, or one the gate kept, is not registered."""
    record = metrics.promotion
    if record is None:
        raise RegistryError("the run has no promotion record: train with promote_if set, and register promoted runs only")
    if not record.promoted:
        raise RegistryError(f"the gate kept the current run, so this run is not registered: {record.reason}")
    return record


def statistics(metrics: Metrics, problem_type: str) -> dict[str, Any]:
    """The test metrics (validation ones without a test split) in Model Monitor's model-quality shape."""
    split, measured = ("test", metrics.test) if metrics.test is not None else ("validation", metrics.validation)
    values = {name.removeprefix("val_"): value for name, value in measured.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    labels = metrics.labels
    block = TYPES[problem_type].statistics_block or ("binary_classification_metrics" if len(labels) == 2
                                                   else "multiclass_classification_metrics")
    return {"version": 0.0, "dataset": {"split": split, "labels": labels},
            block: {name: {"value": value} for name, value in sorted(values.items())}}


def metadata(manifest: RunManifest, record: Decision) -> dict[str, str]:
    """CustomerMetadataProperties: what a deployer reads in the registry without opening the run."""
    compared = record.comparison
    fields = {"seqcls:run_id": manifest.run_id, "seqcls:metric": record.metric,
              "seqcls:value": record.value, "seqcls:champion_run_id": record.current_run_id,
              "seqcls:champion_value": record.current_value, "seqcls:difference": compared and compared.improvement,
              "seqcls:interval": compared and list(compared.interval), "seqcls:rows": compared and compared.rows,
              "seqcls:rows_sha256": compared and compared.rows_sha256, "seqcls:rule": record.rule,
              "seqcls:reason": record.reason}
    return {key: (value if isinstance(value, str) else json.dumps(value))[:METADATA_VALUE_LIMIT]
            for key, value in fields.items() if value is not None}


def create_request(target: Registration, manifest: RunManifest, record: Decision) -> dict[str, Any]:
    """The CreateModelPackage request (botocore's SageMaker model: ModelPackageGroupName, InferenceSpecification,
    ModelMetrics, CustomerMetadataProperties, ModelApprovalStatus)."""
    return {
        "ModelPackageGroupName": target.group,
        "ModelPackageDescription": f"seqcls run {manifest.run_id}: {record.reason}"[:1024],
        "InferenceSpecification": {
            "Containers": [{"Image": target.image, "ModelDataUrl": target.model_data_url}],
            "SupportedContentTypes": SERVED_TYPES, "SupportedResponseMIMETypes": SERVED_TYPES},
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                         "S3Uri": target.statistics_uri}}},
        "CustomerMetadataProperties": metadata(manifest, record),
        "ModelApprovalStatus": "Approved",
    }


def register(target: Registration, model: Path) -> str:
    """Write the statistics, make sure the group exists, create the version; returns its ARN."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    metrics, manifest = read_records(model)
    record = promoted_record(metrics)
    stats_uri = parse_uri(target.statistics_uri)
    if stats_uri.scheme != "s3" or not stats_uri.prefix.endswith(".json"):
        raise RegistryError(f"--statistics_uri {target.statistics_uri}: must be s3://bucket/key.json")
    session = boto3.Session(region_name=target.region)
    try:
        session.client("s3").put_object(Bucket=stats_uri.bucket, Key=stats_uri.prefix, ContentType="application/json",
                                        Body=json.dumps(statistics(metrics, manifest.problem_type),
                                                        indent=2).encode())
        sagemaker = session.client("sagemaker")
        _ensure_group(sagemaker, target.group)
        arn = sagemaker.create_model_package(**create_request(target, manifest, record))["ModelPackageArn"]
    except (BotoCoreError, ClientError) as err:
        raise RegistryError(f"registering run {manifest.run_id} in {target.group} failed: {err}") from None
    logs.event("model_registered", f"run {manifest.run_id} registered as {arn} (Approved)",
               model_package_arn=arn, model_package_group=target.group, run_id=manifest.run_id,
               statistics_uri=target.statistics_uri)
    return arn


def _ensure_group(sagemaker: Any, group: str) -> None:
    """The first registration creates the group; DescribeModelPackageGroup answers ValidationException when
    it does not exist (the service's documented error for a missing resource in this API)."""
    from botocore.exceptions import ClientError

    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("ValidationException", "ResourceNotFound"):
            raise
        sagemaker.create_model_package_group(ModelPackageGroupName=group,
                                             ModelPackageGroupDescription="seqcls runs the promotion gate promoted")


def vertex_artifact_uri(published: str, run_id: str) -> str:
    """Where Vertex copies the model from: the published run folder, gs:// (a /gcs/ path is Vertex's mount of one)."""
    if published.startswith("/gcs/"):
        published = "gs://" + published.removeprefix("/gcs/")
    target = parse_uri(published, "--published")
    if target.scheme != "gs":
        raise RegistryError(f"--published {published}: Vertex AI reads models from gs://bucket/prefix (or its /gcs/ mount)")
    return target.join(run_id)


def register_vertex(target: VertexRegistration, published: str, scratch: Path) -> str:
    """Upload the run latest.json names as a new version (or the first) of `model_id`, aliased; returns its name."""
    from google.api_core import exceptions
    from google.cloud import aiplatform

    vertex_artifact_uri(published, "")  # a location Vertex cannot read fails before anything is fetched
    folder = storage.fetch(published, scratch)  # the pointer, then every file verified against the manifest
    metrics, manifest = read_records(folder)
    record, run_id = promoted_record(metrics), manifest.run_id
    artifact_uri = vertex_artifact_uri(published, run_id)
    logs.adopt("google.cloud.aiplatform")
    # REST, as the tracker: transport and endpoint first, then the project (google/cloud/aiplatform/initializer.py).
    aiplatform.init(api_transport="rest", api_endpoint=target.api_endpoint or None)
    aiplatform.init(project=target.project, location=target.region)
    spec = runtime.vertex_container_spec(target.image)
    try:
        try:
            parent = aiplatform.Model(model_name=target.model_id).resource_name
        except exceptions.NotFound:
            parent = None
        model = aiplatform.Model.upload(
            display_name=target.model_id, model_id=None if parent else target.model_id, parent_model=parent,
            artifact_uri=artifact_uri, serving_container_image_uri=spec["image_uri"], serving_container_args=spec["args"],
            serving_container_predict_route=spec["predict_route"], serving_container_health_route=spec["health_route"],
            serving_container_ports=[p["container_port"] for p in spec["ports"]], is_default_version=True,
            version_aliases=[target.alias], version_description=f"seqcls run {run_id}: {record.reason}"[:1000], labels={"seqcls-run": label(run_id)})
    except (exceptions.GoogleAPICallError, exceptions.RetryError) as err:
        raise RegistryError(f"registering run {run_id} as a version of Vertex AI model {target.model_id} failed: "
                            f"{err}") from None
    logs.event("model_registered", f"run {run_id} registered as {model.resource_name} version {model.version_id} "
               f"({target.alias})", model=model.resource_name, version_id=model.version_id, alias=target.alias,
               run_id=run_id, artifact_uri=artifact_uri)
    return model.versioned_resource_name


def label(value: str) -> str:
    """A Vertex label value: at most 63 lowercase letters, digits, '-' and '_'."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())[:63]
