"""The runtime contract: SageMaker tree, Vertex AIP_* variables, plain local paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqcls import runtime
from seqcls.errors import SettingsError


def test_sagemaker_tree_relocated_with_seqcls_opt_ml(tmp_path):
    for channel in ("train", "test", "model"):
        (tmp_path / "input" / "data" / channel).mkdir(parents=True)
    where = runtime.detect([], {"SEQCLS_OPT_ML": str(tmp_path), "TRAINING_JOB_NAME": "job-123"})
    assert where.name == "sagemaker"
    assert where.run_id == "job-123"
    assert set(where.channels) == {"train", "test", "model"}
    assert where.model_dir == tmp_path / "model"
    assert where.output_data_dir == tmp_path / "output" / "data"
    assert where.failure_file == tmp_path / "output" / "failure"
    assert where.checkpoint_dir == tmp_path / "checkpoints"


def test_vertex_variables_map_gcs_uris_to_the_fuse_mount(tmp_path, monkeypatch):
    fuse = tmp_path / "gcs"
    (fuse / "bucket" / "data").mkdir(parents=True)
    (fuse / "bucket" / "data" / "train-0.jsonl").write_text("{}")
    (fuse / "bucket" / "data" / "train-1.jsonl").write_text("{}")
    monkeypatch.setattr(runtime.platform, "GCS_FUSE_ROOT", str(fuse))
    env = {
        "SEQCLS_OPT_ML": str(tmp_path / "ml"),
        "AIP_MODEL_DIR": "gs://bucket/out/model/",
        "AIP_CHECKPOINT_DIR": "gs://bucket/out/checkpoints/",
        "AIP_TRAINING_DATA_URI": "gs://bucket/data/train-*",
        "AIP_TEST_DATA_URI": "gs://bucket/data/train-1.jsonl",
        "CLOUD_ML_JOB_ID": "987",
    }
    where = runtime.detect(["--epochs=2"], env)
    assert where.name == "vertex"
    assert where.run_id == "987"
    assert where.channels["train"] == fuse / "bucket" / "data" / "train-*"  # data.channel_files expands it
    assert where.channels["test"] == fuse / "bucket" / "data" / "train-1.jsonl"
    assert where.model_uri == f"{fuse}/bucket/out/model/"  # the folder itself: Vertex model upload reads it
    assert where.checkpoint_dir == fuse / "bucket" / "out" / "checkpoints" / "987"  # per execution
    assert where.hyperparameter_layers[-1] == ("cli", {"epochs": "2"})


# What Vertex sets, from google-cloud-aiplatform's CustomJobSpec.base_output_directory
# (google/cloud/aiplatform_v1/types/custom_job.py): AIP_MODEL_DIR=<base>/model/, AIP_CHECKPOINT_DIR=<base>/checkpoints/,
# AIP_TENSORBOARD_LOG_DIR=<base>/logs/; CLOUD_ML_JOB_ID from training_utils/environment_variables.py.
VERTEX_ENV = {"AIP_MODEL_DIR": "gs://bkt/sched/model/", "AIP_CHECKPOINT_DIR": "gs://bkt/sched/checkpoints/",
              "AIP_TENSORBOARD_LOG_DIR": "gs://bkt/sched/logs/"}


def test_vertex_executions_of_one_schedule_get_their_own_resume_state_and_tensorboard_run(tmp_path):
    fuse = tmp_path / "gcs"
    (fuse / "bkt").mkdir(parents=True)
    env = VERTEX_ENV | {"SEQCLS_GCS_ROOT": str(fuse), "SEQCLS_OPT_ML": str(tmp_path / "ml")}
    first = runtime.detect([], env | {"CLOUD_ML_JOB_ID": "111"})
    again = runtime.detect([], env | {"CLOUD_ML_JOB_ID": "111"})  # a restart of the same job
    second = runtime.detect([], env | {"CLOUD_ML_JOB_ID": "222"})  # next week's run
    assert first.checkpoint_dir == again.checkpoint_dir == fuse / "bkt" / "sched" / "checkpoints" / "111"
    assert second.checkpoint_dir == fuse / "bkt" / "sched" / "checkpoints" / "222"
    assert first.tensorboard_dir == fuse / "bkt" / "sched" / "logs" / "111"
    assert first.model_uri == second.model_uri == f"{fuse}/bkt/sched/model/"
    assert first.tuning_metric_file == Path("/tmp/hypertune/output.metrics")  # cloudml-hypertune's default
    trial = runtime.detect([], env | {"CLOUD_ML_JOB_ID": "111", "CLOUD_ML_TRIAL_ID": "7",
                                       "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "m")})
    assert (trial.trial_id, trial.tuning_metric_file) == ("7", tmp_path / "m")


def test_vertex_without_the_gcs_mount_keeps_state_local_and_publishes_with_the_client(tmp_path):
    env = VERTEX_ENV | {"SEQCLS_GCS_ROOT": str(tmp_path / "absent"), "SEQCLS_OPT_ML": str(tmp_path / "ml"),
                        "CLOUD_ML_JOB_ID": "111"}
    where = runtime.detect([], env)
    assert where.model_uri == "gs://bkt/sched/model/"
    assert where.checkpoint_dir == tmp_path / "ml" / "checkpoints"
    assert where.tensorboard_dir == tmp_path / "ml" / "output" / "tensorboard"


def test_tensorboard_goes_under_the_tree_on_sagemaker_and_locally(tmp_path):
    sagemaker = runtime.detect([], {"SEQCLS_OPT_ML": str(tmp_path), "TRAINING_JOB_NAME": "j"})
    assert sagemaker.tensorboard_dir == tmp_path / "output" / "tensorboard"  # SageMaker's TensorBoardOutputConfig default
    assert (sagemaker.model_uri, sagemaker.tuning_metric_file) == ("", None)
    local = runtime.detect(["--output_dir", str(tmp_path / "run")], {})
    assert local.tensorboard_dir == tmp_path / "run" / "output" / "tensorboard"


def test_gcs_to_fuse():
    assert runtime.gcs_to_fuse("gs://b/p/x.csv") == "/gcs/b/p/x.csv"
    assert runtime.gcs_to_fuse("/local/x.csv") == "/local/x.csv"


def test_local_paths_from_the_command_line(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n")
    where = runtime.detect(["--train", str(data), "--output-dir", str(tmp_path / "out"), "--epochs", "1"], {})
    assert where.name == "local"
    assert where.channels == {"train": data}
    assert where.root == tmp_path / "out"
    assert where.hyperparameter_layers[-1] == ("cli", {"epochs": "1"})


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs"], "needs a value"),
    (["epochs", "2"], "unexpected argument"),
    (["--epoch", "2"], "did you mean epochs"),
])
def test_bad_command_lines(argv, fragment):
    with pytest.raises(SettingsError, match=fragment):
        runtime.detect(argv, {})


def test_failure_file_without_a_tree_is_none_for_a_person(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.platform, "OPT_ML_DEFAULT", str(tmp_path / "absent"))
    assert runtime.failure_file_for([], {}) is None
    assert runtime.failure_file_for(["--output_dir", str(tmp_path)], {}) == tmp_path / "output" / "failure"


def test_tuning_trials_keep_their_checkpoints_apart(tmp_path):
    """All trials of a SageMaker tuning job share one CheckpointConfig (HyperParameterTrainingJobDefinition
    has one), so a trial must not resume another trial's state: each gets a folder named after its job."""
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    env = {"SEQCLS_OPT_ML": str(tmp_path), "TRAINING_JOB_NAME": "hpo-001-3f2a"}
    (config / "hyperparameters.json").write_text(json.dumps({"epochs": "2", "_tuning_objective_metric": "validation:mcc"}))
    assert runtime.detect([], env).checkpoint_dir == tmp_path / "checkpoints" / "hpo-001-3f2a"
    (config / "hyperparameters.json").write_text(json.dumps({"epochs": "2"}))
    assert runtime.detect([], env).checkpoint_dir == tmp_path / "checkpoints"  # a plain job: SageMaker's own folder


