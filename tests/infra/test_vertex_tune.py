"""Vertex AI tuning: the dry-run request is a valid aiplatform_v1 HyperparameterTuningJob whose objective is
the metric the job reports, and whose trial arguments the job parses."""

from __future__ import annotations

import json
import re
from unittest import mock

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import HyperparameterTuningJob, JobState, StudySpec

from infra.common import SubmitError
from infra.vertex import tune
from seqcls import runtime
from seqcls import settings, tuning

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqcls/seqcls:0123abc"
BASE = ["--project", "my-proj", "--region", "us-central1", "--image", IMAGE,
        "--train", "gs://seqcls-data/cola/in_domain_train.tsv", "--base-output-dir", "gs://seqcls-out/tuning"]


def dry_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> HyperparameterTuningJob:
    assert tune.main([*argv, "--dry-run"]) == 0
    return HyperparameterTuningJob.from_json(capsys.readouterr().out)


def reported_metric(select_best: str, tmp_path) -> str:
    """The key the job's per-epoch record carries for this select_best (what the tuning service matches)."""
    report = tuning.ObjectiveReport(tmp_path / "output.metrics", "1", select_best)
    report.on_event("epoch_end", {"epoch": 1, "val_mcc": 0.3, "val_loss": 0.5})
    record = json.loads((tmp_path / "output.metrics").read_text())
    return next(k for k in record if k not in ("timestamp", "trial", "global_step", "checkpoint_path"))


@pytest.mark.parametrize("hp, goal, selection", [
    ([], StudySpec.MetricSpec.GoalType.MAXIMIZE, StudySpec.MeasurementSelectionType.LAST_MEASUREMENT),
    (["--hp", "select_best=mcc"], StudySpec.MetricSpec.GoalType.MAXIMIZE, StudySpec.MeasurementSelectionType.BEST_MEASUREMENT),
    (["--hp", "select_best=loss"], StudySpec.MetricSpec.GoalType.MINIMIZE, StudySpec.MeasurementSelectionType.BEST_MEASUREMENT),
])
def test_the_objective_is_the_metric_the_job_reports(hp, goal, selection, capsys, tmp_path):
    job = dry_run([*BASE, *hp], capsys)
    (metric,) = job.study_spec.metrics
    select_best = hp[1].split("=")[1] if hp else "none"
    assert metric.metric_id == reported_metric(select_best, tmp_path)
    assert metric.goal == goal
    assert job.study_spec.measurement_selection_type == selection


def test_search_space_and_trials(capsys):
    job = dry_run([*BASE, "--learning-rate", "1e-5:1e-4", "--epochs", "2:5", "--batch-sizes", "32,16",
                   "--max-trials", "8", "--parallel-trials", "2", "--hp", "max_length=128"], capsys)
    space = {p.parameter_id: p for p in job.study_spec.parameters}
    assert set(space) == set(tune.TUNED) and set(space) <= set(settings.FIELDS)
    assert (space["learning_rate"].double_value_spec.min_value, space["learning_rate"].double_value_spec.max_value) == (1e-5, 1e-4)
    assert space["learning_rate"].scale_type == StudySpec.ParameterSpec.ScaleType.UNIT_LOG_SCALE
    assert (space["epochs"].integer_value_spec.min_value, space["epochs"].integer_value_spec.max_value) == (2, 5)
    assert list(space["batch_size"].discrete_value_spec.values) == [16.0, 32.0]
    assert (job.max_trial_count, job.parallel_trial_count) == (8, 2)
    pool = job.trial_job_spec.worker_pool_specs[0]
    assert pool.container_spec.image_uri == IMAGE
    assert job.trial_job_spec.base_output_directory.output_uri_prefix == "gs://seqcls-out/tuning"
    # A trial's container args: the job's own, then Vertex's `--name=value` for each parameter (values as it sends
    # them: DISCRETE and INTEGER values may arrive as doubles). The job's parser must take all of them.
    trial_args = [*pool.container_spec.args, "--learning_rate=3.1e-05", "--epochs=3", "--batch_size=32.0", "--warmup_ratio=0.05"]
    paths, values = runtime.parse_cli(trial_args)
    resolved = settings.resolve([("cli", values)]).settings
    assert (resolved.learning_rate, resolved.epochs, resolved.batch_size, resolved.max_length) == (3.1e-05, 3, 32, 128)
    assert paths == {"train": "/gcs/seqcls-data/cola/in_domain_train.tsv"}


def test_main_sends_the_dry_run_request(capsys):
    expected = dry_run(BASE, capsys)
    with mock.patch.object(JobServiceClient, "create_hyperparameter_tuning_job", autospec=True) as create, \
            mock.patch("infra.vertex.tune.JobServiceClient", wraps=lambda **kw: JobServiceClient(
                credentials=AnonymousCredentials(), **kw)):
        create.side_effect = lambda self, parent, hyperparameter_tuning_job: HyperparameterTuningJob(
            hyperparameter_tuning_job, name=f"{parent}/hyperparameterTuningJobs/42", state=JobState.JOB_STATE_PENDING)
        assert tune.main(BASE) == 0
    sent = create.call_args.kwargs
    assert sent["parent"] == "projects/my-proj/locations/us-central1"
    assert sent["hyperparameter_tuning_job"] == expected
    assert json.loads(capsys.readouterr().out)["state"] == "JOB_STATE_PENDING"


@pytest.mark.parametrize("extra, message", [
    (["--hp", "epochs=3"], "tuned by this job"),
    (["--learning-rate", "1e-4:1e-5"], "MIN < MAX"),
    (["--learning-rate", "0:1e-4"], "learning_rate"),
    (["--batch-sizes", "16,big"], "expected integers"),
    (["--parallel-trials", "20"], "--parallel-trials"),
    (["--hp", "select_bestt=mcc"], "did you mean select_best"),
])
def test_bad_options_fail_before_any_call(extra, message):
    with pytest.raises(SubmitError, match=re.escape(message)):
        tune.spec(tune._parser().parse_args([*BASE, *extra]))
