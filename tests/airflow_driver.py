"""Run inside the Airflow test venv (`make airflow-venv`), driven by tests/infra/test_airflow.py.

    airflow_driver.py dagbag DAGS_FOLDER...              -> {"bags": [{"import_errors": {...}, "dag_ids": [...]}, ...]}
    airflow_driver.py sagemaker DAGS_FOLDER CHANNELS_JSON [LOG_JSON] -> dag.test() under moto; the CreateTrainingJob sent
                                                          (and, given the job's log lines, the model package registered)
    airflow_driver.py gate DAGS_FOLDER DESCRIPTIONS_JSON  -> the SageMaker DAG's branch for each DescribeTrainingJob
    airflow_driver.py vertex_version DAGS_FOLDER LATEST_JSON -> the Vertex DAG's Model for that latest.json, and its register task
    airflow_driver.py docker_env DAGS_FOLDER            -> the Docker DAG's train task: its environment, private_environment
    airflow_driver.py run DAGS_FOLDER DAG_ID              -> dag.test() against the real services it names

Prints one JSON object as its last stdout line. Airflow and its providers are not in the project's
venv (their constraints pin versions our deps do not accept), hence a separate interpreter.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path


def _dagbag(folder: str):
    # Airflow 3.3 moved DagBag to airflow.dag_processing.dagbag and dropped include_examples: the example
    # DAGs are a bundle of their own now (airflow-core/src/airflow/dag_processing/dagbag.py, DagBag.__init__).
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(folder)


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def dagbag(*folders: str) -> dict:
    """Each folder's DagBag (one process for all: importing Airflow and its providers takes most of the time)."""
    bags = [_dagbag(folder) for folder in folders]
    return {"bags": [{"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
                      "dag_ids": sorted(bag.dag_ids)} for bag in bags]}


def _final_metrics_from(log_lines: list[str], sent: list[dict]) -> None:
    """moto completes a job at once and reports a canned FinalMetricDataList; the service reports, per metric
    definition of the request, the last value its regex found in the job's log (DescribeTrainingJob's
    FinalMetricDataList). Given the log of a real run, moto's job reports what the service would."""
    import re

    from moto.sagemaker.models import FakeTrainingJob

    original = FakeTrainingJob.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        final = []
        for definition in sent[-1]["AlgorithmSpecification"]["MetricDefinitions"]:
            values = [float(m.group(1)) for line in log_lines if (m := re.search(definition["Regex"], line))]
            if values:
                final.append({"MetricName": definition["Name"], "Value": values[-1], "Timestamp": self.creation_time})
        self.final_metric_data_list = final

    FakeTrainingJob.__init__ = init


def sagemaker(folder: str, channels_json: str, log_json: str = "") -> dict:
    """dag.test() with moto standing in for S3, SageMaker and CloudWatch Logs; records CreateTrainingJob's params.

    The recorder is a botocore handler in BUILTIN_HANDLERS, the same hook moto registers its own
    stubber through (moto/core/models.py), so it sees the parameters every new client sends, after
    everything Airflow's operator did to the config (its integer parsing, job naming).
    """
    import boto3
    import botocore.handlers
    from moto import mock_aws

    sent: list[dict] = []
    botocore.handlers.BUILTIN_HANDLERS.append(
        ("before-parameter-build.sagemaker.CreateTrainingJob", lambda params, **_: sent.append(copy.deepcopy(params))))
    if log_json:
        _final_metrics_from(json.loads(log_json), sent)
    with mock_aws():
        config = json.loads(Path(folder, "seqcls_sagemaker.json").read_text())
        region = config["region"]
        s3 = boto3.client("s3", region_name=region)
        # The operator checks that every input channel's S3 prefix exists (SageMakerHook.check_training_config).
        for uri in json.loads(channels_json):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
            s3.put_object(Bucket=bucket, Key=key + "part-0.tsv", Body=b"x")
        output = config["request"]["OutputDataConfig"]["S3OutputPath"].removeprefix("s3://").partition("/")[0]
        if output not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=output, CreateBucketConfiguration={"LocationConstraint": region})
        dag = _dagbag(folder).dags["seqcls_sagemaker_retrain"]
        run = dag.test()
        return {"sent": sent, "states": _states(run), **_registered(region, config.get("model_package_group", "seqcls"))}


def _registered(region: str, group: str) -> dict:
    """The model package versions in the group, as DescribeModelPackage answers, and their statistics files."""
    import boto3

    sagemaker, s3 = boto3.client("sagemaker", region_name=region), boto3.client("s3", region_name=region)
    try:
        summaries = sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    except sagemaker.exceptions.ClientError:
        return {"packages": []}
    packages = [sagemaker.describe_model_package(ModelPackageName=s["ModelPackageArn"]) for s in summaries]
    statistics = {}
    for package in packages:
        uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri", "")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        statistics[uri] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) if uri else None
    return {"packages": packages, "statistics": statistics}


def docker_env(folder: str) -> dict:
    """The container environment the Docker DAG's train task hands the Docker API, as this worker parses it."""
    task = _dagbag(folder).dags["seqcls_docker_retrain"].get_task("train")
    return {"environment": task.environment, "private_environment": task._private_environment}


def gate(folder: str, descriptions_json: str) -> dict:
    """The SageMaker DAG's branch decision for each DescribeTrainingJob response given (its own gate_outcome)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seqcls_sagemaker", Path(folder, "seqcls_sagemaker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    outcomes = []
    for description in json.loads(descriptions_json):
        try:
            outcomes.append(module.gate_outcome(description))
        except ValueError as err:
            outcomes.append(f"error: {err}")
    return {"outcomes": outcomes}


def vertex_version(folder: str, latest_json: str) -> dict:
    """What the Vertex DAG's register branch would upload for this latest.json (its own model_version), and how
    its tasks hang together."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seqcls_vertex", Path(folder, "seqcls_vertex.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = _dagbag(folder).dags["seqcls_vertex_retrain"]
    register = dag.get_task("register")
    return {"model": module.model_version(json.loads(latest_json), module.config["registry"]),
            "operator": type(register).__name__, "register_upstream": sorted(register.upstream_task_ids),
            "champion_upstream": sorted(dag.get_task("champion").upstream_task_ids),
            "templated": {name: str(getattr(register, name)) for name in ("model", "parent_model")}}


def run(folder: str, dag_id: str) -> dict:
    bag = _dagbag(folder)
    if dag_id not in bag.dags:
        return {"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "states": {}}
    return {"states": _states(bag.dags[dag_id].test())}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    result = {"dagbag": dagbag, "sagemaker": sagemaker, "docker_env": docker_env, "gate": gate,
              "vertex_version": vertex_version, "run": run}[command](*rest)
    print(json.dumps(result, default=str))