# SageMaker's inputdataconfig.json ("How Amazon SageMaker Provides Training Information",
# https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html).
def _sagemaker_tree(root, channels: dict, hosts: list[str]) -> dict[str, str]:
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "train").mkdir(parents=True)
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(channels))
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": hosts[0], "hosts": hosts}))
    return {"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "job-1"}


@pytest.mark.parametrize("spec, hosts", [
    ({"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}, ["algo-1", "algo-2"]),
    ({"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated"}, ["algo-1", "algo-2"]),
    ({"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}, ["algo-1"]),  # one host: every file
    ({"ContentType": "text/csv"}, ["algo-1", "algo-2"]),  # what the SDK's local mode writes: the defaults apply
])
def test_sagemaker_channels_read_as_files_are_accepted(spec, hosts, tmp_path):
    env = _sagemaker_tree(tmp_path, {"train": spec}, hosts)
    assert runtime.detect([], env).channels["train"] == tmp_path / "input" / "data" / "train"


@pytest.mark.parametrize("spec, hosts, message", [
    ({"TrainingInputMode": "Pipe"}, ["algo-1"], "channel train uses TrainingInputMode=Pipe: seqcls reads files"),
    ({"S3DistributionType": "ShardedByS3Key"}, ["algo-1", "algo-2"], "ShardedByS3Key across 2 hosts"),
])
def test_sagemaker_channels_seqcls_cannot_read_whole_are_refused_by_name(spec, hosts, message, tmp_path):
    env = _sagemaker_tree(tmp_path, {"train": spec}, hosts)
    with pytest.raises(SettingsError, match=message):
        runtime.detect([], env)
