"""Scheduled seqcls retraining on a GPU box, from Airflow with the Docker provider's DockerOperator.

Reads `seqcls_docker.json` beside this file, rendered by `python -m infra.airflow.render docker ...`
(image, host paths of the channels, output folder, GPUs, hyperparameters checked by the job's own parser).
Each DAG run runs `IMAGE train --name=value ...` as SageMaker runs the image, with the channels mounted
read-only at /opt/ml/input/data/<channel> and `<output dir>/<run>/{model,output,checkpoints}` mounted at
/opt/ml, as infra/local/run.sh does, then branches on the promotion gate's outcome in
`<output dir>/<run>/output/data/promotion.json`. The Airflow worker must run on the Docker host (the
mounts are host paths, the outcome is read from the host) and the job runs as the worker's user, so the
outputs belong to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task
from docker.types import DeviceRequest, Mount

CONFIG = Path(__file__).with_suffix(".json")
SCHEDULE = "0 3 * * 1"  # Mondays 03:00 UTC; change here (or set schedule=None to trigger by hand)
RUN_KEY = "{{ logical_date.strftime('%Y%m%d-%H%M%S') }}"  # Jinja, rendered per DAG run
RUN_FOLDERS = ("model", "output", "checkpoints")

if not CONFIG.is_file():
    raise FileNotFoundError(f"{CONFIG} is missing: render it with `python -m infra.airflow.render docker ... > {CONFIG.name}`")
config = json.loads(CONFIG.read_text(encoding="utf-8"))


def channel_mounts(channels: dict[str, str]) -> list[Mount]:
    """A folder is the channel; a file lands inside it under its own name (the job reads every file there)."""
    mounts = []
    for channel, path in channels.items():
        target = f"/opt/ml/input/data/{channel}"
        if not Path(path).is_dir():
            target += "/" + Path(path).name
        mounts.append(Mount(target=target, source=path, type="bind", read_only=True))
    return mounts


def run_mounts(run_dir: str) -> list[Mount]:
    return [Mount(target=f"/opt/ml/{name}", source=f"{run_dir}/{name}", type="bind") for name in RUN_FOLDERS]


def publish_folder(hyperparameters: dict[str, str]) -> str | None:
    """An output_uri that is a host folder (not s3:// or gs://) is mounted at the same path, so runs publish
    there and the gate finds the previous run's latest.json."""
    uri = hyperparameters.get("output_uri", "")
    return uri if uri.startswith("/") else None


def worker_environment(names: list[str]) -> dict[str, str]:
    """The named variables of the worker that runs the task (the DAG file is parsed again there), for
    DockerOperator's private_environment: sent to the container, never rendered in the UI or the task log."""
    return {name: os.environ[name] for name in names if name in os.environ}


def device_requests(gpus: str) -> list[DeviceRequest] | None:
    """`docker run --gpus all|N` as the Docker API takes it; none runs on CPU."""
    if gpus == "none":
        return None
    return [DeviceRequest(count=-1 if gpus == "all" else int(gpus), capabilities=[["gpu"]])]


def gate_outcome(promotion_json: Path) -> str:
    """`promoted` or `kept` from the job's output/data/promotion.json; a run without one is an error."""
    if not promotion_json.is_file():
        raise FileNotFoundError(f"{promotion_json} is missing: set the promote_if hyperparameter so the job runs the gate")
    return "promoted" if json.loads(promotion_json.read_text(encoding="utf-8"))["promoted"] else "kept"


with DAG(
    dag_id="seqcls_docker_retrain",
    description="Retrain seqcls in Docker on a GPU box; latest.json moves only when the promotion gate passes",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    tags=["seqcls", "docker"],
) as dag:
    run_dir = f"{config['output_dir'].rstrip('/')}/{RUN_KEY}"
    published = publish_folder(config["hyperparameters"])

    @task(task_id="prepare")
    def prepare(folder: str) -> str:
        """Docker refuses a bind mount whose host folder is missing; a rerun of the same run reuses it."""
        for path in [*(Path(folder, name) for name in RUN_FOLDERS), *([Path(published)] if published else [])]:
            path.mkdir(parents=True, exist_ok=True)
        return folder

    train = DockerOperator(
        task_id="train",
        image=config["image"],
        command=["train", *(f"--{name}={value}" for name, value in config["hyperparameters"].items())],
        mounts=channel_mounts(config["channels"]) + run_mounts(run_dir)
        + ([Mount(target=published, source=published, type="bind")] if published else []),
        device_requests=device_requests(config["gpus"]),
        user=f"{os.getuid()}:{os.getgid()}",
        environment={"HOME": "/tmp", **config.get("environment", {})},
        private_environment=worker_environment(config.get("pass_env", [])),
        shm_size=2 * 1024**3,  # DataLoader workers share tensors through /dev/shm
        mount_tmp_dir=False,
        auto_remove="success",
    )

    @task.branch(task_id="promotion_gate")
    def promotion_gate(folder: str) -> str:
        return gate_outcome(Path(folder, "output", "data", "promotion.json"))

    promoted = EmptyOperator(task_id="promoted")  # latest.json names this run: add deploy steps after it
    kept = EmptyOperator(task_id="kept")  # latest.json still names the earlier, better run

    prepare(run_dir) >> train >> promotion_gate(run_dir) >> [promoted, kept]
