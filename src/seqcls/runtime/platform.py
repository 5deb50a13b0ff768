"""The training job's platform: where inputs and outputs live on SageMaker, Vertex AI or a workstation, read from the
environment and the command line into one read-only `Platform` that the job passes around."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import bigquery
from ..errors import DataError, SettingsError
from ..settings import FIELDS, check_scalar_values, load_hyperparameters_json, unknown_name
from .launch import NPROC_OVERRIDE, SM_RESOURCE_CONFIG

# SageMaker training-container contract.
OPT_ML_DEFAULT = "/opt/ml"
OPT_ML_OVERRIDE = "SEQCLS_OPT_ML"
SM_JOB_NAME = "TRAINING_JOB_NAME"
# Keys SageMaker's clients add to hyperparameters.json that are not ours: `sagemaker_*` (the training
# toolkit's params.SAGEMAKER_PREFIX: SDK v2 framework keys such as sagemaker_program, and the tuner's
# sagemaker_estimator_class_name/module) and `_tuning_objective_metric`, which a tuning job adds to every
# trial (sagemaker-python-sdk v2 estimator.py strips it again in `_prepare_init_params_from_job_description`).
SM_RESERVED_PREFIXES = ("sagemaker_", "_tuning_")
SM_TUNING_OBJECTIVE = "_tuning_objective_metric"  # present: this job is a trial of a tuning job
CHANNELS = ("train", "validation", "test", "model")
# Vertex AI custom-job contract.
AIP_MODEL_DIR = "AIP_MODEL_DIR"
AIP_CHECKPOINT_DIR = "AIP_CHECKPOINT_DIR"
AIP_TENSORBOARD_LOG_DIR = "AIP_TENSORBOARD_LOG_DIR"
AIP_DATA_URIS = {"train": "AIP_TRAINING_DATA_URI", "validation": "AIP_VALIDATION_DATA_URI", "test": "AIP_TEST_DATA_URI"}
# The custom job's id: the same for every restart and retry of one job (Vertex restarts workers and retries
# the whole job inside the same CustomJob, https://cloud.google.com/vertex-ai/docs/training/understanding-training-service),
# new for each scheduled run. Name from google-cloud-aiplatform, google/cloud/aiplatform/training_utils/environment_variables.py.
VERTEX_JOB_ID = "CLOUD_ML_JOB_ID"
# Hyperparameter tuning: where a trial reports its objective, as cloudml-hypertune writes it
# (GoogleCloudPlatform/cloudml-hypertune, hypertune/hypertune.py: the file variable, its default, the trial id).
VERTEX_HP_METRIC_FILE = "CLOUD_ML_HP_METRIC_FILE"
VERTEX_HP_METRIC_FILE_DEFAULT = "/tmp/hypertune/output.metrics"
VERTEX_TRIAL_ID = "CLOUD_ML_TRIAL_ID"
# Buckets appear under /gcs (https://cloud.google.com/vertex-ai/docs/training/cloud-storage-file-system);
# SEQCLS_GCS_ROOT relocates it, as SEQCLS_OPT_ML relocates /opt/ml (tests).
GCS_FUSE_ROOT = "/gcs"
GCS_FUSE_OVERRIDE = "SEQCLS_GCS_ROOT"
# How each channel reaches the container ("How Amazon SageMaker Provides Training Information",
# https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html):
# TrainingInputMode File or FastFile gives files in /opt/ml/input/data/<channel>/ (read alike); Pipe gives FIFOs.
SM_INPUT_CONFIG = ("input", "config", "inputdataconfig.json")
# MLflow's own variables (mlflow/environment_variables.py): where runs go, the experiment, a run to log into.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
# W&B reads its own (WANDB_PROJECT, WANDB_MODE, WANDB_API_KEY, ...); the job only needs where it writes.
WANDB_ENV = ("WANDB_DIR",)
# What Vertex AI sets in a custom job's container: the experiment and run that CustomJob.run(experiment=...,
# experiment_run=...) names (google/cloud/aiplatform/metadata/constants.py), the project and the region.
VERTEX_EXPERIMENT_ENV = ("AIP_EXPERIMENT_NAME", "AIP_EXPERIMENT_RUN_NAME", "CLOUD_ML_PROJECT_ID", "CLOUD_ML_REGION")
# MLflow's defaults suit a notebook; a job's stdout is JSON lines only (no "View run" links) and a dead server
# should answer within seconds (3 retries, 2 s backoff factor: 2+4+8 s), not MLflow's 7 retries of up to 120 s.
# Set only where the user has not: their own values win.
MLFLOW_JOB_DEFAULTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
ENV_PREFIX = "SEQCLS_"
DEBUG = "SEQCLS_DEBUG"  # 1: tracebacks on stderr for user errors too
ENV_NOT_HYPERPARAMETERS = {OPT_ML_OVERRIDE, "SEQCLS_GIT_COMMIT", NPROC_OVERRIDE, GCS_FUSE_OVERRIDE, DEBUG}
# Command-line options that name paths (for a person); everything else on the command line is a hyperparameter.
PATH_OPTIONS = {"train", "validation", "test", "model", "output_dir"}


@dataclass(frozen=True)
class Platform:
    """Read-only view of where this run reads and writes."""

    name: str  # "sagemaker" | "vertex" | "local"
    root: Path  # the SageMaker-style tree this run writes into
    channels: dict[str, Path | bigquery.Table]  # channel name -> file, folder or table (only those given)
    model_dir: Path
    output_data_dir: Path
    failure_file: Path
    checkpoint_dir: Path
    tensorboard_dir: Path
    run_id: str
    hyperparameter_layers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ignored_hyperparameters: list[str] = field(default_factory=list)  # the platform's reserved keys, not ours
    git_commit: str = ""
    host: str = field(default_factory=socket.gethostname)
    model_uri: str = ""  # a folder the platform reads as the model itself (Vertex AIP_MODEL_DIR): published flat
    tuning_metric_file: Path | None = None  # where a tuning trial reports its objective (Vertex)
    trial_id: str = ""
    tracking_env: dict[str, str] = field(default_factory=dict)  # the *_ENV variables of the trackers, where set

    @property
    def output_folders(self) -> list[Path]:
        """Every folder the job writes (rank 0): checked before any data or model work."""
        return [self.model_dir, self.output_data_dir, self.failure_file.parent, self.checkpoint_dir]


def gcs_to_fuse(uri: str, fuse_root: str | None = None) -> str:
    """Vertex mounts buckets under /gcs: gs://bucket/path -> /gcs/bucket/path."""
    if uri.startswith("gs://"):
        return f"{fuse_root or GCS_FUSE_ROOT}/{uri[len('gs://'):]}"
    return uri


