"""Scheduled seqcls retraining on SageMaker, from Airflow (MWAA or any Airflow 3 with the Amazon provider).

Reads `seqcls_sagemaker.json` beside this file: the CreateTrainingJob request that
`python -m infra.sagemaker.submit ... --dry-run` prints, rendered by
`python -m infra.airflow.render sagemaker <submit options>`. Each DAG run sends that request with
the job named `<base job name>-<run's logical time>` (checkpoints under `<checkpoint uri>/<job name>`, as
the Step Functions schedule does), waits for the job, then branches on the promotion gate: the job's
`promotion:promoted` metric (1: `latest.json` moved to this run, 0: kept the previous run), which
SageMaker reports in DescribeTrainingJob's FinalMetricDataList from the metric definitions in the request.
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

CONFIG = Path(__file__).with_suffix(".json")
PROMOTED_METRIC = "promotion:promoted"  # infra/sagemaker/metrics.py: the `promotion` event's promoted_flag
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

    promotion_gate(train.output) >> [promoted, kept]
