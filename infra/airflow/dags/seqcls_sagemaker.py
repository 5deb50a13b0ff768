"""Scheduled seqcls retraining on SageMaker, from Airflow (MWAA or any Airflow 3 with the Amazon provider).

Reads `seqcls_sagemaker.json` beside this file: the CreateTrainingJob request that
`python -m infra.sagemaker.submit ... --dry-run` prints, rendered by
`python -m infra.airflow.render sagemaker <submit options>`. Each DAG run sends that request with
the job named `<base job name>-<run's logical time>` (checkpoints under `<checkpoint uri>/<job name>`, as
the Step Functions schedule does), waits for the job, then branches on the promotion gate: the job's
`promotion:promoted` metric (1: `latest.json` moved to this run, 0: kept the previous run), which
SageMaker reports in DescribeTrainingJob's FinalMetricDataList from the metric definitions in the request.

On the promoted branch the run is registered in the config's Model Package Group (created on the first
one) as an `Approved` version, with the provider's SageMakerRegisterModelVersionOperator: the image as the
inference container (it serves: `serve`), the job's model.tar.gz, its test metrics as ModelMetrics (a
statistics JSON written beside the job's output) and what the gate compared as CustomerMetadataProperties.
A kept run is not registered; the job's log and promotion.json (in output.tar.gz) say why.
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.sagemaker import (
    ApprovalStatus,
    SageMakerRegisterModelVersionOperator,
    SageMakerTrainingOperator,
)
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

CONFIG = Path(__file__).with_suffix(".json")
PROMOTED_METRIC = "promotion:promoted"  # infra/sagemaker/metrics.py: the `promotion` event's promoted_flag
# What the gate compared: infra/sagemaker/metrics.py's promotion:* metrics (champion: none on a first run).
METADATA = {"seqcls:value": "promotion:value", "seqcls:champion_value": "promotion:champion_value",
            "seqcls:difference": "promotion:improvement"}
SCHEDULE = "0 3 * * 1"  # Mondays 03:00 UTC; change here (or set schedule=None to trigger by hand)

if not CONFIG.is_file():
    raise FileNotFoundError(f"{CONFIG} is missing: render it with "
                            f"`python -m infra.airflow.render sagemaker <infra.sagemaker.submit options> > {CONFIG.name}`")
config = json.loads(CONFIG.read_text(encoding="utf-8"))


def per_run_request(request: dict, base_job_name: str) -> dict:
    """The dry-run request with a name unique to the DAG run (Jinja, rendered by Airflow) and per-run checkpoints."""
    job_name = f"{base_job_name}-{{{{ logical_date.strftime('%Y%m%d-%H%M%S') }}}}"
    out = {**request, "TrainingJobName": job_name}
    if "CheckpointConfig" in out:
        out["CheckpointConfig"] = {**out["CheckpointConfig"],
                                   "S3Uri": f"{out['CheckpointConfig']['S3Uri'].rstrip('/')}/{job_name}"}
    return out


def gate_outcome(description: dict) -> str:
    """`promoted` or `kept` from the job's FinalMetricDataList; a job that logged no promotion is an error."""
    values = [m["Value"] for m in description.get("FinalMetricDataList", []) if m.get("MetricName") == PROMOTED_METRIC]
    if not values:
        raise ValueError(f"training job {description.get('TrainingJobName')} reported no {PROMOTED_METRIC} metric: "
                         "set the promote_if hyperparameter (and keep the request's metric definitions)")
    return "promoted" if values[-1] >= 0.5 else "kept"


def final_metrics(description: dict) -> dict[str, float]:
    return {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}


def statistics_uri(description: dict) -> str:
    """Where the run's model-quality statistics go: beside its output."""
    return f"{description['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{description['TrainingJobName']}/model-metrics.json"