def parse_cli(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split `--name value` / `--name=value` pairs into (path options, hyperparameters).

    Vertex passes container args in both spellings; dashes and underscores are accepted alike.
    """
    paths: dict[str, str] = {}
    hyperparameters: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise SettingsError(f"unexpected argument {arg!r}: expected --name value or --name=value")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise SettingsError(f"argument --{name} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        if name in PATH_OPTIONS:
            paths[name] = value
        elif name in FIELDS:
            hyperparameters[name] = value
        else:
            raise unknown_name(name)
    return paths, hyperparameters


def hyperparameter_name(key: str) -> str | None:
    """The hyperparameter an environment variable sets (SEQCLS_LEARNING_RATE -> learning_rate), None for
    other variables; an unknown name is an error. The one mapping, for the job and for infra's submitters."""
    if not key.startswith(ENV_PREFIX) or key in ENV_NOT_HYPERPARAMETERS:
        return None
    name = key[len(ENV_PREFIX):].lower()
    if name not in FIELDS:
        raise unknown_name(name)
    return name


def env_hyperparameters(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for key, value in env.items() if (name := hyperparameter_name(key))}


def _read_hyperparameters_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's hyperparameters, decoded, and the names of the platform's reserved keys it also held."""
    if not path.is_file():
        return {}, []
    data = load_hyperparameters_json(path.read_text(encoding="utf-8", errors="replace"), str(path))
    reserved = sorted(k for k in data if k.startswith(SM_RESERVED_PREFIXES))
    ours = {k: v for k, v in data.items() if k not in reserved}
    check_scalar_values(ours, str(path))
    return ours, reserved


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _vertex_channel(uri: str, fuse_root: str) -> Path | bigquery.Table:
    """AIP_*_DATA_URI (or a gs:// path argument) through the /gcs mount: a file, a folder or a wildcard, which
    data.channel_files expands to exactly the files it matches (exported managed datasets); a bq:// table
    (AIP_DATA_FORMAT=bigquery) is read through BigQuery's API."""
    if bigquery.is_uri(uri):
        return bigquery.parse(uri)
    if uri.startswith("gs://") and not Path(fuse_root).is_dir():
        raise DataError(f"{uri} is a gs:// URI but the Vertex GCS FUSE mount {fuse_root} is not present")
    return Path(gcs_to_fuse(uri, fuse_root))


def _git_commit(env: Mapping[str, str]) -> str:
    if env.get("SEQCLS_GIT_COMMIT"):
        return env["SEQCLS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _platform_name(env: Mapping[str, str]) -> str:
    if any(key in env for key in (AIP_MODEL_DIR, *AIP_DATA_URIS.values())):
        return "vertex"
    if OPT_ML_OVERRIDE in env or SM_JOB_NAME in env or Path(OPT_ML_DEFAULT, "input", "data").is_dir():
        return "sagemaker"
    return "local"


def _root(name: str, output_dir: str, env: Mapping[str, str], timestamp: str) -> Path:
    """The SageMaker-style tree this run writes into: --output_dir, SEQCLS_OPT_ML, /opt/ml, or runs/<time>."""
    if output_dir or env.get(OPT_ML_OVERRIDE):
        return Path(output_dir or env[OPT_ML_OVERRIDE]).absolute()
    if name != "local" and Path(OPT_ML_DEFAULT).is_dir():
        return Path(OPT_ML_DEFAULT)
    return (Path("runs") / f"seqcls-{timestamp}").absolute()


def mlflow_job_defaults() -> None:
    """MLFLOW_JOB_DEFAULTS into this process's environment, where unset (MLflow reads them per request)."""
    for name, value in MLFLOW_JOB_DEFAULTS.items():
        os.environ.setdefault(name, value)


def exec_env(added: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus what a launch adds (torchrun inherits it)."""
    return {**os.environ, **added}


def _channels(name: str, root: Path, cli_paths: Mapping[str, str],
              env: Mapping[str, str]) -> dict[str, Path | bigquery.Table]:
    """Each channel's file, folder, wildcard or BigQuery table: SageMaker's mounted folders, then Vertex's
    AIP_*_DATA_URI, then the command line's paths (a gs:// one read through the /gcs mount), later ones winning."""
    channels: dict[str, Path | bigquery.Table] = {}
    for channel in CHANNELS:
        found = _existing(root / "input" / "data" / channel)
        if found is not None:
            channels[channel] = found
    fuse_root = env.get(GCS_FUSE_OVERRIDE) or GCS_FUSE_ROOT
    if name == "vertex":
        for channel, var in AIP_DATA_URIS.items():
            if env.get(var):
                channels[channel] = _vertex_channel(env[var], fuse_root)
    for channel in CHANNELS:
        given = cli_paths.get(channel)
        if given:
            remote = given.startswith("gs://") or bigquery.is_uri(given)
            channels[channel] = _vertex_channel(given, fuse_root) if remote else Path(given).absolute()
    if isinstance(channels.get("model"), bigquery.Table):
        raise SettingsError(f"the model channel cannot be a BigQuery table ({channels['model']}): give a model folder")
    return channels


def check_sagemaker_inputs(root: Path) -> None:
    """Channels seqcls can read as SageMaker delivers them: File and FastFile (plain files) are; Pipe (FIFOs) is
    refused; ShardedByS3Key across several hosts is refused, since every host must read the whole channel (the
    label map, the held-out validation rows and the row order are computed from all rows, the same on every rank)."""
    config_path, resources = root.joinpath(*SM_INPUT_CONFIG), root.joinpath(*SM_RESOURCE_CONFIG)
    if not config_path.is_file():
        return
    hosts = len(json.loads(resources.read_text()).get("hosts", [])) if resources.is_file() else 1
    for channel, spec in json.loads(config_path.read_text()).items():
        mode, sharding = spec.get("TrainingInputMode", "File"), spec.get("S3DistributionType", "FullyReplicated")
        if mode == "Pipe":
            raise SettingsError(f"channel {channel} uses TrainingInputMode=Pipe: seqcls reads files; give the channel "
                                "input_mode='File' or 'FastFile' (TrainingInput(..., input_mode=...))")
        if sharding == "ShardedByS3Key" and hosts > 1:
            raise SettingsError(f"channel {channel} is ShardedByS3Key across {hosts} hosts: each host would see other "
                                "rows, and every host must read the whole channel (labels, validation split and row "
                                "order come from all rows); use distribution='FullyReplicated'")


def detect(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Platform:
    """Work out the platform from the environment and the command line."""
    env = dict(os.environ if env is None else env)
    cli_paths, cli_hyperparameters = parse_cli(argv)
    timestamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())

    name = _platform_name(env)
    root = _root(name, cli_paths.get("output_dir", ""), env, timestamp)
    if name == "sagemaker":
        check_sagemaker_inputs(root)

    channels = _channels(name, root, cli_paths, env)

    from_file, ignored = _read_hyperparameters_file(root / "input" / "config" / "hyperparameters.json")
    layers = [
        ("hyperparameters.json", from_file),
        ("env", env_hyperparameters(env)),
        ("cli", cli_hyperparameters),
    ]
    fields: dict[str, object] = {
        "checkpoint_dir": root / "checkpoints",
        "tensorboard_dir": root / "output" / "tensorboard",  # SageMaker uploads it when a TensorBoardOutputConfig is set
        "run_id": _platform_run_id(name, env, timestamp),
    } | (_vertex_outputs(env, root) if name == "vertex" else {})
    if name == "sagemaker" and SM_TUNING_OBJECTIVE in ignored:
        # A tuning job has one CheckpointConfig for all its trials: each trial keeps its resume state under
        # its own job name (a spot restart of a trial keeps the name, so it still resumes).
        fields["checkpoint_dir"] = root / "checkpoints" / str(fields["run_id"])
    return Platform(
        name=name,
        root=root,
        channels=channels,
        model_dir=root / "model",
        output_data_dir=root / "output" / "data",
        failure_file=root / "output" / "failure",
        hyperparameter_layers=layers,
        ignored_hyperparameters=ignored,
        git_commit=_git_commit(env),
        tracking_env={name: env[name] for name in (*MLFLOW_ENV, *WANDB_ENV, *VERTEX_EXPERIMENT_ENV) if env.get(name)},
        **fields,
    )


def _platform_run_id(name: str, env: Mapping[str, str], timestamp: str) -> str:
    """The run id when the run_id setting is unset (job._settled applies the setting): SageMaker's training job
    name, Vertex's job id (a scheduler posting the same CustomJob body gets a new one per execution), otherwise
    seqcls-<UTC timestamp>."""
    job = {"sagemaker": env.get(SM_JOB_NAME, ""), "vertex": env.get(VERTEX_JOB_ID, "")}.get(name, "")
    return job or f"seqcls-{timestamp}"


def debug_enabled(env: Mapping[str, str] | None = None) -> bool:
    """SEQCLS_DEBUG=1 shows the traceback of every failure, not only of internal errors."""
    env = os.environ if env is None else env
    return env.get(DEBUG, "").strip().lower() in ("1", "true", "yes", "on")


def _vertex_outputs(env: Mapping[str, str], root: Path) -> dict[str, object]:
    """Vertex's folders (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec, baseOutputDirectory),
    through the /gcs mount when present.

    A scheduler posting the same CustomJob body gets the same folders every run, so what belongs to one
    execution (resume state, TensorBoard run) goes under the job id; the model goes to AIP_MODEL_DIR itself,
    the folder Vertex model upload and training pipelines read.
    """
    fuse_root = env.get(GCS_FUSE_OVERRIDE) or GCS_FUSE_ROOT
    mounted = Path(fuse_root).is_dir()
    job_id = env.get(VERTEX_JOB_ID, "")

    def folder(var: str) -> Path | None:  # gs:// without the mount: the job cannot write it as files
        uri = env.get(var, "")
        if not uri or (uri.startswith("gs://") and not mounted):
            return None
        return Path(gcs_to_fuse(uri, fuse_root)) / job_id

    outputs: dict[str, object] = {
        "model_uri": gcs_to_fuse(env.get(AIP_MODEL_DIR, ""), fuse_root) if mounted else env.get(AIP_MODEL_DIR, ""),
        "tuning_metric_file": Path(env.get(VERTEX_HP_METRIC_FILE) or VERTEX_HP_METRIC_FILE_DEFAULT),
        "trial_id": env.get(VERTEX_TRIAL_ID, ""),
        "checkpoint_dir": folder(AIP_CHECKPOINT_DIR) or root / "checkpoints",
        "tensorboard_dir": folder(AIP_TENSORBOARD_LOG_DIR) or root / "output" / "tensorboard",
    }
    return outputs


def failure_file_for(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Path | None:
    """Where to write the failure reason when `detect` itself failed (bad arguments or hyperparameters.json)."""
    env = os.environ if env is None else env
    for i, arg in enumerate(argv):
        if arg.startswith(("--output_dir=", "--output-dir=")):
            return Path(arg.split("=", 1)[1]) / "output" / "failure"
        if arg in ("--output_dir", "--output-dir") and i + 1 < len(argv):
            return Path(argv[i + 1]) / "output" / "failure"
    if env.get(OPT_ML_OVERRIDE):
        return Path(env[OPT_ML_OVERRIDE]) / "output" / "failure"
    if Path(OPT_ML_DEFAULT).is_dir():
        return Path(OPT_ML_DEFAULT) / "output" / "failure"
    return None


def pinned_for_ranks(where: Platform, argv: Sequence[str]) -> list[str]:
    """Arguments that make every rank agree on a locally derived output folder and run id (both carry a timestamp)."""
    if where.name != "local":
        return []
    pinned = [] if parse_cli(argv)[0].get("output_dir") else [f"--output_dir={where.root}"]
    if not any("run_id" in values for _, values in where.hyperparameter_layers):
        pinned.append(f"--run_id={where.run_id}")
    return pinned
