"""Score a data set with a published run as a Vertex AI batch prediction job (`--dry-run` prints the job).

    python -m infra.vertex.batch_predict --project P --region us-central1 --image URI \
        --artifact-uri gs://bucket/cola/RUN_ID --input gs://bucket/to-score/*.jsonl --output-dir gs://bucket/scored \
        [--machine-type n1-standard-4] [--accelerator-type NVIDIA_TESLA_T4 --accelerator-count 1] \
        [--batch-size 64] [--replicas 1] [--env SEQCLS_INFERENCE_BACKEND=onnx] [--dry-run | --wait]

The job runs our image as an unmanaged container model (BatchPredictionJob.unmanaged_container_model: no
upload to the Model Registry needed): Vertex starts `seqcls serve` with the run folder as AIP_STORAGE_URI and
posts {"instances": [...]} of --batch-size rows to its predict route. Inputs: JSON lines (a string or an object
with "text"/"text_pair" per line, other fields ignored), CSV (text[,text_pair] columns) or a BigQuery table
(bq://project.dataset.table; --included-fields picks the text columns, in order); the format follows the
--input. Predictions land as JSON lines under --output-dir (or a BigQuery dataset for a bq:// --output-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import BatchPredictionJob, JobState

from infra.common import SubmitError, check_environment, parse_pairs, run_cli
from seqcls import bigquery, runtime
from seqcls.uris import is_bucket_uri

DONE = {JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_EXPIRED, JobState.JOB_STATE_PARTIALLY_SUCCEEDED}


@dataclass(frozen=True)
class BatchJob:
    """A checked submission; `spec()` is the BatchPredictionJob the API receives."""

    project: str
    region: str
    image: str
    artifact_uri: str
    inputs: list[str]
    output_dir: str
    display_name: str
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""
    accelerator_count: int = 0
    replicas: int = 1
    batch_size: int = 64
    included_fields: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def instances_format(self) -> str:
        if bigquery.is_uri(self.inputs[0]):
            return "bigquery"
        return "csv" if self.inputs[0].lower().endswith(".csv") else "jsonl"

    def spec(self) -> BatchPredictionJob:
        source = ({"bigquery_source": {"input_uri": self.inputs[0]}} if self.instances_format == "bigquery"
                  else {"gcs_source": {"uris": self.inputs}})
        destination = ({"bigquery_destination": {"output_uri": self.output_dir}, "predictions_format": "bigquery"}
                       if bigquery.is_uri(self.output_dir) else
                       {"gcs_destination": {"output_uri_prefix": self.output_dir}, "predictions_format": "jsonl"})
        machine: dict = {"machine_type": self.machine_type}
        if self.accelerator_count:
            machine |= {"accelerator_type": self.accelerator_type, "accelerator_count": self.accelerator_count}
        return BatchPredictionJob(
            display_name=self.display_name,
            unmanaged_container_model={
                "artifact_uri": self.artifact_uri,
                "container_spec": {**runtime.vertex_container_spec(self.image),
                                   "env": [{"name": k, "value": v} for k, v in self.environment.items()]}},
            input_config={"instances_format": self.instances_format, **source},
            instance_config={"included_fields": self.included_fields} if self.included_fields else None,
            output_config=destination,
            dedicated_resources={"machine_spec": machine, "starting_replica_count": self.replicas,
                                 "max_replica_count": self.replicas},
            manual_batch_tuning_parameters={"batch_size": self.batch_size},
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.vertex.batch_predict", description=__doc__.splitlines()[0])
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="Vertex location, e.g. us-central1")
    p.add_argument("--image", required=True, help="Artifact Registry image URI (infra/image/push-gar.sh)")
    p.add_argument("--artifact-uri", required=True, metavar="GS_URI", help="a published run folder (<output_uri>/<run_id>)")
    p.add_argument("--input", required=True, action="append", metavar="URI",
                   help="gs:// JSONL or CSV file(s) (wildcards allowed; repeat), or one bq://project.dataset.table")
    p.add_argument("--output-dir", required=True, metavar="URI", help="gs:// prefix, or bq://project.dataset")
    p.add_argument("--display-name", default=time.strftime("seqcls-batch-%Y%m%d-%H%M%S", time.gmtime()))
    p.add_argument("--machine-type", default="n1-standard-4")
    p.add_argument("--accelerator-type", default="NVIDIA_TESLA_T4")
    p.add_argument("--accelerator-count", type=int, default=0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="instances per request (the server's limit is 1024)")
    p.add_argument("--included-fields", default="", help="CSV/BigQuery: the text column (and text_pair column), comma-separated")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment (repeat)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the BatchPredictionJob as JSON; call no Google API")
    mode.add_argument("--wait", action="store_true", help="poll until the job ends; exit 1 unless it succeeded")
    return p


def job_from_args(args: argparse.Namespace) -> BatchJob:
    if not is_bucket_uri(args.artifact_uri, "gs"):
        raise SubmitError(f"--artifact-uri {args.artifact_uri!r}: expected the gs:// folder of a published run")
    tables = [uri for uri in args.input if bigquery.is_uri(uri)]
    if tables and len(args.input) > 1:
        raise SubmitError("--input: one BigQuery table, or gs:// files, not both")
    for uri in args.input:
        _check_input(uri)
    if not (is_bucket_uri(args.output_dir, "gs") or bigquery.is_uri(args.output_dir)):
        raise SubmitError(f"--output-dir {args.output_dir!r}: expected a gs:// prefix or a bq://project.dataset")
    formats = {"csv" if uri.lower().endswith(".csv") else "jsonl" for uri in args.input if not bigquery.is_uri(uri)}
    if len(formats) > 1:
        raise SubmitError("--input: all files in one format (.csv, or JSON lines)")
    if not 1 <= args.batch_size <= 1024:
        raise SubmitError("--batch-size must be between 1 and 1024 (the server answers at most 1024 instances)")
    if args.replicas < 1 or args.accelerator_count < 0:
        raise SubmitError("--replicas must be at least 1 and --accelerator-count at least 0")
    included = [name.strip() for name in args.included_fields.split(",") if name.strip()]
    if len(included) > 2:
        raise SubmitError("--included-fields: the text column, and at most a text_pair column")
    return BatchJob(args.project, args.region, args.image, args.artifact_uri.rstrip("/"), list(args.input),
                    args.output_dir, args.display_name, args.machine_type, args.accelerator_type,
                    args.accelerator_count, args.replicas, args.batch_size, included,
                    check_environment(parse_pairs(args.env, "--env")))


def _check_input(uri: str) -> None:
    if bigquery.is_uri(uri):
        try:
            bigquery.parse(uri)
        except Exception as err:  # noqa: BLE001 - SettingsError: one line for the user
            raise SubmitError(f"--input: {err}") from None
    elif not is_bucket_uri(uri, "gs"):
        raise SubmitError(f"--input {uri!r}: expected gs:// files or a bq://project.dataset.table")


def spec_json(job: BatchJob) -> str:
    """The body of a CreateBatchPredictionJob REST call (camelCase JSON)."""
    return BatchPredictionJob.to_json(job.spec(), indent=2, use_integers_for_enums=False,
                                      always_print_fields_with_no_presence=False)


def client(region: str, credentials=None) -> JobServiceClient:
    return JobServiceClient(credentials=credentials, client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})


def submit(job: BatchJob, wait: bool, credentials=None, poll_s: float = 60) -> BatchPredictionJob:
    service = client(job.region, credentials)
    created = service.create_batch_prediction_job(parent=f"projects/{job.project}/locations/{job.region}",
                                                  batch_prediction_job=job.spec())
    while wait and created.state not in DONE:
        time.sleep(poll_s)
        created = service.get_batch_prediction_job(name=created.name)
    return created


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    job = job_from_args(args)
    if args.dry_run:
        print(spec_json(job))
        return 0
    created = submit(job, wait=args.wait)
    print(json.dumps({"name": created.name, "state": created.state.name}))
    if args.wait and created.state != JobState.JOB_STATE_SUCCEEDED:
        print(f"error: batch prediction job ended {created.state.name}: {created.error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
