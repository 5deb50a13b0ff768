"""Scheduled seqcls retraining on Vertex AI, from Airflow (Cloud Composer or any Airflow 3 with the Google provider).

Reads `seqcls_vertex.json` beside this file: the CustomJob `python -m infra.vertex.submit ... --dry-run`
prints (the body Cloud Scheduler posts), rendered by `python -m infra.airflow.render vertex <submit options>`.
Each DAG run creates that custom job with the provider's CreateCustomJobOperator, waits for it, and
branches on the promotion gate: the chief writes the outcome word (`promoted` or `kept`) to its
`promotion_file`, here `/gcs/<base output bucket>/<path>/promotion/<run>` (Vertex's GCS FUSE mount),
which the branch reads back through the Cloud Storage API.

On the promoted branch the run `<output_uri>/latest.json` names becomes a new version of the Vertex AI model the
config names (found by display name; created on the first registration), with the provider's
UploadModelOperator: this image serving the published run folder on its AIP routes, with the aliases `champion`
and `default`, which Vertex takes from the version that had them (an alias names one version of a model at a
time: https://cloud.google.com/vertex-ai/docs/model-registry/model-alias). A kept run is not registered.
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
from airflow.providers.google.cloud.operators.vertex_ai.custom_job import CreateCustomJobOperator
from airflow.providers.google.cloud.operators.vertex_ai.model_service import UploadModelOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task
from google.cloud.aiplatform_v1.types import CustomJob
from google.protobuf import json_format

CONFIG = Path(__file__).with_suffix(".json")
SCHEDULE = "0 3 * * 1"  # Mondays 03:00 UTC; change here (or set schedule=None to trigger by hand)
RUN_KEY = "{{ logical_date.strftime('%Y%m%d-%H%M%S') }}"  # Jinja, rendered per DAG run

if not CONFIG.is_file():
    raise FileNotFoundError(f"{CONFIG} is missing: render it with "
                            f"`python -m infra.airflow.render vertex <infra.vertex.submit options> > {CONFIG.name}`")
config = json.loads(CONFIG.read_text(encoding="utf-8"))


def promotion_uri(custom_job: dict) -> str:
    """gs://bucket/<base output dir>/promotion/<run>: where this DAG run's chief writes the gate's outcome."""
    base = custom_job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"].rstrip("/")
    return f"{base}/promotion/{RUN_KEY}"


def per_run_job(custom_job: dict) -> dict:
    """The dry-run CustomJob (proto field names, which the operator's client takes) with a per-run display
    name and the chief's `--promotion_file` on the /gcs mount."""
    job = json_format.MessageToDict(CustomJob.pb(CustomJob.from_json(json.dumps(custom_job))),
                                    preserving_proto_field_name=True)
    job["display_name"] = f"{job['display_name']}-{RUN_KEY}"
    chief = job["job_spec"]["worker_pool_specs"][0]["container_spec"]
    chief["args"] = [*chief.get("args", []), "--promotion_file=/gcs/" + promotion_uri(custom_job).removeprefix("gs://")]
    return job


def gate_outcome(word: bytes) -> str:
    """The job writes exactly `promoted` or `kept`; anything else is an error, never a guess."""
    text = word.decode("utf-8").strip()
    if text not in ("promoted", "kept"):
        raise ValueError(f"promotion file holds {text[:80]!r}, expected 'promoted' or 'kept'")
    return text


def model_version(latest: dict, registry: dict) -> dict:
    """The Model (proto field names) a promoted run uploads as: the run latest.json names, served by the image."""
    run_id = latest["run_id"]
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id.lower())[:63]
    return {"display_name": registry["display_name"], "artifact_uri": f"{registry['output_uri'].rstrip('/')}/{run_id}",
            "container_spec": registry["container_spec"], "version_aliases": [registry["alias"], "default"],
            "version_description": f"seqcls run {run_id}, promoted by the gate", "labels": {"seqcls-run": label}}


with DAG(
    dag_id="seqcls_vertex_retrain",
    description="Retrain seqcls as a Vertex AI custom job; latest.json moves only when the promotion gate passes",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    tags=["seqcls", "vertex"],
) as dag:
    train = CreateCustomJobOperator(
        task_id="train",
        project_id=config["project"],
        region=config["region"],
        custom_job=per_run_job(config["custom_job"]),
    )

    @task.branch(task_id="promotion_gate")
    def promotion_gate(uri: str) -> str:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return gate_outcome(GCSHook().download(bucket_name=bucket, object_name=name))

    promoted = EmptyOperator(task_id="promoted")  # latest.json names this run: add deploy steps after it
    kept = EmptyOperator(task_id="kept")  # latest.json still names the earlier, better run

    @task(task_id="champion")
    def champion() -> dict:
        """The run latest.json names, as a Model version, and the model it is a version of (None: the first)."""
        registry = config["registry"]
        bucket, _, prefix = registry["output_uri"].removeprefix("gs://").partition("/")
        latest = json.loads(GCSHook().download(bucket_name=bucket, object_name=f"{prefix.rstrip('/')}/latest.json"))
        found = list(ModelServiceHook().list_models(project_id=config["project"], region=config["region"],
                                                    filter=f'display_name="{registry["display_name"]}"'))
        return {"model": model_version(latest, registry), "parent_model": found[0].name if found else None}

    version = champion()
    register = UploadModelOperator(
        task_id="register",
        project_id=config["project"],
        region=config["region"],
        model=version["model"],
        parent_model=version["parent_model"],
    )

    gate = promotion_gate(promotion_uri(config["custom_job"]))
    train >> gate >> [promoted, kept]
    promoted >> version >> register
