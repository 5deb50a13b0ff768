"""Submit seqcls as a Vertex AI custom job (`--dry-run` prints the CustomJob as JSON).

    python -m infra.vertex.submit --project P --region us-central1 --image REGION-docker.pkg.dev/P/REPO/seqcls:TAG \
        --train gs://... --base-output-dir gs://bucket/seqcls/run1 [--hp epochs=4 ...] [--spot] [--dry-run | --wait]

Vertex sets AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR under --base-output-dir and
mounts buckets at /gcs; the job reads its data through that mount (`--train=/gcs/bucket/...` args) and
publishes the model to AIP_MODEL_DIR. Hyperparameters travel as container args `--name=value`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.auth.credentials import Credentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1.types import CustomJob, JobState, Scheduling
from google.protobuf import duration_pb2

from infra.common import (
    SubmitError,
    check_environment,
    job_hyperparameters,
    parse_pairs,
    run_cli,
)
from seqcls import bigquery
from seqcls.errors import SettingsError
from seqcls.runtime import CHANNELS, gcs_to_fuse
from seqcls.settings import report_targets
from seqcls.uris import is_bucket_uri



@dataclass(frozen=True)
class VertexJob:
    """A checked submission; `spec()` turns it into the CustomJob the API receives."""

    project: str
    region: str
    image: str
    base_output_dir: str
    channels: dict[str, str]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    display_name: str = "seqcls"
    machine_type: str = "g2-standard-8"
    accelerator_type: str = "NVIDIA_L4"
    accelerator_count: int = 1
    replica_count: int = 1
    boot_disk_gb: int = 100
    timeout_s: int = 4 * 3600
    spot: bool = False
    max_wait_s: int | None = None
    restart_on_worker_restart: bool = False
    service_account: str = ""
    experiment: str = ""  # Vertex AI Experiments: sets AIP_EXPERIMENT_NAME in the container (report_to=vertex)
    experiment_run: str = ""  # sets AIP_EXPERIMENT_RUN_NAME; empty with an experiment: Vertex names one

    def container_args(self) -> list[str]:
        """Channels as /gcs paths (the FUSE mount), then hyperparameters, all as `--name=value`."""
        paths = [f"--{name}={gcs_to_fuse(uri)}" for name, uri in self.channels.items()]
        return paths + [f"--{name}={value}" for name, value in self.hyperparameters.items()]

    def worker_pool_specs(self) -> list[dict]:
        """Pool 0 is the chief; extra replicas go to pool 1, and Vertex describes both in CLUSTER_SPEC."""
        machine: dict = {"machine_type": self.machine_type}
        if self.accelerator_count:
            machine |= {"accelerator_type": self.accelerator_type, "accelerator_count": self.accelerator_count}
        pool = {
            "machine_spec": machine,
            "container_spec": {"image_uri": self.image, "args": self.container_args(),
                               "env": [{"name": k, "value": v} for k, v in self.environment.items()]},
            "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": self.boot_disk_gb},
        }
        pools = [pool | {"replica_count": 1}]
        if self.replica_count > 1:
            pools.append(pool | {"replica_count": self.replica_count - 1})
        return pools

    def scheduling(self) -> Scheduling:
        return Scheduling(
            timeout=duration_pb2.Duration(seconds=self.timeout_s),
            restart_job_on_worker_restart=self.restart_on_worker_restart,
            strategy=Scheduling.Strategy.SPOT if self.spot else Scheduling.Strategy.STRATEGY_UNSPECIFIED,
            max_wait_duration=duration_pb2.Duration(seconds=self.max_wait_s) if self.max_wait_s is not None else None,
        )

    def spec(self) -> CustomJob:
        """The CustomJob resource, exactly as `submit()` sends it to JobService.CreateCustomJob."""
        return CustomJob(
            display_name=self.display_name,
            job_spec={
                "worker_pool_specs": self.worker_pool_specs(),
                "base_output_directory": {"output_uri_prefix": self.base_output_dir},
                "scheduling": self.scheduling(),
                "service_account": self.service_account,
                "experiment": self._context(self.experiment),
                "experiment_run": self._context(f"{self.experiment}-{self.experiment_run}" if self.experiment_run else ""),
            },
        )

    def _context(self, name: str) -> str:
        """An experiment (run) as CustomJobSpec names it: its Vertex ML Metadata context."""
        return f"projects/{self.project}/locations/{self.region}/metadataStores/default/contexts/{name}" if name else ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.vertex.submit", description=__doc__.split("\n")[0])
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="Vertex location, e.g. us-central1")
    p.add_argument("--image", required=True, help="Artifact Registry image URI (make push-gar prints it)")
    p.add_argument("--display-name", default="seqcls")
    p.add_argument("--machine-type", default="g2-standard-8")
    p.add_argument("--accelerator-type", default="NVIDIA_L4")
    p.add_argument("--accelerator-count", type=int, default=1, help="GPUs per replica; 0 for a CPU job")
    p.add_argument("--replica-count", type=int, default=1, help="replicas in all (the chief plus workers)")
    p.add_argument("--boot-disk-gb", type=int, default=100)
    for channel in CHANNELS:
        p.add_argument(f"--{channel}", metavar="URI", help=f"gs:// file, folder or wildcard for the {channel} data"
                                                           + ("" if channel == "model" else ", or a bq:// table"))
    p.add_argument("--base-output-dir", required=True, metavar="GS_URI",
                   help="AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR go under it")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a seqcls hyperparameter (repeat)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment (repeat)")
    p.add_argument("--timeout", type=int, default=4 * 3600, metavar="SECONDS", help="maximum run time")
    p.add_argument("--spot", action="store_true", help="Spot VMs; checkpoints go to AIP_CHECKPOINT_DIR")
    p.add_argument("--max-wait", type=int, metavar="SECONDS", help="how long to wait for capacity")
    p.add_argument("--restart-on-worker-restart", action="store_true",
                   help="restart the whole job when a worker restarts (multi-replica jobs)")
    p.add_argument("--service-account", default="", help="run-as service account e-mail")
    p.add_argument("--experiment", default="", help="a Vertex AI experiment the job reports to (created if missing; "
                                                    "needs --hp report_to=...,vertex)")
    p.add_argument("--experiment-run", default="", help="the experiment run (created if missing); default: Vertex "
                                                        "names one for the job")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the CustomJob as JSON; call no Google API")
    mode.add_argument("--wait", action="store_true", help="poll until the job ends; exit 1 unless it succeeded")
    return p


def _check_table(option: str, uri: str) -> None:
    try:
        bigquery.parse(uri)
    except SettingsError as err:
        raise SubmitError(f"{option}: {err}") from None


def job_from_args(args: argparse.Namespace) -> VertexJob:
    channels = {c: getattr(args, c) for c in CHANNELS if getattr(args, c)}
    if "train" not in channels:
        raise SubmitError("--train is required: the job has no training data otherwise")
    for option, uri in [*((f"--{c}", u) for c, u in channels.items()), ("--base-output-dir", args.base_output_dir)]:
        if bigquery.is_uri(uri) and option in ("--train", "--validation", "--test"):
            _check_table(option, uri)  # the job reads the table through BigQuery's API
        elif not is_bucket_uri(uri, "gs"):
            table = " or a bq://project.dataset.table" if option in ("--train", "--validation", "--test") else ""
            raise SubmitError(f"{option} {uri!r}: expected a gs://bucket/path URI (the job reads it through /gcs){table}")
    if args.replica_count < 1:
        raise SubmitError("--replica-count must be at least 1")
    if args.accelerator_count < 0:
        raise SubmitError("--accelerator-count must be >= 0")
    if args.timeout < 1:
        raise SubmitError("--timeout must be at least 1 second")
    if args.max_wait is not None and args.max_wait < 0:
        raise SubmitError("--max-wait must be >= 0 (0: wait indefinitely)")
    hyperparameters = job_hyperparameters(parse_pairs(args.hp, "--hp"))
    _check_experiment(args.experiment, args.experiment_run, hyperparameters)
    return VertexJob(
        project=args.project, region=args.region, image=args.image, base_output_dir=args.base_output_dir,
        channels=channels, hyperparameters=hyperparameters,
        environment=check_environment(parse_pairs(args.env, "--env")), display_name=args.display_name,
        machine_type=args.machine_type, accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count, replica_count=args.replica_count, boot_disk_gb=args.boot_disk_gb,
        timeout_s=args.timeout, spot=args.spot, max_wait_s=args.max_wait,
        restart_on_worker_restart=args.restart_on_worker_restart, service_account=args.service_account,
        experiment=args.experiment, experiment_run=args.experiment_run)


def _check_experiment(experiment: str, run: str, hyperparameters: dict[str, str]) -> None:
    """Vertex's own rules for the names (a context id: [a-z0-9][a-z0-9-]*, at most 128 with the run's), and a job
    that will actually log there."""
    if run and not experiment:
        raise SubmitError("--experiment-run needs --experiment")
    for option, name in (("--experiment", experiment), ("--experiment-run", run)):
        if name and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise SubmitError(f"{option} {name!r}: lowercase letters, digits and hyphens, starting with a letter or digit")
    if len(f"{experiment}-{run}") > 128:
        raise SubmitError("--experiment and --experiment-run together must be at most 127 characters")
    if experiment and "vertex" not in report_targets(hyperparameters.get("report_to", "tensorboard")):
        raise SubmitError(f"--experiment {experiment}: add vertex to --hp report_to (e.g. report_to=tensorboard,vertex) "
                          "so the job logs to it")


def spec_json(job: VertexJob) -> str:
    """The body of a CreateCustomJob REST call (camelCase JSON), as Cloud Scheduler would POST it."""
    return CustomJob.to_json(job.spec(), indent=2, use_integers_for_enums=False,
                             always_print_fields_with_no_presence=False)


def submit(job: VertexJob, wait: bool, credentials: Credentials | None = None) -> aiplatform.CustomJob:
    """Create the job through the SDK; its request carries the same CustomJob that `spec()` builds."""
    spec = job.spec()
    custom_job = aiplatform.CustomJob(
        display_name=spec.display_name,
        worker_pool_specs=list(spec.job_spec.worker_pool_specs),
        base_output_dir=job.base_output_dir,
        staging_bucket=job.base_output_dir,
        project=job.project,
        location=job.region,
        credentials=credentials,
    )
    experiment, run = _experiment(job, credentials)
    custom_job.submit(
        experiment=experiment,
        experiment_run=run,
        service_account=job.service_account or None,
        timeout=job.timeout_s,
        restart_job_on_worker_restart=job.restart_on_worker_restart,
        scheduling_strategy=Scheduling.Strategy.SPOT if job.spot else None,
        max_wait_duration=job.max_wait_s,
    )
    if wait:
        custom_job.wait_for_completion()
    return custom_job


def _experiment(job: VertexJob, credentials: Credentials | None) -> tuple[aiplatform.Experiment | None,
                                                                        aiplatform.ExperimentRun | None]:
    """The experiment and run the job reports to, created when missing (CustomJob.submit takes only existing ones)."""
    if not job.experiment:
        return None, None
    where = {"project": job.project, "location": job.region, "credentials": credentials}
    experiment = aiplatform.Experiment.get_or_create(job.experiment, **where)
    if not job.experiment_run:
        return experiment, None
    run = aiplatform.ExperimentRun.get(job.experiment_run, experiment=experiment, **where)
    return experiment, run or aiplatform.ExperimentRun.create(job.experiment_run, experiment=experiment, **where)


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    job = job_from_args(args)
    if args.dry_run:
        print(spec_json(job))
        return 0
    custom_job = submit(job, wait=args.wait)
    state = custom_job.state
    print(json.dumps({"name": custom_job.resource_name, "state": state.name}))
    if args.wait and state != JobState.JOB_STATE_SUCCEEDED:
        print(f"error: custom job ended {state.name}: {custom_job.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