def registration(description: dict, image: str, hyperparameters: dict) -> dict:
    """The CreateModelPackage fields beyond the operator's own: the content types `serve` takes (rendered into the
    config from seqcls.promotion.registry), ModelMetrics (the file at `statistics_uri`) and CustomerMetadataProperties from
    FinalMetricDataList."""
    metrics = final_metrics(description)
    name = description["TrainingJobName"]
    metadata = {"seqcls:run_id": name, "seqcls:metric": hyperparameters.get("promote_if", "").strip('"'),
                **{key: str(metrics[metric]) for key, metric in METADATA.items() if metric in metrics}}
    return {"InferenceSpecification": {
                "Containers": [{"Image": image, "ModelDataUrl": description["ModelArtifacts"]["S3ModelArtifacts"]}],
                "SupportedContentTypes": config["served_types"],
                "SupportedResponseMIMETypes": config["served_types"]},
            "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                             "S3Uri": statistics_uri(description)}}},
            "CustomerMetadataProperties": metadata,
            "ModelPackageDescription": f"seqcls run {name}, promoted by the gate on {metadata['seqcls:metric']}"}


def statistics(description: dict) -> dict:
    """The run's model-quality statistics: the test metrics (the validation ones without a test channel) in
    Model Monitor's shape. FinalMetricDataList carries no label count, so a single-label run's block is the
    multiclass one, whose shape fits any number of classes."""
    metrics = final_metrics(description)
    split = "test" if any(name.startswith("test:") for name in metrics) else "validation"
    problem = description.get("HyperParameters", {}).get("problem_type", "single_label").strip('"')
    block = {"regression": "regression_metrics", "multi_label": "multilabel_classification_metrics"}.get(
        problem, "multiclass_classification_metrics")
    values = {name.partition(":")[2]: {"value": value} for name, value in sorted(metrics.items())
              if name.startswith(split + ":")}
    return {"version": 0.0, "dataset": {"split": split}, block: values}


class RegisterModelVersion(SageMakerRegisterModelVersionOperator):
    """The provider's operator with `extras` templated too, so that it can take this run's fields from XCom."""

    template_fields = (*SageMakerRegisterModelVersionOperator.template_fields, "extras")


with DAG(
    dag_id="seqcls_sagemaker_retrain",
    description="Retrain seqcls on SageMaker; latest.json moves only when the promotion gate passes",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    tags=["seqcls", "sagemaker"],
) as dag:
    train = SageMakerTrainingOperator(
        task_id="train",
        config=per_run_request(config["request"], config["base_job_name"]),
        region_name=config["region"],
        wait_for_completion=True,
        check_interval=config.get("check_interval_s", 60),  # seconds between DescribeTrainingJob polls
        # A rerun of the same DAG run must not silently start a second job under a timestamped name.
        action_if_job_exists="fail",
    )

    @task.branch(task_id="promotion_gate")
    def promotion_gate(training: dict) -> str:
        return gate_outcome(training["Training"])

    promoted = EmptyOperator(task_id="promoted")  # latest.json names this run: add deploy steps after it
    kept = EmptyOperator(task_id="kept")  # latest.json still names the earlier, better run

    @task(task_id="model_metrics")
    def model_metrics(training: dict) -> dict:
        """Write the statistics file, and return CreateModelPackage's extra fields for the register task."""
        description = training["Training"]
        bucket, _, key = statistics_uri(description).removeprefix("s3://").partition("/")
        S3Hook(region_name=config["region"]).load_string(json.dumps(statistics(description), indent=2), key=key,
                                                         bucket_name=bucket, replace=True)
        return registration(description, config["request"]["AlgorithmSpecification"]["TrainingImage"],
                            config["request"].get("HyperParameters", {}))

    fields = model_metrics(train.output)
    register = RegisterModelVersion(
        task_id="register",
        image_uri=config["request"]["AlgorithmSpecification"]["TrainingImage"],
        model_url="{{ ti.xcom_pull(task_ids='train')['Training']['ModelArtifacts']['S3ModelArtifacts'] }}",
        package_group_name=config.get("model_package_group", "seqcls"),
        package_group_desc="seqcls runs the promotion gate promoted",
        model_approval=ApprovalStatus.APPROVED,
        extras=fields,
        region_name=config["region"],
    )

    promotion_gate(train.output) >> [promoted, kept]
    promoted >> fields >> register
